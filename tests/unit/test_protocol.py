"""Property-based tests of the wire protocol (wsgipool/protocol.py): pure code, no I/O.

Round trips of every frame and payload codec, the incremental decoder fed the
byte stream cut at arbitrary points, and hostile input: whatever a worker
sends, the main process's decoder either returns frames or raises
`ProtocolError`, and never holds more than one maximum frame.
"""

from __future__ import annotations

import itertools
import re
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsgipool import protocol as p

ALL_KINDS = frozenset(p.NAMES)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)

# -- strategies ------------------------------------------------------------------

LATIN1 = st.characters(codec="latin-1")
latin1_text = st.text(LATIN1, max_size=40)

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(st.sampled_from(TOKEN_CHARS), min_size=1, max_size=30).filter(
    lambda name: name.lower() != "content-length"
)
# Header values and status reasons: latin-1 without C0 controls (tab allowed) and DEL.
_BAD = {chr(c) for c in range(0x20) if c != 0x09} | {"\x7f"}
header_value = st.text(LATIN1.filter(lambda c: c not in _BAD), max_size=60)
reason = header_value
status_code = st.integers(min_value=200, max_value=999)
headers = st.lists(st.tuples(token, header_value), max_size=12)


@st.composite
def frames(draw: st.DrawFn, max_payload: int = 300) -> tuple[int, int, bytes]:
    return (
        draw(st.sampled_from(sorted(ALL_KINDS))),
        draw(U32),
        draw(st.binary(max_size=max_payload)),
    )


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` split at `points` (any integers; taken modulo the length)."""
    if not data:
        return [data]
    marks = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


# -- framing ---------------------------------------------------------------------


@given(st.lists(frames(), max_size=8), st.lists(st.integers(min_value=0), max_size=20))
def test_decoder_gives_the_same_frames_however_the_stream_is_cut(frame_list, points):
    stream = b"".join(p.frame(kind, rid, payload) for kind, rid, payload in frame_list)
    decoder = p.FrameDecoder(ALL_KINDS)
    out: list[tuple[int, int, bytes]] = []
    fed = 0
    for chunk in cut(stream, points):
        out += decoder.feed(chunk)
        fed += len(chunk)
        consumed = sum(p.HEADER_SIZE + len(payload) for _k, _r, payload in out)
        # What is buffered is exactly the incomplete tail, nothing more.
        assert decoder.buffered == fed - consumed
        assert decoder.buffered < p.HEADER_SIZE + p.MAX_PAYLOAD
    assert out == frame_list
    assert decoder.buffered == 0


@given(st.lists(frames(), min_size=1, max_size=5))
def test_decoder_fed_one_byte_at_a_time(frame_list):
    stream = b"".join(p.frame(*f) for f in frame_list)
    decoder = p.FrameDecoder(ALL_KINDS)
    out = []
    for index in range(len(stream)):
        out += decoder.feed(stream[index : index + 1])
    assert out == frame_list


@given(st.sampled_from(sorted(ALL_KINDS)), U32, st.integers(min_value=0, max_value=2**32 - 1))
def test_header_layout(kind, rid, length):
    header = p.frame_header(kind, rid, length)
    assert len(header) == p.HEADER_SIZE == 10
    assert header[0] == p.VERSION
    assert struct.unpack("!BBII", header) == (p.VERSION, kind, rid, length)
    assert p.frame(kind, rid, b"xy")[: p.HEADER_SIZE] == p.frame_header(kind, rid, 2)


@given(st.lists(st.binary(max_size=50), max_size=8), st.data())
def test_unsent_is_what_remains_of_a_scatter_gather_write(parts, data):
    whole = b"".join(parts)
    sent = data.draw(st.integers(min_value=0, max_value=len(whole)))
    assert b"".join(p.unsent(parts, sent)) == whole[sent:]


@pytest.mark.parametrize("length", [1025, 1 << 20, p.MAX_PAYLOAD + 1, 2**32 - 1])
def test_a_header_announcing_a_huge_payload_is_rejected_before_any_payload(length):
    decoder = p.FrameDecoder(p.FROM_WORKER, max_payload=1024)
    header = p.frame_header(p.DATA, 7, length)
    for byte in header[:-1]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(
        p.ProtocolError,
        match=re.escape(f"DATA frame of {length} bytes exceeds the maximum 1024"),
    ):
        decoder.feed(header[-1:])
    assert decoder.buffered <= p.HEADER_SIZE  # the header only, no room made for the payload


def test_default_maximum_is_enforced_on_the_first_header():
    decoder = p.FrameDecoder(p.FROM_WORKER)
    with pytest.raises(p.ProtocolError, match="exceeds the maximum"):
        decoder.feed(p.frame_header(p.START, 1, p.MAX_PAYLOAD + 1))
    assert decoder.buffered == 0
    # A frame of exactly the maximum is fine.
    ok = p.FrameDecoder(p.FROM_WORKER, max_payload=64)
    assert ok.feed(p.frame(p.DATA, 1, b"z" * 64)) == [(p.DATA, 1, b"z" * 64)]


def test_a_frame_after_valid_ones_in_one_feed_is_still_checked():
    decoder = p.FrameDecoder(p.FROM_WORKER, max_payload=16)
    stream = p.frame(p.DATA, 1, b"ok") + p.frame_header(p.DATA, 1, 17)
    with pytest.raises(p.ProtocolError, match="DATA frame of 17 bytes exceeds the maximum 16"):
        decoder.feed(stream)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version_is_rejected_with_a_precise_message(version):
    decoder = p.FrameDecoder(ALL_KINDS)
    data = struct.pack("!BBII", version, p.DATA, 1, 0)
    with pytest.raises(
        p.ProtocolError,
        match=re.escape(f"unsupported protocol version {version} (expected {p.VERSION})"),
    ):
        decoder.feed(data)


@pytest.mark.parametrize(
    ("accept", "kind", "shown"),
    [
        (p.FROM_WORKER, p.REQUEST, "REQUEST"),  # a worker never sends requests
        (p.TO_WORKER, p.START, "START"),  # the main process never sends START
        (p.FROM_TEMPLATE, p.SPAWN, "SPAWN"),
        (p.FROM_WORKER, 99, "99"),  # no such type at all
        (p.FROM_WORKER, 0, "0"),
    ],
)
def test_unknown_or_misdirected_frame_types_are_rejected(accept, kind, shown):
    decoder = p.FrameDecoder(accept)
    with pytest.raises(p.ProtocolError, match=rf"^unexpected frame type {shown}$"):
        decoder.feed(p.frame(kind, 1, b"payload"))


def test_direction_sets_are_disjoint_and_named():
    groups = [p.TO_WORKER, p.FROM_WORKER, p.TO_TEMPLATE, p.FROM_TEMPLATE]
    seen: set[int] = set()
    for group in groups:
        assert not (seen & group)
        seen |= group
    assert seen == ALL_KINDS


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.binary(max_size=600),
    st.lists(st.integers(min_value=0), max_size=12),
    st.sampled_from([p.FROM_WORKER, p.TO_WORKER, p.FROM_TEMPLATE, ALL_KINDS]),
)
@example(b"\x01\x12\x00\x00\x00\x01\xff\xff\xff\xff", [], p.FROM_WORKER)
def test_garbage_never_crashes_the_decoder_nor_piles_up(data, points, accept):
    max_payload = 64
    decoder = p.FrameDecoder(accept, max_payload=max_payload)
    try:
        for chunk in cut(data, points):
            for kind, _rid, payload in decoder.feed(chunk):
                assert kind in accept
                assert len(payload) <= max_payload
            assert decoder.buffered < p.HEADER_SIZE + max_payload
    except p.ProtocolError as exc:
        assert str(exc)


@settings(max_examples=300)
@given(st.lists(frames(max_payload=40), min_size=1, max_size=6), st.data())
def test_corrupted_stream_gives_frames_or_protocol_error(frame_list, data):
    stream = bytearray(b"".join(p.frame(*f) for f in frame_list))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
        stream[index] = data.draw(st.integers(min_value=0, max_value=255))
    points = data.draw(st.lists(st.integers(min_value=0), max_size=8))
    decoder = p.FrameDecoder(ALL_KINDS, max_payload=40)
    try:
        for chunk in cut(bytes(stream), points):
            for kind, _rid, payload in decoder.feed(chunk):
                assert kind in ALL_KINDS
                assert len(payload) <= 40
            assert decoder.buffered < p.HEADER_SIZE + 40
    except p.ProtocolError:
        pass


@given(st.lists(frames(max_payload=40), min_size=1, max_size=4), st.data())
def test_truncated_stream_keeps_only_the_incomplete_tail(frame_list, data):
    stream = b"".join(p.frame(*f) for f in frame_list)
    stop = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    decoder = p.FrameDecoder(ALL_KINDS, max_payload=40)
    out = decoder.feed(stream[:stop])
    assert out == frame_list[: len(out)]
    assert len(out) < len(frame_list)
    consumed = sum(p.HEADER_SIZE + len(f[2]) for f in out)
    assert decoder.buffered == stop - consumed < p.HEADER_SIZE + 40


# -- REQUEST ---------------------------------------------------------------------


request_fields = st.lists(
    st.binary(max_size=40), min_size=len(p.REQUEST_FIELDS), max_size=len(p.REQUEST_FIELDS)
)
header_pairs = st.lists(
    st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60)), max_size=12
)


@given(
    U32,
    U32,
    st.integers(min_value=0, max_value=255),
    request_fields,
    header_pairs,
    st.binary(max_size=500),
)
def test_request_round_trip(rid, credit, flags, fields, headers, body):
    wire = b"".join(p.encode_request(rid, credit, flags, fields, headers, [body]))
    [(kind, got_rid, payload)] = p.FrameDecoder(p.TO_WORKER).feed(wire)
    assert (kind, got_rid) == (p.REQUEST, rid)
    got_credit, got_flags, got_fields, got_headers, got_body = p.decode_request(payload)
    assert (got_credit, got_flags) == (credit, flags)
    assert got_fields == fields
    assert got_headers == headers  # order and repeats kept, bytes as they were
    assert got_body == body


@given(st.binary(max_size=300))
def test_decode_request_of_garbage_raises_only_protocol_error(payload):
    try:
        credit, flags, fields, headers, body = p.decode_request(payload)
    except p.ProtocolError:
        return
    assert 0 <= credit < 2**32 and 0 <= flags < 256
    assert len(fields) == len(p.REQUEST_FIELDS)
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in headers)
    assert isinstance(body, bytes)


@given(request_fields, header_pairs, st.data())
def test_request_cut_inside_the_fields_is_rejected(fields, headers, data):
    wire = b"".join(p.encode_request(1, 5, 0, fields, headers))
    payload = wire[p.HEADER_SIZE :]
    stop = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    with pytest.raises(p.ProtocolError, match=r"^REQUEST (payload|fields|length)"):
        p.decode_request(payload[:stop])


# -- START -----------------------------------------------------------------------


@given(status_code, reason, headers)
def test_start_round_trip(code, text, header_list):
    status = f"{code} {text}"
    assert p.decode_start(p.encode_start(status, header_list)) == (code, text, header_list)


@given(status_code, reason, headers, st.binary(max_size=300), U32)
def test_response_round_trip(code, text, header_list, body, rid):
    """RESPONSE: a whole small response (status, headers and body) in one frame."""
    payload = p.encode_response(f"{code} {text}", header_list, body)
    [(kind, got_rid, got)] = p.FrameDecoder(p.FROM_WORKER).feed(p.frame(p.RESPONSE, rid, payload))
    assert (kind, got_rid) == (p.RESPONSE, rid)
    assert p.decode_response(got) == (code, text, header_list, body)


@given(status_code, headers)
def test_start_without_reason(code, header_list):
    assert p.decode_start(p.encode_start(str(code), header_list)) == (code, "", header_list)


@given(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]), U64)
def test_start_content_length_must_be_digits(name, value):
    payload = p.encode_start("200 OK", [(name, str(value))])
    assert p.decode_start(payload)[2] == [(name, str(value))]
    with pytest.raises(p.ProtocolError, match="invalid Content-Length"):
        p.decode_start(p.encode_start("200 OK", [(name, f"{value}x")]))


@given(status_code, reason, headers.filter(bool), st.data())
def test_start_truncated_anywhere_is_rejected(code, text, header_list, data):
    payload = p.encode_start(f"{code} {text}", header_list)
    stop = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    with pytest.raises(p.ProtocolError, match=r"^START"):
        p.decode_start(payload[:stop])


@given(status_code, headers, st.binary(min_size=1, max_size=20))
def test_start_with_trailing_bytes_is_rejected(code, header_list, tail):
    payload = p.encode_start(f"{code} OK", header_list) + tail
    with pytest.raises(p.ProtocolError, match=r"^START"):
        p.decode_start(payload)


@given(st.binary(max_size=200))
def test_decode_start_of_garbage_raises_only_protocol_error(payload):
    try:
        code, _text, header_list = p.decode_start(payload)
    except p.ProtocolError:
        return
    assert 200 <= code <= 999
    for name, value in header_list:
        p.validate_header(name, value)


# What decode_start says about a rejected START: the category, whatever the wording.
CONTROL = r"control character"
BAD_NAME = r"invalid header name"
BAD_STATUS = r"malformed status line|informational"


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\n", "\x7f", "\x1b"])
@pytest.mark.parametrize("where", ["value", "name"])
def test_start_rejects_control_characters_in_headers(bad, where):
    name, value = ("X-Test", f"a{bad}b") if where == "value" else (f"X{bad}Test", "v")
    payload = p.encode_start("200 OK", [("Content-Type", "text/plain"), (name, value)])
    expected = CONTROL if where == "value" else f"{CONTROL}|{BAD_NAME}"
    with pytest.raises(p.ProtocolError, match=rf"^START: .*({expected})"):
        p.decode_start(payload)


@given(
    st.text(st.characters(codec="latin-1"), min_size=1, max_size=20).filter(
        lambda name: re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) is None
    )
)
@example("X Header")
@example("X:Header")
@example("X-\u00e9")
@example("(comment)")
@example("X-A\nX-B")
def test_start_rejects_header_names_that_are_not_tokens(name):
    with pytest.raises(p.ProtocolError, match=rf"^START: .*({BAD_NAME}|{CONTROL})"):
        p.decode_start(p.encode_start("200 OK", [("X-Fine", "1"), (name, "v")]))


@pytest.mark.parametrize("name", ["X Header", "X:Header", "X-\u00e9", "(comment)", "", "a b"])
def test_start_names_the_bad_header_name(name):
    with pytest.raises(p.ProtocolError, match=rf"^START: {BAD_NAME} {re.escape(repr(name))}$"):
        p.decode_start(p.encode_start("200 OK", [("X-Fine", "1"), (name, "v")]))


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("", BAD_STATUS),
        ("OK", BAD_STATUS),
        ("20", BAD_STATUS),
        ("2000 OK", BAD_STATUS),
        ("200OK", BAD_STATUS),
        ("099 Low", BAD_STATUS),
        (" 200 OK", BAD_STATUS),
        ("200 O\r\nX-Injected: 1", f"{BAD_STATUS}|{CONTROL}"),
        ("200 O\nK", f"{BAD_STATUS}|{CONTROL}"),
        ("200 O\x00K", f"{BAD_STATUS}|{CONTROL}"),
        ("100 Continue", "status 100 is informational"),
        ("199 Early", "status 199 is informational"),
    ],
)
def test_start_rejects_bad_status_lines(status, message):
    with pytest.raises(p.ProtocolError, match=rf"^START: .*({message})"):
        p.decode_start(p.encode_start(status, [("Content-Type", "text/plain")]))


@given(st.sampled_from(["200", "404", "599"]), st.text(min_size=1, max_size=10))
def test_validate_status_rejects_non_latin1_reasons(code, text):
    status = f"{code} {text}"
    try:
        status.encode("latin-1")
    except UnicodeEncodeError:
        with pytest.raises(ValueError, match=r"latin-1|malformed"):
            p.validate_status(status)


# -- small payloads ---------------------------------------------------------------


@given(U64, st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 2)))
def test_file_round_trip(offset, count):
    """Offsets and counts up to 2^62 round-trip; beyond, sendfile(2) would refuse them
    (EINVAL, or an OverflowError in Python): a ProtocolError at the frame."""
    payload = p.encode_file(offset, count)
    if offset > p.FILE_LIMIT or (count is not None and count > p.FILE_LIMIT):
        with pytest.raises(p.ProtocolError, match="FILE"):
            p.decode_file(payload)
        return
    assert p.decode_file(payload) == (offset, count)
    [(kind, rid, got)] = p.FrameDecoder(p.FROM_WORKER).feed(p.frame(p.FILE, 9, payload))
    assert (kind, rid, p.decode_file(got)) == (p.FILE, 9, (offset, count))


@given(U64, U32, st.sampled_from([0, p.FLAG_OVER_RSS, p.FLAG_OVER_RSS_HARD, 3, p.FLAG_STOP_ASKED]))
def test_status_round_trip(rss, served, flags):
    assert p.decode_status(p.encode_status(rss, served, flags)) == (rss, served, flags)


@given(st.integers(min_value=8, max_value=255))
def test_status_with_unknown_flags_is_rejected(flags):
    with pytest.raises(p.ProtocolError, match=rf"^STATUS with unknown flags {flags:#x}$"):
        p.decode_status(p.encode_status(1, 1, flags))


@given(st.integers(min_value=1, max_value=2**32 - 1), st.integers(min_value=1, max_value=65535))
def test_hello_round_trip(pid, threads):
    assert p.decode_hello(p.encode_hello(pid, threads)) == (pid, threads)


@pytest.mark.parametrize(("pid", "threads"), [(0, 4), (123, 0), (0, 0)])
def test_hello_with_zero_pid_or_threads_is_rejected(pid, threads):
    with pytest.raises(p.ProtocolError, match=f"^HELLO with pid {pid} and {threads} threads$"):
        p.decode_hello(p.encode_hello(pid, threads))


@given(
    U32,
    st.sampled_from([p.EXIT_CODE, p.EXIT_SIGNAL]),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_exited_round_trip(pid, kind, code):
    assert p.decode_exited(p.encode_exited(pid, kind, code)) == (pid, kind, code)


@given(st.integers(min_value=2, max_value=255))
def test_exited_with_unknown_kind_is_rejected(kind):
    with pytest.raises(p.ProtocolError, match=f"^EXITED with unknown kind {kind}$"):
        p.decode_exited(p.encode_exited(1, kind, 0))


@given(U32)
def test_u32_round_trip(value):
    assert p.decode_u32(p.encode_u32(value), "CREDIT") == value


@pytest.mark.parametrize(
    ("decode", "size", "name"),
    [
        (p.decode_file, 16, "FILE"),
        (p.decode_status, 13, "STATUS"),
        (p.decode_hello, 6, "HELLO"),
        (p.decode_exited, 9, "EXITED"),
        (lambda payload: p.decode_u32(payload, "CREDIT"), 4, "CREDIT"),
    ],
)
@given(data=st.data())
def test_fixed_size_payloads_of_the_wrong_length_are_rejected(decode, size, name, data):
    payload = data.draw(st.binary(max_size=size + 8).filter(lambda b: len(b) != size))
    with pytest.raises(
        p.ProtocolError, match=rf"^{name} payload must be {size} bytes, got {len(payload)}$"
    ):
        decode(payload)


@given(st.binary(max_size=200))
def test_fixed_size_decoders_raise_only_protocol_error(payload):
    for decode in (
        p.decode_file,
        p.decode_status,
        p.decode_hello,
        p.decode_exited,
        lambda b: p.decode_u32(b, "X"),
    ):
        try:
            decode(payload)
        except p.ProtocolError:
            pass


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=100))
def test_decode_text_is_bounded_and_never_raises(payload, limit):
    text = p.decode_text(payload, limit=limit)
    assert isinstance(text, str)
    assert len(text) <= limit


# -- RAW -------------------------------------------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"


def test_raw_round_trip():
    code, head_size, data = p.decode_raw(p.encode_raw(OK_HEAD, b"hello"), head_request=False)
    assert (code, head_size, data) == (200, len(OK_HEAD), OK_HEAD + b"hello")


def test_raw_head_request_keeps_the_length_without_a_body():
    assert p.decode_raw(p.encode_raw(OK_HEAD, b""), head_request=True)[0] == 200


def test_raw_latin1_values_pass():
    head = OK_HEAD.replace(b"text/plain", b"caf\xe9")
    assert p.decode_raw(p.encode_raw(head, b"hello"), head_request=False)[0] == 200


@pytest.mark.parametrize(
    ("head", "body", "head_request", "message"),
    [
        (OK_HEAD, b"hell", False, "Content-Length 5 but 4"),
        (OK_HEAD, b"hello!", False, "Content-Length 5 but 6"),
        (OK_HEAD, b"x", True, "a body in the response to HEAD"),
        (OK_HEAD.replace(b"text/plain", b"a\rb"), b"hello", False, "well-formed"),
        (OK_HEAD.replace(b"text/plain", b"a\x00b"), b"hello", False, "well-formed"),
        (OK_HEAD.replace(b"text/plain", b"a\nb"), b"hello", False, "well-formed"),
        (OK_HEAD.replace(b"Content-Type", b"Bad Name"), b"hello", False, "well-formed"),
        (
            OK_HEAD.replace(b"Content-Type: text/plain", b"Transfer-Encoding: chunked"),
            b"hello",
            False,
            "hop-by-hop or framing",
        ),
        (
            OK_HEAD.replace(b"Content-Type: text/plain", b"connection: keep-alive"),
            b"hello",
            False,
            "hop-by-hop or framing",
        ),
        (
            OK_HEAD.replace(b"Content-Type: text/plain", b"Content-Length: 5"),
            b"hello",
            False,
            "exactly one Content-Length",
        ),
        (
            OK_HEAD.replace(b"Content-Length: 5\r\n", b""),
            b"hello",
            False,
            "exactly one Content-Length",
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"", False, "a 204 response"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", b"x", False, "a 304 response"),
        (b"HTTP/1.1 101 Switching\r\nContent-Length: 0\r\n\r\n", b"", False, "informational"),
        (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", b"", False, "well-formed"),
        (OK_HEAD[:-2], b"hello", False, "well-formed"),
    ],
)
def test_raw_heads_that_could_desynchronise_a_connection_are_rejected(
    head, body, head_request, message
):
    with pytest.raises(p.ProtocolError, match=message):
        p.decode_raw(p.encode_raw(head, body), head_request)


@given(st.binary(max_size=300), st.booleans())
def test_raw_garbage_raises_only_protocol_error(payload, head_request):
    try:
        code, head_size, data = p.decode_raw(payload, head_request)
    except p.ProtocolError:
        return
    assert 200 <= code <= 999 and head_size <= len(data)


def test_raw_frame_parts_are_the_encoded_frame():
    parts = p.raw_frame(7, OK_HEAD, b"hello")
    [(kind, rid, payload)] = p.FrameDecoder(p.FROM_WORKER).feed(b"".join(parts))
    assert (kind, rid) == (p.RAW, 7)
    assert payload == p.encode_raw(OK_HEAD, b"hello")


@given(st.booleans(), st.one_of(st.none(), st.floats(0.001, 4_000_000)))
def test_socket_round_trip(keep_alive, timeout):
    got_keep_alive, got_timeout = p.decode_socket(p.encode_socket(keep_alive, timeout))
    assert got_keep_alive == keep_alive
    if timeout is None:
        assert got_timeout is None
    else:
        assert got_timeout == pytest.approx(max(round(timeout * 1000), 1) / 1000)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x02\x00\x00\x00\x00", b"\x01" * 6])
def test_socket_payload_is_checked(payload):
    with pytest.raises(p.ProtocolError, match="SOCKET"):
        p.decode_socket(payload)
