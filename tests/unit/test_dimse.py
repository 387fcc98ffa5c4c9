"""dimse.py: the command-set codec and message assembly, against pynetdicom's DIMSE code."""

from __future__ import annotations

from io import BytesIO
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom import pdu as pyn
from pynetdicom import pdu_primitives as prim

from dicomlb.dicom.dimse import (
    MAX_COMMAND_BYTES,
    NO_DATA_SET,
    Command,
    CommandField,
    CommandReceived,
    DataReceived,
    MessageAssembler,
    Status,
    Tag,
    echo_request,
    request_refusal,
    response,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.pdu import (
    Abort,
    AbortReason,
    AbortSource,
    PData,
    PresentationDataValue,
    decode_pdu,
    split_header,
)
from tests.unit.helpers import CT_IMAGE_STORAGE, load_hex, uids

SETTINGS = settings(max_examples=200, deadline=None)
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123"  # odd length: padded with 00H


def pdv(data: bytes, *, context_id: int = 1, command: bool, last: bool) -> PresentationDataValue:
    return PresentationDataValue(context_id=context_id, is_command=command, is_last=last, data=data)


def store_rq(message_id: int = 7) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: CT_IMAGE_STORAGE,
            Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: 0x0000,
            Tag.AFFECTED_SOP_INSTANCE_UID: SOP_INSTANCE,
        }
    )


# ------------------------------------------------------------------ against pynetdicom


def pyn_store_primitive() -> Any:
    req = dimse_primitives.C_STORE()
    req.MessageID = 12
    req.AffectedSOPClassUID = CT_IMAGE_STORAGE
    req.AffectedSOPInstanceUID = SOP_INSTANCE
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = "MOVESCU"
    req.MoveOriginatorMessageID = 3
    return req


def pyn_pdatas(message: Any, max_pdu: int) -> list[bytes]:
    """pynetdicom's P-DATA-TF PDUs for a DIMSE message."""
    return [pyn.P_DATA_TF(p).encode() for p in message.encode_msg(1, max_pdu)]


def our_pdata(wire: bytes) -> PData:
    pdu_type, length = split_header(wire)
    event = decode_pdu(pdu_type, memoryview(wire)[6 : 6 + length])
    assert isinstance(event, PData)
    return event


def test_decode_pynetdicom_c_store_rq_split_across_pdvs() -> None:
    req = pyn_store_primitive()
    data_set = b"\x08\x00\x18\x00" + b"x" * 500  # opaque to the assembler
    req.DataSet = BytesIO(data_set)
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(req)
    # A 64-byte max PDU cuts the command set into several PDVs, the data set into many.
    wires = pyn_pdatas(message, 64)
    assert len(wires) > 10
    assembler = MessageAssembler()
    events = [e for wire in wires for e in assembler.receive(our_pdata(wire).pdvs)]
    command = events[0]
    assert isinstance(command, CommandReceived)
    assert command.context_id == 1
    cmd = command.command
    assert cmd.command_field == CommandField.C_STORE_RQ
    assert cmd.service == "C-STORE"
    assert cmd.message_id == 12
    assert cmd.us(Tag.PRIORITY) == 2
    assert cmd.sop_class_uid == CT_IMAGE_STORAGE
    assert cmd.sop_instance_uid == SOP_INSTANCE
    assert cmd.text(Tag.MOVE_ORIGINATOR_AE_TITLE) == "MOVESCU"
    assert cmd.us(Tag.MOVE_ORIGINATOR_MESSAGE_ID) == 3
    assert cmd.has_data_set
    # Re-encoding what pynetdicom sent gives pynetdicom's bytes exactly.
    assert cmd.encode() == b"".join(
        bytes(p.data) for wire in wires for p in our_pdata(wire).pdvs if p.is_command
    )
    fragments = events[1:]
    assert all(isinstance(e, DataReceived) for e in fragments)
    assert [e.is_last for e in fragments] == [False] * (len(fragments) - 1) + [True]  # type: ignore[union-attr]
    assert b"".join(bytes(e.data) for e in fragments) == data_set  # type: ignore[union-attr]
    assert not assembler.expecting_data


