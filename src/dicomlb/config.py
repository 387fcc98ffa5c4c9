"""The config file: YAML → validated models (pydantic) → `Snapshot`; every error names the field.

`load_snapshot("lb.yaml")` reads and checks a file; `build_snapshot(data)` does the same for
data already loaded. Both raise `ConfigError`, whose text has one line per problem::

    lb.yaml: pools.ct.backends[1].dicom: "ORTHANC@10.0.0.5" has no port; write AET@host:port

Names (pools, backends) are resolved here once, so the snapshot holds references.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import ssl
import stat
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydicom._uid_dict import UID_dictionary

from dicomlb.bridge.config import BackendAuthModel, build_store
from dicomlb.dicom.tags import MAX_BYTES, tag_from_name, tag_name
from dicomlb.dicom.uids import STANDARD_ENCODINGS, Encoding, is_valid_uid
from dicomlb.http.config import (
    HttpCheckModel,
    HttpListenerModel,
    HttpPoolModel,
    HttpRouteModel,
    build_http,
    describe_http,
    http_check_config,
    http_pool_config,
    parse_http_address,
    proxy_address_issue,
)
from dicomlb.http.snapshot import HttpListenerConfig
from dicomlb.routing import MatchError, parse_match
from dicomlb.snapshot import (
    Ack,
    AdminAuth,
    AdminListenerConfig,
    AllowRule,
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
    RetryConfig,
    RouteConfig,
    ScanLimit,
    Snapshot,
    SpoolConfig,
    StorageCommitment,
    StoreVia,
    Strategy,
    TlsConfig,
    UpstreamMode,
)
from dicomlb.tls import client_context, server_context

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "build_backend",
    "build_snapshot",
    "describe",
    "format_duration",
    "hash_secret",
    "load_snapshot",
    "parse_duration",
    "parse_size",
]

DEFAULT_AFFINITY_KEY = "StudyInstanceUID"
STUDY_INSTANCE_UID = 0x0020000D
ECHO_LOCAL = "local"
MAX_PDU_LIMIT = 0xFFFFFFFF  # PS3.8 9.3.1: the PDU length field is 32 bits
MIN_PDU = 4096  # the smallest max PDU DCMTK accepts; 0 means unlimited (PS3.8 D.1)
STUDY_INSTANCE_UID = 0x0020000D  # the spool records each item's study


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest of a password or bearer token, as the config file wants it."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigIssue:
    """One problem: where (a dotted path such as `pools.ct.backends[1].dicom`, or a line) and
    what, including what to do."""

    path: str = ""
    message: str
    line: int | None = None


class ConfigError(Exception):
    """A configuration that cannot be used; its text has one `<file>: <path>: <reason>` line
    per problem."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self._line(issue) for issue in self.issues)

    def _line(self, issue: ConfigIssue) -> str:
        where = self.source if issue.line is None else f"{self.source}:{issue.line}"
        return (
            f"{where}: {issue.path}: {issue.message}" if issue.path else f"{where}: {issue.message}"
        )


# --- values ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_UNIT_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}
_DURATION_HINT = 'write seconds as a number or a string like "500ms", "5s", "2m", "1h" or "1m30s"'


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as `"500ms"`, `"5s"`, `"2m"`, `"1h"`,
    `"1m30s"`. Raises ValueError with what to write instead."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        parts = list(_DURATION_PART.finditer(text))
        if _DURATION_NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and "".join(m.group(0) for m in parts) == text:
            # Exact arithmetic, rounded once: "59ms" is 0.059, not 0.059000000000000004.
            total = sum(Fraction(m.group(1)) * _UNIT_SECONDS[m.group(2)] for m in parts)
            seconds = float(total)
        else:
            raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")
    if not seconds < float("inf") or seconds < 0:
        raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form that `parse_duration` reads back to the same value."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    millis = seconds * 1000
    if millis.is_integer() and millis / 1000 == seconds:
        return f"{int(millis)}ms"
    return f"{Decimal(repr(seconds)):f}s"  # positional: parse_duration reads no exponents


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]i?[bB]|[bB])?")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE_HINT = 'write a number of bytes or a string like "500MB", "20GB" or "1.5GiB"'


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as `"500MB"`, `"20GB"`, `"1.5GiB"` (kB/MB/GB/TB
    are powers of 1000, KiB/MiB/GiB/TiB of 1024). Raises ValueError with what to write."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_show(value)} is not a size; {_SIZE_HINT}")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{_show(value)} is not a size; {_SIZE_HINT}")
        size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    if not 0 <= size < float("inf"):
        raise ValueError(f"{_show(value)} is not a size; {_SIZE_HINT}")
    return int(size)


def _scan_budget(value: Any) -> int:
    size = parse_size(value)
    if size < MAX_BYTES:
        raise ValueError(
            f"{_show(value)} is less than one message's scan cap ({MAX_BYTES} bytes, 1MiB); "
            'write at least "1MiB", e.g. "64MiB" (the default)'
        )
    return size


def _scan_limit(value: Any) -> ScanLimit:
    if isinstance(value, str) and value in {choice.value for choice in ScanLimit}:
        return ScanLimit(value)
    raise ValueError(
        f"{_show(value)} is not what to do when the routing tags are not in the first MiB; "
        "write refuse (answer 0xC000, the default) or route (route on the tags found)"
    )


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{_show(value)} must be more than zero; {_DURATION_HINT}")
    return seconds


