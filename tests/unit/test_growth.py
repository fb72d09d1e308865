"""The leak finder's bookkeeping: path normalisation and the bounded growth table."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgipool.growth import MAX_PATH_LENGTH, OTHER, GrowthTable, normalise_path
from wsgipool.supervisor.supervisor import memory_culprits


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/leak", "/leak"),
        (b"/items/123", "/items/{id}"),
        (b"/items/456?page=2&x=%41", "/items/{id}"),
        (b"/users/42/orders/7/", "/users/{id}/orders/{id}/"),
        (b"/u/550e8400-e29b-41d4-a716-446655440000", "/u/{id}"),
        (b"/u/550E8400E29B41D4A716446655440000/x", "/u/{id}/x"),
        (b"/blob/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", "/blob/{id}"),
        (b"/v2/api", "/v2/api"),  # a short word with a digit is a route
        (b"/deadbeefdeadbeefdeadbeef", "/deadbeefdeadbeefdeadbeef"),  # hex-looking word, no digit
        (b"/page#frag", "/page"),
        (b"http://example.com/a/12?q", "/a/{id}"),
        (b"*", "*"),
        (b"", "/"),
        ("/caf\xe9/\xb2", "/caf\xe9/\xb2"),  # "²" is not an ASCII digit
    ],
)
def test_normalise_path(target: bytes | str, expected: str) -> None:
    assert normalise_path(target) == expected


def test_long_paths_are_capped() -> None:
    path = normalise_path(b"/" + b"word/" * 100)
    assert len(path) == MAX_PATH_LENGTH
    assert path.endswith("...")


def test_table_ranks_by_growth_and_counts_requests() -> None:
    table = GrowthTable(3)
    for _ in range(5):
        table.add("/leak", 1024)
        table.add("/ok", 0)
        table.add("/free", -2048)  # freeing memory does not offset growth elsewhere
    assert [e.path for e in table.top()] == ["/leak", "/free", "/ok"]  # ties: by path
    assert [(e.grown_kib, e.requests) for e in table.top()] == [(5120, 5), (0, 5), (0, 5)]
    assert table.total_kib == 5120


_paths = st.sampled_from([f"/p{i}" for i in range(200)])
_changes = st.integers(min_value=-(1 << 20), max_value=1 << 20)


@given(
    capacity=st.integers(min_value=1, max_value=50),
    events=st.lists(st.tuples(_paths, _changes), max_size=400),
)
def test_table_is_bounded_and_adds_up(capacity: int, events: list[tuple[str, int]]) -> None:
    table = GrowthTable(capacity)
    for path, kib in events:
        table.add(path, kib)
        assert len(table) <= capacity
    kept = list(table.entries())
    assert len(kept) == len({e.path for e in kept}) <= capacity
    assert OTHER not in {e.path for e in kept}
    assert sum(e.grown_kib for e in kept) + table.other.grown_kib == table.total_kib
    assert sum(e.requests for e in kept) + table.other.requests == len(events)
    assert table.total_kib == sum(max(0, kib) for _, kib in events)


@given(
    capacity=st.integers(min_value=2, max_value=20),
    noise=st.lists(_paths, max_size=300),
)
def test_a_heavy_leaker_is_never_evicted(capacity: int, noise: list[str]) -> None:
    """Space-saving: a path with more than 1/capacity of all growth stays in the table."""
    table = GrowthTable(capacity)
    for i, path in enumerate(noise):
        table.add(path, 10)
        if i % capacity == 0:
            table.add("/leak", 10 * capacity + 10)
    table.add("/leak", 10 * capacity + 10)
    assert table.top(1)[0].path == "/leak"


def test_memory_culprits_escape_and_bound_what_they_show() -> None:
    growth = GrowthTable(10)
    growth.add("/leak\x1b[31m", 2048)
    growth.add("/ok", 4)
    growth.add("/none", 0)
    running = [f"GET /slow\n{i}" for i in range(7)]
    worker = SimpleNamespace(inflight_requests=lambda: running, growth=growth)
    line = memory_culprits(cast(Any, worker))
    assert "\x1b" not in line and "\n" not in line
    assert "in flight: GET /slow\\n0, " in line
    assert "and 2 more" in line
    assert line.endswith(
        "grew it most: /leak\\x1b[31m +2048 KiB in 1 request(s), /ok +4 KiB in 1 request(s)"
    )


def test_memory_culprits_when_nothing_was_measured() -> None:
    worker = SimpleNamespace(inflight_requests=lambda: [], growth=GrowthTable(10))
    assert (
        memory_culprits(cast(Any, worker)) == "in flight: none; grew it most: no request measured"
    )
