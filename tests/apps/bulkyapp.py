"""An app whose import leaves many objects behind, as a large app's does (Django's
models, URL patterns, templates): about 16 MiB of small containers the collector
tracks. ``/collect`` runs a full collection in the worker; every path answers the
worker's PID, for the test to read that worker's memory.

With ``--preload`` the template imports it once and its workers share those pages
until something writes to them; a full collection writes the header of every
object it tracks (tests/integration/test_lifecycle.py).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable
from typing import Any

#: Lists of lists of small ints: tracked by the collector, never written again.
KEPT = [[i, [i]] for i in range(100_000)]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/collect":
        gc.collect()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