def pyn_decode_command(command: Command, context_id: int = 1) -> Any:
    """pynetdicom's DIMSE primitive for our command's bytes, sent as one command PDV."""
    primitive = prim.P_DATA()
    primitive.presentation_data_value_list = [[context_id, b"\x03" + command.encode()]]
    message = dimse_messages.DIMSEMessage()
    complete = message.decode_msg(primitive)
    assert complete == (not command.has_data_set)
    return message


def test_pynetdicom_decodes_our_c_store_rq() -> None:
    message = pyn_decode_command(store_rq(9))
    assert isinstance(message, dimse_messages.C_STORE_RQ)
    ds = message.command_set
    assert ds.CommandField == 0x0001
    assert ds.MessageID == 9
    assert ds.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert ds.AffectedSOPInstanceUID == SOP_INSTANCE
    assert ds.Priority == 0
    assert ds.CommandDataSetType == 0
    assert ds.CommandGroupLength == len(store_rq(9).encode()) - 12


def test_pynetdicom_decodes_our_response() -> None:
    rsp = response(store_rq(9), Status.OUT_OF_RESOURCES, error_comment="backend pacs is down")
    message = pyn_decode_command(rsp)
    assert isinstance(message, dimse_messages.C_STORE_RSP)
    primitive = message.message_to_primitive()
    assert primitive.MessageIDBeingRespondedTo == 9
    assert primitive.Status == 0xA700
    assert primitive.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert primitive.AffectedSOPInstanceUID == SOP_INSTANCE
    assert message.command_set.ErrorComment == "backend pacs is down"
    assert message.command_set.CommandDataSetType == NO_DATA_SET


def test_our_command_bytes_equal_pynetdicom_for_the_same_fields() -> None:
    req = dimse_primitives.C_STORE()
    req.MessageID = 9
    req.AffectedSOPClassUID = CT_IMAGE_STORAGE
    req.AffectedSOPInstanceUID = SOP_INSTANCE
    req.Priority = 0
    req.DataSet = BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(req)
    wires = pyn_pdatas(message, 16384)
    command = b"".join(bytes(p.data) for w in wires for p in our_pdata(w).pdvs if p.is_command)
    # pynetdicom (and DCMTK, see storescu.hex) write Command Data Set Type 0001H for "a data
    # set follows"; store_rq() says 0000H. PS3.7 E.1: any value but 0101H means present.
    assert store_rq(9).encode() != command
    assert store_rq(9).replace({Tag.COMMAND_DATA_SET_TYPE: 0x0001}).encode() == command
    assert Command.decode(command).has_data_set


def test_echo_request_matches_pynetdicom_and_dcmtk() -> None:
    ours = echo_request(1)
    req = dimse_primitives.C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = dimse_messages.C_ECHO_RQ()
    message.primitive_to_message(req)
    (wire,) = pyn_pdatas(message, 16384)
    assert bytes(our_pdata(wire).pdvs[0].data) == ours.encode()
    dcmtk = our_pdata(load_hex("echoscu.hex")[1][1]).pdvs[0]
    assert Command.decode(dcmtk.data).elements == ours.elements | {0: ours.encode()[8:12]}
    assert Command.decode(dcmtk.data).encode() == bytes(dcmtk.data)


def test_dcmtk_c_store_rq_through_the_assembler() -> None:
    capture = load_hex("storescu.hex")
    assembler = MessageAssembler()
    events = [e for _, wire in capture[1:3] for e in assembler.receive(our_pdata(wire).pdvs)]
    command, data = events
    assert isinstance(command, CommandReceived) and isinstance(data, DataReceived)
    assert command.command.service == "C-STORE"
    assert command.command.sop_class_uid == CT_IMAGE_STORAGE
    assert data.is_last and data.context_id == command.context_id
    assert command.command.encode() == bytes(our_pdata(capture[1][1]).pdvs[0].data)


# ------------------------------------------------------------------ Command codec


def test_command_build_pads_and_sorts() -> None:
    cmd = Command.build(
        {
            Tag.MESSAGE_ID: 1,
            Tag.COMMAND_FIELD: CommandField.C_MOVE_RQ,
            Tag.MOVE_DESTINATION: "STORE",  # AE: odd length padded with a space
            Tag.AFFECTED_SOP_CLASS_UID: "1.2.3",  # UI: padded with 00H
        }
    )
    assert list(cmd.elements) == sorted(cmd.elements)
    assert cmd.elements[Tag.MOVE_DESTINATION] == b"STORE "
    assert cmd.elements[Tag.AFFECTED_SOP_CLASS_UID] == b"1.2.3\x00"
    assert cmd.text(Tag.MOVE_DESTINATION) == "STORE"
    assert cmd.sop_class_uid == "1.2.3"
    assert cmd.has_data_set  # no Command Data Set Type element: treated as present


