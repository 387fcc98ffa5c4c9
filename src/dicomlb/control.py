"""What the admin listener may read and change in a running balancer: the `Control` protocol.

The admin server is written against this protocol, never against the objects that run the
listeners; `App` implements it. What it reads are plain records, taken at the time of the
call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dicomlb.metrics import Metrics
from dicomlb.pools import BackendState, Pool
from dicomlb.providers.merge import Item
from dicomlb.snapshot import Snapshot
from dicomlb.spool.spool import Spool
from dicomlb.workers import Worker


@dataclass(frozen=True, slots=True)
class DicomListenerStatus:
    host: str
    port: int
    ae_title: str
    max_associations: int
    active: int
    accepted: int
    rejected: int
    aborted: int
    negotiating: int
    refused: int


@dataclass(frozen=True, slots=True)
class HttpListenerStatus:
    host: str
    port: int
    active: int
    max_connections: int


@dataclass(frozen=True, slots=True)
class BackendConnections:
    """A backend's connections as the balancer holds them now; None where it has no such side."""

    upstream_open: int
    upstream_idle: int
    last_check_error: str | None
    http_open: int | None  # the proxy's keep-alive connections
    http_idle: int | None
    http_in_use: int | None  # the connection budget's slots: proxy, bridge and checks
    http_limit: int | None  # (None: uncapped, or no HTTP address)


@dataclass(frozen=True, slots=True)
class AssociationStatus:
    """A client association past negotiation."""

    peer: str
    calling_aet: str
    called_aet: str
    started: float  # time.monotonic()
    messages: int
    bytes_in: int
    busy: bool


class Control(Protocol):
    """A running balancer as its operators see it."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def spool(self) -> Spool | None: ...

    @property
    def started_at(self) -> float: ...

    @property
    def worker(self) -> Worker | None: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def last_reload(self) -> dict[str, Any]: ...

    def ready(self) -> tuple[bool, list[str]]:
        """Whether this instance can take traffic now (listeners accept; every route has an
        available backend or spools with room); else why not."""
        ...

    def pools_unavailable(self) -> list[str]:
        """The pools in use without an available backend."""
        ...

    def state_for_metrics(self) -> dict[str, Any]: ...

    def dicom_listener(self) -> DicomListenerStatus | None: ...

    def http_listener(self) -> HttpListenerStatus | None: ...

    def pools(self) -> list[Pool]: ...

    def pools_in_use(self) -> set[str]: ...

    def pool_of(self, backend: str) -> str: ...

    def backend_connections(self, backend: str) -> BackendConnections: ...

    def associations(self) -> list[AssociationStatus]: ...

    def provider_items(self) -> list[Item]:
        """Every backend definition of every provider, and its fate in the merge."""
        ...

    def providers_status(self) -> dict[str, Any]:
        """Each provider: the file's source, the API's count and state file, Docker's
        connection."""
        ...

    def set_backend_mode(self, name: str, mode: str) -> BackendState:
        """Raises KeyError for an unknown backend."""
        ...

    async def add_backend(self, pool: str, data: Any) -> BackendState:
        """Raises ConfigError or ChangeError."""
        ...

    async def remove_backend(self, name: str) -> None:
        """Raises ChangeError."""
        ...

    async def reload_from_file(self, source: str) -> dict[str, Any]: ...
