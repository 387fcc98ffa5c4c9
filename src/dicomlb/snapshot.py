"""The snapshot: the immutable runtime configuration built from the YAML by `config.py`.

Names are resolved once here (a route holds its pool, a pool its backends), so runtime code
holds references and a reload swaps one object.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from dicomlb.dicom.uids import Encoding, encoding_of
from dicomlb.http.h1 import Headers
from dicomlb.http.paths import EncodedSlashes


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomAddress:
    """A DICOM application entity on the network: `AET@host:port`."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """TLS on a listener (server side) or toward a backend (client side).

    The context is built (and the files read) when the snapshot is built, so a reload
    picks up renewed certificates.
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    verify: bool = True  # listener: require client certificates (when ca is set); backend: check it
    server_name: str | None = None
    context: ssl.SSLContext = field(compare=False, repr=False)
    # The certificate's notAfter (Unix time), read with it; None when it could not be read.
    expires: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpAddress:
    """An HTTP backend's base URL: `http://host:port` or `https://host:port` (a base path
    such as `/orthanc` only for backends that take C-STOREs over HTTP: `store_via`)."""

    host: str
    port: int
    scheme: str = "http"  # "http" or "https"
    path: str = ""  # base path without a trailing slash ("" or e.g. "/orthanc")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


class StoreVia(enum.StrEnum):
    """How C-STOREs reach a backend over HTTP (the DICOM -> HTTP bridge)."""

    ORTHANC_REST = "orthanc_rest"  # POST {base}/instances, body = the Part-10 file
    STOW_RS = "stow_rs"  # POST {base}{stow_path}/studies, multipart/related application/dicom


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStoreConfig:
    """A backend's `store_via` and its options: C-STOREs routed to it are converted to
    HTTP requests (`dicomlb.bridge`)."""

    via: StoreVia
    stow_path: str = "/dicom-web"  # the DICOMweb root under the base URL (stow_rs)
    stow_batch: int = 1  # spooled instances sent in one STOW-RS request
    authorization: str | None = field(default=None, repr=False)  # Authorization header value
    auth_text: str = ""  # what `dicomlb check` shows: "basic user=orthanc", "bearer"
    # TLS toward an https backend (the backend's `tls`, or the system's CAs).
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


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
# Three-valued: decided from an association's facts alone, or None (depends on the message).
PartialPredicate = Callable[[MessageFacts], "bool | None"]


def _undecided(facts: MessageFacts) -> bool | None:
    return None


class RequestFacts:
    """What a route may look at for one request; header and query lookups are lazy."""

    __slots__ = ("_host", "_query", "client_ip", "headers", "method", "path", "query_string")

    def __init__(self, *, method: str, target: str, headers: Headers, client_ip: str = "") -> None:
        self.method = method
        # `target` is normalised already (the request reader did it): its path is matched
        # as it is, never decoded again (a decoded %2F would be a slash the backend never
        # sees).
        self.path, _, self.query_string = target.partition("?")
        self.headers = headers
        self.client_ip = client_ip
        self._host: str | None = None
        self._query: dict[str, list[str]] | None = None

    @property
    def host(self) -> str:
        """The Host header's name, lower case, without the port ("" when absent)."""
        if self._host is None:
            host = b""
            for name, value in self.headers:
                if len(name) == 4 and name.lower() == b"host":
                    host = value
                    break
            self._host = strip_port(host.decode("latin-1").lower())
        return self._host

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def query(self, name: str) -> list[str]:
        """The values of query parameter `name` (decoded)."""
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                self._query.setdefault(key, []).append(value)
        return self._query.get(name, [])


def strip_port(host: str) -> str:
    """A Host header's name without its port (`[v6]` kept bracketed)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


class Strategy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    AFFINITY = "affinity"


class CalledAet(enum.StrEnum):
    BACKEND = "backend"  # the backend's own AE title
    PASSTHROUGH = "passthrough"  # the called AE title the client used


class QueryMode(enum.StrEnum):
    ONE = "one"  # shared database: one healthy backend answers
    FANOUT = "fanout"  # every backend in parallel; results merged, duplicates dropped


class MoveDestination(enum.StrEnum):
    PASSTHROUGH = "passthrough"  # the backend resolves the C-MOVE destination itself
    VIA_BALANCER = "via_balancer"  # the backend sends to dicomlb, which relays (dicom_nodes)


class UpstreamMode(enum.StrEnum):
    """How a pool's upstream associations are shared among client associations."""

    SHARED = "shared"  # pooled: kept idle for reuse by any client with the same AE titles
    PER_CLIENT = "per_client"  # each client association owns its own, released with it


