"""Waiting for a slot of a backend's HTTP connection budget (asyncio shell around
`http/budget.py`): `acquire` / `release` for holders whose slot lives as long as a
connection (the proxy's, the bridge's), `lease` (`async with`) for one that lives in a block
(a health check).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from dicomlb.http.budget import ConnectionBudget, Use, Waiter

__all__ = ["BudgetFull", "Closable", "acquire", "full", "lease", "release", "resize"]


class BudgetFull(Exception):
    """No slot of the backend's connection budget came free in time."""


class Closable(Protocol):
    """A connection handed over with its slot: closing it gives the slot back."""

    def close(self) -> None: ...


async def acquire(
    budget: ConnectionBudget, use: Use, timeout: float, *, owner: object = None
) -> Any:
    """A slot: None, or (for `owner`'s waiters) a `Closable` connection of `owner` handed
    over with its slot. Raises TimeoutError when none came within `timeout`; cancelled, it
    holds nothing."""
    if budget.take():
        return None
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def wake(got: Any) -> bool:
        if future.done():  # (timed out or cancelled: the slot goes to the next waiter)
            return False
        future.set_result(got)
        return True

    waiter = Waiter(use=use, wake=wake, owner=owner)
    budget.wait(waiter)
    if budget.shed is not None:
        budget.shed()  # an idle keep-alive connection closes; its slot comes to the line
    try:
        async with asyncio.timeout(timeout):
            return await future
    except BaseException:
        budget.leave(waiter)
        if future.done() and not future.cancelled():
            got = future.result()  # woken just as it gave up: not ours to keep
            if got is None:
                release(budget)
            else:
                typed: Closable = got
                typed.close()
        raise


def full(budget: ConnectionBudget, waited: float) -> str:
    """Why a wait for a slot failed."""
    return f"all {budget.limit} HTTP connections to the backend busy (waited {waited:g}s)"


def release(budget: ConnectionBudget) -> None:
    """A connection is closed (or was never opened): its slot goes to the next waiter."""
    while (waiter := budget.give_back()) is not None:
        if waiter.wake(None):
            return


def resize(budget: ConnectionBudget, limit: int | None) -> None:
    """A new limit (reload): waiters it leaves room for get their slot."""
    for waiter in budget.resize(limit):
        if not waiter.wake(None):
            release(budget)


@asynccontextmanager
async def lease(budget: ConnectionBudget, use: Use, timeout: float) -> AsyncIterator[None]:
    """A slot for the block (given back on every exit, cancellation included); raises
    BudgetFull when none came within `timeout`."""
    try:
        await acquire(budget, use, timeout)
    except TimeoutError:
        raise BudgetFull(full(budget, timeout)) from None
    try:
        yield
    finally:
        release(budget)
