"""Which requests grow the workers: RSS growth by normalised request path, bounded.

Each worker reports its RSS change over every request (the RSS trailer of the
frame that ends it, docs/protocol.md).  The main process adds the growth to a
`GrowthTable` keyed by the request's path, normalised so that one route is one
key: the query is dropped, segments that look like identifiers (all digits, a
UUID, a long hex string) become ``{id}``, and the path is capped in length.

A table keeps at most `capacity` paths, whatever the traffic: with more
distinct paths it evicts by the space-saving rule (the entry with the least
estimated growth goes; the newcomer inherits that estimate as its floor, so a
path that grows the workers by more than 1/capacity of all growth is never
lost).  What evicted entries had measured goes to the ``other`` bucket, so the
figures always add up to all that was seen.  Growth counts only requests whose
RSS rose (a request that frees memory does not offset one that leaks).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable

__all__ = [
    "MAX_PATH_LENGTH",
    "OTHER",
    "GrowthEntry",
    "GrowthTable",
    "normalise_path",
    "route_of",
]

#: The label of everything not kept by name (a real path always starts with "/").
OTHER = "other"
#: Longest normalised path kept, in characters; a longer one is cut and ends in "...".
MAX_PATH_LENGTH = 100

_ID = "{id}"
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_ESTIMATE = operator.attrgetter("estimate")


def _is_id(segment: str) -> bool:
    if segment.isdigit() and segment.isascii():  # not "²": latin-1 text of raw bytes
        return True
    if len(segment) < 16 or not any(c.isdigit() for c in segment):
        return False
    return bool(_UUID.fullmatch(segment) or _HEX.fullmatch(segment))


@functools.lru_cache(maxsize=4096)
def _normalise(path: str) -> str:
    out = "/".join(_ID if _is_id(s) else s for s in path.split("/"))
    if len(out) > MAX_PATH_LENGTH:
        out = out[: MAX_PATH_LENGTH - 3] + "..."
    return out


def normalise_path(target: bytes | str) -> str:
    """The route of a request target: no query or fragment, identifiers as ``{id}``.

    >>> normalise_path(b"/items/123/photos/9f86d081884c7d659a2feaa0c55ad015?page=2")
    '/items/{id}/photos/{id}'
    """
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    cut = len(target)
    for mark in ("?", "#"):
        at = target.find(mark)
        if 0 <= at < cut:
            cut = at
    path = target[:cut]
    if not path.startswith("/"):  # "*" (OPTIONS *), an absolute URI, or nothing
        scheme = path.find("://")
        if scheme >= 0:
            slash = path.find("/", scheme + 3)
            path = path[slash:] if slash >= 0 else "/"
        else:
            return path[:MAX_PATH_LENGTH] or "/"
    return _normalise(path)


#: Request targets whose route `route_of` remembers (cleared when full: bounded memory).
_TARGETS_KEPT = 4096
_routes: dict[bytes, str] = {}


def route_of(target: bytes) -> str:
    """`normalise_path` of a raw request target, remembered: one dict lookup per request.

    For the main process's event loop (one thread), which notes every measured
    request: most requests repeat a target seen before.
    """
    route = _routes.get(target)
    if route is None:
        route = normalise_path(target)
        if len(_routes) >= _TARGETS_KEPT:
            _routes.clear()
        _routes[target] = route
    return route


class GrowthEntry:
    """One path's figures: KiB grown and requests, since it entered the table."""

    __slots__ = ("estimate", "floor", "grown_kib", "path", "requests")

    def __init__(self, path: str, floor: int = 0) -> None:
        self.path = path
        self.grown_kib = 0
        self.requests = 0
        self.floor = floor  # growth inherited from the entry it evicted: the estimate's error
        self.estimate = floor  # grown_kib + floor, kept up to date: eviction reads it often

    def as_json(self) -> dict[str, int | str]:
        return {"path": self.path, "grown_kib": self.grown_kib, "requests": self.requests}


class GrowthTable:
    """RSS growth and request counts by path, at most `capacity` paths plus ``other``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: dict[str, GrowthEntry] = {}
        self.other = GrowthEntry(OTHER)
        self.total_kib = 0
        self.total_requests = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, path: str, rss_change_kib: int) -> None:
        self.total_requests += 1
        entries = self._entries
        entry = entries.get(path)
        if rss_change_kib <= 0 and entry is not None:  # most requests: a path kept, no growth
            entry.requests += 1
            return
        grown = rss_change_kib if rss_change_kib > 0 else 0
        self.total_kib += grown
        if entry is None:
            floor = 0
            if len(entries) >= self.capacity:
                victim = min(entries.values(), key=_ESTIMATE)
                del entries[victim.path]
                self.other.grown_kib += victim.grown_kib
                self.other.requests += victim.requests
                floor = victim.estimate
            entry = entries[path] = GrowthEntry(path, floor)
        entry.grown_kib += grown
        entry.estimate += grown
        entry.requests += 1

    def top(self, n: int | None = None) -> list[GrowthEntry]:
        """The kept paths, most growth first (then most requests, then by path)."""
        ranked = sorted(self._entries.values(), key=_rank)
        return ranked if n is None else ranked[:n]

    def entries(self) -> Iterable[GrowthEntry]:
        return self._entries.values()


def _rank(entry: GrowthEntry) -> tuple[int, int, str]:
    return (-entry.grown_kib, -entry.requests, entry.path)
