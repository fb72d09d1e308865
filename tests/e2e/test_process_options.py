"""Issue 10, points 7 and 8: --pid, --chdir, --user/--group, process titles and --reload.

Real servers: the pid file appears once the sockets are bound and goes on
SIGTERM; --chdir imports the app from another directory; as root, the template
and workers run as a user this test creates (and removes); ps shows what each
process is when setproctitle is installed; --reload serves a changed app file.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from tests.cli import assert_one_line_error, run_cli, wsgipool_cmd
from tests.conftest import free_port, server_env
from tests.polling import wait_for

WHOAMI = """\
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getuid()} {os.getgid()} {sorted(os.getgroups())} {os.getcwd()}".encode()]
"""

# -- --pid ---------------------------------------------------------------------------------


def test_pid_file_written_after_bind_and_removed_on_sigterm(run_server, tmp_path):
    pid_file = tmp_path / "run" / "wsgipool.pid"
    pid_file.parent.mkdir()
    server = run_server("envapp:app", "--workers", "1", "--pid", str(pid_file))
    assert pid_file.read_text() == f"{server.pid}\n"
    # A second server refuses to take the pid file of a running one.
    code, _stdout, stderr, alive = run_cli(
        wsgipool_cmd(
            "serve",
            "envapp:app",
            "--workers",
            "1",
            "--pid",
            str(pid_file),
            "--bind",
            f"127.0.0.1:{free_port()}",
        ),
        tmp_path,
    )
    assert code == 2 and alive == []
    assert_one_line_error(stderr, "--pid", "running process")
    assert pid_file.read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert not pid_file.exists()


def test_pid_file_not_written_when_the_bind_fails(run_server, tmp_path):
    server = run_server("envapp:app", "--workers", "0")
    pid_file = tmp_path / "second.pid"
    code, _stdout, stderr, alive = run_cli(
        wsgipool_cmd(
            "serve",
            "envapp:app",
            "--workers",
            "1",
            "--pid",
            str(pid_file),
            "--bind",
            f"127.0.0.1:{server.port}",
        ),
        tmp_path,
    )
    assert code == 2 and alive == []
    assert "cannot listen" in stderr.splitlines()[-1]
    assert not pid_file.exists()


def test_stale_pid_file_is_replaced(run_server, tmp_path):
    pid_file = tmp_path / "stale.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")
    server = run_server("envapp:app", "--workers", "0", "--pid", str(pid_file))
    assert pid_file.read_text() == f"{server.pid}\n"


# -- --chdir -------------------------------------------------------------------------------


def test_chdir_imports_the_app_and_resolves_paths_there(run_server, tmp_path):
    project = tmp_path / "project"
    (project / "assets").mkdir(parents=True)
    (project / "whoami_chdir.py").write_text(WHOAMI)
    (project / "assets" / "hello.txt").write_text("static hello")
    server = run_server(
        "whoami_chdir:app",
        "--workers",
        "1",
        "--chdir",
        "project",
        "--static",
        "/assets=./assets",
    )
    status, _headers, body = server.request("GET", "/")
    assert status == 200 and body.decode().endswith(str(project))
    assert server.request("GET", "/assets/hello.txt")[2] == b"static hello"


def test_chdir_to_a_missing_directory_is_one_line(tmp_path):
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--chdir", "nowhere"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "--chdir", "nowhere")


# -- --backlog ------------------------------------------------------------------------------


def _listen_backlog(port: int) -> int:
    """The backlog of the socket listening on `port` (ss's Send-Q of a listener)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


@pytest.mark.parametrize("workers", ["1", "0"], ids=["processes", "threads"])
def test_backlog_is_the_listening_sockets(run_server, workers):
    """aiohttp's site listened again with its own default (128) over --backlog."""
    server = run_server("envapp:app", "--workers", workers, "--backlog", "50")
    assert _listen_backlog(server.port) == 50
    server = run_server("envapp:app", "--workers", workers)
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(server.port) == min(1024, somaxconn)  # the kernel caps it


# -- --pythonpath ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "0"], ids=["processes", "threads"])
def test_pythonpath_finds_an_app_outside_the_working_directory(run_server, tmp_path, workers):
    """gunicorn's --pythonpath: directories put first on sys.path; a worker imports from them."""
    for name in ("src", "lib"):
        (tmp_path / name).mkdir()
    (tmp_path / "src" / "whoami_path.py").write_text(WHOAMI)
    server = run_server("whoami_path:app", "--workers", workers, "--pythonpath", "lib,src")
    status, _headers, _body = server.request("GET", "/")
    assert status == 200, server.log


def test_pythonpath_that_is_no_directory_is_one_line(tmp_path):
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--pythonpath", "nowhere"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "--pythonpath", "nowhere")


# -- --user / --group ----------------------------------------------------------------------


@contextlib.contextmanager
def system_user():
    """A user and group made for this test with useradd, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("--user/--group need root to test (switching users needs privileges)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = "wp" + uuid.uuid4().hex[:10]
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def public_dir():
    """A directory every user may read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="wp-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_user_and_group_drop_privileges_of_template_and_workers(run_server, public_dir):
    (public_dir / "whoami_user.py").write_text(WHOAMI)
    with system_user() as user:
        nogroup = grp.getgrnam("nogroup" if _has_group("nogroup") else "daemon")
        server = run_server(
            "whoami_user:app",
            "--workers",
            "2",
            "--user",
            user.pw_name,
            "--group",
            nogroup.gr_name,
            cwd=public_dir,
        )
        status, _headers, body = server.request("GET", "/")
        assert status == 200, body
        uid, gid, groups, _cwd = body.decode().split(" ", 3)
        assert (int(uid), int(gid)) == (user.pw_uid, nogroup.gr_gid)
        assert "0," not in groups and "[0]" not in groups  # root's groups are gone
        # The main process keeps its privileges (it removes the socket and pid file at exit).
        assert psutil.Process(server.pid).uids().real == 0
        children = server.descendants()
        assert len(children) >= 3  # template and two workers
        for child in children:
            assert child.uids().effective == user.pw_uid
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_unknown_user_is_one_line(tmp_path):
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--user", "no-such-user-wp"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "--user", "no such user")


def test_user_needs_worker_processes(tmp_path):
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--workers", "0", "--user", "0"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "--user", "worker processes")


# -- process titles ------------------------------------------------------------------------


def test_process_titles(run_server):
    pytest.importorskip("setproctitle", reason="titles need the 'proctitle' extra")
    server = run_server("envapp:app", "--workers", "2")
    processes = [psutil.Process(server.pid), *server.descendants()]
    titles = {" ".join(p.cmdline()).strip() for p in processes}
    assert "wsgipool: main [envapp:app]" in titles
    assert "wsgipool: template [envapp:app]" in titles
    workers = {t for t in titles if t.startswith("wsgipool: worker ")}
    assert workers == {"wsgipool: worker 1 [envapp:app]", "wsgipool: worker 2 [envapp:app]"}


# -- --reload ------------------------------------------------------------------------------

APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{text}"]
"""


def test_reload_serves_the_changed_app(run_server, tmp_path):
    pytest.importorskip("watchfiles", reason="--reload needs the 'reload' extra")
    (tmp_path / "reloadapp.py").write_text(APP.format(text="first"))
    server = run_server("reloadapp:app", "--workers", "2", "--reload")
    assert server.request("GET", "/")[2] == b"first"
    old_workers = set(server.worker_pids())

    def changed() -> bool:
        # Written until seen: the watcher may start a moment after the server answers.
        (tmp_path / "reloadapp.py").write_text(APP.format(text="second"))
        return server.request("GET", "/")[2] == b"second"

    assert wait_for(changed, timeout=60, interval=0.5), server.log
    assert "reload: reloadapp.py changed" in server.log
    # Every worker is replaced (a rolling reload), and no request failed meanwhile.
    assert wait_for(lambda: not old_workers & set(server.worker_pids()), timeout=60)
    for _ in range(10):
        assert server.request("GET", "/")[2] == b"second"


def test_reload_refused_with_workers_0(tmp_path):
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--workers", "0", "--reload"), tmp_path
    )
    assert code == 2
    assert_one_line_error(stderr, "--reload", "worker processes")


def test_reload_without_watchfiles_is_one_line(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "watchfiles.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": f"{shim}{os.pathsep}{server_env()['PYTHONPATH']}"}
    code, _stdout, stderr, _alive = run_cli(
        wsgipool_cmd("serve", "envapp:app", "--workers", "1", "--reload"), tmp_path, env=env
    )
    assert code == 2
    assert_one_line_error(stderr, "--reload", "pip install 'wsgipool[reload]'")
