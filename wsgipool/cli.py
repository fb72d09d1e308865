"""The ``wsgipool`` command: parses the command line and calls the server, nothing more.

Its flags are generated from the option declarations in `wsgipool.config`, so
the CLI, ``serve()`` and docs/configuration.md cannot drift apart; the config
file and the environment are read by `wsgipool.sources`.  Errors a user can
fix (a bad flag, a bad value anywhere, an app that does not import) are one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from wsgipool import __version__
from wsgipool.config import (
    GUNICORN_ONLY,
    SAME,
    Config,
    ConfigError,
    PoolConfig,
    env_name,
    option_fields,
)
from wsgipool.loader import AppImportError

__all__ = ["build_parser", "main"]


def _unrecognized(command: str, extra: list[str]) -> str:
    """The error line for flags no option has, with what gunicorn's mean here."""
    hints: list[str] = []
    for token in extra:
        flag = token.partition("=")[0]
        hint = GUNICORN_ONLY.get(flag)
        if hint is not None and not any(h.startswith(flag + " ") for h in hints):
            hints.append(f"{flag} is gunicorn's: {hint}")
    said = "".join(f"; {hint}" for hint in hints)
    return (
        f"wsgipool: error: unrecognized arguments: {' '.join(extra)}{said} "
        f"(see 'wsgipool {command} --help')\n"
    )


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
    sources = serve.add_argument_group("configuration")
    sources.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="read options from this TOML file (default: ./wsgipool.toml, else the "
        "[tool.wsgipool] table of ./pyproject.toml; also $WSGIPOOL_CONFIG)",
    )
    sources.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration, with the source of each value, and exit",
    )
    sources.add_argument(
        "--check-config",
        action="store_true",
        help="check every value from every source and exit (0 when valid; imports nothing)",
    )
    groups = {
        Config: serve.add_argument_group("server"),
        PoolConfig: serve.add_argument_group("worker pool"),
    }
    for cls, spec in option_fields():
        meta = spec.metadata
        default = meta["default_text"] or _default_text(spec.default)
        if meta["cli_default"] is not SAME:
            default = meta["cli_default_text"] or _default_text(meta["cli_default"])
        text = f"{meta['help']} (default: {default}; ${env_name(spec.name)})"
        kwargs: dict[str, object] = {
            "dest": spec.name,
            "default": argparse.SUPPRESS,
            "help": text.replace("%", "%%"),  # argparse %-formats
        }
        if meta["switch"]:
            kwargs["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        else:
            kwargs["metavar"] = meta["metavar"]
            if meta["repeat"]:
                kwargs["action"] = "append"
        names = ["--" + spec.name.replace("_", "-")]
        names += meta["gunicorn"]  # gunicorn's names for it: -w, --keep-alive, ...
        groups[cls].add_argument(*names, **kwargs)  # type: ignore[arg-type]
    _add_status_command(commands)
    return parser


def _add_status_command(commands: argparse._SubParsersAction[_Parser]) -> None:
    status = commands.add_parser(
        "status",
        help="show a running server's workers, live (like uwsgitop)",
        description="Print a live table of a running server's workers (pid, age, RSS, requests, "
        "busy threads, state), read from its metrics listener's /stats.",
    )
    status.add_argument(
        "--metrics-bind",
        metavar="ADDRESS",
        help="the server's --metrics-bind, HOST:PORT or unix:PATH "
        "(default: $WSGIPOOL_METRICS_BIND)",
    )
    status.add_argument(
        "--interval", metavar="SECONDS", type=float, default=2.0, help="redraw every (default: 2)"
    )
    status.add_argument("--once", action="store_true", help="print the table once and exit")


def _status(args: dict[str, object]) -> int:
    from wsgipool.config import parse_bind
    from wsgipool.metrics.status import default_address, run

    address = args.get("metrics_bind") or default_address()
    if not isinstance(address, str):
        print("wsgipool: error: status needs --metrics-bind ADDRESS", file=sys.stderr)
        return 2
    try:
        parse_bind(address)
    except ValueError as exc:
        print(f"wsgipool: error: --metrics-bind: {exc}", file=sys.stderr)
        return 2
    interval = args["interval"]
    assert isinstance(interval, float)
    if interval <= 0:
        print("wsgipool: error: --interval: must be more than 0", file=sys.stderr)
        return 2
    return run(address, interval, bool(args["once"]))


def _default_text(value: object) -> str:
    if value is None or value == ():
        return "unset"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    namespace, extra = parser.parse_known_args(argv)
    if extra:  # said here, where the command is known (argparse names the top level)
        parser.exit(2, _unrecognized(namespace.command, extra))
    args = vars(namespace)
    if args.pop("command") == "status":
        return _status(args)
    app = args.pop("app")
    config_file = args.pop("config")
    print_config = args.pop("print_config")
    check_config = args.pop("check_config")
    try:
        from wsgipool import sources

        layers = sources.collect(command_line=args, config_file=config_file, cli=True)
        layers.enter_directory()  # --chdir first: relative paths below are relative to it
        settings = layers.build()
        if print_config:
            try:
                print(settings.render(), flush=True)
            except BrokenPipeError:  # `--print-config | head`
                sys.stdout = None
            return 0
        if settings.config.reload:
            from wsgipool.reloader import check_available

            check_available()
        if check_config:
            print(f"wsgipool: the configuration of {app} is valid")
            return 0
        # As with gunicorn: the app's module is found relative to where the command runs.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        from wsgipool.server import Server

        try:
            Server(app, settings.config, settings.pool, sources=settings.sources).run()
        except ConfigError as exc:  # a file or address the value named: say where it came from
            raise layers.attributed(exc) from None
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

    from wsgipool.threaded import report_busy_app_threads

    if report_busy_app_threads():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
