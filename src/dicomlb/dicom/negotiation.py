"""Association negotiation with clients and toward backends (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from dicomlb.dicom import uids
from dicomlb.dicom.pdu import (
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    PresentationContextProposal,
    PresentationContextResult,
    RejectReason,
    RoleSelection,
    UserInformation,
    reject,
)
from dicomlb.snapshot import DicomListenerConfig

# Services dicomlb does not relay yet: their contexts are refused at negotiation, so the
# client learns it at once instead of on its first message. Storage classes are open-ended
# (private and new ones appear), so everything else is accepted.
UNSUPPORTED_PREFIXES = (
    "1.2.840.10008.5.1.4.1.2.",  # query/retrieve information models
    "1.2.840.10008.5.1.4.31",  # modality worklist
    "1.2.840.10008.5.1.4.32",  # general purpose worklist (retired)
    "1.2.840.10008.5.1.4.34.6.",  # unified procedure step (push, watch, pull, event, query)
    "1.2.840.10008.1.20.1",  # storage commitment push model
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


def is_supported_abstract_syntax(uid: str) -> bool:
    return bool(uid) and not uid.startswith(UNSUPPORTED_PREFIXES)


def negotiate(
    request: AssociateRequest, listener: DicomListenerConfig
) -> AssociateAccept | AssociateReject:
    """dicomlb's answer to a client's A-ASSOCIATE-RQ."""
    if not request.protocol_version & 1:
        return reject(RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
    if request.application_context != uids.APPLICATION_CONTEXT:
        return reject(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)
    if listener.check_called_aet and request.called_ae != listener.ae_title:
        return reject(RejectReason.CALLED_AE_NOT_RECOGNIZED)
    results = []
    for proposal in request.contexts:
        results.append(_answer_context(proposal, listener.transfer_syntaxes))
    user_info = UserInformation(
        max_pdu=listener.max_pdu,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
        # PS3.7 D.3.3.3: one operation at a time each way; messages are relayed in order.
        async_ops=(1, 1) if request.user_info.async_ops is not None else None,
        # PS3.7 D.3.3.4: dicomlb is the SCP of what it relays; the client stays SCU.
        roles=tuple(
            RoleSelection(sop_class_uid=role.sop_class_uid, scu_role=role.scu_role, scp_role=False)
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
    proposal: PresentationContextProposal, accepted: Iterable[str]
) -> PresentationContextResult:
    if not is_supported_abstract_syntax(proposal.abstract_syntax):
        return PresentationContextResult(
            context_id=proposal.context_id,
            result=ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
            transfer_syntax=proposal.transfer_syntaxes[0] if proposal.transfer_syntaxes else "",
        )
    allowed = set(accepted)
    # The client's order is its preference; the first one dicomlb can scan wins.
    for syntax in proposal.transfer_syntaxes:
        if syntax in allowed:
            return PresentationContextResult(
                context_id=proposal.context_id,
                result=ContextResult.ACCEPTANCE,
                transfer_syntax=syntax,
            )
    return PresentationContextResult(
        context_id=proposal.context_id,
        result=ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
        transfer_syntax=proposal.transfer_syntaxes[0] if proposal.transfer_syntaxes else "",
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
    identity, extended negotiation).
    """
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
            raw_items=forwarded_items,
        ),
    )
