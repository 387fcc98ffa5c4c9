"""The DICOM side of the config file: `listeners.dicom`, `pools` (with their backends and
health checks) and `routes`. Pools and backends also carry their HTTP parts
(`dicomlb.config.http`) and the bridge's (`dicomlb.config.bridge`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydicom._uid_dict import UID_dictionary

from dicomlb.config.bridge import BackendAuthModel, build_store
from dicomlb.config.http import (
    HttpCheckModel,
    HttpPoolModel,
    parse_http_address,
    proxy_address_issue,
)
from dicomlb.config.tls import BackendTlsModel, ListenerTlsModel
from dicomlb.config.tools import (
    BIND_SCHEMA,
    SIZE_SCHEMA,
    AeTitle,
    ConfigIssue,
    Count,
    Duration,
    MatchSpec,
    Model,
    Name,
    check_ae_title,
    defaults,
    format_duration,
    host_port,
    parse_bind,
    parse_size,
    show,
    split_host_port,
    unset,
)
from dicomlb.dicom.tags import MAX_BYTES
from dicomlb.dicom.uids import STANDARD_ENCODINGS, Encoding, is_valid_uid
from dicomlb.snapshot import (
    Ack,
    BackendConfig,
    CalledAet,
    DicomAddress,
    DicomListenerConfig,
    HealthConfig,
    HttpAddress,
    HttpStoreConfig,
    MoveDestination,
    PoolConfig,
    QueryMode,
    RouteConfig,
    ScanLimit,
    StorageCommitment,
    StoreVia,
    Strategy,
    TlsConfig,
    UpstreamMode,
)

__all__ = [
    "ANY_TRANSFER_SYNTAX",
    "BRIDGE_FIELDS",
    "DEFAULT_AFFINITY_KEY",
    "ECHO_LOCAL",
    "AllowModel",
    "BackendModel",
    "DicomAddressText",
    "DicomListenerModel",
    "HealthModel",
    "OrthancModel",
    "PoolModel",
    "RouteModel",
    "SyntaxEntry",
    "backend_store",
    "parse_dicom_address",
    "uid_name",
]

DEFAULT_AFFINITY_KEY = "StudyInstanceUID"
ECHO_LOCAL = "local"
MAX_PDU_LIMIT = 0xFFFFFFFF  # PS3.8 9.3.1: the PDU length field is 32 bits
MIN_PDU = 4096  # the smallest max PDU DCMTK accepts; 0 means unlimited (PS3.8 D.1)


def _scan_budget(value: Any) -> int:
    size = parse_size(value)
    if size < MAX_BYTES:
        raise ValueError(
            f"{show(value)} is less than one message's scan cap ({MAX_BYTES} bytes, 1MiB); "
            'write at least "1MiB", e.g. "64MiB" (the default)'
        )
    return size


def _scan_limit(value: Any) -> ScanLimit:
    if isinstance(value, str) and value in {choice.value for choice in ScanLimit}:
        return ScanLimit(value)
    raise ValueError(
        f"{show(value)} is not what to do when the routing tags are not in the first MiB; "
        "write refuse (answer 0xC000, the default) or route (route on the tags found)"
    )


def parse_dicom_address(value: Any) -> DicomAddress:
    form = "AET@host:port"
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a DICOM address; write {form} in quotes")
    text = value.strip()
    ae_title, at, rest = text.rpartition("@")
    if not at:
        raise ValueError(f"{show(value)} has no AE title; write {form}")
    host, port = split_host_port(rest, text, form)
    return DicomAddress(ae_title=check_ae_title(ae_title), host=host, port=port)


def _check_max_pdu(value: int) -> int:
    if value != 0 and not MIN_PDU <= value <= MAX_PDU_LIMIT:
        raise ValueError(
            f"{value} is not a max PDU; write 0 (unlimited) or a number of bytes from "
            f"{MIN_PDU} to {MAX_PDU_LIMIT}"
        )
    return value


MaxPdu = Annotated[StrictInt, AfterValidator(_check_max_pdu)]


_TS_NAMES = {
    entry[4]: uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"
}


ANY_TRANSFER_SYNTAX = "any"


@dataclass(frozen=True, slots=True)
class SyntaxEntry:
    """One `transfer_syntaxes` entry: a UID with its encoding when declared, or `any` (uid
    empty)."""

    uid: str
    encoding: Encoding | None = None


def _parse_transfer_syntax(value: Any) -> SyntaxEntry:
    if value == ANY_TRANSFER_SYNTAX:
        return SyntaxEntry("")
    if isinstance(value, dict):
        unknown = [str(key) for key in value if key not in ("uid", "encoding")]
        if unknown or "uid" not in value:
            what = f"has unknown key {unknown[0]}" if unknown else "has no uid"
            raise ValueError(
                f"the entry {what}; write {{uid: 1.2.3.4, encoding: encapsulated}} (encoding "
                "only for a UID that is not encapsulated)"
            )
        uid = _transfer_syntax_uid(value["uid"])
        if "encoding" not in value:
            return SyntaxEntry(uid)
        encodings = ", ".join(e.value for e in Encoding)
        try:
            encoding = Encoding(value["encoding"])
        except ValueError:
            raise ValueError(
                f"encoding {show(value['encoding'])} of {uid} is not one of {encodings}"
            ) from None
        standard = STANDARD_ENCODINGS.get(uid)
        if standard is not None and standard is not encoding:
            raise ValueError(
                f"{uid_name(uid)} is {standard.value} (PS3.5), not {encoding.value}; leave "
                "its encoding out"
            )
        return SyntaxEntry(uid, encoding)
    return SyntaxEntry(_transfer_syntax_uid(value))


def _transfer_syntax_uid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a transfer syntax; write a UID or a name")
    text = value.strip()
    uid = _TS_NAMES.get(text, text)
    if not is_valid_uid(uid):
        raise ValueError(
            f"{show(value)} is neither a transfer syntax name nor a UID; write e.g. "
            f"JPEGLossless, 1.2.840.10008.1.2.4.57 or {ANY_TRANSFER_SYNTAX}"
        )
    entry = UID_dictionary.get(uid)
    if entry is not None and entry[1] != "Transfer Syntax":
        raise ValueError(f"{uid} is a {entry[1]} ({entry[0]}), not a transfer syntax")
    return uid


def uid_name(uid: str) -> str:
    """The name of a UID in the DICOM dictionary, else the UID."""
    entry = UID_dictionary.get(uid)
    return entry[4] if entry and entry[4] else uid


def _parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    form = "an address or network, e.g. 10.1.2.0/24, 10.1.2.7 or fd00::/64"
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not {form}; write it in quotes")
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{show(value)} is not {form}") from None
    raise ValueError(
        f"{show(value)} has bits set after the prefix; write {network} for the network, or "
        "the address alone for one host"
    )


_LISTENER = defaults(DicomListenerConfig)
_HEALTH = defaults(HealthConfig)
_BACKEND = defaults(BackendConfig)
_POOL = defaults(PoolConfig)
_ROUTE = defaults(RouteConfig)
_STORE = defaults(HttpStoreConfig)

_SYNTAX_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {
                    "uid": {"type": "string"},
                    "encoding": {"enum": [e.value for e in Encoding]},
                },
                "required": ["uid"],
                "additionalProperties": False,
            },
        ]
    }
)
_DICOM_ADDRESS_SCHEMA = WithJsonSchema({"type": "string", "pattern": "@.*:[0-9]+\\s*$"})
DicomAddressText = Annotated[
    DicomAddress, BeforeValidator(parse_dicom_address), _DICOM_ADDRESS_SCHEMA
]


class AllowModel(Model):
    """One entry of a listener's `allow` list: a client must match every field given."""

    aet: AeTitle | None = Field(
        default=None,
        description="The calling AE title (case-sensitive; `*` stands for any characters, "
        "`?` for one).",
    )
    cidr: (
        Annotated[
            ipaddress.IPv4Network | ipaddress.IPv6Network,
            BeforeValidator(_parse_network),
            WithJsonSchema({"type": "string"}),
        ]
        | None
    ) = Field(
        default=None,
        description="The source address or network, e.g. `10.1.2.0/24` or `fd00::/64`.",
    )

    @model_validator(mode="after")
    def _one_given(self) -> AllowModel:
        if self.aet is None and self.cidr is None:
            raise ValueError(
                "names nothing to allow; write {aet: CT1}, {cidr: 10.1.2.0/24} or both"
            )
        return self


