"""DIMSE (PS3.7): the command-set codec (group 0000) and message assembly from PDVs.

Commands are small and decoded whole; data sets are never decoded here: `MessageAssembler`
passes their fragments through as they arrive so they can be streamed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import cast

from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.pdu import Abort, AbortReason, AbortSource, PresentationDataValue

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
MAX_COMMAND_BYTES = 1 << 16


class CommandField(enum.IntEnum):
    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF

    @property
    def service(self) -> str:
        """The DIMSE service name, e.g. "C-STORE", as used in routes and logs."""
        return self.name.rsplit("_", 1)[0].replace("_", "-")

    @property
    def is_response(self) -> bool:
        return bool(self & 0x8000)


class Status(enum.IntEnum):
    """PS3.7 Annex C and PS3.4 statuses dicomlb sends itself."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PENDING = 0xFF00


class Tag(enum.IntEnum):
    """Command-set elements (PS3.7 E.1)."""

    COMMAND_GROUP_LENGTH = 0x00000000
    AFFECTED_SOP_CLASS_UID = 0x00000002
    REQUESTED_SOP_CLASS_UID = 0x00000003
    COMMAND_FIELD = 0x00000100
    MESSAGE_ID = 0x00000110
    MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
    MOVE_DESTINATION = 0x00000600
    PRIORITY = 0x00000700
    COMMAND_DATA_SET_TYPE = 0x00000800
    STATUS = 0x00000900
    OFFENDING_ELEMENT = 0x00000901
    ERROR_COMMENT = 0x00000902
    ERROR_ID = 0x00000903
    AFFECTED_SOP_INSTANCE_UID = 0x00001000
    REQUESTED_SOP_INSTANCE_UID = 0x00001001
    EVENT_TYPE_ID = 0x00001002
    ATTRIBUTE_IDENTIFIER_LIST = 0x00001005
    ACTION_TYPE_ID = 0x00001008
    NUMBER_OF_REMAINING_SUBOPERATIONS = 0x00001020
    NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
    NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
    NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023
    MOVE_ORIGINATOR_AE_TITLE = 0x00001030
    MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031


# Python 3.11's EnumType.__getattr__ puts every `Tag.X` lookup through a Python-level hook
# (some twenty times a global's cost); what is read for every message uses these.
_GROUP_LENGTH = Tag.COMMAND_GROUP_LENGTH
_COMMAND_FIELD = Tag.COMMAND_FIELD
_MESSAGE_ID = Tag.MESSAGE_ID
_RESPONDED_TO = Tag.MESSAGE_ID_BEING_RESPONDED_TO
_DATA_SET_TYPE = Tag.COMMAND_DATA_SET_TYPE
_STATUS = Tag.STATUS
_AFFECTED_SOP_CLASS = Tag.AFFECTED_SOP_CLASS_UID
_REQUESTED_SOP_CLASS = Tag.REQUESTED_SOP_CLASS_UID
_AFFECTED_SOP_INSTANCE = Tag.AFFECTED_SOP_INSTANCE_UID
_REQUESTED_SOP_INSTANCE = Tag.REQUESTED_SOP_INSTANCE_UID

_US_TAGS = frozenset(
    {
        Tag.COMMAND_FIELD,
        Tag.MESSAGE_ID,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO,
        Tag.PRIORITY,
        Tag.COMMAND_DATA_SET_TYPE,
        Tag.STATUS,
        Tag.ERROR_ID,
        Tag.EVENT_TYPE_ID,
        Tag.ACTION_TYPE_ID,
        Tag.NUMBER_OF_REMAINING_SUBOPERATIONS,
        Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS,
        Tag.NUMBER_OF_FAILED_SUBOPERATIONS,
        Tag.NUMBER_OF_WARNING_SUBOPERATIONS,
        Tag.MOVE_ORIGINATOR_MESSAGE_ID,
    }
)
_UID_TAGS = frozenset(
    {
        Tag.AFFECTED_SOP_CLASS_UID,
        Tag.REQUESTED_SOP_CLASS_UID,
        Tag.AFFECTED_SOP_INSTANCE_UID,
        Tag.REQUESTED_SOP_INSTANCE_UID,
    }
)
NO_DATA_SET = 0x0101  # PS3.7 E.1: Command Data Set Type "null"
DATA_SET_PRESENT = 0x0000


