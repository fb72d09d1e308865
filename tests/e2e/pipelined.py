"""The pipelining tests' bad-app cases and what each must get; shared with test_differential."""

from __future__ import annotations

from dataclasses import dataclass

GENERIC_500 = b"500 Internal Server Error\n"


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    status: int
    body: bytes | None  # None: any body, checked by `forbidden` only
    cut: bool = False  # the response must break off and end the connection
    request_body: bytes = b""
    forbidden: bytes = b"X-Injected"


CASES = [
    Case("GET", "/ok", 200, b"ok-body"),
    Case("HEAD", "/ok", 200, b""),
    Case("HEAD", "/head-body", 200, b""),
    Case("HEAD", "/head-body-stream", 200, b""),
    Case("GET", "/status-body?code=204", 204, b""),
    Case("GET", "/status-body-stream?code=204", 204, b""),
    Case("GET", "/status-body?code=304", 304, b""),
    Case("GET", "/status-body-stream?code=304", 304, b""),
    *[
        Case("GET", f"/bad-header?kind={kind}", 500, GENERIC_500)
        for kind in ("cr", "lf", "crlf", "nul", "name-crlf", "name-space", "name-colon")
    ],
    *[
        Case("GET", f"/bad-status?kind={kind}", 500, GENERIC_500)
        for kind in ("crlf", "lf", "nul", "nocode", "short")
    ],
    Case("GET", "/second-start", 500, GENERIC_500),
    Case("GET", "/exc-info-before-headers", 503, b"replaced"),
    Case("POST", "/write", 200, b"one,two,three", request_body=b"a=1&b=2"),
    Case("GET", "/hop-by-hop", 200, b"hop-by-hop-body"),
    Case("GET", "/long", 200, b"ABCDE", forbidden=b"FGHIJ"),
    Case("GET", "/long-stream", 200, b"ABCDE", forbidden=b"FGHIJ"),
    Case("GET", "/exact-stream", 200, b"0123456789"),
    Case("GET", "/exact-then-pause", 200, b"0123456789"),
    Case("GET", "/error-before", 500, GENERIC_500, forbidden=b"secret"),
    Case("GET", "/error-in-iterable", 500, GENERIC_500, forbidden=b"secret"),
    Case("GET", "/no-start-response", 500, GENERIC_500),
    Case("GET", "/not-bytes", 500, GENERIC_500),
    Case("GET", "/conflicting-length", 500, GENERIC_500),
    Case("PUT", "/ok", 200, b"ok-body", request_body=b"x" * 100_000),
    # Over --inbuf-overflow: spooled to a file (and its descriptor sent to a worker).
    Case("POST", "/write", 200, b"one,two,three", request_body=b"y" * 700_000),
    # These must end the connection, visibly incomplete.
    Case("GET", "/short", 200, b"0123456789", cut=True),
    Case("GET", "/short-stream", 200, b"0123456789", cut=True),
    Case("GET", "/error-after", 200, b"first-part-", cut=True, forbidden=b"secret"),
    Case("GET", "/exc-info-after-headers", 200, b"partial-", cut=True, forbidden=b"never"),
]