def test_command_encode_recomputes_group_length() -> None:
    cmd = Command.decode(store_rq().encode())
    stale = Command({**cmd.elements, Tag.COMMAND_GROUP_LENGTH: b"\xff\xff\x00\x00"})
    assert stale.encode() == store_rq().encode()


def test_command_replace() -> None:
    cmd = store_rq(5).replace({Tag.MESSAGE_ID: 99, Tag.PRIORITY: None})
    assert cmd.message_id == 99
    assert Tag.PRIORITY not in cmd.elements
    assert list(cmd.elements) == sorted(cmd.elements)


def _us_from_bytes(cmd: Command) -> dict[int, int]:
    return {
        tag: int.from_bytes(raw, "little") for tag, raw in cmd.elements.items() if len(raw) == 2
    }


def test_us_values_agree_with_the_element_bytes() -> None:
    decoded = Command.decode(store_rq(5).encode())
    patched = decoded.replace({Tag.MESSAGE_ID: 0x1234})  # wire patched in place
    rebuilt = decoded.replace({Tag.PRIORITY: None, Tag.STATUS: 0xC000})  # re-encoded
    plain = Command(dict(decoded.elements))  # no values read yet: from the bytes
    for cmd in (decoded, patched, rebuilt, plain, store_rq(7)):
        for tag in (*cmd.elements, Tag.STATUS, Tag.ERROR_ID):
            assert cmd.us(tag) == _us_from_bytes(cmd).get(tag)
    assert patched.message_id == 0x1234 and patched.encode() != decoded.encode()
    assert rebuilt.status == 0xC000 and rebuilt.us(Tag.PRIORITY) is None


def test_a_repeated_element_reads_as_its_last_value() -> None:
    wire = Command.build({Tag.COMMAND_FIELD: CommandField.C_ECHO_RQ, Tag.MESSAGE_ID: 1}).encode()
    again = wire + bytes.fromhex("00001001") + (2).to_bytes(4, "little") + (9).to_bytes(2, "little")
    cmd = Command.decode(again)
    assert cmd.message_id == 9 == cmd.us(Tag.MESSAGE_ID)


def test_unknown_command_field() -> None:
    cmd = Command.build({Tag.COMMAND_FIELD: 0x0042})
    assert cmd.service == "0x0042"
    assert CommandField.N_EVENT_REPORT_RSP.service == "N-EVENT-REPORT"
    assert CommandField.C_STORE_RSP.is_response and not CommandField.C_STORE_RQ.is_response


@SETTINGS
@given(
    us_values=st.dictionaries(
        st.sampled_from(
            [Tag.MESSAGE_ID, Tag.PRIORITY, Tag.STATUS, Tag.COMMAND_DATA_SET_TYPE, Tag.ERROR_ID]
        ),
        st.integers(0, 0xFFFF),
    ),
    uid_values=st.dictionaries(
        st.sampled_from(
            [
                Tag.AFFECTED_SOP_CLASS_UID,
                Tag.AFFECTED_SOP_INSTANCE_UID,
                Tag.REQUESTED_SOP_CLASS_UID,
                Tag.REQUESTED_SOP_INSTANCE_UID,
            ]
        ),
        uids,
    ),
    command_field=st.sampled_from(CommandField),
)
def test_command_round_trip(
    us_values: dict[int, int], uid_values: dict[int, str], command_field: CommandField
) -> None:
    values: dict[int, int | str | bytes] = {
        Tag.COMMAND_FIELD: command_field,
        **us_values,
        **uid_values,
    }
    cmd = Command.build(values)
    wire = cmd.encode()
    assert len(wire) % 2 == 0
    again = Command.decode(wire)
    assert {t: v for t, v in again.elements.items() if t != 0} == dict(cmd.elements)
    assert again.encode() == wire
    for tag, value in us_values.items():
        assert again.us(tag) == value
    for tag, value in uid_values.items():
        assert again.text(tag) == value
    assert again.command_field == command_field


