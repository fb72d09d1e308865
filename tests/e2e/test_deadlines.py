"""Clients that stall: a response nobody reads (--send-timeout), a body that stops (--body-timeout).

The slow readers are raw sockets with a small receive buffer that never call
recv(): the response stops in the server's buffers, as it would behind a
client that went silent. Whether the server cut them is read from the
socket's TCP state, without reading (a read would be progress).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.slowclients import closed_marks, is_cut, slow_reader, stall_upload
from tests.polling import wait_for

#: How long a test waits for a deadline of about a second to act (a busy machine).
PATIENCE = 20.0


def open_fds(pid: int) -> list[str]:
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return out


def deleted_files(pid: int) -> int:
    """Unnamed temporary files (spooled bodies) the process holds open."""
    return sum(1 for target in open_fds(pid) if target.endswith("(deleted)"))


def modes(tmp_path: Path) -> dict[str, list[str]]:
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    return {
        "threads": ["--workers", "0", "--threads", "2"],
        # The worker writes large streamed responses to the client socket itself.
        "processes": ["--workers", "1", "--threads", "2"],
        # With a router (here: --static) every byte goes through the main process.
        "processes-routed": ["--workers", "1", "--threads", "2", "--static", f"/static={static}"],
    }


@pytest.mark.parametrize("mode", ["threads", "processes", "processes-routed"])
def test_readers_that_take_nothing_are_cut_the_app_closed_and_threads_freed(
    run_server, tmp_path, mode
):
    server = run_server("deadlineapp:app", *modes(tmp_path)[mode], "--send-timeout", "1")
    marks = [tmp_path / f"closed-{i}" for i in range(2)]
    # As many readers as the server has app threads: before the deadline they held them all.
    readers = [slow_reader(server.port, f"/stream?close={mark}") for mark in marks]
    try:
        assert wait_for(lambda: all(closed_marks(m) for m in marks), PATIENCE), (
            f"the apps' close() was not called:\n{server.log}"
        )
        assert wait_for(lambda: all(is_cut(r) for r in readers), PATIENCE), server.log
        status, _, body = server.request("GET", "/ok", timeout=10)
        assert (status, body) == (200, b"ok")
    finally:
        for reader in readers:
            reader.close()
    assert "accepted no response bytes" in server.log


def test_a_worker_that_does_not_enforce_the_deadline_is_cut_by_the_main_process(
    run_server, tmp_path
):
    server = run_server("deadlineapp:app", *modes(tmp_path)["processes"], "--send-timeout", "1")
    mark = tmp_path / "closed"
    reader = slow_reader(server.port, f"/stream?close={mark}&unwatched=1")
    try:
        assert wait_for(lambda: is_cut(reader), PATIENCE), server.log
        # shutdown() woke the worker's write: the app was stopped there too.
        assert wait_for(lambda: closed_marks(mark), PATIENCE), server.log
    finally:
        reader.close()
    assert "accepted no response bytes" in server.log
    assert server.request("GET", "/ok")[0] == 200


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_file_nobody_reads_is_cut_and_its_descriptors_closed(run_server, tmp_path, mode):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20) * 24)
    server = run_server("deadlineapp:app", *modes(tmp_path)[mode], "--send-timeout", "1")
    assert server.request("GET", "/ok")[0] == 200
    baseline = len(open_fds(server.pid))
    reader = slow_reader(server.port, f"/file?path={data}")
    try:
        assert wait_for(lambda: is_cut(reader), PATIENCE), server.log
        # The file and the duplicate of the socket sendfile wrote to are closed.
        assert wait_for(lambda: len(open_fds(server.pid)) <= baseline, 10), open_fds(server.pid)
    finally:
        reader.close()
    assert server.request("GET", "/ok")[0] == 200


def test_a_whole_response_nobody_reads_is_cut(run_server, tmp_path):
    server = run_server("deadlineapp:app", *modes(tmp_path)["threads"], "--send-timeout", "1")
    reader = slow_reader(server.port, f"/whole?size={24 << 20}")
    try:
        assert wait_for(lambda: is_cut(reader), PATIENCE), server.log
    finally:
        reader.close()
    assert server.request("GET", "/ok")[0] == 200


def test_a_slow_but_steady_reader_is_not_cut(run_server, tmp_path):
    size = 3 << 20
    server = run_server("deadlineapp:app", *modes(tmp_path)["threads"], "--send-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.sendall(f"GET /whole?size={size} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        received = 0
        started = time.monotonic()
        while received < size and time.monotonic() - started < 60:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.01)  # reads often enough: each pause is far below the deadline
        assert received > size  # the head and the whole body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_stalled_body_gets_408_and_its_file_is_released(run_server, tmp_path, mode, chunked):
    server = run_server("deadlineapp:app", *modes(tmp_path)[mode], "--body-timeout", "1")
    assert server.request("GET", "/ok")[0] == 200
    baseline = len(open_fds(server.pid))
    uploads = [stall_upload(server.port, chunked) for _ in range(3)]
    try:
        for sock in uploads:
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"Connection: close" in answer
        assert wait_for(lambda: deleted_files(server.pid) == 0, 10), open_fds(server.pid)
        assert wait_for(lambda: len(open_fds(server.pid)) <= baseline, 10), open_fds(server.pid)
    finally:
        for sock in uploads:
            sock.close()
    # A body that keeps arriving, however slowly, is read whole.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n")
        for _ in range(6):
            time.sleep(0.3)
            sock.sendall(b"x" * 5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n30"), answer


def test_deadline_options_refuse_zero(run_server):
    server = run_server("deadlineapp:app", "--send-timeout", "0", wait=False)
    assert server.wait(30) == 2
    lines = server.log.strip().splitlines()
    assert len(lines) == 1 and "--send-timeout" in lines[0], lines


@pytest.mark.parametrize("workers", [2, 0], ids=["processes", "threads"])
def test_slow_reader_attack_leaves_the_server_answering(run_server, tmp_path, workers):
    """W x T + 10 readers that never read: normal clients keep getting 200s; figures printed."""
    threads, timeout = 2, 2.0
    server = run_server(
        "deadlineapp:app",
        *("--workers", str(workers), "--threads", str(threads)),
        *("--send-timeout", str(timeout)),
    )
    slots = max(workers, 1) * threads
    count = slots + 10
    marks = [tmp_path / f"attack-{i}" for i in range(count)]
    started = time.monotonic()
    readers = [slow_reader(server.port, f"/stream?close={mark}") for mark in marks]
    latencies: list[float] = []
    statuses: list[int] = []
    cut_at: float | None = None
    try:
        while time.monotonic() - started < 30:
            begin = time.monotonic()
            status = server.request("GET", "/ok", timeout=30)[0]
            latencies.append(time.monotonic() - begin)
            statuses.append(status)
            if cut_at is None and all(is_cut(r) for r in readers):
                cut_at = time.monotonic() - started
            if cut_at is not None and len(statuses) >= 20:
                break
            time.sleep(0.05)
    finally:
        for reader in readers:
            reader.close()
    closed = sum(1 for mark in marks if closed_marks(mark))
    print(
        f"\nslow-reader attack: {count} readers, {workers} workers x {threads} threads, "
        f"--send-timeout {timeout:g}s: all cut after {cut_at and round(cut_at, 1)}s; "
        f"{statuses.count(200)}/{len(statuses)} normal requests 200, "
        f"max latency {max(latencies):.2f}s; app iterables closed: {closed}"
    )
    assert cut_at is not None, server.log
    assert set(statuses) == {200}
    # Readers that got an app thread had their iterable closed.
    assert closed >= slots
