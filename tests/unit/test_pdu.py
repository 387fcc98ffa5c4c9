"""pdu.py: the PS3.8 PDU codec, against pynetdicom's and DCMTK's bytes, and under hypothesis."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import pdu as pyn
from pynetdicom import pdu_primitives as prim
from pynetdicom.presentation import PresentationContext

from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.pdu import (
    Abort,
    AbortReason,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    ItemType,
    PData,
    Pdu,
    PduType,
    RejectReason,
    RejectResult,
    RejectSource,
    ReleaseReply,
    ReleaseRequest,
    RoleSelection,
    decode_pdu,
    encode,
    pdata_header,
    pdv_header,
    reject,
    split_header,
)
from tests.unit.helpers import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    associate_accepts,
    associate_requests,
    load_hex,
    pdata,
    pdatas,
)

SETTINGS = settings(max_examples=200, deadline=None)
USER_IDENTITY = b"\x02\x01\x00\x05alice\x00\x06secret"  # type 2 (user+password), response wanted
EXT_NEG = struct.pack(">H", len(CT_IMAGE_STORAGE)) + CT_IMAGE_STORAGE.encode() + b"\x01\x00"


def decode(wire: bytes) -> Pdu:
    pdu_type, length = split_header(wire)
    assert length == len(wire) - 6
    return decode_pdu(pdu_type, memoryview(wire)[6:])


def pyn_decode(wire: bytes) -> Any:
    classes: dict[int, Any] = {
        1: pyn.A_ASSOCIATE_RQ,
        2: pyn.A_ASSOCIATE_AC,
        3: pyn.A_ASSOCIATE_RJ,
        4: pyn.P_DATA_TF,
        5: pyn.A_RELEASE_RQ,
        6: pyn.A_RELEASE_RP,
        7: pyn.A_ABORT_RQ,
    }
    pdu = classes[wire[0]]()
    pdu.decode(wire)
    return pdu


def zero_context_reserved_bytes(wire: bytes) -> bytes:
    """`wire` with byte 2 of every presentation context item (PS3.8 Table 9-13, "reserved,
    shall be sent with 00H but not tested") set to 0, as pynetdicom and we write it."""
    out = bytearray(wire)
    pos = 74
    while pos < len(out):
        kind, length = struct.unpack_from(">BxH", out, pos)
        if kind in (ItemType.PRESENTATION_CONTEXT_RQ, ItemType.PRESENTATION_CONTEXT_AC):
            out[pos + 6] = 0
        pos += 4 + length
    return bytes(out)


# ------------------------------------------------------------------ pynetdicom's PDUs


def _user_items(*, ac: bool) -> list[Any]:
    max_length = prim.MaximumLengthNotification()
    max_length.maximum_length_received = 32768
    class_uid = prim.ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    version = prim.ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    async_ops = prim.AsynchronousOperationsWindowNegotiation()
    async_ops.maximum_number_operations_invoked = 5
    async_ops.maximum_number_operations_performed = 3
    role = prim.SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = MR_IMAGE_STORAGE
    role.scu_role = False
    role.scp_role = True
    identity = prim.UserIdentityNegotiation()
    if ac:
        identity.server_response = b"token"
    else:
        identity.user_identity_type = 2
        identity.positive_response_requested = True
        identity.primary_field = b"alice"
        identity.secondary_field = b"secret"
    ext_neg = prim.SOPClassExtendedNegotiation()
    ext_neg.sop_class_uid = CT_IMAGE_STORAGE
    ext_neg.service_class_application_information = b"\x01\x00"
    items = [max_length, class_uid, version, async_ops, role, identity]
    return items if ac else [*items, ext_neg]


def pyn_associate_rq() -> bytes:
    primitive = prim.A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PYNETDICOM"
    primitive.called_ae_title = "DICOMLB"
    contexts = []
    for cid, abstract, syntaxes in (
        (1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE, IMPLICIT_VR_LE]),
        (3, MR_IMAGE_STORAGE, [IMPLICIT_VR_LE]),
    ):
        context = PresentationContext()
        context.context_id = cid
        context.abstract_syntax = abstract
        context.transfer_syntax = syntaxes
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    primitive.user_information = _user_items(ac=False)
    wire: bytes = pyn.A_ASSOCIATE_RQ(primitive).encode()
    return wire


