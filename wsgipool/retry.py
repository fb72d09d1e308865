"""Running a request again when its worker dies before answering it.

A worker killed by SIGKILL, the OOM killer or ``--max-rss-hard``, or one that
crashed, takes the requests it was running with it.  The main process still
has everything one of them needs to run again (its head, and its body: in
memory, or in the spooled file it keeps until the first response event), so
a request that meets the rule runs once more on another worker:

- its worker died before sending a frame of the response (nothing reached the
  client), and not for breaking the protocol (handle.py marks the exchange);
- its method is in ``--retry-methods`` (GET, HEAD, OPTIONS by default);
- the server is not shutting down.

A request that has killed two workers is a probable poison request (one that
kills every worker it touches): it gets 502 and a log line naming it, so it
costs exactly two worker deaths and cannot take the pool down in a loop.

`verdict` is the rule, pure and tested in milliseconds (tests/unit/test_retry.py);
`first_event` applies it for the aiohttp handler and the ASGI adapter alike.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from wsgipool import exchange as ev
from wsgipool.logs.escape import escape

if TYPE_CHECKING:
    from wsgipool.body import Body
    from wsgipool.executor import ProcessExecutor

__all__ = ["MAX_DEATHS", "Verdict", "first_event", "verdict"]

logger = logging.getLogger("wsgipool.retry")

#: Worker deaths one request may cause: the second makes it a probable poison request.
MAX_DEATHS: Final = 2


class Verdict(enum.Enum):
    RETRY = "retry"  # run it again on another worker
    POISON = "poison"  # it killed MAX_DEATHS workers: 502, logged as the likely culprit
    FAIL = "fail"  # 502 as without retries (not retryable, or no second run possible)


def verdict(method: str, methods: frozenset[str], deaths: int, stopping: bool) -> Verdict:
    """What to do with a request whose worker died before answering it.

    `deaths`: the workers that died running it, this one included.
    """
    if method not in methods:
        return Verdict.FAIL
    if deaths >= MAX_DEATHS:
        return Verdict.POISON
    if stopping:
        return Verdict.FAIL
    return Verdict.RETRY


async def first_event(
    executor: ProcessExecutor,
    exchange: ev.Exchange,
    body: Body,
    raw_ok: bool,
    switch: Callable[[ev.Exchange, ev.Exchange], None],
) -> ev.Exchange:
    """Wait for the request's first response event, running it again if its worker dies.

    Returns the exchange to write the response from (its first event waiting in
    it).  The body must have been submitted with ``keep_body=True``; the caller
    closes it.  `switch(old, new)` is told when a retry replaces the exchange,
    so the caller's watches follow the request; the old one is closed here.  If
    this is cancelled (the client left) during a retry, the retry is stopped and
    the watches are switched back to `exchange`, which the caller closes.
    """
    current = exchange
    deaths = 0
    try:
        while True:
            await current.ready()
            pid = current.lost_to
            if not pid:
                return current
            deaths += 1
            facts = current.facts
            label = escape(facts.request_line())
            method = facts.method.decode("latin-1")
            decided = verdict(method, executor.retry_methods, deaths, executor.stopping)
            if decided is Verdict.POISON:
                logger.error(
                    "probable poison request: %s killed %d workers (the last: %d); answering 502",
                    label,
                    deaths,
                    pid,
                )
                return current
            if decided is Verdict.FAIL:
                return current
            logger.warning(
                "worker %d died before answering %s; running it again on another worker (retry %d)",
                pid,
                label,
                deaths,
            )
            try:
                again = await executor.submit(facts, body, None, raw_ok, keep_body=True, retry=True)
            except ev.Unavailable as exc:
                logger.warning("%s could not run again: %s; answering 502", label, exc)
                return current
            switch(current, again)
            current.close()
            current = again
    except BaseException:
        if current is not exchange:
            switch(current, exchange)
            current.close()
        raise
