"""Issue 13, "Must have" 5: ``--frontends N``, an arbiter and N frontend processes.

Real servers, real signals: both frontends answer on the one listening socket
(TCP, unix, TLS, systemd-activated); SIGHUP under load loses nothing and
replaces every worker; SIGTERM refuses new connections, drains a request in
flight and leaves no process; a SIGKILLed frontend is logged and started again
(after a backoff when it dies again at once) while the other serves on, and
its workers go with it; signals that reach a frontend still starting neither
end nor stop it; a killed arbiter takes the frontends with it; the pid file
holds the arbiter's PID; systemd hears from the arbiter alone; --metrics-bind
merges the frontends' metrics; bad counts are one line and exit 2.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli import (
    assert_one_line_error,
    not_zombie,
    refuses_connections,
    run_cli,
    wsgipool_cmd,
)
from tests.conftest import ServerProcess, free_port, http_get
from tests.e2e import rawhttp
from tests.polling import wait_for
from tests.systemd import NotifySocket, activate

SERVING = "frontends serving"


def _start(run_server, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    server: ServerProcess = run_server("frontendapp:app", *args, wait=False, env=env)
    if not wait_for(lambda: SERVING in server.log or server.proc.poll() is not None, 60):
        raise AssertionError(f"the frontends did not all start:\n{server.log}")
    assert server.proc.poll() is None, server.log
    server.descendants()
    return server


def _children(pid: int) -> list[int]:
    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return []


def _workers_of(frontend: int) -> list[int]:
    """The live workers of one frontend: the children of its templates."""
    return sorted(pid for template in _children(frontend) for pid in _children(template))


def _get(port: int, path: str = "/", conn: http.client.HTTPConnection | None = None) -> dict:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return json.loads(body)
    finally:
        if own:
            conn.close()


def _frontends_answering(port: int, want: set[int], tries: int = 400) -> set[int]:
    """Frontend PIDs seen over fresh connections (pairs at once, so both loops are busy)."""
    seen: set[int] = set()
    for _ in range(tries // 2):
        results: list[dict] = []
        threads = [
            threading.Thread(target=lambda out=results: out.append(_get(port))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        seen.update(result["frontend"] for result in results)
        if want <= seen:
            break
    return seen


class _Load:
    """GETs on fresh connections from two threads until stopped; counts answers and failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = _get(self.port)
            except Exception as exc:  # every failure counts, whatever its kind
                self.failures.append(repr(exc))
            else:
                self.ok += 1
                self.workers.add(answer["worker"])

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_both_frontends_answer_and_the_pid_file_holds_the_arbiter(run_server, tmp_path):
    pid_file = tmp_path / "server.pid"
    server = _start(run_server, "--workers", "3", "--frontends", "2", "--pid", str(pid_file))
    frontends = _children(server.pid)
    assert len(frontends) == 2, frontends
    assert int(pid_file.read_text()) == server.pid
    # The workers are split 2 + 1, each frontend with its own template.
    assert sorted(len(_workers_of(pid)) for pid in frontends) == [1, 2]
    assert _frontends_answering(server.port, set(frontends)) == set(frontends)
    names = {psutil.Process(pid).cmdline()[0] for pid in [server.pid, *frontends]}
    if any(name.startswith("wsgipool:") for name in names):  # setproctitle is installed
        assert names == {
            "wsgipool: arbiter [frontendapp:app]",
            "wsgipool: frontend 1 [frontendapp:app]",
            "wsgipool: frontend 2 [frontendapp:app]",
        }
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not pid_file.exists()


def test_thread_mode_runs_threads_in_each_frontend(run_server):
    server = _start(
        run_server,
        "--workers",
        "0",
        "--frontends",
        "2",
        env={"FRONTENDAPP_THREADS": "1"},
    )
    frontends = set(_children(server.pid))
    assert len(frontends) == 2
    assert _frontends_answering(server.port, frontends) == frontends