@SETTINGS
@given(garbage=st.binary(max_size=200))
def test_command_decode_garbage(garbage: bytes) -> None:
    try:
        Command.decode(garbage)
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00\x00\x00\x01",  # truncated element header
        b"\x08\x00\x10\x00\x02\x00\x00\x00\x01\x00",  # group 0008 in a command set
        b"\x00\x00\x00\x01\x09\x00\x00\x00\x01\x00",  # length overruns
        b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00",  # no Command Field
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x00\x00\x00",  # Command Field not US
    ],
)
def test_command_decode_errors(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        Command.decode(wire)
    assert err.value.reply == Abort(
        source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU_PARAMETER
    )


# ------------------------------------------------------------------ response()


def test_response_fields() -> None:
    rsp = response(store_rq(41), Status.SUCCESS)
    assert rsp.command_field == CommandField.C_STORE_RSP
    assert rsp.responded_to == 41
    assert rsp.message_id == 0 and Tag.MESSAGE_ID not in rsp.elements
    assert rsp.status == 0
    assert not rsp.has_data_set
    assert rsp.sop_class_uid == CT_IMAGE_STORAGE
    assert rsp.sop_instance_uid == SOP_INSTANCE
    assert rsp.error_comment is None


def test_response_to_echo_has_no_instance() -> None:
    rsp = response(echo_request(3), Status.SUCCESS)
    assert rsp.command_field == CommandField.C_ECHO_RSP
    assert rsp.sop_class_uid == "1.2.840.10008.1.1"
    assert Tag.AFFECTED_SOP_INSTANCE_UID not in rsp.elements


def test_response_uses_requested_uids_as_affected() -> None:
    request = Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.N_SET_RQ,
            Tag.MESSAGE_ID: 2,
            Tag.REQUESTED_SOP_CLASS_UID: "1.2.3",
            Tag.REQUESTED_SOP_INSTANCE_UID: "1.2.3.4",
        }
    )
    rsp = response(request, Status.PROCESSING_FAILURE)
    assert rsp.text(Tag.AFFECTED_SOP_CLASS_UID) == "1.2.3"
    assert rsp.text(Tag.AFFECTED_SOP_INSTANCE_UID) == "1.2.3.4"


def test_error_comment_is_truncated_to_64() -> None:
    rsp = response(store_rq(), Status.PROCESSING_FAILURE, error_comment="x" * 65 + "tail")
    assert rsp.error_comment == "x" * 64
    assert len(rsp.elements[Tag.ERROR_COMMENT]) == 64
    odd = response(store_rq(), Status.PROCESSING_FAILURE, error_comment="odd")
    assert odd.elements[Tag.ERROR_COMMENT] == b"odd "  # LO pads with a space


# ------------------------------------------------------------------ MessageAssembler


def test_command_split_across_pdvs_and_pdus() -> None:
    wire = store_rq(3).encode()
    assembler = MessageAssembler()
    assert assembler.receive([pdv(wire[:10], command=True, last=False)]) == []
    assert assembler.receive([pdv(wire[10:11], command=True, last=False)]) == []
    (event,) = assembler.receive([pdv(wire[11:], command=True, last=True)])
    assert event == CommandReceived(context_id=1, command=Command.decode(wire))
    assert assembler.expecting_data


def test_data_fragments_stream_through() -> None:
    assembler = MessageAssembler()
    events = assembler.receive(
        [
            pdv(store_rq().encode(), command=True, last=True),
            pdv(b"part1", command=False, last=False),
        ]
    )
    assert [type(e) for e in events] == [CommandReceived, DataReceived]
    assert events[1] == DataReceived(context_id=1, data=b"part1", is_last=False)
    assert assembler.receive([pdv(b"part2", command=False, last=False)]) == [
        DataReceived(context_id=1, data=b"part2", is_last=False)
    ]
    assert assembler.receive([pdv(b"", command=False, last=True)]) == [
        DataReceived(context_id=1, data=b"", is_last=True)
    ]
    assert not assembler.expecting_data
    # The next message may follow at once, on another context.
    (echo,) = assembler.receive(
        [pdv(echo_request(2).encode(), context_id=3, command=True, last=True)]
    )
    assert isinstance(echo, CommandReceived) and echo.context_id == 3
    assert not assembler.expecting_data


