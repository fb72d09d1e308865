"""The shortest path through the whole stack, for both executors."""

from __future__ import annotations

import json


def test_environ_roundtrip(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    status, _headers, body = server.request("GET", "/caf%C3%A9/x?a=1&b=%20")
    assert status == 200, body
    environ = json.loads(body)
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9/x"
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["wsgi.multiprocess"] is (executor_args[1] != "0")
