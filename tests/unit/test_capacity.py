"""A backend's learned association limit and the health-check plan (pure, `now` passed in)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dicomlb.capacity import Capacity, CheckPlan, Unanswered


def test_configured_until_something_is_learned() -> None:
    capacity = Capacity(4)
    assert capacity.limit(0.0) == 4
    assert capacity.limit(1e9) == 4


def test_unanswered_while_holding_one_learns_one_and_retries_once() -> None:
    capacity = Capacity(4, remember=600)
    assert capacity.unanswered(1, 100.0, retried=False) is Unanswered.RETRY
    assert capacity.limit(100.0) == 1
    assert capacity.limit(699.0) == 1  # remembered: the next sender does not wait again
    # A second try that is not answered either is a failure, whatever dicomlb holds.
    assert capacity.unanswered(1, 101.0, retried=True) is Unanswered.FAIL


def test_unanswered_while_holding_none_is_the_backends_failure() -> None:
    capacity = Capacity(4)
    assert capacity.unanswered(0, 5.0, retried=False) is Unanswered.FAIL
    assert capacity.limit(5.0) == 4  # nothing learned: dicomlb held nothing to blame


def test_the_learned_limit_is_forgotten_after_a_while() -> None:
    capacity = Capacity(4, remember=600)
    capacity.unanswered(2, 0.0, retried=False)
    assert capacity.limit(599.9) == 2
    assert capacity.limit(600.0) == 4  # tried again at the configured limit


def test_learning_only_lowers_the_limit() -> None:
    capacity = Capacity(4)
    capacity.unanswered(1, 0.0, retried=False)
    capacity.unanswered(3, 1.0, retried=False)  # held 3 then (e.g. counted before it learned)
    assert capacity.limit(2.0) == 1


@given(
    configured=st.integers(1, 64),
    events=st.lists(st.tuples(st.integers(0, 80), st.floats(0, 2000)), max_size=20),
)
def test_the_limit_stays_between_one_and_the_configured(
    configured: int, events: list[tuple[int, float]]
) -> None:
    capacity = Capacity(configured)
    now = 0.0
    for others, step in events:
        now += step
        capacity.unanswered(others, now, retried=False)
        assert 1 <= capacity.limit(now) <= configured


def test_a_check_takes_a_free_slot() -> None:
    capacity = Capacity(4)
    plan = capacity.check(open_now=1, now=10.0, last_answer=9.5, interval=1.0)
    assert plan is CheckPlan.PROBE


def test_a_check_at_the_limit_counts_a_recent_answer() -> None:
    capacity = Capacity(4)
    capacity.unanswered(1, 0.0, retried=False)  # the backend takes one at a time
    assert capacity.check(open_now=1, now=10.0, last_answer=9.5, interval=1.0) is CheckPlan.RECENT


def test_a_check_at_the_limit_without_a_recent_answer_probes() -> None:
    """It takes an idle association's slot, or waits for one within its timeout."""
    capacity = Capacity(1)
    assert capacity.check(open_now=1, now=10.0, last_answer=8.0, interval=1.0) is CheckPlan.PROBE
    assert capacity.check(open_now=1, now=10.0, last_answer=None, interval=1.0) is CheckPlan.PROBE