def test_sighup_under_load_loses_nothing_and_replaces_every_worker(run_server):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    frontends = _children(server.pid)
    before = {pid for frontend in frontends for pid in _workers_of(frontend)}
    assert len(before) == 2
    with _Load(server.port) as load:
        assert wait_for(lambda: load.ok > 20, 30)
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: "every frontend has reloaded" in server.log, 60), server.log

        def replaced() -> bool:
            now = {pid for frontend in frontends for pid in _workers_of(frontend)}
            return len(now) == 2 and not now & before

        assert wait_for(replaced, 30), server.log
        served = load.ok
        assert wait_for(lambda: load.ok > served + 20, 30)
    assert load.failures == []
    assert load.workers - before, "no request was served by a new worker"
    assert _children(server.pid) == frontends  # a reload keeps the frontends


def test_sigterm_drains_a_request_in_flight_then_exits_0_leaving_no_process(run_server, tmp_path):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    started, release = tmp_path / "started", tmp_path / "release"
    result: dict = {}

    def slow() -> None:
        try:
            result.update(_get(server.port, f"/slow?started={started}&until={release}"))
        except Exception as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    assert wait_for(started.exists, 20), "the slow request never reached the app"
    everything = [child.pid for child in server.descendants()]
    assert len(everything) >= 6  # two frontends, two templates, two workers

    server.signal(signal.SIGTERM)
    # The listening socket closes at once in every process (none holds it open)...
    assert wait_for(lambda: refuses_connections(server.port), 10), server.log
    # ...while the request in flight is still waiting, not cut.
    assert thread.is_alive() and not result
    release.write_text("go")
    thread.join(30)
    assert result.get("path") == "/slow", result
    assert server.wait(30) == 0
    assert wait_for(lambda: not [pid for pid in everything if not_zombie(pid)], 15)
    assert "Traceback" not in server.log


def test_a_killed_frontend_is_restarted_while_the_other_serves_on(run_server):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    frontends = _children(server.pid)
    # A keep-alive connection held by one frontend; the other one is killed.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(200):
        conn.close()
        survivor = _get(server.port, conn=conn)["frontend"]
        if survivor == frontends[0]:
            break
    else:
        pytest.fail("no connection reached frontend 1")
    victim = frontends[1]
    doomed = [victim, *_children(victim), *_workers_of(victim)]
    assert len(doomed) == 3, doomed  # the frontend, its template, its worker

    psutil.Process(victim).send_signal(signal.SIGKILL)
    answers = [_get(server.port, conn=conn)["frontend"] for _ in range(50)]
    conn.close()
    assert set(answers) == {survivor}
    assert wait_for(lambda: not [pid for pid in doomed if not_zombie(pid)], 15), doomed
    assert f"frontend 2 (pid {victim}) was killed by SIGKILL unexpectedly" in server.log

    def restarted() -> list[int]:
        now = _children(server.pid)
        return now if len(now) == 2 and victim not in now and _workers_of(now[1]) else []

    now = wait_for(restarted, 30)
    assert now and now[0] == survivor, server.log
    assert wait_for(lambda: f"frontend 2 (pid {now[1]}) serving" in server.log, 30)
    assert _frontends_answering(server.port, set(now)) == set(now)


def test_a_killed_arbiter_takes_the_frontends_and_workers_with_it(run_server):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    everything = [child.pid for child in server.descendants()]
    assert len(everything) >= 6
    server.signal(signal.SIGKILL)
    server.wait(10)
    assert wait_for(lambda: not [pid for pid in everything if not_zombie(pid)], 30)


def test_sigttin_adds_a_worker_to_one_frontend(run_server):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    frontends = _children(server.pid)
    server.signal(signal.SIGTTIN)
    counts = wait_for(lambda: sorted(len(_workers_of(pid)) for pid in frontends) == [1, 2], 30)
    assert counts, server.log


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--frontends", "0"], ["--frontends", "must be 1 or more"]),
        (["--workers", "1", "--frontends", "2"], ["--frontends", "at least 2 workers"]),
        (["--workers", "2", "--frontends", "2", "--reload"], ["--frontends", "--reload"]),
    ],
    ids=["zero", "fewer-workers", "reload"],
)
def test_bad_frontend_counts_are_one_line_and_exit_2(tmp_path, args, needles):
    code, _out, err, left = run_cli(
        wsgipool_cmd("serve", "frontendapp:app", "--bind", "127.0.0.1:0", *args), tmp_path
    )
    assert code == 2
    assert_one_line_error(err, *needles)
    assert left == []


