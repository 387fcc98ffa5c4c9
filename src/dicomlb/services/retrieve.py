"""C-MOVE and C-GET through the balancer (storage commitment: `services/commitment.py`).

Which backends: the study -> backend table (`studies.py`) when it knows the study; with
`query: one` any one healthy backend (shared database); otherwise a C-FIND probe across the
pool with the request's own identifier. Several backends → their sub-operation counts are
summed (`qr.RetrieveTally`).

C-MOVE, `move_destination: passthrough`: the backend resolves the destination itself and
dicomlb relays its pending and final responses. `via_balancer`: the destination becomes
dicomlb's own AE title; the backend's sub-operation C-STOREs arrive on dicomlb's listener,
are matched by Move Originator AE title and Message ID (`qr.MoveRegistry`), and relayed to
the real destination from `dicom_nodes`.

C-GET: the backend's sub-operation C-STOREs, on the C-GET's upstream association (dicomlb
proposes the client's SCP role for them), are streamed onto the client's association in the
transfer syntax the client accepted; the client's C-STORE-RSPs go back to the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dicomlb.delivery.passive import passive_failure
from dicomlb.dicom.acceptor import InboundAssociation
from dicomlb.dicom.dimse import (
    Command,
    CommandField,
    CommandReceived,
    DataReceived,
    Status,
    Tag,
    response,
)
from dicomlb.dicom.messages import InboundMessage, discard
from dicomlb.dicom.negotiation import role_item
from dicomlb.dicom.qr import (
    MOVE_DESTINATION_UNKNOWN,
    Counts,
    PendingMove,
    RetrieveTally,
    failed_instances,
    failed_list_identifier,
    find_model_of,
    retrieve_response,
    unanswered_comment,
)
from dicomlb.dicom.tags import STUDY_INSTANCE_UID
from dicomlb.dicom.upstream import Unreachable, UpstreamAssociation, UpstreamError
from dicomlb.health import Cause
from dicomlb.placement import refusal
from dicomlb.pools import BackendState
from dicomlb.services import query
from dicomlb.services.session import Session
from dicomlb.snapshot import MoveDestination, PoolConfig, QueryMode

log = logging.getLogger(__name__)

_SUBOPERATION_TIMEOUT = 120.0  # a destination's C-STORE response


# ------------------------------------------------------------------ which backends


async def locate(
    session: Session, message: InboundMessage, placed: query.Placed
) -> list[BackendState]:
    """The backends to retrieve from: known holders of the study, one backend of a shared
    database, or those a C-FIND probe finds the identifier at."""
    pool = placed.pool
    available = [b for b in pool.backends if b.available]
    if not available:
        return []
    if placed.mode is QueryMode.ONE:
        backend = pool.pick(placed.key)
        return [backend] if backend is not None else []
    study = placed.values.get(STUDY_INSTANCE_UID, "")
    if study:
        known = set(session.runtime.studies.locate(study))
        holders = [b for b in available if b.name in known]
        if holders:
            return holders
    found = await _probe(session, message, placed, available)
    if found:
        if study:
            session.runtime.studies.record_many(study, (b.name for b in found))
        return found
    backend = pool.pick(placed.key)  # nobody admits to it: let one backend answer
    return [backend] if backend is not None else []


async def _probe(
    session: Session, message: InboundMessage, placed: query.Placed, backends: list[BackendState]
) -> list[BackendState]:
    """C-FIND with the retrieve's identifier at each backend, in parallel."""
    find_uid = find_model_of(message.abstract_syntax)
    if find_uid is None:
        return []
    matches = await probe(
        session,
        placed.route.pool,
        backends,
        find_uid,
        message.transfer_syntax,
        placed.identifier,
    )
    found = [b for b in backends if matches.get(b.name)]
    log.info(
        "retrieve.probed pool=%s backends=%d found=%s",
        placed.pool.name,
        len(backends),
        ",".join(b.name for b in found) or "-",
    )
    return found