class StorageCommitment(enum.StrEnum):
    REFUSE = "refuse"  # the context is refused at negotiation
    FORWARD = "forward"  # N-ACTION relayed to a backend holding the instances


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    enabled: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 3
    rise: int = 2
    fail_timeout: float = 10.0  # without checks (enabled false): down expires after this
    http: HttpCheckConfig | None = None  # how HTTP-only backends are checked (None: defaults)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    name: str
    dicom: DicomAddress | None = None  # at least one of dicom / http (config.py checks)
    http: HttpAddress | None = None
    weight: int = 1
    max_associations: int = 4
    max_pdu: int = 16384  # the largest P-DATA-TF dicomlb accepts from this backend
    tls: TlsConfig | None = None
    store: HttpStoreConfig | None = None  # C-STOREs go over HTTP (needs http)


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
    upstream: UpstreamMode = UpstreamMode.SHARED
    query: QueryMode = QueryMode.ONE
    query_timeout: float = 30.0  # per backend, for a C-FIND fanned out
    move_destination: MoveDestination = MoveDestination.PASSTHROUGH
    storage_commitment: StorageCommitment = StorageCommitment.REFUSE
    orthanc: bool = False  # HTTP: learn job / query owners, pin sender-transfer-id
    orthanc_writer: str | None = None  # HTTP: the backend taking POST / PUT / DELETE / PATCH
    http: HttpPoolConfig | None = None  # HTTP balancing options (None: defaults)
    # dicomlb processes sharing the backends (instances x workers): their limits are divided
    instances: int = 1


