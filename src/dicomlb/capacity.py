"""How many associations a backend takes at once, learned (pure: `now` is passed in).

A backend is configured with `max_associations` (Orthanc takes 4), but many SCPs take one
association at a time (DCMTK `storescp` without `--fork`, most modalities, older archives):
a second one is not refused, it waits unanswered in the backend's queue until the first
ends. When a new association gets no A-ASSOCIATE-AC in time while dicomlb holds established
associations to that backend, it most likely waits behind dicomlb's own: the backend's
effective concurrency is at most what dicomlb held then. `Capacity` remembers that for
`remember` seconds, so that the wait is paid once and not by every sender, and tells the
caller to free one of its own associations (an idle one, or wait for a busy one) and try
again, once.

A health check takes a slot like any association; when no slot is free an exchange the
backend answered within the check interval stands in for it (`check`).
"""

from __future__ import annotations

from enum import Enum

REMEMBER = 600.0  # seconds a learned concurrency is kept (then the configured one is tried)


class Unanswered(Enum):
    """What to do after a new association got no A-ASSOCIATE-AC in time."""

    RETRY = "retry"  # free (or wait for) one of dicomlb's own associations, then try again
    FAIL = "fail"  # the backend itself does not answer (or a retry did not help)


class CheckPlan(Enum):
    """How one active health check of a DICOM backend goes."""

    PROBE = "probe"  # take a slot and send a C-ECHO
    RECENT = "recent"  # no slot free; an answer within the interval counts as a pass


class Capacity:
    """One backend's association limit: configured, or lower once learned."""

    __slots__ = ("configured", "learned", "remember", "until")

    def __init__(self, configured: int, *, remember: float = REMEMBER) -> None:
        self.configured = configured
        self.remember = remember
        self.learned: int | None = None
        self.until = 0.0  # the learned limit holds before this time

    def limit(self, now: float) -> int:
        """How many associations may be open to the backend now."""
        if self.learned is not None and now < self.until:
            return self.learned
        return self.configured

    def unanswered(self, others: int, now: float, *, retried: bool) -> Unanswered:
        """A new association got no A-ASSOCIATE-AC in time while `others` established
        associations of dicomlb's were open to the backend. With some, the backend likely
        takes no more than that: learn it. `retried`: this was already the second try."""
        if others <= 0:
            return Unanswered.FAIL
        self.learned = min(others, self.limit(now))
        self.until = now + self.remember
        return Unanswered.FAIL if retried else Unanswered.RETRY

    def check(
        self, *, open_now: int, now: float, last_answer: float | None, interval: float
    ) -> CheckPlan:
        """`open_now` associations are open to the backend (leased, idle or being opened);
        `last_answer` is when it last answered a relayed message (None: never)."""
        if open_now < self.limit(now):
            return CheckPlan.PROBE
        if last_answer is not None and now - last_answer <= interval:
            return CheckPlan.RECENT
        # At the limit and nothing recent: the check takes the slot of an idle association,
        # or waits for one within its timeout (a wait that ends in `Busy` is no verdict).
        return CheckPlan.PROBE
