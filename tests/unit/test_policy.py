"""The supervisor's pure rules (wsgipool/supervisor/policy.py), in milliseconds.

No processes, no clock: restart backoff, memory verdicts, jitter and the
planned recycle reasons are fed facts and checked against what the issue asks.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgipool.supervisor import policy

MIB = 1024 * 1024

# -- restart backoff ----------------------------------------------------------------


def test_backoff_doubles_from_base_for_each_young_death():
    backoff = policy.RestartBackoff(base=0.1, cap=10.0, stable_after=2.0)
    delays = [backoff.on_death(age=0.05, completed=0) for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert backoff.failures == 6


def test_backoff_is_capped():
    backoff = policy.RestartBackoff(base=0.1, cap=10.0)
    delays = [backoff.on_death(age=0.0, completed=0) for _ in range(40)]
    assert max(delays) == 10.0
    assert delays[-1] == 10.0
    assert delays[7] == pytest.approx(10.0)  # 0.1 * 2**7 = 12.8, capped
    assert delays[6] == pytest.approx(6.4)
    assert all(a <= b for a, b in itertools.pairwise(delays))


def test_backoff_cap_survives_very_many_failures():
    backoff = policy.RestartBackoff(base=0.1, cap=10.0)
    for _ in range(5000):  # 2**5000 overflows a float: the cap must still hold
        delay = backoff.on_death(age=0.0, completed=0)
    assert delay == 10.0


def test_a_healthy_life_resets_the_backoff():
    backoff = policy.RestartBackoff(base=0.1, cap=10.0, stable_after=2.0)
    for _ in range(4):
        backoff.on_death(age=0.1, completed=0)
    assert backoff.on_death(age=2.0, completed=1) == 0.0
    assert backoff.failures == 0
    assert backoff.on_death(age=0.1, completed=0) == pytest.approx(0.1)


def test_first_completed_request_resets_the_backoff():
    backoff = policy.RestartBackoff(base=0.1, cap=10.0)
    for _ in range(5):
        backoff.on_death(age=0.0, completed=0)
    backoff.on_success()
    assert backoff.failures == 0
    assert backoff.on_death(age=0.0, completed=0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("age", "completed"),
    [
        (0.5, 100),  # served requests but died within stable_after: young
        (3600.0, 0),  # lived long but never completed a request: young
        (1.999, 1),
    ],
)
def test_young_deaths_count(age, completed):
    backoff = policy.RestartBackoff(base=0.1, cap=10.0, stable_after=2.0)
    assert backoff.on_death(age=age, completed=completed) == pytest.approx(0.1)
    assert backoff.on_death(age=age, completed=completed) == pytest.approx(0.2)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.floats(0, 10), st.integers(0, 5)),  # a death
            st.none(),  # a request completed by a fresh worker
        ),
        max_size=60,
    )
)
def test_backoff_matches_its_model(events):
    backoff = policy.RestartBackoff(base=0.25, cap=5.0, stable_after=2.0)
    failures = 0
    for event in events:
        if event is None:
            backoff.on_success()
            failures = 0
            continue
        age, completed = event
        delay = backoff.on_death(age=age, completed=completed)
        if completed > 0 and age >= 2.0:
            failures = 0
            assert delay == 0.0
        else:
            failures += 1
            assert delay == pytest.approx(min(5.0, 0.25 * 2 ** (failures - 1)))
            assert 0.25 <= delay <= 5.0
        assert backoff.failures == failures


# -- memory verdicts ---------------------------------------------------------------


def test_one_spike_over_the_soft_limit_does_not_recycle():
    soft, hard = 100 * MIB, 200 * MIB
    verdict = policy.rss_verdict(150 * MIB, soft, hard, over_count=0)
    assert verdict == policy.RssVerdict(None, 1)
    verdict = policy.rss_verdict(50 * MIB, soft, hard, verdict.over_count)
    assert verdict == policy.RssVerdict(None, 0)  # back under: the count starts again
    verdict = policy.rss_verdict(150 * MIB, soft, hard, verdict.over_count)
    assert verdict == policy.RssVerdict(None, 1)


def test_consecutive_samples_over_the_soft_limit_recycle():
    soft = 100 * MIB
    count = 0
    actions = []
    for _ in range(policy.RSS_SAMPLES):
        verdict = policy.rss_verdict(101 * MIB, soft, None, count)
        count = verdict.over_count
        actions.append(verdict.action)
    assert policy.RSS_SAMPLES >= 2  # "a few consecutive samples so one spike does not count"
    assert actions == [None] * (policy.RSS_SAMPLES - 1) + ["recycle"]
    assert count == policy.RSS_SAMPLES


@pytest.mark.parametrize("samples", [1, 2, 5])
def test_number_of_samples_is_a_parameter(samples):
    count = 0
    for index in range(samples):
        verdict = policy.rss_verdict(2 * MIB, MIB, None, count, samples=samples)
        count = verdict.over_count
        assert verdict.action == ("recycle" if index == samples - 1 else None)


def test_over_the_hard_limit_kills_at_once():
    verdict = policy.rss_verdict(201 * MIB, 100 * MIB, 200 * MIB, over_count=0)
    assert verdict.action == "kill"
    verdict = policy.rss_verdict(201 * MIB, None, 200 * MIB, over_count=0)
    assert verdict.action == "kill"


def test_limits_are_strict_and_optional():
    assert policy.rss_verdict(100 * MIB, 100 * MIB, 100 * MIB, 5).action is None
    assert policy.rss_verdict(100 * MIB, 100 * MIB, 100 * MIB, 5).over_count == 0
    assert policy.rss_verdict(10**15, None, None, 7) == policy.RssVerdict(None, 0)


@given(
    st.lists(st.integers(0, 400), max_size=50),
    st.one_of(st.none(), st.integers(50, 150)),
    st.one_of(st.none(), st.integers(150, 300)),
)
def test_rss_verdicts_match_their_model(samples_mib, soft_mib, hard_mib):
    soft = None if soft_mib is None else soft_mib * MIB
    hard = None if hard_mib is None else hard_mib * MIB
    count = 0
    run = 0
    for rss_mib in samples_mib:
        rss = rss_mib * MIB
        verdict = policy.rss_verdict(rss, soft, hard, count)
        if hard is not None and rss > hard:
            assert verdict.action == "kill"
            run += 1
        elif soft is not None and rss > soft:
            run += 1
            assert verdict.action == ("recycle" if run >= policy.RSS_SAMPLES else None)
        else:
            run = 0
            assert verdict.action is None
        assert verdict.over_count == run
        count = verdict.over_count


# -- jitter --------------------------------------------------------------------------


def test_no_request_limit_without_max_requests():
    assert policy.jittered_request_limit(0, 10, random.Random(1)) is None


def test_request_limit_without_jitter_is_exact():
    rng = random.Random(2)
    assert {policy.jittered_request_limit(50, 0, rng) for _ in range(50)} == {50}


def test_request_limit_jitter_covers_its_whole_range_and_no_more():
    rng = random.Random(3)
    limits = [policy.jittered_request_limit(50, 10, rng) for _ in range(2000)]
    assert set(limits) == set(range(50, 61))  # 0..J inclusive


@given(st.integers(1, 10**6), st.integers(0, 1000), st.integers())
def test_request_limit_always_in_range(max_requests, jitter, seed):
    limit = policy.jittered_request_limit(max_requests, jitter, random.Random(seed))
    assert limit is not None
    assert max_requests <= limit <= max_requests + jitter


def test_no_lifetime_limit_without_max_lifetime():
    assert policy.jittered_lifetime(None, 5.0, random.Random(1)) is None


def test_lifetime_without_jitter_is_exact():
    assert policy.jittered_lifetime(60.0, 0.0, random.Random(1)) == 60.0


@given(st.floats(0.001, 1e6), st.floats(0.001, 1e5), st.integers())
def test_lifetime_jitter_in_range(lifetime, jitter, seed):
    value = policy.jittered_lifetime(lifetime, jitter, random.Random(seed))
    assert value is not None
    assert lifetime <= value <= lifetime + jitter


def test_lifetime_jitter_spreads_workers():
    rng = random.Random(4)
    values = [policy.jittered_lifetime(60.0, 6.0, rng) for _ in range(500)]
    assert min(values) < 60.6 and max(values) > 65.4  # spread over the range, not bunched


# -- planned recycles ---------------------------------------------------------------


def facts(dispatched=0, request_limit=None, age=0.0, lifetime_limit=None):
    return policy.WorkerFacts(
        dispatched=dispatched, request_limit=request_limit, age=age, lifetime_limit=lifetime_limit
    )


@pytest.mark.parametrize(
    ("worker", "reason"),
    [
        (facts(), None),
        (facts(dispatched=10**6, age=10**6), None),  # no limits: never
        (facts(dispatched=49, request_limit=50), None),
        (facts(dispatched=50, request_limit=50), "max-requests"),
        (facts(dispatched=51, request_limit=50), "max-requests"),
        (facts(age=59.9, lifetime_limit=60.0), None),
        (facts(age=60.0, lifetime_limit=60.0), "max-lifetime"),
        (facts(dispatched=50, request_limit=50, age=99, lifetime_limit=60), "max-requests"),
        (facts(dispatched=1, request_limit=50, age=99, lifetime_limit=60), "max-lifetime"),
    ],
)
def test_planned_recycle_reason(worker, reason):
    assert policy.planned_recycle_reason(worker) == reason


@given(
    st.integers(0, 1000),
    st.one_of(st.none(), st.integers(1, 1000)),
    st.floats(0, 1000),
    st.one_of(st.none(), st.floats(0.001, 1000)),
)
def test_planned_recycle_reason_model(dispatched, request_limit, age, lifetime_limit):
    reason = policy.planned_recycle_reason(facts(dispatched, request_limit, age, lifetime_limit))
    if request_limit is not None and dispatched >= request_limit:
        assert reason == "max-requests"
    elif lifetime_limit is not None and age >= lifetime_limit:
        assert reason == "max-lifetime"
    else:
        assert reason is None
