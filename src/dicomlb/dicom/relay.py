"""Per-message forwarding: a client association's requests, in order, to backends.

For a C-STORE the relay reads data-set fragments until the header scanner has the routing
tags, picks a route and a backend, then streams the command and the data set, untouched,
over a pooled upstream association and hands the backend's response back to the client.
Every image's fate is logged: store.received -> store.routed -> store.delivered | store.failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dicomlb.delivery.passive import passive_failure
from dicomlb.dicom.acceptor import InboundAssociation
from dicomlb.dicom.dimse import (
    Command,
    CommandField,
    DataReceived,
    Status,
    Tag,
    request_refusal,
    response,
)
from dicomlb.dicom.messages import ClientGone, InboundMessage, discard
from dicomlb.dicom.negotiation import related_general_classes
from dicomlb.dicom.status import succeeded
from dicomlb.dicom.tags import HeaderScanner, is_uid, tag_name
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
from dicomlb.snapshot import Ack, CalledAet, MessageFacts, PoolConfig, ScanLimit

log = logging.getLogger(__name__)

# PS3.7 C.4: warnings (0x0001, 0xBxxx) still mean the instance was stored.


class MessageFailed(Exception):
    """The message cannot be delivered; `status` and the text go back to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_QR_SERVICES = frozenset(
    {
        CommandField.C_FIND_RQ,
        CommandField.C_MOVE_RQ,
        CommandField.C_GET_RQ,
        CommandField.N_ACTION_RQ,
        CommandField.N_EVENT_REPORT_RQ,  # a backend's storage commitment report
    }
)


