"""Per-association serving: a client association's requests, in order, each to its service.

`Relay.serve` is what the DICOM listener runs for every accepted association (`app.py` hands
the `Relay` to `DicomListener`): one `Session`, the messages one at a time, each refused or
dispatched by its command field.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dicomlb.dicom.acceptor import InboundAssociation
from dicomlb.dicom.dimse import CommandField, Status, request_refusal
from dicomlb.dicom.messages import ClientGone, InboundMessage, discard
from dicomlb.runtime import Runtime
from dicomlb.services import commitment, query, retrieve
from dicomlb.services.echo import echo
from dicomlb.services.session import Session
from dicomlb.services.store import store
from dicomlb.snapshot import Ack
from dicomlb.spool.spool import Spool

log = logging.getLogger(__name__)

Handler = Callable[[Session, InboundMessage], Awaitable[None]]

HANDLERS: dict[int, Handler] = {
    CommandField.C_STORE_RQ: store,
    CommandField.C_ECHO_RQ: echo,
    CommandField.C_FIND_RQ: query.find,
    CommandField.C_MOVE_RQ: retrieve.move,
    CommandField.C_GET_RQ: retrieve.get,
    CommandField.N_ACTION_RQ: commitment.request,
    CommandField.N_EVENT_REPORT_RQ: commitment.report,  # a backend's storage commitment report
}


class Relay:
    """The DICOM services of the listener: each accepted association served in order, and
    whether the routes (their pools, or the spool for `ack: spool` routes) can take a
    message now."""

    def __init__(self, spool: Spool | None) -> None:
        self.spool = spool

    async def serve(self, inbound: InboundAssociation) -> None:
        """Work through one client association's messages, one at a time, until it
        releases (or goes)."""
        session = Session(inbound, self.spool)
        try:
            while True:
                message = await inbound.next_message()
                if message is None:
                    inbound.release()
                    return
                inbound.busy = True
                try:
                    await handle(session, message)
                except ClientGone:
                    return
                except Exception as err:  # a defect of dicomlb's: never a silent hang
                    log.error(
                        "relay.failed peer=%s:%d calling_aet=%s command=%s error=%r",
                        *inbound.peer,
                        inbound.calling_ae,
                        message.command.service,
                        f"{type(err).__name__}: {err}",
                    )
                    inbound.abort("dicomlb failed serving this message")
                    return
                finally:
                    inbound.busy = False
        finally:
            session.close()

    def any_route_available(self, runtime: Runtime) -> bool:
        """True when some route can take a message now (or there are no routes): its pool
        has an available backend, or it is spooled (`ack: spool`) and the spool has room."""
        routes = runtime.snapshot.routes
        if not routes:
            return True
        if any(runtime.pools[r.pool.name].has_available() for r in routes if r.ack is Ack.BACKEND):
            return True
        spooled = any(r.ack is Ack.SPOOL for r in routes)
        return spooled and self.spool is not None and self.spool.accepting()

    def no_route_reason(self, runtime: Runtime) -> str:
        """Why no route can take a message now (when `any_route_available` says so): the
        spool's refusal for spooled routes, no healthy backend for the others."""
        routes = runtime.snapshot.routes
        reasons = []
        if any(r.ack is Ack.BACKEND for r in routes):
            reasons.append("no healthy backend in any pool a route uses")
        refusal = self.spool.refusal() if self.spool is not None else None
        if refusal is not None and any(r.ack is Ack.SPOOL for r in routes):
            reasons.append(f"spool full: {refusal}")
        return "; ".join(reasons) or "no route can take a message"


async def handle(session: Session, message: InboundMessage) -> None:
    """Refuse the message, or hand it to its service."""
    inbound = session.inbound
    refusal = request_refusal(message.command, message.abstract_syntax, session.related)
    if refusal is not None:
        status, reason = refusal
        await discard(message)
        log.warning(
            "dimse.refused peer=%s:%d calling_aet=%s command=%s context=%d status=0x%04X reason=%r",
            *inbound.peer,
            inbound.calling_ae,
            message.command.service,
            message.context_id,
            status,
            reason,
        )
        session.respond(message, status, reason)
        return
    handler = HANDLERS.get(message.command.command_field)
    if handler is None:
        await discard(message)
        session.respond(
            message,
            Status.UNRECOGNIZED_OPERATION,
            f"dicomlb does not relay {message.command.service}",
        )
        return
    await handler(session, message)