def pyn_associate_ac() -> bytes:
    primitive = prim.A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PYNETDICOM"
    primitive.called_ae_title = "DICOMLB"
    primitive.result = 0
    results = []
    for cid, result, syntax in ((1, 0, EXPLICIT_VR_LE), (3, 3, IMPLICIT_VR_LE)):
        context = PresentationContext()
        context.context_id = cid
        context.result = result
        context.transfer_syntax = [syntax]
        results.append(context)
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = _user_items(ac=True)
    wire: bytes = pyn.A_ASSOCIATE_AC(primitive).encode()
    return wire


def pyn_fields(pdu: Any) -> dict[str, Any]:
    """The fields of a pynetdicom A-ASSOCIATE-RQ/AC, in our vocabulary."""
    info = pdu.user_information
    raw = [
        (item.item_type, item.encode()[4:])
        for item in info.user_data
        if item.item_type not in (0x51, 0x52, 0x53, 0x54, 0x55)
    ]
    async_ops = info.async_ops_window
    fields: dict[str, Any] = {
        "called_ae": pdu.called_ae_title if wire_type(pdu) == 1 else pdu.reserved_aet,
        "calling_ae": pdu.calling_ae_title if wire_type(pdu) == 1 else pdu.reserved_aec,
        "application_context": str(pdu.application_context_name),
        "max_pdu": info.maximum_length,
        "implementation_class_uid": str(info.implementation_class_uid),
        "implementation_version_name": info.implementation_version_name,
        "async_ops": (
            None
            if async_ops is None
            else (async_ops.max_operations_invoked, async_ops.max_operations_performed)
        ),
        "roles": sorted(
            (str(uid), bool(item.scu_role), bool(item.scp_role))
            for uid, item in info.role_selection.items()
        ),
        "raw_items": raw,
    }
    if wire_type(pdu) == 1:
        fields["contexts"] = [
            (cx.context_id, str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
            for cx in pdu.presentation_context
        ]
    else:
        fields["contexts"] = [
            (cx.context_id, cx.result, str(cx.transfer_syntax)) for cx in pdu.presentation_context
        ]
    return fields


def wire_type(pdu: Any) -> int:
    return 1 if isinstance(pdu, pyn.A_ASSOCIATE_RQ) else 2


def our_fields(event: AssociateRequest | AssociateAccept) -> dict[str, Any]:
    info = event.user_info
    fields: dict[str, Any] = {
        "called_ae": event.called_ae,
        "calling_ae": event.calling_ae,
        "application_context": event.application_context,
        "max_pdu": info.max_pdu,
        "implementation_class_uid": info.implementation_class_uid,
        "implementation_version_name": info.implementation_version_name,
        "async_ops": info.async_ops,
        "roles": sorted((r.sop_class_uid, r.scu_role, r.scp_role) for r in info.roles),
        "raw_items": list(info.raw_items),
    }
    if isinstance(event, AssociateRequest):
        fields["contexts"] = [
            (cx.context_id, cx.abstract_syntax, list(cx.transfer_syntaxes)) for cx in event.contexts
        ]
    else:
        fields["contexts"] = [
            (cx.context_id, int(cx.result), cx.transfer_syntax) for cx in event.contexts
        ]
    return fields


def test_associate_rq_from_pynetdicom() -> None:
    wire = pyn_associate_rq()
    rq = decode(wire)
    assert isinstance(rq, AssociateRequest)
    assert rq.called_ae == "DICOMLB"
    assert rq.calling_ae == "PYNETDICOM"
    assert rq.protocol_version == 1
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
        (3, MR_IMAGE_STORAGE, (IMPLICIT_VR_LE,)),
    ]
    info = rq.user_info
    assert info.max_pdu == 32768
    assert info.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert info.implementation_version_name == "PYNETDICOM_304"
    assert info.async_ops == (5, 3)
    assert info.roles == (
        RoleSelection(sop_class_uid=MR_IMAGE_STORAGE, scu_role=False, scp_role=True),
    )
    assert info.raw_item(ItemType.USER_IDENTITY_RQ) == USER_IDENTITY
    assert info.raw_item(0x56) == EXT_NEG
    assert our_fields(rq) == pyn_fields(pyn_decode(wire))


