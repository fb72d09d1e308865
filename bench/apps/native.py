"""A native aiohttp handler answering the hello body: the ceiling of any aiohttp frontend.

``python -m bench.apps.native --port PORT [--uvloop]``: one process, one event
loop, no WSGI at all.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from bench.apps.workloads import HELLO_BODY


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=HELLO_BODY, content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory(),
    )


if __name__ == "__main__":
    main()
