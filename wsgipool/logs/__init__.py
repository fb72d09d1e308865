"""wsgipool's logs: escaping request data, the access log, files, formats, reopening.

`escape` makes request data safe for a log line; `access` formats the access
log with gunicorn's atoms; `setup` decides where lines go (files, stderr,
stdout, a dictConfig), in which format (text or JSON), and reopens the files
on SIGUSR1.
"""

from wsgipool.logs.escape import escape

__all__ = ["escape"]