class DicomListenerModel(Model):
    """`listeners.dicom`: where and how DICOM clients associate."""

    bind: Annotated[tuple[str, int], BeforeValidator(parse_bind), BIND_SCHEMA] | None = unset(
        "Address and port to listen on (`[::]:11112` for IPv6).",
        host_port(_LISTENER["host"], _LISTENER["port"]),
    )
    ae_title: AeTitle | None = unset(
        "dicomlb's AE title (also the calling AE title of health checks).", _LISTENER["ae_title"]
    )
    check_called_aet: StrictBool | None = unset(
        "Refuse associations whose called AE title is not `ae_title` (A-ASSOCIATE-RJ "
        "permanent, reason 7).",
        _LISTENER["check_called_aet"],
    )
    max_associations: Count | None = unset(
        'Open client associations at most; beyond, A-ASSOCIATE-RJ transient, "local limit '
        'exceeded".',
        _LISTENER["max_associations"],
    )
    max_associations_per_calling_aet: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Open client associations per calling AE title (0: no limit).",
        _LISTENER["max_associations_per_calling_aet"],
    )
    max_pdu: MaxPdu | None = unset(
        "Largest P-DATA-TF accepted from clients, in bytes (0: unlimited, else 4096 or "
        "more); a larger PDU aborts the association.",
        _LISTENER["max_pdu"],
    )
    artim_timeout: Duration | None = unset(
        "Deadline from TCP connect (TLS handshake included) to a complete A-ASSOCIATE-RQ "
        "(bytes do not extend it), and for the close after release or reject.",
        format_duration(_LISTENER["artim_timeout"]),
    )
    idle_timeout: Duration | None = unset(
        "An association silent this long (and not waiting on a backend) is aborted, in the "
        "middle of a message too.",
        format_duration(_LISTENER["idle_timeout"]),
    )
    transfer_syntaxes: (
        Annotated[
            list[Annotated[SyntaxEntry, BeforeValidator(_parse_transfer_syntax), _SYNTAX_SCHEMA]],
            Field(min_length=1),
        ]
        | None
    ) = unset(
        "Transfer syntaxes accepted from clients: `any` (every UID whose encoding is known, "
        "others as encapsulated), a UID or name (`JPEGLossless`), or `{uid: 1.2.3.4, "
        "encoding: implicit_little}` for a private syntax that is not encapsulated. Without "
        "`any` only the listed ones are accepted.",
        [ANY_TRANSFER_SYNTAX],
    )
    echo: Annotated[str, Field(strict=True)] = Field(
        default=ECHO_LOCAL,
        description="`local`: dicomlb answers C-ECHO itself; a pool name: C-ECHO is forwarded "
        "to that pool.",
    )
    tls: ListenerTlsModel | None = Field(
        default=None, description="DICOM over TLS (PS3.15 B.1); none: plain TCP."
    )
    scan_budget: Annotated[int, BeforeValidator(_scan_budget), SIZE_SCHEMA] | None = unset(
        "Bytes all associations together may hold while a C-STORE's routing tags are not "
        "found yet (at least 1MiB); when spent, the C-STORE is refused 0xA700.",
        f"{_LISTENER['scan_budget'] >> 20}MiB",
    )
    max_associations_per_ip: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Open client associations per source address, whatever AE titles it uses (0: no "
        "limit); beyond, A-ASSOCIATE-RJ transient.",
        _LISTENER["max_associations_per_ip"],
    )
    max_negotiating: Count | None = unset(
        "Connections with no accepted association yet (TLS handshake, A-ASSOCIATE-RQ under "
        "way); beyond, a new connection is closed at once.",
        _LISTENER["max_negotiating"],
    )
    max_negotiating_per_ip: Count | None = unset(
        "The same, per source address.", _LISTENER["max_negotiating_per_ip"]
    )
    allow: Annotated[list[AllowModel], Field(min_length=1)] | None = Field(
        default=None,
        description="Who may associate; a client must match every field of one entry, others "
        "get A-ASSOCIATE-RJ permanent, reason 3. None: everyone.",
    )