class Relay:
    """Works through one client association's messages, one at a time."""

    def __init__(self, inbound: InboundAssociation) -> None:
        self.inbound = inbound
        self.runtime = inbound.runtime
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

    async def run(self) -> None:
        inbound = self.inbound
        try:
            while True:
                message = await inbound.next_message()
                if message is None:
                    inbound.release()
                    return
                inbound.busy = True
                try:
                    await self.handle(message)
                except ClientGone:
                    return
                finally:
                    inbound.busy = False
        finally:
            self.upstreams.close()
            for link in self.destinations.values():
                if link.clean:
                    link.schedule_idle_release(0.0)  # A-RELEASE on the next turn; it owns the task
                else:
                    link.abort()  # a sub-operation cut off: the destination must not keep it

    async def handle(self, message: InboundMessage) -> None:
        refusal = request_refusal(message.command, message.abstract_syntax, self.related)
        if refusal is not None:
            status, reason = refusal
            await discard(message)
            log.warning(
                "dimse.refused peer=%s:%d calling_aet=%s command=%s context=%d status=0x%04X "
                "reason=%r",
                *self.inbound.peer,
                self.inbound.calling_ae,
                message.command.service,
                message.context_id,
                status,
                reason,
            )
            self._respond(message, status, reason)
            return
        field = message.command.command_field
        if field == CommandField.C_STORE_RQ:
            await self.store(message)
        elif field == CommandField.C_ECHO_RQ:
            await self.echo(message)
        elif field in _QR_SERVICES:
            from dicomlb.dicom.retrieve import serve  # query/retrieve, storage commitment

            await serve(self, message)
        else:
            await discard(message)
            self._respond(
                message,
                Status.UNRECOGNIZED_OPERATION,
                f"dicomlb does not relay {message.command.service}",
            )

    # -------------------------------------------------------- C-ECHO

    async def echo(self, message: InboundMessage) -> None:
        pool_config = self.runtime.snapshot.dicom.echo_pool if self.runtime.snapshot.dicom else None
        if pool_config is None:
            self._respond(message, Status.SUCCESS)
            return
        pool = self.runtime.pools[pool_config.name]
        started = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as leases:
                backend, up = await self._connect(pool, "", message, leases)
                status = await self._forward(message, pool_config, backend, up, [], done=True)
        except MessageFailed as failure:
            log.warning("echo.failed pool=%s reason=%r", pool.name, str(failure))
            self._respond(message, failure.status, str(failure))
            return
        self.runtime.metrics.store_finished(
            pool=pool.name,
            backend=backend.name,
            status=status,
            seconds=time.monotonic() - started,
            command="C-ECHO",
        )
        log.info(
            "echo.relayed pool=%s backend=%s status=0x%04X ms=%d",
            pool.name,
            backend.name,
            status,
            (time.monotonic() - started) * 1000,
        )

    # -------------------------------------------------------- C-STORE

    async def store(self, message: InboundMessage) -> None:
        inbound = self.inbound
        command = message.command
        sop_uid = command.sop_instance_uid
        started = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "store.received sop_instance_uid=%s sop_class_uid=%s calling_aet=%s peer=%s "
                "transfer_syntax=%s",
                sop_uid,
                command.sop_class_uid,
                inbound.calling_ae,
                inbound.peer[0],
                message.transfer_syntax,
            )
        if self.runtime.moves and command.us(Tag.MOVE_ORIGINATOR_MESSAGE_ID) is not None:
            move = self.runtime.moves.match(command, inbound.calling_ae)
            if move is not None:  # a sub-operation of a C-MOVE via the balancer
                from dicomlb.dicom.retrieve import relay_suboperation

                await relay_suboperation(self, message, move)
                return
        try:
            head, done, tags, limited = await self._read_header(message)
        except MessageFailed as unreadable:
            await self._store_refused(message, "", "", unreadable)
            return
        facts = MessageFacts(
            calling_aet=inbound.calling_ae,
            called_aet=inbound.called_ae,
            peer_ip=inbound.peer[0],
            command="C-STORE",
            sop_class_uid=command.sop_class_uid,
            tags=tags,
        )
        route = self.runtime.router.select(facts)
        if limited and (route is None or route.on_scan_limit is ScanLimit.REFUSE):
            missing = ", ".join(
                tag_name(tag) for tag in sorted(self.runtime.snapshot.wanted_tags - tags.keys())
            )
            refusal = MessageFailed(
                Status.CANNOT_UNDERSTAND,
                f"routing tags not found within the scan limit: {missing}",
            )
            route_name, pool_name = (route.name, route.pool.name) if route else ("", "")
            await self._store_refused(message, route_name, pool_name, refusal)
            return
        if route is None:
            refusal = MessageFailed(Status.NOT_AUTHORIZED, "no route matches this instance")
            await self._store_refused(message, "", "", refusal)
            return
        # `ack: spool` routes answer once the instance is durable
        if route.ack is Ack.SPOOL and self.runtime.spool is not None:
            await self.runtime.spool.ingest(self, message, route, head, done, tags, started)
            return
        pool = self.runtime.pools[route.pool.name]
        key = tags.get(route.pool.key, "") if route.pool.key is not None else ""
        tried: set[str] = set()
        reasons: list[str] = []
        failure: MessageFailed | None = None
        async with contextlib.AsyncExitStack() as leases:
            while True:  # a bridged backend that cannot be reached: the next one
                try:
                    backend, maybe_up = await self._place(
                        pool, key, message, leases, http_store=True, tried=tried, reasons=reasons
                    )
                except MessageFailed as refusal:
                    await self._store_refused(message, route.name, pool.name, refusal)
                    return
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "store.routed sop_instance_uid=%s route=%s pool=%s backend=%s key=%s",
                        sop_uid,
                        route.name,
                        pool.name,
                        backend.name,
                        key if route.pool.key is not None and is_uid(route.pool.key) else "-",
                    )
                if maybe_up is not None:
                    break
                from dicomlb.bridge.store import relay_store  # a store_via backend: over HTTP

                reason = await relay_store(self, message, route, backend, head, done, tags, started)
                if reason is None:
                    return
                reasons.append(f"{backend.name}: {reason}")
            try:
                status = await self._forward(message, route.pool, backend, maybe_up, head, done)
            except MessageFailed as err:
                failure = err
        if failure is not None:
            # The lease is given back (aborted) first: the slot is free while the rest of
            # the data set is read and dropped.
            await discard(message)
            log.warning(
                "store.failed sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X "
                "reason=%r",
                sop_uid,
                route.name,
                pool.name,
                backend.name,
                failure.status,
                str(failure),
            )
            self.runtime.metrics.store_finished(
                route=route.name,
                pool=pool.name,
                backend=backend.name,
                status=failure.status,
                seconds=time.monotonic() - started,
            )
            self._respond(message, failure.status, f"{backend.name}: {failure}")
            return
        if succeeded(status):  # where it is: the instance always, the study when it was read
            self.runtime.studies.record(tags.get(0x0020000D, ""), backend.name, sop_uid)
        outcome = "store.delivered" if succeeded(status) else "store.failed"
        self.runtime.metrics.store_finished(
            route=route.name,
            pool=pool.name,
            backend=backend.name,
            status=status,
            seconds=time.monotonic() - started,
        )
        log.log(
            logging.INFO if succeeded(status) else logging.WARNING,
            "%s sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X ms=%d",
            outcome,
            sop_uid,
            route.name,
            pool.name,
            backend.name,
            status,
            (time.monotonic() - started) * 1000,
        )

    async def _store_refused(
        self, message: InboundMessage, route: str, pool: str, failure: MessageFailed
    ) -> None:
        """No route, or no backend of the route's pool, took the C-STORE: drop its data set,
        answer the failure (`route` and `pool` empty when no route matched)."""
        await discard(message)
        log.warning(
            "store.failed sop_instance_uid=%s route=%s pool=%s status=0x%04X reason=%r",
            message.command.sop_instance_uid,
            route,
            pool,
            failure.status,
            str(failure),
        )
        self.runtime.metrics.store_finished(
            route=route, pool=pool, status=failure.status, seconds=0.0
        )
        self._respond(message, failure.status, str(failure))

    async def _read_header(
        self, message: InboundMessage
    ) -> tuple[list[DataReceived], bool, dict[int, str], bool]:
        """Fragments read until the routing tags are known, whether that was the whole data
        set, the tags, and whether the scan cap ended the search (`HeaderScanner.limited`).

        Fragments held while the tags are still unknown count against the listener's
        `scan_budget`, shared by every association: when it is spent, MessageFailed (0xA700,
        the rest of the data set still to be read) rather than more memory.
        """
        wanted = self.runtime.snapshot.wanted_tags
        head: list[DataReceived] = []
        assert message.data is not None
        if not wanted:
            return head, False, {}, False
        encoding = self.inbound.config.encoding(message.transfer_syntax)
        scanner = HeaderScanner(message.transfer_syntax, wanted, encoding=encoding)
        budget = self.inbound.listener.scan_budget
        with budget.lease(self.inbound.config.scan_budget) as lease:
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

    # -------------------------------------------------------- forwarding

    async def _connect(
        self, pool: Pool, key: str, message: InboundMessage, leases: contextlib.AsyncExitStack
    ) -> tuple[BackendState, UpstreamAssociation]:
        """Pick a backend and lease an upstream association on `leases` (given back when it
        closes), trying the next backend when one cannot take the message (nothing has been
        sent yet, so this is safe)."""
        backend, up = await self._place(pool, key, message, leases)
        assert up is not None
        return backend, up

    async def _place(
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
        """`_connect`; with `http_store`, a `store_via` backend is returned without an
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
                self._upstream_key(pool.config, backend),
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

    def _upstream_key(self, pool: PoolConfig, backend: BackendState) -> UpstreamKey:
        dicom = backend.config.dicom
        assert dicom is not None  # config.py: DICOM routes use pools of DICOM backends
        called = (
            self.inbound.called_ae if pool.called_aet is CalledAet.PASSTHROUGH else dicom.ae_title
        )
        return (self.inbound.calling_ae, called, self.forwarded)

    async def _forward(
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
            command = message.command.replace({Tag.MESSAGE_ID: up.next_message_id()})
            pending = up.send_command(
                context_id,
                command,
                [(fragment.data, fragment.is_last) for fragment in head],
                pool.response_timeout,
                on_response=lambda answer: self.inbound.send_command(
                    message.context_id,
                    answer.replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: message.command.message_id}),
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

    def _respond(self, message: InboundMessage, status: int, comment: str | None = None) -> None:
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
