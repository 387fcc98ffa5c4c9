"""Per-backend HTTP balancing state that needs a clock: slow start after recovery and the
passive-ejection window (pure: `now` is passed in, randomness comes from a given
`random.Random`).

    ramp = SlowStart(duration=30.0)
    share = ramp.share(backend.http_health, now)      # 0 < share ≤ 1 while it ramps, 1 after
    window = FailureWindow(failures=5, window=10.0)
    if window.failure(now): ...                  # threshold reached: eject the backend
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence

from dicomlb.health import HealthState
from dicomlb.pools import BackendState

__all__ = ["MIN_SHARE", "FailureWindow", "SlowStart", "ramping_excluded"]

MIN_SHARE = 0.05  # a recovered backend gets at least this share of its traffic at once


class SlowStart:
    """After a backend comes back up (down → up), its share of new requests grows linearly
    from `MIN_SHARE` to 1 over `duration` seconds, so a cold node is not flooded at once."""

    __slots__ = ("_recoveries", "duration", "since")

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.since: float | None = None  # when the current ramp began
        self._recoveries: int | None = None  # HealthState.recoveries last seen

    def share(self, health: HealthState, now: float) -> float:
        """The share of its traffic the backend may take now (1.0 when not ramping)."""
        recoveries = health.recoveries
        if recoveries != self._recoveries:
            # The first look only learns the count: a backend up at start does not ramp.
            if self._recoveries is not None and self.duration > 0:
                self.since = now
            self._recoveries = recoveries
        since = self.since
        if since is None:
            return 1.0
        elapsed = now - since
        if elapsed >= self.duration or elapsed < 0:
            self.since = None
            return 1.0
        return max(MIN_SHARE, elapsed / self.duration)


def ramping_excluded(
    backends: Sequence[BackendState],
    share: Callable[[BackendState], float],
    rng: random.Random,
    exclude: frozenset[str],
) -> frozenset[str]:
    """`exclude` plus the ramping backends left out of this pick: each available backend
    with share s < 1 takes part with probability s. Never leaves out every candidate."""
    skipped = []
    candidates = 0
    for backend in backends:
        if not backend.http_available or backend.name in exclude:
            continue
        candidates += 1
        s = share(backend)
        if s < 1.0 and rng.random() >= s:
            skipped.append(backend.name)
    if not skipped or len(skipped) >= candidates:
        return exclude
    return exclude | frozenset(skipped)


class FailureWindow:
    """Passive ejection: `failures` failed requests within `window` seconds take a backend
    out (a single 5xx does not)."""

    __slots__ = ("_times", "failures", "window")

    def __init__(self, *, failures: int, window: float) -> None:
        self.failures = failures
        self.window = window
        self._times: deque[float] = deque(maxlen=failures)

    def failure(self, now: float) -> bool:
        """Record a failure; True when the threshold is reached (the window starts over)."""
        times = self._times
        times.append(now)
        if len(times) >= self.failures and now - times[0] <= self.window:
            times.clear()
            return True
        return False

    def clear(self) -> None:
        self._times.clear()
