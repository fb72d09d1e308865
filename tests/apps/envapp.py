"""Answers with its environ as JSON, behind wsgiref's validator and werkzeug's linter.

Any PEP 3333 violation by the server raises (warnings are errors here), so the
client sees a 500 instead of the JSON it expects.
"""

from __future__ import annotations

import json
import warnings
from wsgiref.validate import WSGIWarning, validator

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.middleware.lint import WSGIWarning as LintWarning

warnings.simplefilter("error", WSGIWarning)
warnings.simplefilter("error", LintWarning)


def _plain(environ, start_response):
    body_in = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    out = {}
    for key, value in environ.items():
        if isinstance(value, (str, bool | int)):
            out[key] = value
    out["wsgi.version"] = list(environ["wsgi.version"])
    out["body_length"] = len(body_in)
    out["body_head"] = body_in[:64].decode("latin-1")
    out["has_file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
    out["errors_writable"] = hasattr(environ["wsgi.errors"], "write")
    data = json.dumps(out, sort_keys=True).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


app = validator(LintMiddleware(_plain))