def test_associate_rq_to_pynetdicom() -> None:
    wire = pyn_associate_rq()
    rq = decode(wire)
    assert isinstance(rq, AssociateRequest)
    ours = encode(rq)
    assert our_fields(rq) == pyn_fields(pyn_decode(ours))
    # Same length, but not the same bytes: pynetdicom writes user-information sub-items in
    # the order given (0x55 version name before 0x53/0x54); we write 0x51, 0x52, 0x53, 0x54,
    # 0x55, then the raw items, as DCMTK does (see test_dcmtk_*_reencodes below).
    assert len(ours) == len(wire)
    assert ours != wire
    assert decode(ours) == rq


def test_associate_ac_from_and_to_pynetdicom() -> None:
    wire = pyn_associate_ac()
    ac = decode(wire)
    assert isinstance(ac, AssociateAccept)
    # PS3.8 9.3.3: the A-ASSOCIATE-AC's AE fields are reserved, echoing the request's.
    assert (ac.called_ae, ac.calling_ae) == ("DICOMLB", "PYNETDICOM")
    assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.contexts] == [
        (1, ContextResult.ACCEPTANCE, EXPLICIT_VR_LE),
        (3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_VR_LE),
    ]
    assert ac.user_info.raw_item(ItemType.USER_IDENTITY_AC) == b"\x00\x05token"
    assert our_fields(ac) == pyn_fields(pyn_decode(wire))
    ours = encode(ac)
    assert our_fields(ac) == pyn_fields(pyn_decode(ours))
    assert decode(ours) == ac


@pytest.mark.parametrize(
    ("result", "source", "reason"),
    [(1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 7), (2, 2, 2), (2, 3, 1), (2, 3, 2)],
)
def test_associate_rj_both_ways(result: int, source: int, reason: int) -> None:
    primitive = prim.A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    wire = pyn.A_ASSOCIATE_RJ(primitive).encode()
    rj = decode(wire)
    assert rj == AssociateReject(
        result=RejectResult(result), source=RejectSource(source), reason=reason
    )
    assert encode(rj) == wire


def test_reject_helper_picks_the_source_of_its_reason() -> None:
    assert reject(RejectReason.CALLED_AE_NOT_RECOGNIZED) == AssociateReject(
        result=RejectResult.PERMANENT, source=RejectSource.SERVICE_USER, reason=7
    )
    assert reject(RejectReason.LOCAL_LIMIT_EXCEEDED, transient=True) == AssociateReject(
        result=RejectResult.TRANSIENT,
        source=RejectSource.SERVICE_PROVIDER_PRESENTATION,
        reason=2,
    )


def test_p_data_both_ways() -> None:
    primitive = prim.P_DATA()
    primitive.presentation_data_value_list = [
        [1, b"\x03" + b"command"],  # control byte: command, last
        [1, b"\x00" + b"data-part-1"],
        [3, b"\x02" + b"x" * 300],
    ]
    wire = pyn.P_DATA_TF(primitive).encode()
    event = decode(wire)
    assert isinstance(event, PData)
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in event.pdvs] == [
        (1, True, True, b"command"),
        (1, False, False, b"data-part-1"),
        (3, False, True, b"x" * 300),
    ]
    assert encode(event) == wire
    again = pyn_decode(encode(event))
    assert [
        [item.context_id, item.presentation_data_value]
        for item in again.presentation_data_value_items
    ] == primitive.presentation_data_value_list


def test_release_and_abort_both_ways() -> None:
    assert decode(pyn.A_RELEASE_RQ().encode()) == ReleaseRequest()
    assert decode(pyn.A_RELEASE_RP().encode()) == ReleaseReply()
    assert encode(ReleaseRequest()) == pyn.A_RELEASE_RQ().encode()
    assert encode(ReleaseReply()) == pyn.A_RELEASE_RP().encode()
    for source, reason in ((0, 0), (2, 0), (2, 1), (2, 2), (2, 4), (2, 5), (2, 6)):
        primitive = prim.A_P_ABORT() if source == 2 else prim.A_ABORT()
        if source == 2:
            primitive.provider_reason = reason
        else:
            primitive.abort_source = 0
        wire = pyn.A_ABORT_RQ(primitive).encode()
        abort = decode(wire)
        assert abort == Abort(source=AbortSource(source), reason=AbortReason(reason))
        assert encode(abort) == wire