class HealthModel(Model):
    """`pools.<name>.health`: active checks of the pool's backends."""

    enabled: StrictBool | None = unset(
        "Active checks: C-ECHO on a backend's DICOM address, an HTTP request on its HTTP address.",
        _HEALTH["enabled"],
    )
    interval: Duration | None = unset(
        "Time between checks of one backend.", format_duration(_HEALTH["interval"])
    )
    timeout: Duration | None = unset(
        "How long one check may take before it counts as failed.",
        format_duration(_HEALTH["timeout"]),
    )
    fall: Count | None = unset("Consecutive failures that mark a backend down.", _HEALTH["fall"])
    rise: Count | None = unset(
        "Consecutive successes that bring a down backend back.", _HEALTH["rise"]
    )
    fail_timeout: Duration | None = unset(
        "With `enabled: false`, a backend taken down by relay failures comes back after this; "
        "with checks on, the checks bring it back.",
        format_duration(_HEALTH["fail_timeout"]),
    )
    http: HttpCheckModel | None = Field(
        default=None,
        description="The HTTP check of backends' HTTP addresses; default `GET /`, status 200 "
        "(`orthanc: true` pools: `GET /system`, 200 or 401).",
    )


class BackendModel(Model):
    """One entry of `pools.<name>.backends`: a node, with a DICOM and / or HTTP address."""

    name: Name = Field(
        description="The backend's name, unique across all pools (one name, one node)."
    )
    dicom: DicomAddressText | None = Field(
        default=None, description="`AET@host:port`: the backend's DICOM address."
    )
    http: (
        Annotated[
            HttpAddress,
            BeforeValidator(parse_http_address),
            WithJsonSchema({"type": "string", "pattern": "^\\s*https?://"}),
        ]
        | None
    ) = Field(
        default=None,
        description="`http://host:port` or `https://host:port`; a base path (`/pacs`) only "
        "with `store_via`.",
    )
    weight: Count | None = unset(
        "Share of the `weighted` strategy, relative to the pool's other backends.",
        _BACKEND["weight"],
    )
    max_associations: Count | None = unset(
        "Associations dicomlb opens to this backend at most (Orthanc's DicomThreadsCount); "
        "for HTTP backends, keep-alive connections of the bridge (within the pool's "
        "`http.max_connections`).",
        _BACKEND["max_associations"],
    )
    max_pdu: MaxPdu | None = unset(
        "Largest P-DATA-TF dicomlb accepts from this backend, in bytes (0: unlimited).",
        _BACKEND["max_pdu"],
    )
    tls: BackendTlsModel | None = Field(
        default=None, description="TLS toward the backend (DICOM TLS, or https); none: plain."
    )
    store_via: StoreVia | None = Field(
        default=None,
        description="`orthanc_rest` or `stow_rs`: C-STOREs routed here go over HTTP (needs "
        "`http`); other DIMSE services use `dicom`.",
    )
    stow_path: Annotated[str, Field(strict=True, pattern=r"^/")] | None = unset(
        "The DICOMweb root under the base URL (`stow_rs`).", _STORE["stow_path"]
    )
    stow_batch: Count | None = unset(
        "Spooled instances sent in one STOW-RS request.", _STORE["stow_batch"]
    )
    auth: BackendAuthModel | None = Field(
        default=None, description="Credentials dicomlb presents to the HTTP backend (bridge)."
    )


