"""The per-backend HTTP connection budget: the pure core (`http/budget.py`) and its asyncio
shell (`http/lease.py`), with a hypothesis state machine checking that slots are never
over-given nor lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dicomlb.http.budget import ConnectionBudget, Use, Waiter
from dicomlb.http.lease import BudgetFull, acquire, lease, release, resize


def waiter(use: Use, woken: list[Any], owner: object = None, *, wants: bool = True) -> Waiter:
    def wake(got: Any) -> bool:
        if wants:
            woken.append(got)
        return wants

    return Waiter(use=use, wake=wake, owner=owner)


def test_slots_up_to_the_limit_then_none() -> None:
    budget = ConnectionBudget(2)
    assert budget.take() and budget.take()
    assert not budget.take()
    assert budget.in_use == 2 and budget.full
    assert budget.give_back() is None
    assert budget.in_use == 1 and budget.take()


def test_no_limit_counts_but_never_refuses() -> None:
    budget = ConnectionBudget(None)
    for _ in range(1000):
        assert budget.take()
    assert budget.in_use == 1000 and not budget.full


def test_a_freed_slot_goes_to_the_first_waiter_and_stays_taken() -> None:
    budget = ConnectionBudget(1)
    assert budget.take()
    woken: list[Any] = []
    first, second = waiter(Use.PROXY, woken), waiter(Use.BRIDGE, woken)
    budget.wait(first)
    budget.wait(second)
    assert budget.give_back() is first
    assert budget.in_use == 1
    assert budget.give_back() is second
    assert budget.give_back() is None
    assert budget.in_use == 0


def test_checks_go_first_but_behind_other_checks() -> None:
    budget = ConnectionBudget(1)
    budget.take()
    woken: list[Any] = []
    proxy, bridge = waiter(Use.PROXY, woken), waiter(Use.BRIDGE, woken)
    check1, check2 = waiter(Use.CHECK, woken), waiter(Use.CHECK, woken)
    for w in (proxy, check1, bridge, check2):
        budget.wait(w)
    assert list(budget.line) == [check1, check2, proxy, bridge]


def test_a_connection_is_handed_over_only_to_its_owners_waiter() -> None:
    budget = ConnectionBudget(1)
    budget.take()
    pool, other = object(), object()
    woken: list[Any] = []
    check = waiter(Use.CHECK, woken)
    request = waiter(Use.PROXY, woken, owner=pool)
    budget.wait(request)
    assert budget.hand_over(pool) is request  # the next request takes the connection
    assert budget.in_use == 1
    budget.wait(check)
    assert budget.hand_over(pool) is None  # a check is first: the connection must close
    assert budget.others_waiting(pool) and budget.others_waiting(other)
    assert budget.give_back() is check


def test_left_waiters_are_skipped_and_leaving_twice_is_harmless() -> None:
    budget = ConnectionBudget(1)
    budget.take()
    woken: list[Any] = []
    w = waiter(Use.BRIDGE, woken)
    budget.wait(w)
    budget.leave(w)
    budget.leave(w)
    assert budget.give_back() is None and budget.in_use == 0


def test_resize_up_wakes_waiters_and_down_waits_for_closes() -> None:
    budget = ConnectionBudget(1)
    budget.take()
    woken: list[Any] = []
    a, b, c = (waiter(Use.PROXY, woken) for _ in range(3))
    for w in (a, b, c):
        budget.wait(w)
    assert budget.resize(3) == [a, b]
    assert budget.in_use == 3 and list(budget.line) == [c]
    assert budget.resize(1) == []
    # Over the new limit: closes free slots without handing them on until below it.
    assert budget.give_back() is None and budget.give_back() is None
    assert budget.in_use == 1
    assert budget.give_back() is c


class BudgetMachine(RuleBasedStateMachine):
    """Take, wait, leave, give back and resize in any order: the slots in use are always
    those held, never more than the limit unless it was lowered, and nobody waits while
    a slot is free."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = ConnectionBudget(2)
        self.held = 0
        self.waiting: list[Waiter] = []
        self.lowered = False

    def _wake(self, got: Any) -> bool:
        self.held += 1
        return True

    @rule()
    def take(self) -> None:
        if self.budget.take():
            self.held += 1
        else:
            w = Waiter(use=Use.PROXY, wake=self._wake)
            self.budget.wait(w)
            self.waiting.append(w)

    @rule()
    def check(self) -> None:
        if self.budget.take():
            self.held += 1
        else:
            w = Waiter(use=Use.CHECK, wake=self._wake)
            self.budget.wait(w)
            self.waiting.append(w)

    @precondition(lambda self: self.held > 0)
    @rule()
    def give_back(self) -> None:
        self.held -= 1
        w = self.budget.give_back()
        if w is not None:
            self.waiting.remove(w)
            w.wake(None)

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(self.waiting))
        self.waiting.remove(w)
        self.budget.leave(w)

    @rule(limit=st.one_of(st.none(), st.integers(1, 4)))
    def resize(self, limit: int | None) -> None:
        old = self.budget.limit
        self.lowered = limit is not None and (old is None or limit < old or self.lowered)
        for w in self.budget.resize(limit):
            self.waiting.remove(w)
            w.wake(None)

    @invariant()
    def counted(self) -> None:
        budget = self.budget
        assert budget.in_use == self.held
        assert list(budget.line) == sorted(budget.line, key=lambda w: w.use is not Use.CHECK)
        if budget.line:
            assert budget.full
        if budget.limit is not None and budget.in_use > budget.limit:
            assert self.lowered