def test_data_fragment_is_passed_as_the_same_view() -> None:
    buffer = memoryview(b"0123456789")
    assembler = MessageAssembler()
    assembler.receive([pdv(store_rq().encode(), command=True, last=True)])
    (event,) = assembler.receive([pdv(buffer[2:5], command=False, last=True)])  # type: ignore[arg-type]
    assert isinstance(event, DataReceived) and event.data.obj is buffer.obj  # type: ignore[union-attr]


INVALID = Abort(source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU_PARAMETER)


def test_data_without_command() -> None:
    with pytest.raises(RemoteProtocolError, match="without a command") as err:
        MessageAssembler().receive([pdv(b"data", command=False, last=True)])
    assert err.value.reply == INVALID


def test_data_after_a_command_without_data_set() -> None:
    assembler = MessageAssembler()
    assembler.receive([pdv(echo_request(1).encode(), command=True, last=True)])
    with pytest.raises(RemoteProtocolError, match="without a command") as err:
        assembler.receive([pdv(b"data", command=False, last=True)])
    assert err.value.reply == INVALID


def test_command_while_data_expected() -> None:
    assembler = MessageAssembler()
    assembler.receive([pdv(store_rq().encode(), command=True, last=True)])
    with pytest.raises(RemoteProtocolError, match="while a data set was expected") as err:
        assembler.receive([pdv(echo_request(2).encode(), command=True, last=True)])
    assert err.value.reply == INVALID


def test_data_on_another_context() -> None:
    assembler = MessageAssembler()
    assembler.receive([pdv(store_rq().encode(), command=True, last=True)])
    with pytest.raises(RemoteProtocolError, match="context 3, its command came on 1") as err:
        assembler.receive([pdv(b"data", context_id=3, command=False, last=True)])
    assert err.value.reply == INVALID


def test_oversize_command() -> None:
    assembler = MessageAssembler()
    chunk = bytes(MAX_COMMAND_BYTES // 2)
    assembler.receive([pdv(chunk, command=True, last=False)] * 2)
    with pytest.raises(RemoteProtocolError, match=f"larger than {MAX_COMMAND_BYTES}") as err:
        assembler.receive([pdv(b"x", command=True, last=False)])
    assert err.value.reply == INVALID


def test_undecodable_command() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        MessageAssembler().receive([pdv(b"\x00\x00\x00", command=True, last=True)])
    assert err.value.reply == INVALID


@SETTINGS
@given(
    data=st.binary(max_size=2000),
    command_cuts=st.lists(st.integers(0, 200), max_size=5),
    data_cuts=st.lists(st.integers(0, 2000), max_size=5),
)
def test_message_at_any_fragmentation(
    data: bytes, command_cuts: list[int], data_cuts: list[int]
) -> None:
    command = store_rq().encode()

    def pieces(raw: bytes, cuts: list[int], *, is_command: bool) -> list[PresentationDataValue]:
        points = sorted({min(c, len(raw)) for c in cuts} - {0, len(raw)})
        bounds = [0, *points, len(raw)]
        return [pdv(raw[a:b], command=is_command, last=b == len(raw)) for a, b in pairwise(bounds)]

    assembler = MessageAssembler()
    events = assembler.receive(pieces(command, command_cuts, is_command=True))
    events += assembler.receive(pieces(data, data_cuts, is_command=False))
    assert isinstance(events[0], CommandReceived)
    assert events[0].command.encode() == command
    fragments = events[1:]
    assert all(isinstance(f, DataReceived) for f in fragments)
    assert b"".join(bytes(f.data) for f in fragments) == data  # type: ignore[union-attr]
    assert fragments[-1].is_last  # type: ignore[union-attr]
    assert not assembler.expecting_data


def test_dataset_is_never_decoded() -> None:
    # A data set that is not valid DICOM at all passes through untouched.
    assembler = MessageAssembler()
    assembler.receive([pdv(store_rq().encode(), command=True, last=True)])
    (event,) = assembler.receive([pdv(b"\xff" * 7, command=False, last=True)])
    assert isinstance(event, DataReceived) and bytes(event.data) == b"\xff" * 7


def test_command_fragments_on_two_contexts() -> None:
    wire = store_rq().encode()
    assembler = MessageAssembler()
    assembler.receive([pdv(wire[:10], context_id=1, command=True, last=False)])
    with pytest.raises(RemoteProtocolError, match="command fragment on context 3") as err:
        assembler.receive([pdv(wire[10:], context_id=3, command=True, last=True)])
    assert err.value.reply == Abort(
        source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU_PARAMETER
    )


FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
VERIFICATION = "1.2.840.10008.1.1"


def _request(field: int, sop_class: str, *, data_set: bool) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: sop_class,
            Tag.COMMAND_FIELD: field,
            Tag.MESSAGE_ID: 1,
            Tag.COMMAND_DATA_SET_TYPE: 0x0000 if data_set else NO_DATA_SET,
        }
    )