BRIDGE_FIELDS = ("store_via", "stow_path", "stow_batch", "auth")


def backend_store(
    b: BackendModel, path: str, tls: TlsConfig | None, issues: list[ConfigIssue]
) -> HttpStoreConfig | None:
    """The bridge part of a backend; https / base paths only with store_via."""

    def fail(where: str, message: str) -> None:
        issues.append(ConfigIssue(path=where, message=message))

    if b.http is not None and b.store_via is None:
        issue = proxy_address_issue(b.http)
        if issue is not None:
            fail(f"{path}.http", issue)
    return build_store(
        path=path,
        http=b.http,
        store_via=b.store_via,
        stow_path=b.stow_path,
        stow_batch=b.stow_batch,
        auth=b.auth,
        tls=tls,
        fail=fail,
    )


class OrthancModel(Model):
    """`orthanc: {writer: NAME}`: Orthanc awareness with a writer / reader split."""

    writer: Annotated[str, Field(strict=True)] | None = Field(
        default=None,
        description="The pool's backend that takes every POST, PUT, DELETE and PATCH; reads "
        "are balanced over all backends.",
    )


class PoolModel(Model):
    """`pools.<name>`: backends and how messages and requests are spread over them."""

    strategy: Strategy = Field(
        default=Strategy.ROUND_ROBIN,
        description="`round_robin`, `weighted`, `least_connections` or `affinity` (a key's "
        "value always goes to the same backend, rendezvous hashing).",
    )
    key: Annotated[str, Field(strict=True)] | None = unset(
        "`affinity` only: the tag whose value is hashed (keyword or `(gggg,eeee)`).",
        DEFAULT_AFFINITY_KEY,
    )
    health: HealthModel | None = Field(default=None, description="Active health checks.")
    backends: list[BackendModel] = Field(
        default=[],
        description="The pool's backends from this file; none when providers (the admin API, "
        "Docker labels) fill the pool.",
    )
    called_aet: CalledAet | None = unset(
        "The called AE title toward the backend: its own (`backend`) or the one the client "
        "used (`passthrough`).",
        _POOL["called_aet"].value,
    )
    connect_timeout: Duration | None = unset(
        "TCP connect and association negotiation with a backend.",
        format_duration(_POOL["connect_timeout"]),
    )
    acquire_timeout: Duration | None = unset(
        "How long a message waits for a free association slot at a saturated backend.",
        format_duration(_POOL["acquire_timeout"]),
    )
    response_timeout: Duration | None = unset(
        "How long dicomlb waits for a backend's DIMSE response (for the bridge: the idle "
        "read timeout of the answer).",
        format_duration(_POOL["response_timeout"]),
    )
    idle_timeout: Duration | None = unset(
        "An idle pooled upstream association is released after this.",
        format_duration(_POOL["idle_timeout"]),
    )
    upstream: UpstreamMode | None = unset(
        "`shared`: upstream associations are pooled and reused by any client with the same AE "
        "titles; `per_client`: each client association owns its own, released with it.",
        _POOL["upstream"].value,
    )
    query: QueryMode | None = unset(
        "C-FIND: `one` (backends share a database: one answers) or `fanout` (all, merged).",
        _POOL["query"].value,
    )
    query_timeout: Duration | None = unset(
        "`fanout`: how long each backend may take; a late one is left out with a warning.",
        format_duration(_POOL["query_timeout"]),
    )
    move_destination: MoveDestination | None = unset(
        "C-MOVE: the backend resolves the destination (`passthrough`) or sends to dicomlb, "
        "which relays (`via_balancer`, see `dicom_nodes`).",
        _POOL["move_destination"].value,
    )
    storage_commitment: StorageCommitment | None = unset(
        "`forward`: N-ACTION goes to the backend holding the instances and its "
        "N-EVENT-REPORT is relayed back; `refuse`: the context is refused.",
        _POOL["storage_commitment"].value,
    )
    orthanc: StrictBool | OrthancModel | None = unset(
        "Orthanc awareness for HTTP (job and query owners, transfers pinned): `true`, or "
        "`{writer: BACKEND}` for a writer / reader split.",
        _POOL["orthanc"],
    )
    http: HttpPoolModel | None = Field(
        default=None, description="How HTTP requests are balanced and relayed to the pool."
    )
    instances: Count | None = Field(
        default=None,
        description="dicomlb instances sharing this pool's backends; overrides the top-level "
        "`instances` for this pool.",
    )


