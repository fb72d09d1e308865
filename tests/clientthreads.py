"""The skeleton of the tests' load generators: client threads until told to stop."""

from __future__ import annotations

import threading


class ClientThreads:
    """`count` daemon threads, each running `_run` until `_stop` is set.

    A subclass sets what `_run` uses first, then calls ``super().__init__``,
    which starts the threads; `_lock` guards what they record.
    """

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _join(self, timeout: float) -> None:
        """Tell every thread to stop, and wait up to `timeout` for each."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