def _check_ae_title(value: str) -> str:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or control
    characters, not only spaces; leading and trailing spaces are not significant."""
    if not value.strip(" "):
        raise ValueError(f"{_show(value)} is not an AE title: it is empty; write 1-16 characters")
    if len(value) > 16:
        raise ValueError(
            f"{_show(value)} is not an AE title: it has {len(value)} characters; "
            "shorten it to 16 or fewer"
        )
    if "\\" in value or any(not (" " <= ch <= "~") for ch in value):
        raise ValueError(
            f"{_show(value)} is not an AE title: it has a backslash, control or non-ASCII "
            "character; use letters, digits, spaces and punctuation only"
        )
    return value.strip(" ")


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _split_host_port(text: str, original: str, form: str) -> tuple[str, int]:
    """`host:port` with host an IPv4 address, a hostname or `[IPv6]`."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f'"{original}" has no closing "]"; write {form}')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f'"{original}": [{host}] is not an IPv6 address; write {form}'
            ) from None
        if not rest.startswith(":"):
            raise ValueError(f'"{original}" has no port; write {form}')
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f'"{original}" has no port; write {form}')
        if ":" in host:
            raise ValueError(
                f'"{original}": an IPv6 address needs brackets; write {form} with [host]'
            )
        if not host:
            raise ValueError(f'"{original}" has no host; write {form}')
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(
                f'"{original}": "{host}" is not a host name or IP address; write {form}'
            )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f'"{original}": port "{port_text}" is not a number from 1 to 65535; write {form}'
        )
    return host, int(port_text)


def _parse_dicom_address(value: Any) -> DicomAddress:
    form = "AET@host:port"
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a DICOM address; write {form} in quotes")
    text = value.strip()
    ae_title, at, rest = text.rpartition("@")
    if not at:
        raise ValueError(f"{_show(value)} has no AE title; write {form}")
    host, port = _split_host_port(rest, text, form)
    return DicomAddress(ae_title=_check_ae_title(ae_title), host=host, port=port)


def _parse_bind(value: Any) -> tuple[str, int]:
    form = "host:port, e.g. 0.0.0.0:11112 or [::]:11112"
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not an address to listen on; write {form}")
    return _split_host_port(value.strip(), value.strip(), form)


def _check_max_pdu(value: int) -> int:
    if value != 0 and not MIN_PDU <= value <= MAX_PDU_LIMIT:
        raise ValueError(
            f"{value} is not a max PDU; write 0 (unlimited) or a number of bytes from "
            f"{MIN_PDU} to {MAX_PDU_LIMIT}"
        )
    return value


_TS_NAMES = {
    entry[4]: uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"
}


ANY_TRANSFER_SYNTAX = "any"


@dataclass(frozen=True, slots=True)
class _SyntaxEntry:
    """One `transfer_syntaxes` entry: a UID with its encoding when declared, or `any` (uid
    empty)."""

    uid: str
    encoding: Encoding | None = None


def _parse_transfer_syntax(value: Any) -> _SyntaxEntry:
    if value == ANY_TRANSFER_SYNTAX:
        return _SyntaxEntry("")
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
            return _SyntaxEntry(uid)
        encodings = ", ".join(e.value for e in Encoding)
        try:
            encoding = Encoding(value["encoding"])
        except ValueError:
            raise ValueError(
                f"encoding {_show(value['encoding'])} of {uid} is not one of {encodings}"
            ) from None
        standard = STANDARD_ENCODINGS.get(uid)
        if standard is not None and standard is not encoding:
            raise ValueError(
                f"{_uid_name(uid)} is {standard.value} (PS3.5), not {encoding.value}; leave "
                "its encoding out"
            )
        return _SyntaxEntry(uid, encoding)
    return _SyntaxEntry(_transfer_syntax_uid(value))


def _transfer_syntax_uid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a transfer syntax; write a UID or a name")
    text = value.strip()
    uid = _TS_NAMES.get(text, text)
    if not is_valid_uid(uid):
        raise ValueError(
            f"{_show(value)} is neither a transfer syntax name nor a UID; write e.g. "
            f"JPEGLossless, 1.2.840.10008.1.2.4.57 or {ANY_TRANSFER_SYNTAX}"
        )
    entry = UID_dictionary.get(uid)
    if entry is not None and entry[1] != "Transfer Syntax":
        raise ValueError(f"{uid} is a {entry[1]} ({entry[0]}), not a transfer syntax")
    return uid


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_HINT = 'use up to 64 letters, digits, ".", "_" and "-", starting with a letter or digit'


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{_show(value)} is not a valid name; {_NAME_HINT}")
    return value


Duration = Annotated[float, BeforeValidator(_positive_duration)]
AeTitle = Annotated[str, Field(strict=True), AfterValidator(_check_ae_title)]
MaxPdu = Annotated[StrictInt, AfterValidator(_check_max_pdu)]
Name = Annotated[str, Field(strict=True), AfterValidator(_check_name)]
Count = Annotated[StrictInt, Field(ge=1)]
Size = Annotated[int, BeforeValidator(parse_size)]


# --- the file's shape -----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ListenerTlsModel(_Model):
    cert: Annotated[str, Field(strict=True)]
    key: Annotated[str, Field(strict=True)]
    ca: Annotated[str, Field(strict=True)] | None = None


class _BackendTlsModel(_Model):
    ca: Annotated[str, Field(strict=True)] | None = None
    cert: Annotated[str, Field(strict=True)] | None = None
    key: Annotated[str, Field(strict=True)] | None = None
    verify: StrictBool = True
    server_name: Annotated[str, Field(strict=True)] | None = None


def _parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    form = "an address or network, e.g. 10.1.2.0/24, 10.1.2.7 or fd00::/64"
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not {form}; write it in quotes")
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{_show(value)} is not {form}") from None
    raise ValueError(
        f"{_show(value)} has bits set after the prefix; write {network} for the network, or "
        "the address alone for one host"
    )


