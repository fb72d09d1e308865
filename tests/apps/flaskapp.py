"""A real Flask app for the framework tests: forms, uploads, cookies, unicode, streaming."""

from __future__ import annotations

import hashlib
import os
import stat
import time

from flask import Flask, Response, jsonify, request, stream_with_context

app = Flask(__name__)


@app.get("/")
def index():
    return f"hello from flask in {os.getpid()}"


@app.post("/form")
def form():
    return jsonify(form=request.form.to_dict(flat=False), args=request.args.to_dict())


@app.post("/upload")
def upload():
    files = {}
    for field, storage in request.files.items(multi=True):
        data = storage.read()
        files[field] = {
            "filename": storage.filename,
            "content_type": storage.content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return jsonify(files=files, form=request.form.to_dict())


def _input_is_a_file() -> bool:
    """Whether wsgi.input reads a regular file (a spooled body), not memory or a pipe."""
    stream = request.environ["wsgi.input"]
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


@app.post("/raw-sha256")
def raw_sha256():
    input_is_file = _input_is_a_file()
    digest = hashlib.sha256()
    size = 0
    stream = request.stream
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        size += len(block)
        digest.update(block)
    return jsonify(
        size=size,
        sha256=digest.hexdigest(),
        content_length=request.content_length,
        input_is_file=input_is_file,
        pid=os.getpid(),
    )


@app.get("/cookie/set")
def cookie_set():
    response = jsonify(ok=True)
    response.set_cookie("flavour", "chocolate-chip", httponly=True)
    response.set_cookie("visits", "1", samesite="Lax")
    return response


@app.get("/cookie/read")
def cookie_read():
    return jsonify(cookies=request.cookies.to_dict())


@app.get("/café/<name>")
def cafe(name: str):
    return jsonify(path=request.path, name=name, script_root=request.script_root)


@app.get("/stream")
def stream():
    flag = request.args["flag"]

    @stream_with_context
    def generate():
        # request is still usable here: stream_with_context keeps its context alive.
        yield f"start {request.args['flag'] == flag}\n"
        deadline = time.monotonic() + 30
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        for index in range(3):
            yield f"line {index}\n"
        yield "end\n"

    return Response(generate(), mimetype="text/plain")
