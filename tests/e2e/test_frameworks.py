"""Issue 2 and 3, Tests: a real Flask app and a real Django project through `wsgipool serve`.

GET, POST forms, multipart uploads, cookies, non-ASCII paths and streamed
responses for both executors; a 50 MiB upload that arrives intact through
the spooled-file (descriptor) path; and Django's FileResponse going out through
wsgi.file_wrapper/sendfile without holding the only worker thread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
from http.cookies import SimpleCookie
from pathlib import Path

import psutil
import pytest

from tests.e2e import rawhttp

MIB = 1 << 20


def is_process_mode(executor_args: list[str]) -> bool:
    return executor_args[executor_args.index("--workers") + 1] != "0"


def request(server, method, path, body=None, headers=None, timeout=30.0):
    """(status, HTTPMessage headers, body): keeps repeated headers like Set-Cookie apart."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]):
    """A multipart/form-data body: fields, and files as (filename, content type, data)."""
    boundary = "wsgipool-boundary-7d0a1f"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    for name, (filename, content_type, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def cookie_header(set_cookies: list[str]) -> str:
    jar = SimpleCookie()
    for value in set_cookies:
        jar.load(value)
    return "; ".join(f"{key}={morsel.value}" for key, morsel in jar.items())


def read_streamed(server, path: str, first: bytes, flag: Path) -> bytes:
    """GET `path`, wait for `first` to arrive, only then create `flag`; the whole body."""
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(rawhttp.request_bytes("GET", path))
        data = b""
        deadline = time.monotonic() + 15
        while first not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert first in data, data
        assert not flag.exists()
        flag.write_text("go")
        data += rawhttp.read_until_eof(sock)
    response = rawhttp.parse_one(data)
    assert response.status == 200, data
    assert response.complete, data
    assert response.header("transfer-encoding") == "chunked", response.raw_head
    return response.body


# -- Flask ---------------------------------------------------------------------------------


def test_flask_app(run_server, executor_args, tmp_path):
    server = run_server("flaskapp:app", *executor_args)

    status, _headers, body = request(server, "GET", "/")
    assert status == 200
    assert body.startswith(b"hello from flask in ")

    form = "name=Zo%C3%AB&tag=a&tag=b&empty="
    status, _headers, body = request(
        server,
        "POST",
        "/form?x=1",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, body
    assert json.loads(body) == {
        "form": {"name": ["Zoë"], "tag": ["a", "b"], "empty": [""]},
        "args": {"x": "1"},
    }

    big = os.urandom(700 * 1024)  # over --inbuf-overflow: the body is spooled to a file
    small = "naïve text\n".encode()
    payload, content_type = multipart(
        {"title": "Übersicht"},
        {
            "big": ("big.bin", "application/octet-stream", big),
            "small": ("notes.txt", "text/plain", small),
        },
    )
    status, _headers, body = request(
        server, "POST", "/upload", body=payload, headers={"Content-Type": content_type}
    )
    assert status == 200, body
    result = json.loads(body)
    assert result["form"] == {"title": "Übersicht"}
    assert result["files"]["big"] == {
        "filename": "big.bin",
        "content_type": "application/octet-stream",
        "size": len(big),
        "sha256": hashlib.sha256(big).hexdigest(),
    }
    assert result["files"]["small"]["sha256"] == hashlib.sha256(small).hexdigest()

    status, headers, body = request(server, "GET", "/cookie/set")
    assert status == 200
    set_cookies = headers.get_all("Set-Cookie")
    assert len(set_cookies) == 2, set_cookies
    assert any("HttpOnly" in value for value in set_cookies)
    status, _headers, body = request(
        server, "GET", "/cookie/read", headers={"Cookie": cookie_header(set_cookies)}
    )
    assert json.loads(body)["cookies"] == {"flavour": "chocolate-chip", "visits": "1"}

    status, _headers, body = request(server, "GET", "/caf%C3%A9/%E6%97%A5%E6%9C%AC")
    assert status == 200, body
    assert json.loads(body) == {"path": "/café/日本", "name": "日本", "script_root": ""}

    flag = tmp_path / "flask-flag"
    streamed = read_streamed(server, f"/stream?flag={flag}", b"start True\n", flag)
    assert streamed == b"start True\nline 0\nline 1\nline 2\nend\n"


def test_flask_under_script_name(run_server, executor_args):
    server = run_server("flaskapp:app", *executor_args, "--script-name", "/shop")
    status, _headers, body = request(server, "GET", "/shop/caf%C3%A9/cr%C3%A8me")
    assert status == 200, body
    assert json.loads(body) == {"path": "/café/crème", "name": "crème", "script_root": "/shop"}
    status, _headers, _body = request(server, "GET", "/shopping/caf%C3%A9/x")
    assert status == 404


def test_50mib_upload_arrives_intact(run_server, executor_args):
    server = run_server("flaskapp:app", *executor_args)
    data = os.urandom(50 * MIB)
    status, _headers, body = request(
        server,
        "POST",
        "/raw-sha256",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert status == 200, body[:500]
    result = json.loads(body)
    assert result["size"] == len(data)
    assert result["content_length"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    # Over --inbuf-overflow (512K by default) the app reads a file, not memory: in
    # process mode the spooled file's descriptor was handed to the worker.
    assert result["input_is_file"] is True
    if is_process_mode(executor_args):
        assert result["pid"] != server.pid
        assert result["pid"] in server.worker_pids()

    # A small body stays in memory and goes inline.
    status, _headers, body = request(server, "POST", "/raw-sha256", body=b"tiny")
    result = json.loads(body)
    assert (result["size"], result["input_is_file"]) == (4, False)
    assert result["sha256"] == hashlib.sha256(b"tiny").hexdigest()


# -- Django --------------------------------------------------------------------------------


def start_django(run_server, tmp_path: Path, *args: str):
    return run_server(
        "djangoproj.wsgi:application",
        *args,
        env={"DJANGOPROJ_DATA": str(tmp_path), "DJANGO_SETTINGS_MODULE": "djangoproj.settings"},
    )


def test_django_project(run_server, executor_args, tmp_path):
    server = start_django(run_server, tmp_path, *executor_args)

    status, headers, body = request(server, "GET", "/")
    assert status == 200, body[:2000]
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    text = body.decode("utf-8")
    assert "Hello from Django" in text
    assert "héllo ünïcode /" in text

    # A form with Django's CSRF protection: the cookie and the token must make the trip.
    status, headers, body = request(server, "GET", "/form/")
    assert status == 200
    cookies = cookie_header(headers.get_all("Set-Cookie"))
    assert "csrftoken=" in cookies
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    form = f"csrfmiddlewaretoken={token}&name=J%C3%BCrgen&tag=1&tag=2"
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies}
    status, _headers, body = request(server, "POST", "/form/", body=form, headers=form_headers)
    assert status == 200, body[:2000]
    assert json.loads(body) == {
        "post": {"csrfmiddlewaretoken": [token], "name": ["Jürgen"], "tag": ["1", "2"]},
        "csrf_cookie": True,
    }
    no_cookie = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _headers, _body = request(server, "POST", "/form/", body=form, headers=no_cookie)
    assert status == 403

    # A file upload larger than FILE_UPLOAD_MAX_MEMORY_SIZE (Django spools it too).
    data = os.urandom(2 * MIB + 17)
    payload, content_type = multipart(
        {"csrfmiddlewaretoken": token, "note": "rapport d'été"},
        {"doc": ("report.pdf", "application/pdf", data)},
    )
    upload_headers = {"Content-Type": content_type, "Cookie": cookies}
    status, _headers, body = request(
        server, "POST", "/upload/", body=payload, headers=upload_headers
    )
    assert status == 200, body[:2000]
    assert json.loads(body) == {
        "files": {
            "doc": {
                "name": "report.pdf",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": "application/pdf",
            }
        },
        "post": {"csrfmiddlewaretoken": token, "note": "rapport d'été"},
    }

    status, headers, _body = request(server, "GET", "/cookies/set/")
    set_cookies = headers.get_all("Set-Cookie")
    assert len(set_cookies) == 2, set_cookies
    status, _headers, body = request(
        server, "GET", "/cookies/read/", headers={"Cookie": cookie_header(set_cookies)}
    )
    assert json.loads(body) == {"flavour": "oatmeal", "signed": "trusted-value"}

    # Non-ASCII paths resolve only if PATH_INFO is the latin-1 reading of the UTF-8 bytes.
    status, _headers, body = request(server, "GET", "/caf%C3%A9/cr%C3%A8me%20br%C3%BBl%C3%A9e/")
    assert status == 200, body[:2000]
    assert json.loads(body) == {
        "name": "crème brûlée",
        "path": "/café/crème brûlée/",
        "path_info": "/café/crème brûlée/",
    }
    status, _headers, body = request(server, "GET", "/%E6%97%A5%E6%9C%AC/")
    assert status == 200, body[:2000]
    assert json.loads(body)["name"] == "nihon"

    flag = tmp_path / "django-flag"
    streamed = read_streamed(server, f"/stream/?flag={flag}", b"start\n", flag)
    assert streamed == b"start\nrow 0\nrow 1\nrow 2\nend\n"

    # The SQLite database lives in the test's directory.
    for expected in (1, 2):
        status, _headers, body = request(server, "GET", "/db/")
        assert status == 200, body[:2000]
        assert body.decode() == f"hits={expected} db={tmp_path / 'djangoproj.sqlite3'}"

    # FileResponse: the whole file, with its length and name.
    content = os.urandom(3 * MIB + 5)
    (tmp_path / "small.bin").write_bytes(content)
    status, headers, body = request(server, "GET", "/download/small.bin")
    assert status == 200
    assert body == content
    assert headers["Content-Length"] == str(len(content))
    assert headers["Content-Disposition"] == 'attachment; filename="small.bin"'
    status, _headers, _body = request(server, "GET", "/download/missing.bin")
    assert status == 404


def _start_slow_download(server, path: str) -> tuple[socket.socket, bytes]:
    """Begin downloading `path` and stop reading after the first 64 KiB."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(rawhttp.request_bytes("GET", path))
    data = b""
    deadline = time.monotonic() + 15
    while len(data) < 64 * 1024 and time.monotonic() < deadline:
        chunk = sock.recv(16384)
        assert chunk, data[:500]
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:500]
    return sock, data


@pytest.mark.parametrize(
    "pool",
    [
        pytest.param(["--workers", "0", "--threads", "1"], id="threads"),
        pytest.param(["--workers", "1", "--threads", "1"], id="processes"),
    ],
)
def test_django_file_response_frees_the_worker_thread(run_server, tmp_path, pool):
    size = 64 * MIB
    content = os.urandom(MIB) * 64
    (tmp_path / "large.bin").write_bytes(content)
    server = start_django(run_server, tmp_path, *pool, "--queue-timeout", "5s")
    main = psutil.Process(server.pid)
    status, _headers, _body = request(server, "GET", "/download/small-warmup.bin")
    assert status == 404
    rss_before = main.memory_info().rss

    sock, data = _start_slow_download(server, "/download/large.bin")
    try:
        # The only app thread is free although the download has barely started.
        status, _headers, body = request(server, "GET", "/", timeout=20)
        assert status == 200, body[:500]
        assert b"Hello from Django" in body
        read_before = len(data)
        # ...and the file is not waiting in the main process's memory either.
        growth = main.memory_info().rss - rss_before
        assert growth < 32 * MIB, f"main process grew by {growth / MIB:.1f} MiB"
        data += rawhttp.read_until_eof(sock, timeout=60, limit=size + MIB)
    finally:
        sock.close()
    response = rawhttp.parse_one(data)
    assert response.header("content-length") == str(size)
    assert response.complete
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(content).digest()
    # The second answer came while most of the file was still to be sent.
    assert read_before < size // 2


def test_streamed_response_holds_the_worker_thread(run_server):
    """The control for the test above: an iterated response keeps its thread busy."""
    server = run_server(
        "streamapp:app", "--workers", "1", "--threads", "1", "--queue-timeout", "1s"
    )
    sock, _data = _start_slow_download(server, f"/big?size={256 * MIB}")
    try:
        status, headers, _body = request(server, "GET", "/whoami", timeout=20)
    finally:
        sock.close()
    assert status == 503
    assert headers["Retry-After"]
