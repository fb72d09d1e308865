"""The rest of a whole write (fastpath._write_rest): the part of a response the client's
socket did not take from the worker, written by the main process under the send deadline.

A real event loop and a real loopback connection whose client reads nothing, or reads
slowly; the lane's connection and settings are stand-ins with the two attributes
`_write_rest` reads.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import SimpleNamespace

from wsgipool import fastpath

REST = b"r" * (6 << 20)  # more than loopback's buffers take from a client that reads nothing


async def _connection() -> tuple[asyncio.Transport, socket.socket, asyncio.Server]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accepting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Accepting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    return await asyncio.wait_for(made, 10), client, server


def _write(transport: asyncio.Transport, timeout: float) -> None:
    protocol = SimpleNamespace(transport=transport, _loop=asyncio.get_running_loop())
    fastpath._write_rest(protocol, SimpleNamespace(send_timeout=timeout), REST)


def test_a_client_that_takes_none_of_the_rest_is_cut() -> None:
    async def main() -> None:
        transport, client, server = await _connection()
        try:
            _write(transport, 0.3)
            assert transport.get_write_buffer_size() > 0
            deadline = time.monotonic() + 10
            while not transport.is_closing() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert transport.is_closing()
        finally:
            client.close()
            server.close()

    asyncio.run(main())


def test_a_client_that_reads_slowly_gets_all_of_it() -> None:
    async def main() -> None:
        transport, client, server = await _connection()
        got = bytearray()

        def read() -> None:  # a few MB/s: slower than the write, never stalled
            client.settimeout(10)
            while len(got) < len(REST):
                chunk = client.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)
                time.sleep(0.002)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            _write(transport, 0.5)
            deadline = time.monotonic() + 60
            while transport.get_write_buffer_size() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not transport.is_closing()
            await asyncio.to_thread(reader.join, 30)
            assert bytes(got) == REST
        finally:
            client.close()
            server.close()

    asyncio.run(main())