def _invalid(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        what,
        reply=Abort(
            source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU_PARAMETER
        ),
    )


def _encode_value(tag: int, value: int | str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return _US.pack(value)
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if tag in _UID_TAGS else b" "
    return raw


def _numbers(elements: Mapping[int, bytes]) -> dict[int, int]:
    """The value of every two-byte element as US (what `Command.us` reads)."""
    return {tag: _US.unpack(raw)[0] for tag, raw in elements.items() if len(raw) == 2}


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command set: element tag -> raw value bytes, in tag order."""

    elements: Mapping[int, bytes] = field(default_factory=dict)
    # (wire bytes, value offset per tag) when this command was decoded from bytes that
    # encode() would reproduce exactly: relaying then reuses them, and replace() of a US
    # value (Message ID) patches two bytes instead of re-encoding the set.
    wire: tuple[bytes, Mapping[int, int]] | None = field(default=None, compare=False, repr=False)
    # The two-byte elements' values, read once: a relayed message asks for its command
    # field, Message ID, data set type and status a score of times.
    numbers: Mapping[int, int] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, values: Mapping[int, int | str | bytes]) -> Command:
        """A command from typed values (ints are US, strings UI/AE/LO)."""
        elements = {tag: _encode_value(tag, value) for tag, value in sorted(values.items())}
        return cls(elements, None, _numbers(elements))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Command:
        """Decode an implicit VR little endian group-0000 command set."""
        elements: dict[int, bytes] = {}
        offsets: dict[int, int] = {}
        numbers: dict[int, int] = {}
        raw = bytes(data)
        pos, end = 0, len(raw)
        count = 0
        unpack = _ELEMENT.unpack_from
        while pos < end:
            if end - pos < 8:
                raise _invalid("command set: truncated element header")
            group, elem, length = unpack(raw, pos)
            pos += 8
            if group != 0 or pos + length > end:
                raise _invalid(f"command set: bad element ({group:04X},{elem:04X}) length {length}")
            elements[elem] = raw[pos : pos + length]
            offsets[elem] = pos
            if length == 2:
                numbers[elem] = raw[pos] | raw[pos + 1] << 8
            pos += length
            count += 1
        # encode() gives these bytes back when the group length comes first and is right
        # and no element repeats; otherwise it must rebuild them.
        group_length = elements.get(_GROUP_LENGTH)
        exact = (
            offsets.get(_GROUP_LENGTH) == 8
            and group_length is not None
            and len(group_length) == 4
            and _UL.unpack(group_length)[0] == end - 12
            and count == len(elements)
        )
        if count != len(elements):  # a repeated element: the last one counts, as in elements
            numbers = _numbers(elements)
        if _COMMAND_FIELD not in numbers:
            raise _invalid("command set without a Command Field")
        return cls(elements, (raw, offsets) if exact else None, numbers)

    def encode(self) -> bytes:
        """Implicit VR little endian bytes, with a recomputed Command Group Length."""
        if self.wire is not None:
            return self.wire[0]
        body = b"".join(
            _ELEMENT.pack(0, tag, len(value)) + value
            for tag, value in self.elements.items()
            if tag != _GROUP_LENGTH
        )
        return _ELEMENT.pack(0, 0, 4) + _UL.pack(len(body)) + body

    def replace(self, values: Mapping[int, int | str | bytes | None]) -> Command:
        """A copy with `values` set (None removes the element)."""
        numbers = self.numbers if self.numbers is not None else _numbers(self.elements)
        if self.wire is not None and all(
            isinstance(value, int) and tag in numbers for tag, value in values.items()
        ):
            # Only existing US values change (the relay's Message ID rewrite): patch the
            # wire bytes in place, same length, same order.
            raw, offsets = self.wire
            buffer = bytearray(raw)
            patched = dict(self.elements)
            changed = dict(numbers)
            for tag, value in values.items():
                packed = _US.pack(value)
                at = offsets[tag]
                buffer[at : at + 2] = packed
                patched[tag] = packed
                changed[tag] = cast(int, value)
            return Command(patched, (bytes(buffer), offsets), changed)
        elements = dict(self.elements)
        for tag, value in values.items():
            if value is None:
                elements.pop(tag, None)
            else:
                elements[tag] = _encode_value(tag, value)
        ordered = dict(sorted(elements.items()))
        return Command(ordered, None, _numbers(ordered))

    def us(self, tag: int) -> int | None:
        numbers = self.numbers
        if numbers is not None:
            return numbers.get(tag)
        raw = self.elements.get(tag)
        return _US.unpack(raw)[0] if raw is not None and len(raw) == 2 else None

    def text(self, tag: int) -> str | None:
        raw = self.elements.get(tag)
        return None if raw is None else raw.decode("ascii", "replace").strip(" \x00")

    @property
    def command_field(self) -> int:
        return self.us(_COMMAND_FIELD) or 0

    @property
    def service(self) -> str:
        try:
            return CommandField(self.command_field).service
        except ValueError:
            return f"0x{self.command_field:04X}"

    @property
    def message_id(self) -> int:
        return self.us(_MESSAGE_ID) or 0

    @property
    def responded_to(self) -> int:
        return self.us(_RESPONDED_TO) or 0

    @property
    def has_data_set(self) -> bool:
        return self.us(_DATA_SET_TYPE) != NO_DATA_SET

    @property
    def status(self) -> int | None:
        return self.us(_STATUS)

    @property
    def sop_class_uid(self) -> str:
        return self.text(_AFFECTED_SOP_CLASS) or self.text(_REQUESTED_SOP_CLASS) or ""

    @property
    def sop_instance_uid(self) -> str:
        return self.text(_AFFECTED_SOP_INSTANCE) or self.text(_REQUESTED_SOP_INSTANCE) or ""

    @property
    def error_comment(self) -> str | None:
        return self.text(Tag.ERROR_COMMENT)


def response(request: Command, status: int, *, error_comment: str | None = None) -> Command:
    """The response dicomlb itself gives to `request` (no data set)."""
    values: dict[int, int | str | bytes] = {
        Tag.COMMAND_FIELD: request.command_field | 0x8000,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        Tag.COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        Tag.STATUS: status,
    }
    if request.sop_class_uid:
        values[Tag.AFFECTED_SOP_CLASS_UID] = request.sop_class_uid
    if request.sop_instance_uid:
        values[Tag.AFFECTED_SOP_INSTANCE_UID] = request.sop_instance_uid
    if error_comment:
        # PS3.7 C.4: Error Comment is LO, at most 64 characters.
        values[Tag.ERROR_COMMENT] = error_comment[:64]
    return Command.build(values)


# PS3.7 9.3 and 10.3: requests whose data set (the instance, the identifier) is mandatory,
# and those that have none.
_DATA_SET_REQUIRED = frozenset(
    {CommandField.C_STORE_RQ, CommandField.C_FIND_RQ, CommandField.C_MOVE_RQ, CommandField.C_GET_RQ}
)
_NO_DATA_SET = frozenset({CommandField.C_ECHO_RQ})
_REQUESTS = frozenset(field for field in CommandField if not field.is_response)


def request_refusal(
    command: Command,
    abstract_syntax: str,
    related: Mapping[str, frozenset[str]] = MappingProxyType({}),
) -> tuple[Status, str] | None:
    """The failure status and reason a client's request gets instead of being relayed, or
    None when it may be relayed on its presentation context (`abstract_syntax`).

    `related` maps a SOP class to the related general SOP classes the client named for it
    (PS3.7 D.3.3.6): PS3.4 B.3.1.4 lets such an instance travel on their contexts."""
    field = command.command_field
    if field not in _REQUESTS:
        return Status.UNRECOGNIZED_OPERATION, f"unknown command field 0x{field:04X}"
    if field in _DATA_SET_REQUIRED and not command.has_data_set:
        # PS3.4 B.2.3, C.4: "cannot understand" / "unable to process" (0xC000).
        return Status.CANNOT_UNDERSTAND, f"{command.service} without a data set"
    if field in _NO_DATA_SET and command.has_data_set:
        return Status.CANNOT_UNDERSTAND, f"{command.service} with a data set"
    sop_class = command.sop_class_uid
    if sop_class != abstract_syntax and abstract_syntax not in related.get(sop_class, ()):
        # PS3.7 9.1: the SOP class of a request is the abstract syntax of its presentation
        # context. Refused as DCMTK's dcmqrscp refuses a SOP class it does not serve: the
        # association stays, the data set is read and dropped.
        return Status.SOP_CLASS_NOT_SUPPORTED, (
            f"SOP class {sop_class or '(none)'} on a context for {abstract_syntax}"
        )
    return None


def echo_request(message_id: int) -> Command:
    """A C-ECHO-RQ (Verification SOP class)."""
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.1.1",
            Tag.COMMAND_FIELD: CommandField.C_ECHO_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        }
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandReceived:
    context_id: int
    command: Command


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    context_id: int
    data: bytes | memoryview = field(repr=False)
    is_last: bool


DimseEvent = CommandReceived | DataReceived


class MessageAssembler:
    """Turns PDVs into DIMSE events: whole commands, and data-set fragments as they come."""

    def __init__(self) -> None:
        self._command: list[bytes] = []
        self._command_len = 0
        self._command_context: int | None = None  # set while a command is incomplete
        self._data_context: int | None = None  # set while a data set is expected

    @property
    def expecting_data(self) -> bool:
        return self._data_context is not None

    def receive(self, pdvs: Iterable[PresentationDataValue]) -> list[DimseEvent]:
        """Events completed by `pdvs` (one P-DATA-TF's values)."""
        events: list[DimseEvent] = []
        for pdv in pdvs:
            if pdv.is_command:
                if self._data_context is not None:
                    raise _invalid("a command fragment arrived while a data set was expected")
                if self._command_context not in (None, pdv.context_id):
                    raise _invalid(
                        f"command fragment on context {pdv.context_id}, "
                        f"its first fragment came on {self._command_context}"
                    )
                self._command_context = pdv.context_id
                self._command.append(bytes(pdv.data))
                self._command_len += len(pdv.data)
                if self._command_len > MAX_COMMAND_BYTES:
                    raise _invalid(f"command set larger than {MAX_COMMAND_BYTES} bytes")
                if pdv.is_last:
                    command = Command.decode(b"".join(self._command))
                    self._command.clear()
                    self._command_len = 0
                    self._command_context = None
                    if command.has_data_set:
                        self._data_context = pdv.context_id
                    events.append(CommandReceived(context_id=pdv.context_id, command=command))
            else:
                if self._data_context is None:
                    raise _invalid("a data set fragment arrived without a command announcing it")
                if pdv.context_id != self._data_context:
                    raise _invalid(
                        f"data set fragment on context {pdv.context_id}, "
                        f"its command came on {self._data_context}"
                    )
                if pdv.is_last:
                    self._data_context = None
                events.append(
                    DataReceived(context_id=pdv.context_id, data=pdv.data, is_last=pdv.is_last)
                )
        return events
