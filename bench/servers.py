"""The servers under test: how each is started, and which scenario settings it has.

Every server gets the same worker and thread counts (``--workers W --threads T``):
a server with worker processes runs W of them with T threads each (gunicorn sync
has no threads: W processes of one thread); a server that runs in one process
(aiohttp-wsgi, waitress, wsgipool --workers 0) gets W x T threads, so every server
has the same number of app threads except gunicorn sync.  Every server is
started as ``sys.executable -m ...`` so the peers come from the same virtualenv,
listens on 127.0.0.1 only, and logs to a file of its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Settings:
    workers: int = 2
    threads: int = 4


Argv = list[str]
Env = dict[str, str]


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    modules: tuple[str, ...]  # importable modules it needs (checked before running)
    distributions: tuple[str, ...]  # for the versions in the results
    build: Callable[[Settings, str, int, list[str]], tuple[Argv, Env]]
    shape: Callable[[Settings], str]  # "2 processes x 4 threads"
    processes: Callable[[Settings], int]  # worker processes it should have (0: one process)
    only: tuple[str, ...] | None = None  # workloads it serves (None: all)
    reference: str = ""  # why it is in the table though it is not a peer
    # Scenario settings; None where the server has no such setting.
    recycle: Callable[[Settings, int], list[str]] | None = None
    recycle_note: str = ""
    recycle_min_duration: float = 0.0
    memory_limit: Callable[[int], list[str]] | None = None
    kill: list[str] | None = None  # extra arguments for the kill scenario
    kill_note: str = ""
    notes: list[str] = field(default_factory=list)
    cwd: Path | None = None  # where it runs (None: the repository root)

    def available(self) -> str | None:
        """None if its Python modules import here, else a line saying what is missing."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"not installed ({', '.join(missing)}): pip install -e '.[bench]'"
        return None

    def serves(self, workload: str) -> bool:
        return self.only is None or workload in self.only


def _pool_shape(s: Settings) -> str:
    return f"{s.workers} processes x {s.threads} threads"


def _one_process_shape(s: Settings) -> str:
    return f"1 process x {s.workers * s.threads} threads"


# -- wsgipool -----------------------------------------------------------------------


def _wsgipool(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "wsgipool", "serve", app, "--workers", str(s.workers)]
    # bench/results were measured with the app imported once and forked (the default then).
    argv += ["--preload", "--threads", str(s.threads), "--bind", f"{HOST}:{port}", *extra]
    return argv, {}


