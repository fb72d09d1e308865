"""The least a Python frontend with worker processes can spend per request: a floor.

``python -m bench.apps.forward --port PORT --workers W``

One event loop (uvloop where installed, as wsgipool's) accepts keep-alive
connections, cuts each request at the blank line that ends its head (no parsing
and no checks: GET without a body is all it knows), and forwards it as a
length-prefixed frame over a socketpair to one of W forked worker processes,
which answer every frame with the hello response (after ``--work-us`` of CPU
each, to serve at a wsgipool worker's pace); the loop writes that answer to the
client. Frames for one worker are sent together once per loop iteration, as
wsgipool's channels do.

It is no server: nothing here bounds a buffer or survives a worker's death.  It
is what wsgipool's main process does per request with everything else left out
(aiohttp's parser and protocol, the request facts, retry state, deadlines,
validating the worker's frames), so the bench can measure, in the same run, how
much of the main process's CPU per request any Python frontend of this shape
must spend (issue 13, item 3).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import struct
import time

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from bench.apps.workloads import HELLO_BODY

_FRAME = struct.Struct("!II")  # payload length, connection number
_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(HELLO_BODY)
    + HELLO_BODY
)


def _worker(sock: socket.socket, work: float) -> None:
    """Answer every frame with the hello response, each in a send of its own after
    `work` seconds of CPU, as a wsgipool worker answers each request when its app
    returns (so the loop is woken as often, at the same rate, as wsgipool's)."""
    pending = b""
    clock = time.thread_time
    while True:
        data = sock.recv(262144)
        if not data:
            return
        pending += data
        while len(pending) >= _FRAME.size:
            size, conn = _FRAME.unpack_from(pending)
            if len(pending) < _FRAME.size + size:
                break
            pending = pending[_FRAME.size + size :]
            if work:
                until = clock() + work
                while clock() < until:
                    pass
            sock.sendall(_FRAME.pack(len(_ANSWER), conn) + _ANSWER)


class _Worker(asyncio.Protocol):
    """The loop's end of one worker's socketpair: frames out batched, answers in."""

    def __init__(self, clients: dict[int, asyncio.Transport]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, conn: int, head: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(_FRAME.pack(len(head), conn))
        self.out.append(head)

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        pending = self.pending + data if self.pending else data
        clients = self.clients
        while len(pending) >= _FRAME.size:
            size, conn = _FRAME.unpack_from(pending)
            end = _FRAME.size + size
            if len(pending) < end:
                break
            client = clients.get(conn)
            if client is not None:
                client.write(pending[_FRAME.size : end])
            pending = pending[end:]
        self.pending = pending


class _Client(asyncio.Protocol):
    """One client connection: each request head forwarded to the next worker in turn."""

    def __init__(
        self, workers: list[_Worker], clients: dict[int, asyncio.Transport], conn: int
    ) -> None:
        self.workers = workers
        self.clients = clients
        self.buffer = b""
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.clients[self.conn] = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.clients.pop(self.conn, None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        workers = self.workers
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            end += 4
            workers[self.conn % len(workers)].send(self.conn, buffer[:end])
            buffer = buffer[end:]
        self.buffer = buffer


class _ParsingClient(_Client):
    """The same, with each request parsed by aiohttp's C parser (``--parse``), and its
    method, target and raw headers forwarded: what parsing adds to the floor."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self.parser = HttpRequestParser(
            BaseProtocol(loop), loop, 2**16, max_line_size=8190, max_field_size=8190
        )

    def data_received(self, data: bytes) -> None:
        messages, _upgraded, _tail = self.parser.feed_data(data)
        worker = self.workers[self.conn % len(self.workers)]
        for message, _payload in messages:
            fields = [b"%s %s\r\n" % (message.method.encode(), message.path.encode())]
            fields += [b"%s: %s\r\n" % pair for pair in message.raw_headers]
            worker.send(self.conn, b"".join(fields))


async def _serve(host: str, port: int, socks: list[socket.socket], parse: bool) -> None:
    loop = asyncio.get_running_loop()
    clients: dict[int, asyncio.Transport] = {}
    workers = []
    for sock in socks:
        _, worker = await loop.create_unix_connection(lambda: _Worker(clients), sock=sock)
        workers.append(worker)
    numbers = itertools.count()
    kind = _ParsingClient if parse else _Client
    server = await loop.create_server(
        lambda: kind(workers, clients, next(numbers) & 0xFFFFFFFF), host, port, backlog=1024
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--work-us",
        type=float,
        default=0.0,
        help="CPU a worker spends per request before answering (µs; default 0)",
    )
    parser.add_argument(
        "--parse", action="store_true", help="parse each request with aiohttp's C parser"
    )
    args = parser.parse_args()
    socks = []
    for _ in range(args.workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.fork() == 0:  # the worker: only its end of its own pair
            ours.close()
            for sock in socks:
                sock.close()
            try:
                _worker(theirs, args.work_us / 1e6)
            finally:
                os._exit(0)
        theirs.close()
        socks.append(ours)
    try:  # the loop wsgipool itself runs on when it is installed (the bench extra)
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args.host, args.port, socks, args.parse))


if __name__ == "__main__":
    main()
