"""``--static`` serves no dotfiles: ``.git/``, ``.env``, ``.htpasswd`` stay private.

A deployment that serves a directory rarely means to publish what version
control or an editor left in it.  Any path segment below a static prefix that
starts with a dot is 404, as if the file did not exist (not 403: whether it
exists is nobody's business); ``--static-dotfiles`` serves them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = ["hide_dotfiles"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hide_dotfiles(prefixes: tuple[str, ...]) -> Any:
    """An aiohttp middleware: 404 for a dot segment below any of the static `prefixes`."""
    roots = tuple(prefix.rstrip("/") + "/" for prefix in prefixes)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path  # decoded: /static/%2Eenv is /static/.env
        for root in roots:
            if path.startswith(root):
                if any(part.startswith(".") for part in path[len(root) :].split("/")):
                    raise web.HTTPNotFound(text="404 Not Found\n")
                break
        return await handler(request)

    return middleware
