"""One backend's HTTP connection budget (pure: no I/O, no clock).

The HTTP connections dicomlb holds open to a backend — the proxy's keep-alive ones, the
bridge's, the health checks' — count against one limit, the pool's `http.max_connections`
(None: counted, not capped). A user takes a slot before it connects and gives it back once
that connection is closed, so the backend never sees more than the limit from dicomlb.

When no slot is free the user waits in line, in order. A health check goes to the front of
the line (behind other checks only), and the shell frees an idle keep-alive connection for
it (`shed`): a busy backend must not look down because its own checks found no connection.
A proxy connection that finishes a request is handed to the first waiter when that waiter
is a request of the same proxy pool (`hand_over`): it keeps the slot, nothing reconnects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["ConnectionBudget", "Use", "Waiter"]


class Use(Enum):
    """Who holds or waits for a slot."""

    PROXY = "proxy"
    BRIDGE = "bridge"
    CHECK = "check"


@dataclass(eq=False, slots=True, kw_only=True)
class Waiter:
    """A place in line. `wake` is given what the waiter gets (None: a slot; a proxy
    connection handed over, with its slot) and says whether the waiter still wanted it."""

    use: Use
    wake: Callable[[Any], bool]
    owner: object = None  # whose connections may be handed over to this waiter


class ConnectionBudget:
    """The slots of one backend: `in_use` taken (connections open or being opened)."""

    __slots__ = ("in_use", "limit", "line", "shed")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.in_use = 0
        self.line: deque[Waiter] = deque()
        # Close one idle keep-alive connection (its slot comes back when it is closed);
        # False when there is none. Set by the proxy's connection pool.
        self.shed: Callable[[], bool] | None = None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_use >= self.limit

    def take(self) -> bool:
        """A slot now, when one is free (then nobody waits: a freed slot goes to the line
        first)."""
        if self.full:
            return False
        self.in_use += 1
        return True

    def wait(self, waiter: Waiter) -> None:
        """Join the line: at its end, or a check in front of everything but checks."""
        line = self.line
        if waiter.use is Use.CHECK:
            at = 0
            while at < len(line) and line[at].use is Use.CHECK:
                at += 1
            line.insert(at, waiter)
        else:
            line.append(waiter)

    def leave(self, waiter: Waiter) -> None:
        """The waiter gave up (its deadline, or cancelled)."""
        if waiter in self.line:  # (else already woken)
            self.line.remove(waiter)

    def give_back(self) -> Waiter | None:
        """A connection is closed, or never opened: its slot goes to the first waiter
        (returned: wake it; the slot stays taken), else it is free."""
        if self.line and (self.limit is None or self.in_use <= self.limit):
            return self.line.popleft()
        self.in_use -= 1
        return None

    def hand_over(self, owner: object) -> Waiter | None:
        """A connection of `owner` finished a request: the first waiter, when it may take
        that connection (and its slot) over; None when nobody waits or the first waiter is
        someone else's (then `others_waiting`)."""
        line = self.line
        if line and line[0].owner is owner and (self.limit is None or self.in_use <= self.limit):
            return line.popleft()
        return None

    def others_waiting(self, owner: object) -> bool:
        """Someone not served by `owner`'s connections is first in line: a connection of
        `owner` that goes idle should close and free its slot for them."""
        return bool(self.line) and self.line[0].owner is not owner

    def resize(self, limit: int | None) -> list[Waiter]:
        """A new limit (reload): the waiters that get a slot now. A lower limit than what
        is in use takes effect as connections close."""
        self.limit = limit
        woken = []
        while self.line and not self.full:
            self.in_use += 1
            woken.append(self.line.popleft())
        return woken
