"""PS3.8 upper-layer PDUs: typed events and their wire codec.

Pure functions over bytes. `decode_pdu` turns one complete PDU into an event; `encode`
turns an event into bytes. Association-level fields that dicomlb does not interpret (SOP
class extended negotiation, unknown user-information items) are kept as raw items so they
can be forwarded untouched.
"""

from __future__ import annotations

import enum
import struct
import sys
from dataclasses import dataclass, field

from dicomlb.dicom.errors import RemoteProtocolError

_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
_PDV = struct.Struct(">LBB")
_ASSOC_FIXED = struct.Struct(">Hxx16s16s32x")
PDU_HEADER_LEN = 6
PDV_HEADER_LEN = 6
# PS3.8 D.1: a Maximum Length below this cannot carry a PDV with one byte of data (length 4,
# context ID 1, message control header 1); 0 means unlimited.
SMALLEST_MAX_LENGTH = PDV_HEADER_LEN + 1
# PS3.5 9.1: a UID is at most 64 bytes (padded to even length, which 64 already is).
MAX_UID_LEN = 64
# PS3.7 D.3.3.2: the implementation version name is 1 to 16 characters.
MAX_VERSION_NAME_LEN = 16


class PduType(enum.IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


# Python 3.11's EnumType.__getattr__ makes `PduType.P_DATA_TF` a slow lookup; this one is
# read for every P-DATA-TF.
_P_DATA_TF = PduType.P_DATA_TF


class ItemType(enum.IntEnum):
    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class RejectResult(enum.IntEnum):
    """PS3.8 9.3.4: A-ASSOCIATE-RJ result."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(enum.IntEnum):
    """PS3.8 9.3.4: who rejects; the meaning of `reason` depends on it."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(enum.Enum):
    """PS3.8 9.3.4 reasons; each value is (source, reason) since a reason means
    different things for different sources."""

    NO_REASON = (RejectSource.SERVICE_USER, 1)
    APPLICATION_CONTEXT_NOT_SUPPORTED = (RejectSource.SERVICE_USER, 2)
    CALLING_AE_NOT_RECOGNIZED = (RejectSource.SERVICE_USER, 3)
    CALLED_AE_NOT_RECOGNIZED = (RejectSource.SERVICE_USER, 7)
    PROTOCOL_VERSION_NOT_SUPPORTED = (RejectSource.SERVICE_PROVIDER_ACSE, 2)
    TEMPORARY_CONGESTION = (RejectSource.SERVICE_PROVIDER_PRESENTATION, 1)
    LOCAL_LIMIT_EXCEEDED = (RejectSource.SERVICE_PROVIDER_PRESENTATION, 2)


class AbortSource(enum.IntEnum):
    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class AbortReason(enum.IntEnum):
    """PS3.8 9.3.8 Table 9-26."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER = 6


class ContextResult(enum.IntEnum):
    """PS3.8 9.3.3.2: presentation context result."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextProposal:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextResult:
    context_id: int
    result: ContextResult
    transfer_syntax: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class UserInformation:
    max_pdu: int | None = None  # 0 means unlimited (PS3.8 D.1)
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None  # (invoked, performed)
    roles: tuple[RoleSelection, ...] = ()
    # Items forwarded untouched: user identity, extended negotiation, unknown sub-items.
    raw_items: tuple[tuple[int, bytes], ...] = ()

    def raw_item(self, item_type: int) -> bytes | None:
        """The value of the first raw sub-item of `item_type`, if present."""
        for kind, value in self.raw_items:
            if kind == item_type:
                return value
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRequest:
    called_ae: str
    calling_ae: str
    contexts: tuple[PresentationContextProposal, ...]
    user_info: UserInformation
    application_context: str = "1.2.840.10008.3.1.1.1"
    protocol_version: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateAccept:
    called_ae: str
    calling_ae: str
    contexts: tuple[PresentationContextResult, ...]
    user_info: UserInformation
    application_context: str = "1.2.840.10008.3.1.1.1"
    protocol_version: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateReject:
    result: RejectResult
    source: RejectSource
    reason: int  # wire value; see RejectReason


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationDataValue:
    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PData:
    pdvs: tuple[PresentationDataValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRequest:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseReply:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    source: AbortSource = AbortSource.SERVICE_PROVIDER
    reason: AbortReason = AbortReason.NOT_SPECIFIED


Pdu = (
    AssociateRequest
    | AssociateAccept
    | AssociateReject
    | PData
    | ReleaseRequest
    | ReleaseReply
    | Abort
)


def reject(reason: RejectReason, *, transient: bool = False) -> AssociateReject:
    """An A-ASSOCIATE-RJ for `reason`, with the source the reason belongs to."""
    source, code = reason.value
    result = RejectResult.TRANSIENT if transient else RejectResult.PERMANENT
    return AssociateReject(result=result, source=source, reason=code)


def _invalid(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        what,
        reply=Abort(source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.INVALID_PDU_PARAMETER),
    )


# ---------------------------------------------------------------- decoding


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _uid(raw: bytes | memoryview, what: str) -> str:
    if len(raw) > MAX_UID_LEN:
        raise _invalid(f"{what} of {len(raw)} bytes is longer than a UID ({MAX_UID_LEN})")
    # The same few dozen UIDs arrive in every association and are held while it lasts:
    # interned, they are one shared string each instead of a copy per association.
    return sys.intern(bytes(raw).decode("ascii", "replace").rstrip("\x00 "))


def _items(body: memoryview, where: str) -> list[tuple[int, memoryview]]:
    items = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < 4:
            raise _invalid(f"{where}: truncated item header")
        kind, length = _ITEM.unpack_from(body, pos)
        pos += 4
        if pos + length > end:
            raise _invalid(f"{where}: item 0x{kind:02X} length {length} overruns its container")
        items.append((kind, body[pos : pos + length]))
        pos += length
    return items


def split_fields(
    raw: bytes | memoryview, count: int | None, where: str = "sub-item"
) -> list[memoryview]:
    """Fields of 2-byte length and that many bytes, filling `raw` exactly: `count` of them,
    or as many as there are (None). Raises RemoteProtocolError (A-ABORT, invalid parameter)
    otherwise."""
    value = memoryview(raw)
    fields: list[memoryview] = []
    pos, end = 0, len(value)
    while (pos < end) if count is None else (len(fields) < count):
        if end - pos < 2:
            raise _invalid(f"{where}: truncated field length")
        (length,) = struct.unpack_from(">H", value, pos)
        pos += 2
        if pos + length > end:
            raise _invalid(f"{where}: field length {length} overruns the item")
        fields.append(value[pos : pos + length])
        pos += length
    if pos != end:
        raise _invalid(f"{where}: {end - pos} bytes after its last field")
    return fields


def _check_forwarded(kind: int, value: memoryview) -> None:
    """Sub-items passed to backends untouched must be well formed: a backend that aborts on
    a client's broken item must not look unwell for it."""
    if kind == ItemType.SOP_CLASS_EXTENDED_NEGOTIATION:
        # PS3.7 D.3.3.5: a SOP class UID, then service class application information.
        where = "SOP class extended negotiation"
        if len(value) < 2:
            raise _invalid(f"{where} item too short")
        (uid_len,) = struct.unpack_from(">H", value)
        if 2 + uid_len > len(value):
            raise _invalid(f"{where}: UID length {uid_len} overruns the item")
        _uid(value[2 : 2 + uid_len], f"{where} UID")
    elif kind == ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
        # PS3.7 D.3.3.6: SOP class UID, service class UID, related general SOP class UIDs.
        where = "SOP class common extended negotiation"
        sop_class, service_class, related = split_fields(value, 3, where)
        for uid in (sop_class, service_class, *split_fields(related, None, where)):
            _uid(uid, f"{where} UID")
    elif kind == ItemType.USER_IDENTITY_RQ:
        # PS3.7 D.3.3.7.1: type, positive response requested, primary and secondary fields.
        if len(value) < 2:
            raise _invalid("user identity item too short")
        split_fields(value[2:], 2, "user identity")
    elif kind == ItemType.USER_IDENTITY_AC:
        split_fields(value, 1, "user identity response")  # PS3.7 D.3.3.7.2: server response


def _decode_user_info(body: memoryview) -> UserInformation:
    max_pdu: int | None = None
    class_uid = ""
    version: str | None = None
    async_ops: tuple[int, int] | None = None
    roles: list[RoleSelection] = []
    raw: list[tuple[int, bytes]] = []
    for kind, value in _items(body, "user information"):
        if kind == ItemType.MAXIMUM_LENGTH:
            if len(value) != 4:
                raise _invalid(f"maximum length item of {len(value)} bytes, not 4")
            max_pdu = struct.unpack(">L", value)[0]
            if 0 < max_pdu < SMALLEST_MAX_LENGTH:
                # PS3.8 D.1: 0 is unlimited; 1..6 leave no room for a PDV.
                raise _invalid(f"maximum length {max_pdu} cannot carry a PDV")
        elif kind == ItemType.IMPLEMENTATION_CLASS_UID:
            class_uid = _uid(value, "implementation class UID")
        elif kind == ItemType.IMPLEMENTATION_VERSION_NAME:
            if len(value) > MAX_VERSION_NAME_LEN:
                raise _invalid(f"implementation version name of {len(value)} bytes")
            version = _text(bytes(value))
        elif kind == ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW:
            if len(value) != 4:
                raise _invalid(f"asynchronous operations window of {len(value)} bytes, not 4")
            async_ops = struct.unpack(">HH", value)
        elif kind == ItemType.ROLE_SELECTION:
            if len(value) < 2:
                raise _invalid("SCP/SCU role selection item too short")
            (uid_len,) = struct.unpack_from(">H", value)
            if len(value) != uid_len + 4:
                raise _invalid("SCP/SCU role selection item has a bad length")
            roles.append(
                RoleSelection(
                    sop_class_uid=_uid(value[2 : 2 + uid_len], "role selection SOP class UID"),
                    scu_role=bool(value[2 + uid_len]),
                    scp_role=bool(value[3 + uid_len]),
                )
            )
        else:
            _check_forwarded(kind, value)
            raw.append((kind, bytes(value)))
    return UserInformation(
        max_pdu=max_pdu,
        implementation_class_uid=class_uid,
        implementation_version_name=version,
        async_ops=async_ops,
        roles=tuple(roles),
        raw_items=tuple(raw),
    )


def _context_id(value: memoryview, seen: set[int]) -> int:
    """The ID of a presentation context item, checked (PS3.8 9.3.2.2: odd, 1..255, unique,
    so at most 128 of them)."""
    if len(value) < 4:
        raise _invalid("presentation context item too short")
    context_id = value[0]
    if not context_id & 1:
        raise _invalid(f"presentation context ID {context_id} is not odd")
    if context_id in seen:
        raise _invalid(f"presentation context ID {context_id} appears twice")
    seen.add(context_id)
    return context_id


def _decode_associate(pdu_type: int, body: memoryview) -> AssociateRequest | AssociateAccept:
    if len(body) < _ASSOC_FIXED.size:
        raise _invalid("A-ASSOCIATE PDU shorter than its fixed fields")
    version, called, calling = _ASSOC_FIXED.unpack_from(body)
    app_context = ""
    proposals: list[PresentationContextProposal] = []
    results: list[PresentationContextResult] = []
    seen: set[int] = set()
    user_info = UserInformation()
    for kind, value in _items(body[_ASSOC_FIXED.size :], "A-ASSOCIATE"):
        if kind == ItemType.APPLICATION_CONTEXT:
            app_context = _uid(value, "application context name")
        elif kind == ItemType.PRESENTATION_CONTEXT_RQ and pdu_type == PduType.ASSOCIATE_RQ:
            context_id = _context_id(value, seen)
            abstract: str | None = None
            syntaxes: list[str] = []
            for sub, sub_value in _items(value[4:], "presentation context"):
                if sub == ItemType.ABSTRACT_SYNTAX:
                    if abstract is not None:
                        raise _invalid(f"presentation context {context_id}: two abstract syntaxes")
                    abstract = _uid(sub_value, "abstract syntax")
                elif sub == ItemType.TRANSFER_SYNTAX:
                    syntaxes.append(_uid(sub_value, "transfer syntax"))
            proposals.append(
                PresentationContextProposal(
                    context_id=context_id,
                    abstract_syntax=abstract or "",
                    transfer_syntaxes=tuple(syntaxes),
                )
            )
        elif kind == ItemType.PRESENTATION_CONTEXT_AC and pdu_type == PduType.ASSOCIATE_AC:
            context_id = _context_id(value, seen)
            syntax = ""
            for sub, sub_value in _items(value[4:], "presentation context"):
                if sub == ItemType.TRANSFER_SYNTAX:
                    syntax = _uid(sub_value, "transfer syntax")
            try:
                result = ContextResult(value[2])
            except ValueError:
                result = ContextResult.NO_REASON
            results.append(
                PresentationContextResult(
                    context_id=context_id, result=result, transfer_syntax=syntax
                )
            )
        elif kind == ItemType.USER_INFORMATION:
            user_info = _decode_user_info(value)
    if pdu_type == PduType.ASSOCIATE_RQ:
        return AssociateRequest(
            called_ae=_text(called),
            calling_ae=_text(calling),
            contexts=tuple(proposals),
            user_info=user_info,
            application_context=app_context,
            protocol_version=version,
        )
    return AssociateAccept(
        called_ae=_text(called),
        calling_ae=_text(calling),
        contexts=tuple(results),
        user_info=user_info,
        application_context=app_context,
        protocol_version=version,
    )


def _decode_pdata(body: memoryview) -> PData:
    pdvs = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < PDV_HEADER_LEN:
            raise _invalid("P-DATA-TF: truncated PDV header")
        length, context_id, control = _PDV.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise _invalid(f"P-DATA-TF: PDV length {length} is invalid")
        pdvs.append(
            PresentationDataValue(
                context_id=context_id,
                is_command=bool(control & 1),
                is_last=bool(control & 2),
                data=body[pos + PDV_HEADER_LEN : pos + 4 + length],
            )
        )
        pos += 4 + length
    if not pdvs:
        raise _invalid("P-DATA-TF without a PDV")
    return PData(pdvs=tuple(pdvs))


def decode_pdu(pdu_type: int, body: memoryview) -> Pdu:
    """Decode one PDU given its type and the bytes after its 6-byte header."""
    if pdu_type == _P_DATA_TF:
        return _decode_pdata(body)
    if pdu_type in (PduType.ASSOCIATE_RQ, PduType.ASSOCIATE_AC):
        return _decode_associate(pdu_type, body)
    if pdu_type == PduType.ASSOCIATE_RJ:
        if len(body) < 4:
            raise _invalid("A-ASSOCIATE-RJ too short")
        try:
            result, rejector = RejectResult(body[1]), RejectSource(body[2])
        except ValueError as err:
            raise _invalid(f"A-ASSOCIATE-RJ: {err}") from None
        return AssociateReject(result=result, source=rejector, reason=body[3])
    if pdu_type == PduType.RELEASE_RQ:
        return ReleaseRequest()
    if pdu_type == PduType.RELEASE_RP:
        return ReleaseReply()
    if pdu_type == PduType.ABORT:
        source = (
            AbortSource.SERVICE_PROVIDER
            if len(body) >= 3 and body[2] == 2
            else AbortSource.SERVICE_USER
        )
        try:
            reason = AbortReason(body[3]) if len(body) >= 4 else AbortReason.NOT_SPECIFIED
        except ValueError:
            reason = AbortReason.NOT_SPECIFIED
        return Abort(source=source, reason=reason)
    raise RemoteProtocolError(
        f"unrecognized PDU type 0x{pdu_type:02X}",
        reply=Abort(source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNRECOGNIZED_PDU),
    )


# ---------------------------------------------------------------- encoding


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def _encode_user_info(info: UserInformation) -> bytes:
    parts = []
    if info.max_pdu is not None:
        parts.append(_item(ItemType.MAXIMUM_LENGTH, struct.pack(">L", info.max_pdu)))
    parts.append(_item(ItemType.IMPLEMENTATION_CLASS_UID, info.implementation_class_uid.encode()))
    if info.async_ops is not None:
        parts.append(
            _item(ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW, struct.pack(">HH", *info.async_ops))
        )
    for role in info.roles:
        uid = role.sop_class_uid.encode()
        value = struct.pack(">H", len(uid)) + uid + bytes((role.scu_role, role.scp_role))
        parts.append(_item(ItemType.ROLE_SELECTION, value))
    if info.implementation_version_name:
        parts.append(
            _item(ItemType.IMPLEMENTATION_VERSION_NAME, info.implementation_version_name.encode())
        )
    parts.extend(_item(kind, value) for kind, value in info.raw_items)
    return _item(ItemType.USER_INFORMATION, b"".join(parts))


def _encode_associate(event: AssociateRequest | AssociateAccept) -> bytes:
    parts = [
        _ASSOC_FIXED.pack(event.protocol_version, _ae(event.called_ae), _ae(event.calling_ae)),
        _item(ItemType.APPLICATION_CONTEXT, event.application_context.encode()),
    ]
    if isinstance(event, AssociateRequest):
        for proposal in event.contexts:
            subs = _item(ItemType.ABSTRACT_SYNTAX, proposal.abstract_syntax.encode()) + b"".join(
                _item(ItemType.TRANSFER_SYNTAX, ts.encode()) for ts in proposal.transfer_syntaxes
            )
            head = bytes((proposal.context_id, 0, 0, 0))
            parts.append(_item(ItemType.PRESENTATION_CONTEXT_RQ, head + subs))
        pdu_type = PduType.ASSOCIATE_RQ
    else:
        for result in event.contexts:
            head = bytes((result.context_id, 0, result.result, 0))
            sub = _item(ItemType.TRANSFER_SYNTAX, result.transfer_syntax.encode())
            parts.append(_item(ItemType.PRESENTATION_CONTEXT_AC, head + sub))
        pdu_type = PduType.ASSOCIATE_AC
    parts.append(_encode_user_info(event.user_info))
    body = b"".join(parts)
    return _HEADER.pack(pdu_type, len(body)) + body


def pdata_header(length: int) -> bytes:
    """The 6-byte header of a P-DATA-TF whose PDV items take `length` bytes."""
    return _HEADER.pack(_P_DATA_TF, length)


def pdv_header(context_id: int, data_len: int, *, is_command: bool, is_last: bool) -> bytes:
    """The 6-byte header of one PDV carrying `data_len` bytes."""
    return _PDV.pack(data_len + 2, context_id, int(is_command) | (int(is_last) << 1))


def encode(event: Pdu) -> bytes:
    """The wire bytes of one PDU."""
    if isinstance(event, PData):
        parts = []
        for pdv in event.pdvs:
            parts.append(
                pdv_header(
                    pdv.context_id, len(pdv.data), is_command=pdv.is_command, is_last=pdv.is_last
                )
            )
            parts.append(bytes(pdv.data))
        body = b"".join(parts)
        return pdata_header(len(body)) + body
    if isinstance(event, AssociateRequest | AssociateAccept):
        return _encode_associate(event)
    if isinstance(event, AssociateReject):
        return _HEADER.pack(PduType.ASSOCIATE_RJ, 4) + bytes(
            (0, event.result, event.source, event.reason)
        )
    if isinstance(event, ReleaseRequest):
        return _HEADER.pack(PduType.RELEASE_RQ, 4) + bytes(4)
    if isinstance(event, ReleaseReply):
        return _HEADER.pack(PduType.RELEASE_RP, 4) + bytes(4)
    return _HEADER.pack(PduType.ABORT, 4) + bytes((0, 0, event.source, event.reason))


def split_header(header: bytes | memoryview) -> tuple[int, int]:
    """(PDU type, body length) from a 6-byte PDU header."""
    pdu_type, length = _HEADER.unpack_from(header)
    return pdu_type, length