# ------------------------------------------------------------------ DCMTK's PDUs


def test_dcmtk_echoscu_associate_rq() -> None:
    (who, wire), _, (_, release) = load_hex("echoscu.hex")
    assert who == "C"
    rq = decode(wire)
    assert isinstance(rq, AssociateRequest)
    assert (rq.called_ae, rq.calling_ae) == ("ANY-SCP", "ECHOSCU")
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))
    ]
    assert rq.user_info.max_pdu == 16384
    assert rq.user_info.implementation_class_uid.startswith("1.2.276.0.7230010.3.")
    assert rq.user_info.implementation_version_name == "OFFIS_DCMTK_367"
    assert decode(release) == ReleaseRequest()
    assert encode(ReleaseRequest()) == release


def test_dcmtk_echoscu_c_echo_pdata() -> None:
    echo = load_hex("echoscu.hex")[1][1]
    event = decode(echo)
    assert isinstance(event, PData)
    (pdv,) = event.pdvs
    assert (pdv.context_id, pdv.is_command, pdv.is_last) == (1, True, True)
    assert encode(event) == echo


@pytest.mark.parametrize("name", ["echoscu.hex", "storescu.hex", "getscu.hex"])
def test_dcmtk_associate_rq_reencodes(name: str) -> None:
    wire = load_hex(name)[0][1]
    rq = decode(wire)
    ours = encode(rq)
    # DCMTK writes FFH in the third byte of each presentation context item (reserved,
    # "shall be sent with 00H but not tested", PS3.8 Table 9-13); we, like pynetdicom, write
    # 00H. That byte is the only difference: sub-item order (51, 52, 53, 54, 55, others)
    # matches DCMTK's.
    assert ours != wire
    assert ours == zero_context_reserved_bytes(wire)
    assert wire[74 + 4 + 21 + 6] == 0xFF  # first context item, after the 21-byte app context
    assert decode(ours) == rq
    pynetdicom_again = pyn_decode(wire).encode()
    assert pynetdicom_again == ours  # pynetdicom zeroes the same byte, and nothing else here


def test_dcmtk_storescu_associate_rq_has_128_contexts_and_user_identity() -> None:
    wire = load_hex("storescu.hex")[0][1]
    rq = decode(wire)
    assert isinstance(rq, AssociateRequest)
    assert (rq.called_ae, rq.calling_ae) == ("ANY-SCP", "STORESCU")
    assert len(rq.contexts) == 128
    assert [c.context_id for c in rq.contexts] == list(range(1, 256, 2))
    assert CT_IMAGE_STORAGE in {c.abstract_syntax for c in rq.contexts}
    # -usr alice -pwd secret: user identity type 2, no positive response requested.
    assert rq.user_info.raw_items == (
        (ItemType.USER_IDENTITY_RQ, b"\x02\x00\x00\x05alice\x00\x06secret"),
    )
    assert rq.user_info.implementation_class_uid.startswith("1.2.276.0.7230010.3.")
    assert our_fields(rq) == pyn_fields(pyn_decode(wire))


def test_dcmtk_storescu_c_store_pdata() -> None:
    capture = load_hex("storescu.hex")
    command, data = decode(capture[1][1]), decode(capture[2][1])
    assert isinstance(command, PData) and isinstance(data, PData)
    assert [(p.is_command, p.is_last) for p in command.pdvs] == [(True, True)]
    assert [(p.is_command, p.is_last) for p in data.pdvs] == [(False, True)]
    assert command.pdvs[0].context_id == data.pdvs[0].context_id
    assert encode(command) == capture[1][1]
    assert encode(data) == capture[2][1]


def test_dcmtk_getscu_role_selection() -> None:
    rq = decode(load_hex("getscu.hex")[0][1])
    assert isinstance(rq, AssociateRequest)
    roles = rq.user_info.roles
    assert len(roles) > 100
    assert all((r.scu_role, r.scp_role) == (False, True) for r in roles)
    assert RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=False, scp_role=True) in roles


