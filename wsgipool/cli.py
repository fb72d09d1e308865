"""The ``wsgipool`` command: parses the command line and calls the server, nothing more.

Its flags are generated from the option declarations in `wsgipool.config`, so
the CLI, ``serve()`` and docs/configuration.md cannot drift apart.  Errors a
user can fix (a bad flag, an app that does not import) are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from wsgipool import __version__
from wsgipool.config import Config, ConfigError, PoolConfig, option_fields, split_options
from wsgipool.loader import AppImportError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"wsgipool: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wsgipool",
        description="Run a WSGI app behind aiohttp in a supervised pool of worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"wsgipool {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="serve a WSGI app",
        description="Serve a WSGI app, e.g.: wsgipool serve myproject.wsgi:application "
        "--workers 4 --threads 4",
    )
    serve.add_argument(
        "app",
        metavar="MODULE:ATTR",
        help="the WSGI app; ATTR defaults to 'application' and may be a factory call: create_app()",
    )
    groups = {
        Config: serve.add_argument_group("server"),
        PoolConfig: serve.add_argument_group("worker pool"),
    }
    for cls, spec in option_fields():
        meta = spec.metadata
        default = meta["default_text"] or _default_text(spec.default)
        kwargs: dict[str, object] = {
            "dest": spec.name,
            "default": argparse.SUPPRESS,
            "help": f"{meta['help']} (default: {default})".replace("%", "%%"),  # argparse %-formats
        }
        if meta["switch"]:
            kwargs["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        else:
            kwargs["metavar"] = meta["metavar"]
            if meta["repeat"]:
                kwargs["action"] = "append"
        groups[cls].add_argument("--" + spec.name.replace("_", "-"), **kwargs)  # type: ignore[arg-type]
    return parser


def _default_text(value: object) -> str:
    if value is None or value == ():
        return "unset"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("command")
    app = args.pop("app")
    # As with gunicorn: the app's module is found relative to where the command runs.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        server_options, pool_options, _ = split_options(args)
        config = Config(**server_options)
        pool = PoolConfig(**pool_options)
        from wsgipool.server import Server

        Server(app, config, pool).run()
    except (ConfigError, AppImportError) as exc:
        print(f"wsgipool: error: {exc}", file=sys.stderr)
        return 2
    _exit_past_app_threads()
    return 0


def _exit_past_app_threads() -> None:
    """With --workers 0, app threads cut at the end of --graceful-timeout may still run.

    Python would wait for them at exit (a 10 s request keeps the process 10 s);
    the graceful timeout is the bound, so the process exits without them.
    """
    import logging
    import threading

    left = [t for t in threading.enumerate() if t.name.startswith("wsgipool-app") and t.is_alive()]
    if left:
        logging.getLogger("wsgipool.server").warning(
            "%d app thread(s) still running at the end of the graceful timeout; exiting", len(left)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
