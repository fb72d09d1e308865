"""The test apps behind one server, each under its own prefix, for the differential test.

``/env/...`` is envapp, ``/bad/...`` badapps, ``/stream/...`` streamapp, anything
else wireapp.  The prefix moves from PATH_INFO to SCRIPT_NAME, as a mount does.
"""

from __future__ import annotations

import badapps
import envapp
import streamapp
import wireapp

MOUNTS = (("/env", envapp.app), ("/bad", badapps.app), ("/stream", streamapp.app))


def app(environ, start_response):
    path = environ["PATH_INFO"]
    for prefix, mounted in MOUNTS:
        if path.startswith(prefix + "/"):
            environ["SCRIPT_NAME"] += prefix
            environ["PATH_INFO"] = path[len(prefix) :]
            return mounted(environ, start_response)
    return wireapp.app(environ, start_response)
