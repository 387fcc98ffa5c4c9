"""The named state changes of the spool index (`store.Change`): each is checked against the
transition table before any SQL exists, and expects the item's current state in its WHERE
clause. Pure: nothing here opens a database (tests/integration/test_spool_store.py runs them)."""

from __future__ import annotations

import pytest

from dicomlb.spool.state import ItemState, TransitionError
from dicomlb.spool.store import Change

Q, S, DL, DD = ItemState.QUEUED, ItemState.SENDING, ItemState.DELIVERED, ItemState.DEAD


def moves(change: Change) -> tuple[str, str]:
    """(expected state, new state) of a change whose SQL sets state=? first and ends with
    `state=?` in its WHERE (the first and last parameters)."""
    assert change.sql.startswith("UPDATE items SET state=?")
    assert " WHERE " in change.sql and "state=?" in change.sql.split(" WHERE ", 1)[1]
    return change.params[-1], change.params[0]


@pytest.mark.parametrize(
    ("change", "current", "target"),
    [
        (Change.requeue(7), S, Q),
        (Change.deliver(7, 1.0, file=""), S, DL),
        (Change.fail(7, attempts=2, reason="x", next_attempt_at=3.0, now=1.0), S, Q),
        (Change.give_up(7, S, attempts=3, reason="x", now=1.0), S, DD),
        (Change.give_up(7, Q, attempts=3, reason="x", now=1.0), Q, DD),
    ],
)
def test_one_item_changes_name_the_state_they_expect(
    change: Change, current: ItemState, target: ItemState
) -> None:
    assert moves(change) == (current.value, target.value)
    assert change.item == 7
    assert "id=?" in change.sql


def test_a_claim_takes_due_queued_items_of_one_backend_in_one_statement() -> None:
    claim = Change.claim("b0", 5.0, 32)
    assert moves(claim) == (Q.value, S.value)
    assert claim.params == (S.value, 5.0, Q.value, "b0", 5.0, 32, Q.value)
    assert claim.sql.count(";") == 0 and " RETURNING " in claim.sql
    assert claim.item is None


def test_operator_and_bulk_changes_move_only_from_legal_states() -> None:
    assert Change.requeue_sending().params == (Q.value, S.value)
    assert Change.retry_dead(5.0).params == (Q.value, 5.0, 5.0, DD.value)
    by_id = Change.retry([3, 4], 5.0)
    assert [c.params[3] for c in by_id] == [DD.value, DL.value]  # one statement per state
    assert all(c.params[-2:] == (3, 4) and "file != ''" in c.sql for c in by_id)
    dead, unnamed = Change.lose_file("a.dcm", "gone")
    assert dead.params == (DD.value, "gone", "a.dcm", Q.value)
    assert unnamed.params == ("a.dcm",)


def test_changes_that_keep_the_state_still_guard_it() -> None:
    expire = Change.expire_file(9)
    assert expire.params == (9, DL.value) and "state=?" in expire.sql
    move = Change.reassign("p", "1.2", frm="a", to="b", now=1.0)
    assert move.params == ("b", 1.0, Q.value, "a", "p", "1.2")


@pytest.mark.parametrize("current", [DL, DD])
def test_giving_up_an_item_already_delivered_or_dead_is_a_bug(current: ItemState) -> None:
    with pytest.raises(TransitionError, match=f"from {current} to dead"):
        Change.give_up(1, current, attempts=1, reason="x", now=1.0)