@pytest.mark.parametrize(
    ("command", "abstract", "status", "reason"),
    [
        # A C-FIND on a context accepted as CT storage was relayed as if it were a C-STORE.
        (
            _request(CommandField.C_FIND_RQ, FIND_MODEL, data_set=True),
            CT_IMAGE_STORAGE,
            Status.SOP_CLASS_NOT_SUPPORTED,
            f"SOP class {FIND_MODEL} on a context for {CT_IMAGE_STORAGE}",
        ),
        (
            _request(CommandField.C_STORE_RQ, "1.2.840.10008.5.1.4.1.1.4", data_set=True),
            CT_IMAGE_STORAGE,
            Status.SOP_CLASS_NOT_SUPPORTED,
            "SOP class 1.2.840.10008.5.1.4.1.1.4 on a context",
        ),
        (
            _request(CommandField.C_STORE_RQ, "", data_set=True),
            CT_IMAGE_STORAGE,
            Status.SOP_CLASS_NOT_SUPPORTED,
            "SOP class (none)",
        ),
        # Data Set Type 0x0101 on a C-STORE-RQ: there is nothing to store.
        (
            _request(CommandField.C_STORE_RQ, CT_IMAGE_STORAGE, data_set=False),
            CT_IMAGE_STORAGE,
            Status.CANNOT_UNDERSTAND,
            "C-STORE without a data set",
        ),
        (
            _request(CommandField.C_FIND_RQ, FIND_MODEL, data_set=False),
            FIND_MODEL,
            Status.CANNOT_UNDERSTAND,
            "C-FIND without a data set",
        ),
        (
            _request(CommandField.C_ECHO_RQ, VERIFICATION, data_set=True),
            VERIFICATION,
            Status.CANNOT_UNDERSTAND,
            "C-ECHO with a data set",
        ),
        (
            _request(0x0042, CT_IMAGE_STORAGE, data_set=True),
            CT_IMAGE_STORAGE,
            Status.UNRECOGNIZED_OPERATION,
            "unknown command field 0x0042",
        ),
    ],
)
def test_request_refusal(command: Command, abstract: str, status: Status, reason: str) -> None:
    refusal = request_refusal(command, abstract)
    assert refusal is not None
    assert refusal[0] == status
    assert refusal[1].startswith(reason)


@pytest.mark.parametrize(
    ("command", "abstract"),
    [
        (store_rq(), CT_IMAGE_STORAGE),
        (_request(CommandField.C_FIND_RQ, FIND_MODEL, data_set=True), FIND_MODEL),
        (echo_request(3), VERIFICATION),
        # N-ACTION names its class in Requested SOP Class UID; its data set is optional.
        (
            Command.build(
                {
                    Tag.REQUESTED_SOP_CLASS_UID: "1.2.840.10008.1.20.1",
                    Tag.COMMAND_FIELD: CommandField.N_ACTION_RQ,
                    Tag.MESSAGE_ID: 1,
                    Tag.COMMAND_DATA_SET_TYPE: NO_DATA_SET,
                }
            ),
            "1.2.840.10008.1.20.1",
        ),
    ],
)
def test_request_refusal_lets_matching_requests_pass(command: Command, abstract: str) -> None:
    assert request_refusal(command, abstract) is None


def test_related_general_sop_class_may_carry_its_specialisation() -> None:
    """PS3.4 B.3.1.4: an instance of a specialised class may travel on the context of a
    related general class the client named in common extended negotiation."""
    general = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    special = "1.2.840.10008.5.1.4.1.1.88.65"  # Chest CAD SR
    command = _request(CommandField.C_STORE_RQ, special, data_set=True)
    assert request_refusal(command, general) is not None
    assert request_refusal(command, general, {special: frozenset({general})}) is None