class _AllowModel(_Model):
    aet: AeTitle | None = None
    cidr: (
        Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_given(self) -> _AllowModel:
        if self.aet is None and self.cidr is None:
            raise ValueError(
                "names nothing to allow; write {aet: CT1}, {cidr: 10.1.2.0/24} or both"
            )
        return self


class _DicomListenerModel(_Model):
    bind: Annotated[tuple[str, int], BeforeValidator(_parse_bind)] | None = None
    ae_title: AeTitle | None = None
    check_called_aet: StrictBool | None = None
    max_associations: Count | None = None
    max_associations_per_calling_aet: Annotated[StrictInt, Field(ge=0)] | None = None
    max_pdu: MaxPdu | None = None
    artim_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    transfer_syntaxes: (
        Annotated[
            list[Annotated[_SyntaxEntry, BeforeValidator(_parse_transfer_syntax)]],
            Field(min_length=1),
        ]
        | None
    ) = None
    echo: Annotated[str, Field(strict=True)] = ECHO_LOCAL
    tls: _ListenerTlsModel | None = None
    scan_budget: Annotated[int, BeforeValidator(_scan_budget)] | None = None
    max_associations_per_ip: Annotated[StrictInt, Field(ge=0)] | None = None
    max_negotiating: Count | None = None
    max_negotiating_per_ip: Count | None = None
    allow: Annotated[list[_AllowModel], Field(min_length=1)] | None = None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HASH_HINT = "write the SHA-256 hex digest (64 characters), made with `dicomlb hash-password`"


def _check_sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256_HEX.fullmatch(text):
        raise ValueError(f"{_show(value)} is not a SHA-256 hex digest; {_HASH_HINT}")
    return text


Sha256 = Annotated[str, Field(strict=True), AfterValidator(_check_sha256)]


class _AdminAuthModel(_Model):
    bearer_tokens_sha256: list[Sha256] | None = None
    basic: dict[str, Sha256] | None = None


class _AdminListenerModel(_Model):
    bind: Annotated[tuple[str, int], BeforeValidator(_parse_bind)] | None = None
    auth: _AdminAuthModel | None = None
    allowed_hosts: list[Annotated[str, Field(strict=True, min_length=1)]] | None = None


class _HttpListenerModel(HttpListenerModel):
    tls: _ListenerTlsModel | None = None  # HTTPS; built like listeners.dicom.tls


class _ListenersModel(_Model):
    dicom: _DicomListenerModel | None = None
    admin: _AdminListenerModel | None = None
    http: _HttpListenerModel | None = None


class _HealthModel(_Model):
    enabled: StrictBool | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    fall: Count | None = None
    rise: Count | None = None
    fail_timeout: Duration | None = None
    http: HttpCheckModel | None = None


class _BackendModel(_Model):
    name: Name
    dicom: Annotated[DicomAddress, BeforeValidator(_parse_dicom_address)] | None = None
    http: Annotated[HttpAddress, BeforeValidator(parse_http_address)] | None = None
    weight: Count | None = None
    max_associations: Count | None = None
    max_pdu: MaxPdu | None = None
    tls: _BackendTlsModel | None = None
    store_via: StoreVia | None = None  # the DICOM -> HTTP bridge (dicomlb.bridge)
    stow_path: Annotated[str, Field(strict=True, pattern=r"^/")] | None = None
    stow_batch: Count | None = None
    auth: BackendAuthModel | None = None


_BRIDGE_FIELDS = ("store_via", "stow_path", "stow_batch", "auth")


def _backend_store(
    b: _BackendModel, path: str, tls: TlsConfig | None, issues: list[ConfigIssue]
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


class _OrthancModel(_Model):
    """`orthanc: {writer: NAME}`: Orthanc awareness with a writer / reader split."""

    writer: Annotated[str, Field(strict=True)] | None = None


class _PoolModel(_Model):
    strategy: Strategy = Strategy.ROUND_ROBIN
    key: Annotated[str, Field(strict=True)] | None = None
    health: _HealthModel | None = None
    backends: Annotated[list[_BackendModel], Field(min_length=1)]
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
    orthanc: StrictBool | _OrthancModel | None = None
    http: HttpPoolModel | None = None


class _RouteModel(_Model):
    name: Name
    match: Any = None
    pool: Annotated[str, Field(strict=True)]
    ack: Ack | None = None
    mirror: list[Annotated[str, Field(strict=True)]] | None = None
    query: QueryMode | None = None
    move_destination: MoveDestination | None = None
    on_scan_limit: Annotated[ScanLimit, BeforeValidator(_scan_limit)] | None = None


class _RetryModel(_Model):
    base: Duration | None = None
    cap: Duration | None = None
    max_attempts: Annotated[StrictInt, Field(ge=0)] | None = None
    max_age: Annotated[float, BeforeValidator(parse_duration)] | None = None


class _SpoolModel(_Model):
    directory: Annotated[str, Field(strict=True, min_length=1)]
    max_bytes: Size | None = None
    max_items: Annotated[StrictInt, Field(ge=0)] | None = None
    min_free_disk: Size | None = None
    retry: _RetryModel | None = None
    failover_after: Duration | None = None
    keep_delivered: Annotated[float, BeforeValidator(parse_duration)] | None = None


class _ConfigModel(_Model):
    listeners: _ListenersModel | None = None
    pools: dict[str, _PoolModel]
    routes: list[_RouteModel] = []
    http_routes: list[HttpRouteModel] = []
    middlewares: dict[str, Any] = {}
    graceful_timeout: Annotated[float, BeforeValidator(parse_duration)] | None = None
    watch: StrictBool | None = None
    spool: _SpoolModel | None = None
    dicom_nodes: (
        dict[AeTitle, Annotated[DicomAddress, BeforeValidator(_parse_dicom_address)]] | None
    ) = None
    state_dir: Annotated[str, Field(strict=True, min_length=1)] | None = None


# --- loading --------------------------------------------------------------------------------

# A configuration is a few kB; these bound what a broken or hostile file costs to read.
MAX_CONFIG_BYTES = 1024 * 1024  # pure-Python PyYAML took 53 s for 4 MiB of "[1,1,…]" here
MAX_YAML_DEPTH = 64  # nesting of mappings and lists; a configuration needs about 8
MAX_ALIAS_NODES = 100_000  # nodes that aliases repeat in all (a "billion laughs" needs 10⁹)

# O_NONBLOCK: opening a FIFO for reading would wait for a writer; the mode is checked next.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _LimitError(yaml.composer.ComposerError):
    """The document nests deeper or repeats more through aliases than a configuration may."""

    @classmethod
    def at(cls, event: yaml.Event, problem: str) -> _LimitError:
        return cls(None, None, problem, event.start_mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one, silently), nesting
    deeper than MAX_YAML_DEPTH (the composer recurses per level) and aliases that repeat more
    than MAX_ALIAS_NODES nodes (aliases cost nothing to compose, but validation walks every
    repetition), counted while composing so that such a document fails at once."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._repeated = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node: yaml.Node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still open: the alias is inside what it names
                raise _LimitError.at(
                    event,
                    f"alias *{event.anchor} refers to a node that contains it; write the value out",
                )
            self._repeated += size
            if self._repeated > MAX_ALIAS_NODES:
                raise _LimitError.at(
                    event,
                    f"aliases repeat more than {MAX_ALIAS_NODES} nodes (a YAML alias "
                    "bomb?); write the values out or use fewer aliases",
                )
            return node
        if self._depth >= MAX_YAML_DEPTH:
            raise _LimitError.at(
                event,
                f"nested deeper than {MAX_YAML_DEPTH} levels of mappings and lists; a "
                "configuration needs far fewer",
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable) and key in seen:
            first = seen[key].start_mark.line + 1
            raise _DuplicateKeyError(
                None,
                None,
                f'duplicate key "{key}" (first at line {first}); keep one of them',
                key_node.start_mark,
            )
        if isinstance(key, typing.Hashable):
            seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_config(path: str | Path) -> str:
    """The text of the regular file at `path` (symbolic links followed: Kubernetes mounts a
    ConfigMap as links), at most MAX_CONFIG_BYTES. Raises ConfigError."""
    source = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError(source, [ConfigIssue(message=message)])

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise refuse(f"cannot read the file ({err}); check the path") from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise refuse(f"is {kind}, not a regular file; point at the YAML file itself")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise refuse(f"cannot read the file ({err.strerror}); check the path") from err
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise refuse(
            f"is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, the most a configuration "
            "file may be; check that this is the right file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(
            f"is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None


def load_snapshot(path: str | Path) -> Snapshot:
    """Read, validate and build the configuration file at `path`. Raises ConfigError."""
    source = str(path)
    text = _read_config(path)
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        column = f" (column {mark.column + 1})" if mark else ""
        if isinstance(err, _DuplicateKeyError | _LimitError):
            message = str(err.problem)
        else:
            problem = err.problem or err.context or "not valid YAML"
            message = (
                f"YAML syntax error: {problem}{column}; check indentation, colons and quoting "
                "on that line"
            )
        raise ConfigError(source, [ConfigIssue(line=line, message=message)]) from err
    except yaml.YAMLError as err:
        raise ConfigError(
            source, [ConfigIssue(message=f"YAML syntax error: {err}; fix the file")]
        ) from err
    return build_snapshot(data, source)


def build_snapshot(data: Any, source: str = "<config>") -> Snapshot:
    """Validate loaded YAML data and build the snapshot. Raises ConfigError listing every
    problem found."""
    if data is None:
        raise ConfigError(
            source, [ConfigIssue(message="the configuration is empty; write pools and routes")]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    message=f"the top level is {_kind(data)}; write a mapping with "
                    "listeners, pools and routes"
                )
            ],
        )
    try:
        model = _ConfigModel.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, [_issue_from_pydantic(e) for e in err.errors()]) from None
    builder = _Builder(model)
    snapshot = builder.build(source)
    if builder.issues:
        raise ConfigError(source, builder.issues)
    return snapshot


