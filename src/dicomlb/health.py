"""Backend health: the fall/rise state machine (pure; checks feed it, pools read it)."""

from __future__ import annotations


class HealthState:
    """Up/down with hysteresis: `fall` consecutive failures take a backend down, `rise`
    consecutive successes bring it back. A backend starts up, so traffic flows at once.
    """

    __slots__ = ("failures", "fall", "recoveries", "rise", "successes", "up")

    def __init__(self, *, fall: int, rise: int, up: bool = True) -> None:
        self.fall = fall
        self.rise = rise
        self.up = up
        self.failures = 0
        self.successes = 0
        self.recoveries = 0  # down → up transitions so far (slow start watches it)

    def success(self) -> bool:
        """Record a passed check; True when this brings the backend up."""
        self.failures = 0
        if self.up:
            return False
        self.successes += 1
        if self.successes >= self.rise:
            self.up = True
            self.successes = 0
            self.recoveries += 1
            return True
        return False

    def failure(self) -> bool:
        """Record a failed check or relay; True when this takes the backend down."""
        self.successes = 0
        if not self.up:
            return False
        self.failures += 1
        if self.failures >= self.fall:
            self.up = False
            self.failures = 0
            return True
        return False

    def eject(self) -> bool:
        """Take the backend down now (passive ejection); True when it was up."""
        self.failures = 0
        self.successes = 0
        if not self.up:
            return False
        self.up = False
        return True