async def probe(
    session: Session,
    pool_config: PoolConfig,
    backends: list[BackendState],
    find_uid: str,
    transfer_syntax: str,
    identifier: bytes,
) -> dict[str, int]:
    """Send one C-FIND (`find_uid`, `identifier` in `transfer_syntax`) to each backend, in
    parallel, each within the pool's `query_timeout`: how many matches each answered (a
    backend that failed or did not answer in time counts none). How an instance finds what
    another one placed (C-MOVE / C-GET: a study; storage commitment: its instances)."""
    needed = (find_uid, transfer_syntax)

    async def ask(backend: BackendState) -> int:
        matches = 0

        def on_pending(answer: Command, data: bytes | None) -> None:
            nonlocal matches
            matches += 1

        lease = session.runtime.upstreams[backend.name].lease(
            session.upstream_key(pool_config, backend), needed, session.contexts
        )
        try:
            async with asyncio.timeout(pool_config.query_timeout), lease as up:
                context_id = up.context_for(needed)
                assert context_id is not None
                request = Command.build(
                    {
                        Tag.AFFECTED_SOP_CLASS_UID: find_uid,
                        Tag.COMMAND_FIELD: CommandField.C_FIND_RQ,
                        Tag.MESSAGE_ID: up.next_message_id(),
                        Tag.PRIORITY: 0,
                        Tag.COMMAND_DATA_SET_TYPE: 0x0000,
                    }
                )
                await up.send_command(
                    context_id,
                    request,
                    [(identifier, True)],
                    pool_config.query_timeout,
                    on_pending=on_pending,
                )
        except (UpstreamError, TimeoutError) as err:
            log.warning("retrieve.probe_failed backend=%s reason=%r", backend.name, str(err))
            if isinstance(err, UpstreamError):
                passive_failure(
                    session.runtime.metrics, backend, pool_config.name, err.cause, str(err)
                )
            return 0
        return matches

    counts = await asyncio.gather(*(ask(b) for b in backends))
    return {b.name: n for b, n in zip(backends, counts, strict=True)}


# ------------------------------------------------------------------ C-MOVE


async def move(session: Session, message: InboundMessage) -> None:
    """Serve one C-MOVE-RQ."""
    started = time.monotonic()
    inbound = session.inbound
    command = message.command
    destination = command.text(Tag.MOVE_DESTINATION) or ""
    try:
        placed = await query.place(session, message, "C-MOVE")
    except query.QueryRefused as refusal:
        _refuse(session, message, "move", refusal.status, str(refusal))
        return
    mode = placed.route.move_destination or placed.route.pool.move_destination
    snapshot = session.runtime.snapshot
    if mode is MoveDestination.VIA_BALANCER and destination not in snapshot.dicom_nodes:
        _refuse(
            session,
            message,
            "move",
            MOVE_DESTINATION_UNKNOWN,
            f"move destination {destination} is not in dicomlb's dicom_nodes",
        )
        return
    backends = await locate(session, message, placed)
    if not backends:
        _refuse(
            session,
            message,
            "move",
            Status.OUT_OF_RESOURCES,
            f"no healthy backend in pool {placed.pool.name}",
        )
        return
    pending_move: PendingMove | None = None
    rewrite: dict[int, int | str | bytes | None] = {}
    if mode is MoveDestination.VIA_BALANCER:
        assert snapshot.dicom is not None
        pending_move = session.runtime.moves.register(
            originator_ae=inbound.calling_ae,
            client_message_id=command.message_id,
            destination=destination,
            backends=(b.config.dicom.ae_title for b in backends if b.config.dicom is not None),
        )
        rewrite[Tag.MOVE_DESTINATION] = snapshot.dicom.ae_title
    try:
        tally = await _retrieve(session, message, placed, backends, rewrite, pending_move)
    finally:
        if pending_move is not None:
            session.runtime.moves.done(pending_move)
    where = f" destination={destination} mode={mode.value}"
    _conclude(session, message, placed, backends, tally, started, "move.relayed", where)


def _conclude(
    session: Session,
    message: InboundMessage,
    placed: query.Placed,
    backends: list[BackendState],
    tally: RetrieveTally,
    started: float,
    event: str,
    where: str = "",
) -> None:
    """Send a retrieve's final response and log its outcome (`where`: extra key=values)."""
    status = tally.final_status()
    total = tally.total()
    _final(session, message, tally, status)
    log.log(
        logging.INFO if status == Status.SUCCESS else logging.WARNING,
        "%s route=%s pool=%s backends=%s%s completed=%d failed=%d warning=%d status=0x%04X ms=%d",
        event,
        placed.route.name,
        placed.pool.name,
        ",".join(b.name for b in backends),
        where,
        total.completed,
        total.failed,
        total.warning,
        status,
        (time.monotonic() - started) * 1000,
    )


