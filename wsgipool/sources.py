"""Where each option's value comes from: defaults < config file < environment < command line.

`wsgipool.config` declares every option once and reads nothing; this module is
the one that reads files and the environment.  It is a reader of
`option_fields()` like the CLI's parser and the docs' tables, so an option
declared there can be set from every source with no code here:

- **config file**: ``wsgipool.toml`` in the directory wsgipool starts in, else
  the ``[tool.wsgipool]`` table of ``pyproject.toml`` there; or the file named
  by ``-c/--config`` or ``WSGIPOOL_CONFIG``.  Keys are option names, with
  underscores or dashes; an unknown key is an error.
- **environment**: ``WSGIPOOL_<NAME>`` for every option (repeatable options take
  comma-separated values), then the variables users already set for other
  servers, declared as ``env_aliases`` (``PORT``, ``WEB_CONCURRENCY``,
  ``FORWARDED_ALLOW_IPS``).  An unknown ``WSGIPOOL_`` variable is an error.
- **command line**: the flags given (argparse leaves the others out).

Each value is parsed by its option's own parse function, and an error names
the source it came from (``wsgipool.toml:12: workers: ...``,
``WSGIPOOL_WORKERS: ...``, ``--workers: ...``).  `Settings` remembers every
value's source for ``--print-config`` and the startup log line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import Field, dataclass
from pathlib import Path
from typing import Any

from wsgipool.config import (
    ENV_PREFIX,
    GUNICORN_ONLY,
    SAME,
    Config,
    ConfigError,
    PoolConfig,
    cross_check,
    describe,
    env_name,
    flag_name,
    option_fields,
)
from wsgipool.cpus import available_cpus

__all__ = ["CONFIG_ENV", "Layers", "Settings", "collect", "find_config_file", "resolve"]

#: The variable that names a config file, like ``-c``.
CONFIG_ENV = "WSGIPOOL_CONFIG"
CONFIG_FILE = "wsgipool.toml"
PYPROJECT = "pyproject.toml"
_PYPROJECT_TABLE = ("tool", "wsgipool")


@dataclass(frozen=True, slots=True)
class Raw:
    """A value as a source gave it, and that source in the words of an error message."""

    value: object
    source: str  # "default", "wsgipool.toml:12", "WSGIPOOL_WORKERS", "--workers", "serve()"
    kind: str  # "default", "file", "env", "cli", "keyword"

    def error(self, name: str, message: str) -> ConfigError:
        if self.kind == "file":
            return ConfigError(f"{self.source}: {name}: {message}")
        if self.kind in ("env", "cli"):
            return ConfigError(f"{self.source}: {message}")
        return ConfigError(f"{describe(name)}: {message}")


#: gunicorn's setting names (its config file's) for options named otherwise here.
GUNICORN_SETTINGS = {
    "accesslog": "access_logfile",
    "errorlog": "error_logfile",
    "loglevel": "log_level",
    "logconfig": "log_config",
    "keepalive": "keepalive_timeout",
    "preload_app": "preload",
    "pidfile": "pid",
    "ciphers": "ssl_ciphers",
    "statsd_host": "metrics_bind",
}


def _suggestion(name: str, names: Iterable[str]) -> str:
    """What an unknown option name most likely meant, as the end of its error line."""
    known = GUNICORN_SETTINGS.get(name)
    if known is not None:
        return f"; gunicorn's {name} is {known} here"
    hint = GUNICORN_ONLY.get(flag_name(name))
    if hint is not None:
        return f"; it is gunicorn's: {hint}"
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _specs() -> dict[str, tuple[type, Field[Any]]]:
    return {spec.name: (cls, spec) for cls, spec in option_fields()}


# -- readers -------------------------------------------------------------------------


def find_config_file(cwd: Path, environ: Mapping[str, str]) -> Path | None:
    """``$WSGIPOOL_CONFIG``, else ``wsgipool.toml``, else a pyproject.toml with [tool.wsgipool]."""
    named = environ.get(CONFIG_ENV)
    if named:
        return Path(named)
    own = cwd / CONFIG_FILE
    if own.is_file():
        return Path(CONFIG_FILE) if cwd == Path.cwd() else own
    pyproject = cwd / PYPROJECT
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None  # not ours to judge: a broken pyproject.toml without our table
        if isinstance(data.get("tool"), dict) and "wsgipool" in data["tool"]:
            return Path(PYPROJECT) if cwd == Path.cwd() else pyproject
    return None


def read_config_file(path: Path) -> dict[str, Raw]:
    """The options set in a TOML file (the [tool.wsgipool] table of a pyproject.toml)."""
    if path.suffix == ".py":  # -c gunicorn.conf.py, by habit
        raise ConfigError(
            f"{path}: a Python file; wsgipool reads TOML: write its settings as "
            "wsgipool.toml keys (docs/configuration.md)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    start = 0
    if path.name == PYPROJECT:
        for key in _PYPROJECT_TABLE:
            table = data.get(key)
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: no [tool.wsgipool] table")
            data = table
        header = re.search(r"^\s*\[\s*tool\s*\.\s*wsgipool\s*\]", text, re.MULTILINE)
        start = text.count("\n", 0, header.start()) if header else 0
    lines = text.splitlines()
    specs = _specs()
    out: dict[str, Raw] = {}
    for key, given in data.items():
        name = key.replace("-", "_")
        line = _line_of(lines, key, start)
        where = f"{path}:{line}" if line else str(path)
        if name not in specs:
            raise ConfigError(f"{where}: {key}: unknown option{_suggestion(name, specs)}")
        if name in out:
            raise ConfigError(f"{where}: {key}: set twice (as {name} and with dashes)")
        metadata = specs[name][1].metadata
        if metadata["octal"] and type(given) is int and not _octal_literal(lines, line):
            # TOML reads 660 in decimal (0o1224): refused, not taken for other permissions.
            raise ConfigError(
                f'{where}: {key}: write permissions in octal, as 0o{given} or "{given}" '
                f"(a TOML number is decimal: {given} is 0o{given:o})"
            )
        value = [given] if metadata["repeat"] and isinstance(given, str) else given
        out[name] = Raw(value, where, "file")
    return out


def _octal_literal(lines: list[str], line: int) -> bool:
    """Whether the number on config file line `line` (1-based) is written 0o..."""
    if not line:
        return False
    value = lines[line - 1].partition("=")[2].strip()
    return value.startswith(("0o", "+0o"))


def _line_of(lines: list[str], key: str, start: int) -> int:
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for number in range(start, len(lines)):
        if pattern.match(lines[number]):
            return number + 1
    return 0


def read_environ(environ: Mapping[str, str]) -> dict[str, Raw]:
    """``WSGIPOOL_<NAME>`` for every option, then each option's conventional aliases."""
    specs = _specs()
    known = {env_name(name) for name in specs} | {CONFIG_ENV}
    for variable in environ:
        if variable.startswith(ENV_PREFIX) and variable not in known:
            name = variable[len(ENV_PREFIX) :].lower()
            hint = _suggestion(name, specs)
            if hint.startswith("; did you mean "):  # said as the variable to set
                hint = f"; did you mean {env_name(hint[15:-1])}?"
            elif name in GUNICORN_SETTINGS:
                hint = f"; gunicorn's {name} is {env_name(GUNICORN_SETTINGS[name])} here"
            raise ConfigError(f"{variable}: unknown wsgipool option{hint}")
    out: dict[str, Raw] = {}
    for name, (_cls, spec) in specs.items():
        for variable in (env_name(name), *spec.metadata["env_aliases"]):
            if variable in environ:
                text = environ[variable]
                value: object = text
                if spec.metadata["repeat"]:
                    value = [item.strip() for item in text.split(",") if item.strip()]
                out[name] = Raw(value, variable, "env")
                break
    return out


