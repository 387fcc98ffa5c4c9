"""The spool's pure rules: transitions, retry schedule, breaker, limits, failover."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomlb.snapshot import RetryConfig, SpoolConfig
from dicomlb.spool import state
from dicomlb.spool.state import BreakerState, CircuitBreaker, ItemState, Usage

Q, S, DL, DD = ItemState.QUEUED, ItemState.SENDING, ItemState.DELIVERED, ItemState.DEAD
# Written out here, not read from state.TRANSITIONS: a move added or lost there fails a test.
LEGAL = {(Q, S), (Q, DD), (S, DL), (S, Q), (S, DD), (DD, Q), (DL, Q)}
EVERY_PAIR = [(a, b) for a in ItemState for b in ItemState]


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_every_legal_transition(current: ItemState, target: ItemState) -> None:
    assert state.allowed(current, target)
    assert state.check_transition(current, target) is target


@pytest.mark.parametrize(("current", "target"), [p for p in EVERY_PAIR if p not in LEGAL])
def test_every_other_move_is_refused_with_a_typed_error(
    current: ItemState, target: ItemState
) -> None:
    assert not state.allowed(current, target)
    with pytest.raises(state.TransitionError, match=f"from {current} to {target}"):
        state.check_transition(current, target)


def test_the_table_is_exactly_the_legal_moves() -> None:
    assert state.TRANSITIONS == LEGAL


def test_purge_never_takes_an_item_being_sent() -> None:
    assert state.check_purge(frozenset({DD, DL})) == {DD, DL}
    assert state.check_purge(state.PURGEABLE) == {Q, DL, DD}
    with pytest.raises(state.TransitionError, match="while sending"):
        state.check_purge(frozenset({DD, S}))


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    retry = RetryConfig(base=1.0, cap=8.0)
    rng = random.Random(7)
    for attempts, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0)]:
        for _ in range(50):
            delay = state.backoff_delay(attempts, retry, rng)
            assert step / 2 <= delay <= step


@given(
    attempts=st.integers(1, 10_000),
    base=st.floats(0.001, 100),
    cap=st.floats(0.001, 10_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_exceeds_the_cap(attempts: int, base: float, cap: float, seed: int) -> None:
    retry = RetryConfig(base=min(base, cap), cap=cap)
    delay = state.backoff_delay(attempts, retry, random.Random(seed))
    assert 0 <= delay <= cap


def test_same_seed_same_schedule() -> None:
    retry = RetryConfig(base=1.0, cap=60.0)
    one = [state.backoff_delay(n, retry, random.Random(3)) for n in range(1, 8)]
    two = [state.backoff_delay(n, retry, random.Random(3)) for n in range(1, 8)]
    assert one == two


def test_after_failure_queues_again_then_dies_at_max_attempts() -> None:
    retry = RetryConfig(base=1.0, cap=10.0, max_attempts=3, max_age=0)
    rng = random.Random(1)
    first = state.after_failure(
        attempts=1, created_at=0, now=100, reason="status 0xA700", retry=retry, rng=rng
    )
    assert first.state is ItemState.QUEUED and 100.5 <= first.next_attempt_at <= 101
    last = state.after_failure(
        attempts=3, created_at=0, now=100, reason="status 0xA700", retry=retry, rng=rng
    )
    assert last.state is ItemState.DEAD
    assert "3 attempts failed (max_attempts 3)" in last.reason and "0xA700" in last.reason


def test_after_failure_dies_when_the_next_attempt_would_be_too_old() -> None:
    retry = RetryConfig(base=100.0, cap=100.0, max_attempts=0, max_age=120)
    outcome = state.after_failure(
        attempts=1, created_at=0, now=100, reason="x", retry=retry, rng=random.Random(0)
    )
    assert outcome.state is ItemState.DEAD and "max_age" in outcome.reason


def test_breaker_opens_after_threshold_waits_then_one_probe_decides() -> None:
    breaker = CircuitBreaker(threshold=2, base=1.0, cap=4.0)
    assert breaker.allow(0)
    assert not breaker.failure(0)
    assert breaker.failure(0.1)  # opens
    assert breaker.down_since == 0
    assert not breaker.allow(0.5)
    assert breaker.allow(1.2) and breaker.state is BreakerState.HALF_OPEN
    assert breaker.failure(1.2)  # the probe failed: open again, longer
    assert not breaker.allow(2.5) and breaker.allow(3.3)
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.down_since is None


def test_breaker_cooldown_is_capped() -> None:
    breaker = CircuitBreaker(threshold=1, base=1.0, cap=4.0)
    now = 0.0
    for _ in range(10):
        breaker.failure(now)
        assert breaker.retry_at - now <= 4.0
        now = breaker.retry_at
        assert breaker.allow(now)


def test_limits() -> None:
    config = SpoolConfig(directory="x", max_items=10, max_bytes=1000, min_free_disk=500)
    assert state.refusal(Usage(items=9, bytes=0, free_disk=10_000), config) is None
    assert "max_items=10" in (
        state.refusal(Usage(items=10, bytes=0, free_disk=10**6), config) or ""
    )
    assert "max_bytes=1000" in (
        state.refusal(Usage(items=0, bytes=900, free_disk=10**6), config, incoming=100) or ""
    )
    assert "min_free_disk=500" in (
        state.refusal(Usage(items=0, bytes=0, free_disk=499), config) or ""
    )
    unlimited = SpoolConfig(directory="x", min_free_disk=0)
    assert state.refusal(Usage(items=10**9, bytes=10**15, free_disk=0), unlimited) is None


def test_failover_waits_unless_configured() -> None:
    assert not state.should_fail_over(down_since=0, now=10**6, failover_after=None)
    assert not state.should_fail_over(down_since=None, now=10, failover_after=5)
    assert not state.should_fail_over(down_since=0, now=4, failover_after=5)
    assert state.should_fail_over(down_since=0, now=5, failover_after=5)
