"""What the test apps share: the query string as a dict, and an iterable whose
close() leaves a mark in a file, the tests' proof that PEP 3333's close() ran."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs


def query(environ: dict[str, Any]) -> dict[str, str]:
    """The first value of each query parameter."""
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


class Recorded:
    """Iterates `chunks`; close() closes them and appends a "closed" line to `path`."""

    def __init__(self, chunks: Iterable[bytes], path: str | None) -> None:
        self._chunks = chunks
        self._path = path

    def __iter__(self):
        return iter(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if self._path:
            with open(self._path, "a") as file:
                file.write(f"closed {time.time()}\n")
