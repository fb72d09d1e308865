"""RateLimitedLog: the first event of a quiet period at once, the rest summed up per interval."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wsgipool.ratelog import RateLimitedLog


async def _wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    for _ in range(500):
        if len(caplog.records) >= count:
            break
        await asyncio.sleep(0.01)
    return [r.getMessage() for r in caplog.records]


def test_a_flood_gets_one_line_then_one_summary_with_the_count(caplog):
    logger = logging.getLogger("wsgipool.test.ratelog")

    async def main() -> list[str]:
        log = RateLimitedLog(logger, logging.WARNING, interval=0.05)
        for i in range(500):
            log.record(f"event {i}")
        assert log.suppressed == 499
        return await _wait_for_lines(caplog, 2)

    with caplog.at_level(logging.WARNING, logger="wsgipool.test.ratelog"):
        lines = asyncio.run(main())
    assert lines[0] == "event 0"
    assert len(lines) == 2, lines
    assert lines[1].startswith("499 more like it in the last ")
    assert lines[1].endswith("; the latest: event 499")


def test_after_a_quiet_interval_the_next_event_is_logged_at_once(caplog):
    logger = logging.getLogger("wsgipool.test.ratelog")

    async def main() -> list[str]:
        log = RateLimitedLog(logger, logging.WARNING, interval=0.05)
        log.record("first")
        log.record("second")  # within the interval: counted
        lines = await _wait_for_lines(caplog, 2)
        await asyncio.sleep(0.1)  # a quiet interval after the summary
        log.record("third")
        assert log.suppressed == 0
        return [*lines, caplog.records[-1].getMessage()]

    with caplog.at_level(logging.WARNING, logger="wsgipool.test.ratelog"):
        lines = asyncio.run(main())
    assert lines[0] == "first"
    assert lines[1].startswith("1 more like it") and lines[1].endswith("the latest: second")
    assert lines[2] == "third"
