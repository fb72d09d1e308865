"""wsgipool: WSGI apps behind an aiohttp frontend, in a supervised pool of worker processes.

The public names are loaded on first use, so that a worker process, which
imports ``wsgipool.worker``, never imports aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AppImportError",
    "Config",
    "ConfigError",
    "PoolConfig",
    "ProcessExecutor",
    "WSGIHandler",
    "__version__",
    "serve",
]

_LAZY = {
    "AppImportError": "wsgipool.loader",
    "Config": "wsgipool.config",
    "ConfigError": "wsgipool.config",
    "PoolConfig": "wsgipool.config",
    "ProcessExecutor": "wsgipool.executor",
    "WSGIHandler": "wsgipool.handler",
    "serve": "wsgipool.server",
}

if TYPE_CHECKING:
    from wsgipool.config import Config, ConfigError, PoolConfig
    from wsgipool.executor import ProcessExecutor
    from wsgipool.handler import WSGIHandler
    from wsgipool.loader import AppImportError
    from wsgipool.server import serve


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'wsgipool' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