def _wsgipool_metrics(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    """wsgipool with its metrics listener on: what observing costs (issue 12)."""
    from bench.procs import free_port

    return _wsgipool(s, app, port, [*extra, "--metrics-bind", f"{HOST}:{free_port()}"])


def baseline_server(directory: Path) -> Server:
    """`wsgipool-base`: another checkout of wsgipool (DIR, with its own DIR/.venv), run
    with the same flags as `wsgipool`, to measure a change against it in one run."""
    python = directory / ".venv" / "bin" / "python"
    # Before --preload was an option the app was always imported once and forked.
    has_preload = "preload" in (directory / "wsgipool" / "config.py").read_text()

    def build(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
        argv, env = _wsgipool(s, app, port, extra)
        if not has_preload:
            argv.remove("--preload")
        # -P and the working directory DIR: this checkout is never on sys.path, so
        # `wsgipool` and the bench apps come from DIR, in the server and in the
        # processes it spawns (which start with the working directory on their path).
        return [str(python), "-P", *argv[1:]], {**env, "PYTHONPATH": str(directory)}

    return Server(
        "wsgipool-base",
        f"wsgipool ({directory.name})",
        ("wsgipool",),
        ("wsgipool",),
        build,
        _pool_shape,
        _pool,
        reference=f"wsgipool from {directory}, the baseline of --baseline",
        cwd=directory,
    )


def check_baseline(directory: Path) -> str | None:
    """None if DIR looks like a wsgipool checkout with its own venv, else why not."""
    if not (directory / "wsgipool" / "__init__.py").is_file():
        return f"{directory} is not a wsgipool checkout (no wsgipool/__init__.py)"
    if not os.access(directory / ".venv" / "bin" / "python", os.X_OK):
        return f"{directory} has no .venv/bin/python (python3 -m venv .venv && pip install -e .)"
    return None


def _wsgipool_frontends(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    """wsgipool with two frontends (issue 13): an arbiter, two event loops, W workers split."""
    return _wsgipool(s, app, port, [*extra, "--frontends", "2"])


def _wsgipool_threads(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "wsgipool", "serve", app, "--workers", "0"]
    argv += ["--threads", str(s.workers * s.threads), "--bind", f"{HOST}:{port}", *extra]
    return argv, {}


# -- gunicorn -----------------------------------------------------------------------


def _version_tuple(distribution: str) -> tuple[int, ...]:
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _gunicorn_common() -> list[str]:
    # gunicorn >= 25.1 opens a control socket at one fixed path per user
    # (~/.gunicorn/gunicorn.ctl): two gunicorns on one machine would share it.
    if _version_tuple("gunicorn") >= (25, 1):
        return ["--no-control-socket"]
    return []


def _gunicorn_sync(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "gunicorn", "--worker-class", "sync", "--workers", str(s.workers)]
    argv += ["--bind", f"{HOST}:{port}", *_gunicorn_common(), *extra, app]
    return argv, {}


def _gunicorn_gthread(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(s.workers)]
    argv += ["--threads", str(s.threads), "--bind", f"{HOST}:{port}"]
    argv += [*_gunicorn_common(), *extra, app]
    return argv, {}


def _gunicorn_recycle(s: Settings, n: int) -> list[str]:
    return ["--max-requests", str(n)]


# -- granian ------------------------------------------------------------------------

GRANIAN_MIN_LIFETIME = 60  # granian refuses --workers-lifetime below 60 s


def _granian(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(s.workers), "--blocking-threads", str(s.threads), "--no-ws"]
    argv += [*extra, app]
    return argv, {}


def _granian_recycle(s: Settings, n: int) -> list[str]:
    # No per-request limit in granian: its closest setting is the worker lifetime.
    return ["--workers-lifetime", f"{GRANIAN_MIN_LIFETIME}s"]


def _granian_memory(mib: int) -> list[str]:
    return ["--workers-max-rss", str(mib), "--rss-sample-interval", "1s"]


# -- uWSGI --------------------------------------------------------------------------

# pyuwsgi is uWSGI built as a Python extension (its PyPI wheel: no compiler needed);
# `run()` is what its `uwsgi` script calls, with uWSGI's own options in sys.argv.
_UWSGI_MAIN = "import sys; from pyuwsgi import run; sys.argv[0] = 'uwsgi'; sys.exit(run())"


def _uwsgi(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    # --http11-socket: uWSGI's own HTTP with keep-alive (plain --http-socket closes every
    # connection); --master forks and respawns the workers (the app imported in the
    # master first, uWSGI's default, as wsgipool's --preload); --die-on-term: SIGTERM
    # stops it (uWSGI 2.0 otherwise reloads on SIGTERM); --disable-logging: no request log.
    argv = [PY, "-c", _UWSGI_MAIN, "--master", "--processes", str(s.workers)]
    argv += ["--threads", str(s.threads), "--http11-socket", f"{HOST}:{port}"]
    argv += ["--module", app, "--pythonpath", ".", "--need-app", "--die-on-term"]
    argv += ["--disable-logging", *extra]
    return argv, {}


def _uwsgi_memory(mib: int) -> list[str]:
    # A graceful reload of the worker; uWSGI looks when a connection ends, so not under
    # wrk's keep-alive connections (bench/README.md, notes on peers).
    return ["--reload-on-rss", str(mib)]


# -- the others ---------------------------------------------------------------------

_AIOHTTP_WSGI_MAIN = "from aiohttp_wsgi.__main__ import main; main()"


def _aiohttp_wsgi(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    # `python -m aiohttp_wsgi` does nothing in aiohttp-wsgi 0.10 (its __main__ has no
    # main guard); this is what its `aiohttp-wsgi-serve` script runs.
    argv = [PY, "-c", _AIOHTTP_WSGI_MAIN, app, "--host", HOST, "--port", str(port)]
    # --quiet: no access log, as with every other server here.
    argv += ["--threads", str(s.workers * s.threads), "--quiet", *extra]
    return argv, {}


def _uvicorn(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "uvicorn", "bench.apps.asgi:app", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(s.workers), "--lifespan", "off", "--no-access-log", *extra]
    return argv, {"BENCH_APP": app, "BENCH_THREADS": str(s.threads)}


def _uvicorn_one(adapter: str) -> Callable[[Settings, str, int, list[str]], tuple[Argv, Env]]:
    """One uvicorn process: the adapter gets W x T threads, or (wsgipool) a W x T pool."""

    def build(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
        argv = [PY, "-m", "uvicorn", "bench.apps.asgi:app", "--host", HOST, "--port", str(port)]
        argv += ["--workers", "1", "--no-access-log", *extra]
        env = {"BENCH_APP": app, "BENCH_ASGI": adapter}
        if adapter == "wsgipool":
            argv += ["--lifespan", "on"]
            env.update(BENCH_WORKERS=str(s.workers), BENCH_THREADS=str(s.threads))
        else:
            argv += ["--lifespan", "off"]
            env["BENCH_THREADS"] = str(s.workers * s.threads)
        return argv, env

    return build


def _uvicorn_recycle(s: Settings, n: int) -> list[str]:
    return ["--limit-max-requests", str(n)]


def _waitress(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
    argv = [PY, "-m", "waitress", f"--listen={HOST}:{port}"]
    argv += [f"--threads={s.workers * s.threads}", *extra, app]
    return argv, {}


def _native(uvloop: bool) -> Callable[[Settings, str, int, list[str]], tuple[Argv, Env]]:
    def build(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
        argv = [PY, "-m", "bench.apps.native", "--port", str(port), *extra]
        return ([*argv, "--uvloop"] if uvloop else argv), {}

    return build


#: The forwarder's workers spend about what wsgipool's spend on a hello request
#: (whole tree minus main process, 2026-11-30: 40-50 µs), so that its loop is woken
#: at wsgipool's rate and pace: at 77k req/s (no work) it batched far more.
FORWARD_WORK_US = 45


def _forward(parse: bool) -> Callable[[Settings, str, int, list[str]], tuple[Argv, Env]]:
    def build(s: Settings, app: str, port: int, extra: list[str]) -> tuple[Argv, Env]:
        argv = [PY, "-m", "bench.apps.forward", "--port", str(port), "--workers", str(s.workers)]
        argv += ["--work-us", str(FORWARD_WORK_US), *(["--parse"] if parse else []), *extra]
        return argv, {}

    return build


def _one_loop(s: Settings) -> str:
    return "1 process, 1 event loop"


def _pool(s: Settings) -> int:
    return s.workers


def _single(s: Settings) -> int:
    return 0


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            "wsgipool",
            "wsgipool",
            ("wsgipool",),
            ("wsgipool", "aiohttp", "multiprocess", "uvloop"),
            _wsgipool,
            _pool_shape,
            _pool,
            recycle=lambda s, n: ["--max-requests", str(n)],
            recycle_note="--max-requests {n}",
            memory_limit=lambda mib: ["--max-rss", f"{mib}M"],
            kill=[],
        ),
        Server(
            "wsgipool-metrics",
            "wsgipool --metrics-bind",
            ("wsgipool", "prometheus_client"),
            ("wsgipool", "prometheus_client"),
            _wsgipool_metrics,
            _pool_shape,
            _pool,
            reference="wsgipool with /metrics on, for the cost of observing (--set metrics)",
        ),
        Server(
            "wsgipool-2fe",
            "wsgipool --frontends 2",
            ("wsgipool",),
            ("wsgipool",),
            _wsgipool_frontends,
            lambda s: f"2 frontends; {_pool_shape(s)} in all",
            _pool,
            reference="wsgipool with two frontend processes, for their cost (--set frontends)",
        ),
        Server(
            "wsgipool-threads",
            "wsgipool --workers 0",
            ("wsgipool",),
            ("wsgipool",),
            _wsgipool_threads,
            _one_process_shape,
            _single,
            reference="wsgipool's thread mode (like aiohttp-wsgi), for reference",
        ),
        Server(
            "gunicorn-sync",
            "gunicorn sync",
            ("gunicorn",),
            ("gunicorn",),
            _gunicorn_sync,
            lambda s: f"{s.workers} processes x 1 thread",
            _pool,
            recycle=_gunicorn_recycle,
            recycle_note="--max-requests {n}",
            kill=[],
        ),
        Server(
            "gunicorn-gthread",
            "gunicorn gthread",
            ("gunicorn",),
            ("gunicorn",),
            _gunicorn_gthread,
            _pool_shape,
            _pool,
            recycle=_gunicorn_recycle,
            recycle_note="--max-requests {n}",
            kill=[],
        ),
        Server(
            "granian",
            "granian (wsgi)",
            ("granian",),
            ("granian",),
            _granian,
            lambda s: f"{s.workers} processes x {s.threads} blocking threads",
            _pool,
            recycle=_granian_recycle,
            recycle_note=f"--workers-lifetime {GRANIAN_MIN_LIFETIME}s (no max-requests; "
            "60 s is its minimum, so this run lasts at least 75 s)",
            recycle_min_duration=GRANIAN_MIN_LIFETIME + 15,
            memory_limit=_granian_memory,
            kill=["--respawn-failed-workers"],
            kill_note="--respawn-failed-workers",
        ),
        Server(
            "uwsgi",
            "uWSGI",
            ("pyuwsgi",),
            ("pyuwsgi",),
            _uwsgi,
            _pool_shape,
            _pool,
            recycle=lambda s, n: ["--max-requests", str(n)],
            recycle_note="--max-requests {n}",
            memory_limit=_uwsgi_memory,
            kill=[],
        ),
        Server(
            "aiohttp-wsgi",
            "aiohttp-wsgi",
            ("aiohttp_wsgi",),
            ("aiohttp-wsgi", "aiohttp"),
            _aiohttp_wsgi,
            _one_process_shape,
            _single,
        ),
        Server(
            "uvicorn-a2wsgi",
            "uvicorn + a2wsgi",
            ("uvicorn", "a2wsgi"),
            ("uvicorn", "a2wsgi", "uvloop", "httptools", "h11"),
            _uvicorn,
            lambda s: f"{s.workers} processes x {s.threads} a2wsgi threads",
            _pool,
            recycle=_uvicorn_recycle,
            recycle_note="--limit-max-requests {n}",
            kill=[],
        ),
        Server(
            "uvicorn-wsgipool",
            "uvicorn + wsgipool.asgi",
            ("uvicorn", "wsgipool"),
            ("uvicorn", "wsgipool", "uvloop", "httptools", "h11"),
            _uvicorn_one("wsgipool"),
            lambda s: f"1 uvicorn process; pool of {_pool_shape(s)}",
            _pool,
        ),
        Server(
            "uvicorn1-a2wsgi",
            "uvicorn (1 process) + a2wsgi",
            ("uvicorn", "a2wsgi"),
            ("uvicorn", "a2wsgi", "uvloop", "httptools", "h11"),
            _uvicorn_one("a2wsgi"),
            lambda s: f"1 uvicorn process x {s.workers * s.threads} a2wsgi threads",
            _single,
        ),
        Server(
            "uvicorn1-asgiref",
            "uvicorn (1 process) + asgiref WsgiToAsgi",
            ("uvicorn", "asgiref"),
            ("uvicorn", "asgiref", "uvloop", "httptools", "h11"),
            _uvicorn_one("asgiref"),
            lambda s: f"1 uvicorn process x {s.workers * s.threads} asgiref threads",
            _single,
        ),
        Server(
            "waitress",
            "waitress",
            ("waitress",),
            ("waitress",),
            _waitress,
            _one_process_shape,
            _single,
        ),
        Server(
            "aiohttp-native",
            "aiohttp native handler",
            ("aiohttp",),
            ("aiohttp",),
            _native(uvloop=False),
            _one_loop,
            _single,
            only=("hello",),
            reference="no WSGI: the ceiling of an aiohttp frontend on one core (asyncio loop)",
        ),
        Server(
            "aiohttp-native-uvloop",
            "aiohttp native on uvloop",
            ("aiohttp", "uvloop"),
            ("aiohttp", "uvloop"),
            _native(uvloop=True),
            _one_loop,
            _single,
            only=("hello",),
            reference="no WSGI: the ceiling of an aiohttp frontend on one core (uvloop)",
        ),
        Server(
            "forward",
            "bare forwarder",
            ("aiohttp",),
            ("uvloop",),
            _forward(parse=False),
            lambda s: f"1 loop, {s.workers} processes x 1 thread",
            _pool,
            only=("hello",),
            reference=(
                "no HTTP parsing, no WSGI: the floor of a Python frontend with worker "
                "processes (bench/apps/forward.py; hello only)"
            ),
        ),
        Server(
            "forward-parse",
            "bare forwarder + aiohttp's parser",
            ("aiohttp",),
            ("uvloop", "aiohttp"),
            _forward(parse=True),
            lambda s: f"1 loop, {s.workers} processes x 1 thread",
            _pool,
            only=("hello",),
            reference="the bare forwarder with aiohttp's C parser (forward.py --parse)",
        ),
    )
}

#: Named sets for ``--set``: (servers, workloads), scenarios none.
SETS: dict[str, tuple[list[str], list[str]]] = {
    # issue 14: the WSGI-to-ASGI adapters behind one uvicorn process, same app threads.
    "asgi": (
        ["uvicorn-wsgipool", "uvicorn1-a2wsgi", "uvicorn1-asgiref"],
        ["hello", "cpu", "echo", "django"],
    ),
    # issue 12: wsgipool with and without its metrics listener (and per-request RSS).
    "metrics": (["wsgipool", "wsgipool-metrics"], ["hello", "django"]),
    # issue 13: one frontend against two (an arbiter and two event loops sharing the sockets).
    "frontends": (["wsgipool", "wsgipool-2fe"], ["hello", "django"]),
    # issue 13: wsgipool's main process against the least any Python frontend of its
    # shape spends (bench/apps/forward.py). With a baseline: --servers
    # wsgipool,forward,wsgipool-base --baseline DIR --workloads hello.
    "floor": (["wsgipool", "forward", "forward-parse"], ["hello"]),
}

# The sets' own servers are measured with --set NAME (or by name), not by default.
DEFAULT_SERVERS = [
    name
    for name in SERVERS
    if name not in SETS["asgi"][0]
    and name not in ("wsgipool-metrics", "wsgipool-2fe", "forward", "forward-parse")
]