def build_backend(data: Any, path: str = "backend", source: str = "<api>") -> BackendConfig:
    """Validate one backend mapping (as written under `pools.<name>.backends`), e.g. from the
    admin API. Raises ConfigError naming the field."""
    try:
        model = _BackendModel.model_validate(data)
    except ValidationError as err:
        issues = []
        for error in err.errors():
            issue = _issue_from_pydantic(error)
            issues.append(
                ConfigIssue(path=f"{path}.{issue.path}".rstrip("."), message=issue.message)
            )
        raise ConfigError(source, issues) from None
    issues: list[ConfigIssue] = []
    tls = _backend_tls(model.tls, f"{path}.tls", issues)
    store = _backend_store(model, path, tls, issues)
    if issues:
        raise ConfigError(source, issues)
    return BackendConfig(
        name=model.name,
        dicom=model.dicom,
        tls=tls,
        store=store,
        **_set(model, "name", "dicom", "tls", *_BRIDGE_FIELDS),
    )


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _reaches(host: str, port: int, bind_host: str, bind_port: int) -> bool:
    """Whether `host:port` is a listener bound at `bind_host:bind_port` on this machine,
    judged from the literal addresses (names other than localhost are not resolved)."""
    if port != bind_port:
        return False
    if host == bind_host:
        return True
    wildcard = bind_host in ("0.0.0.0", "::", "")
    return _is_loopback(host) and (wildcard or _is_loopback(bind_host))


