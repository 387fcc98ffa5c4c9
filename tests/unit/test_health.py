"""health.py: fall/rise hysteresis, fail_timeout, and the passive-health rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.checks import http_check_of
from dicomlb.config import build_snapshot
from dicomlb.health import Cause, HealthState, counts_against_backend
from dicomlb.pools import BackendState
from dicomlb.snapshot import HealthConfig, HttpCheckConfig


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


# DESIGN 14, one row per cause: what says the backend itself is unwell counts toward fall;
# what one message (or dicomlb's own load) brought about never does.
RULE = {
    Cause.REFUSED: True,  # connect refused / reset
    Cause.TLS: True,
    Cause.CONNECT_TIMEOUT: True,
    Cause.NO_ACCEPT: True,  # no A-ASSOCIATE-AC in time, none of its associations held
    Cause.CLOSED: True,  # closed before the first response byte
    Cause.RESPONSE_TIMEOUT: True,
    Cause.PROTOCOL_ERROR: True,
    Cause.CHECK_TIMEOUT: True,  # a C-ECHO check timing out
    Cause.NO_ACCEPT_WHILE_HOLDING: False,  # its limit is likely full of dicomlb's own
    Cause.REJECTED_PERMANENT: False,  # that sender is refused
    Cause.REJECTED_TRANSIENT: False,  # busy: the next backend is tried
    Cause.CONTEXT_REJECTED: False,
    Cause.BUSY: False,  # no slot within acquire_timeout
    Cause.ABORTED_WHILE_SENDING: False,  # e.g. a malformed data set
    Cause.ABORTED: False,  # the backend aborted because of the message
    Cause.RELEASED: False,
    Cause.LOCAL: False,
    Cause.STATUS: False,  # DIMSE failure statuses, HTTP 4xx / 5xx
    Cause.MALFORMED_ANSWER: False,  # a hostile request can provoke one; checks catch the rest
}


def test_every_cause_has_a_row() -> None:
    assert set(RULE) == set(Cause)


@pytest.mark.parametrize(("cause", "counts"), RULE.items(), ids=[c.value for c in RULE])
def test_what_counts_against_a_backend(cause: Cause, counts: bool) -> None:
    assert counts_against_backend(cause) is counts


def test_down_expires_after_fail_timeout() -> None:
    state = HealthState(fall=2, rise=2, fail_timeout=10.0)
    assert not state.failure(100.0)
    assert state.failure(101.0) and not state.up
    assert state.expires_at() == 111.0
    assert not state.expire(110.9) and not state.up
    assert state.expire(111.0) and state.up
    assert state.recoveries == 1  # slow start sees the recovery
    assert state.expires_at() is None and not state.expire(200.0)
    # back up with no failures counted: it takes `fall` again to go down
    assert not state.failure(300.0)
    assert state.failure(300.5) and state.expires_at() == 310.5


def test_without_fail_timeout_down_stays_until_checks_pass() -> None:
    state = HealthState(fall=1, rise=2)
    assert state.failure(0.0)
    assert state.expires_at() is None
    assert not state.expire(1e9) and not state.up
    assert run(state, "++") == "Du"


def test_eject_also_expires() -> None:
    state = HealthState(fall=3, rise=2, fail_timeout=5.0)
    assert state.eject(50.0) and state.expires_at() == 55.0
    assert state.expire(55.0) and state.up


def test_reset_brings_a_backend_up_and_clears_counts() -> None:
    state = HealthState(fall=2, rise=3)
    assert not state.reset()  # already up
    state.failure(0.0)
    assert state.failures == 1
    state.reset()
    assert state.failures == 0
    state.failure(1.0)
    state.failure(2.0)
    assert not state.up
    state.success()
    assert state.reset() and state.up and state.successes == 0
    assert state.recoveries == 1


def test_fail_timeout_applies_only_without_active_checks() -> None:
    snapshot = build_snapshot(
        {
            "listeners": {"dicom": {"bind": "127.0.0.1:11112"}},
            "pools": {
                name: {
                    "health": {"enabled": enabled, "fail_timeout": "3s"},
                    "backends": [{"name": f"b-{name}", "dicom": "PACS@127.0.0.1:104"}],
                }
                for name, enabled in (("checked", True), ("unchecked", False))
            },
            "routes": [{"name": "all", "pool": "checked"}],
        },
        source="<test>",
    )
    assert snapshot.pools["unchecked"].health.fail_timeout == 3.0
    assert HealthConfig().fail_timeout == 10.0  # nginx's default
    checked, unchecked = (BackendState(p.backends[0], p.health) for p in snapshot.pools.values())
    assert checked.health.fail_timeout is None  # the checks bring it back
    assert unchecked.health.fail_timeout == 3.0


def test_orthanc_pools_check_system_and_take_401_for_alive() -> None:
    # Orthanc answers `GET /` with a redirect: `/system`, 200 or 401 without credentials.
    assert http_check_of(None, orthanc=True) == HttpCheckConfig(path="/system", status=(200, 401))
    assert http_check_of(None, orthanc=False) == HttpCheckConfig(path="/", status=(200,))
    own = HttpCheckConfig(path="/system", username="alice", password="secret")
    assert http_check_of(own, orthanc=True) is own  # with credentials: 200 expected
