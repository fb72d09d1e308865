"""One function that makes request data safe to put in a log line.

A client chooses its path, query and headers; written raw, a ``%0a`` in a path
starts a forged log line and an ESC byte drives the reader's terminal.  Every
log line that carries request data passes it through `escape` first, so one
event is one line.  The escaping is reversible: a backslash becomes ``\\\\``,
so ``\\n`` in the log always means an escaped line feed, never one the client sent
as two characters.
"""

from __future__ import annotations

import re

__all__ = ["escape"]

# C0 controls, DEL, C1 controls (U+0080-U+009F), the backslash, and lone surrogates
# (undecodable bytes smuggled through surrogateescape would fail the log's encoder).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _replace(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: object) -> str:
    """`value` as text with control characters and backslashes escaped.

    Bytes are read as latin-1 (each byte one character, so none is lost);
    anything else goes through str().  Text without anything to escape is
    returned as it is, after one regex scan.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
    elif isinstance(value, str):
        text = value
    else:
        text = str(value)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_replace, text)
