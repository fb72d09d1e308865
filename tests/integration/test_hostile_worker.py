"""A worker that breaks the protocol on purpose, against the real main process.

The server runs ``hostileapp:app`` (tests/apps/hostileapp.py): a request to
``/puppet`` hands its worker's channel to this test, which writes frames of its
choosing into it (out of order, beyond credit, for other requests, with
descriptors in the wrong places) while real clients wait for their answers.
The main process must kill such a worker, answer its requests (502, or a cut
connection once a head went out), and keep its own memory and descriptors
bounded; other workers carry on.

The hypothesis state machine plays arbitrary sequences of such steps and
checks after every one: the main process is alive, its RSS and descriptor
count are bounded, every client whose worker died got an answer or a close,
and nothing escaped as a traceback into the log.  Its figures (largest RSS
and descriptor count seen) are printed for the record.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.apps import hostileapp
from tests.conftest import ServerProcess
from tests.polling import wait_for
from wsgipool import protocol as p

MIB = 1024 * 1024
RSS_ALLOWANCE = 64 * MIB
ANSWER_TIMEOUT = 10.0
#: Log text that means something escaped a handler or a callback.
ESCAPES = ("Traceback", "Error handling request", "Exception in callback", "exception was never")


# -- the two ends: the puppet's control connection and its HTTP client ------------------------


class Puppet:
    """One request in flight: its client socket and the control line to the app running it."""

    def __init__(self, conn: socket.socket, hello: dict[str, Any], client: socket.socket) -> None:
        self.conn = conn
        self.lines = conn.makefile("rwb", buffering=0)
        self.n = int(hello["n"])
        self.pid = int(hello["pid"])
        self.rid = int(hello["rid"])
        self.client: socket.socket | None = client
        self.dead = False
        self.started = False  # the test sent START for it

    def command(self, command: dict[str, Any], reply: bool = True) -> bool:
        """Send a command; False if the worker is gone (killed by the main process)."""
        if self.dead:
            return False
        try:
            self.lines.write(json.dumps(command).encode() + b"\n")
            if reply and not self.lines.readline():
                self.dead = True
        except OSError:
            self.dead = True
        return not self.dead

    def gone(self) -> bool:
        """Whether the worker died (its end of the control connection closed)."""
        if not self.dead:
            self.conn.setblocking(False)
            try:
                if self.conn.recv(1) == b"":
                    self.dead = True
            except BlockingIOError:
                pass
            except OSError:
                self.dead = True
            finally:
                self.conn.setblocking(True)
        return self.dead

    def close(self) -> None:
        self.lines.close()
        self.conn.close()
        if self.client is not None:
            self.client.close()


class Control:
    """The AF_UNIX socket the puppets connect to."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(20.0)
        self.count = 0

    def open(
        self, port: int, method: str = "GET", reader: bool = True, body: bytes = b""
    ) -> Puppet:
        """Start a request to /puppet and wait for the app to report in."""
        self.count += 1
        n = self.count
        client = socket.socket()
        if not reader:  # a client that reads nothing: small buffers, so backpressure is quick
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(ANSWER_TIMEOUT)
        client.connect(("127.0.0.1", port))
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        head = f"{method} /puppet?n={n} HTTP/1.1\r\nHost: test\r\n{length}\r\n"
        client.sendall(head.encode() + body)
        while True:
            conn, _ = self.sock.accept()
            conn.settimeout(ANSWER_TIMEOUT)
            hello = json.loads(conn.makefile("rb").readline())
            if hello["n"] == n:
                return Puppet(conn, hello, client)
            conn.close()  # a puppet of an earlier, abandoned request

    def close(self) -> None:
        self.sock.close()


def answer(client: socket.socket, timeout: float = ANSWER_TIMEOUT) -> int | str:
    """The status of the response, or "closed" if the connection ended before one.

    Raises AssertionError if neither happens within `timeout`: a request left hanging.
    """
    client.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return "closed" if not data else f"cut: {data[:40]!r}"
            data += chunk
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout}s (got {data[:60]!r})") from None
    except ConnectionResetError:
        return "closed"
    line = data.split(b"\r\n", 1)[0]
    return int(line.split()[1])


