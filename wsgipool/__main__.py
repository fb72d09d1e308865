"""``python -m wsgipool``: the same as the ``wsgipool`` command."""

from __future__ import annotations

from wsgipool.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
