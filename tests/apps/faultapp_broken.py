"""A WSGI app module that cannot be imported: what a missing setting looks like at boot."""

from __future__ import annotations

raise RuntimeError("faultapp_broken: the database is unreachable at import time")

app = None  # never reached
