"""A script whose app lives in __main__: run as ``python mainscript.py PORT``.

An app defined in the main module cannot be imported again by name in a worker;
wsgipool ships it to the template with dill, once. The guard below is what any
multiprocess program needs, as with multiprocessing.
"""

import os
import sys

GREETING = b"shipped from __main__ by "


def app(environ, start_response):
    body = GREETING + str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    from wsgipool import serve

    serve(app, bind=[f"127.0.0.1:{sys.argv[1]}"], workers=1, threads=2)
