"""Issue 2, Tests: pipelined requests on keep-alive connections, read with h11 in strict mode.

Every misbehaving app of "Must have" 6 is sent, several requests at a time,
on one connection; h11 (client role) rejects any response whose framing is
off, so a server that lets an app's body leak into the next response, or sends
a body after HEAD/204/304, fails here at once.  A response that must end the
connection (a short body, an error after the headers) must end it visibly and
be the last thing on it; then a new connection picks up the rest.
"""

from __future__ import annotations

import random

import h11

from tests.e2e import rawhttp
from tests.e2e.pipelined import CASES, Case


def run_pipelined(address, cases: list[Case]) -> list[tuple[Case, str]]:
    """Send `cases` pipelined, reconnecting only when a response ends its connection.

    Returns where each connection ended: (case, "cut" or "close").
    """
    pending = list(cases)
    endings: list[tuple[Case, str]] = []
    for _attempt in range(len(cases) + 1):
        if not pending:
            break
        pipe = rawhttp.StrictPipeline(address)
        try:
            pipe.send([(c.method, c.target, c.request_body) for c in pending])
            while pending:
                case = pending.pop(0)
                where = f"{case.method} {case.target}"
                response = pipe.next_response(case.method, case.target, case.request_body)
                assert response.status == case.status, (where, response)
                if case.body is not None:
                    assert response.body == case.body, (where, response)
                assert case.forbidden not in response.body, (where, response)
                header_text = repr(response.headers).encode()
                assert b"X-Injected" not in header_text, (where, response)
                assert "x-bad" not in response.headers, (where, response)
                if case.cut:
                    assert not response.complete, f"{where}: must be visibly incomplete"
                    # The cut response is the last thing on its connection.
                    assert pipe.eof, f"{where}: the connection must end after the cut"
                    endings.append((case, "cut"))
                    break
                assert response.complete, (where, response)
                if not pipe.reusable:
                    # The server said Connection: close; the rest goes on a new connection.
                    endings.append((case, "close"))
                    break
        finally:
            pipe.close()
    assert not pending, f"not answered: {pending}"
    return endings


def test_pipelined_bad_apps_never_desynchronise(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    address = ("127.0.0.1", server.port)

    endings = run_pipelined(address, CASES)
    # Only the responses that had to end their connection did; the rest kept it.
    assert [(c.target, how) for c, how in endings] == [(c.target, "cut") for c in CASES if c.cut]

    # Another order, with the connection-ending cases in the middle of the pipeline.
    shuffled = list(CASES)
    random.Random(3333).shuffle(shuffled)
    endings = run_pipelined(address, shuffled)
    assert [(c.target, how) for c, how in endings] == [(c.target, "cut") for c in shuffled if c.cut]


def test_one_connection_survives_every_keep_alive_case(run_server, executor_args):
    """All cases that need not close, one after another on a single connection, twice."""
    server = run_server("badapps:app", *executor_args)
    keep = [c for c in CASES if not c.cut]
    pipe = rawhttp.StrictPipeline(("127.0.0.1", server.port))
    try:
        for _round in range(2):
            pipe.send([(c.method, c.target, c.request_body) for c in keep])
            for case in keep:
                response = pipe.next_response(case.method, case.target, case.request_body)
                assert (response.status, response.complete) == (case.status, True), case
                if case.body is not None:
                    assert response.body == case.body, case
                assert pipe.reusable, f"{case.target} closed the connection"
        assert not pipe.eof
    finally:
        pipe.close()


def test_h11_rejects_a_desynchronised_stream():
    """The checker itself: h11 in client mode refuses a body after a 204."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 204 No Content\r\n\r\nleaked body HTTP/1.1 200 OK\r\n\r\n")
    events = [conn.next_event(), conn.next_event()]
    assert isinstance(events[0], h11.Response)
    assert isinstance(events[1], h11.EndOfMessage)
    conn.start_next_cycle()
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    try:
        conn.next_event()
    except h11.RemoteProtocolError:
        pass
    else:
        raise AssertionError("h11 accepted a leaked body as the next response")
