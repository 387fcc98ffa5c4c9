"""The HTTP parts of the snapshot: listener, routes, middlewares, pool options, checks.

Frozen like the rest of `dicomlb.snapshot`; `http/config.py` builds them from the YAML.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomlb.http.paths import EncodedSlashes

if TYPE_CHECKING:
    from dicomlb.http.routing import RequestFacts
    from dicomlb.snapshot import PoolConfig, TlsConfig

HttpPredicate = Callable[["RequestFacts"], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpListenerConfig:
    """`listeners.http`: where and how clients are accepted."""

    host: str = "0.0.0.0"
    port: int = 8080
    max_connections: int = 10000
    max_head_size: int = 65536  # request line + headers; beyond → 431 (414 for the line)
    head_timeout: float = 15.0  # a started request head must complete in this (slowloris)
    keepalive_timeout: float = 75.0  # an idle client connection between requests
    idle_timeout: float = 60.0  # nothing moves either way during a request
    tunnel_timeout: float = 3600.0  # nothing moves either way through an Upgrade tunnel
    # After an answer that came before the whole request body: up to this much of the rest
    # is read and dropped to keep the connection; more → `Connection: close`, closed lingering.
    discard_body_max: int = 16 * 1024 * 1024
    tls: TlsConfig | None = None  # HTTPS: clients speak TLS (with `ca`: client certificates)
    encoded_slashes: EncodedSlashes = EncodedSlashes.REJECT  # %2F / %5C in a path: 400 or kept


class KeyKind(enum.StrEnum):
    HEADER = "header"
    COOKIE = "cookie"
    CLIENT_IP = "client_ip"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpKey:
    """What affinity / sticky placement hashes for an HTTP request."""

    kind: KeyKind
    name: str = ""  # header or cookie name (lower case for headers)

    def __str__(self) -> str:
        return self.kind.value if self.kind is KeyKind.CLIENT_IP else f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpPoolConfig:
    """`pools.<name>.http`: how HTTP requests are balanced and relayed to the pool."""

    key: HttpKey | None = None  # affinity / sticky key (affinity default: client IP)
    sticky: bool = False  # remember where a key was first placed (by least load)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # idle wait for backend bytes while a response is due
    idle_timeout: float = 30.0  # an idle pooled keep-alive connection is closed after this
    commit_timeout: float = 3600.0  # Orthanc /transfers/push/*/commit read timeout
    retries: int = 2  # other backends tried after a safe failure
    retry_buffer: int = 65536  # request bodies up to this are kept for a retry
    passive: bool = True  # passive ejection on connect errors and 502/503/504
    passive_failures: int = 5  # 502/503/504 answers within passive_window that eject
    passive_window: float = 10.0
    slow_start: float = 0.0  # after down → up, ramp a backend's share over this (0: off)
    max_connections: int | None = None  # open connections per backend (None: no cap)
    acquire_timeout: float = 5.0  # wait for a connection slot at a capped backend → 503


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpCheckConfig:
    """`pools.<name>.health.http`: the active HTTP check."""

    method: str = "GET"
    path: str = "/"
    status: tuple[int, ...] = (200,)
    username: str | None = None
    password: str | None = None
    host: str | None = None  # Host header (default: the backend's host:port)


@dataclass(frozen=True, slots=True, kw_only=True)
class MiddlewareConfig:
    """A named middleware: its kind and options (already validated)."""

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRouteConfig:
    """`http_routes[]`: a match, a pool, middlewares and timeout overrides."""

    name: str
    match: HttpPredicate
    pool: PoolConfig
    middlewares: tuple[MiddlewareConfig, ...] = ()
    match_text: str = "everything"
    read_timeout: float | None = None  # overrides the pool's
