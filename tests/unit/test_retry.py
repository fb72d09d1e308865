"""The retry rule (wsgipool/retry.py) and its option, in milliseconds."""

from __future__ import annotations

import pytest

from wsgipool.config import ConfigError, PoolConfig
from wsgipool.retry import MAX_DEATHS, Verdict, verdict

DEFAULT = frozenset({"GET", "HEAD", "OPTIONS"})


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_first_death_of_an_idempotent_request_is_retried(method):
    assert verdict(method, DEFAULT, 1, stopping=False) is Verdict.RETRY


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "get"])
def test_methods_not_listed_fail_as_before(method):
    assert verdict(method, DEFAULT, 1, stopping=False) is Verdict.FAIL


def test_put_and_delete_when_configured():
    methods = frozenset({"GET", "PUT", "DELETE"})
    assert verdict("PUT", methods, 1, stopping=False) is Verdict.RETRY
    assert verdict("DELETE", methods, 1, stopping=False) is Verdict.RETRY


def test_second_death_is_a_poison_request():
    assert MAX_DEATHS == 2
    assert verdict("GET", DEFAULT, 2, stopping=False) is Verdict.POISON
    assert verdict("GET", DEFAULT, 3, stopping=False) is Verdict.POISON
    # Even while stopping: it killed two workers, and the log says so.
    assert verdict("GET", DEFAULT, 2, stopping=True) is Verdict.POISON


def test_no_retries_at_all():
    for deaths in (1, 2):
        assert verdict("GET", frozenset(), deaths, stopping=False) is Verdict.FAIL


def test_no_retry_while_shutting_down():
    assert verdict("GET", DEFAULT, 1, stopping=True) is Verdict.FAIL


def test_a_request_costs_at_most_two_workers():
    """Whatever happens, the loop of deaths stops at the second."""
    deaths = 0
    while True:
        deaths += 1
        if verdict("GET", DEFAULT, deaths, stopping=False) is not Verdict.RETRY:
            break
    assert deaths == 2


def test_retry_methods_option():
    assert PoolConfig(workers=1).retry_methods == ("GET", "HEAD", "OPTIONS")
    assert PoolConfig(workers=1, retry_methods="").retry_methods == ()
    assert PoolConfig(workers=1, retry_methods=" get, put ,GET,").retry_methods == ("GET", "PUT")
    assert PoolConfig(workers=1, retry_methods=["delete"]).retry_methods == ("DELETE",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("GET,POST", "POST is not idempotent"),
        ("patch", "PATCH is not idempotent"),
        ("GE T", "is not an HTTP method"),
        ("GET\n", None),  # stripped: fine
        (3, "expected a list"),
    ],
)
def test_bad_retry_methods(value, message):
    if message is None:
        assert PoolConfig(workers=1, retry_methods=value).retry_methods == ("GET",)
        return
    with pytest.raises(ConfigError) as info:
        PoolConfig(workers=1, retry_methods=value)
    text = str(info.value)
    assert "retry_methods (--retry-methods)" in text and message in text
    assert "\n" not in text
