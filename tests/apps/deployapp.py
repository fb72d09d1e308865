"""One app for the deployment tests (TLS, nginx, systemd): routes to the other test apps.

- ``/env...``: envapp (the environ as JSON; reads the whole body, reports its length).
- ``/stream``, ``/pid``: directapp (large responses a worker may write to the socket itself).
- anything else: streamapp (``/big``, ``/ticks``, ``/slow``, ``/file``, ``/whoami``...).
"""

from __future__ import annotations

from tests.apps.directapp import app as direct_app
from tests.apps.envapp import app as env_app
from tests.apps.streamapp import app as stream_app


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/env"):
        return env_app(environ, start_response)
    if path in ("/stream", "/pid"):
        return direct_app(environ, start_response)
    return stream_app(environ, start_response)
