"""dimse.py fuzzed: messages sent by one association core and assembled behind the other at
any split and any maximum PDU; random PDV sequences give events a model agrees with, or the
documented RemoteProtocolError; work per byte bounded."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from dicomlb.dicom.dimse import (
    DATA_SET_PRESENT,
    NO_DATA_SET,
    Command,
    CommandField,
    CommandReceived,
    DataReceived,
    DimseEvent,
    MessageAssembler,
    Tag,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.pdu import Abort, PData, PresentationDataValue
from tests.unit.fuzzing import assert_linear, fast_and_slow, small_pieces
from tests.unit.helpers import AssociationPair, cut_lists, feed_split, uids

commands = st.builds(
    lambda field, message_id, data_set, sop_class, sop_instance: Command.build(
        {
            Tag.COMMAND_FIELD: field,
            Tag.MESSAGE_ID: message_id,
            Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT if data_set else NO_DATA_SET,
            Tag.AFFECTED_SOP_CLASS_UID: sop_class,
            Tag.AFFECTED_SOP_INSTANCE_UID: sop_instance,
        }
    ),
    st.sampled_from(CommandField),
    st.integers(0, 0xFFFF),
    st.booleans(),
    uids,
    uids,
)
# A message: its command, and (when the command announces one) its data set as the sender
# streams it, in pieces (send_data with is_last on the final piece only).
messages = st.tuples(commands, st.lists(st.binary(max_size=3000), min_size=1, max_size=3))


def _messages_round_trip_at_any_split(
    sent: list[tuple[Command, list[bytes]]], peer_max_pdu: int, cuts: list[int]
) -> None:
    pair = AssociationPair(acceptor_max_pdu=peer_max_pdu)
    pair.associate()
    wire = bytearray()
    for command, pieces in sent:
        for buffer in pair.requestor.send_data(1, command.encode(), is_command=True, is_last=True):
            wire += buffer
        if command.has_data_set:
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                for buffer in pair.requestor.send_data(1, piece, is_command=False, is_last=last):
                    wire += buffer
    assembler = MessageAssembler()
    events: list[DimseEvent] = []
    for event in feed_split(pair.acceptor, bytes(wire), cuts):
        assert isinstance(event, PData)
        assert sum(len(v.data) + 6 for v in event.pdvs) <= (peer_max_pdu or 1 << 21)
        events += assembler.receive(event.pdvs)
    # Back to messages: each command, then its data set joined.
    got: list[tuple[Command, bytes | None]] = []
    for event in events:
        if isinstance(event, CommandReceived):
            got.append((event.command, None))
        else:
            command, data = got[-1]
            got[-1] = (command, (data or b"") + bytes(event.data))
    expected = [(c, b"".join(p) if c.has_data_set else None) for c, p in sent]
    assert [(c.encode(), d) for c, d in got] == [(c.encode(), d) for c, d in expected]
    assert not assembler.expecting_data


test_messages_round_trip_at_any_split, test_messages_round_trip_at_any_split_slow = fast_and_slow(
    _messages_round_trip_at_any_split,
    sent=st.lists(messages, min_size=1, max_size=4),
    peer_max_pdu=st.sampled_from([1024, 1500, 4096, 16384, 0]),
    cuts=cut_lists,
)


# ------------------------------------------------------------------ random PDV sequences

_COMMAND_BYTES = st.sampled_from(
    [
        Command.build({Tag.COMMAND_FIELD: 1, Tag.COMMAND_DATA_SET_TYPE: 0}).encode(),
        Command.build({Tag.COMMAND_FIELD: 0x30, Tag.COMMAND_DATA_SET_TYPE: 0x0101}).encode(),
    ]
)
pdvs = st.builds(
    PresentationDataValue,
    context_id=st.sampled_from([1, 3]),
    is_command=st.booleans(),
    is_last=st.booleans(),
    data=st.one_of(_COMMAND_BYTES, st.binary(max_size=40)),
)


def _random_pdvs_follow_the_model(batches: list[list[PresentationDataValue]]) -> None:
    """Whatever the PDVs, the assembler gives what a plain reading of PS3.7 E.2 gives, or
    RemoteProtocolError with an A-ABORT; nothing else escapes."""
    assembler = MessageAssembler()
    command: list[bytes] = []
    command_context: int | None = None
    data_context: int | None = None
    for batch in batches:
        try:
            events = assembler.receive(batch)
        except RemoteProtocolError as err:
            assert isinstance(err.reply, Abort)
            return
        expected: list[tuple[object, ...]] = []
        for pdv in batch:
            if pdv.is_command:
                assert data_context is None and command_context in (None, pdv.context_id)
                command_context = pdv.context_id
                command.append(bytes(pdv.data))
                if pdv.is_last:
                    decoded = Command.decode(b"".join(command))  # it did not raise above
                    expected.append((pdv.context_id, decoded.encode()))
                    command, command_context = [], None
                    data_context = pdv.context_id if decoded.has_data_set else None
            else:
                assert data_context == pdv.context_id
                expected.append((pdv.context_id, bytes(pdv.data), pdv.is_last))
                if pdv.is_last:
                    data_context = None
        got = [
            (e.context_id, e.command.encode())
            if isinstance(e, CommandReceived)
            else (e.context_id, bytes(e.data), e.is_last)
            for e in events
        ]
        assert got == expected
        assert assembler.expecting_data is (data_context is not None)


test_random_pdvs_follow_the_model, test_random_pdvs_follow_the_model_slow = fast_and_slow(
    _random_pdvs_follow_the_model,
    batches=st.lists(st.lists(pdvs, min_size=1, max_size=4), max_size=6),
)


# ------------------------------------------------------------------ work per byte


def _stream(size: int) -> list[PresentationDataValue]:
    """C-STOREs whose commands and data sets come in PDVs of 1..16 bytes, `size` bytes."""
    command = Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
            Tag.MESSAGE_ID: 1,
            Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
            Tag.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.5.1.4.1.1.2",
        }
    ).encode()
    out: list[PresentationDataValue] = []
    total = 0
    while total < size:
        for is_command, raw in ((True, command), (False, bytes(4000))):
            pieces = small_pieces(raw, seed=total)
            for i, piece in enumerate(pieces):
                out.append(
                    PresentationDataValue(
                        context_id=1,
                        is_command=is_command,
                        is_last=i == len(pieces) - 1,
                        data=piece,
                    )
                )
            total += len(raw)
    return out


@pytest.mark.parametrize("per_call", [1, 16])
def test_work_grows_linearly_with_the_bytes(per_call: int) -> None:
    def run(n: int) -> None:
        values = _stream(n)
        assembler = MessageAssembler()
        for i in range(0, len(values), per_call):
            assembler.receive(values[i : i + per_call])

    assert_linear(run, 64 * 1024)


def test_a_large_command_in_small_pieces_is_linear() -> None:
    # A command set up to MAX_COMMAND_BYTES, one element with a long value, 1..16 bytes a PDV.
    def run(n: int) -> None:
        raw = Command.build({Tag.COMMAND_FIELD: 1, 0x0902: b"x" * (n - 40)}).encode()
        pieces = small_pieces(raw, seed=n)
        assembler = MessageAssembler()
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            assembler.receive(
                [PresentationDataValue(context_id=1, is_command=True, is_last=last, data=piece)]
            )

    assert_linear(run, 16 * 1024)


def test_data_received_is_the_fragment_not_a_copy() -> None:
    data = memoryview(b"abc")
    assembler = MessageAssembler()
    assembler.receive(
        [
            PresentationDataValue(
                context_id=1,
                is_command=True,
                is_last=True,
                data=Command.build({Tag.COMMAND_FIELD: 1, Tag.COMMAND_DATA_SET_TYPE: 0}).encode(),
            )
        ]
    )
    (event,) = assembler.receive(
        [PresentationDataValue(context_id=1, is_command=False, is_last=True, data=data)]
    )
    assert isinstance(event, DataReceived) and event.data is data
