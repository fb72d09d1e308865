"""Issue 10, points 1 and 2: options from a config file, the environment and the command line.

Real ``wsgipool serve`` subprocesses: --print-config shows every value's source,
--check-config validates and exits, a bad value from any source is one line
naming that source and exit 2, the command listens on 127.0.0.1:8000 unless
told otherwise, and the default worker count follows the CPUs really available.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.cli import assert_one_line_error, run_cli, wsgipool_cmd
from tests.conftest import free_port
from wsgipool.cpus import available_cpus


def test_print_config_shows_the_source_of_each_value(tmp_path):
    (tmp_path / "wsgipool.toml").write_text("# tuning\nthreads = 3\nmax-requests = 50\n")
    env = {"WSGIPOOL_MAX_REQUESTS": "100", "WEB_CONCURRENCY": "2"}
    code, stdout, stderr, alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--timeout", "5s", "--print-config"), tmp_path, env=env
    )
    assert (code, stderr, alive) == (0, "", [])
    lines = stdout.splitlines()
    assert "threads = 3  # wsgipool.toml:2" in lines
    assert "max_requests = 100  # WSGIPOOL_MAX_REQUESTS" in lines
    assert "workers = 2  # WEB_CONCURRENCY" in lines
    assert "timeout = 5.0  # --timeout" in lines
    assert 'host = "127.0.0.1"  # default (CLI)' in lines
    assert "port = 8000  # default (CLI)" in lines
    assert "# max_rss is unset  # default" in lines


def test_explicit_config_file_and_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.wsgipool]\nthreads = 7\n'
    )
    code, stdout, _, _ = run_cli(wsgipool_cmd("serve", "envapp:app", "--print-config"), tmp_path)
    assert code == 0 and "threads = 7  # pyproject.toml:4" in stdout.splitlines()
    (tmp_path / "prod.toml").write_text("threads = 9\n")
    code, stdout, _, _ = run_cli(
        wsgipool_cmd("serve", "envapp:app", "-c", "prod.toml", "--print-config"), tmp_path
    )
    assert code == 0 and "threads = 9  # prod.toml:1" in stdout.splitlines()


def test_check_config_validates_and_exits_0(tmp_path):
    (tmp_path / "wsgipool.toml").write_text("workers = 2\nmax_rss = '512M'\n")
    code, stdout, stderr, alive = run_cli(
        wsgipool_cmd("serve", "no_such_module:app", "--check-config"), tmp_path
    )
    assert (code, stderr, alive) == (0, "", [])
    assert "valid" in stdout


BAD_SOURCES = [
    (
        "file key",
        "workers = 2\n\nwrokers = 3\n",
        {},
        [],
        "wsgipool.toml:3: wrokers: unknown option",
    ),
    (
        "file value",
        "max_rss = 'lots'\n",
        {},
        [],
        "wsgipool.toml:1: max_rss: invalid size 'lots'",
    ),
    (
        "env value",
        "",
        {"WSGIPOOL_WORKERS": "many"},
        [],
        "WSGIPOOL_WORKERS: expected a whole number",
    ),
    ("env name", "", {"WSGIPOOL_WROKERS": "2"}, [], "WSGIPOOL_WROKERS: unknown wsgipool option"),
    ("alias", "", {"WEB_CONCURRENCY": "x"}, [], "WEB_CONCURRENCY: expected a whole number"),
    ("flag", "", {}, ["--timeout", "soon"], "--timeout: invalid duration 'soon'"),
    (
        "across",
        "max_rss = '1G'\n",
        {"WSGIPOOL_MAX_RSS_HARD": "512M"},
        [],
        "WSGIPOOL_MAX_RSS_HARD: must not be below max_rss",
    ),
]


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "serve"])
@pytest.mark.parametrize(
    ("file", "env", "args", "needle"),
    [case[1:] for case in BAD_SOURCES],
    ids=[case[0] for case in BAD_SOURCES],
)
def test_bad_value_anywhere_is_one_line_naming_its_source(tmp_path, check, file, env, args, needle):
    if file:
        (tmp_path / "wsgipool.toml").write_text(file)
    argv = wsgipool_cmd("serve", "envapp:app", *args, *(["--check-config"] if check else []))
    code, stdout, stderr, alive = run_cli(argv, tmp_path, env=env)
    assert code == 2, (stdout, stderr)
    assert_one_line_error(stderr, needle)
    assert alive == []


def _serving_line(log: str) -> str:
    return next(line for line in log.splitlines() if "serving with" in line)


def test_the_command_listens_on_loopback_by_default(run_server):
    port = free_port()
    server = run_server("envapp:app", "--workers", "1", "--port", str(port), bind=False)
    server.port = port
    assert server.request("GET", "/")[0] == 200
    assert f"listening on http://127.0.0.1:{port}" in server.log
    assert "[::]" not in server.log
    assert "host from default (CLI), port from --port" in _serving_line(server.log)


def test_port_variable_listens_on_every_interface(run_server):
    port = free_port()
    server = run_server("envapp:app", "--workers", "1", env={"PORT": str(port)}, bind=False)
    server.port = port
    assert server.request("GET", "/")[0] == 200
    assert f"listening on http://0.0.0.0:{port}" in server.log
    assert "host from PORT (all interfaces), port from PORT" in _serving_line(server.log)


def test_config_file_serves(run_server, tmp_path):
    port = free_port()
    (tmp_path / "wsgipool.toml").write_text(f'workers = 1\nbind = "127.0.0.1:{port}"\n')
    server = run_server("envapp:app", bind=False)
    server.port = port
    assert server.request("GET", "/")[0] == 200
    line = _serving_line(server.log)
    assert "serving with 1 worker process(es)" in line
    assert "bind from wsgipool.toml:2; workers from wsgipool.toml:1" in line


def test_web_concurrency_sets_the_workers(run_server):
    server = run_server("envapp:app", env={"WEB_CONCURRENCY": "1"})
    line = _serving_line(server.log)
    assert "serving with 1 worker process(es)" in line
    assert "workers from WEB_CONCURRENCY" in line
    assert len(server.worker_pids()) == 1


def test_default_workers_are_the_cpus_really_available(run_server):
    """The real cgroup files and affinity of this machine, read by the server itself."""
    expected = available_cpus()
    server = run_server("envapp:app")
    line = _serving_line(server.log)
    assert f"serving with {expected.count} worker process(es)" in line
    assert f"workers from default: {expected.reason}" in line


def test_default_workers_follow_the_affinity_mask(run_server):
    """Pinned to one CPU (as taskset or a cpuset would), the server starts one worker."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        server = run_server("envapp:app", wait=False)
    finally:
        os.sched_setaffinity(0, before)
    server.wait_until_serving()
    line = _serving_line(server.log)
    assert "serving with 1 worker process(es)" in line
    assert "workers from default: " in line
    assert len(server.worker_pids()) == 1
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0