class _Builder:
    """Cross-field checks and name resolution, collecting every issue."""

    def __init__(self, model: _ConfigModel) -> None:
        self.model = model
        self.issues: list[ConfigIssue] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path=path, message=message))

    def build(self, source: str) -> Snapshot:
        pools = self.pools()
        routes = self.routes(pools)
        dicom = self.dicom_listener(pools)
        if dicom is not None and not self.model.routes:
            example = next(iter(pools), "POOL")
            self.fail(
                "routes",
                "there are no routes, so the dicom listener cannot forward anything; add "
                f"one, e.g. - {{name: default, pool: {example}}}",
            )
        wanted: set[int] = set()
        for _, tags in routes:
            wanted |= tags
        for pool in pools.values():
            if pool.key is not None:
                wanted.add(pool.key)
        if any(route.ack is Ack.SPOOL for route, _ in routes):
            wanted.add(STUDY_INSTANCE_UID)
        extra: dict[str, Any] = {}
        if self.model.graceful_timeout is not None:
            extra["graceful_timeout"] = self.model.graceful_timeout
        if self.model.watch is not None:
            extra["watch"] = self.model.watch
        admin = self.admin_listener()
        if admin is not None:
            extra["admin"] = admin
        spool = self.spool()
        if spool is not None:
            extra["spool"] = spool
        if self.model.dicom_nodes:
            extra["dicom_nodes"] = types.MappingProxyType(dict(self.model.dicom_nodes))
        if self.model.state_dir is not None:
            extra["state_dir"] = self.model.state_dir
            wanted.add(STUDY_INSTANCE_UID)  # the study -> backend table records every store
        listeners = self.model.listeners
        http_listener = listeners.http if listeners else None
        http_tls = (
            _listener_tls(http_listener.tls, "listeners.http.tls", self.issues)
            if http_listener is not None and http_listener.tls is not None
            else None
        )
        extra["http"], extra["http_routes"] = build_http(
            http_listener,
            self.model.http_routes,
            self.model.middlewares,
            pools,
            self.fail,
            http_tls,
        )
        self.self_references(pools, dicom, extra["http"])
        return Snapshot(
            source=source,
            dicom=dicom,
            pools=types.MappingProxyType(pools),
            routes=tuple(route for route, _ in routes),
            wanted_tags=frozenset(wanted),
            **extra,
        )

    def self_references(
        self,
        pools: Mapping[str, PoolConfig],
        dicom: DicomListenerConfig | None,
        http: HttpListenerConfig | None,
    ) -> None:
        """A backend whose address is one of dicomlb's own listeners: every message would
        come back in and go out again until limits or timeouts stop it."""
        for pool_name, pool in pools.items():
            for i, backend in enumerate(pool.backends):
                pairs = (
                    ("dicom", "DICOM", backend.dicom, dicom, "images", "storage node"),
                    ("http", "HTTP", backend.http, http, "requests", "web server"),
                )
                for field, kind, address, listener, what, peer in pairs:
                    if (
                        address is not None
                        and listener is not None
                        and _reaches(address.host, address.port, listener.host, listener.port)
                    ):
                        self.fail(
                            f"pools.{pool_name}.backends[{i}].{field}",
                            f"{address} is dicomlb's own {kind} listener "
                            f"({listener.host}:{listener.port}); {what} would loop back into "
                            f"it — give the {peer}'s address",
                        )

    def pools(self) -> dict[str, PoolConfig]:
        pools: dict[str, PoolConfig] = {}
        backend_at: dict[str, str] = {}
        for pool_name, spec in self.model.pools.items():
            path = f"pools.{pool_name}"
            if not _NAME.fullmatch(pool_name):
                self.fail(path, f'"{pool_name}" is not a valid pool name; {_NAME_HINT}')
            key: int | None = None
            key_name: str | None = None
            if spec.strategy is Strategy.AFFINITY:
                key_name = spec.key if spec.key is not None else DEFAULT_AFFINITY_KEY
                try:
                    key = tag_from_name(key_name)
                except ValueError as err:
                    self.fail(f"{path}.key", str(err))
            elif spec.key is not None:
                self.fail(
                    f"{path}.key",
                    f"key is used only by strategy affinity, and this pool is "
                    f"{spec.strategy.value}; remove key or set strategy: affinity",
                )
            backends = []
            for i, b in enumerate(spec.backends):
                b_path = f"{path}.backends[{i}]"
                if b.name in backend_at:
                    self.fail(
                        f"{b_path}.name",
                        f'backend "{b.name}" is already defined at {backend_at[b.name]}; a '
                        "backend name stands for one node, so give each backend its own name",
                    )
                else:
                    backend_at[b.name] = b_path
                tls = _backend_tls(b.tls, f"{b_path}.tls", self.issues)
                if b.dicom is None and b.http is None:
                    self.fail(
                        b_path,
                        f'backend "{b.name}" has no address; write dicom: AET@host:port '
                        "and / or http: http://host:port",
                    )
                store = _backend_store(b, b_path, tls, self.issues)
                backends.append(
                    BackendConfig(
                        name=b.name,
                        dicom=b.dicom,
                        tls=tls,
                        store=store,
                        **_set(b, "name", "dicom", "tls", *_BRIDGE_FIELDS),
                    )
                )
            health = (
                HealthConfig(**_set(spec.health, "http"), http=http_check_config(spec.health.http))
                if spec.health
                else HealthConfig()
            )
            orthanc = spec.orthanc is not None and spec.orthanc is not False
            writer = spec.orthanc.writer if isinstance(spec.orthanc, _OrthancModel) else None
            if writer is not None and writer not in {b.name for b in backends}:
                self.fail(
                    f"{path}.orthanc.writer",
                    f'backend "{writer}" is not in pool "{pool_name}"; name one of its '
                    f"backends: {', '.join(b.name for b in backends)}",
                )
            pools[pool_name] = PoolConfig(
                name=pool_name,
                strategy=spec.strategy,
                key=key,
                key_name=key_name,
                health=health,
                backends=tuple(backends),
                http=http_pool_config(spec.http, orthanc),
                orthanc=orthanc,
                orthanc_writer=writer,
                **_set(spec, "strategy", "key", "health", "backends", "http", "orthanc"),
            )
        return pools

    def routes(self, pools: Mapping[str, PoolConfig]) -> list[tuple[RouteConfig, frozenset[int]]]:
        routes: list[tuple[RouteConfig, frozenset[int]]] = []
        first_at: dict[str, int] = {}
        catch_all: str | None = None
        for i, spec in enumerate(self.model.routes):
            path = f"routes[{i}]"
            if spec.name in first_at:
                self.fail(
                    f"{path}.name",
                    f'route "{spec.name}" is already defined at routes[{first_at[spec.name]}]; '
                    "give each route its own name",
                )
            else:
                first_at[spec.name] = i
            pool = pools.get(spec.pool)
            if pool is None:
                self.fail(
                    f"{path}.pool",
                    f'route "{spec.name}" sends to pool "{spec.pool}", which does not exist; '
                    f"use one of {_names(pools)}",
                )
            if catch_all is not None:
                self.fail(
                    path,
                    f'route "{spec.name}" is unreachable: route "{catch_all}" before it matches '
                    f'everything; move "{catch_all}" last or give it a match',
                )
            try:
                match = parse_match(spec.match, f"{path}.match")
            except MatchError as err:
                self.fail(err.path, err.message)
                continue
            if match.matches_everything and catch_all is None:
                catch_all = spec.name
            ack = spec.ack or Ack.BACKEND
            if ack is Ack.SPOOL and self.model.spool is None:
                self.fail(
                    f"{path}.ack",
                    f'route "{spec.name}" has ack: spool but there is no spool section; add '
                    "spool: {directory: /var/spool/dicomlb} or use ack: backend",
                )
            mirrors = self.mirrors(spec, path, pools, ack)
            # C-STOREs may also go over HTTP (store_via); other services to such a backend
            # are refused at run time with a status naming it.
            missing = (
                [b.name for b in pool.backends if b.dicom is None and b.store is None]
                if pool
                else []
            )
            if missing:
                self.fail(
                    f"{path}.pool",
                    f'pool "{spec.pool}" has backends without a dicom address '
                    f"({', '.join(missing)}); give each one dicom: AET@host:port (or "
                    "store_via: orthanc_rest | stow_rs to send C-STOREs over http)",
                )
            if pool is not None:
                route = RouteConfig(
                    name=spec.name,
                    match=match.predicate,
                    partial=match.partial,
                    pool=pool,
                    match_text=match.text,
                    ack=ack,
                    mirror=mirrors,
                    query=spec.query,
                    move_destination=spec.move_destination,
                    on_scan_limit=spec.on_scan_limit or ScanLimit.REFUSE,
                )
                routes.append((route, match.tags))
        return routes

    def admin_listener(self) -> AdminListenerConfig | None:
        if self.model.listeners is None or self.model.listeners.admin is None:
            return None
        spec = self.model.listeners.admin
        kwargs: dict[str, Any] = {}
        if spec.bind is not None:
            kwargs["host"], kwargs["port"] = spec.bind
        auth = AdminAuth()
        if spec.auth is not None:
            auth = AdminAuth(
                bearer_tokens_sha256=frozenset(spec.auth.bearer_tokens_sha256 or ()),
                basic=types.MappingProxyType(dict(spec.auth.basic or {})),
            )
        hosts = frozenset(h.lower().rstrip(".") for h in spec.allowed_hosts or ())
        config = AdminListenerConfig(auth=auth, allowed_hosts=hosts, **kwargs)
        if not auth.required and not _is_loopback(config.host):
            self.fail(
                "listeners.admin.auth",
                f"the admin listener binds {_host_port(config.host, config.port)}, which is not "
                "a loopback address, and has no auth; add auth: {bearer_tokens_sha256: [...]} "
                "or auth: {basic: {USER: SHA256}} (see `dicomlb hash-password`), or bind "
                "127.0.0.1",
            )
        return config

    def mirrors(
        self, spec: _RouteModel, path: str, pools: Mapping[str, PoolConfig], ack: Ack
    ) -> tuple[PoolConfig, ...]:
        if not spec.mirror:
            return ()
        if ack is not Ack.SPOOL:
            self.fail(
                f"{path}.mirror",
                f'route "{spec.name}" mirrors through the spool, so it needs ack: spool; add '
                "ack: spool to the route (mirrors of ack: backend routes are not built yet)",
            )
        mirrors: list[PoolConfig] = []
        for j, name in enumerate(spec.mirror):
            mirror = pools.get(name)
            if mirror is None:
                self.fail(
                    f"{path}.mirror[{j}]",
                    f'pool "{name}" does not exist; use one of {_names(pools)}',
                )
            elif name == spec.pool or mirror in mirrors:
                self.fail(
                    f"{path}.mirror[{j}]",
                    f'pool "{name}" already gets this route\'s instances; list each pool once',
                )
            else:
                mirrors.append(mirror)
        return tuple(mirrors)

    def spool(self) -> SpoolConfig | None:
        spec = self.model.spool
        if spec is None:
            return None
        retry = RetryConfig(**_set(spec.retry)) if spec.retry else RetryConfig()
        if retry.cap < retry.base:
            self.fail(
                "spool.retry.cap",
                f"cap ({format_duration(retry.cap)}) is shorter than base "
                f"({format_duration(retry.base)}); make cap at least base",
            )
        return SpoolConfig(
            directory=spec.directory, retry=retry, **_set(spec, "directory", "retry")
        )

    def dicom_listener(self, pools: Mapping[str, PoolConfig]) -> DicomListenerConfig | None:
        if self.model.listeners is None or self.model.listeners.dicom is None:
            return None
        spec = self.model.listeners.dicom
        kwargs = _set(spec, "bind", "echo", "transfer_syntaxes", "tls", "allow")
        if spec.allow is not None:
            kwargs["allow"] = tuple(AllowRule(aet=a.aet, network=a.cidr) for a in spec.allow)
        if spec.tls is not None:
            kwargs["tls"] = _listener_tls(spec.tls, "listeners.dicom.tls", self.issues)
        if spec.bind is not None:
            kwargs["host"], kwargs["port"] = spec.bind
        if spec.transfer_syntaxes is not None:
            entries = spec.transfer_syntaxes
            kwargs["any_transfer_syntax"] = any(not entry.uid for entry in entries)
            kwargs["transfer_syntaxes"] = tuple(dict.fromkeys(e.uid for e in entries if e.uid))
            kwargs["encodings"] = types.MappingProxyType(
                {e.uid: e.encoding for e in entries if e.encoding is not None}
            )
        if spec.echo != ECHO_LOCAL:
            echo_pool = pools.get(spec.echo)
            if echo_pool is None:
                self.fail(
                    "listeners.dicom.echo",
                    f'pool "{spec.echo}" does not exist; write "{ECHO_LOCAL}" to answer C-ECHO '
                    f"here, or one of {_names(pools)}",
                )
            elif any(b.dicom is None for b in echo_pool.backends):
                self.fail(
                    "listeners.dicom.echo",
                    f'pool "{spec.echo}" has backends without a dicom address; C-ECHO needs '
                    "dicom: AET@host:port on each",
                )
            kwargs["echo_pool"] = echo_pool
        return DicomListenerConfig(**kwargs)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_failure(path: str, err: Exception) -> ConfigIssue:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    filename = getattr(err, "filename", None)
    where = f" ({filename})" if filename else ""
    return ConfigIssue(
        path=path,
        message=f"cannot set up TLS: {reason}{where}; check the PEM files' paths and contents",
    )


