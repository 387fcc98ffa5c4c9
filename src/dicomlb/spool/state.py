"""Pure rules of the spool: item states, retry schedule, circuit breaker, limits, failover.

Nothing here touches files, sockets or clocks: callers pass `now` (seconds, wall clock for
anything persisted) and a seeded `random.Random`, so every rule is unit-tested as is.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from dicomlb.snapshot import RetryConfig, SpoolConfig


class ItemState(enum.StrEnum):
    """Where a spooled item is in its life."""

    QUEUED = "queued"  # durable, waiting for its next attempt
    SENDING = "sending"  # a sender has it on the wire
    DELIVERED = "delivered"  # the backend stored it (file removed or kept for retention)
    DEAD = "dead"  # given up: too many attempts or too old; waits for retry or purge


# The legal moves; anything else is a bug (or an operator asking for the impossible).
TRANSITIONS: frozenset[tuple[ItemState, ItemState]] = frozenset(
    {
        (ItemState.QUEUED, ItemState.SENDING),  # claimed by a sender
        (ItemState.QUEUED, ItemState.DEAD),  # too old while waiting
        (ItemState.SENDING, ItemState.DELIVERED),  # the backend said Success / Warning
        (ItemState.SENDING, ItemState.QUEUED),  # failed attempt, or restart recovery
        (ItemState.SENDING, ItemState.DEAD),  # the failed attempt was the last allowed
        (ItemState.DEAD, ItemState.QUEUED),  # operator: retry
        (ItemState.DELIVERED, ItemState.QUEUED),  # operator: send again
    }
)


# Items an operator may delete with their files: never one a sender has on the wire.
PURGEABLE: frozenset[ItemState] = frozenset({ItemState.QUEUED, ItemState.DELIVERED, ItemState.DEAD})


class TransitionError(ValueError):
    """A move not in TRANSITIONS (or a purge of an item being sent): a bug in the caller."""


def allowed(current: ItemState, target: ItemState) -> bool:
    """Whether an item may move from `current` to `target`."""
    return (current, target) in TRANSITIONS


def check_transition(current: ItemState, target: ItemState) -> ItemState:
    """`target` when moving there from `current` is legal; raises TransitionError."""
    if not allowed(current, target):
        raise TransitionError(f"a spooled item cannot go from {current} to {target}")
    return target


def check_purge(states: frozenset[ItemState]) -> frozenset[ItemState]:
    """`states` when items in them may be purged; raises TransitionError."""
    if not states <= PURGEABLE:
        refused = ", ".join(sorted(states - PURGEABLE))
        raise TransitionError(f"spooled items cannot be purged while {refused}")
    return states


# PS3.7 C.4: Success, and warnings (0x0001, 0xBxxx), mean the instance was stored.
def backoff_delay(attempts: int, retry: RetryConfig, rng: random.Random) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based).

    Exponential (base, 2 base, 4 base, ...) capped at `cap`, with "equal jitter": half the
    delay fixed, half uniform at random, so many items failing together spread out but
    none comes back sooner than half its step.
    """
    step = min(retry.cap, retry.base * 2.0 ** min(max(attempts - 1, 0), 62))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What happens to an item after a failed attempt."""

    state: ItemState  # QUEUED again, or DEAD
    next_attempt_at: float
    reason: str


def after_failure(
    *,
    attempts: int,
    created_at: float,
    now: float,
    reason: str,
    retry: RetryConfig,
    rng: random.Random,
) -> Outcome:
    """The item's fate after its `attempts`-th attempt failed with `reason`."""
    if retry.max_attempts and attempts >= retry.max_attempts:
        return Outcome(
            state=ItemState.DEAD,
            next_attempt_at=now,
            reason=f"{attempts} attempts failed (max_attempts {retry.max_attempts}); last: "
            f"{reason}",
        )
    next_at = now + backoff_delay(attempts, retry, rng)
    if retry.max_age and next_at - created_at > retry.max_age:
        return Outcome(
            state=ItemState.DEAD,
            next_attempt_at=now,
            reason=f"older than max_age {retry.max_age:g}s after {attempts} attempts; last: "
            f"{reason}",
        )
    return Outcome(state=ItemState.QUEUED, next_attempt_at=next_at, reason=reason)


class BreakerState(enum.Enum):
    CLOSED = "closed"  # attempts flow
    OPEN = "open"  # no attempts until `retry_at`
    HALF_OPEN = "half_open"  # one probe attempt decides


class CircuitBreaker:
    """Per-backend breaker: after `threshold` consecutive connection failures no item is
    tried until a cooldown passes (doubling up to `cap`), then one probe decides. While it
    is open the backend costs nothing: no connects, no item attempts."""

    def __init__(self, *, threshold: int = 1, base: float = 1.0, cap: float = 30.0) -> None:
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0  # consecutive openings, for the growing cooldown
        self.retry_at = 0.0
        self.down_since: float | None = None  # first failure of the current outage

    def allow(self, now: float) -> bool:
        """May an attempt start now? Moves OPEN to HALF_OPEN once the cooldown is over."""
        if self.state is BreakerState.OPEN and now >= self.retry_at:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0
        self.down_since = None

    def failure(self, now: float) -> bool:
        """Record a connection failure; True when this opens the breaker."""
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            cooldown = min(self.cap, self.base * 2.0 ** min(self.opened, 30))
            self.opened += 1
            self.state = BreakerState.OPEN
            self.retry_at = now + cooldown
            self.failures = 0
            return True
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What the spool holds on disk, and the disk's free space."""

    items: int
    bytes: int
    free_disk: int


def refusal(usage: Usage, config: SpoolConfig, incoming: int = 0) -> str | None:
    """Why the spool must refuse a new instance (of `incoming` bytes, when known), or None."""
    if config.max_items and usage.items >= config.max_items:
        return f"spool holds {usage.items} items, max_items={config.max_items}"
    if config.max_bytes and usage.bytes + incoming >= config.max_bytes:
        return f"spool holds {usage.bytes} bytes, max_bytes={config.max_bytes}"
    if usage.free_disk - incoming < config.min_free_disk:
        return f"{usage.free_disk} bytes free on disk, min_free_disk={config.min_free_disk}"
    return None


def should_fail_over(*, down_since: float | None, now: float, failover_after: float | None) -> bool:
    """True when items waiting for a backend down since `down_since` should move to the next
    backend of their study's rendezvous order (None: wait for it, however long)."""
    return (
        failover_after is not None
        and down_since is not None
        and now - down_since >= (failover_after)
    )


def restart_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds before retrying after the `failures`-th consecutive failure (1-based) of a
    spool task or write: base, 2 base, 4 base, ... capped at `cap`."""
    return min(cap, base * 2.0 ** min(max(failures - 1, 0), 62))
