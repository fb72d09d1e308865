"""deploy/Dockerfile and deploy/kubernetes.yaml, checked without Docker or a cluster.

The Dockerfile is parsed and its CMD (exec form) run with wsgipool, with the
placeholder app swapped for a test app and the port for a free one on
127.0.0.1; the same for the Deployment's command, with WEB_CONCURRENCY set as
the downward API would set it from the CPU request.  The manifest's probes,
grace period and user are compared with what wsgipool does by default.
"""

from __future__ import annotations

import json
import math
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, ServerProcess, free_port
from wsgipool.cli import build_parser
from wsgipool.config import Config, PoolConfig, parse_bind, split_options

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
PLACEHOLDER_APP = "myproject.wsgi:application"
#: How long wsgipool waits for its first workers at start (supervisor.py).
WORKER_START_WAIT = 60


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def parsed(argv: list[str]) -> tuple[Config, PoolConfig]:
    """The options wsgipool's own CLI makes of `argv` (wsgipool serve ...)."""
    assert argv[:2] == ["wsgipool", "serve"], argv
    args = vars(build_parser().parse_args(argv[1:]))
    args.pop("command")
    args.pop("app")
    server, pool, _ = split_options(args)
    return Config(**server), PoolConfig(**pool)


def runnable(argv: list[str], port: int) -> list[str]:
    """`argv` after ``wsgipool serve``, for the test app on 127.0.0.1:`port`."""
    args = list(argv[2:])
    assert args[0] == PLACEHOLDER_APP
    args[0] = "deployapp:app"
    index = args.index("--bind")
    args[index + 1] = f"127.0.0.1:{port}"
    return args


def start(run_server: Callable[..., ServerProcess], args: list[str], port: int) -> ServerProcess:
    server = run_server(*args, bind=False)
    server.port = port
    return server


def stop_within(server: ServerProcess, config: Config, pool: PoolConfig) -> None:
    server.signal(signal.SIGTERM)
    assert server.wait(pool.graceful_timeout + 5) == 0  # it bounds the whole stop
    assert "stopping (gracefully)" in server.log


# -- Dockerfile ------------------------------------------------------------------


def test_dockerfile_runs_wsgipool_as_pid_1_as_a_user(
    run_server: Callable[..., ServerProcess],
) -> None:
    steps = dockerfile_instructions(DOCKERFILE)
    kinds = [kind for kind, _ in steps]
    base = dict(steps)["FROM"]
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    users = [value for kind, value in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert kinds.index("USER") < kinds.index("CMD")
    assert dict(steps).get("STOPSIGNAL", "SIGTERM") == "SIGTERM"

    # Exec form: no shell in between, so wsgipool is PID 1 and gets SIGTERM itself.
    cmd = json.loads(dict(steps)["CMD"])
    config, pool = parsed(cmd)
    (bind,) = [parse_bind(text) for text in config.bind]
    assert (bind.host, bind.port) == ("0.0.0.0", 8000)
    assert dict(steps)["EXPOSE"] == str(bind.port)

    port = free_port()
    server = start(run_server, runnable(cmd, port), port)
    status, _, body = server.request("GET", "/env")
    assert status == 200
    assert json.loads(body)["SERVER_PORT"] == str(port)
    stop_within(server, config, pool)


# -- Kubernetes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    (found,) = [d for d in documents if d["kind"] == "Deployment"]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in argv]


def _cpu(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _workers_env(container: dict[str, Any]) -> dict[str, str]:
    """The env the downward API gives: requests.cpu with divisor 1, rounded up."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("resourceFieldRef")
        if ref is not None:
            assert ref["resource"] == "requests.cpu"
            assert ref.get("containerName", container["name"]) == container["name"]
            requested = _cpu(str(container["resources"]["requests"]["cpu"]))
            divisor = _cpu(str(ref.get("divisor", "1")))
            env[item["name"]] = str(math.ceil(requested / divisor))
        else:
            env[item["name"]] = str(item["value"])
    return env


def test_manifest_matches_wsgipool(deployment: dict[str, Any]) -> None:
    container = _container(deployment)
    env = _workers_env(container)
    argv = _expand(container["command"], env)
    config, pool = parsed(argv)
    # The CPU request sets the worker count.
    assert pool.workers == math.ceil(_cpu(str(container["resources"]["requests"]["cpu"])))

    # Probes and the Service target the port wsgipool binds.
    (bind,) = [parse_bind(text) for text in config.bind]
    assert bind.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [bind.port]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[name]
        target = probe.get("tcpSocket") or probe.get("httpGet")
        assert target is not None, name
        assert ports.get(target["port"], target["port"]) == bind.port, name
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= WORKER_START_WAIT
    # A liveness check must not give up on a server that is just busy: its
    # answer comes from the main process's loop, not from a worker.
    liveness = container["livenessProbe"]
    assert liveness["timeoutSeconds"] * liveness.get("failureThreshold", 3) >= 10

    # Between SIGTERM and SIGKILL: preStop, then the stop, which --graceful-timeout
    # bounds; the requests in flight get --shutdown-timeout of it, the workers the rest.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert 20 <= config.shutdown_timeout < pool.graceful_timeout
    needed = float(pre_stop[1]) + pool.graceful_timeout
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert needed <= grace <= needed + 10, (needed, grace)

    # The image's user, not root.
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    docker_users = [v for k, v in dockerfile_instructions(DOCKERFILE) if k == "USER"]
    assert str(security["runAsUser"]) == docker_users[-1]


def test_manifest_command_runs(
    run_server: Callable[..., ServerProcess], deployment: dict[str, Any]
) -> None:
    container = _container(deployment)
    argv = _expand(container["command"], _workers_env(container))
    config, pool = parsed(argv)
    port = free_port()
    server = start(run_server, runnable(argv, port), port)
    assert f"serving with {pool.workers} worker process(es)" in server.log
    assert server.request("GET", "/env")[0] == 200
    stop_within(server, config, pool)