def frame(kind: int, payload: str, rid: str | int = "own", repeat: int = 1) -> list[Any]:
    return [kind, rid, payload, repeat]


class Main:
    """The main process's figures: resident memory and open descriptors."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.process = psutil.Process(server.pid)
        self.max_rss = 0
        self.max_fds = 0

    def rss(self) -> int:
        value = int(self.process.memory_info().rss)
        self.max_rss = max(self.max_rss, value)
        return value

    def fds(self) -> int:
        value = int(self.process.num_fds())
        self.max_fds = max(self.max_fds, value)
        return value

    def escapes(self) -> str:
        """The log from the first line that says something escaped (empty if none)."""
        lines = self.server.log.splitlines()
        for index, line in enumerate(lines):
            if any(word in line for word in ESCAPES):
                return "\n".join(lines[max(index - 5, 0) : index + 60])
        return ""


def heal(server: ServerProcess, workers: int = 2) -> None:
    """Requests until the pool serves again with both its workers, so each replacement
    completes a request (which resets the crash backoff: these deaths are the test's
    doing).

    A round may meet a worker the test just made break the rules (its requests get
    502 by design): the pool is healed when a whole round is answered 200 and both
    workers are there. One worker can answer a round alone while the other's
    replacement still waits out a crash backoff (up to 10 s after many young
    deaths); a request sent then could wait as long for a thread.
    """
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(6) as pool:
        while time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: server.request("GET", "/hello")[0], range(6)))
            assert set(statuses) <= {200, 502}, statuses
            if statuses == [200] * 6 and len(server.worker_pids()) == workers:
                return
            time.sleep(0.05)
    raise AssertionError(f"the pool does not serve again: {statuses}, {server.worker_pids()}")


def start(run_server: Any, short_tmp: Path, workers: int = 2) -> tuple[ServerProcess, Control]:
    control = Control(short_tmp / "control")
    server = run_server(
        "hostileapp:app",
        "--workers",
        str(workers),
        "--threads",
        "4",
        env={"HOSTILE_CONTROL": control.path},
    )
    heal(server, workers)
    return server, control


# -- one violation at a time --------------------------------------------------------------

START = frame(p.START, "start")
#: (what the worker sends, the request's method, what the log must name)
VIOLATIONS = [
    ([frame(p.DONE, "done")], "GET", "DONE before its response"),
    ([START, frame(p.START, "start")], "GET", "START while streaming"),
    ([frame(p.TAKEOVER, "empty")], "HEAD", "TAKEOVER for a request that did not allow it"),
    # Requests on the fast lane, and on the handler's path those that never run again,
    # carry the client socket: PROGRESS may come first there. A GET with a body (the
    # handler's, and it may run again) carries none.
    ([frame(p.PROGRESS, "empty")], "GET+body", "PROGRESS before its response"),
    ([frame(p.END, "empty")], "GET", "END before its response"),
    ([frame(p.DATA, "data1")], "GET", "DATA before its response"),
    ([START, frame(p.RAW, "raw")], "GET", "RAW while streaming"),
    ([START, frame(p.DATA, "empty")], "GET", "empty DATA"),
    ([START, frame(p.DATA, "data256k+1")], "GET", "at most 262144 per DATA frame"),
    ([frame(p.RAW, "raw_bad")], "GET", "protocol error"),
    ([frame(p.RAW, "raw_2m")], "GET", "response bytes with"),
    ([frame(p.DATA, "data1", rid="unknown")], "GET", "which this worker does not have"),
    ([frame(p.STACK, "text")], "GET", "STACK for request"),
    ([frame(p.HELLO, "hello", rid=0)], "GET", "unexpected HELLO"),
]


def test_each_violation_kills_the_worker_and_answers_its_request_502(run_server, short_tmp):
    """DONE without TAKEOVER, a second START, TAKEOVER not offered, a RAW head that fails
    the check, ...: the worker is killed and the request that triggered it gets 502, or a
    cut connection when the worker still held its client socket (DONE without PROGRESS
    says it wrote there: a 502 after its bytes would be a second answer)."""
    server, control = start(run_server, short_tmp)
    try:
        for frames, method, reason in VIOLATIONS:
            body = b"x" if method.endswith("+body") else b""
            puppet = control.open(server.port or 0, method.removesuffix("+body"), body=body)
            assert puppet.command({"op": "frames", "frames": frames}, reply=False)
            assert puppet.client is not None
            status = answer(puppet.client)
            # 502, or a cut when the worker still held the client socket: its frames
            # cannot say whether it wrote there, and a 502 after its bytes would mix.
            assert status in (502, "closed"), (frames, status, server.log[-2000:])
            if method == "GET+body":  # no client socket: always answered
                assert status == 502
            assert wait_for_death(puppet), frames
            assert wait_for(lambda r=reason: r in server.log, 5), (reason, server.log[-2000:])
            puppet.close()
            heal(server)
        assert Main(server).escapes() == ""
    finally:
        control.close()


def test_a_worker_that_began_writing_and_broke_the_protocol_cuts_the_connection(
    run_server, short_tmp
):
    """A GET on the lane carries the client socket; once its worker said PROGRESS (it
    writes the response to the client itself), a protocol error ends the connection
    with no 502, which would follow bytes the worker may have written."""
    server, control = start(run_server, short_tmp)
    try:
        puppet = control.open(server.port or 0, "GET")
        wire = [frame(p.PROGRESS, "empty"), frame(p.RAW, "raw")]
        assert puppet.command({"op": "frames", "frames": wire}, reply=False)
        assert puppet.client is not None
        assert answer(puppet.client) == "closed"
        assert wait_for_death(puppet)
        assert wait_for(lambda: "RAW during a direct write" in server.log, 5), server.log[-2000:]
        assert wait_for(lambda: "/puppet cut" in server.log, 5), server.log[-2000:]
        puppet.close()
        heal(server)
        assert Main(server).escapes() == ""
    finally:
        control.close()


@pytest.mark.parametrize("written", ["before-progress", "unknown", "none", "part", "all"])
def test_a_worker_killed_with_the_client_socket_is_retried_only_if_it_wrote_nothing(
    run_server, short_tmp, written: str
):
    """SIGKILL of the worker that holds a lane GET's client socket. Before PROGRESS it
    wrote nothing: the request runs again on another worker. After a PROGRESS that
    names the socket's byte count and the response's size, the socket says how far it
    got: nothing (it runs again), all of it (answered, not run again) or a part (the
    connection is cut). After a PROGRESS without those ("unknown"), it is cut."""
    server, control = start(run_server, short_tmp)
    try:
        puppet = kill_in_a_whole_write(control, server.port or 0, "GET", written)
        runs_again = written in ("before-progress", "none")
        control.sock.settimeout(ANSWER_TIMEOUT if runs_again else 5)
        try:
            again, _ = control.sock.accept()  # the retry's app reporting in
        except TimeoutError:
            again = None
        assert puppet.client is not None
        if not runs_again:
            assert again is None, "ran again after its worker wrote to the client"
            expected = {
                "all": 200,
                "part": f"cut: {hostileapp.WHOLE[:10]!r}",
                "unknown": "closed",
            }[written]
            assert answer(puppet.client) == expected, server.log[-2000:]
            if written == "all":
                assert_keeps_serving(puppet.client)
        else:
            assert again is not None, server.log[-2000:]
            retried = json.loads(again.makefile("rb").readline())
            assert retried["n"] == puppet.n and retried["pid"] != puppet.pid
            again.makefile("wb", buffering=0).write(b'{"op": "return"}\n')
            assert answer(puppet.client) == 200
            again.close()
        puppet.close()
        heal(server)
    finally:
        control.close()


@pytest.mark.parametrize("written", ["before-progress", "unknown", "none", "part", "all"])
def test_a_worker_killed_with_the_socket_of_a_post_answers_502_only_if_it_wrote_nothing(
    run_server, short_tmp, written: str
):
    """A POST (never run again) carries the client socket too: a worker killed before
    it wrote any of its whole response gets the request a 502; one that wrote all of
    it answered it (200); one that wrote a part, or said PROGRESS without its count,
    gets the connection cut. No answer of ours follows bytes the worker wrote."""
    server, control = start(run_server, short_tmp)
    try:
        puppet = kill_in_a_whole_write(control, server.port or 0, "POST", written)
        assert puppet.client is not None
        expected = {
            "before-progress": 502,
            "none": 502,
            "all": 200,
            "part": f"cut: {hostileapp.WHOLE[:10]!r}",
            "unknown": "closed",
        }[written]
        assert answer(puppet.client) == expected, server.log[-2000:]
        if written == "all":
            assert_keeps_serving(puppet.client)
        control.sock.settimeout(1)
        with pytest.raises(TimeoutError):
            control.sock.accept()  # it did not run again
        puppet.close()
        heal(server)
    finally:
        control.close()


def kill_in_a_whole_write(control: Control, port: int, method: str, written: str) -> Puppet:
    """A request whose worker got the client socket, SIGKILLed at the point `written`
    names: before PROGRESS, after a PROGRESS without ("unknown") or with its intent,
    then having written none, a part or all of `hostileapp.WHOLE` to the client."""
    puppet = control.open(port, method)
    if written != "before-progress":
        payload = "empty" if written == "unknown" else "intent"
        assert puppet.command({"op": "frames", "frames": [frame(p.PROGRESS, payload)]})
    if written in ("part", "all"):
        text = hostileapp.WHOLE if written == "all" else hostileapp.WHOLE[:10]
        assert puppet.command({"op": "write_client", "text": text.decode("latin-1")})
    os.kill(puppet.pid, signal.SIGKILL)
    assert wait_for_death(puppet)
    return puppet


def assert_keeps_serving(client: socket.socket) -> None:
    """The connection whose response a dead worker wrote whole takes its next request:
    its head said keep-alive, and nothing of that worker's can follow."""
    client.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
    assert answer(client) == 200, "the connection was closed after a whole write"


