"""The DICOM side of the config file: `listeners.dicom`, `pools` (with their backends and
health checks) and `routes`. Pools and backends also carry their HTTP parts
(`dicomlb.config.http`) and the bridge's (`dicomlb.config.bridge`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictInt, model_validator
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
    AeTitle,
    ConfigIssue,
    Count,
    Duration,
    Model,
    Name,
    check_ae_title,
    parse_bind,
    parse_size,
    show,
    split_host_port,
)
from dicomlb.dicom.tags import MAX_BYTES
from dicomlb.dicom.uids import STANDARD_ENCODINGS, Encoding, is_valid_uid
from dicomlb.snapshot import (
    Ack,
    CalledAet,
    DicomAddress,
    HttpAddress,
    HttpStoreConfig,
    MoveDestination,
    QueryMode,
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


class AllowModel(Model):
    aet: AeTitle | None = None
    cidr: (
        Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_given(self) -> AllowModel:
        if self.aet is None and self.cidr is None:
            raise ValueError(
                "names nothing to allow; write {aet: CT1}, {cidr: 10.1.2.0/24} or both"
            )
        return self


class DicomListenerModel(Model):
    bind: Annotated[tuple[str, int], BeforeValidator(parse_bind)] | None = None
    ae_title: AeTitle | None = None
    check_called_aet: StrictBool | None = None
    max_associations: Count | None = None
    max_associations_per_calling_aet: Annotated[StrictInt, Field(ge=0)] | None = None
    max_pdu: MaxPdu | None = None
    artim_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    transfer_syntaxes: (
        Annotated[
            list[Annotated[SyntaxEntry, BeforeValidator(_parse_transfer_syntax)]],
            Field(min_length=1),
        ]
        | None
    ) = None
    echo: Annotated[str, Field(strict=True)] = ECHO_LOCAL
    tls: ListenerTlsModel | None = None
    scan_budget: Annotated[int, BeforeValidator(_scan_budget)] | None = None
    max_associations_per_ip: Annotated[StrictInt, Field(ge=0)] | None = None
    max_negotiating: Count | None = None
    max_negotiating_per_ip: Count | None = None
    allow: Annotated[list[AllowModel], Field(min_length=1)] | None = None


class HealthModel(Model):
    enabled: StrictBool | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    fall: Count | None = None
    rise: Count | None = None
    fail_timeout: Duration | None = None
    http: HttpCheckModel | None = None


class BackendModel(Model):
    name: Name
    dicom: Annotated[DicomAddress, BeforeValidator(parse_dicom_address)] | None = None
    http: Annotated[HttpAddress, BeforeValidator(parse_http_address)] | None = None
    weight: Count | None = None
    max_associations: Count | None = None
    max_pdu: MaxPdu | None = None
    tls: BackendTlsModel | None = None
    store_via: StoreVia | None = None  # the DICOM -> HTTP bridge (dicomlb.bridge)
    stow_path: Annotated[str, Field(strict=True, pattern=r"^/")] | None = None
    stow_batch: Count | None = None
    auth: BackendAuthModel | None = None


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

    writer: Annotated[str, Field(strict=True)] | None = None


class PoolModel(Model):
    strategy: Strategy = Strategy.ROUND_ROBIN
    key: Annotated[str, Field(strict=True)] | None = None
    health: HealthModel | None = None
    backends: Annotated[list[BackendModel], Field(min_length=1)]
    called_aet: CalledAet | None = None
    connect_timeout: Duration | None = None
    acquire_timeout: Duration | None = None
    response_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    upstream: UpstreamMode | None = None
    query: QueryMode | None = None
    query_timeout: Duration | None = None
    move_destination: MoveDestination | None = None
    storage_commitment: StorageCommitment | None = None
    orthanc: StrictBool | OrthancModel | None = None
    http: HttpPoolModel | None = None


class RouteModel(Model):
    name: Name
    match: Any = None
    pool: Annotated[str, Field(strict=True)]
    ack: Ack | None = None
    mirror: list[Annotated[str, Field(strict=True)]] | None = None
    query: QueryMode | None = None
    move_destination: MoveDestination | None = None
    on_scan_limit: Annotated[ScanLimit, BeforeValidator(_scan_limit)] | None = None