def test_an_app_that_does_not_import_is_one_line_and_exit_2(tmp_path):
    code, _out, err, left = run_cli(
        wsgipool_cmd(
            "serve",
            "no_such_module_wsgipool:app",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--frontends",
            "2",
        ),
        tmp_path,
        timeout=60,
    )
    assert code == 2
    assert_one_line_error(err, "no_such_module_wsgipool")
    assert left == []
    assert not list(Path(tmp_path).glob("*.pid"))


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (apt-get install systemd)",
)
def test_systemd_sockets_and_notifications_come_from_the_arbiter(run_server, short_tmp):
    notify = NotifySocket(str(short_tmp / "notify"))
    port = free_port()
    try:
        server = run_server(
            "frontendapp:app",
            "--workers",
            "2",
            "--frontends",
            "2",
            bind=False,
            wait=False,
            env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"},
            launcher=activate(f"127.0.0.1:{port}", "NOTIFY_SOCKET", "WATCHDOG_USEC"),
        )
        assert wait_for(lambda: "Listening on" in server.log, 10), server.log
        answer = _get(port)  # systemd-socket-activate execs the server on this connection
        assert answer["port"] == str(port) and answer["notify"] is False
        ready = notify.wait_for("READY=1")
        assert "STATUS=2 frontends serving" in ready
        assert SERVING in server.log  # READY=1 came once every frontend served
        frontends = set(_children(server.pid))
        assert _frontends_answering(port, frontends) == frontends
        assert notify.wait_for("WATCHDOG=1", timeout=10) == "WATCHDOG=1"

        server.signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1").startswith("RELOADING=1")
        assert notify.wait_for("READY=1").startswith("READY=1")
        assert "every frontend has reloaded" in server.log
        # Both frontends have a template of the new generation by then.
        assert server.log.count("generation 2") >= 2

        server.signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING=1") == "STOPPING=1"
        assert server.wait(30) == 0
    finally:
        notify.close()