def test_dcmtk_storescp_associate_ac_is_byte_identical() -> None:
    (_, wire), (_, release_rp) = load_hex("storescp.hex")
    ac = decode(wire)
    assert isinstance(ac, AssociateAccept)
    assert (ac.called_ae, ac.calling_ae) == ("STORESCP", "DICOMLB")
    assert [(c.context_id, c.result) for c in ac.contexts] == [
        (1, ContextResult.ACCEPTANCE),
        (3, ContextResult.ACCEPTANCE),
        (5, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
    ]
    assert ac.contexts[0].transfer_syntax == EXPLICIT_VR_LE
    assert ac.user_info.implementation_class_uid.startswith("1.2.276.0.7230010.3.")
    assert encode(ac) == wire
    assert decode(release_rp) == ReleaseReply()
    assert encode(ReleaseReply()) == release_rp


def test_dcmtk_storescp_refuse_is_a_reject() -> None:
    ((_, wire),) = load_hex("storescp_refuse.hex")
    rj = decode(wire)
    assert rj == AssociateReject(
        result=RejectResult.PERMANENT, source=RejectSource.SERVICE_USER, reason=1
    )
    assert encode(rj) == wire


# ------------------------------------------------------------------ codec properties


@SETTINGS
@given(rq=associate_requests())
def test_associate_rq_round_trip(rq: AssociateRequest) -> None:
    assert decode(encode(rq)) == rq


@SETTINGS
@given(ac=associate_accepts())
def test_associate_ac_round_trip(ac: AssociateAccept) -> None:
    assert decode(encode(ac)) == ac


@SETTINGS
@given(rq=associate_requests())
def test_associate_rq_agrees_with_pynetdicom(rq: AssociateRequest) -> None:
    # pynetdicom parses user identity and extended negotiation items, so give it real ones.
    info = replace(rq.user_info, raw_items=((0x58, USER_IDENTITY), (0x56, EXT_NEG)))
    rq = replace(rq, user_info=info)
    assert our_fields(rq) == pyn_fields(pyn_decode(encode(rq)))


@SETTINGS
@given(event=pdatas([1, 3, 255]))
def test_p_data_round_trip(event: PData) -> None:
    assert decode(encode(event)) == event


def test_pdata_and_pdv_headers() -> None:
    assert pdata_header(12) == b"\x04\x00\x00\x00\x00\x0c"
    assert pdv_header(5, 4, is_command=True, is_last=False) == b"\x00\x00\x00\x06\x05\x01"
    assert pdv_header(5, 4, is_command=False, is_last=True) == b"\x00\x00\x00\x06\x05\x02"
    assert encode(pdata(7, b"abcd", is_command=True)) == (
        pdata_header(10) + pdv_header(7, 4, is_command=True, is_last=True) + b"abcd"
    )
    assert split_header(b"\x07\x00\x00\x00\x00\x04") == (PduType.ABORT, 4)


# ------------------------------------------------------------------ malformed input


def abort(reason: AbortReason) -> Abort:
    return Abort(source=AbortSource.SERVICE_PROVIDER, reason=reason)


@pytest.mark.parametrize(
    ("pdu_type", "body"),
    [
        (PduType.P_DATA_TF, b""),  # no PDV
        (PduType.P_DATA_TF, b"\x00\x00\x00"),  # truncated PDV header
        (PduType.P_DATA_TF, b"\x00\x00\x00\x01\x01"),  # PDV length < 2
        (PduType.P_DATA_TF, b"\x00\x00\x00\x09\x01\x03abc"),  # PDV overruns the PDU
        (PduType.ASSOCIATE_RQ, bytes(60)),  # shorter than the fixed fields
        (PduType.ASSOCIATE_RQ, bytes(68) + b"\x10\x00\x00\x09abc"),  # item overruns
        (PduType.ASSOCIATE_RQ, bytes(68) + b"\x20\x00"),  # truncated item header
        (PduType.ASSOCIATE_RQ, bytes(68) + b"\x20\x00\x00\x02\x01\x00"),  # context too short
        (PduType.ASSOCIATE_RQ, bytes(68) + b"\x50\x00\x00\x07\x54\x00\x00\x03\x00\x09x"),
        (PduType.ASSOCIATE_RJ, b"\x00\x01"),
        (PduType.ASSOCIATE_RJ, b"\x00\x09\x01\x01"),  # result 9
    ],
)
def test_malformed_pdu_is_invalid_parameter(pdu_type: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_pdu(pdu_type, memoryview(body))
    assert err.value.reply == abort(AbortReason.INVALID_PDU_PARAMETER)


def test_unknown_pdu_type_is_unrecognized() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_pdu(0x09, memoryview(b"\x00\x00\x00\x00"))
    assert err.value.reply == abort(AbortReason.UNRECOGNIZED_PDU)


def test_abort_with_odd_fields_still_decodes() -> None:
    # PS3.8 9.3.8: reason is "not significant" when the source is the service user.
    assert decode_pdu(PduType.ABORT, memoryview(b"\x00\x00\x00\x63")) == Abort(
        source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED
    )
    assert decode_pdu(PduType.ABORT, memoryview(b"")) == Abort(
        source=AbortSource.SERVICE_USER, reason=AbortReason.NOT_SPECIFIED
    )


@SETTINGS
@given(pdu_type=st.sampled_from(PduType), body=st.binary(max_size=300))
def test_garbage_bodies_decode_or_raise_remote_error(pdu_type: PduType, body: bytes) -> None:
    try:
        decode_pdu(pdu_type, memoryview(body))
    except RemoteProtocolError as err:
        assert isinstance(err.reply, Abort)


# ------------------------------------------------------------------ lengths and counts checked


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _field(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def _context(context_id: int, abstract: str = CT_IMAGE_STORAGE) -> bytes:
    subs = _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_VR_LE.encode())
    return _item(0x20, bytes((context_id, 0, 0, 0)) + subs)


def _request(*items: bytes, user: bytes = b"") -> memoryview:
    """An A-ASSOCIATE-RQ body: fixed fields, application context, `items`, user information."""
    fixed = struct.pack(">Hxx16s16s32x", 1, b"DICOMLB".ljust(16), b"STORESCU".ljust(16))
    app = _item(0x10, b"1.2.840.10008.3.1.1.1")
    return memoryview(fixed + app + b"".join(items) + _item(0x50, user))


def _accept(*items: bytes) -> memoryview:
    fixed = struct.pack(">Hxx16s16s32x", 1, b"DICOMLB".ljust(16), b"STORESCU".ljust(16))
    return memoryview(fixed + b"".join(items) + _item(0x50, b""))


def _ac_context(context_id: int) -> bytes:
    return _item(0x21, bytes((context_id, 0, 0, 0)) + _item(0x40, IMPLICIT_VR_LE.encode()))


def test_presentation_context_ids_in_range_are_decoded() -> None:
    rq = decode_pdu(PduType.ASSOCIATE_RQ, _request(*(_context(i) for i in range(1, 256, 2))))
    assert isinstance(rq, AssociateRequest)
    assert len(rq.contexts) == 128
    assert [c.context_id for c in rq.contexts] == list(range(1, 256, 2))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # PS3.8 9.3.2.2: odd IDs only, each once, so at most 128 contexts.
        (_request(_context(2)), "ID 2 is not odd"),
        (_request(_context(0)), "ID 0 is not odd"),
        (_request(_context(3), _context(1), _context(3)), "ID 3 appears twice"),
        (_request(*(_context(i % 256) for i in range(1, 259, 2))), "appears twice"),
        (
            _request(
                _item(
                    0x20,
                    b"\x01\x00\x00\x00"
                    + _item(0x30, CT_IMAGE_STORAGE.encode())
                    + _item(0x30, MR_IMAGE_STORAGE.encode())
                    + _item(0x40, IMPLICIT_VR_LE.encode()),
                )
            ),
            "two abstract syntaxes",
        ),
        (_accept(_ac_context(1), _ac_context(1)), "ID 1 appears twice"),
        (_accept(_ac_context(4)), "ID 4 is not odd"),
    ],
)
def test_bad_presentation_context_ids_abort(body: memoryview, message: str) -> None:
    pdu_type = PduType.ASSOCIATE_AC if body[68:69] == b"\x21" else PduType.ASSOCIATE_RQ
    with pytest.raises(RemoteProtocolError, match=message) as err:
        decode_pdu(pdu_type, body)
    assert err.value.reply == abort(AbortReason.INVALID_PDU_PARAMETER)


