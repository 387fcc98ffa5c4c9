"""C-STORE through the balancer: the routing tags read, a route and a backend picked, the
command and the data set streamed, untouched, over a pooled upstream association, and the
backend's response handed back to the client.

`ack: spool` routes go to the spool (`Spool.ingest`), a `store_via` backend over HTTP (the
bridge), a C-MOVE sub-operation via the balancer to its destination (`services/retrieve`).
Every image's fate is logged: store.received -> store.routed -> store.delivered | store.failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

from dicomlb.delivery import fate
from dicomlb.delivery.passive import passive_failure
from dicomlb.delivery.senders import LiveInstance, cause_of, sender_for
from dicomlb.dicom.dimse import DataReceived, Status, Tag
from dicomlb.dicom.messages import InboundMessage, discard
from dicomlb.dicom.tags import STUDY_INSTANCE_UID, HeaderScanner, is_uid, tag_name
from dicomlb.services.retrieve import relay_suboperation
from dicomlb.services.session import MessageFailed, Session
from dicomlb.snapshot import Ack, MessageFacts, ScanLimit

log = logging.getLogger(__name__)

# Python 3.11's EnumType.__getattr__ makes `Ack.SPOOL` slow to look up; read per C-STORE.
_SPOOL = Ack.SPOOL


async def store(session: Session, message: InboundMessage) -> None:
    """Serve one C-STORE-RQ."""
    inbound = session.inbound
    runtime = session.runtime
    command = message.command
    sop_uid = command.sop_instance_uid
    started = time.monotonic()
    fate.received(message, inbound.calling_ae, inbound.peer[0])
    if runtime.moves and command.us(Tag.MOVE_ORIGINATOR_MESSAGE_ID) is not None:
        move = runtime.moves.match(command, inbound.calling_ae)
        if move is not None:  # a sub-operation of a C-MOVE via the balancer
            await relay_suboperation(session, message, move)
            return
    try:
        head, done, tags, limited = await _read_header(session, message)
    except MessageFailed as unreadable:
        await _store_refused(session, message, "", "", unreadable)
        return
    facts = MessageFacts(
        calling_aet=inbound.calling_ae,
        called_aet=inbound.called_ae,
        peer_ip=inbound.peer[0],
        command="C-STORE",
        sop_class_uid=command.sop_class_uid,
        tags=tags,
    )
    route = runtime.router.select(facts)
    if limited and (route is None or route.on_scan_limit is ScanLimit.REFUSE):
        missing = ", ".join(
            tag_name(tag) for tag in sorted(runtime.snapshot.wanted_tags.difference(tags))
        )
        refusal = MessageFailed(
            Status.CANNOT_UNDERSTAND,
            f"routing tags not found within the scan limit: {missing}",
        )
        route_name, pool_name = (route.name, route.pool.name) if route else ("", "")
        await _store_refused(session, message, route_name, pool_name, refusal)
        return
    if route is None:
        refusal = MessageFailed(Status.NOT_AUTHORIZED, "no route matches this instance")
        await _store_refused(session, message, "", "", refusal)
        return
    # `ack: spool` routes answer once the instance is durable
    if route.ack is _SPOOL and session.spool is not None:
        await session.spool.ingest(
            runtime,
            message,
            route,
            head,
            done,
            tags,
            started,
            calling_aet=inbound.calling_ae,
            called_aet=inbound.called_ae,
            respond=functools.partial(session.respond, message),
        )
        return
    pool = runtime.pools[route.pool.name]
    key = tags.get(route.pool.key, "") if route.pool.key is not None else ""
    tried: set[str] = set()
    reasons: list[str] = []
    failure: MessageFailed | None = None
    async with contextlib.AsyncExitStack() as leases:
        while True:  # a bridged backend that cannot be reached: the next one
            try:
                backend, maybe_up = await session.place(
                    pool, key, message, leases, http_store=True, tried=tried, reasons=reasons
                )
            except MessageFailed as refusal:
                await _store_refused(session, message, route.name, pool.name, refusal)
                return
            shown = key if route.pool.key is not None and is_uid(route.pool.key) else "-"
            fate.routed(sop_uid, route.name, pool.name, backend.name, shown)
            if maybe_up is not None:
                break
            # a store_via backend: over HTTP
            sender = sender_for(runtime, backend)
            source = LiveInstance(
                message, head, done, calling_aet=inbound.calling_ae, called_aet=inbound.called_ae
            )
            sent = await sender.send(source, route.pool)
            outcome = sent.outcome
            if sent.untried:
                # Nothing was sent: the pool's next backend may take it (as `Session.place`
                # does for a DICOM backend that cannot be reached).
                log.warning(
                    "backend.unreachable backend=%s pool=%s via=%s reason=%r",
                    backend.name,
                    pool.name,
                    sender.via,
                    outcome.comment,
                )
                passive_failure(
                    runtime.metrics, backend, pool.name, cause_of(outcome), outcome.comment
                )
                reasons.append(f"{backend.name}: {outcome.comment}")
                continue
            await discard(message)  # the request failed mid-stream: drop the rest
            if sent.cause is not None:
                passive_failure(runtime.metrics, backend, pool.name, sent.cause, outcome.comment)
            elif outcome.status < 0xFF00:
                backend.health.success()
            fate.answered(
                runtime,
                sop_instance_uid=sop_uid,
                study_uid=tags.get(STUDY_INSTANCE_UID, ""),
                route=route.name,
                pool=pool.name,
                backend=backend.name,
                status=outcome.status,
                started=started,
                via=sender.via,
                reason=outcome.comment,
            )
            session.respond(message, outcome.status, outcome.comment or None)
            return
        try:
            status = await session.forward(message, route.pool, backend, maybe_up, head, done)
        except MessageFailed as err:
            failure = err
    if failure is not None:
        # The lease is given back (aborted) first: the slot is free while the rest of
        # the data set is read and dropped.
        await discard(message)
        fate.failed(
            runtime,
            sop_instance_uid=sop_uid,
            route=route.name,
            pool=pool.name,
            backend=backend.name,
            status=failure.status,
            reason=str(failure),
            started=started,
        )
        session.respond(message, failure.status, f"{backend.name}: {failure}")
        return
    fate.answered(
        runtime,
        sop_instance_uid=sop_uid,
        study_uid=tags.get(STUDY_INSTANCE_UID, ""),
        route=route.name,
        pool=pool.name,
        backend=backend.name,
        status=status,
        started=started,
    )


async def _store_refused(
    session: Session, message: InboundMessage, route: str, pool: str, failure: MessageFailed
) -> None:
    """No route, or no backend of the route's pool, took the C-STORE: drop its data set,
    answer the failure (`route` and `pool` empty when no route matched)."""
    await discard(message)
    fate.refused(
        session.runtime,
        sop_instance_uid=message.command.sop_instance_uid,
        route=route,
        pool=pool,
        status=failure.status,
        reason=str(failure),
    )
    session.respond(message, failure.status, str(failure))


async def _read_header(
    session: Session, message: InboundMessage
) -> tuple[list[DataReceived], bool, dict[int, str], bool]:
    """Fragments read until the routing tags are known, whether that was the whole data
    set, the tags, and whether the scan cap ended the search (`HeaderScanner.limited`).

    Fragments held while the tags are still unknown count against the listener's
    `scan_budget`, shared by every association: when it is spent, MessageFailed (0xA700,
    the rest of the data set still to be read) rather than more memory.
    """
    wanted = session.runtime.snapshot.wanted_tags
    head: list[DataReceived] = []
    assert message.data is not None
    if not wanted:
        return head, False, {}, False
    encoding = session.inbound.config.encoding(message.transfer_syntax)
    scanner = HeaderScanner(message.transfer_syntax, wanted, encoding=encoding)
    budget = session.inbound.listener.scan_budget
    with budget.lease(session.inbound.config.scan_budget) as lease:
        while not scanner.done:
            fragment = await message.data.get()
            head.append(fragment)
            done = scanner.feed(fragment.data)
            if fragment.is_last:
                scanner.finish()
                return head, True, scanner.values, scanner.limited
            if not done and not lease.take(len(fragment.data)):
                raise MessageFailed(
                    Status.OUT_OF_RESOURCES,
                    f"scan budget spent: {budget.held} bytes held waiting for routing "
                    f"tags, scan_budget={lease.limit}; retry later",
                )
    return head, False, scanner.values, scanner.limited
