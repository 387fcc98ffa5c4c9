"""Storage commitment (push model, PS3.4 Annex J) through the balancer.

N-ACTION-RQ from a client, on a pool with `storage_commitment: forward`: sent to the
backend that received the referenced instances (the study table remembers SOP Instance UID
-> backend for recent C-STOREs); when they are spread, to the backend holding most of them,
which reports the others as failed (`qr.commitment_holder` says why the request is not
split); when none is known (stored through another dicomlb instance, or directly), to the
backend a C-FIND for the instances finds holding most of them (the probe C-MOVE uses), else
to a backend the pool's strategy picks. The Transaction UID and
the client's AE title are registered (`qr.CommitmentRegistry`).

N-EVENT-REPORT-RQ from the backend: the backend reports to the client's AE title from its own
table (Orthanc: `DicomModalities`), which points at dicomlb. dicomlb opens an association to
the client's real address in `dicom_nodes`, as SCP of Storage Commitment (role selection:
the client takes the SCU role, PS3.4 J.3.3 and PS3.7 D.3.3.4), relays the report byte for
byte and the client's N-EVENT-REPORT-RSP back to the backend.

The other way round (a backend asked a committer directly, e.g. Orthanc's
`/modalities/{m}/storage-commitment`, and the committer knows the backend at dicomlb's
address): the committer's report calls the backend's AE title and is relayed to that backend.
Either way the relayed association carries the reporter's own calling AE title, as a direct
report would: requesters accept reports only from the AE they asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dicomlb.dicom.dimse import DataReceived, Status, Tag, response
from dicomlb.dicom.messages import InboundMessage
from dicomlb.dicom.negotiation import role_item
from dicomlb.dicom.pdu import RoleSelection
from dicomlb.dicom.qr import (
    STORAGE_COMMITMENT_PUSH,
    STUDY_ROOT_FIND,
    CommitmentRequest,
    commitment_holder,
    commitment_request,
    instances_query,
)
from dicomlb.dicom.upstream import UpstreamAssociation, UpstreamError, connect
from dicomlb.health import Cause
from dicomlb.pools import BackendState
from dicomlb.runtime import Runtime
from dicomlb.services import query, retrieve
from dicomlb.services.session import MessageFailed, Session
from dicomlb.snapshot import DicomAddress, StorageCommitment

log = logging.getLogger(__name__)

_REPORT_TIMEOUT = 30.0  # the requester's N-EVENT-REPORT-RSP
_CONNECT_TIMEOUT = 10.0


async def request(session: Session, message: InboundMessage) -> None:
    """Serve one N-ACTION-RQ (Request Storage Commitment)."""
    command = message.command
    try:
        placed = await query.place(session, message, "N-ACTION")
    except query.QueryRefused as refusal:
        _refuse(session, message, refusal.status, str(refusal))
        return
    if (
        command.sop_class_uid != STORAGE_COMMITMENT_PUSH
        or placed.route.pool.storage_commitment is not StorageCommitment.FORWARD
    ):
        _refuse(
            session,
            message,
            Status.NO_SUCH_SOP_CLASS,
            f"pool {placed.pool.name} does not take storage commitment",
        )
        return
    try:
        wanted = commitment_request(placed.identifier, message.transfer_syntax)
    except ValueError as err:
        _refuse(session, message, Status.PROCESSING_FAILURE, str(err))
        return
    pool = placed.pool
    available = {b.name: b for b in pool.backends if b.available and b.config.dicom is not None}
    holders = {
        uid: backend
        for uid, backend in session.runtime.studies.holders(wanted.instances).items()
        if backend in available
    }
    chosen, counts = commitment_holder(wanted.instances, holders)
    if chosen is None and len(available) > 1:
        # Stored through another instance (or directly): ask the backends.
        chosen, counts = await _probe(session, message, placed, wanted, list(available.values()))
    if len(counts) > 1:
        log.warning(
            "commitment.spread transaction=%s instances=%d backends=%s chosen=%s",
            wanted.transaction_uid,
            len(wanted.instances),
            ",".join(f"{name}:{n}" for name, n in counts.items()),
            chosen,
        )
    try:
        async with contextlib.AsyncExitStack() as leases:
            holder = available.get(chosen or "")
            backend, up = await _connect(session, message, placed, holder, leases)
            # Registered before forwarding: the report may come before the N-ACTION-RSP.
            session.runtime.commitments.register(
                transaction_uid=wanted.transaction_uid,
                requester_ae=session.inbound.calling_ae,
                backend=backend.name,
            )
            status = await session.forward(
                message,
                placed.route.pool,
                backend,
                up,
                [DataReceived(context_id=message.context_id, data=placed.identifier, is_last=True)],
                True,
            )
    except MessageFailed as failure:
        session.runtime.commitments.take(wanted.transaction_uid)
        _refuse(session, message, failure.status, str(failure))
        return
    if status != Status.SUCCESS:
        session.runtime.commitments.take(wanted.transaction_uid)  # no report will come
    log.info(
        "commitment.forwarded pool=%s backend=%s transaction=%s calling_aet=%s instances=%d "
        "located=%d status=0x%04X",
        pool.name,
        backend.name,
        wanted.transaction_uid,
        session.inbound.calling_ae,
        len(wanted.instances),
        counts.get(backend.name, 0),
        status,
    )


async def _probe(
    session: Session,
    message: InboundMessage,
    placed: query.Placed,
    wanted: CommitmentRequest,
    backends: list[BackendState],
) -> tuple[str | None, dict[str, int]]:
    """The backend holding most of the request's instances by a C-FIND for them at each
    backend (IMAGE level, list of UIDs), and how many each holds."""
    matches = await retrieve.probe(
        session,
        placed.route.pool,
        backends,
        STUDY_ROOT_FIND,
        message.transfer_syntax,
        instances_query(wanted.instances, message.transfer_syntax),
    )
    found = {name: n for name, n in matches.items() if n}
    log.info(
        "commitment.probed pool=%s transaction=%s instances=%d backends=%d found=%s",
        placed.pool.name,
        wanted.transaction_uid,
        len(wanted.instances),
        len(backends),
        ",".join(f"{name}:{n}" for name, n in found.items()) or "-",
    )
    if not found:
        return None, found
    return max(found, key=lambda name: found[name]), found


async def _connect(
    session: Session,
    message: InboundMessage,
    placed: query.Placed,
    holder: BackendState | None,
    leases: contextlib.AsyncExitStack,
) -> tuple[BackendState, UpstreamAssociation]:
    """The holder's upstream association, else the pool strategy's pick (leased on
    `leases`)."""
    if holder is not None:
        lease = session.runtime.upstreams[holder.name].lease(
            session.upstream_key(placed.route.pool, holder),
            (message.abstract_syntax, message.transfer_syntax),
            session.contexts,
            owner=session.upstreams,
        )
        try:
            up = await leases.enter_async_context(lease)
        except UpstreamError as err:
            session.declined(holder, placed.pool.name, err)
        else:
            return holder, up
    else:
        log.info(
            "commitment.unlocated pool=%s reason=%r",
            placed.pool.name,
            "no referenced instance known (stored before the last restart without state_dir, "
            "or not through dicomlb)",
        )
    return await session.connect(placed.pool, placed.key, message, leases)


async def report(session: Session, message: InboundMessage) -> None:
    """Relay a backend's N-EVENT-REPORT-RQ (Storage Commitment Result) to the requester and
    its N-EVENT-REPORT-RSP back."""
    started = time.monotonic()
    inbound = session.inbound
    command = message.command
    data = await query.read_identifier(message)
    if command.sop_class_uid != STORAGE_COMMITMENT_PUSH:
        _refuse(
            session,
            message,
            Status.NO_SUCH_SOP_CLASS,
            "dicomlb relays storage commitment reports only",
            what="report",
        )
        return
    try:
        transaction = commitment_request(data, message.transfer_syntax).transaction_uid
    except ValueError as err:
        _refuse(session, message, Status.PROCESSING_FAILURE, str(err), what="report")
        return
    pending = session.runtime.commitments.take(transaction)
    # Not registered (the backend is the requester, dicomlb restarted, or the registry
    # overflowed): the reporter calls the requester's AE title, so the called AE names it.
    requester = pending.requester_ae if pending is not None else inbound.called_ae
    target = _requester(session.runtime, requester, known_client=pending is not None)
    if target is None:
        _refuse(
            session,
            message,
            Status.PROCESSING_FAILURE,
            f"storage commitment requester {requester} is neither in dicomlb's dicom_nodes "
            "nor a backend's AE title",
            what="report",
        )
        return
    address, backend = target
    # The reporter's own AE title, as a direct report would carry (DESIGN 16): the
    # requester accepts reports only from the AE it asked.
    key = (inbound.calling_ae, address.ae_title, _SCP_ROLE)
    pair = (STORAGE_COMMITMENT_PUSH, message.transfer_syntax)
    loop = asyncio.get_running_loop()
    link: UpstreamAssociation | None = None
    try:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                if backend is not None:  # its TLS and maximum PDU
                    link = await connect(backend.config, key, [pair])
                else:
                    _, link = await loop.create_connection(
                        lambda: UpstreamAssociation(f"requester {requester}", key, [pair], 65536),
                        address.host,
                        address.port,
                    )
                await link.established
            context_id = link.context_for(pair)
            if context_id is None:
                raise UpstreamError(
                    f"{requester} refused storage commitment in {pair[1]}",
                    Cause.CONTEXT_REJECTED,
                )
            answer = await link.send_command(
                context_id,
                command.replace({Tag.MESSAGE_ID: link.next_message_id()}),
                [(data, True)],
                _REPORT_TIMEOUT,
            )
        except (UpstreamError, TimeoutError, OSError) as err:
            _refuse(
                session,
                message,
                Status.PROCESSING_FAILURE,
                f"{requester}: {err or 'timed out'}",
                what="report",
            )
            return
        status = answer.status or 0
        inbound.send_command(
            message.context_id,
            answer.replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: command.message_id}),
        )
        log.log(
            logging.INFO if status == Status.SUCCESS else logging.WARNING,
            "commitment.reported transaction=%s reporter_aet=%s requester=%s address=%s "
            "backend=%s event_type=%d status=0x%04X ms=%d",
            transaction,
            inbound.calling_ae,
            requester,
            address,
            backend.name if backend is not None else "-",
            command.us(Tag.EVENT_TYPE_ID) or 0,
            status,
            (time.monotonic() - started) * 1000,
        )
        await link.release()
    finally:
        if link is not None and link.usable:  # not released: cut off, never half-done
            link.abort()


# PS3.7 D.3.3.4: the reporter proposes only the SCP role, the requester then is the SCU.
_SCP_ROLE = (
    role_item(RoleSelection(sop_class_uid=STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)),
)


def _requester(
    runtime: Runtime, requester: str, *, known_client: bool
) -> tuple[DicomAddress, BackendState | None] | None:
    """Where a report for `requester` goes: its entry in `dicom_nodes`; else, for a
    transaction dicomlb did not forward (a backend asked a committer directly), the backend
    with that AE title, available ones first. None when neither is known."""
    node = runtime.snapshot.dicom_nodes.get(requester)
    if node is not None or known_client:
        return (node, None) if node is not None else None
    named = [
        b
        for b in runtime.backends.values()
        if b.config.dicom is not None and b.config.dicom.ae_title == requester
    ]
    if not named:
        return None
    backend = next((b for b in named if b.available), named[0])
    if len(named) > 1:
        log.warning(
            "commitment.ambiguous_requester requester=%s backends=%s chosen=%s",
            requester,
            ",".join(b.name for b in named),
            backend.name,
        )
    assert backend.config.dicom is not None
    return backend.config.dicom, backend


def _refuse(
    session: Session, message: InboundMessage, status: int, reason: str, what: str = "request"
) -> None:
    log.warning("commitment.failed %s status=0x%04X reason=%r", what, status, reason)
    session.inbound.send_command(
        message.context_id, response(message.command, status, error_comment=reason)
    )
