"""Backend health: the fall/rise state machine and the passive-health rule (pure; checks and
relays feed it, pools read it; `now` is passed in).

The rule (DESIGN 14): a message's failure is not a backend's failure. Passive health counts
only what says the backend itself is unwell; `counts_against_backend` is the one place that
decides it, for every path (DICOM relay, query, retrieve, bridge, spool, HTTP proxy).
"""

from __future__ import annotations

from enum import Enum


class Cause(Enum):
    """Why a message, a connection or an association to a backend failed."""

    # The backend itself is unwell: these count toward `fall`.
    REFUSED = "refused"  # TCP connect refused / reset / unreachable
    TLS = "tls"  # the TLS handshake failed
    CONNECT_TIMEOUT = "connect_timeout"  # no TCP connection within connect_timeout
    NO_ACCEPT = "no_accept"  # no A-ASSOCIATE-AC in time, while dicomlb held none of its own
    CLOSED = "closed"  # closed or reset before the first byte of the answer
    RESPONSE_TIMEOUT = "response_timeout"  # no C-STORE / C-ECHO / HTTP response in time
    PROTOCOL_ERROR = "protocol_error"  # the backend sent what PS3.8 does not allow
    CHECK_TIMEOUT = "check_timeout"  # an active C-ECHO check timed out
    # The message (or dicomlb's own load) failed, not the backend: never counted.
    NO_ACCEPT_WHILE_HOLDING = "no_accept_while_holding"  # likely its limit, full with ours
    REJECTED_PERMANENT = "rejected_permanent"  # A-ASSOCIATE-RJ permanent: that sender refused
    REJECTED_TRANSIENT = "rejected_transient"  # A-ASSOCIATE-RJ transient: busy
    CONTEXT_REJECTED = "context_rejected"  # the presentation context was refused
    BUSY = "busy"  # no association slot within acquire_timeout (dicomlb's own cap)
    ABORTED_WHILE_SENDING = "aborted_while_sending"  # e.g. a malformed data set refused
    ABORTED = "aborted"  # A-ABORT from the backend after the message was sent
    RELEASED = "released"  # the backend released the association (its idle timeout)
    LOCAL = "local"  # dicomlb itself aborted (the client went, a deadline passed)
    STATUS = "status"  # a DIMSE failure status or an HTTP 4xx / 5xx answer
    # A malformed DIMSE answer on an established association: a hostile client's request
    # can provoke one, so the message fails; an active check catches a backend that is
    # broken for every message.
    MALFORMED_ANSWER = "malformed_answer"


COUNTING = frozenset(
    {
        Cause.REFUSED,
        Cause.TLS,
        Cause.CONNECT_TIMEOUT,
        Cause.NO_ACCEPT,
        Cause.CLOSED,
        Cause.RESPONSE_TIMEOUT,
        Cause.PROTOCOL_ERROR,
        Cause.CHECK_TIMEOUT,
    }
)


def counts_against_backend(cause: Cause) -> bool:
    """Whether a failure of this cause counts toward the backend's `fall`."""
    return cause in COUNTING


class HealthState:
    """Up/down with hysteresis: `fall` consecutive failures take a backend down, `rise`
    consecutive successes bring it back. A backend starts up, so traffic flows at once.

    `fail_timeout` (None: never) is for pools without active checks, where nothing else
    would bring a backend back: down expires after that long (nginx's `fail_timeout`).
    A `joining` backend (one a provider discovered while running) starts down and comes up
    on its first passed check, so it takes no work before it answers.
    """

    __slots__ = (
        "down_since",
        "fail_timeout",
        "failures",
        "fall",
        "joining",
        "recoveries",
        "rise",
        "successes",
        "up",
    )

    def __init__(
        self,
        *,
        fall: int,
        rise: int,
        up: bool = True,
        fail_timeout: float | None = None,
        joining: bool = False,
    ) -> None:
        self.fall = fall
        self.rise = rise
        self.joining = joining
        self.up = up and not joining
        self.fail_timeout = fail_timeout
        self.down_since: float | None = None if self.up else 0.0
        self.failures = 0
        self.successes = 0
        self.recoveries = 0  # down → up transitions so far (slow start watches it)

    def success(self) -> bool:
        """Record a passed check; True when this brings the backend up."""
        self.failures = 0
        if self.up:
            return False
        self.successes += 1
        if self.successes >= self.rise or self.joining:
            self._come_up()
            return True
        return False

    def failure(self, now: float) -> bool:
        """Record a failed check or relay; True when this takes the backend down."""
        self.successes = 0
        if not self.up:
            return False
        self.failures += 1
        if self.failures >= self.fall:
            self._go_down(now)
            return True
        return False

    def eject(self, now: float) -> bool:
        """Take the backend down now (passive ejection); True when it was up."""
        self.failures = 0
        self.successes = 0
        if not self.up:
            return False
        self._go_down(now)
        return True

    def expires_at(self) -> float | None:
        """When a down backend comes back by `fail_timeout` (None: it does not)."""
        if self.up or self.fail_timeout is None or self.down_since is None:
            return None
        return self.down_since + self.fail_timeout

    def expire(self, now: float) -> bool:
        """Bring the backend back once its `fail_timeout` has passed; True when it did."""
        at = self.expires_at()
        if at is None or now < at:
            return False
        self._come_up()
        return True

    def reset(self) -> bool:
        """Up now, counts cleared (the operator enabled it); True when it was down."""
        self.failures = 0
        self.successes = 0
        if self.up:
            return False
        self._come_up()
        return True

    def _go_down(self, now: float) -> None:
        self.up = False
        self.failures = 0
        self.down_since = now

    def _come_up(self) -> None:
        self.up = True
        self.joining = False
        self.successes = 0
        self.down_since = None
        self.recoveries += 1