def _read_command_line(args: Mapping[str, object]) -> dict[str, Raw]:
    return {name: Raw(value, flag_name(name), "cli") for name, value in args.items()}


def _defaults(cli: bool) -> dict[str, Raw]:
    out: dict[str, Raw] = {}
    for name, (_cls, spec) in _specs().items():
        if cli and spec.metadata["cli_default"] is not SAME:
            out[name] = Raw(spec.metadata["cli_default"], "default (CLI)", "default")
        elif name == "workers":
            out[name] = Raw(spec.default, f"default: {available_cpus().reason}", "default")
        else:
            out[name] = Raw(spec.default, "default", "default")
    return out


# -- merging -------------------------------------------------------------------------


class Layers:
    """Every source's raw values, merged by precedence; `build()` parses and validates them."""

    def __init__(self, layers: list[dict[str, Raw]]) -> None:
        merged: dict[str, Raw] = {}
        for layer in layers:  # lowest precedence first
            merged.update(layer)
        # Platforms that set PORT expect the app on every interface, not only loopback.
        port, host = merged["port"], merged["host"]
        if port.kind == "env" and port.source == "PORT" and host.kind == "default":
            merged["host"] = Raw(None, "PORT (all interfaces)", "env")
        self.raw = merged

    def parsed(self, name: str) -> Any:
        raw = self.raw[name]
        try:
            return _specs()[name][1].metadata["parse"](raw.value)
        except (ValueError, TypeError) as exc:
            raise raw.error(name, str(exc)) from None

    def enter_directory(self) -> None:
        """Apply ``chdir`` now, so that every relative path after it is relative to it."""
        directory = self.parsed("chdir")
        if directory is None:
            return
        raw = self.raw["chdir"]
        try:
            os.chdir(directory)
        except OSError as exc:
            raise raw.error("chdir", f"cannot change to {directory!r}: {exc.strerror}") from None
        self.raw["chdir"] = Raw(os.getcwd(), raw.source, raw.kind)

    def build(self) -> Settings:
        specs = _specs()
        values = {name: self.parsed(name) for name in specs}
        server = {n: v for n, v in values.items() if specs[n][0] is Config}
        pool = {n: v for n, v in values.items() if specs[n][0] is PoolConfig}
        try:
            config = Config(**server)
            pool_config = PoolConfig(**pool)
            cross_check(config, pool_config)
        except ConfigError as exc:
            raise self.attributed(exc) from None
        return Settings(config, pool_config, {n: r.source for n, r in self.raw.items()})

    def attributed(self, exc: ConfigError) -> ConfigError:
        """`exc`, which names an option (a check across values, a file the server could not
        use at start), naming where that option's value came from instead."""
        message = str(exc)
        for name, raw in self.raw.items():
            prefix = describe(name) + ": "
            if message.startswith(prefix):
                return raw.error(name, message[len(prefix) :])
        return exc