TestBudgetMachine = BudgetMachine.TestCase


# ------------------------------------------------------------------ the asyncio shell


class Conn:
    def __init__(self, budget: ConnectionBudget) -> None:
        self.budget = budget
        self.closed = False

    def close(self) -> None:
        self.closed = True
        release(self.budget)


def test_lease_gives_the_slot_back_on_every_exit() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        async with lease(budget, Use.CHECK, 1.0):
            assert budget.in_use == 1
        assert budget.in_use == 0
        with pytest.raises(RuntimeError):
            async with lease(budget, Use.CHECK, 1.0):
                raise RuntimeError("boom")
        assert budget.in_use == 0

        entered = asyncio.Event()

        async def hold() -> None:
            async with lease(budget, Use.CHECK, 1.0):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(hold())
        await entered.wait()
        assert budget.in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.in_use == 0

    asyncio.run(main())


def test_a_full_budget_times_out_and_leaves_nothing_behind() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        with pytest.raises(BudgetFull, match="all 1 HTTP connections to the backend busy"):
            async with lease(budget, Use.CHECK, 0.01):
                pass
        with pytest.raises(TimeoutError):
            await acquire(budget, Use.PROXY, 0.01)
        assert budget.in_use == 1 and not budget.line

    asyncio.run(main())


def test_a_waiter_gets_the_slot_when_it_is_given_back_and_a_check_first() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        order: list[str] = []

        async def user(name: str, use: Use) -> None:
            async with lease(budget, use, 5.0):
                order.append(name)

        proxy = asyncio.create_task(user("proxy", Use.PROXY))
        await asyncio.sleep(0)
        check = asyncio.create_task(user("check", Use.CHECK))
        await asyncio.sleep(0)
        release(budget)
        await asyncio.gather(proxy, check)
        assert order == ["check", "proxy"]
        assert budget.in_use == 0

    asyncio.run(main())


def test_waiting_sheds_an_idle_connection() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        idle = [Conn(budget)]

        def shed() -> bool:
            if not idle:
                return False
            conn = idle.pop()
            asyncio.get_running_loop().call_soon(conn.close)  # closed a moment later
            return True

        budget.shed = shed
        async with lease(budget, Use.CHECK, 1.0):
            assert budget.in_use == 1
        assert budget.in_use == 0 and not idle

    asyncio.run(main())


def test_a_connection_handed_over_to_a_waiter_that_gave_up_is_closed() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        owner = object()
        task = asyncio.create_task(acquire(budget, Use.PROXY, 5.0, owner=owner))
        await asyncio.sleep(0)
        conn = Conn(budget)
        w = budget.hand_over(owner)
        assert w is not None and w.wake(conn)
        task.cancel()  # it gives up in the same moment: the connection is not kept
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed and budget.in_use == 0

    asyncio.run(main())


def test_a_slot_woken_for_a_cancelled_waiter_goes_to_the_next() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        first = asyncio.create_task(acquire(budget, Use.BRIDGE, 5.0))
        second = asyncio.create_task(acquire(budget, Use.BRIDGE, 5.0))
        await asyncio.sleep(0)
        first.cancel()
        release(budget)  # before `first` ran its cancellation: its future is cancelled
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is None
        assert budget.in_use == 1 and not budget.line

    asyncio.run(main())


def test_resize_wakes_the_waiters_it_leaves_room_for() -> None:
    async def main() -> None:
        budget = ConnectionBudget(1)
        assert budget.take()
        waiting = [asyncio.create_task(acquire(budget, Use.PROXY, 5.0)) for _ in range(2)]
        await asyncio.sleep(0)
        resize(budget, 3)
        assert await asyncio.gather(*waiting) == [None, None]
        assert budget.in_use == 3

    asyncio.run(main())