def instance_share(limit: int, instances: int) -> int:
    """One instance's part of a limit shared by `instances` instances (at least 1)."""
    return max(1, limit // instances)


def per_instance(backend: BackendConfig, instances: int) -> BackendConfig:
    """`backend` with its `max_associations` divided among `instances` instances."""
    if instances <= 1:
        return backend
    return dataclasses.replace(
        backend, max_associations=instance_share(backend.max_associations, instances)
    )


def http_per_instance(http: HttpPoolConfig | None, instances: int) -> HttpPoolConfig | None:
    """`http` with its per-backend `max_connections` divided among `instances` instances."""
    if http is None or http.max_connections is None or instances <= 1:
        return http
    return dataclasses.replace(
        http, max_connections=instance_share(http.max_connections, instances)
    )


class Ack(enum.StrEnum):
    """When a route answers the sender's C-STORE: after the backend's answer, or once the
    instance is durable in the spool."""

    BACKEND = "backend"  # relay the backend's own status
    SPOOL = "spool"  # Success once the instance is durable in the spool; delivered later


class ScanLimit(enum.StrEnum):
    """What a route does with a C-STORE whose routing tags were not all found before the
    scan cap (the first MiB of the data set)."""

    REFUSE = "refuse"  # 0xC000 with an Error Comment saying why
    ROUTE = "route"  # route on the tags that were found


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    name: str
    match: Predicate
    pool: PoolConfig
    partial: PartialPredicate = _undecided  # the match judged on an association's facts
    match_text: str = ""  # the match as written, for `dicomlb check` and logs
    ack: Ack = Ack.BACKEND
    mirror: tuple[PoolConfig, ...] = ()  # pools that each get an independent spooled copy
    query: QueryMode | None = None  # overrides the pool's
    move_destination: MoveDestination | None = None  # overrides the pool's
    on_scan_limit: ScanLimit = ScanLimit.REFUSE


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """Delivery retries of spooled items: exponential backoff with jitter, capped."""

    base: float = 2.0  # delay before the second attempt (before jitter)
    cap: float = 300.0  # the longest delay between attempts
    max_attempts: int = 10  # attempts before an item is dead; 0: no limit
    max_age: float = 7 * 86400.0  # an item older than this is dead; 0: no limit


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolConfig:
    """The durable store-and-forward queue (`spool:` section)."""

    directory: str
    max_bytes: int = 0  # 0: no limit
    max_items: int = 0  # 0: no limit
    min_free_disk: int = 1 << 30  # refuse new instances below this much free space
    retry: RetryConfig = field(default_factory=RetryConfig)
    failover_after: float | None = None  # None: a study waits for its backend
    keep_delivered: float = 0.0  # seconds a delivered item's file is kept; 0: removed at once


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowRule:
    """One entry of a listener's `allow` list: a client matches it when every field given
    matches (at least one is given)."""

    aet: str | None = None  # the calling AE title; `*` stands for any characters, `?` for one
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # the source address


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomListenerConfig:
    host: str = "0.0.0.0"
    port: int = 11112
    ae_title: str = "DICOMLB"
    check_called_aet: bool = False  # refuse associations whose called AE is not ae_title
    max_associations: int = 200
    max_associations_per_calling_aet: int = 0  # 0: no limit
    max_associations_per_ip: int = 0  # 0: no limit
    # Connections not yet associated (TLS handshake, A-ASSOCIATE-RQ awaited, rejected and not
    # yet closed); more are closed at once, without a PDU.
    max_negotiating: int = 128
    max_negotiating_per_ip: int = 16
    allow: tuple[AllowRule, ...] = ()  # empty: any calling AE title from any address
    max_pdu: int = 65536  # the largest P-DATA-TF dicomlb accepts from clients
    artim_timeout: float = 30.0  # from connect (TLS handshake included) to the A-ASSOCIATE-RQ
    idle_timeout: float = 300.0
    # Transfer syntaxes accepted from clients: those listed, and with `any_transfer_syntax`
    # every UID whose encoding is known (`uids.encoding_of`).
    transfer_syntaxes: tuple[str, ...] = ()
    any_transfer_syntax: bool = True
    encodings: Mapping[str, Encoding] = field(default_factory=dict)  # declared in the config
    echo_pool: PoolConfig | None = None  # None: dicomlb answers C-ECHO itself
    tls: TlsConfig | None = None
    # Bytes all associations together may hold while looking for routing tags.
    scan_budget: int = 64 << 20
    reuse_port: bool = False  # SO_REUSEPORT: worker processes share the port

    def encoding(self, uid: str) -> Encoding | None:
        """How data sets in transfer syntax `uid` are read; None when the listener does not
        accept it."""
        if self.any_transfer_syntax or uid in self.transfer_syntaxes:
            return encoding_of(uid, self.encodings)
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminAuth:
    """Who may use the admin listener: SHA-256 hex digests of bearer tokens and passwords."""

    bearer_tokens_sha256: frozenset[str] = frozenset()
    basic: Mapping[str, str] = field(default_factory=dict)  # user -> sha256 hex of password

    @property
    def required(self) -> bool:
        return bool(self.bearer_tokens_sha256 or self.basic)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminListenerConfig:
    host: str = "127.0.0.1"
    port: int = 8404
    auth: AdminAuth = field(default_factory=AdminAuth)
    # Host names a browser may use without auth, beside localhost and IP literals (which DNS
    # rebinding cannot forge), lower case.
    allowed_hosts: frozenset[str] = frozenset()


# ---------------------------------------------------------------- HTTP

HttpPredicate = Callable[[RequestFacts], bool]


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
    reuse_port: bool = False  # SO_REUSEPORT: worker processes share the port


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


# ---------------------------------------------------------------- providers


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerProviderConfig:
    """`providers.docker`: containers whose labels make them backends of the file's pools."""

    endpoint: str = "unix:///var/run/docker.sock"  # unix:///path or tcp://host:port
    tls: TlsConfig | None = None  # tcp endpoints: TLS toward the Engine API
    exposed_by_default: bool = False  # False: only containers labelled dicomlb.enable=true
    network: str | None = None  # the network whose address is used, for multi-network containers
    host_address: str = "127.0.0.1"  # the address of containers on the host network


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvidersConfig:
    """`providers`: where backends come from beside the file (the admin API always)."""

    docker: DockerProviderConfig | None = None


# ---------------------------------------------------------------- the whole


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    source: str
    dicom: DicomListenerConfig | None
    pools: Mapping[str, PoolConfig]
    routes: tuple[RouteConfig, ...]
    wanted_tags: frozenset[int]  # every tag a route or an affinity key looks at
    graceful_timeout: float = 30.0
    admin: AdminListenerConfig | None = None
    watch: bool = False  # reload when the config file changes
    spool: SpoolConfig | None = None
    # C-MOVE destinations dicomlb can reach itself (move_destination: via_balancer).
    dicom_nodes: Mapping[str, DicomAddress] = field(default_factory=dict)
    state_dir: str | None = None  # where the study -> backend table is kept
    http: HttpListenerConfig | None = None
    http_routes: tuple[HttpRouteConfig, ...] = ()
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    workers: int = 1  # processes `dicomlb run` starts, each one an instance
    # Valid but surely not meant (a route that can never match), for `dicomlb check`.
    warnings: tuple[str, ...] = ()
