"""A memory-leaky app for the leak finder (docs/operations.md "Finding the leak").

``/leak`` keeps 1 MiB for ever in a module-level list (``?mib=N`` for N MiB);
every other path (``/ok``, ``/items/123``, ...) keeps nothing.  Run it with::

    wsgipool serve leakapp:app --workers 1 --threads 1 --metrics-bind 127.0.0.1:9100
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appkit import query

_KEPT: list[bytes] = []


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/leak":
        mib = int(query(environ).get("mib", "1"))
        _KEPT.append(b"\x01" * (mib << 20))  # written, so resident: a real leak
        body = f"kept {len(_KEPT)} blocks\n".encode()
    else:
        body = f"{path}: nothing kept\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