class RouteModel(Model):
    """One entry of `routes`: DICOM messages it matches go to its pool; file order, first
    match wins."""

    name: Name = Field(description="The route's name, unique among routes.")
    match: MatchSpec = Field(
        default=None,
        description="Conditions that must all hold: DICOM keywords or `(gggg,eeee)`, "
        "`calling_aet`, `called_aet`, `source`, `sop_class`, `command`, `all`, `any`, `not`; "
        "a value is a scalar, a list (any of) or one operator (`equals`, `in`, `regex`, "
        "`glob`, `exists`, `absent`). None: everything.",
    )
    pool: Annotated[str, Field(strict=True)] = Field(
        description="The pool messages matching the route go to."
    )
    ack: Ack | None = unset(
        "When the sender's C-STORE is answered: `backend` (the backend's own status) or "
        "`spool` (Success once durable in the spool, delivered later).",
        _ROUTE["ack"].value,
    )
    mirror: list[Annotated[str, Field(strict=True)]] | None = Field(
        default=None,
        description="Pools that each get an independent spooled copy (needs `ack: spool`).",
    )
    query: QueryMode | None = Field(
        default=None, description="Overrides the pool's `query` for messages this route matches."
    )
    move_destination: MoveDestination | None = Field(
        default=None,
        description="Overrides the pool's `move_destination` for messages this route matches.",
    )
    on_scan_limit: Annotated[ScanLimit, BeforeValidator(_scan_limit)] | None = unset(
        "A C-STORE whose routing tags are not in the first MiB of its data set: `refuse` "
        "(0xC000) or `route` (on the tags found).",
        _ROUTE["on_scan_limit"].value,
    )