def wait_for_death(puppet: Puppet, timeout: float = ANSWER_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not puppet.gone():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_data_beyond_credit_is_not_buffered_for_a_client_that_reads_nothing(run_server, short_tmp):
    """128 MiB of DATA for a client that reads nothing: the worker is killed once it is
    past its credit, and the main process's memory does not follow."""
    server, control = start(run_server, short_tmp)
    main = Main(server)
    baseline = main.rss()
    try:
        puppet = control.open(server.port or 0, reader=False)
        flood = [START, frame(p.DATA, "data256k", repeat=512)]
        puppet.command({"op": "frames", "frames": flood}, reply=False)
        assert wait_for_death(puppet, 30.0)
        assert wait_for(lambda: "262144 response bytes with 0 of credit left" in server.log, 5)
        assert main.rss() < baseline + RSS_ALLOWANCE, (baseline, main.rss())
        assert puppet.client is not None
        assert answer(puppet.client) in (200, "closed")  # the head went out, then the cut
        puppet.close()
        heal(server)
    finally:
        control.close()
    print(f"\nmain RSS: baseline {baseline / MIB:.1f} MiB, peak {main.max_rss / MIB:.1f} MiB")


def test_a_flood_of_one_byte_frames_is_bounded_in_number(run_server, short_tmp):
    """A million one-byte DATA frames is only 1 MiB, within the byte credit, but each
    costs the main process an event of a hundred bytes and more: 109 MiB of RSS for one
    request, and a core for seconds. Each frame spends at least DATA_FRAME_COST of credit,
    so the worker is killed past 2,048 of them."""
    server, control = start(run_server, short_tmp)
    main = Main(server)
    baseline = main.rss()
    try:
        puppet = control.open(server.port or 0, reader=False)
        flood = [START, frame(p.DATA, "data1", repeat=1 << 20)]
        puppet.command({"op": "frames", "frames": flood}, reply=False)
        assert wait_for_death(puppet, 30.0)
        assert wait_for(lambda: "1 response bytes with 0 of credit left" in server.log, 5)
        assert main.rss() < baseline + 16 * MIB, (baseline, main.rss())
        assert puppet.client is not None
        assert answer(puppet.client) in (200, "closed")
        puppet.close()
        heal(server)
    finally:
        control.close()
    print(f"\nmain RSS: baseline {baseline / MIB:.1f} MiB, peak {main.max_rss / MIB:.1f} MiB")


def test_descriptors_nobody_claimed_are_not_queued(run_server, short_tmp):
    """One pipe descriptor with each of 200 frames that announce none: the worker is
    killed at the second, and the main process holds none of them."""
    server, control = start(run_server, short_tmp)
    main = Main(server)
    before = main.fds()
    try:
        puppet = control.open(server.port or 0)
        for _ in range(200):
            status = frame(p.STATUS, "status", rid=0)
            if not puppet.command({"op": "frames", "frames": [status], "fds": 1}):
                break
        assert wait_for_death(puppet)
        assert wait_for(lambda: "descriptors that no frame claimed" in server.log, 5)
        assert puppet.client is not None
        # The worker held the client socket (a lane GET) and broke the protocol: whether it
        # wrote there is unknown, so the connection is cut rather than answered 502.
        assert answer(puppet.client) in (502, "closed")
        puppet.close()
        heal(server)
        assert wait_for_fds(main, before), (before, main.fds())
    finally:
        control.close()


def refused(
    server: ServerProcess, control: Control, frames: list[Any], logged: str, **command: Any
) -> int | str:
    """A puppet that sends `frames` (and `command`'s descriptors): the worker dies, the
    log names `logged`; what the puppet's client got (a status, or "closed")."""
    puppet = control.open(server.port or 0)
    puppet.command({"op": "frames", "frames": frames, **command}, False)
    assert wait_for_death(puppet)
    assert wait_for(lambda: logged in server.log, 5), (logged, server.log[-2000:])
    assert puppet.client is not None
    status = answer(puppet.client)
    puppet.close()
    return status


def test_a_file_frame_with_a_pipe_is_refused(run_server, short_tmp):
    """FILE must carry a readable regular file: a pipe (a descriptor the main process
    would wait on for ever, or fail to sendfile) kills the worker; the client gets an answer."""
    server, control = start(run_server, short_tmp)
    try:
        frames = [START, frame(p.FILE, "file")]
        status = refused(server, control, frames, "not a readable file", fds=1, fd_kind="pipe")
        assert status == 502
    finally:
        control.close()


def test_a_file_frame_the_kernel_refuses_cuts_the_response_without_a_traceback(
    run_server, short_tmp
):
    """A FILE offset past 2^62 is a protocol error (the worker dies); a /proc file passes
    as a regular file but sendfile(2) refuses it (EINVAL): the response is cut with one
    line. Both raised a traceback in the main process and left the client waiting."""
    server, control = start(run_server, short_tmp)
    try:
        frames = [START, frame(p.FILE, "file_far")]
        assert refused(server, control, frames, "FILE offset", fds=1, fd_kind="file") == 502
        puppet = control.open(server.port or 0)
        frames = [START, frame(p.FILE, "file100"), frame(p.END, "end")]
        puppet.command({"op": "frames", "frames": frames, "fds": 1, "fd_kind": "proc"}, False)
        assert wait_for(lambda: "the worker's file cannot be sent" in server.log, 10)
        assert puppet.client is not None
        assert answer(puppet.client) in (200, "closed")  # the head, then the cut
        puppet.close()
        assert not any(text in server.log for text in ESCAPES), server.log
        heal(server)
    finally:
        control.close()


def test_a_raw_content_length_of_thousands_of_digits_kills_the_worker(run_server, short_tmp):
    """int() refuses 4,300 digits and more with a ValueError, which escaped the frame
    handler as a traceback and left the worker serving."""
    server, control = start(run_server, short_tmp)
    try:
        frames = [frame(p.RAW, "raw_long_length")]
        status = refused(server, control, frames, "RAW Content-Length of 5001 digits")
        assert status in (502, "closed")  # the socket was the worker's
        assert not any(text in server.log for text in ESCAPES), server.log
        heal(server)
    finally:
        control.close()


def test_an_answer_hidden_in_a_lying_frame_is_cut_not_answered_again(run_server, short_tmp):
    """A frame whose length lies swallows the frames after it, a whole write's PROGRESS
    among them: when the worker is then killed for the garbage, the main process saw no
    PROGRESS for a request whose answer its worker had written to the client socket, and
    answered it 502 after the settle grace: the client got two answers, the second read
    as the next request's. Now a request that held the client socket of a worker that
    broke the protocol is cut."""
    server, control = start(run_server, short_tmp, workers=1)  # the GET shares its worker
    victim: socket.socket | None = None
    try:
        puppet = control.open(server.port or 0)
        assert puppet.command({"op": "partial"})
        for _ in range(10):  # one worker: the first GET is the victim
            client = socket.create_connection(("127.0.0.1", server.port or 0), timeout=10)
            client.sendall(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
                data += client.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += client.recv(4096)
            if int(body) == puppet.pid:
                victim = client
                break
            client.close()
        assert victim is not None, "no request reached the puppet's worker"
        # Filler that completes the lying frame: a START of garbage, a protocol error.
        filler = [frame(0, "", repeat=200)]
        puppet.command({"op": "frames", "frames": filler}, reply=False)
        assert wait_for_death(puppet)
        assert wait_for(lambda: "protocol error" in server.log, 5), server.log
        victim.settimeout(10)
        try:
            more = victim.recv(65536)
        except ConnectionResetError:
            more = b""
        assert more == b"", more  # cut: no second answer to the one request
        assert wait_for(lambda: "cut" in server.log, 5), server.log
        puppet.close()
        heal(server, 1)
    finally:
        if victim is not None:
            victim.close()
        control.close()


def test_a_file_wrapper_over_a_write_only_file_is_an_app_error_not_a_protocol_error(
    run_server, short_tmp
):
    """The worker never sends what the main process refuses: a write-only file is not
    passed as FILE (its iteration fails in the app: 500), so the worker is not killed."""
    server, control = start(run_server, short_tmp)
    control.close()
    pids = server.worker_pids()
    assert server.request("GET", "/writeonly")[0] == 500
    assert server.request("GET", "/hello")[0] == 200
    assert "protocol error" not in server.log
    assert server.worker_pids() == pids


def test_legal_frames_from_the_test_pass(run_server, short_tmp):
    """The guard is not too strict: frames a worker may send are served as usual."""
    server, control = start(run_server, short_tmp)
    try:
        puppet = control.open(server.port or 0)
        frames = [START, frame(p.DATA, "data64k", repeat=4), frame(p.END, "end")]
        assert puppet.command({"op": "frames", "frames": frames})
        assert puppet.client is not None
        assert answer(puppet.client) == 200
        puppet.command({"op": "return"}, reply=False)  # now a frame for a finished request
        assert wait_for_death(puppet)
        puppet.close()
        # A FILE with a real file, and an ordinary big response that takes over the socket.
        puppet = control.open(server.port or 0)
        frames = [START, frame(p.FILE, "file"), frame(p.END, "end")]
        assert puppet.command({"op": "frames", "frames": frames, "fds": 1, "fd_kind": "file"})
        assert answer(puppet.client) == 200
        puppet.command({"op": "return"}, reply=False)  # again for a finished request
        assert wait_for_death(puppet)
        puppet.close()
        heal(server)
        puppet = control.open(server.port or 0)
        puppet.command({"op": "return_big"}, reply=False)
        assert answer(puppet.client) == 200
        assert not puppet.gone()
        puppet.close()
        assert wait_for(lambda: server.log.count("protocol error") == 2, 5), server.log[-3000:]
    finally:
        control.close()


def wait_for_fds(main: Main, limit: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while main.fds() > limit:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- the state machine -------------------------------------------------------------------

#: Frames a worker might send, legal or not, in some state; the rid is chosen apart.
FRAMES = st.sampled_from(
    [
        (p.START, "start"),
        (p.DATA, "data1"),
        (p.DATA, "data64k"),
        (p.DATA, "data256k"),
        (p.DATA, "data256k+1"),
        (p.DATA, "empty"),
        (p.END, "empty"),
        (p.END, "end"),
        (p.END, "text"),
        (p.ERROR, "text"),
        (p.RESPONSE, "response"),
        (p.RAW, "raw"),
        (p.RAW, "raw_bad"),
        (p.RAW, "raw_2m"),
        (p.TAKEOVER, "empty"),
        (p.PROGRESS, "empty"),
        (p.DONE, "done"),
        (p.FILE, "file"),
        (p.STACK, "text"),
        (p.STATUS, "status"),
        (p.HELLO, "hello"),
        (p.CREDIT, "u32"),  # a frame type only the main process sends
        (0, "empty"),  # bytes that are no frame
    ]
)
RIDS = st.sampled_from(["own", "own", "own", "unknown", "other"])


def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Keep the first failure's traceback: the server is shared by every example, so
    hypothesis's replay of a failing one may not fail the same way (or at all)."""

    @functools.wraps(method)
    def wrapper(self: HostileWorker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:  # not BaseException: hypothesis stops a run with one
            if HostileWorker.first_failure is None:
                HostileWorker.first_failure = traceback.format_exc()
            raise

    return wrapper


class HostileWorker(RuleBasedStateMachine):
    server: ServerProcess
    control: Control
    main: Main
    baseline_rss: int
    baseline_fds: int

    puppets = Bundle("puppets")
    #: What the runs did, for the record: steps by rule, answers by status.
    tally: Counter[str] = Counter()
    first_failure: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, Puppet] = {}
        # Requests opened and not finished by a rule: what the precondition counts, not
        # `live`, which also loses the ones whose worker died (external state, which
        # must not change what hypothesis may draw).
        self.held = 0

    @initialize()
    @recorded
    def settle(self) -> None:
        heal(self.server)

    @precondition(lambda self: self.held < 3)
    @rule(target=puppets, method=st.sampled_from(["GET", "GET", "HEAD"]), reader=st.booleans())
    @recorded
    def open_request(self, method: str, reader: bool) -> int:
        puppet = self.control.open(self.server.port or 0, method, reader)
        self.tally["requests"] += 1
        self.held += 1
        self.live[puppet.n] = puppet
        return puppet.n

    @rule(n=puppets, frames=st.lists(st.tuples(FRAMES, RIDS), min_size=1, max_size=4))
    @recorded
    def send_frames(self, n: int, frames: list[tuple[tuple[int, str], str]]) -> None:
        self._send(n, frames, 0, "pipe")

    @rule(
        n=puppets,
        frames=st.lists(st.tuples(FRAMES, RIDS), min_size=1, max_size=2),
        fds=st.sampled_from([1, 1, 2, 40]),
        fd_kind=st.sampled_from(["pipe", "file"]),
    )
    @recorded
    def send_descriptors(
        self, n: int, frames: list[tuple[tuple[int, str], str]], fds: int, fd_kind: str
    ) -> None:
        self._send(n, frames, fds, fd_kind)

    @rule(n=puppets, chunks=st.integers(0, 6))
    @recorded
    def stream_legally(self, n: int, chunks: int) -> None:
        """START once, then 64 KiB DATA frames: legal, until the credit runs out."""
        puppet = self.live.get(n)
        if puppet is None:
            return
        wire = [] if puppet.started else [START]
        puppet.started = True
        wire += [frame(p.DATA, "data64k")] * chunks
        if wire:
            self.tally["legal steps"] += 1
            puppet.command({"op": "frames", "frames": wire})

    def _send(
        self, n: int, frames: list[tuple[tuple[int, str], str]], fds: int, fd_kind: str
    ) -> None:
        puppet = self.live.get(n)
        if puppet is None:
            return
        others = [other.rid for other in self.live.values() if other.pid == puppet.pid]
        wire = []
        for (kind, payload), choice in frames:
            rid: str | int = choice
            if choice == "other":
                rid = max(others)
            if kind in (p.HELLO, p.STATUS) and choice == "own":
                rid = 0
            wire.append(frame(kind, payload, rid))
        self.tally["frame steps" if not fds else "descriptor steps"] += 1
        puppet.command({"op": "frames", "frames": wire, "fds": fds, "fd_kind": fd_kind})

    @rule(n=puppets)
    @recorded
    def flood(self, n: int) -> None:
        """START and 128 MiB of DATA: far beyond any credit."""
        puppet = self.live.get(n)
        if puppet is not None:
            self.tally["floods"] += 1
            flood = [START, frame(p.DATA, "data256k", repeat=512)]
            puppet.command({"op": "frames", "frames": flood}, reply=False)
            wait_for_death(puppet, 30.0)

    @rule(n=consumes(puppets), big=st.booleans())
    @recorded
    def finish(self, n: int, big: bool) -> None:
        """The app returns an ordinary response; whatever the state, the client gets an end."""
        self.held -= 1
        puppet = self.live.pop(n, None)
        if puppet is None:
            return
        puppet.command({"op": "return_big" if big else "return"}, reply=False)
        self._expect_answer(puppet)

    @rule(n=puppets)
    @recorded
    def client_leaves(self, n: int) -> None:
        puppet = self.live.get(n)
        if puppet is not None and puppet.client is not None:
            puppet.client.close()
            puppet.client = None

    def _expect_answer(self, puppet: Puppet) -> None:
        if puppet.client is not None:
            self.tally[f"answered {answer(puppet.client)}"] += 1
        puppet.close()

    @invariant()
    @recorded
    def main_process_holds(self) -> None:
        assert self.server.proc.poll() is None, self.server.log[-3000:]
        rss = self.main.rss()
        assert rss < self.baseline_rss + RSS_ALLOWANCE, (rss, self.baseline_rss)
        # Each live client holds a connection; connections of heal() and a worker being
        # replaced come and go: the count must come back under the bound, not stay over.
        bound = self.baseline_fds + 2 * len(self.live) + 8
        assert wait_for_fds(self.main, bound), (self.main.fds(), bound)
        assert self.main.escapes() == "", self.main.escapes()

    @invariant()
    @recorded
    def requests_of_dead_workers_are_answered(self) -> None:
        dead = [n for n, puppet in self.live.items() if puppet.gone()]
        for n in dead:
            self._expect_answer(self.live.pop(n))
        if dead:
            heal(self.server)

    @recorded
    def teardown(self) -> None:
        for puppet in list(self.live.values()):
            puppet.command({"op": "return"}, reply=False)
            self._expect_answer(puppet)
        self.live.clear()
        heal(self.server)
        assert wait_for_fds(self.main, self.baseline_fds), (self.main.fds(), self.baseline_fds)
        assert self.main.escapes() == "", self.main.escapes()


def test_hostile_worker_state_machine(run_server, short_tmp):
    server, control = start(run_server, short_tmp)
    main = Main(server)
    HostileWorker.server = server
    HostileWorker.control = control
    HostileWorker.main = main
    HostileWorker.baseline_rss = main.rss()
    time.sleep(0.5)  # the connections of heal() closed
    HostileWorker.baseline_fds = main.fds()
    HostileWorker.first_failure = None
    try:
        run_state_machine_as_test(
            HostileWorker,
            settings=settings(
                max_examples=30,
                stateful_step_count=10,
                deadline=None,
                derandomize=True,
                # One server for every example: a failure cannot be replayed exactly,
                # so it is reported as found, not shrunk.
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )
    except Exception as exc:
        if HostileWorker.first_failure is not None:
            raise AssertionError(f"first failure:\n{HostileWorker.first_failure}") from exc
        raise
    finally:
        control.close()
    print(
        f"\nhostile worker: main RSS baseline {HostileWorker.baseline_rss / MIB:.1f} MiB, "
        f"max {main.max_rss / MIB:.1f} MiB; descriptors baseline {HostileWorker.baseline_fds}, "
        f"max {main.max_fds}; {server.log.count('protocol error')} workers killed; "
        + ", ".join(f"{key}: {value}" for key, value in sorted(HostileWorker.tally.items()))
    )


pytestmark = pytest.mark.timeout(300)