@contextlib.contextmanager
def cpu_limited_cgroup():
    """A real child cgroup limited to one CPU (v1 cpu.cfs_quota_us or v2 cpu.max), removed after.

    Skips where cgroups cannot be written (not root, a read-only or delegated hierarchy).
    """
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    name = f"wsgipool-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        group, limit = v1 / name, [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "100000")]
        root_procs = v1 / "cgroup.procs"
    elif Path("/sys/fs/cgroup/cgroup.controllers").exists():
        own = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].strip()
        group = Path("/sys/fs/cgroup") / own.lstrip("/") / name
        limit = [("cpu.max", "100000 100000")]
        root_procs = group.parent / "cgroup.procs"
    else:
        pytest.skip("no writable cgroup cpu controller here")
    try:
        group.mkdir()
        for file, value in limit:
            (group / file).write_text(value)
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot make a cgroup with a CPU quota here: {exc}")
    try:
        yield group, root_procs
    finally:
        for _ in range(100):  # empty once the server's processes are reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_default_workers_follow_a_real_cgroup_cpu_quota(run_server):
    """A real cgroup with a quota of one CPU: the server inside it starts one worker."""
    with cpu_limited_cgroup() as (group, root_procs):
        # This test process joins the cgroup just long enough to start the server in it.
        (group / "cgroup.procs").write_text(str(os.getpid()))
        try:
            server = run_server("envapp:app", wait=False)
        finally:
            root_procs.write_text(str(os.getpid()))
        try:
            server.wait_until_serving()
            line = _serving_line(server.log)
            assert "serving with 1 worker process(es)" in line
            assert "quota of 1 CPUs" in line, line
        finally:
            server.stop()
