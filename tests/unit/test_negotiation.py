"""negotiation.py: dicomlb's answer to a client's A-ASSOCIATE-RQ, and its request upstream."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.dicom import uids
from dicomlb.dicom.negotiation import (
    is_supported_abstract_syntax,
    negotiate,
    related_general_classes,
    upstream_request,
)
from dicomlb.dicom.pdu import (
    AssociateAccept,
    AssociateRequest,
    ContextResult,
    RejectReason,
    RoleSelection,
    UserInformation,
    decode_pdu,
    encode,
    reject,
)
from dicomlb.snapshot import DicomListenerConfig
from tests.unit.helpers import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    STUDY_ROOT_FIND,
    VERIFICATION,
    load_hex,
    make_request,
)

LISTENER = DicomListenerConfig(ae_title="DICOMLB", max_pdu=65536)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def answer(request: AssociateRequest, listener: DicomListenerConfig = LISTENER) -> AssociateAccept:
    result = negotiate(request, listener)
    assert isinstance(result, AssociateAccept)
    return result


def test_accepts_storage_with_clients_first_acceptable_syntax() -> None:
    request = make_request(
        contexts=[
            (1, CT_IMAGE_STORAGE, ("1.2.3.x", JPEG_BASELINE, EXPLICIT_VR_LE)),
            (3, MR_IMAGE_STORAGE, (IMPLICIT_VR_LE, EXPLICIT_VR_LE)),
            (5, VERIFICATION, (IMPLICIT_VR_LE,)),
            (7, "1.2.826.0.1.3680043.9.9999.1", (EXPLICIT_VR_LE,)),  # private storage class
        ]
    )
    ac = answer(request)
    assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.contexts] == [
        (1, ContextResult.ACCEPTANCE, JPEG_BASELINE),
        (3, ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),
        (5, ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),
        (7, ContextResult.ACCEPTANCE, EXPLICIT_VR_LE),
    ]
    assert (ac.called_ae, ac.calling_ae) == (request.called_ae, request.calling_ae)
    assert ac.application_context == uids.APPLICATION_CONTEXT
    assert ac.user_info.max_pdu == 65536
    assert ac.user_info.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert ac.user_info.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    assert ac.user_info.async_ops is None  # not proposed, not answered
    assert ac.user_info.roles == ()


@pytest.mark.parametrize(
    "abstract",
    [
        STUDY_ROOT_FIND,
        "1.2.840.10008.5.1.4.1.2.1.2",  # patient root MOVE
        "1.2.840.10008.5.1.4.1.2.2.3",  # study root GET
        "1.2.840.10008.5.1.4.31",  # modality worklist FIND
        "1.2.840.10008.5.1.4.32.2",  # general purpose scheduled procedure step (retired)
        "1.2.840.10008.5.1.4.34.6.1",  # unified procedure step push
        "1.2.840.10008.5.1.4.34.6.5",  # unified procedure step query
        "1.2.840.10008.1.20.1",  # storage commitment push
        "1.2.840.10008.3.1.2.3.3",  # MPPS (detached management prefix)
        "",
    ],
)
def test_unsupported_abstract_syntaxes(abstract: str) -> None:
    ac = answer(make_request(contexts=[(1, abstract, (IMPLICIT_VR_LE,))]))
    (result,) = ac.contexts
    assert result.result is ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert result.context_id == 1
    assert not is_supported_abstract_syntax(abstract)


@pytest.mark.parametrize(
    "abstract",
    [
        CT_IMAGE_STORAGE,
        VERIFICATION,
        "1.2.840.10008.5.1.4.34.7",  # RT Beams Delivery Instruction Storage, next to UPS
        "1.2.840.10008.5.1.4.34.10",  # RT Brachy Application Setup Delivery Instruction
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT (not a Q/R model: 5.1.4.1.1.)
    ],
)
def test_storage_like_abstract_syntaxes_are_supported(abstract: str) -> None:
    assert is_supported_abstract_syntax(abstract)


def test_what_is_no_uid_is_no_transfer_syntax() -> None:
    ac = answer(make_request(contexts=[(9, CT_IMAGE_STORAGE, ("1.2.03", "1.2.x", ""))]))
    (result,) = ac.contexts
    assert result.result is ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert result.context_id == 9


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, process 14
        "1.2.840.10008.1.2.4.53",  # a retired JPEG process
        "1.2.840.10008.1.2.4.107",  # HEVC
        "1.2.840.10008.1.2.4.201",  # HTJ2K
        "1.2.840.10008.1.2.4.999",  # not yet in the standard
    ],
)
def test_any_other_uid_is_accepted_as_encapsulated(syntax: str) -> None:
    ac = answer(make_request(contexts=[(1, CT_IMAGE_STORAGE, (syntax, EXPLICIT_VR_LE))]))
    assert (ac.contexts[0].result, ac.contexts[0].transfer_syntax) == (
        ContextResult.ACCEPTANCE,
        syntax,
    )


def test_listener_transfer_syntaxes_restrict() -> None:
    listener = replace(LISTENER, transfer_syntaxes=(IMPLICIT_VR_LE,), any_transfer_syntax=False)
    ac = answer(
        make_request(contexts=[(1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))]), listener
    )
    assert ac.contexts[0].transfer_syntax == IMPLICIT_VR_LE


def test_wrong_application_context() -> None:
    request = replace(make_request(), application_context="1.2.3.4")
    assert negotiate(request, LISTENER) == reject(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)


def test_protocol_version() -> None:
    request = replace(make_request(), protocol_version=2)
    assert negotiate(request, LISTENER) == reject(RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)


def test_check_called_aet() -> None:
    strict = replace(LISTENER, check_called_aet=True)
    assert negotiate(make_request(called_ae="OTHER"), strict) == reject(
        RejectReason.CALLED_AE_NOT_RECOGNIZED
    )
    assert isinstance(negotiate(make_request(called_ae="DICOMLB"), strict), AssociateAccept)
    assert isinstance(negotiate(make_request(called_ae="OTHER"), LISTENER), AssociateAccept)
    rj = negotiate(make_request(called_ae="OTHER"), strict)
    assert (int(rj.source), rj.reason) == (1, 7)  # type: ignore[union-attr]  # PS3.8 9.3.4


def test_async_ops_and_roles_answered() -> None:
    request = make_request()
    request = replace(
        request,
        user_info=replace(
            request.user_info,
            async_ops=(10, 10),
            roles=(
                RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=True, scp_role=True),
                RoleSelection(sop_class_uid=MR_IMAGE_STORAGE, scu_role=False, scp_role=True),
            ),
        ),
    )
    ac = answer(request)
    assert ac.user_info.async_ops == (1, 1)
    assert ac.user_info.roles == (
        RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=True, scp_role=False),
        RoleSelection(sop_class_uid=MR_IMAGE_STORAGE, scu_role=False, scp_role=False),
    )


def test_negotiate_dcmtk_storescu_request() -> None:
    wire = load_hex("storescu.hex")[0][1]
    request = decode_pdu(wire[0], memoryview(wire)[6:])
    assert isinstance(request, AssociateRequest)
    ac = answer(request)
    assert len(ac.contexts) == 128
    accepted = [c for c in ac.contexts if c.result is ContextResult.ACCEPTANCE]
    assert len(accepted) >= 100
    assert all(uids.encoding_of(c.transfer_syntax) is not None for c in accepted)
    assert decode_pdu(2, memoryview(encode(ac))[6:]) == ac


@settings(max_examples=200, deadline=None)
@given(
    contexts=st.lists(
        st.tuples(
            st.sampled_from([CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, VERIFICATION, STUDY_ROOT_FIND]),
            st.lists(
                st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE, JPEG_BASELINE, "1.2.3", "1.2.x"]),
                min_size=1,
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_negotiate_answers_every_context_in_order(contexts: list[tuple[str, list[str]]]) -> None:
    request = make_request(
        contexts=[(2 * i + 1, abstract, tuple(ts)) for i, (abstract, ts) in enumerate(contexts)]
    )
    ac = answer(request)
    assert [c.context_id for c in ac.contexts] == [c.context_id for c in request.contexts]
    for proposal, result in zip(request.contexts, ac.contexts, strict=True):
        if result.result is ContextResult.ACCEPTANCE:
            assert result.transfer_syntax == next(
                ts for ts in proposal.transfer_syntaxes if uids.encoding_of(ts) is not None
            )
        elif proposal.abstract_syntax == STUDY_ROOT_FIND:
            assert result.result is ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
        else:
            assert result.result is ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
            assert all(uids.encoding_of(ts) is None for ts in proposal.transfer_syntaxes)


# ------------------------------------------------------------------ upstream_request


def test_upstream_request() -> None:
    forwarded = ((0x58, b"\x01\x00\x00\x05alice\x00\x00"), (0x56, b"\x00\x03abc\x01"))
    rq = upstream_request(
        calling_ae="DICOMLB",
        called_ae="PACS",
        contexts=[
            (CT_IMAGE_STORAGE, EXPLICIT_VR_LE),
            (CT_IMAGE_STORAGE, IMPLICIT_VR_LE),
            (VERIFICATION, IMPLICIT_VR_LE),
            (CT_IMAGE_STORAGE, EXPLICIT_VR_LE),  # duplicate: dropped
        ],
        max_pdu=16384,
        forwarded_items=forwarded,
    )
    assert (rq.calling_ae, rq.called_ae) == ("DICOMLB", "PACS")
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),
        (3, CT_IMAGE_STORAGE, (IMPLICIT_VR_LE,)),
        (5, VERIFICATION, (IMPLICIT_VR_LE,)),
    ]
    assert rq.user_info == UserInformation(
        max_pdu=16384,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
        raw_items=forwarded,
    )
    # The forwarded items survive the wire unchanged.
    again = decode_pdu(1, memoryview(encode(rq))[6:])
    assert isinstance(again, AssociateRequest)
    assert again.user_info.raw_items == forwarded


def test_upstream_request_caps_at_128_contexts() -> None:
    pairs = [(f"1.2.3.{i}", EXPLICIT_VR_LE) for i in range(200)]
    rq = upstream_request(calling_ae="A", called_ae="B", contexts=pairs, max_pdu=0)
    assert len(rq.contexts) == 128
    assert [c.context_id for c in rq.contexts] == list(range(1, 256, 2))
    assert [c.abstract_syntax for c in rq.contexts] == [a for a, _ in pairs[:128]]
    assert rq.user_info.max_pdu == 0


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["1.1", "1.2", "1.3", "1.4"]), st.sampled_from(["2.1", "2.2"])),
        max_size=20,
    )
)
def test_upstream_request_keeps_order_and_ids_odd(pairs: list[tuple[str, str]]) -> None:
    rq = upstream_request(calling_ae="A", called_ae="B", contexts=pairs, max_pdu=16384)
    assert [(c.abstract_syntax, c.transfer_syntaxes[0]) for c in rq.contexts] == list(
        dict.fromkeys(pairs)
    )
    assert all(c.context_id % 2 == 1 and 1 <= c.context_id <= 255 for c in rq.contexts)
    assert len({c.context_id for c in rq.contexts}) == len(rq.contexts)


def test_related_general_classes_from_common_extended_negotiation() -> None:
    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    general = b"1.2.840.10008.5.1.4.1.1.88.22"
    other = b"1.2.840.10008.5.1.4.1.1.88.33\x00"  # padded to even length
    special = b"1.2.840.10008.5.1.4.1.1.88.65"
    item = field(special) + field(b"1.2.840.10008.4.2") + field(field(general) + field(other))
    info = UserInformation(raw_items=((0x58, b"\x01\x00\x00\x01a\x00\x00"), (0x57, item)))
    assert related_general_classes(info) == {
        special.decode(): frozenset({general.decode(), other.decode().rstrip("\x00")})
    }
    assert related_general_classes(UserInformation()) == {}
