"""Backends' runtime state, pools and their balancing strategies (pure: no I/O, no clock)."""

from __future__ import annotations

import enum
import hashlib
import math
import typing
from collections.abc import Sequence

from dicomlb.health import HealthState
from dicomlb.snapshot import BackendConfig, HealthConfig, PoolConfig, Strategy


class Protocol(enum.Enum):
    """A side of a backend: its DICOM address or its HTTP one."""

    DICOM = "dicom"
    HTTP = "http"


# Python 3.11's EnumType.__getattr__ makes `Protocol.HTTP` slow to look up; read per pick.
_HTTP = Protocol.HTTP


class BackendState:
    """What dicomlb knows about one backend while it runs.

    A backend with both a DICOM and an HTTP address has a health state per side (Orthanc's
    REST API may answer while its DICOM server does not, and the other way round): the DICOM
    relay picks on `health`, the HTTP proxy on `http_health`. With one address both names
    are the same state.
    """

    def __init__(
        self, config: BackendConfig, health: HealthConfig, *, joining: bool = False
    ) -> None:
        self.config = config
        # Copied from the (frozen) config: read on every pick, a property call each time.
        self.name = config.name
        self.weight = config.weight
        # Without active checks nothing else brings a passively failed backend back, nor a
        # joining one up: it joins at once then.
        fail_timeout = None if health.enabled else health.fail_timeout
        joining = joining and health.enabled
        self.health = HealthState(
            fall=health.fall, rise=health.rise, fail_timeout=fail_timeout, joining=joining
        )
        self.http_health = (
            HealthState(
                fall=health.fall, rise=health.rise, fail_timeout=fail_timeout, joining=joining
            )
            if config.dicom is not None and config.http is not None
            else self.health
        )
        self.enabled = True  # False: drained or disabled by the operator
        self.mode = "enabled"  # what the operator asked: enabled | draining | disabled
        self.active = 0  # messages in flight to this backend

    @property
    def available(self) -> bool:
        """Healthy (its DICOM side, or its only side) and enabled: may receive new work."""
        return self.enabled and self.health.up

    @property
    def http_available(self) -> bool:
        """Its HTTP side healthy and enabled: may receive new requests."""
        return self.enabled and self.http_health.up

    @property
    def split(self) -> bool:
        """Whether its two sides have health states of their own."""
        return self.http_health is not self.health

    def health_of(self, protocol: Protocol) -> HealthState:
        return self.http_health if protocol is Protocol.HTTP else self.health

    def reset_health(self) -> bool:
        """Both sides up now (the operator enabled it); True when one was down."""
        reset = self.health.reset()
        return self.http_health.reset() or reset


class Chooser(typing.Protocol):
    def choose(self, available: Sequence[BackendState], key: str) -> BackendState: ...


class RoundRobin:
    """Each available backend in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, available: Sequence[BackendState], key: str) -> BackendState:
        backend = available[self._next % len(available)]
        self._next += 1
        return backend


class Weighted:
    """Smooth weighted round robin: weight 2 gets twice the picks, interleaved, not bursty."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def choose(self, available: Sequence[BackendState], key: str) -> BackendState:
        total = 0
        best: BackendState | None = None
        for backend in available:
            score = self._current.get(backend.name, 0) + backend.weight
            self._current[backend.name] = score
            total += backend.weight
            if best is None or score > self._current[best.name]:
                best = backend
        assert best is not None
        self._current[best.name] -= total
        return best


class LeastConnections:
    """The backend with the fewest messages in flight per unit of weight."""

    def choose(self, available: Sequence[BackendState], key: str) -> BackendState:
        return min(available, key=lambda b: (b.active / b.weight, -b.weight))


def rendezvous_score(key: str, backend: BackendState) -> float:
    """Weighted rendezvous (highest random weight) score of `backend` for `key`.

    A uniform hash u in (0, 1) gives -w / ln(u): each backend wins a share of keys
    proportional to its weight, and removing a backend moves only the keys it held.
    """
    digest = hashlib.blake2b(f"{backend.name}\x00{key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return -backend.weight / math.log(unit)


def rendezvous_order(key: str, backends: Sequence[BackendState]) -> list[BackendState]:
    """`backends` in preference order for `key`."""
    return sorted(backends, key=lambda b: rendezvous_score(key, b), reverse=True)


class Affinity:
    """Rendezvous hashing on a key (StudyInstanceUID by default): a study stays on one backend;
    when that backend is unavailable the key goes to the next in its order, and comes back."""

    def choose(self, available: Sequence[BackendState], key: str) -> BackendState:
        return max(available, key=lambda b: rendezvous_score(key, b))


_CHOOSERS: dict[Strategy, type[Chooser]] = {
    Strategy.ROUND_ROBIN: RoundRobin,
    Strategy.WEIGHTED: Weighted,
    Strategy.LEAST_CONNECTIONS: LeastConnections,
    Strategy.AFFINITY: Affinity,
}


class Pool:
    """A set of backends and the strategy that picks among the available ones."""

    def __init__(self, config: PoolConfig, backends: Sequence[BackendState]) -> None:
        self.config = config
        self.backends = list(backends)
        self.chooser: Chooser = _CHOOSERS[config.strategy]()

    @property
    def name(self) -> str:
        return self.config.name

    def pick(
        self,
        key: str = "",
        exclude: frozenset[str] = frozenset(),
        protocol: Protocol = Protocol.DICOM,
    ) -> BackendState | None:
        """The backend for the next message, or None when no backend is available.

        `exclude` names backends already tried for this message; `protocol` is the side the
        message goes to, whose health counts.
        """
        # `enabled and health.up` is `available`, spelled out: no property call per backend.
        if protocol is _HTTP:
            available = [
                b for b in self.backends if b.enabled and b.http_health.up and b.name not in exclude
            ]
        elif exclude:
            available = [
                b for b in self.backends if b.enabled and b.health.up and b.name not in exclude
            ]
        else:
            available = [b for b in self.backends if b.enabled and b.health.up]
        if not available:
            return None
        return self.chooser.choose(available, key)

    def has_available(self) -> bool:
        return any(b.available for b in self.backends)
