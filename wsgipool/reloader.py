"""--reload for development: a rolling reload of the workers when a .py file changes.

It watches the current directory (the one ``--chdir`` chose) with watchfiles,
which ignores ``__pycache__``, ``.git``, ``.venv`` and the like, and on a change
to a Python file calls the same rolling reload as SIGHUP: a new template imports
the app, new workers replace the old ones as they become ready, and requests in
flight finish on the old code.  An app that no longer imports leaves the old
workers serving and logs why.  watchfiles comes with ``pip install 'wsgipool[reload]'``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from wsgipool.config import ConfigError, describe

__all__ = ["Reloader", "check_available"]

logger = logging.getLogger("wsgipool.reload")


def check_available() -> None:
    """ConfigError (one line, exit 2) when the reload extra is not installed."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{describe('reload')}: needs the watchfiles package: pip install 'wsgipool[reload]'"
        ) from None


class Reloader:
    """Watches `directory` and awaits `reload()` after each batch of .py changes."""

    def __init__(self, directory: str, reload: Callable[[], Awaitable[object]]) -> None:
        self.directory = directory
        self._reload = reload
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        logger.info("reload: watching .py files under %s", self.directory)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        from watchfiles import PythonFilter, awatch

        try:
            async for changes in awatch(
                self.directory, watch_filter=PythonFilter(), stop_event=self._stop
            ):
                names = sorted({os.path.relpath(path, self.directory) for _, path in changes})
                shown = ", ".join(names[:3]) + (
                    f" and {len(names) - 3} more" if len(names) > 3 else ""
                )
                logger.info("reload: %s changed; reloading the workers", shown)
                await self._reload()
        except Exception:
            logger.exception("reload: the file watcher stopped")
