"""One client association's side of placement: which backend takes a message, the upstream
association it goes over, and the client's answer.

A `Session` is made per client association by `services/relay.py`; the services (echo,
store, query, retrieve, commitment) place and forward their messages through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dicomlb.delivery.passive import passive_failure
from dicomlb.dicom.acceptor import InboundAssociation
from dicomlb.dicom.dimse import Command, DataReceived, Status, Tag, response
from dicomlb.dicom.messages import InboundMessage
from dicomlb.dicom.negotiation import related_general_classes
from dicomlb.dicom.upstream import (
    ClientUpstreams,
    ContextRejected,
    Rejected,
    Unreachable,
    UpstreamAssociation,
    UpstreamError,
    UpstreamKey,
)
from dicomlb.health import Cause
from dicomlb.pools import BackendState, Pool
from dicomlb.snapshot import CalledAet, PoolConfig
from dicomlb.spool.spool import Spool

log = logging.getLogger(__name__)

# Python 3.11's EnumType.__getattr__ makes `Enum.MEMBER` slow to look up; these are read for
# every message relayed.
_MESSAGE_ID = Tag.MESSAGE_ID
_RESPONDED_TO = Tag.MESSAGE_ID_BEING_RESPONDED_TO
_PASSTHROUGH = CalledAet.PASSTHROUGH


class MessageFailed(Exception):
    """The message cannot be delivered; `status` and the text go back to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Session:
    """The placement state of one client association: its contexts and forwarded items, the
    backend associations it owns, its C-MOVE destinations."""

    def __init__(self, inbound: InboundAssociation, spool: Spool | None = None) -> None:
        self.inbound = inbound
        self.runtime = inbound.runtime
        self.spool = spool  # `ack: spool` routes' instances go there
        request = inbound.assoc.request
        assert request is not None
        # Proposed to a backend when a new upstream association is opened: everything the
        # client negotiated, so that one upstream association serves its later messages.
        self.contexts = [
            (proposal.abstract_syntax, inbound.assoc.accepted[proposal.context_id].transfer_syntax)
            for proposal in request.contexts
            if proposal.context_id in inbound.assoc.accepted
        ]
        self.forwarded = request.user_info.raw_items
        self.related = related_general_classes(request.user_info)
        # C-MOVE destinations this association's sub-operations are relayed to (via_balancer).
        self.destinations: dict[str, UpstreamAssociation] = {}
        # Backend associations this client's association owns (`upstream: per_client`).
        self.upstreams = ClientUpstreams()

    def close(self) -> None:
        """The client association ended: its backend associations and destinations go."""
        self.upstreams.close()
        for link in self.destinations.values():
            if link.clean:
                link.schedule_idle_release(0.0)  # A-RELEASE on the next turn; it owns the task
            else:
                link.abort()  # a sub-operation cut off: the destination must not keep it

    # -------------------------------------------------------- forwarding

    async def connect(
        self, pool: Pool, key: str, message: InboundMessage, leases: contextlib.AsyncExitStack
    ) -> tuple[BackendState, UpstreamAssociation]:
        """Pick a backend and lease an upstream association on `leases` (given back when it
        closes), trying the next backend when one cannot take the message (nothing has been
        sent yet, so this is safe)."""
        backend, up = await self.place(pool, key, message, leases)
        assert up is not None
        return backend, up

    async def place(
        self,
        pool: Pool,
        key: str,
        message: InboundMessage,
        leases: contextlib.AsyncExitStack,
        *,
        http_store: bool = False,
        tried: set[str] | None = None,
        reasons: list[str] | None = None,
    ) -> tuple[BackendState, UpstreamAssociation | None]:
        """`connect`; with `http_store`, a `store_via` backend is returned without an
        association (None): the C-STORE goes over HTTP, and when the bridge cannot reach it
        the caller calls again with the same `tried` and `reasons` (the bridge's reason
        added) for the next backend. Backends without a dicom address are skipped for
        everything else."""
        tried = set() if tried is None else tried
        reasons = [] if reasons is None else reasons
        http_only = False
        causes: list[Cause] = []
        needed = (message.abstract_syntax, message.transfer_syntax)
        while True:
            backend = pool.pick(key, exclude=frozenset(tried))
            if backend is None:
                raise placement_refusal(
                    pool.name, message.command.service, http_only, causes, reasons
                )
            tried.add(backend.name)
            if http_store and backend.config.store is not None:
                return backend, None
            if backend.config.dicom is None:
                http_only = True
                continue
            lease = self.runtime.upstreams[backend.name].lease(
                self.upstream_key(pool.config, backend),
                needed,
                self.contexts,
                owner=self.upstreams,
            )
            try:
                up = await leases.enter_async_context(lease)
            except UpstreamError as err:
                reasons.append(f"{backend.name}: {err}")
                causes.append(err.cause)
                self.declined(backend, pool.name, err)
                if isinstance(err, Rejected) and err.permanent:
                    raise MessageFailed(Status.NOT_AUTHORIZED, f"{backend.name}: {err}") from None
                continue
            return backend, up

    def declined(self, backend: BackendState, pool: str, err: UpstreamError) -> None:
        """A backend could not take a message (no association): one log line, and passive
        health told what happened."""
        event = "backend.unreachable" if isinstance(err, Unreachable) else "backend.declined"
        # A refusal said before is what it was then: logged once, when it was learned.
        level = (
            logging.DEBUG if isinstance(err, ContextRejected) and err.learned else logging.WARNING
        )
        log.log(
            level,
            "%s backend=%s pool=%s cause=%s reason=%r",
            event,
            backend.name,
            pool,
            err.cause.value,
            str(err),
        )
        passive_failure(self.runtime.metrics, backend, pool, err.cause, str(err))

    def upstream_key(self, pool: PoolConfig, backend: BackendState) -> UpstreamKey:
        dicom = backend.config.dicom
        assert dicom is not None  # config.py: DICOM routes use pools of DICOM backends
        called = self.inbound.called_ae if pool.called_aet is _PASSTHROUGH else dicom.ae_title
        return (self.inbound.calling_ae, called, self.forwarded)

    async def forward(
        self,
        message: InboundMessage,
        pool: PoolConfig,
        backend: BackendState,
        up: UpstreamAssociation,
        head: list[DataReceived],
        done: bool,
    ) -> int:
        """Send the message over `up` (leased by the caller, whose lease aborts it if the
        message is cut off), relay the response to the client; the status. Raises
        MessageFailed when the backend fails it (the rest of the data set is left unread)."""
        context_id = up.context_for((message.abstract_syntax, message.transfer_syntax))
        assert context_id is not None
        pending: asyncio.Future[Command] | None = None
        try:
            command = message.command.replace({_MESSAGE_ID: up.next_message_id()})
            pending = up.send_command(
                context_id,
                command,
                [(fragment.data, fragment.is_last) for fragment in head],
                pool.response_timeout,
                on_response=lambda answer: self.inbound.send_command(
                    message.context_id,
                    answer.replace({_RESPONDED_TO: message.command.message_id}),
                ),
            )
            await up.drain()
            while not done:
                assert message.data is not None
                fragment = await message.data.get()
                up.send_data(context_id, fragment.data, fragment.is_last)
                done = fragment.is_last
                await up.drain()
            answer = await pending
        except UpstreamError as err:
            passive_failure(self.runtime.metrics, backend, pool.name, err.cause, str(err))
            raise MessageFailed(Status.PROCESSING_FAILURE, str(err)) from None
        except TimeoutError:
            reason = f"no response within {pool.response_timeout:g}s"
            passive_failure(
                self.runtime.metrics, backend, pool.name, Cause.RESPONSE_TIMEOUT, reason
            )
            raise MessageFailed(Status.PROCESSING_FAILURE, reason) from None
        finally:
            if pending is not None:
                _settle(pending)
        backend.health.success()
        return answer.status or 0

    def respond(self, message: InboundMessage, status: int, comment: str | None = None) -> None:
        self.inbound.send_command(
            message.context_id, response(message.command, status, error_comment=comment)
        )


def _settle(future: asyncio.Future[Command]) -> None:
    """Nobody awaits `future` any more (the client went mid-message, or the backend failed
    while the data set was still going out): cancel it, or mark its exception read, so that
    the lease's abort leaves no "exception never retrieved" behind."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def placement_refusal(
    pool: str, service: str, http_only: bool, causes: list[Cause], reasons: list[str]
) -> MessageFailed:
    """The answer when no backend of `pool` took a message: SOP class not supported when
    the backends refused its presentation context (or speak HTTP only), else out of
    resources with every backend's reason."""
    if http_only and not reasons:
        return MessageFailed(
            Status.SOP_CLASS_NOT_SUPPORTED, f"{service} not possible: pool {pool} is http only"
        )
    if causes and all(cause is Cause.CONTEXT_REJECTED for cause in causes):
        return MessageFailed(
            Status.SOP_CLASS_NOT_SUPPORTED,
            f"no backend of pool {pool} accepts it: {'; '.join(reasons)}",
        )
    detail = "; ".join(reasons) if reasons else "every backend is down or disabled"
    return MessageFailed(Status.OUT_OF_RESOURCES, f"no healthy backend in pool {pool}: {detail}")
