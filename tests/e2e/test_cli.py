"""Issue 2, "Must have" 8 and 9, and its CLI tests: `wsgipool` as a subprocess.

Graceful stop on SIGTERM/SIGINT with a request in flight, one-line errors and
exit status 2 for a bad APP or a bad option value, --version, the unix socket's
permissions and its removal on exit, and both entry points.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import wsgipool
from tests.cli import (
    assert_one_line_error,
    not_zombie,
    refuses_connections,
    run_cli,
    wsgipool_cmd,
)
from tests.conftest import free_port, server_env

VENV_BIN = Path(sys.executable).parent


# -- graceful stop ----------------------------------------------------------------------------


def _get_in_thread(port: int, path: str, result: dict) -> threading.Thread:
    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            result["status"] = response.status
            result["body"] = response.read()
        except Exception as exc:
            result["error"] = repr(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_the_request_in_flight_finish_and_exits_0(
    run_server, executor_args, tmp_path, sig
):
    server = run_server("streamapp:app", *executor_args)
    started = tmp_path / "started"
    release = tmp_path / "release"
    result: dict = {}
    thread = _get_in_thread(server.port, f"/slow?started={started}&until={release}", result)
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the slow request never reached the app"

    server.signal(sig)
    # The server stops accepting while the request is still running...
    deadline = time.monotonic() + 10
    while not refuses_connections(server.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refuses_connections(server.port), "still accepting connections after the signal"
    assert thread.is_alive() and not result
    # ...and the request in flight finishes normally.
    release.write_text("go")
    thread.join(20)
    assert result == {"status": 200, "body": b"slow-done"}
    assert server.wait(20) == 0
    assert "Traceback" not in server.log


def test_sigterm_on_an_idle_server_exits_0_and_leaves_no_process(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    status, _headers, _body = server.request("GET", "/")
    assert status == 200
    children = server.descendants()
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(c.pid) and not_zombie(c.pid) for c in children):
            break
        time.sleep(0.05)
    assert not [c.pid for c in children if psutil.pid_exists(c.pid) and not_zombie(c.pid)]


# -- bad APP --------------------------------------------------------------------------------

BAD_APPS = [
    ("no_such_module_wsgipool:app", "no_such_module_wsgipool"),
    ("envapp:no_such_attribute", "no_such_attribute"),
    ("badapps:NOT_CALLABLE", "NOT_CALLABLE"),
    ("broken_syntax_mod:app", "SyntaxError"),
    ("raises_at_import_mod:app", "boom at import"),
]


@pytest.mark.parametrize(("app", "needle"), BAD_APPS, ids=[a for a, _ in BAD_APPS])
def test_bad_app_exits_2_with_one_line(tmp_path, executor_args, app, needle):
    # Modules in the current directory are importable, as with gunicorn.
    (tmp_path / "broken_syntax_mod.py").write_text("def app(environ, start_response:\n    pass\n")
    (tmp_path / "raises_at_import_mod.py").write_text(
        "raise RuntimeError('boom at import')\napp = None\n"
    )
    port = free_port()
    code, stdout, stderr, alive = run_cli(
        wsgipool_cmd("serve", app, *executor_args, "--bind", f"127.0.0.1:{port}"), tmp_path
    )
    assert code == 2, (stdout, stderr)
    assert_one_line_error(stderr, needle)
    assert "Traceback" not in stdout
    assert alive == [], "processes left behind after a failed start"
    assert refuses_connections(port)


# -- gunicorn's command lines -----------------------------------------------------------------


def test_gunicorn_only_flags_say_what_to_do_instead(tmp_path):
    """A command line written for gunicorn: one line naming each of its flags that has no
    twin here with what to do instead, and the subcommand's --help (not the top level's)."""
    argv = ["serve", "-k", "gthread", "envapp:app", "--statsd-host=x:1", "--capture-output"]
    code, _stdout, stderr, alive = run_cli(wsgipool_cmd(*argv), tmp_path)
    assert code == 2 and alive == []
    line = assert_one_line_error(
        stderr,
        "unrecognized arguments: -k envapp:app --statsd-host=x:1 --capture-output",
        "-k is gunicorn's: wsgipool has one kind of worker, processes of --threads threads",
        "--statsd-host is gunicorn's: wsgipool's metrics are Prometheus's: --metrics-bind",
        "--capture-output is gunicorn's: ",
    )
    assert line.endswith("(see 'wsgipool serve --help')")
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--bogus"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "unrecognized arguments: --bogus (see 'wsgipool serve --help')")
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\n")
    argv = ["serve", "envapp:app", "-c", "gunicorn.conf.py", "--check-config"]
    code, _stdout, stderr, _alive = run_cli(wsgipool_cmd(*argv), tmp_path)
    assert code == 2
    assert_one_line_error(stderr, "gunicorn.conf.py: a Python file; wsgipool reads TOML")


# -- start-up errors name the value's source -------------------------------------------------


def test_start_up_errors_name_where_the_value_came_from(tmp_path):
    """A file or address the server cannot use at start: the line names the variable,
    the file and line, or the flag that gave it (it named the flag every time)."""
    cases = [
        ({"WSGIPOOL_PID": "/nonexistent-dir/w.pid"}, [], "", "WSGIPOOL_PID: cannot write"),
        ({}, [], 'certfile = "/nonexistent.pem"\n', "wsgipool.toml:1: certfile: "),
        ({}, ["--bind", "unix:/nonexistent-dir/s.sock"], "", "--bind: cannot listen on"),
    ]
    for env, args, file, needle in cases:
        config = tmp_path / "wsgipool.toml"
        config.unlink(missing_ok=True)
        if file:
            config.write_text(file)
        argv = ["serve", "envapp:app", "--workers", "1", *args]
        if "--bind" not in args:
            argv += ["--bind", f"127.0.0.1:{free_port()}"]
        code, _stdout, stderr, alive = run_cli(wsgipool_cmd(*argv), tmp_path, env=env)
        assert code == 2 and alive == [], stderr
        assert "Traceback" not in stderr
        # The last line (the pid file is written after the workers start and log).
        line = stderr.strip().splitlines()[-1]
        assert line.startswith(f"wsgipool: error: {needle}"), stderr


# -- bad option values ------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--max-rss", "lots"], "--max-rss"),
    (["--port", "x"], "--port"),
    (["--unix-socket-perms", "999"], "--unix-socket-perms"),
    (["--timeout", "5parsecs"], "--timeout"),
    (["--workers", "-1"], "--workers"),
    (["--max-request-body-size", "12Q"], "--max-request-body-size"),
]


@pytest.mark.parametrize(("args", "option"), BAD_OPTIONS, ids=[o for _, o in BAD_OPTIONS])
def test_bad_option_value_exits_2_naming_the_option(tmp_path, args, option):
    code, stdout, stderr, alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--workers", "1", *args), tmp_path
    )
    assert code == 2, (stdout, stderr)
    line = assert_one_line_error(stderr, option)
    assert args[1] in line
    assert alive == []


# -- entry points -----------------------------------------------------------------------------


def test_version_from_both_entry_points(tmp_path):
    for argv in (wsgipool_cmd("--version"), [str(VENV_BIN / "wsgipool"), "--version"]):
        code, stdout, stderr, _alive = run_cli(argv, tmp_path)
        assert code == 0, stderr
        assert stdout.strip() == f"wsgipool {wsgipool.__version__}"


def test_console_script_serves(run_server, tmp_path):
    """`python -m wsgipool serve` (run_server) and the `wsgipool` script both serve."""
    server = run_server("envapp:app", "--workers", "0")
    status, _headers, _body = server.request("GET", "/")
    assert status == 200
    port = free_port()
    bind = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(VENV_BIN / "wsgipool"), "serve", "envapp:app", "--workers", "0", "--bind", bind],
        cwd=tmp_path,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        status = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
                break
            except OSError:
                time.sleep(0.05)
        assert status == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


# -- unix socket ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "perms", "mode"),
    [("bind", "660", 0o660), ("unix-socket", "0660", 0o660), ("bind", None, 0o600)],
    ids=["bind-660", "unix-socket-0660", "default-600"],
)
def test_unix_socket_permissions_and_removal(run_server, short_tmp, style, perms, mode):
    path = short_tmp / "app.sock"
    args = ["--bind", f"unix:{path}"] if style == "bind" else ["--unix-socket", str(path)]
    if perms is not None:
        args += ["--unix-socket-perms", perms]
    server = run_server("envapp:app", "--workers", "0", *args, bind=False, wait=False)
    # The very first time the socket file can be seen, it already has its mode.
    first_seen = None
    deadline = time.monotonic() + 30
    while first_seen is None and time.monotonic() < deadline and server.proc.poll() is None:
        try:
            first_seen = path.stat().st_mode
        except FileNotFoundError:
            time.sleep(0.001)
    assert first_seen is not None, server.log
    assert stat.S_IMODE(first_seen) == mode, oct(stat.S_IMODE(first_seen))
    server.wait_until_serving()
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == mode, oct(stat.S_IMODE(info.st_mode))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert not path.exists(), "the socket file must be removed on exit"


def test_help_lists_every_option():
    """--help renders (argparse %-formats help texts: a bare % in one used to crash it)."""
    result = subprocess.run(
        [sys.executable, "-m", "wsgipool", "serve", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--workers", "--max-rss", "--max-lifetime-jitter", "--unix-socket-perms"):
        assert flag in result.stdout
    assert "10% of --max-lifetime" in result.stdout