def test_metrics_bind_merges_the_frontends(run_server, tmp_path):
    metrics = free_port()
    server = _start(
        run_server, "--workers", "3", "--frontends", "2", "--metrics-bind", f"127.0.0.1:{metrics}"
    )
    frontends = set(_children(server.pid)) - {
        pid for pid in _children(server.pid) if "metrics" in " ".join(psutil.Process(pid).cmdline())
    }
    assert len(frontends) == 2
    sent = 0
    seen: set[int] = set()
    while seen != frontends and sent < 400:
        seen.add(_get(server.port)["frontend"])
        sent += 1
    assert seen == frontends

    assert http_get(metrics, "/healthz")[0] == 200
    assert http_get(metrics, "/readyz") == (200, b"ready\n")
    status, body = http_get(metrics, "/stats")
    assert status == 200
    stats = json.loads(body)
    assert sorted(w["frontend"] for w in stats["workers"]) == [1, 1, 2]
    assert sorted(w["slot"] for w in stats["workers"]) == [1, 2, 3]
    assert stats["workers_target"] == 3 and stats["ready"] is True
    assert [f["up"] for f in stats["frontends"]] == [True, True]
    assert sum(r["count"] for r in stats["requests"]) == sent

    status, body = http_get(metrics, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    up = {s.labels["frontend"]: s.value for s in families["wsgipool_frontend_up"].samples}
    assert up == {"1": 1.0, "2": 1.0}
    by_frontend: dict[str, float] = {}
    for sample in families["wsgipool_http_requests"].samples:
        if sample.name.endswith("_total"):
            key = sample.labels["frontend"]
            by_frontend[key] = by_frontend.get(key, 0) + sample.value
    assert set(by_frontend) == {"1", "2"} and all(by_frontend.values())
    assert sum(by_frontend.values()) == sent
    assert http_get(metrics, "/")[0] == 200  # the status page, from the merged /stats

    # `wsgipool status` reads the merged /stats as it reads one frontend's.
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsgipool",
            "status",
            "--once",
            "--metrics-bind",
            f"127.0.0.1:{metrics}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "workers 3/3 ready" in table

    # The merging process is started again if it dies; the private sockets go at the end.
    merger = [pid for pid in _children(server.pid) if pid not in frontends]
    assert len(merger) == 1
    psutil.Process(merger[0]).kill()
    assert wait_for(lambda: "metrics process" in server.log, 15), server.log
    assert wait_for(lambda: _try_status(metrics, "/readyz") == 200, 15)
    # A restarted frontend binds its private socket again (the dead one's file is stale).
    psutil.Process(sorted(frontends)[0]).kill()

    def both_up_again() -> bool:
        doc = json.loads(http_get(metrics, "/stats")[1])
        return [f["up"] for f in doc["frontends"]] == [True, True] and len(doc["workers"]) == 3

    assert wait_for(both_up_again, 30), server.log
    private = re.findall(r"metrics on unix:(\S+)/frontend-1\.sock", server.log)
    assert private, server.log
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not Path(private[0]).exists()


def _try_status(port: int, path: str) -> int:
    try:
        return http_get(port, path)[0]
    except OSError:
        return 0


def test_operator_signals_during_a_frontend_restart_neither_end_nor_stop_it(run_server):
    """SIGHUP, SIGUSR1, SIGTTIN and SIGTTOU may reach a frontend before its loop answers them."""
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    victim = _children(server.pid)[1]
    psutil.Process(victim).kill()
    assert wait_for(lambda: "was killed by SIGKILL" in server.log, 15), server.log
    # The new frontend 2 is starting now (its template checks that the app imports).
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
        server.signal(sig)
    serving = re.compile(r"arbiter: frontend 2 \(pid (\d+)\) serving")
    found = wait_for(lambda: serving.search(server.log), 30)
    assert found, server.log
    now = _children(server.pid)
    assert int(found.group(1)) in now and victim not in now and len(now) == 2
    for pid in now:
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    assert server.log.count("unexpectedly") == 1, server.log  # the kill, nothing after it
    assert _frontends_answering(server.port, set(now)) == set(now)


def test_a_frontend_that_dies_soon_after_its_restart_is_restarted_after_a_backoff(run_server):
    server = _start(run_server, "--workers", "2", "--frontends", "2")
    first = _children(server.pid)[1]
    psutil.Process(first).kill()
    again = re.compile(r"arbiter: frontend 2 \(pid (\d+)\) serving")
    found = wait_for(lambda: again.search(server.log), 30)
    assert found, server.log
    psutil.Process(int(found.group(1))).kill()  # at once: it has not served for 10 s
    assert wait_for(lambda: "starting it again in 0.5s" in server.log, 15), server.log
    assert wait_for(lambda: len(again.findall(server.log)) == 2, 30), server.log
    assert _frontends_answering(server.port, set(_children(server.pid))) == set(
        _children(server.pid)
    )


def test_a_unix_socket_is_shared_by_the_frontends_and_removed_by_the_arbiter(run_server, short_tmp):
    path = str(short_tmp / "app.sock")
    server = run_server(
        "frontendapp:app",
        "--workers",
        "2",
        "--frontends",
        "2",
        "--bind",
        f"unix:{path}",
        bind=False,
        wait=False,
    )
    assert wait_for(lambda: SERVING in server.log or server.proc.poll() is not None, 60)
    assert server.proc.poll() is None, server.log
    frontends = set(_children(server.pid))
    seen: set[int] = set()
    for _ in range(400):
        sock = rawhttp.connect(path)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = rawhttp.read_until_eof(sock)
        finally:
            sock.close()
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        seen.add(json.loads(reply.partition(b"\r\n\r\n")[2])["frontend"])
        if seen == frontends:
            break
    assert seen == frontends
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not Path(path).exists()


def test_tls_is_served_by_both_frontends(run_server, tmp_path):
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    tls = ["--certfile", str(pki.cert), "--keyfile", str(pki.key)]
    server = _start(run_server, "--workers", "2", "--frontends", "2", *tls)
    frontends = set(_children(server.pid))
    context = pki.client_context()
    seen: set[int] = set()
    for _ in range(400):
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
        seen.add(_get(server.port, conn=conn)["frontend"])
        conn.close()
        if seen == frontends:
            break
    assert seen == frontends
