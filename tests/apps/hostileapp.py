"""A worker turned hostile on command: the app writes frames of the test's choosing.

``hostileapp:app`` serves ``/hello`` normally, and ``/writeonly`` as an app
with a bug would: `wsgi.file_wrapper` over a file open for writing only. Any
other path (``/puppet?n=ID``) makes the request a puppet: the app connects to
the AF_UNIX socket named by ``$HOSTILE_CONTROL``, says ``{"n": ID, "pid": ...,
"rid": ...}`` and then runs the test's commands, one JSON line each, answering
each with a line:

- ``{"op": "frames", "frames": [[KIND, RID, PAYLOAD, REPEAT], ...], "fds": N,
  "fd_kind": "pipe" | "file"}``: write those frames straight into this worker's
  channel to the main process (under the channel's lock, so they never split a
  frame of another thread), with N descriptors attached to the first byte.
  RID is ``"own"``, ``"unknown"`` or a number; PAYLOAD names one of `PAYLOADS`;
  KIND ``0`` means bytes that are no frame at all.
- ``{"op": "write_client", "text": T}``: write T to the client socket the
  REQUEST carried (a lane GET's), found among this process's descriptors by its
  peer address.
- ``{"op": "return"}``: the app returns a small ordinary response (the worker
  sends it as it always does); ``{"op": "return_big"}``: a 3 MiB streamed one.

Whatever the main process makes of the frames, this process may be SIGKILLed
at any moment: the test sees that as the end of the control connection.  The
app never raises (a traceback in the shared log would look like a server fault).
"""

from __future__ import annotations

import array
import gc
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tests.apps.appkit import client_descriptor
from wsgipool import protocol as p

StartResponse = Callable[..., Any]

UNKNOWN_RID = 0x7FFFFFF0

_worker: Any = None
#: Control connections of puppets that returned: kept open, so that their end means death.
_KEPT: list[socket.socket] = []


def _the_worker() -> Any:
    global _worker
    if _worker is None:
        from wsgipool.worker.process import Worker

        _worker = next(obj for obj in gc.get_objects() if isinstance(obj, Worker))
    return _worker


def _own_rid(worker: Any) -> int:
    me = threading.get_ident()
    for rid, job in list(worker.jobs.items()):
        if job.thread == me:
            return int(rid)
    raise LookupError("no job runs in this thread")


def _raw_head(body: bytes) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()


_RSS = p.encode_rss(None)

PAYLOADS: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "start": lambda: p.encode_start("200 OK", [("Content-Type", "text/plain")]),
    "data1": lambda: b"x",
    "data64k": lambda: b"d" * 65536,
    "data256k": lambda: b"D" * p.DATA_CHUNK,
    "data256k+1": lambda: b"E" * (p.DATA_CHUNK + 1),
    # Final frames end with the RSS trailer (the worker's memory change: not measured).
    "end": lambda: p.encode_rss(None),
    "response": lambda: p.encode_response("200 OK", [("Content-Length", "2")], b"hi") + _RSS,
    "raw": lambda: p.encode_raw(_raw_head(b"hi"), b"hi") + _RSS,
    "raw_bad": lambda: p.encode_raw(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n", b"hi") + _RSS,
    "raw_long_length": lambda: (
        p.encode_raw(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"2\r\n\r\n", b"hi")
        + _RSS
    ),
    "raw_2m": lambda: p.encode_raw(_raw_head(b"R" * (2 << 20)), b"R" * (2 << 20)) + _RSS,
    "done": lambda: p.encode_done(0, 200, True, 0) + _RSS,
    # A whole write's first PROGRESS on a new connection (nothing written to it yet) of
    # the bytes of `WHOLE`.
    "intent": lambda: p.encode_progress(0, len(WHOLE), 200),
    "file": lambda: p.encode_file(0, None),
    "file100": lambda: p.encode_file(0, 100),
    "file_far": lambda: p.encode_file((1 << 63) - 8, 10),
    "text": lambda: b"hostile text\n",
    "status": lambda: p.encode_status(1 << 20, 1, 0),
    "hello": lambda: p.encode_hello(os.getpid(), 4),
    "u32": lambda: p.encode_u32(1 << 20),
}


WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole"


def _descriptors(count: int, kind: str) -> list[int]:
    fds: list[int] = []
    for _ in range(count):
        if kind == "pipe":
            read, write = os.pipe()
            os.close(write)
            fds.append(read)
        elif kind == "proc":  # a regular file sendfile(2) refuses (EINVAL)
            fds.append(os.open("/proc/self/status", os.O_RDONLY))
        else:
            handle, path = tempfile.mkstemp()
            os.write(handle, b"file contents\n")
            os.unlink(path)
            fds.append(handle)
    return fds


def _send_frames(worker: Any, rid: int, command: dict[str, Any]) -> None:
    parts: list[bytes] = []
    for kind, choice, payload_name, repeat in command["frames"]:
        target = rid if choice == "own" else UNKNOWN_RID if choice == "unknown" else int(choice)
        one = b"\xff" * 32 if kind == 0 else p.frame(kind, target, PAYLOADS[payload_name]())
        parts.extend([one] * int(repeat))
    fds = _descriptors(int(command.get("fds", 0)), command.get("fd_kind", "pipe"))
    channel = worker.channel
    try:
        with channel._lock:
            if fds and parts:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                first = parts.pop(0)
                sent = channel.sock.sendmsg([first[:1]], rights)
                parts.insert(0, first[sent:])
            for part in parts:  # one by one: a flood is never whole in this process
                channel.sock.sendall(part)
    finally:
        for fd in fds:
            os.close(fd)


def _big() -> Iterator[bytes]:
    for _ in range(48):
        yield b"B" * 65536


def _puppet(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    worker = _the_worker()
    rid = _own_rid(worker)
    query = dict(part.partition("=")[::2] for part in environ.get("QUERY_STRING", "").split("&"))
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(os.environ["HOSTILE_CONTROL"])
    _KEPT.append(control)
    lines = control.makefile("rwb", buffering=0)
    hello = {"n": int(query.get("n", "0")), "pid": os.getpid(), "rid": rid}
    lines.write(json.dumps(hello).encode() + b"\n")
    while True:
        line = lines.readline()
        if not line:
            time.sleep(3600)  # the test went away: wait to be killed
        command = json.loads(line)
        op = command["op"]
        if op == "frames":
            _send_frames(worker, rid, command)
            lines.write(b'{"ok": true}\n')
        elif op == "write_client":
            fd = client_descriptor(environ)
            if fd >= 0:
                os.write(fd, command["text"].encode("latin-1"))
            lines.write(json.dumps({"ok": fd >= 0}).encode() + b"\n")
        elif op == "partial":  # a START whose length lies: it swallows the frames after it
            with worker.channel._lock:
                worker.channel.sock.sendall(p.frame_header(p.START, rid, 4000) + b"x" * 10)
            lines.write(b'{"ok": true}\n')
        elif op == "exit":
            os._exit(3)
        elif op == "return":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        elif op == "return_big":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return _big()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/pid":  # a whole response, written by the worker itself
        body = str(os.getpid()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if environ.get("PATH_INFO") == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"hello\n"]
    if environ.get("PATH_INFO") == "/writeonly":  # an app bug, not a hostile worker
        start_response("200 OK", [("Content-Type", "text/plain")])
        handle, name = tempfile.mkstemp()
        os.close(handle)
        file = open(name, "ab")  # the response's close() closes it
        os.unlink(name)
        return environ["wsgi.file_wrapper"](file)
    try:
        return _puppet(environ, start_response)
    except BaseException:  # killed, or the main process closed the channel: stay quiet
        time.sleep(3600)
        raise
