"""association.py: the PS3.8 state machine for both roles, fed bytes at any split."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.dicom.association import (
    MAX_CONTROL_PDU,
    MIN_PEER_MAX_PDU,
    UNLIMITED_PDU_CHUNK,
    Association,
    AssocState,
    ConnectionClosed,
    Role,
)
from dicomlb.dicom.errors import LocalProtocolError, RemoteProtocolError
from dicomlb.dicom.pdu import (
    PDV_HEADER_LEN,
    Abort,
    AbortReason,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    PData,
    PduType,
    RejectReason,
    RejectResult,
    RejectSource,
    ReleaseReply,
    ReleaseRequest,
    decode_pdu,
    encode,
    reject,
    split_header,
)
from tests.unit.helpers import (
    AssociationPair,
    associate_accepts,
    associate_requests,
    cut_lists,
    feed_bytewise,
    feed_split,
    load_hex,
    make_accept,
    make_request,
    pdata,
    pdatas,
)

S = AssocState
SETTINGS = settings(max_examples=200, deadline=None)


def provider_abort(reason: AbortReason) -> Abort:
    return Abort(source=AbortSource.SERVICE_PROVIDER, reason=reason)


def established(max_pdu: int = 16384) -> AssociationPair:
    pair = AssociationPair(requestor_max_pdu=max_pdu, acceptor_max_pdu=max_pdu)
    pair.associate()
    return pair


# ------------------------------------------------------------------ lifecycle


def test_normal_lifecycle_both_roles() -> None:
    pair = AssociationPair()
    assert pair.states() == (S.STA4, S.STA2)
    request = make_request()
    pair.send(pair.requestor, request)
    assert pair.states() == (S.STA5, S.STA3)
    assert pair.acceptor.request == request
    assert pair.acceptor.peer_max_pdu == 16384
    pair.send(pair.acceptor, make_accept(request, max_pdu=32768))
    assert pair.states() == (S.STA6, S.STA6)
    assert pair.requestor.peer_max_pdu == 32768
    assert set(pair.requestor.accepted) == set(pair.acceptor.accepted) == {1, 3}

    pair.send(pair.requestor, pdata(1, b"command", is_command=True))
    pair.send(pair.requestor, pdata(1, b"data set"))
    pair.send(pair.acceptor, pdata(1, b"response", is_command=True))
    assert pair.states() == (S.STA6, S.STA6)

    pair.send(pair.requestor, ReleaseRequest())
    assert pair.states() == (S.STA7, S.STA8)
    # PS3.8 AR-7 / AR-6: the acceptor may still send data before it answers the release.
    pair.send(pair.acceptor, pdata(3, b"late response", is_command=True))
    assert pair.states() == (S.STA7, S.STA8)
    pair.send(pair.acceptor, ReleaseReply())
    assert pair.states() == (S.STA1, S.STA13)
    assert pair.requestor.receive_eof() == [ConnectionClosed(expected=True)]
    assert pair.acceptor.receive_eof() == [ConnectionClosed(expected=True)]


def test_pdata_values_are_views_not_copies() -> None:
    pair = established()
    wire = pair.requestor.send(pdata(1, b"x" * 100))
    (event,) = pair.acceptor.receive_data(wire)
    assert isinstance(event, PData)
    data = event.pdvs[0].data
    assert isinstance(data, memoryview)
    assert data.obj is wire


def test_reject_path() -> None:
    pair = AssociationPair()
    pair.send(pair.requestor, make_request())
    pair.send(pair.acceptor, reject(RejectReason.CALLED_AE_NOT_RECOGNIZED))
    assert pair.states() == (S.STA1, S.STA13)
    assert pair.requestor.receive_eof() == [ConnectionClosed(expected=True)]
    assert pair.acceptor.receive_eof() == [ConnectionClosed(expected=True)]


def test_only_accepted_contexts_are_recorded() -> None:
    pair = AssociationPair()
    request = make_request()
    pair.associate(request, make_accept(request, rejected=frozenset({3})))
    assert set(pair.requestor.accepted) == set(pair.acceptor.accepted) == {1}
    with pytest.raises(RemoteProtocolError) as err:
        pair.acceptor.receive_data(encode(pdata(3, b"x")))
    assert err.value.reply == provider_abort(AbortReason.UNEXPECTED_PDU_PARAMETER)


def test_release_collision() -> None:
    pair = established()
    # Both sides ask to release at once; each request crosses the other on the wire.
    from_requestor = pair.requestor.send(ReleaseRequest())
    from_acceptor = pair.acceptor.send(ReleaseRequest())
    assert pair.states() == (S.STA7, S.STA7)
    assert pair.requestor.receive_data(from_acceptor) == [ReleaseRequest()]
    assert pair.acceptor.receive_data(from_requestor) == [ReleaseRequest()]
    assert pair.states() == (S.STA9, S.STA10)  # PS3.8 AR-8
    pair.send(pair.requestor, ReleaseReply())  # AR-9, then AR-10 at the acceptor
    assert pair.states() == (S.STA11, S.STA12)
    pair.send(pair.acceptor, ReleaseReply())  # AR-4, then AR-3 at the requestor
    assert pair.states() == (S.STA1, S.STA13)


# Each function drives a fresh pair into one state and returns the core in it.
def _requestor_sta4(p: AssociationPair) -> Association:
    return p.requestor


def _requestor_sta5(p: AssociationPair) -> Association:
    p.send(p.requestor, make_request())
    return p.requestor


def _acceptor_sta2(p: AssociationPair) -> Association:
    return p.acceptor


def _acceptor_sta3(p: AssociationPair) -> Association:
    p.send(p.requestor, make_request())
    return p.acceptor


def _sta6(p: AssociationPair) -> Association:
    p.associate()
    return p.requestor


def _sta7(p: AssociationPair) -> Association:
    p.associate()
    p.send(p.requestor, ReleaseRequest())
    return p.requestor


def _sta8(p: AssociationPair) -> Association:
    p.associate()
    p.send(p.requestor, ReleaseRequest())
    return p.acceptor


def _collision(p: AssociationPair) -> None:
    p.associate()
    a, b = p.requestor.send(ReleaseRequest()), p.acceptor.send(ReleaseRequest())
    p.requestor.receive_data(b)
    p.acceptor.receive_data(a)


def _sta9(p: AssociationPair) -> Association:
    _collision(p)
    return p.requestor


def _sta10(p: AssociationPair) -> Association:
    _collision(p)
    return p.acceptor


def _sta11(p: AssociationPair) -> Association:
    _collision(p)
    p.send(p.requestor, ReleaseReply())
    return p.requestor


def _sta12(p: AssociationPair) -> Association:
    _collision(p)
    p.send(p.requestor, ReleaseReply())
    return p.acceptor


def _sta13(p: AssociationPair) -> Association:
    p.associate()
    p.release()
    return p.acceptor


IN_STATE: dict[AssocState, Callable[[AssociationPair], Association]] = {
    S.STA2: _acceptor_sta2,
    S.STA3: _acceptor_sta3,
    S.STA4: _requestor_sta4,
    S.STA5: _requestor_sta5,
    S.STA6: _sta6,
    S.STA7: _sta7,
    S.STA8: _sta8,
    S.STA9: _sta9,
    S.STA10: _sta10,
    S.STA11: _sta11,
    S.STA12: _sta12,
    S.STA13: _sta13,
}


@pytest.mark.parametrize("state", list(IN_STATE), ids=lambda s: s.name)
def test_in_state_helpers_reach_their_state(state: AssocState) -> None:
    assert IN_STATE[state](AssociationPair()).state is state


@pytest.mark.parametrize("state", list(IN_STATE), ids=lambda s: s.name)
def test_abort_received_in_every_state(state: AssocState) -> None:
    core = IN_STATE[state](AssociationPair())
    abort = Abort(source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED)
    events = core.receive_data(encode(abort))
    if state is S.STA3:
        # Held until the request is answered; then AA-3 as in any other state.
        assert events == []
        assert core.request is not None
        core.send(make_accept(core.request))
        events = core.receive_data(b"")
    if state is S.STA13:
        assert events == []  # PS3.8 AA-2: already closing, nothing to indicate
        assert core.state is S.STA13
    else:
        assert events == [abort]  # AA-3 / AA-2
        assert core.state is S.STA1
    assert core.receive_eof() == [ConnectionClosed(expected=True)]


@pytest.mark.parametrize("state", list(IN_STATE), ids=lambda s: s.name)
def test_abort_sent_in_every_state(state: AssocState) -> None:
    core = IN_STATE[state](AssociationPair())
    abort = provider_abort(AbortReason.NOT_SPECIFIED)
    assert core.send(abort) == encode(abort)
    assert core.state is S.STA13
    assert core.receive_eof() == [ConnectionClosed(expected=True)]


# (state, event the peer sends) pairs the table has no entry for.
UNEXPECTED = [
    (S.STA2, pdata(1, b"x")),
    (S.STA2, ReleaseRequest()),
    (S.STA2, make_accept(make_request())),
    (S.STA5, pdata(1, b"x")),
    (S.STA5, make_request()),
    (S.STA6, make_request()),
    (S.STA6, make_accept(make_request())),
    (S.STA6, ReleaseReply()),
    (S.STA7, make_request()),
    (S.STA8, pdata(1, b"x")),
    (S.STA8, ReleaseRequest()),
]


@pytest.mark.parametrize(("state", "event"), UNEXPECTED, ids=lambda x: getattr(x, "name", ""))
def test_unexpected_pdu(state: AssocState, event: object) -> None:
    core = IN_STATE[state](AssociationPair())
    wire = encode(event)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=f"in {state.name}") as err:
        core.receive_data(wire)
    assert err.value.reply == provider_abort(AbortReason.UNEXPECTED_PDU)
    assert core.state is S.STA13
    assert core.receive_eof() == [ConnectionClosed(expected=True)]


@pytest.mark.parametrize("answer", ["accept", "reject"])
def test_pdus_after_a_request_wait_for_its_answer(answer: str) -> None:
    """An A-ASSOCIATE-RQ and an A-ABORT in one read: the acceptor's answer still finds Sta3
    (it used to find Sta1 and raise LocalProtocolError), then the abort is indicated."""
    core = Association(Role.ACCEPTOR, max_pdu=16384)
    request = make_request()
    abort = Abort(source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED)
    assert core.receive_data(encode(request) + encode(abort)) == [request]
    assert core.state is S.STA3
    assert core.receive_data(b"") == []  # still unanswered: still held
    if answer == "accept":
        core.send(make_accept(request))
        assert core.receive_data(b"") == [abort]
        assert core.state is S.STA1
    else:
        core.send(reject(RejectReason.CALLED_AE_NOT_RECOGNIZED))
        assert core.receive_data(b"") == []  # Sta13: AA-6, ignored while closing
        assert core.state is S.STA13


def test_second_request_after_the_answer_is_unexpected() -> None:
    core = Association(Role.ACCEPTOR, max_pdu=16384)
    request = make_request()
    assert core.receive_data(encode(request) + encode(request)[:10]) == [request]
    core.send(make_accept(request))
    with pytest.raises(RemoteProtocolError, match="in STA6") as err:
        core.receive_data(encode(request)[10:])
    assert err.value.reply == provider_abort(AbortReason.UNEXPECTED_PDU)


@pytest.mark.parametrize("max_length", [7, 512, MIN_PEER_MAX_PDU - 1])
def test_small_max_length_from_a_client_is_rejected(max_length: int) -> None:
    core = Association(Role.ACCEPTOR, max_pdu=16384)
    with pytest.raises(RemoteProtocolError, match=f"maximum length {max_length} is below") as err:
        core.receive_data(encode(make_request(max_pdu=max_length)))
    # PS3.8 9.3.4: permanent, service user, no reason given; the reply is legal in Sta3.
    assert err.value.reply == AssociateReject(
        result=RejectResult.PERMANENT, source=RejectSource.SERVICE_USER, reason=1
    )
    assert core.send(err.value.reply) == bytes.fromhex("03000000000400010101")
    assert core.state is S.STA13


@pytest.mark.parametrize("max_length", [0, MIN_PEER_MAX_PDU])
def test_unlimited_and_floor_max_length_are_accepted(max_length: int) -> None:
    pair = AssociationPair()
    pair.associate(make_request(max_pdu=max_length), None)
    assert pair.acceptor.peer_max_pdu == max_length


@pytest.mark.parametrize("max_length", [7, MIN_PEER_MAX_PDU - 1])
def test_small_max_length_from_a_backend_is_aborted(max_length: int) -> None:
    pair = AssociationPair()
    request = make_request()
    pair.send(pair.requestor, request)
    with pytest.raises(RemoteProtocolError, match=f"maximum length {max_length} is below") as err:
        pair.requestor.receive_data(pair.acceptor.send(make_accept(request, max_pdu=max_length)))
    assert err.value.reply == Abort(source=AbortSource.SERVICE_USER)
    assert pair.requestor.state is S.STA13
    assert pair.requestor.accepted == {}  # nothing can be sent on it


@pytest.mark.parametrize("max_length", [1, 2, 5, 6])
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_max_length_that_cannot_carry_a_pdv_is_aborted(role: Role, max_length: int) -> None:
    """PS3.8 D.1: 1..6 leave no room for a PDV; sending to such a peer looped for ever."""
    if role is Role.ACCEPTOR:
        core = Association(role, max_pdu=16384)
        wire = encode(make_request(max_pdu=max_length))
    else:
        pair = AssociationPair()
        request = make_request()
        pair.send(pair.requestor, request)
        core = pair.requestor
        wire = encode(make_accept(request, max_pdu=max_length))
    with pytest.raises(RemoteProtocolError, match=f"maximum length {max_length} cannot") as err:
        core.receive_data(wire)
    # PS3.8 9.3.8: source 2 (service provider), reason 6 (invalid PDU parameter value)
    assert core.send(err.value.reply) == bytes.fromhex("07000000000400000206")
    assert core.state is S.STA13


def test_send_data_never_loops_without_progress() -> None:
    core = established().requestor
    core.peer_max_pdu = PDV_HEADER_LEN  # not reachable from the wire; the guard says so
    with pytest.raises(LocalProtocolError, match="cannot carry data"):
        core.send_data(1, b"x" * 100, is_command=False, is_last=True)


def test_pdata_before_association_is_unexpected() -> None:
    acceptor = Association(Role.ACCEPTOR, max_pdu=16384)
    with pytest.raises(RemoteProtocolError, match="unexpected PData in STA2") as err:
        acceptor.receive_data(encode(pdata(1, b"hello")))
    assert err.value.reply == provider_abort(AbortReason.UNEXPECTED_PDU)


def test_pdus_after_sending_abort_are_ignored() -> None:
    pair = established()
    pair.acceptor.send(provider_abort(AbortReason.NOT_SPECIFIED))
    assert pair.acceptor.receive_data(encode(pdata(1, b"x")) + encode(ReleaseRequest())) == []


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x09, 0x10, 0xFF])
def test_unrecognized_pdu_type(pdu_type: int) -> None:
    core = Association(Role.ACCEPTOR, max_pdu=16384)
    # The header alone is enough to refuse it.
    with pytest.raises(RemoteProtocolError, match=f"0x{pdu_type:02X}") as err:
        core.receive_data(bytes((pdu_type, 0, 0, 0, 0, 4)))
    assert err.value.reply == provider_abort(AbortReason.UNRECOGNIZED_PDU)
    assert core.state is S.STA13


def test_oversize_pdata_is_refused_at_its_header() -> None:
    pair = established(max_pdu=16384)
    ok = encode(pdata(1, bytes(16384 - 6)))
    assert split_header(ok)[1] == 16384
    assert len(pair.acceptor.receive_data(ok)) == 1
    too_big = encode(pdata(1, bytes(16384 - 5)))
    with pytest.raises(RemoteProtocolError, match="16385 bytes exceeds the maximum 16384") as err:
        pair.acceptor.receive_data(too_big[:6])
    assert err.value.reply == provider_abort(AbortReason.INVALID_PDU_PARAMETER)
    assert pair.acceptor.state is S.STA13


def test_unlimited_max_pdu_accepts_large_pdata() -> None:
    pair = established(max_pdu=0)
    wire = encode(pdata(1, bytes(200_000)))
    assert len(feed_split(pair.acceptor, wire, [3, 70_000])) == 1


def test_oversize_control_pdu() -> None:
    core = Association(Role.ACCEPTOR, max_pdu=0)
    header = struct.pack(">BxL", PduType.ASSOCIATE_RQ, MAX_CONTROL_PDU + 1)
    with pytest.raises(RemoteProtocolError) as err:
        core.receive_data(header)
    assert err.value.reply == provider_abort(AbortReason.INVALID_PDU_PARAMETER)


def test_pdata_on_unaccepted_context() -> None:
    pair = established()
    with pytest.raises(RemoteProtocolError, match="context 5") as err:
        pair.acceptor.receive_data(encode(pdata(5, b"x")))
    assert err.value.reply == provider_abort(AbortReason.UNEXPECTED_PDU_PARAMETER)
    assert pair.acceptor.state is S.STA13


def test_malformed_pdu_in_stream() -> None:
    pair = established()
    # A P-DATA-TF whose only PDV claims more bytes than the PDU holds.
    with pytest.raises(RemoteProtocolError) as err:
        pair.acceptor.receive_data(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x09\x01\x03ab")
    assert err.value.reply == provider_abort(AbortReason.INVALID_PDU_PARAMETER)


# ------------------------------------------------------------------ local errors


@pytest.mark.parametrize(
    ("state", "event", "message"),
    [
        (S.STA4, pdata(1, b"x"), "cannot send PData in STA4 (awaiting transport connection)"),
        (S.STA2, make_accept(make_request()), "cannot send AssociateAccept in STA2"),
        (S.STA5, ReleaseRequest(), "cannot send ReleaseRequest in STA5 (awaiting A-ASSOCIATE-AC"),
        (S.STA6, make_request(), "cannot send AssociateRequest in STA6"),
        (S.STA7, pdata(1, b"x"), "cannot send PData in STA7 (awaiting A-RELEASE-RP)"),
        (S.STA3, ReleaseReply(), "cannot send ReleaseReply in STA3"),
        (S.STA13, ReleaseReply(), "cannot send ReleaseReply in STA13"),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_sending_in_a_wrong_state(state: AssocState, event: object, message: str) -> None:
    core = IN_STATE[state](AssociationPair())
    with pytest.raises(LocalProtocolError) as err:
        core.send(event)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert core.state is state  # a local mistake does not move the machine


@pytest.mark.parametrize("state", [S.STA2, S.STA4, S.STA5, S.STA7, S.STA13], ids=str)
def test_send_data_in_a_wrong_state(state: AssocState) -> None:
    core = IN_STATE[state](AssociationPair())
    with pytest.raises(LocalProtocolError, match=f"cannot send P-DATA in {state.name}"):
        core.send_data(1, b"x", is_command=False, is_last=True)


# ------------------------------------------------------------------ fragmentation


def _pdus(buffers: list[bytes | memoryview]) -> list[PData]:
    wire = b"".join(bytes(b) for b in buffers)
    out = []
    pos = 0
    while pos < len(wire):
        pdu_type, length = split_header(wire[pos : pos + 6])
        event = decode_pdu(pdu_type, memoryview(wire)[pos + 6 : pos + 6 + length])
        assert isinstance(event, PData)
        out.append(event)
        pos += 6 + length
    return out


@pytest.mark.parametrize("size", [0, 1, 16378, 16379, 100_000])
def test_send_data_fragments_to_peer_max_pdu(size: int) -> None:
    pair = established(max_pdu=16384)
    data = bytes(i % 251 for i in range(size))
    buffers = pair.acceptor.send_data(1, data, is_command=False, is_last=True)
    pdus = _pdus(buffers)
    assert all(len(encode(p)) - 6 <= 16384 for p in pdus)
    pdvs = [pdv for p in pdus for pdv in p.pdvs]
    assert [pdv.is_last for pdv in pdvs] == [False] * (len(pdvs) - 1) + [True]
    assert all(pdv.context_id == 1 and not pdv.is_command for pdv in pdvs)
    assert b"".join(bytes(pdv.data) for pdv in pdvs) == data
    assert len(pdus) == max(1, -(-size // (16384 - 6)))
    # The requestor (max 16384) takes them all, fed as the shell's writelines would send.
    received = feed_split(pair.requestor, b"".join(bytes(b) for b in buffers), [7, 9000])
    assert len(received) == len(pdus)


def test_send_data_not_last_never_sets_last_bit() -> None:
    pair = established(max_pdu=4096)
    pdus = _pdus(pair.requestor.send_data(3, bytes(10_000), is_command=True, is_last=False))
    assert [pdv.is_last for p in pdus for pdv in p.pdvs] == [False, False, False]
    assert all(pdv.is_command for p in pdus for pdv in p.pdvs)


def test_send_data_pieces_are_views_of_the_input() -> None:
    pair = established()
    data = bytes(40_000)
    buffers = pair.requestor.send_data(1, data, is_command=False, is_last=True)
    views = buffers[2::3]
    assert all(isinstance(v, memoryview) and v.obj is data for v in views)


def test_send_data_unlimited_peer_max() -> None:
    pair = AssociationPair(requestor_max_pdu=0, acceptor_max_pdu=0)
    pair.associate(make_request(max_pdu=0))
    assert pair.acceptor.peer_max_pdu == 0
    data = bytes(2 * UNLIMITED_PDU_CHUNK + 5)
    pdus = _pdus(pair.acceptor.send_data(1, data, is_command=False, is_last=True))
    assert [len(p.pdvs[0].data) for p in pdus] == [UNLIMITED_PDU_CHUNK, UNLIMITED_PDU_CHUNK, 5]
    assert [p.pdvs[0].is_last for p in pdus] == [False, False, True]


def test_send_data_allowed_in_sta8() -> None:
    pair = established()
    pair.send(pair.requestor, ReleaseRequest())
    assert pair.acceptor.state is S.STA8
    assert _pdus(pair.acceptor.send_data(1, b"rsp", is_command=True, is_last=True))


# ------------------------------------------------------------------ timers and EOF


@pytest.mark.parametrize(
    ("state", "sends_abort"),
    [
        (S.STA2, False),  # PS3.8 AA-2: no A-ASSOCIATE-RQ in time, just close
        (S.STA13, False),  # AA-2: the peer did not close after our abort/reject/release
        (S.STA3, True),
        (S.STA5, True),
        (S.STA6, True),
        (S.STA7, True),
    ],
    ids=str,
)
def test_artim_expired(state: AssocState, sends_abort: bool) -> None:
    core = IN_STATE[state](AssociationPair())
    reply = core.artim_expired()
    assert reply == (provider_abort(AbortReason.NOT_SPECIFIED) if sends_abort else None)
    assert core.state is S.STA1
    assert core.receive_eof() == [ConnectionClosed(expected=True)]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.STA2, False),
        (S.STA3, False),
        (S.STA5, False),
        (S.STA6, False),
        (S.STA7, False),
        (S.STA8, False),
        (S.STA13, True),
    ],
    ids=str,
)
def test_receive_eof(state: AssocState, expected: bool) -> None:
    core = IN_STATE[state](AssociationPair())
    assert core.receive_eof() == [ConnectionClosed(expected=expected)]
    assert core.state is S.STA1
    assert core.receive_eof() == [ConnectionClosed(expected=True)]  # a second EOF is harmless


# ------------------------------------------------------------------ any split


def test_dcmtk_storescu_bytewise() -> None:
    capture = [wire for who, wire in load_hex("storescu.hex")]
    acceptor = Association(Role.ACCEPTOR, max_pdu=16384)
    (request,) = feed_bytewise(acceptor, capture[0])
    assert isinstance(request, AssociateRequest)
    acceptor.send(make_accept(request))
    events = feed_bytewise(acceptor, b"".join(capture[1:]))
    assert [type(e) for e in events] == [PData, PData, ReleaseRequest]
    assert acceptor.state is S.STA8


def test_two_pdus_in_one_read_and_a_partial_third() -> None:
    pair = established()
    one, two, three = (encode(pdata(1, bytes([i]) * 10)) for i in range(3))
    assert len(pair.acceptor.receive_data(one + two + three[:5])) == 2
    assert pair.acceptor.receive_data(b"") == []
    assert pair.acceptor.receive_data(three[5:]) == [pdata(1, bytes([2]) * 10)]


@SETTINGS
@given(rq=associate_requests(), cuts=cut_lists)
def test_associate_rq_survives_any_split(rq: AssociateRequest, cuts: list[int]) -> None:
    assert feed_split(Association(Role.ACCEPTOR, max_pdu=16384), encode(rq), cuts) == [rq]


@SETTINGS
@given(ac=associate_accepts(), cuts=cut_lists)
def test_associate_ac_survives_any_split(ac: AssociateAccept, cuts: list[int]) -> None:
    requestor = Association(Role.REQUESTOR, max_pdu=16384)
    requestor.send(make_request())
    assert feed_split(requestor, encode(ac), cuts) == [ac]
    assert requestor.state is S.STA6


@SETTINGS
@given(events=st.lists(pdatas([1, 3]), min_size=1, max_size=5), cuts=cut_lists)
def test_pdata_stream_survives_any_split(events: list[PData], cuts: list[int]) -> None:
    pair = established()
    wire = b"".join(encode(e) for e in events)
    assert feed_split(pair.acceptor, wire, cuts) == events


@SETTINGS
@given(garbage=st.binary(max_size=400), cuts=cut_lists)
def test_garbage_into_acceptor(garbage: bytes, cuts: list[int]) -> None:
    try:
        feed_split(Association(Role.ACCEPTOR, max_pdu=16384), garbage, cuts)
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort)


@st.composite
def pduish_frames(draw: st.DrawFn) -> bytes:
    """Frames with plausible headers (real PDU types, true lengths) around random bodies, so
    the garbage gets past the framing into the decoders and the state table."""
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        pdu_type = draw(st.sampled_from([1, 2, 3, 4, 4, 4, 5, 6, 7]))
        body = draw(st.binary(max_size=120))
        frames.append(struct.pack(">BxL", pdu_type, len(body)) + body)
    return b"".join(frames)


@SETTINGS
@given(wire=pduish_frames(), established_first=st.booleans(), cuts=cut_lists)
def test_pdu_shaped_garbage(wire: bytes, established_first: bool, cuts: list[int]) -> None:
    core = established().acceptor if established_first else Association(Role.ACCEPTOR, max_pdu=0)
    try:
        events = feed_split(core, wire, cuts)
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort)
    else:
        assert all(not isinstance(e, ConnectionClosed) for e in events)