def _listener_tls(
    spec: _ListenerTlsModel, path: str, issues: list[ConfigIssue]
) -> TlsConfig | None:
    try:
        context = server_context(cert=spec.cert, key=spec.key, ca=spec.ca)
    except (OSError, ssl.SSLError) as err:
        issues.append(_tls_failure(path, err))
        return None
    return TlsConfig(cert=spec.cert, key=spec.key, ca=spec.ca, context=context)


def _backend_tls(
    spec: _BackendTlsModel | None, path: str, issues: list[ConfigIssue]
) -> TlsConfig | None:
    if spec is None:
        return None
    if (spec.cert is None) != (spec.key is None):
        issues.append(
            ConfigIssue(path=path, message="cert and key go together; give both or neither")
        )
        return None
    try:
        context = client_context(ca=spec.ca, cert=spec.cert, key=spec.key, verify=spec.verify)
    except (OSError, ssl.SSLError) as err:
        issues.append(_tls_failure(path, err))
        return None
    return TlsConfig(
        cert=spec.cert,
        key=spec.key,
        ca=spec.ca,
        verify=spec.verify,
        server_name=spec.server_name,
        context=context,
    )


def _set(model: BaseModel | None, *skip: str) -> dict[str, Any]:
    """The fields written in the file (not None), except `skip`: the rest keep the
    snapshot's defaults, which live in one place."""
    if model is None:
        return {}
    return {
        name: value
        for name in type(model).model_fields
        if name not in skip and (value := getattr(model, name)) is not None
    }


