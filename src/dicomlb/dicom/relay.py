"""Per-message forwarding: a client association's requests, in order, to backends.

For a C-STORE the relay reads data-set fragments until the header scanner has the routing
tags, picks a route and a backend, then streams the command and the data set, untouched,
over a pooled upstream association and hands the backend's response back to the client.
Every image's fate is logged: store.received -> store.routed -> store.delivered | store.failed.
"""

from __future__ import annotations

import logging
import time

from dicomlb.dicom.acceptor import ClientGone, InboundAssociation, InboundMessage
from dicomlb.dicom.dimse import CommandField, DataReceived, Status, Tag, response
from dicomlb.dicom.tags import HeaderScanner, is_uid
from dicomlb.dicom.upstream import UpstreamAssociation, UpstreamError, UpstreamKey
from dicomlb.pools import BackendState, Pool
from dicomlb.snapshot import Ack, CalledAet, MessageFacts, PoolConfig

log = logging.getLogger(__name__)

# PS3.7 C.4: warnings (0x0001, 0xBxxx) still mean the instance was stored.
_WARNING = 0xB000


def _stored(status: int) -> bool:
    return status == Status.SUCCESS or status == 0x0001 or (status & 0xF000) == _WARNING


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
        # C-MOVE destinations this association's sub-operations are relayed to (via_balancer).
        self.destinations: dict[str, UpstreamAssociation] = {}

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
            for link in self.destinations.values():
                link.schedule_idle_release(0.0)  # A-RELEASE on the next turn; it owns the task

    async def handle(self, message: InboundMessage) -> None:
        field = message.command.command_field
        if field == CommandField.C_STORE_RQ:
            await self.store(message)
        elif field == CommandField.C_ECHO_RQ:
            await self.echo(message)
        elif field == CommandField.C_CANCEL_RQ:
            return  # nothing of ours is cancellable yet; PS3.7 9.3.2.3 needs no response
        elif field in _QR_SERVICES:
            from dicomlb.dicom.retrieve import serve  # query/retrieve, storage commitment

            await serve(self, message)
        else:
            await _discard(message)
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
            backend, up = await self._connect(pool, "", message)
        except MessageFailed as failure:
            log.warning("echo.failed pool=%s reason=%r", pool.name, str(failure))
            self._respond(message, failure.status, str(failure))
            return
        try:
            status = await self._forward(message, pool_config, backend, up, [], done=True)
        except MessageFailed as failure:
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
        head, done, tags = await self._read_header(message)
        facts = MessageFacts(
            calling_aet=inbound.calling_ae,
            called_aet=inbound.called_ae,
            peer_ip=inbound.peer[0],
            command="C-STORE",
            sop_class_uid=command.sop_class_uid,
            tags=tags,
        )
        route = self.runtime.router.select(facts)
        if route is None:
            refusal = MessageFailed(Status.NOT_AUTHORIZED, "no route matches this instance")
            await self._store_refused(message, "", "", done, refusal)
            return
        # --- spool hook (issue #3): `ack: spool` routes answer once the instance is durable
        if route.ack is Ack.SPOOL and self.runtime.spool is not None:
            await self.runtime.spool.ingest(self, message, route, head, done, tags, started)
            return
        # --- end spool hook
        pool = self.runtime.pools[route.pool.name]
        key = tags.get(route.pool.key, "") if route.pool.key is not None else ""
        tried: set[str] = set()
        reasons: list[str] = []
        while True:  # a bridged backend that cannot be reached: the next one (issue #7)
            try:
                backend, maybe_up = await self._place(
                    pool, key, message, http_store=True, tried=tried, reasons=reasons
                )
            except MessageFailed as failure:
                await self._store_refused(message, route.name, pool.name, done, failure)
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
        up = maybe_up
        try:
            status = await self._forward(message, route.pool, backend, up, head, done)
        except MessageFailed as failure:
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
        if _stored(status) and 0x0020000D in tags:
            self.runtime.studies.record(tags[0x0020000D], backend.name, sop_uid)  # where is it
        outcome = "store.delivered" if _stored(status) else "store.failed"
        self.runtime.metrics.store_finished(
            route=route.name,
            pool=pool.name,
            backend=backend.name,
            status=status,
            seconds=time.monotonic() - started,
        )
        log.log(
            logging.INFO if _stored(status) else logging.WARNING,
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
        self, message: InboundMessage, route: str, pool: str, done: bool, failure: MessageFailed
    ) -> None:
        """No route, or no backend of the route's pool, took the C-STORE: drop its data set,
        answer the failure (`route` and `pool` empty when no route matched)."""
        if not done:
            await _discard(message)
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
    ) -> tuple[list[DataReceived], bool, dict[int, str]]:
        """Fragments read until the routing tags are known, whether that was the whole data
        set, and the tags."""
        wanted = self.runtime.snapshot.wanted_tags
        head: list[DataReceived] = []
        assert message.data is not None
        if not wanted:
            return head, False, {}
        scanner = HeaderScanner(message.transfer_syntax, wanted)
        while not scanner.done:
            fragment = await message.data.get()
            head.append(fragment)
            scanner.feed(fragment.data)
            if fragment.is_last:
                scanner.finish()
                return head, True, scanner.values
        return head, False, scanner.values

    # -------------------------------------------------------- forwarding

    async def _connect(
        self, pool: Pool, key: str, message: InboundMessage
    ) -> tuple[BackendState, UpstreamAssociation]:
        """Pick a backend and get an upstream association, trying the next backend when one
        cannot be reached (nothing has been sent yet, so this is safe)."""
        backend, up = await self._place(pool, key, message)
        assert up is not None
        return backend, up

    async def _place(
        self,
        pool: Pool,
        key: str,
        message: InboundMessage,
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
        http_only: list[str] = []
        needed = (message.abstract_syntax, message.transfer_syntax)
        while True:
            backend = pool.pick(key, exclude=frozenset(tried))
            if backend is None:
                if http_only and not reasons:
                    raise MessageFailed(
                        Status.SOP_CLASS_NOT_SUPPORTED,
                        f"{message.command.service} not possible: pool {pool.name} is http only",
                    )
                detail = "; ".join(reasons) if reasons else "every backend is down or disabled"
                raise MessageFailed(
                    Status.OUT_OF_RESOURCES, f"no healthy backend in pool {pool.name}: {detail}"
                )
            tried.add(backend.name)
            if http_store and backend.config.store is not None:
                return backend, None
            if backend.config.dicom is None:
                http_only.append(backend.name)
                continue
            try:
                up = await self.runtime.upstreams[backend.name].acquire(
                    self._upstream_key(pool.config, backend), needed, self.contexts
                )
            except UpstreamError as err:
                reasons.append(f"{backend.name}: {err}")
                log.warning(
                    "backend.unreachable backend=%s pool=%s reason=%r",
                    backend.name,
                    pool.name,
                    str(err),
                )
                if "rejected abstract syntax" not in str(err) and backend.health.failure():
                    log.warning(
                        "backend.down backend=%s pool=%s cause=passive", backend.name, pool.name
                    )
                    self.runtime.metrics.backend_transition(backend.name, up=False, cause="passive")
                continue
            return backend, up

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
        """Send the message over `up`, relay the response to the client; the status."""
        upstreams = self.runtime.upstreams[backend.name]
        context_id = up.context_for((message.abstract_syntax, message.transfer_syntax))
        assert context_id is not None
        backend.active += 1
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
        except ClientGone:
            up.abort()  # the backend must not keep half a message
            upstreams.release(up)
            raise
        except (UpstreamError, TimeoutError) as err:
            up.abort()
            upstreams.release(up)
            if not done:
                await _discard(message)
            if backend.health.failure():
                log.warning(
                    "backend.down backend=%s pool=%s cause=passive", backend.name, pool.name
                )
                self.runtime.metrics.backend_transition(backend.name, up=False, cause="passive")
            reason = (
                f"no response within {pool.response_timeout:g}s"
                if isinstance(err, TimeoutError)
                else str(err)
            )
            raise MessageFailed(Status.PROCESSING_FAILURE, reason) from None
        finally:
            backend.active -= 1
        upstreams.release(up)
        backend.health.success()
        return answer.status or 0

    def _respond(self, message: InboundMessage, status: int, comment: str | None = None) -> None:
        self.inbound.send_command(
            message.context_id, response(message.command, status, error_comment=comment)
        )


async def _discard(message: InboundMessage) -> None:
    """Read and drop the rest of a message's data set (it will not be forwarded)."""
    if message.data is None:
        return
    while not (await message.data.get()).is_last:
        pass
