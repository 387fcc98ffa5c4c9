"""PS3.8 upper-layer PDUs: typed events and their wire codec.

Pure functions over bytes. `decode_pdu` turns one complete PDU into an event; `encode`
turns an event into bytes. Association-level fields that dicomlb does not interpret (SOP
class extended negotiation, unknown user-information items) are kept as raw items so they
can be forwarded untouched.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from dicomlb.dicom.errors import RemoteProtocolError

_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
_PDV = struct.Struct(">LBB")
_ASSOC_FIXED = struct.Struct(">Hxx16s16s32x")
PDU_HEADER_LEN = 6
PDV_HEADER_LEN = 6


class PduType(enum.IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


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


def _uid(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").rstrip("\x00 ")


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


def _decode_user_info(body: memoryview) -> UserInformation:
    max_pdu: int | None = None
    class_uid = ""
    version: str | None = None
    async_ops: tuple[int, int] | None = None
    roles: list[RoleSelection] = []
    raw: list[tuple[int, bytes]] = []
    for kind, value in _items(body, "user information"):
        if kind == ItemType.MAXIMUM_LENGTH and len(value) == 4:
            max_pdu = struct.unpack(">L", value)[0]
        elif kind == ItemType.IMPLEMENTATION_CLASS_UID:
            class_uid = _uid(value)
        elif kind == ItemType.IMPLEMENTATION_VERSION_NAME:
            version = _text(bytes(value))
        elif kind == ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW and len(value) == 4:
            async_ops = struct.unpack(">HH", value)
        elif kind == ItemType.ROLE_SELECTION and len(value) >= 2:
            (uid_len,) = struct.unpack_from(">H", value)
            if len(value) != uid_len + 4:
                raise _invalid("SCP/SCU role selection item has a bad length")
            roles.append(
                RoleSelection(
                    sop_class_uid=_uid(value[2 : 2 + uid_len]),
                    scu_role=bool(value[2 + uid_len]),
                    scp_role=bool(value[3 + uid_len]),
                )
            )
        else:
            raw.append((kind, bytes(value)))
    return UserInformation(
        max_pdu=max_pdu,
        implementation_class_uid=class_uid,
        implementation_version_name=version,
        async_ops=async_ops,
        roles=tuple(roles),
        raw_items=tuple(raw),
    )


def _decode_associate(pdu_type: int, body: memoryview) -> AssociateRequest | AssociateAccept:
    if len(body) < _ASSOC_FIXED.size:
        raise _invalid("A-ASSOCIATE PDU shorter than its fixed fields")
    version, called, calling = _ASSOC_FIXED.unpack_from(body)
    app_context = ""
    proposals: list[PresentationContextProposal] = []
    results: list[PresentationContextResult] = []
    user_info = UserInformation()
    for kind, value in _items(body[_ASSOC_FIXED.size :], "A-ASSOCIATE"):
        if kind == ItemType.APPLICATION_CONTEXT:
            app_context = _uid(value)
        elif kind == ItemType.PRESENTATION_CONTEXT_RQ and pdu_type == PduType.ASSOCIATE_RQ:
            if len(value) < 4:
                raise _invalid("presentation context item too short")
            abstract = ""
            syntaxes: list[str] = []
            for sub, sub_value in _items(value[4:], "presentation context"):
                if sub == ItemType.ABSTRACT_SYNTAX:
                    abstract = _uid(sub_value)
                elif sub == ItemType.TRANSFER_SYNTAX:
                    syntaxes.append(_uid(sub_value))
            proposals.append(
                PresentationContextProposal(
                    context_id=value[0], abstract_syntax=abstract, transfer_syntaxes=tuple(syntaxes)
                )
            )
        elif kind == ItemType.PRESENTATION_CONTEXT_AC and pdu_type == PduType.ASSOCIATE_AC:
            if len(value) < 4:
                raise _invalid("presentation context item too short")
            syntax = ""
            for sub, sub_value in _items(value[4:], "presentation context"):
                if sub == ItemType.TRANSFER_SYNTAX:
                    syntax = _uid(sub_value)
            try:
                result = ContextResult(value[2])
            except ValueError:
                result = ContextResult.NO_REASON
            results.append(
                PresentationContextResult(
                    context_id=value[0], result=result, transfer_syntax=syntax
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
    if pdu_type == PduType.P_DATA_TF:
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
    return _HEADER.pack(PduType.P_DATA_TF, length)


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
