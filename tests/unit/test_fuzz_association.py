"""association.py and pdu.py under a hypothesis state machine and byte-level fuzzing.

A requestor and an acceptor core are joined by two wires that carry what each `send`s. The
machine takes random legal and illegal steps (sends in any state, deliveries cut anywhere,
garbage, truncation, ARTIM expiry, EOF) and checks after each: the state is a PS3.8 state; an
illegal send raises LocalProtocolError and changes nothing; what a side receives is what the
other sent; only RemoteProtocolError escapes the receiving side, with a PDU to answer; the
bytes a core holds stay under the largest PDU it accepts; after EOF or an abort, nothing more
is indicated. Then: mutated PDUs, and work per byte bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dicomlb.dicom.association import (
    MAX_CONTROL_PDU,
    Association,
    AssocState,
    ConnectionClosed,
    Event,
    Role,
)
from dicomlb.dicom.errors import LocalProtocolError, RemoteProtocolError
from dicomlb.dicom.pdu import (
    PDU_HEADER_LEN,
    Abort,
    AbortReason,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    PData,
    Pdu,
    PresentationDataValue,
    RejectReason,
    ReleaseReply,
    ReleaseRequest,
    decode_pdu,
    encode,
    reject,
    split_header,
)
from tests.unit.fuzzing import assert_linear, fast_and_slow, machine_tests, small_pieces
from tests.unit.helpers import (
    associate_accepts,
    associate_requests,
    make_accept,
    make_request,
    pdata,
)

S = AssocState
MAX_PDU = 16384
PDU_EVENTS = (
    AssociateRequest,
    AssociateAccept,
    AssociateReject,
    PData,
    ReleaseRequest,
    ReleaseReply,
    Abort,
)


def _held(core: Association) -> int:
    # The core's own count of bytes held for an incomplete PDU (no public view of it).
    return core._pending_len


def _settled(event: Event) -> Event:
    """`event` with its P-DATA values copied out of the receive buffer."""
    if isinstance(event, PData):
        return PData(
            pdvs=tuple(
                PresentationDataValue(
                    context_id=v.context_id,
                    is_command=v.is_command,
                    is_last=v.is_last,
                    data=bytes(v.data),
                )
                for v in event.pdvs
            )
        )
    return event


def _is_subsequence(short: Sequence[object], long: Sequence[object]) -> bool:
    it = iter(long)
    return all(any(item == other for other in it) for item in short)


class _Side:
    """One end: its core, what it sent (in order) and what it received."""

    def __init__(self, core: Association) -> None:
        self.core = core
        self.sent: list[Pdu] = []
        self.received: list[Event] = []
        self.outgoing = b""  # bytes sent, not yet delivered to the other side
        self.wire_clean = True  # outgoing holds only what send() gave (no garbage, no cuts)
        self.strict = True  # every PDU the other side sent must come out here, in order
        self.closed = False  # EOF or ARTIM: the shell stopped feeding this core
        self.failed = False  # receive_data raised: the shell answers and closes


class AssociationMachine(RuleBasedStateMachine):
    """Both roles, joined, driven by random steps."""

    def __init__(self) -> None:
        super().__init__()
        self.requestor = _Side(Association(Role.REQUESTOR, max_pdu=MAX_PDU))
        self.acceptor = _Side(Association(Role.ACCEPTOR, max_pdu=MAX_PDU))
        self.request = make_request()

    def _side(self, name: str) -> _Side:
        return self.requestor if name == "requestor" else self.acceptor

    def _other(self, side: _Side) -> _Side:
        return self.acceptor if side is self.requestor else self.requestor

    # -------------------------------------------------------------- steps

    @rule(
        name=st.sampled_from(["requestor", "acceptor"]),
        event=st.one_of(
            st.just(make_request()),
            associate_requests(),
            st.just("accept"),
            associate_accepts(),
            st.just(reject(RejectReason.CALLING_AE_NOT_RECOGNIZED)),
            st.sampled_from([pdata(1, b"\x01" * 40), pdata(3, b"", is_command=True)]),
            st.just(pdata(5, b"not accepted")),
            st.just(ReleaseRequest()),
            st.just(ReleaseReply()),
            st.sampled_from(
                [Abort(), Abort(source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED)]
            ),
        ),
    )
    def send(self, name: str, event: Pdu | str) -> None:
        side = self._side(name)
        if side.closed or side.failed:
            return
        core = side.core
        if event == "accept":
            event = make_accept(core.request or self.request)
        assert not isinstance(event, str)
        before = core.state
        try:
            wire = core.send(event)
        except LocalProtocolError:
            assert core.state is before  # an illegal move changes nothing
            return
        side.outgoing += wire
        side.sent.append(event)

    @rule(name=st.sampled_from(["requestor", "acceptor"]), fraction=st.floats(0, 1))
    def deliver(self, name: str, fraction: float) -> None:
        """Part of what `name` sent reaches the other side (cut anywhere)."""
        sender = self._side(name)
        receiver = self._other(sender)
        if receiver.closed or receiver.failed or not sender.outgoing:
            return
        cut = round(len(sender.outgoing) * fraction)
        piece, sender.outgoing = sender.outgoing[:cut], sender.outgoing[cut:]
        self._feed(receiver, piece, from_clean=sender.wire_clean)

    @rule(name=st.sampled_from(["requestor", "acceptor"]), garbage=st.binary(max_size=64))
    def garbage(self, name: str, garbage: bytes) -> None:
        """Bytes nobody sent reach `name`."""
        receiver = self._side(name)
        if receiver.closed or receiver.failed:
            return
        self._other(receiver).wire_clean = False
        receiver.strict = False
        self._feed(receiver, garbage, from_clean=False)

    @rule(name=st.sampled_from(["requestor", "acceptor"]))
    def truncate(self, name: str) -> None:
        """What `name` sent and the other has not read is lost: the peer hangs up mid-PDU."""
        sender = self._side(name)
        if sender.outgoing:
            sender.outgoing = sender.outgoing[: len(sender.outgoing) // 2]
            sender.wire_clean = False
            self._other(sender).strict = False
        self.eof(self._other(sender))

    @rule(name=st.sampled_from(["requestor", "acceptor"]))
    def artim(self, name: str) -> None:
        side = self._side(name)
        if side.closed:
            return
        before = side.core.state
        answer = side.core.artim_expired()
        assert side.core.state is S.STA1
        # PS3.8 AA-2: in Sta2 and Sta13 the transport just closes; elsewhere an A-ABORT.
        assert (answer is None) is (before in (S.STA1, S.STA2, S.STA13))
        side.closed = True

    @rule(name=st.sampled_from(["requestor", "acceptor"]))
    def hang_up(self, name: str) -> None:
        self.eof(self._side(name))

    @precondition(lambda self: self.acceptor.core.state is S.STA3)
    @rule()
    def resume(self) -> None:
        """The shell answers a held A-ASSOCIATE-RQ, then reads what waited behind it."""
        side = self.acceptor
        if side.closed or side.failed:
            return
        request = side.core.request
        assert request is not None
        answer: Pdu = make_accept(request)
        side.outgoing += side.core.send(answer)
        side.sent.append(answer)
        self._feed(side, b"", from_clean=True)

    @rule(
        name=st.sampled_from(["requestor", "acceptor"]),
        late=st.sampled_from([encode(pdata(1, b"late")), encode(Abort()), b"\x99" * 10]),
    )
    def late_bytes(self, name: str, late: bytes) -> None:
        """After an abort, a release, a rejection or EOF, nothing more is indicated."""
        side = self._side(name)
        if not (side.closed or side.failed or side.core.state is S.STA1):
            return
        try:
            events = side.core.receive_data(late)
        except RemoteProtocolError:
            side.failed = True
            return
        assert events == [], f"{events} after the end, in {side.core.state.name}"

    def eof(self, side: _Side) -> None:
        if side.closed:
            return
        was = side.core.state
        assert side.core.receive_eof() == [ConnectionClosed(expected=was in (S.STA1, S.STA13))]
        assert side.core.state is S.STA1
        side.closed = True

    def _feed(self, receiver: _Side, data: bytes, *, from_clean: bool) -> None:
        core = receiver.core
        if core.state is S.STA13:
            receiver.strict = False  # AA-6 / AA-7: what comes now is dropped
        try:
            events = core.receive_data(data)
        except RemoteProtocolError as err:
            # The reply is a PDU the shell can send in the state the error left.
            assert isinstance(err.reply, Abort | AssociateReject)
            assert core.state in (S.STA13, S.STA3)
            receiver.failed = True
            return
        if core.state is S.STA13:
            receiver.strict = False
        assert all(isinstance(e, PDU_EVENTS) for e in events)
        receiver.received.extend(_settled(e) for e in events)
        if from_clean:
            sender = self._other(receiver)
            if receiver.strict:
                assert receiver.received == sender.sent[: len(receiver.received)]
            elif sender.wire_clean:
                assert _is_subsequence(receiver.received, sender.sent)

    # -------------------------------------------------------------- invariants

    @invariant()
    def known_states(self) -> None:
        for side in (self.requestor, self.acceptor):
            assert isinstance(side.core.state, AssocState)

    @invariant()
    def holds_at_most_one_pdu(self) -> None:
        for side in (self.requestor, self.acceptor):
            assert _held(side.core) <= max(MAX_PDU, MAX_CONTROL_PDU) + PDU_HEADER_LEN


TestAssociationMachine, TestAssociationMachineSlow = machine_tests(AssociationMachine)


# ------------------------------------------------------------------ mutated PDUs


def _mutate(wire: bytes, at: int, value: int, length_delta: int) -> bytes:
    """`wire` with one byte set and its PDU length field shifted."""
    buf = bytearray(wire)
    buf[at % len(buf)] = value
    _, length = split_header(buf[:PDU_HEADER_LEN])
    struct.pack_into(">L", buf, 2, max(0, min(length + length_delta, 2**32 - 1)))
    return bytes(buf)


def _mutated_pdu_decodes_or_aborts(pdu: Pdu, at: int, value: int, length_delta: int) -> None:
    wire = _mutate(encode(pdu), at, value, length_delta)
    pdu_type, length = split_header(wire[:PDU_HEADER_LEN])
    body = memoryview(wire)[PDU_HEADER_LEN : PDU_HEADER_LEN + length]
    try:
        event = decode_pdu(pdu_type, body)
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort)
    else:
        assert isinstance(event, PDU_EVENTS)


test_mutated_pdu_decodes_or_aborts, test_mutated_pdu_decodes_or_aborts_slow = fast_and_slow(
    _mutated_pdu_decodes_or_aborts,
    pdu=st.one_of(associate_requests(), associate_accepts(), st.just(pdata(1, b"x" * 30))),
    at=st.integers(0, 1 << 12),
    value=st.integers(0, 255),
    length_delta=st.integers(-8, 8),
)


def _acceptor_reads_mutated_request(
    request: AssociateRequest, at: int, value: int, length_delta: int, cut: int
) -> None:
    # A request damaged anywhere, fed in two pieces: a request, an A-ABORT (its type byte
    # became 7: legal in Sta2, AA-2), the documented error, or (a length that grew) nothing
    # yet; never another exception.
    wire = _mutate(encode(request), at, value, length_delta)
    core = Association(Role.ACCEPTOR, max_pdu=MAX_PDU)
    try:
        events = core.receive_data(wire[:cut]) + core.receive_data(wire[cut:])
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort | AssociateReject)
        return
    assert all(isinstance(e, AssociateRequest | Abort) for e in events)
    assert len(events) <= 1


test_acceptor_reads_mutated_request, test_acceptor_reads_mutated_request_slow = fast_and_slow(
    _acceptor_reads_mutated_request,
    request=associate_requests(),
    at=st.integers(0, 1 << 12),
    value=st.integers(0, 255),
    length_delta=st.integers(-8, 8),
    cut=st.integers(0, 1 << 12),
)


# ------------------------------------------------------------------ work per byte


def _established() -> Association:
    core = Association(Role.ACCEPTOR, max_pdu=MAX_PDU)
    (request,) = core.receive_data(encode(make_request()))
    assert isinstance(request, AssociateRequest)
    core.send(make_accept(request))
    return core


def _pdata_stream(size: int) -> bytes:
    """P-DATA PDUs of every size up to the maximum, `size` bytes in all."""
    out = []
    total = 0
    step = 0
    while total < size:
        step += 1
        body = bytes(step * 997 % (MAX_PDU - 6))
        wire = encode(pdata(1, body))
        out.append(wire)
        total += len(wire)
    return b"".join(out)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ("P-DATA stream", 64 * 1024),
        ("one large P-DATA", 64 * 1024),
        # Copying a growing buffer is cheap per byte: it takes more bytes to show.
        ("bytes held behind a request", 256 * 1024),
    ],
)
def test_work_grows_linearly_with_the_bytes(shape: str, size: int) -> None:
    def run(n: int) -> None:
        if shape == "P-DATA stream":
            core, wire = _established(), _pdata_stream(n)
        elif shape == "one large P-DATA":
            core = Association(Role.ACCEPTOR, max_pdu=0)
            (request,) = core.receive_data(encode(make_request()))
            assert isinstance(request, AssociateRequest)
            core.send(make_accept(request))
            wire = encode(pdata(1, bytes(n)))
        else:
            # A client that goes on sending before its association is answered.
            core = Association(Role.ACCEPTOR, max_pdu=MAX_PDU)
            core.receive_data(encode(make_request()))
            wire = encode(pdata(1, bytes(n)))
        try:
            for piece in small_pieces(wire, seed=n):
                core.receive_data(piece)
        except RemoteProtocolError:
            pass  # refused once it held too much: also bounded work

    assert_linear(run, size)


def test_bytes_held_behind_a_request_are_bounded() -> None:
    """While an A-ASSOCIATE-RQ waits for its answer (Sta3), the peer may send only an
    A-ABORT (PS3.8 9.2): more than one control PDU's worth is refused, not held forever
    (it was held without limit, and joined again on every read: quadratic)."""
    core = Association(Role.ACCEPTOR, max_pdu=MAX_PDU)
    request = make_request()
    assert core.receive_data(encode(request)) == [request]
    chunk = bytes(64 * 1024)
    with pytest.raises(RemoteProtocolError) as err:
        for _ in range(2 * MAX_CONTROL_PDU // len(chunk)):
            core.receive_data(chunk)
    assert err.value.reply == Abort(
        source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU
    )
    assert core.state is S.STA13


@pytest.mark.parametrize("end", ["abort", "release", "reject", "artim", "eof"])
def test_nothing_is_read_after_the_association_ended(end: str) -> None:
    """Bytes behind the PDU that ended the association (or after EOF / ARTIM) are not read:
    the A-ABORT in the same read is indicated, not lost to an error on what follows it, and
    no second A-ABORT comes out (the machine found both)."""
    requestor = Association(Role.REQUESTOR, max_pdu=MAX_PDU)
    request = make_request()
    requestor.send(request)
    late = encode(pdata(1, b"late")) + encode(Abort())
    if end == "reject":
        answer: Pdu = reject(RejectReason.CALLING_AE_NOT_RECOGNIZED)
        assert requestor.receive_data(encode(answer) + late) == [answer]
        assert requestor.state is S.STA1
        return
    assert requestor.receive_data(encode(make_accept(request))) != []
    if end == "abort":
        abort = Abort(source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED)
        assert requestor.receive_data(encode(abort) + late) == [abort]
    elif end == "release":
        requestor.send(ReleaseRequest())
        assert requestor.receive_data(encode(ReleaseReply()) + late) == [ReleaseReply()]
    elif end == "artim":
        requestor.artim_expired()
    else:
        requestor.receive_eof()
    assert requestor.state is S.STA1
    assert requestor.receive_data(late) == []
    assert requestor.state is S.STA1