# --- pydantic errors → issues ---------------------------------------------------------------


def _dotted(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path = f"{path}.{part}" if path else part
    return path


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that the value at `loc` is validated with, if any."""
    tp: Any = _ConfigModel
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _issue_from_pydantic(error: Any) -> ConfigIssue:
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    field = str(loc[-1]) if loc and isinstance(loc[-1], str) else ""
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(field, allowed, n=3)
        # Equal scores ("pool": "pools" or "spool"?): the one starting alike reads right.
        close.sort(key=lambda name: name[:1] != field[:1])
        hint = f'did you mean "{close[0]}"? ' if close else ""
        message = f'unknown key "{field}"; {hint}allowed keys: {", ".join(allowed)}'
    elif kind == "missing":
        message = f"{field or 'this'} is required; add it"
        if field == "backends":
            message = "backends is required; list at least one: - {name: ..., dicom: AET@host:port}"
    elif value is None:
        message = "is empty; write a value or remove the key"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind == "too_short":
        message = f"{_show(value)} is empty; list at least one item"
        if field == "backends":
            message = (
                "the pool has no backends; list at least one: - {name: ..., dicom: AET@host:port}"
            )
    elif kind == "greater_than_equal":
        message = f"{_show(value)} is too small; write a number of at least {ctx.get('ge')}"
        if field == "weight":
            message += " (to take a backend out of rotation, remove it from the pool)"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"{_show(value)} is not a whole number; write one, e.g. 4"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"{_show(value)} is not true or false; write true or false"
    elif kind in ("string_type", "string_parsing"):
        message = f"{_show(value)} is not text; write text, in quotes if YAML would change it"
    elif kind == "enum":
        expected = str(ctx.get("expected", "")).replace("'", "")
        message = f"{_show(value)} is not a {field or 'choice'}; use one of {expected}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"{_show(value)} is {_kind(value)}; write a mapping of keys and values"
    elif kind in ("list_type", "tuple_type"):
        message = f"{_show(value)} is {_kind(value)}; write a list, e.g. [a, b]"
    else:
        message = f"{error['msg']} (got {_show(value)})"
    return ConfigIssue(path=_dotted(loc), message=message)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "empty"
    return f"a {type(value).__name__}"


def _names(names: Any) -> str:
    listed = ", ".join(names)
    return listed if listed else "(none defined; add a pool under pools)"


# --- describe -------------------------------------------------------------------------------


def describe(snapshot: Snapshot) -> str:
    """A readable multi-line summary of a snapshot, for `dicomlb check`."""
    lines = [f"config: {snapshot.source}"]
    d = snapshot.dicom
    if d is None:
        lines.append("dicom listener: none")
    else:
        per_aet = d.max_associations_per_calling_aet or "no limit"
        per_ip = d.max_associations_per_ip or "no limit"
        allow = (
            ", ".join(
                " from ".join(str(part) for part in (rule.aet, rule.network) if part is not None)
                for rule in d.allow
            )
            if d.allow
            else "any calling AE title from any address"
        )
        echo = f"pool {d.echo_pool.name}" if d.echo_pool else "answered by dicomlb"
        listed = [
            f"{_uid_name(u)} ({d.encodings[u].value})" if u in d.encodings else _uid_name(u)
            for u in d.transfer_syntaxes
        ]
        declared = [f"{_uid_name(u)} ({e.value})" for u, e in d.encodings.items()]
        syntaxes = (
            ", ".join(["any (other UIDs than the standard ones as encapsulated)", *declared])
            if d.any_transfer_syntax
            else ", ".join(listed)
        )
        lines += [
            f"dicom listener: {d.ae_title} on {_host_port(d.host, d.port)}",
            f"  called AE title checked: {'yes' if d.check_called_aet else 'no'}; "
            f"max associations {d.max_associations} (per calling AE: {per_aet}); "
            f"max PDU {_pdu(d.max_pdu)}",
            f"  allowed: {allow}; associations per address: {per_ip}; negotiating at once: "
            f"{d.max_negotiating} (per address: {d.max_negotiating_per_ip})",
            f"  timeouts: ARTIM {format_duration(d.artim_timeout)}, "
            f"idle {format_duration(d.idle_timeout)}; C-ECHO: {echo}",
            f"  transfer syntaxes: {syntaxes}",
        ]
    lines.append("routes (first match wins):")
    if not snapshot.routes:
        lines.append("  none")
    for n, route in enumerate(snapshot.routes, 1):
        mirror = f"; mirror to {', '.join(p.name for p in route.mirror)}" if route.mirror else ""
        spooled = f" (ack: spool{mirror})" if route.ack is Ack.SPOOL else ""
        lines.append(
            f"  {n}. {route.name}: {route.match_text or 'everything'} -> pool {route.pool.name}"
            f"{spooled}"
        )
    lines.append("pools:")
    for pool in snapshot.pools.values():
        strategy = pool.strategy.value
        if pool.key is not None:
            strategy += f" on {pool.key_name} {_tag_number(pool.key)}"
        h = pool.health
        health = (
            f"every {format_duration(h.interval)}, timeout {format_duration(h.timeout)}, "
            f"fall {h.fall}, rise {h.rise}"
            if h.enabled
            else f"off (passive: fall {h.fall}, back after {format_duration(h.fail_timeout)})"
        )
        lines += [
            f"  {pool.name}: {strategy}; health: {health}",
            f"    called AE title: {pool.called_aet.value}; timeouts: connect "
            f"{format_duration(pool.connect_timeout)}, acquire "
            f"{format_duration(pool.acquire_timeout)}, response "
            f"{format_duration(pool.response_timeout)}, idle {format_duration(pool.idle_timeout)}",
        ]
        if pool.upstream is UpstreamMode.PER_CLIENT:
            lines.append("    upstream associations: one per client association, none kept idle")
        if (pool.query, pool.move_destination, pool.storage_commitment) != (
            QueryMode.ONE,
            MoveDestination.PASSTHROUGH,
            StorageCommitment.REFUSE,
        ):
            lines.append(
                f"    query: {pool.query.value} (per backend "
                f"{format_duration(pool.query_timeout)}); C-MOVE destination: "
                f"{pool.move_destination.value}; storage commitment: "
                f"{pool.storage_commitment.value}"
            )
        for b in pool.backends:
            addresses = [str(b.http)] if b.http else []
            if b.dicom is not None:
                addresses.insert(0, f"{b.dicom.ae_title}@{_host_port(b.dicom.host, b.dicom.port)}")
            if b.store is not None:  # the DICOM -> HTTP bridge
                login = f", auth {b.store.auth_text}" if b.store.auth_text else ""
                batch = f", batch {b.store.stow_batch}" if b.store.stow_batch > 1 else ""
                addresses.append(f"(C-STORE via {b.store.via.value}{login}{batch})")
            address = " ".join(addresses)
            lines.append(
                f"    - {b.name}: {address}  weight {b.weight}, max associations "
                f"{b.max_associations}, max PDU {_pdu(b.max_pdu)}"
            )
    tags = ", ".join(f"{tag_name(t)} {_tag_number(t)}" for t in sorted(snapshot.wanted_tags))
    lines.append(f"routing tags: {tags or 'none'}")
    lines += describe_http(snapshot.http, snapshot.http_routes)
    lines.append(f"graceful timeout: {format_duration(snapshot.graceful_timeout)}")
    a = snapshot.admin
    if a is None:
        lines.append("admin listener: none")
    else:
        auth = []
        if a.auth.bearer_tokens_sha256:
            auth.append(f"{len(a.auth.bearer_tokens_sha256)} bearer token(s)")
        if a.auth.basic:
            auth.append(f"basic for {', '.join(sorted(a.auth.basic))}")
        lines.append(
            f"admin listener: http://{_host_port(a.host, a.port)}/ "
            f"(auth: {'; '.join(auth) if auth else 'none, loopback only'})"
        )
    lines.append(f"reload on file change: {'yes' if snapshot.watch else 'no'}")
    sp = snapshot.spool
    if sp is not None:
        r = sp.retry
        failover = (
            f"fail over after {format_duration(sp.failover_after)}"
            if sp.failover_after is not None
            else "wait for the study's backend"
        )
        lines += [
            f"spool: {sp.directory}",
            f"  limits: max bytes {sp.max_bytes or 'none'}, max items {sp.max_items or 'none'}, "
            f"min free disk {sp.min_free_disk}",
            f"  retry: base {format_duration(r.base)}, cap {format_duration(r.cap)}, "
            f"max attempts {r.max_attempts or 'no limit'}, max age "
            f"{format_duration(r.max_age) if r.max_age else 'no limit'}; {failover}; "
            "delivered files: "
            + (f"kept {format_duration(sp.keep_delivered)}" if sp.keep_delivered else "removed"),
        ]
    if snapshot.dicom_nodes:
        nodes = ", ".join(f"{aet} -> {address}" for aet, address in snapshot.dicom_nodes.items())
        lines.append(f"dicom nodes (C-MOVE destinations): {nodes}")
    if snapshot.state_dir is not None:
        lines.append(f"state directory: {snapshot.state_dir}")
    return "\n".join(lines)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pdu(size: int) -> str:
    return "unlimited" if size == 0 else str(size)


def _tag_number(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _uid_name(uid: str) -> str:
    entry = UID_dictionary.get(uid)
    return entry[4] if entry and entry[4] else uid
