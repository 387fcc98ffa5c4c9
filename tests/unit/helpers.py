"""Helpers for the sans-IO core tests: split feeding, a joined requestor/acceptor pair,
canonical PDU builders, hypothesis strategies for PDUs, and the DCMTK hex fixtures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from hypothesis import strategies as st

from dicomlb.dicom.association import MIN_PEER_MAX_PDU, Association, AssocState, Event, Role
from dicomlb.dicom.pdu import (
    AssociateAccept,
    AssociateRequest,
    ContextResult,
    PData,
    Pdu,
    PresentationContextProposal,
    PresentationContextResult,
    PresentationDataValue,
    ReleaseReply,
    ReleaseRequest,
    RoleSelection,
    UserInformation,
)

DATA = Path(__file__).parent / "data"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def feed_split(core: Association, wire: bytes, cuts: Iterable[int]) -> list[Event]:
    """Feed `wire` to `core` in pieces cut at `cuts` (clamped, sorted, repeats allowed, so an
    empty piece is fed too); return every event in order."""
    points = sorted(min(max(cut, 0), len(wire)) for cut in cuts)
    events: list[Event] = []
    start = 0
    for point in [*points, len(wire)]:
        events.extend(core.receive_data(wire[start:point]))
        start = point
    return events


def feed_bytewise(core: Association, wire: bytes) -> list[Event]:
    """Feed `wire` one byte at a time."""
    return feed_split(core, wire, range(1, len(wire)))


def make_request(
    *,
    contexts: Sequence[tuple[int, str, Sequence[str]]] = (
        (1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
        (3, VERIFICATION, (IMPLICIT_VR_LE,)),
    ),
    max_pdu: int | None = 16384,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "STORESCU",
) -> AssociateRequest:
    return AssociateRequest(
        called_ae=called_ae,
        calling_ae=calling_ae,
        contexts=tuple(
            PresentationContextProposal(
                context_id=cid, abstract_syntax=abstract, transfer_syntaxes=tuple(syntaxes)
            )
            for cid, abstract, syntaxes in contexts
        ),
        user_info=UserInformation(
            max_pdu=max_pdu,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="TEST_1",
        ),
    )


def make_accept(
    request: AssociateRequest,
    *,
    max_pdu: int | None = 16384,
    rejected: frozenset[int] = frozenset(),
) -> AssociateAccept:
    """Accept every context of `request` (but `rejected` ids) with its first transfer syntax."""
    return AssociateAccept(
        called_ae=request.called_ae,
        calling_ae=request.calling_ae,
        contexts=tuple(
            PresentationContextResult(
                context_id=ctx.context_id,
                result=(
                    ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
                    if ctx.context_id in rejected
                    else ContextResult.ACCEPTANCE
                ),
                transfer_syntax=ctx.transfer_syntaxes[0],
            )
            for ctx in request.contexts
        ),
        user_info=UserInformation(max_pdu=max_pdu, implementation_class_uid="1.2.3.5"),
    )


def pdata(context_id: int, data: bytes, *, is_command: bool = False, is_last: bool = True) -> PData:
    return PData(
        pdvs=(
            PresentationDataValue(
                context_id=context_id, is_command=is_command, is_last=is_last, data=data
            ),
        )
    )


class AssociationPair:
    """A requestor and an acceptor core joined back to back (h11's ConnectionPair): what one
    sends the other receives, and it must come out as the same event."""

    def __init__(self, *, requestor_max_pdu: int = 16384, acceptor_max_pdu: int = 16384) -> None:
        self.requestor = Association(Role.REQUESTOR, max_pdu=requestor_max_pdu)
        self.acceptor = Association(Role.ACCEPTOR, max_pdu=acceptor_max_pdu)

    def other(self, core: Association) -> Association:
        return self.acceptor if core is self.requestor else self.requestor

    def send(self, sender: Association, event: Pdu) -> list[Event]:
        """`sender` sends `event`; the other side must receive exactly it."""
        received = self.other(sender).receive_data(sender.send(event))
        assert received == [event]
        return received

    def states(self) -> tuple[AssocState, AssocState]:
        return self.requestor.state, self.acceptor.state

    def associate(
        self,
        request: AssociateRequest | None = None,
        accept: AssociateAccept | None = None,
    ) -> tuple[AssociateRequest, AssociateAccept]:
        request = request or make_request(max_pdu=self.requestor.max_pdu or None)
        accept = accept or make_accept(request, max_pdu=self.acceptor.max_pdu or None)
        self.send(self.requestor, request)
        self.send(self.acceptor, accept)
        assert self.states() == (AssocState.STA6, AssocState.STA6)
        return request, accept

    def release(self) -> None:
        self.send(self.requestor, ReleaseRequest())
        self.send(self.acceptor, ReleaseReply())


def load_hex(name: str) -> list[tuple[str, bytes]]:
    """A capture from tests/unit/data/capture_dcmtk.py: (sender, PDU bytes) per line."""
    out = []
    for line in (DATA / name).read_text().splitlines():
        if line and not line.startswith("#"):
            who, wire = line.split()
            out.append((who, bytes.fromhex(wire)))
    return out


# ------------------------------------------------------------------ hypothesis strategies

# Values in their canonical decoded form: AE titles without edge spaces, UIDs without
# padding, so decode(encode(x)) == x is the right property.
ae_titles = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=16)
# PS3.5 9.1: a UID is at most 64 characters.
uids = (
    st.lists(st.integers(0, 10**9), min_size=2, max_size=8)
    .map(lambda parts: ".".join(map(str, parts)))
    .filter(lambda uid: len(uid) <= 64)
)
context_ids = st.integers(0, 127).map(lambda i: 2 * i + 1)
# A peer's Maximum Length: unlimited (0) or one the association core accepts.
max_lengths = st.just(0) | st.integers(MIN_PEER_MAX_PDU, 2**32 - 1)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


_uid_bytes = uids.map(str.encode)
# User-information sub-items the decoder keeps raw (0x51-0x55 are typed): those it checks
# (PS3.7 D.3.3.5-7) well formed, unknown ones any bytes.
raw_user_items = st.one_of(
    st.tuples(
        st.just(0x56),
        st.tuples(_uid_bytes, st.binary(max_size=8)).map(lambda parts: _field(parts[0]) + parts[1]),
    ),
    st.tuples(
        st.just(0x57),
        st.tuples(_uid_bytes, _uid_bytes, st.lists(_uid_bytes, max_size=2)).map(
            lambda p: _field(p[0]) + _field(p[1]) + _field(b"".join(map(_field, p[2])))
        ),
    ),
    st.tuples(
        st.just(0x58),
        st.tuples(
            st.integers(1, 5), st.booleans(), st.binary(max_size=12), st.binary(max_size=12)
        ).map(lambda p: bytes((p[0], p[1])) + _field(p[2]) + _field(p[3])),
    ),
    st.tuples(st.just(0x59), st.binary(max_size=12).map(_field)),
    st.tuples(st.sampled_from([0x5A, 0x5F, 0x60]), st.binary(max_size=40)),
)


@st.composite
def user_infos(draw: st.DrawFn) -> UserInformation:
    version = draw(st.none() | ae_titles)
    return UserInformation(
        max_pdu=draw(st.none() | max_lengths),
        implementation_class_uid=draw(uids),
        implementation_version_name=version,
        async_ops=draw(st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535))),
        roles=tuple(
            draw(
                st.lists(
                    st.builds(
                        RoleSelection,
                        sop_class_uid=uids,
                        scu_role=st.booleans(),
                        scp_role=st.booleans(),
                    ),
                    max_size=3,
                    unique_by=lambda role: role.sop_class_uid,  # one item per SOP class
                )
            )
        ),
        raw_items=tuple(draw(st.lists(raw_user_items, max_size=3))),
    )


@st.composite
def associate_requests(draw: st.DrawFn) -> AssociateRequest:
    ids = draw(st.lists(context_ids, min_size=1, max_size=8, unique=True))
    return AssociateRequest(
        called_ae=draw(ae_titles),
        calling_ae=draw(ae_titles),
        contexts=tuple(
            PresentationContextProposal(
                context_id=cid,
                abstract_syntax=draw(uids),
                transfer_syntaxes=tuple(draw(st.lists(uids, min_size=1, max_size=4))),
            )
            for cid in ids
        ),
        user_info=draw(user_infos()),
        application_context=draw(st.just("1.2.840.10008.3.1.1.1") | uids),
    )


@st.composite
def associate_accepts(draw: st.DrawFn) -> AssociateAccept:
    ids = draw(st.lists(context_ids, min_size=1, max_size=8, unique=True))
    return AssociateAccept(
        called_ae=draw(ae_titles),
        calling_ae=draw(ae_titles),
        contexts=tuple(
            PresentationContextResult(
                context_id=cid,
                result=draw(st.sampled_from(ContextResult)),
                transfer_syntax=draw(uids),
            )
            for cid in ids
        ),
        user_info=draw(user_infos()),
    )


def pdatas(context_ids: Sequence[int], max_data: int = 600) -> st.SearchStrategy[PData]:
    pdv = st.builds(
        PresentationDataValue,
        context_id=st.sampled_from(list(context_ids)),
        is_command=st.booleans(),
        is_last=st.booleans(),
        data=st.binary(max_size=max_data),
    )
    return st.lists(pdv, min_size=1, max_size=4).map(lambda pdvs: PData(pdvs=tuple(pdvs)))


cut_lists = st.lists(st.integers(0, 1 << 12), max_size=8)
