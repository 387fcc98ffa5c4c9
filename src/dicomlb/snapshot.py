"""The snapshot: the immutable runtime configuration built from the YAML by `config.py`.

Names are resolved once here (a route holds its pool, a pool its backends), so runtime code
holds references and a reload swaps one object.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomlb.dicom.uids import KNOWN_TRANSFER_SYNTAXES

if TYPE_CHECKING:  # the HTTP side's snapshot parts; imported lazily (they import this module)
    from dicomlb.http.snapshot import (
        HttpCheckConfig,
        HttpListenerConfig,
        HttpPoolConfig,
        HttpRouteConfig,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomAddress:
    """A DICOM application entity on the network: `AET@host:port`."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpAddress:
    """An HTTP backend's base URL: `http://host:port`."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFacts:
    """What routing may look at for one DIMSE message."""

    calling_aet: str
    called_aet: str
    peer_ip: str
    command: str  # "C-STORE", "C-ECHO", "C-FIND", ...
    sop_class_uid: str
    tags: Mapping[int, str] = field(default_factory=dict)  # tag -> text value, from the scanner


Predicate = Callable[[MessageFacts], bool]


class Strategy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    AFFINITY = "affinity"


class CalledAet(enum.StrEnum):
    BACKEND = "backend"  # the backend's own AE title
    PASSTHROUGH = "passthrough"  # the called AE title the client used


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    enabled: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 3
    rise: int = 2
    http: HttpCheckConfig | None = None  # how HTTP-only backends are checked (None: defaults)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    name: str
    dicom: DicomAddress | None = None  # at least one of dicom / http (config.py checks)
    http: HttpAddress | None = None
    weight: int = 1
    max_associations: int = 4
    max_pdu: int = 16384  # the largest P-DATA-TF dicomlb accepts from this backend


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    name: str
    strategy: Strategy
    key: int | None  # affinity key tag, e.g. 0x0020000D StudyInstanceUID
    key_name: str | None  # the key as written in the config, for messages
    health: HealthConfig
    backends: tuple[BackendConfig, ...]
    called_aet: CalledAet = CalledAet.BACKEND
    connect_timeout: float = 5.0
    acquire_timeout: float = 30.0  # wait for a free association slot before failing
    response_timeout: float = 120.0  # DIMSE response from the backend
    idle_timeout: float = 15.0  # an idle pooled upstream association is released after this
    orthanc: bool = False  # HTTP: learn job / query owners, pin sender-transfer-id
    http: HttpPoolConfig | None = None  # HTTP balancing options (None: defaults)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    name: str
    match: Predicate
    pool: PoolConfig
    match_text: str = ""  # the match as written, for `dicomlb check` and logs


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomListenerConfig:
    host: str = "0.0.0.0"
    port: int = 11112
    ae_title: str = "DICOMLB"
    check_called_aet: bool = False  # refuse associations whose called AE is not ae_title
    max_associations: int = 200
    max_associations_per_calling_aet: int = 0  # 0: no limit
    max_pdu: int = 65536  # the largest P-DATA-TF dicomlb accepts from clients
    artim_timeout: float = 30.0
    idle_timeout: float = 300.0
    transfer_syntaxes: tuple[str, ...] = KNOWN_TRANSFER_SYNTAXES
    echo_pool: PoolConfig | None = None  # None: dicomlb answers C-ECHO itself


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    source: str
    dicom: DicomListenerConfig | None
    pools: Mapping[str, PoolConfig]
    routes: tuple[RouteConfig, ...]
    wanted_tags: frozenset[int]  # every tag a route or an affinity key looks at
    graceful_timeout: float = 30.0
    http: HttpListenerConfig | None = None
    http_routes: tuple[HttpRouteConfig, ...] = ()