def _comment(tally: RetrieveTally) -> str | None:
    """The final response's Error Comment: "partial: …" only when some backend answered and
    others did not; the refusal itself when none answered; else what the backends said."""
    if tally.problems:
        return unanswered_comment(tally.problems, partial=len(tally.problems) < len(tally.backends))
    if len(tally.backends) == 1:
        return next(iter(tally.comments.values()), None)
    return "; ".join(f"{name}: {text}" for name, text in tally.comments.items()) or None


def _final(session: Session, message: InboundMessage, tally: RetrieveTally, status: int) -> None:
    """The final C-MOVE-RSP / C-GET-RSP: summed counts and, when backends listed failed
    instances, their merged Failed SOP Instance UID List (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    identifier = None
    if tally.failed_uids and status != Status.SUCCESS:
        identifier = failed_list_identifier(tally.failed_uids, message.transfer_syntax)
    answer = retrieve_response(
        message.command,
        status,
        tally.total(),
        final=True,
        error_comment=_comment(tally),
        identifier=identifier is not None,
    )
    session.inbound.send_message(message.context_id, answer, identifier)


def _refuse(session: Session, message: InboundMessage, what: str, status: int, reason: str) -> None:
    log.warning("%s.failed status=0x%04X reason=%r", what, status, reason)
    session.inbound.send_command(
        message.context_id,
        retrieve_response(message.command, status, Counts(), final=True, error_comment=reason),
    )


async def _retrieve(
    session: Session,
    message: InboundMessage,
    placed: query.Placed,
    backends: list[BackendState],
    rewrite: dict[int, int | str | bytes | None],
    pending_move: PendingMove | None,
    *,
    sequential: bool = False,
) -> RetrieveTally:
    """Send the C-MOVE / C-GET to `backends` and relay the summed pending responses."""
    inbound = session.inbound
    command = message.command
    tally = RetrieveTally(tuple(b.name for b in backends))
    pool_config = placed.route.pool
    forwarded = session.forwarded
    if command.command_field == CommandField.C_GET_RQ:
        # PS3.7 D.3.3.4: the client's SCP role for its storage classes, proposed upstream too.
        request = inbound.assoc.request
        assert request is not None
        forwarded = forwarded + tuple(role_item(r) for r in request.user_info.roles)

    async def ask(backend: BackendState, asked: query.Asked) -> None:
        key = session.upstream_key(pool_config, backend)
        key = (key[0], key[1], forwarded)
        needed = (message.abstract_syntax, message.transfer_syntax)

        def on_final(answer: Command, data: bytes | None) -> None:
            if data is not None:
                tally.failed_instances(failed_instances(data, message.transfer_syntax))

        def on_pending(answer: Command, data: bytes | None) -> None:
            total = tally.pending(backend.name, Counts.of(answer))
            inbound.send_command(
                message.context_id,
                retrieve_response(command, answer.status or 0xFF00, total, final=False),
            )

        try:
            async with session.runtime.upstreams[backend.name].lease(
                key, needed, session.contexts
            ) as up:
                context_id = up.context_for(needed)
                assert context_id is not None
                message_id = (
                    pending_move.message_id if pending_move is not None else up.next_message_id()
                )
                bridge = (
                    GetBridge(inbound, up)
                    if command.command_field == CommandField.C_GET_RQ
                    else None
                )
                try:
                    if bridge is not None:
                        bridge.attach()
                    future = up.send_command(
                        context_id,
                        command.replace({Tag.MESSAGE_ID: message_id, **rewrite}),
                        [(placed.identifier, True)],
                        pool_config.response_timeout,
                        on_pending=on_pending,
                        on_final=on_final,
                    )
                    asked.add(backend.name, up, context_id, message_id)
                    answer = await future
                finally:
                    if bridge is not None:
                        bridge.detach()
                    asked.discard(backend.name)
        except UpstreamError as err:
            # Refused before any answer: the sender is told so (dicomlb cannot refuse or
            # abort the association it already accepted, as the backend did).
            refused = None if backend.name in tally.counts else refusal(err.cause)
            if refused is not None:
                tally.failed(backend.name, refused.why, refused.status)
            else:
                tally.failed(
                    backend.name, "unreachable" if isinstance(err, Unreachable) else "failed"
                )
            log.warning(
                "retrieve.backend_failed backend=%s cause=%s reason=%r",
                backend.name,
                err.cause.value,
                str(err),
            )
            passive_failure(session.runtime.metrics, backend, pool_config.name, err.cause, str(err))
            return
        except TimeoutError:  # a long retrieve is not the backend's failure
            tally.failed(backend.name, "timed out")
            log.warning("retrieve.backend_failed backend=%s reason='timed out'", backend.name)
            return
        backend.health.success()
        tally.final(backend.name, answer.status or 0, Counts.of(answer))
        if answer.error_comment and answer.status:
            tally.comments[backend.name] = answer.error_comment

    with query.Asked(session, message) as asked:
        if sequential:
            for backend in backends:
                await ask(backend, asked)
        else:
            await asyncio.gather(*(ask(b, asked) for b in backends))
    return tally


# ------------------------------------------------------------------ C-MOVE sub-operations


async def relay_suboperation(session: Session, message: InboundMessage, move: PendingMove) -> None:
    """A backend's sub-operation C-STORE of a C-MOVE via the balancer: relay it to the real
    destination, and its status back to the backend."""
    started = time.monotonic()
    command = message.command
    sop_uid = command.sop_instance_uid
    status: int
    comment: str | None = None
    link: UpstreamAssociation | None = None
    try:
        link = await _destination(session, move.destination)
        pair = (message.abstract_syntax, message.transfer_syntax)
        context_id = link.context_for(pair)
        if context_id is None:
            raise UpstreamError(
                f"{move.destination} refused {message.abstract_syntax} "
                f"in {message.transfer_syntax}",
                Cause.CONTEXT_REJECTED,
            )
        future = link.send_command(
            context_id,
            command.replace(
                {
                    Tag.MESSAGE_ID: link.next_message_id(),
                    Tag.MOVE_ORIGINATOR_MESSAGE_ID: move.client_message_id,
                }
            ),
            (),
            _SUBOPERATION_TIMEOUT,
        )
        done = message.data is None
        while not done:
            assert message.data is not None
            fragment = await message.data.get()
            link.send_data(context_id, fragment.data, fragment.is_last)
            done = fragment.is_last
            await link.drain()
        answer = await future
        status = answer.status or 0
        comment = answer.error_comment
    except (UpstreamError, TimeoutError, OSError) as err:
        await discard(message)
        status = Status.OUT_OF_RESOURCES  # PS3.4 C.4.2.1.5: A702 would be the mover's own
        comment = str(err) or "timed out"
    finally:
        if link is not None and not link.clean:  # cut off or failed: never reused
            link.abort()
            session.destinations.pop(move.destination, None)
    session.inbound.send_command(
        message.context_id, response(command, status, error_comment=comment)
    )
    log.log(
        logging.INFO if status == Status.SUCCESS else logging.WARNING,
        "move.suboperation sop_instance_uid=%s backend_aet=%s destination=%s originator_aet=%s "
        "message_id=%d status=0x%04X ms=%d",
        sop_uid,
        session.inbound.calling_ae,
        move.destination,
        move.originator_ae,
        move.client_message_id,
        status,
        (time.monotonic() - started) * 1000,
    )


async def _destination(session: Session, ae_title: str) -> UpstreamAssociation:
    """This association's link to a C-MOVE destination, opened on first use."""
    link = session.destinations.get(ae_title)
    if link is not None and link.usable:
        return link
    address = session.runtime.snapshot.dicom_nodes[ae_title]
    # The backend's own calling AE title, as its sub-operations would carry directly.
    calling = session.inbound.calling_ae
    link = None
    try:
        async with asyncio.timeout(10.0):
            link = await session.runtime.dial(
                lambda: UpstreamAssociation(
                    f"destination {ae_title}",
                    (calling, address.ae_title, ()),
                    session.contexts,
                    65536,
                ),
                address.host,
                address.port,
            )
            await link.established
    except BaseException:
        if link is not None:
            link.abort()
        raise
    session.destinations[ae_title] = link
    log.info("move.destination_associated destination=%s address=%s", ae_title, address)
    return link