LONG_UID = "1." + "2" * 63  # 65 bytes: PS3.5 9.1 allows 64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_request(_context(1, abstract=LONG_UID)), "abstract syntax of 65 bytes"),
        (
            _request(_item(0x20, b"\x01\x00\x00\x00" + _item(0x40, LONG_UID.encode()))),
            "transfer syntax of 65 bytes",
        ),
        (_request(user=_item(0x52, LONG_UID.encode())), "implementation class UID of 65"),
        (_request(user=_item(0x55, b"V" * 17)), "implementation version name of 17"),
        # Maximum Length: 4 bytes, and 0 or at least 7 (PS3.8 D.1).
        (_request(user=_item(0x51, b"\x00\x00\x40")), "maximum length item of 3 bytes"),
        (_request(user=_item(0x51, struct.pack(">L", 6))), "maximum length 6 cannot carry"),
        (_request(user=_item(0x51, struct.pack(">L", 1))), "maximum length 1 cannot carry"),
        (_request(user=_item(0x53, b"\x00\x01")), "asynchronous operations window of 2"),
        (_request(user=_item(0x54, b"\x00")), "role selection item too short"),
        (_request(user=_item(0x54, _field(LONG_UID.encode()) + b"\x01\x00")), "65 bytes"),
        # User identity (PS3.7 D.3.3.7): both field lengths must fill the item exactly.
        (_request(user=_item(0x58, b"\x01\x00")), "user identity: truncated field length"),
        (_request(user=_item(0x58, b"\x01\x00\x00\x09alice\x00\x00")), "overruns"),
        (_request(user=_item(0x58, b"\x02\x01\x00\x01a\x00\x01bX")), "1 bytes after"),
        (_request(user=_item(0x58, b"\x01")), "user identity item too short"),
        (_request(user=_item(0x59, b"\x00\x05abc")), "user identity response: field length"),
        # Extended negotiation items are forwarded to backends: their lengths are checked.
        (_request(user=_item(0x56, b"\x00\x20" + b"1.2")), "UID length 32 overruns"),
        (_request(user=_item(0x56, b"\x00")), "SOP class extended negotiation item too short"),
        (
            _request(user=_item(0x57, _field(b"1.2") + _field(b"1.3") + b"\x00\x03\x00\x07x")),
            "common extended negotiation: field length 7 overruns",
        ),
        (_request(user=_item(0x57, _field(b"1.2"))), "common extended negotiation: truncated"),
    ],
)
def test_length_fields_are_checked_before_use(body: memoryview, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message) as err:
        decode_pdu(PduType.ASSOCIATE_RQ, body)
    # PS3.8 9.3.8: source 2 (service provider), reason 6 (invalid PDU parameter value)
    assert err.value.reply == abort(AbortReason.INVALID_PDU_PARAMETER)
    assert encode(err.value.reply) == bytes.fromhex("07000000000400000206")


@pytest.mark.parametrize("max_length", [0, 7, 1024, 2**32 - 1])
def test_legal_maximum_lengths_decode(max_length: int) -> None:
    rq = decode_pdu(PduType.ASSOCIATE_RQ, _request(user=_item(0x51, struct.pack(">L", max_length))))
    assert isinstance(rq, AssociateRequest)
    assert rq.user_info.max_pdu == max_length


def test_well_formed_forwarded_items_are_kept_raw() -> None:
    common = _field(b"1.2.3") + _field(b"1.2.4") + _field(_field(b"1.2.5") + _field(b"1.2.6"))
    items = [
        (0x56, EXT_NEG),
        (0x57, common),
        (0x58, USER_IDENTITY),
        (0x58, b"\x01\x00" + _field(b"bob") + _field(b"")),
        (0x5A, b"\xff"),  # unknown: passed on as is
    ]
    rq = decode_pdu(PduType.ASSOCIATE_RQ, _request(user=b"".join(_item(k, v) for k, v in items)))
    assert isinstance(rq, AssociateRequest)
    assert rq.user_info.raw_items == tuple(items)