def collect(
    *,
    command_line: Mapping[str, object] | None = None,
    keywords: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    cwd: Path | None = None,
    cli: bool = False,
) -> Layers:
    """Read every source; `cli` selects the command's defaults (127.0.0.1:8000) over serve()'s."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    path = Path(config_file) if config_file is not None else find_config_file(cwd, environ)
    layers = [
        _defaults(cli),
        read_config_file(path) if path is not None else {},
        read_environ(environ),
        _read_command_line(command_line or {}),
        {name: Raw(value, "serve()", "keyword") for name, value in (keywords or {}).items()},
    ]
    return Layers(layers)


def resolve(**keywords: Any) -> Settings:
    """For the API: the settings from the config file and the environment, under `keywords`.

    ``serve(app, **resolve(workers=2).keywords())`` reads them as the command does;
    ``serve()`` on its own reads neither (an embedding program owns its configuration).
    """
    return collect(keywords=keywords).build()


class Settings:
    """The validated configuration and the source of each value."""

    def __init__(self, config: Config, pool: PoolConfig, sources: dict[str, str]) -> None:
        self.config = config
        self.pool = pool
        self.sources = sources

    def value(self, name: str) -> Any:
        return getattr(self.config if name in Config.option_names() else self.pool, name)

    def keywords(self) -> dict[str, Any]:
        """Every value, as keywords for serve()."""
        return {name: self.value(name) for _cls, spec in option_fields() for name in [spec.name]}

    def render(self) -> str:
        """The effective configuration as TOML (it can be pasted into wsgipool.toml)."""
        lines = []
        for _cls, spec in option_fields():
            name = spec.name
            value = self.value(name)
            source = self.sources.get(name, "default")
            if value is not None and spec.metadata["show"] is not None:
                value = spec.metadata["show"](value)
            if value is None:
                lines.append(f"# {name} is unset  # {source}")
            else:
                lines.append(f"{name} = {_toml(value)}  # {source}")
        return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        items = ["=".join(v) if isinstance(v, tuple) else v for v in value]
        return "[" + ", ".join(_toml(item) for item in items) + "]"
    return json.dumps(str(value))
