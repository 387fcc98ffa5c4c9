"""health.py: fall/rise hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.health import HealthState


def run(state: HealthState, checks: str) -> str:
    """Feed checks ("+" pass, "-" fail); return the state after each ("U" up, "D" down), with
    lowercase marking the check that changed it."""
    out = []
    for check in checks:
        changed = state.success() if check == "+" else state.failure(0.0)
        mark = "U" if state.up else "D"
        out.append(mark.lower() if changed else mark)
    return "".join(out)


@pytest.mark.parametrize(
    ("fall", "rise", "checks", "states"),
    [
        (3, 2, "---", "UUd"),
        (3, 2, "--+--", "UUUUU"),  # a pass resets the failure count
        (3, 2, "---+", "UUdD"),
        (3, 2, "---++", "UUdDu"),
        (3, 2, "---+-++", "UUdDDDu"),  # a failure while down resets the success count
        (3, 2, "---++---", "UUdDuUUd"),
        (1, 1, "-+-+", "dudu"),
        (2, 3, "--+++-", "UdDDuU"),
        (3, 2, "+++", "UUU"),
    ],
)
def test_fall_rise_table(fall: int, rise: int, checks: str, states: str) -> None:
    assert run(HealthState(fall=fall, rise=rise), checks) == states


def test_starts_up_or_down() -> None:
    assert HealthState(fall=3, rise=2).up
    down = HealthState(fall=3, rise=2, up=False)
    assert run(down, "++") == "Du"


@settings(max_examples=200, deadline=None)
@given(
    fall=st.integers(1, 5),
    rise=st.integers(1, 5),
    checks=st.text(alphabet="+-", max_size=40),
)
def test_transitions_need_runs(fall: int, rise: int, checks: str) -> None:
    """Goes down exactly when the last `fall` checks failed after being up, and up exactly
    when the last `rise` checks passed after being down."""
    state = HealthState(fall=fall, rise=rise)
    up = True
    run_length = 0
    for check in checks:
        good = check == "+"
        changed = state.success() if good else state.failure(0.0)
        if good == up:
            run_length = 0  # a check agreeing with the current state resets the count
            assert not changed
        else:
            run_length += 1
            if run_length == (rise if good else fall):
                up, run_length = good, 0
                assert changed
            else:
                assert not changed
        assert state.up == up
