"""Association negotiation with clients and toward backends (pure)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from dicomlb.dicom import uids
from dicomlb.dicom.contexts import SyntaxPair, Verdict
from dicomlb.dicom.pdu import (
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    ItemType,
    PresentationContextProposal,
    PresentationContextResult,
    RejectReason,
    RoleSelection,
    UserInformation,
    reject,
    split_fields,
)
from dicomlb.snapshot import DicomListenerConfig


class Service(enum.StrEnum):
    """Services beyond storage and verification that a listener may offer."""

    QUERY_RETRIEVE = "query_retrieve"  # C-FIND, C-MOVE, C-GET; modality worklist
    STORAGE_COMMITMENT = "storage_commitment"  # N-ACTION / N-EVENT-REPORT, push model


# Contexts accepted only when the listener offers the service (dicomlb.services.query,
# dicomlb.services.retrieve, dicomlb.services.commitment relay them).
SERVICE_PREFIXES: dict[Service, tuple[str, ...]] = {
    Service.QUERY_RETRIEVE: (
        "1.2.840.10008.5.1.4.1.2.",  # query/retrieve information models
        "1.2.840.10008.5.1.4.31",  # modality worklist
    ),
    Service.STORAGE_COMMITMENT: ("1.2.840.10008.1.20.1",),  # storage commitment push model
}

# Services dicomlb does not relay: their contexts are refused at negotiation, so the
# client learns it at once instead of on its first message. Storage classes are open-ended
# (private and new ones appear), so everything else is accepted.
UNSUPPORTED_PREFIXES = (
    *SERVICE_PREFIXES[Service.QUERY_RETRIEVE],
    "1.2.840.10008.5.1.4.32",  # general purpose worklist (retired)
    "1.2.840.10008.5.1.4.34.6.",  # unified procedure step (push, watch, pull, event, query)
    *SERVICE_PREFIXES[Service.STORAGE_COMMITMENT],
    "1.2.840.10008.3.1.2.",  # detached management, modality performed procedure step
    "1.2.840.10008.5.1.1.",  # print management
    "1.2.840.10008.5.1.4.33",  # instance availability notification
    "1.2.840.10008.5.1.4.38.2",  # hanging protocol find / move (.1 is storage)
    "1.2.840.10008.5.1.4.38.3",  # hanging protocol get
    "1.2.840.10008.5.1.4.39.2",  # color palette find / move (.1 is storage)
    "1.2.840.10008.5.1.4.39.3",  # color palette get
    "1.2.840.10008.5.1.4.43.2",  # generic implant template find / move / get
    "1.2.840.10008.5.1.4.44.2",  # implant assembly template find / move / get
    "1.2.840.10008.5.1.4.45.2",  # implant template group find / move / get
)

USER_IDENTITY_RQ = 0x58

# What the backends that could serve an association said about a context, together
# (`contexts.combine`); UNKNOWN when nothing was learned.
Knowledge = Callable[[SyntaxPair], Verdict]


def _nothing_known(pair: SyntaxPair) -> Verdict:
    return Verdict.UNKNOWN


def is_supported_abstract_syntax(uid: str, services: frozenset[Service] = frozenset()) -> bool:
    """Whether dicomlb accepts a context for `uid` when it offers `services`."""
    if not uid:
        return False
    for service in services:
        if uid.startswith(SERVICE_PREFIXES[service]):
            return True
    return not uid.startswith(UNSUPPORTED_PREFIXES)


def negotiate(
    request: AssociateRequest,
    listener: DicomListenerConfig,
    services: frozenset[Service] = frozenset(),
    known: Knowledge = _nothing_known,
) -> AssociateAccept | AssociateReject:
    """dicomlb's answer to a client's A-ASSOCIATE-RQ, offering storage, verification and
    `services`: each context is answered as the backends that could serve it would (`known`),
    among the transfer syntaxes the listener reads."""
    if not request.protocol_version & 1:
        return reject(RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
    if request.application_context != uids.APPLICATION_CONTEXT:
        return reject(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)
    if listener.check_called_aet and request.called_ae != listener.ae_title:
        return reject(RejectReason.CALLED_AE_NOT_RECOGNIZED)
    results = []
    for proposal in request.contexts:
        results.append(_answer_context(proposal, listener, services, known))
    # PS3.7 D.3.3.4: with query/retrieve, a C-GET client is the SCP of its sub-operation
    # C-STOREs; dicomlb mirrors the roles it proposes (and proposes them to the backend).
    # Otherwise dicomlb is the SCP of what it relays and the client stays SCU.
    mirror = Service.QUERY_RETRIEVE in services
    user_info = UserInformation(
        max_pdu=listener.max_pdu,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
        # PS3.7 D.3.3.3: one operation at a time each way; messages are relayed in order.
        async_ops=(1, 1) if request.user_info.async_ops is not None else None,
        # PS3.7 D.3.3.4: dicomlb is the SCP of what it relays; the client stays SCU.
        roles=tuple(
            RoleSelection(
                sop_class_uid=role.sop_class_uid,
                scu_role=role.scu_role,
                scp_role=role.scp_role and mirror,
            )
            for role in request.user_info.roles
        ),
    )
    return AssociateAccept(
        called_ae=request.called_ae,
        calling_ae=request.calling_ae,
        contexts=tuple(results),
        user_info=user_info,
    )


def _answer_context(
    proposal: PresentationContextProposal,
    listener: DicomListenerConfig,
    services: frozenset[Service],
    known: Knowledge,
) -> PresentationContextResult:
    abstract = proposal.abstract_syntax
    first = proposal.transfer_syntaxes[0] if proposal.transfer_syntaxes else ""
    if not is_supported_abstract_syntax(abstract, services):
        return _refused(proposal, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, first)
    readable = [ts for ts in proposal.transfer_syntaxes if listener.encoding(ts) is not None]
    if abstract == uids.VERIFICATION:  # dicomlb answers C-ECHO itself unless told otherwise
        verdicts = [Verdict.UNKNOWN] * len(readable)
    else:
        verdicts = [known((abstract, ts)) for ts in readable]
    if verdicts and all(v is Verdict.ABSTRACT_REFUSED for v in verdicts):
        return _refused(proposal, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, first)
    # The client's order is its preference: the first syntax dicomlb reads and no candidate
    # backend is known to refuse wins.
    for ts, verdict in zip(readable, verdicts, strict=True):
        if verdict in (Verdict.ACCEPTED, Verdict.UNKNOWN):
            return PresentationContextResult(
                context_id=proposal.context_id, result=ContextResult.ACCEPTANCE, transfer_syntax=ts
            )
    # Refused in every proposed syntax: with the backends' own reason when they all gave 3.
    as_abstract = {Verdict.ABSTRACT_REFUSED, Verdict.REFUSED_AS_ABSTRACT}
    every_one_read = len(readable) == len(proposal.transfer_syntaxes)
    if verdicts and every_one_read and set(verdicts) <= as_abstract:
        return _refused(proposal, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, first)
    return _refused(proposal, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, first)


def _refused(
    proposal: PresentationContextProposal, result: ContextResult, syntax: str
) -> PresentationContextResult:
    return PresentationContextResult(
        context_id=proposal.context_id, result=result, transfer_syntax=syntax
    )


def upstream_request(
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Iterable[tuple[str, str]],
    max_pdu: int,
    forwarded_items: tuple[tuple[int, bytes], ...] = (),
) -> AssociateRequest:
    """The A-ASSOCIATE-RQ dicomlb sends a backend: one context per (abstract, transfer syntax),
    in the given order, at most 128 (PS3.8: odd context ids 1..255).

    `forwarded_items` are the client's user-information items passed on untouched (user
    identity, extended negotiation); SCP/SCU role selection items among them (a C-GET
    client's) are proposed as roles.
    """
    roles = tuple(
        _role(value) for kind, value in forwarded_items if kind == ItemType.ROLE_SELECTION
    )
    raw = tuple(item for item in forwarded_items if item[0] != ItemType.ROLE_SELECTION)
    proposals = tuple(
        PresentationContextProposal(
            context_id=2 * i + 1, abstract_syntax=abstract, transfer_syntaxes=(ts,)
        )
        for i, (abstract, ts) in enumerate(list(dict.fromkeys(contexts))[:128])
    )
    return AssociateRequest(
        called_ae=called_ae,
        calling_ae=calling_ae,
        contexts=proposals,
        user_info=UserInformation(
            max_pdu=max_pdu,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            roles=roles,
            raw_items=raw,
        ),
    )


def related_general_classes(user_info: UserInformation) -> dict[str, frozenset[str]]:
    """SOP class -> the related general SOP classes a requestor named for it, from its SOP
    Class Common Extended Negotiation items (PS3.7 D.3.3.6; the codec checked their
    lengths)."""
    related: dict[str, frozenset[str]] = {}
    for kind, value in user_info.raw_items:
        if kind == ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
            sop_class, _, general = split_fields(value, 3)
            related[_text_uid(sop_class)] = frozenset(
                _text_uid(uid) for uid in split_fields(general, None)
            )
    return related


def _text_uid(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").rstrip("\x00 ")


def role_item(role: RoleSelection) -> tuple[int, bytes]:
    """A role selection as a raw user-information item (PS3.7 D.3.3.4), for `upstream_request`
    and for keys of pooled upstream associations."""
    uid = role.sop_class_uid.encode()
    return ItemType.ROLE_SELECTION, len(uid).to_bytes(2, "big") + uid + bytes(
        (role.scu_role, role.scp_role)
    )


def _role(value: bytes) -> RoleSelection:
    size = int.from_bytes(value[:2], "big")
    return RoleSelection(
        sop_class_uid=value[2 : 2 + size].decode("ascii", "replace").rstrip("\x00 "),
        scu_role=bool(value[2 + size]),
        scp_role=bool(value[3 + size]),
    )