# ------------------------------------------------------------------ C-GET


async def get(session: Session, message: InboundMessage) -> None:
    """Serve one C-GET-RQ."""
    started = time.monotonic()
    try:
        placed = await query.place(session, message, "C-GET")
    except query.QueryRefused as refusal:
        _refuse(session, message, "get", refusal.status, str(refusal))
        return
    backends = await locate(session, message, placed)
    if not backends:
        _refuse(
            session,
            message,
            "get",
            Status.OUT_OF_RESOURCES,
            f"no healthy backend in pool {placed.pool.name}",
        )
        return
    # One backend at a time: their sub-operations share the client's association.
    tally = await _retrieve(session, message, placed, backends, {}, None, sequential=True)
    _conclude(session, message, placed, backends, tally, started, "get.relayed")


class GetBridge:
    """Streams a backend's C-GET sub-operation C-STOREs onto the client's association and
    the client's C-STORE-RSPs back, rewriting Message IDs both ways."""

    def __init__(self, inbound: InboundAssociation, up: UpstreamAssociation) -> None:
        self.inbound = inbound
        self.up = up
        request = inbound.assoc.request
        assert request is not None
        self.client_contexts = {
            (p.abstract_syntax, inbound.assoc.accepted[p.context_id].transfer_syntax): p.context_id
            for p in request.contexts
            if p.context_id in inbound.assoc.accepted
        }
        self.upstream_pairs = {cid: pair for pair, cid in up.contexts.items()}
        # client Message ID -> (backend Message ID, upstream context, the request)
        self.waiting: dict[int, tuple[int, int, Command]] = {}
        self.streaming: int | None = None  # client context of the data set being relayed
        self.started: dict[int, float] = {}

    def attach(self) -> None:
        self.up.on_request = self.on_backend
        self.inbound.on_response = self.on_client_response

    def detach(self) -> None:
        self.up.on_request = None
        self.inbound.on_response = None

    def on_backend(self, event: CommandReceived | DataReceived) -> None:
        if isinstance(event, DataReceived):
            if self.streaming is None:
                return  # the sub-operation was refused: drop its data set
            self.inbound.send_data(self.streaming, event.data, event.is_last)
            if event.is_last:
                self.streaming = None
            if not self.inbound.writable:
                self.up.pause_reading()  # paired back-pressure: a slow client slows the backend
                self.inbound.when_writable(self.up.resume_reading)
            return
        command = event.command
        pair = self.upstream_pairs.get(event.context_id)
        context_id = self.client_contexts.get(pair) if pair is not None else None
        if command.command_field != CommandField.C_STORE_RQ or context_id is None:
            self.streaming = None
            reason = (
                f"dicomlb does not relay {command.service} on a C-GET"
                if command.command_field != CommandField.C_STORE_RQ
                else "the client did not accept this SOP class for C-GET"
            )
            self.up.send_plain(
                event.context_id,
                response(command, Status.SOP_CLASS_NOT_SUPPORTED, error_comment=reason),
            )
            log.warning(
                "get.suboperation sop_instance_uid=%s status=0x%04X reason=%r",
                command.sop_instance_uid,
                Status.SOP_CLASS_NOT_SUPPORTED,
                reason,
            )
            return
        message_id = self.inbound.next_message_id()
        self.waiting[message_id] = (command.message_id, event.context_id, command)
        self.started[message_id] = time.monotonic()
        self.inbound.send_message(context_id, command.replace({Tag.MESSAGE_ID: message_id}))
        self.streaming = context_id if command.has_data_set else None

    def on_client_response(self, received: CommandReceived) -> None:
        answer = received.command
        entry = self.waiting.pop(answer.responded_to, None)
        started = self.started.pop(answer.responded_to, time.monotonic())
        if entry is None:
            log.warning(
                "get.unexpected_response calling_aet=%s command=%s message_id=%d",
                self.inbound.calling_ae,
                answer.service,
                answer.responded_to,
            )
            return
        backend_message_id, context_id, request = entry
        self.up.send_plain(
            context_id, answer.replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: backend_message_id})
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "get.suboperation sop_instance_uid=%s backend=%s status=0x%04X ms=%d",
                request.sop_instance_uid,
                self.up.backend,
                answer.status or 0,
                (time.monotonic() - started) * 1000,
            )
