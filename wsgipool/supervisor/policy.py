"""Pure decisions about workers: when to recycle one, how long to wait before a restart.

No processes, no clock, no randomness of its own: the supervisor passes in the
facts (and a random source), so every rule here is tested in milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RSS_SAMPLES",
    "RestartBackoff",
    "RssVerdict",
    "WorkerFacts",
    "jittered_lifetime",
    "jittered_request_limit",
    "planned_recycle_reason",
    "rss_verdict",
]

#: Consecutive samples over the soft limit before the supervisor recycles a worker.
RSS_SAMPLES: Final = 3


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """What the supervisor knows of a worker at one moment."""

    dispatched: int
    request_limit: int | None
    age: float
    lifetime_limit: float | None


def jittered_request_limit(max_requests: int, jitter: int, rng: random.Random) -> int | None:
    """This worker's --max-requests, spread by up to `jitter` so workers do not recycle together."""
    if max_requests <= 0:
        return None
    return max_requests + (rng.randint(0, jitter) if jitter > 0 else 0)


def jittered_lifetime(
    max_lifetime: float | None, jitter: float, rng: random.Random
) -> float | None:
    if max_lifetime is None:
        return None
    return max_lifetime + (rng.uniform(0.0, jitter) if jitter > 0 else 0.0)


def planned_recycle_reason(facts: WorkerFacts) -> str | None:
    """The reason to replace a healthy worker now, if any (max-requests, max-lifetime)."""
    if facts.request_limit is not None and facts.dispatched >= facts.request_limit:
        return "max-requests"
    if facts.lifetime_limit is not None and facts.age >= facts.lifetime_limit:
        return "max-lifetime"
    return None


@dataclass(frozen=True, slots=True)
class RssVerdict:
    action: str | None  # None, "recycle" or "kill"
    over_count: int  # consecutive samples over the soft limit, to carry to the next sample


def rss_verdict(
    rss: int, soft: int | None, hard: int | None, over_count: int, samples: int = RSS_SAMPLES
) -> RssVerdict:
    """What one memory sample means: over hard kills, over soft `samples` times recycles.

    One spike over the soft limit (a big request that frees its memory) does not
    count; a worker that stays over it does.
    """
    if hard is not None and rss > hard:
        return RssVerdict("kill", over_count + 1)
    if soft is not None and rss > soft:
        count = over_count + 1
        return RssVerdict("recycle" if count >= samples else None, count)
    return RssVerdict(None, 0)


class RestartBackoff:
    """Exponential delay between restarts of workers that die young.

    A worker "dies young" if it completed no request or lived less than
    `stable_after` seconds.  Every young death doubles the delay before the next
    spawn (from `base` up to `cap`); a worker that dies after a healthy life
    resets it, as does the first request a new worker completes.
    """

    def __init__(self, base: float = 0.1, cap: float = 10.0, stable_after: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.failures = 0

    def on_death(self, age: float, completed: int) -> float:
        """Seconds to wait before replacing a worker that just died."""
        if completed > 0 and age >= self.stable_after:
            self.failures = 0
            return 0.0
        self.failures += 1
        exponent = min(self.failures - 1, 64)  # past the cap anyway; 2.0 ** 1024 overflows
        return float(min(self.cap, self.base * 2.0**exponent))

    def on_success(self) -> None:
        self.failures = 0
