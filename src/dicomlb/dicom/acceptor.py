"""The DICOM listener and its client associations (asyncio shell).

`InboundAssociation` feeds bytes to the association and DIMSE cores, negotiates (after
asking the backends that will serve the association what they take, when its AE titles and
address decide their pool and they have not said yet), runs the ARTIM and idle timers,
enforces limits, and queues messages for the listener's `serve` (`services/relay.py`), which
moves them to backends one at a time in order. Reading pauses while a message's unsent data
set fragments exceed a few PDUs, so a slow backend slows the client instead of filling
memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from dicomlb import descriptors
from dicomlb.dicom import uids
from dicomlb.dicom.admission import (
    ConnectionRefusal,
    LogBudget,
    Rejection,
    admit_association,
    admit_connection,
    source_address,
)
from dicomlb.dicom.association import Association, ConnectionClosed, Role
from dicomlb.dicom.dimse import (
    Command,
    CommandField,
    CommandReceived,
    DataReceived,
    MessageAssembler,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.messages import FragmentStream, InboundMessage
from dicomlb.dicom.negotiation import negotiate
from dicomlb.dicom.pdu import (
    Abort,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    PData,
    RejectReason,
    ReleaseReply,
    ReleaseRequest,
    reject,
)
from dicomlb.dicom.tags import ScanBudget
from dicomlb.dicom.upstream import Ask, ask_backends, set_nodelay, write_buffers
from dicomlb.runtime import Runtime
from dicomlb.tls import ServerHandshake

log = logging.getLogger(__name__)

# Python 3.11's EnumType.__getattr__ makes `CommandField.X` slow to look up; read per message.
_C_CANCEL_RQ = CommandField.C_CANCEL_RQ


class _Release:
    """Queue marker: the client asked to release after its earlier messages."""


@dataclass(slots=True)
class ListenerStats:
    """Counters of one DICOM listener (the control plane reads them)."""

    active: int = 0
    by_calling_aet: collections.Counter[str] = field(default_factory=collections.Counter)
    by_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    # Connections without an accepted association yet (TLS handshake, A-ASSOCIATE-RQ
    # awaited, rejected and not yet closed).
    negotiating: int = 0
    negotiating_by_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: int = 0
    rejected: int = 0
    aborted: int = 0
    refused: int = 0  # connections closed on arrival (negotiating limits, descriptor headroom)


class Services(Protocol):
    """What the listener's associations are served by (`services.relay.Relay`)."""

    async def serve(self, inbound: InboundAssociation) -> None:
        """Run an accepted association's messages until it ends."""

    def any_route_available(self, runtime: Runtime) -> bool:
        """Whether some route can take a message now: else new associations are refused."""

    def no_route_reason(self, runtime: Runtime) -> str:
        """Why no route can take a message now."""


class DicomListener:
    """Accepts client associations on the `dicom` listener of the current runtime."""

    def __init__(self, runtime: Runtime, services: Services) -> None:
        self.runtime = runtime
        self.services = services  # `services.relay.Relay`, given by the App
        self.stats = ListenerStats()
        self.associations: set[InboundAssociation] = set()
        self.scan_budget = ScanBudget()  # bytes held for routing tags, under scan_budget
        self.server: asyncio.Server | None = None
        self.fd_limit: int | None = None
        self._refusal_log = LogBudget()

    async def start(self) -> None:
        config = self.runtime.snapshot.dicom
        assert config is not None
        self.fd_limit = descriptors.soft_limit()
        loop = asyncio.get_running_loop()
        # TLS is started by each connection (InboundAssociation.connection_made), so that a
        # connection is counted and under ARTIM from its TCP connect, handshake included.
        self.server = await loop.create_server(
            lambda: InboundAssociation(self),
            config.host,
            config.port,
            backlog=512,
            reuse_port=config.reuse_port,
        )
        log.info(
            "listener.started listener=dicom bind=%s:%d ae_title=%s tls=%s",
            config.host,
            config.port,
            config.ae_title,
            "mutual" if config.tls and config.tls.ca else "on" if config.tls else "off",
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        # uvloop's Server.sockets is a list where typeshed says a tuple, which code compiled
        # with mypyc checks: read it untyped.
        sockets: Sequence[socket.socket] = getattr(self.server, "sockets")  # noqa: B009
        return int(sockets[0].getsockname()[1])

    def admit_connection(self, source: str, fd: int) -> ConnectionRefusal | None:
        """Why a connection from `source` (its socket descriptor `fd`) must be closed now."""
        if descriptors.in_headroom(fd, self.fd_limit):
            return ConnectionRefusal(
                setting="descriptors",
                why=f"descriptor {fd} is within {descriptors.HEADROOM} of the limit "
                f"{self.fd_limit}",
            )
        config = self.runtime.snapshot.dicom
        assert config is not None
        return admit_connection(
            config,
            negotiating=self.stats.negotiating,
            negotiating_from_ip=self.stats.negotiating_by_ip[source],
        )

    def refused(self, peer: tuple[str, int], refusal: ConnectionRefusal) -> None:
        """Count a connection closed on arrival; log it, at most one line a second."""
        self.stats.refused += 1
        held = self._refusal_log.take(time.monotonic())
        if held is not None:
            log.warning(
                "listener.refused listener=dicom peer=%s:%d limit=%s why=%r refused_since=%d",
                *peer,
                refusal.setting,
                refusal.why,
                held,
            )

    def admit(self, calling_ae: str, source: str) -> Rejection | None:
        """Why a new association from `calling_ae` at `source` must be rejected, if it must."""
        config = self.runtime.snapshot.dicom
        assert config is not None
        return admit_association(
            config,
            calling_aet=calling_ae,
            peer_ip=source,
            active=self.stats.active,
            active_from_ip=self.stats.by_ip[source],
            active_from_aet=self.stats.by_calling_aet[calling_ae],
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; let associations in flight finish for up to `grace` seconds."""
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.associations and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for association in list(self.associations):
            association.abort("dicomlb is stopping")
        if self.server is not None:
            await self.server.wait_closed()


class InboundAssociation(asyncio.Protocol):
    """One client association: protocol shell around the cores, feeding its services."""

    # Thousands may sit idle at once: slots instead of a per-instance dict, 1.2 kB less each.
    __slots__ = (
        "_abstract_syntaxes",
        "_artim",
        "_asking",
        "_current",
        "_hold",
        "_last_activity",
        "_loop",
        "_lost",
        "_message_id",
        "_outcome",
        "_queue",
        "_queue_waiter",
        "_reading_paused",
        "_relay_task",
        "_timer",
        "_tls_task",
        "_when_writable",
        "_writable",
        "assembler",
        "assoc",
        "busy",
        "bytes_in",
        "called_ae",
        "calling_ae",
        "config",
        "counted",
        "listener",
        "messages",
        "negotiating",
        "on_cancel",
        "on_response",
        "peer",
        "runtime",
        "source",
        "started",
        "transport",
    )

    def __init__(self, listener: DicomListener) -> None:
        self.listener = listener
        self.runtime = listener.runtime  # the snapshot at association start serves it whole
        config = self.runtime.snapshot.dicom
        assert config is not None
        self.config = config
        self.assoc = Association(Role.ACCEPTOR, max_pdu=config.max_pdu)
        self.assembler = MessageAssembler()
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.source = ""  # the peer's address as the per-address limits count it
        self.calling_ae = ""
        self.called_ae = ""
        self.negotiating = False  # counted in stats.negotiating
        self.counted = False  # counted in stats.active
        self._artim: asyncio.TimerHandle | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._lost = False
        self.started = time.monotonic()
        self.messages = 0
        self.bytes_in = 0
        # Messages for the relay, in order. A plain deque and one waiter instead of an
        # asyncio.Queue; see _hold for when the relay is woken. Made by the first message:
        # an empty deque is 760 bytes, a tenth of an idle association.
        self._queue: collections.deque[InboundMessage | _Release] | None = None
        self._queue_waiter: asyncio.Future[None] | None = None
        # The newest queued message has a data set none of which has arrived yet: waking the
        # relay now would only see it suspend again on the data, so the first fragment wakes
        # it instead (storescu sends command and data set in separate writes; this saves a
        # task wake-up per C-STORE).
        self._hold = False
        self._current: FragmentStream | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._asking: asyncio.Task[None] | None = None  # backends asked before answering
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._reading_paused = False  # by dicomlb, for back-pressure: silence is ours then
        self._outcome = "open"
        self.busy = False  # the relay is working on a message
        self._abstract_syntaxes: dict[int, str] = {}
        # Set by a C-FIND / C-MOVE / C-GET in progress: the client's C-CANCEL-RQ, and its
        # responses to our sub-operation requests (C-GET's C-STORE-RSP), go there at once
        # instead of waiting in the queue behind the request being served.
        self.on_cancel: Callable[[CommandReceived], None] | None = None
        self.on_response: Callable[[CommandReceived], None] | None = None
        self._writable = True
        self._when_writable: list[Callable[[], None]] = []
        self._message_id = 0
        # Taken once: asyncio.get_running_loop() costs a getpid() system call per call.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        address = source_address(self.peer[0])
        self.source = str(address) if address is not None else self.peer[0]
        refusal = self.listener.admit_connection(self.source, descriptors.transport_fd(transport))
        if refusal is not None:
            self._outcome = f"refused: {refusal.why}"
            self.listener.refused(self.peer, refusal)
            self.transport.close()
            return
        set_nodelay(self.transport)
        stats = self.listener.stats
        stats.negotiating += 1
        stats.negotiating_by_ip[self.source] += 1
        self.negotiating = True
        self.listener.associations.add(self)
        # ARTIM (PS3.8 9.1.3): a deadline from connect to the whole A-ASSOCIATE-RQ, TLS
        # handshake included; bytes arriving do not extend it.
        self._start_artim()
        if self.config.tls is not None:
            self._tls_task = asyncio.get_running_loop().create_task(
                self._start_tls(ServerHandshake(self.transport), self.config.tls.context)
            )

    async def _start_tls(self, handshake: ServerHandshake, context: ssl.SSLContext) -> None:
        """Run the server side of the TLS handshake; the association then reads through it.
        ARTIM closes a handshake that does not end first; a refused one is logged."""
        try:
            tls = await handshake.run(context, self.config.artim_timeout)
        except Exception as err:  # the peer's handshake failed; the connection is closed
            if self._outcome == "open":
                self._outcome = "TLS handshake failed"
                log.warning(
                    "listener.tls_failed listener=dicom peer=%s:%d reason=%r",
                    *self.peer,
                    str(err) or type(err).__name__,
                )
            self.connection_lost(None)
            return
        self.transport = tls
        handshake.hand_over(tls, self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._last_activity = time.monotonic()
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            for event in self.assoc.receive_data(data):
                self._on_event(event)
        except RemoteProtocolError as err:
            log.warning(
                "association.protocol_error peer=%s:%d calling_aet=%s reason=%r",
                *self.peer,
                self.calling_ae,
                str(err),
            )
            self._outcome = f"aborted: {err}"
            self._send(self.assoc.send(err.reply))
            self._shutdown(f"protocol error: {err}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        for event in self.assoc.receive_eof():
            assert isinstance(event, ConnectionClosed)
            if not event.expected and self._outcome == "open":
                self._outcome = "connection lost"
        self._shutdown(self._outcome)
        self._stop_artim()
        if self._tls_task is not None and not self._tls_task.done():
            self._tls_task.cancel()
        self.listener.associations.discard(self)
        self._leave_negotiating()
        if self.counted:
            stats = self.listener.stats
            stats.active -= 1
            stats.by_calling_aet[self.calling_ae] -= 1
            if stats.by_calling_aet[self.calling_ae] <= 0:
                del stats.by_calling_aet[self.calling_ae]
            stats.by_ip[self.source] -= 1
            if stats.by_ip[self.source] <= 0:
                del stats.by_ip[self.source]
            self.counted = False
            log.info(
                "association.closed peer=%s:%d calling_aet=%s called_aet=%s messages=%d "
                "bytes=%d ms=%d outcome=%r",
                *self.peer,
                self.calling_ae,
                self.called_ae,
                self.messages,
                self.bytes_in,
                (time.monotonic() - self.started) * 1000,
                self._outcome,
            )
            self.runtime.metrics.association_closed(
                peer=f"{self.peer[0]}:{self.peer[1]}",
                calling_aet=self.calling_ae,
                called_aet=self.called_ae,
                seconds=time.monotonic() - self.started,
                messages=self.messages,
                bytes_in=self.bytes_in,
                outcome=self._outcome,
            )

    # -------------------------------------------------------- events

    def _on_event(self, event: object) -> None:
        if isinstance(event, PData):
            for dimse in self.assembler.receive(event.pdvs):
                if isinstance(dimse, DataReceived):
                    stream = self._current
                    if stream is None:
                        continue  # the data set of a command not relayed (a stray response)
                    if dimse.is_last:
                        self._current = None
                    stream.put(dimse)
                    if self._hold:
                        self._hold = False
                        self._wake_relay()
                else:
                    self._on_command(dimse)
        elif isinstance(event, AssociateRequest):
            self._stop_artim()
            self.calling_ae = event.calling_ae
            self.called_ae = event.called_ae
            asks = []
            if self.listener.admit(event.calling_ae, self.source) is None:
                asks = self.runtime.contexts_to_ask(event, self.peer[0], self.config)
            if asks:  # the backend's answer first, then the client's (held in Sta3)
                loop = asyncio.get_running_loop()
                self._asking = loop.create_task(self._ask_then_answer(event, asks))
                return
            self._on_associate(event)
            # What came after the request (an A-ABORT in the same segment) waited in the
            # core until the request was answered.
            for later in self.assoc.receive_data(b""):
                self._on_event(later)
        elif isinstance(event, ReleaseRequest):
            self._enqueue(_Release())
            self._wake_relay()
        elif isinstance(event, Abort):
            self._outcome = f"aborted by the client (reason {event.reason})"
            self._shutdown(self._outcome)

    async def _ask_then_answer(self, request: AssociateRequest, asks: list[Ask]) -> None:
        """Learn what the backends that will serve this association take, then answer it
        (cancelled with the connection)."""
        try:
            await ask_backends(asks)
        except Exception as err:  # a bug must not leave the client unanswered: answer as is
            log.error("contexts.ask_failed calling_aet=%s reason=%r", self.calling_ae, str(err))
        self._asking = None
        if self.transport is None or self.transport.is_closing():
            return
        self._on_associate(request)
        self._feed(b"")  # what came after the request waited in the core

    def _on_associate(self, request: AssociateRequest) -> None:
        rejection = self.listener.admit(request.calling_ae, self.source)
        answer: AssociateAccept | AssociateReject
        if rejection is not None:
            answer, why = rejection.answer, rejection.why
        else:
            known = self.runtime.known_contexts(request.calling_ae, request.called_ae, self.peer[0])
            answer = negotiate(request, self.config, self.runtime.services, known)
            why = "association negotiation failed"
            if isinstance(answer, AssociateAccept) and not self._backends_available(answer):
                answer = reject(RejectReason.TEMPORARY_CONGESTION, transient=True)
                why = self.listener.services.no_route_reason(self.runtime)
        if isinstance(answer, AssociateReject):
            self.listener.stats.rejected += 1
            self._outcome = f"rejected: {why}"
            log.warning(
                "association.rejected peer=%s:%d calling_aet=%s called_aet=%s result=%d "
                "source=%d reason=%d why=%r",
                *self.peer,
                request.calling_ae,
                request.called_ae,
                answer.result,
                answer.source,
                answer.reason,
                why,
            )
            self.runtime.metrics.association_rejected(
                peer=f"{self.peer[0]}:{self.peer[1]}",
                calling_aet=request.calling_ae,
                called_aet=request.called_ae,
                why=why,
            )
            self._send(self.assoc.send(answer))
            self._start_artim()  # Sta13: the client should close now
            return
        self._send(self.assoc.send(answer))
        self._abstract_syntaxes = {c.context_id: c.abstract_syntax for c in request.contexts}
        self._leave_negotiating()
        stats = self.listener.stats
        stats.active += 1
        stats.accepted += 1
        stats.by_calling_aet[request.calling_ae] += 1
        stats.by_ip[self.source] += 1
        self.counted = True
        self.runtime.metrics.association_accepted()
        accepted = sum(1 for ctx in answer.contexts if ctx.result == 0)
        log.info(
            "association.accepted peer=%s:%d calling_aet=%s called_aet=%s contexts=%d/%d "
            "max_pdu=%d implementation=%s",
            *self.peer,
            request.calling_ae,
            request.called_ae,
            accepted,
            len(answer.contexts),
            self.assoc.peer_max_pdu,
            request.user_info.implementation_version_name
            or request.user_info.implementation_class_uid,
        )
        self._relay_task = asyncio.get_running_loop().create_task(
            self.listener.services.serve(self)
        )
        self._arm_timer(self.config.idle_timeout)

    def _backends_available(self, accept: AssociateAccept) -> bool:
        """False when the client proposes more than verification and no pool can take it."""
        request = self.assoc.request
        assert request is not None
        abstract = {ctx.context_id: ctx.abstract_syntax for ctx in request.contexts}
        wants_more = any(
            abstract.get(ctx.context_id) != uids.VERIFICATION
            for ctx in accept.contexts
            if ctx.result == 0
        )
        return not wants_more or self.listener.services.any_route_available(self.runtime)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        callbacks, self._when_writable = self._when_writable, []
        for callback in callbacks:
            callback()

    def _on_command(self, received: CommandReceived) -> None:
        field = received.command.command_field
        if field & 0x8000 or field == _C_CANCEL_RQ:
            handler = self.on_response if field & 0x8000 else self.on_cancel
            if handler is not None:
                handler(received)
            elif field & 0x8000:
                # PS3.7 has no answer to a response nobody asked for: dropped, data set too.
                log.warning(
                    "association.unexpected_response peer=%s:%d calling_aet=%s command=%s",
                    *self.peer,
                    self.calling_ae,
                    received.command.service,
                )
            # PS3.7 9.3.2.3: a C-CANCEL-RQ has no response; with nothing in progress it
            # cancels nothing.
            return
        accepted = self.assoc.accepted[received.context_id]
        abstract = self._abstract_syntaxes.get(received.context_id, "")
        stream = None
        if received.command.has_data_set:
            assert self._loop is not None
            stream = FragmentStream(
                self._loop,
                4 * max(self.config.max_pdu, 16384),
                self._pause_reading,
                self._resume_reading,
            )
            self._current = stream
        self.messages += 1
        self._enqueue(
            InboundMessage(
                context_id=received.context_id,
                command=received.command,
                abstract_syntax=abstract,
                transfer_syntax=accepted.transfer_syntax,
                data=stream,
            )
        )
        if stream is None:
            self._wake_relay()
        else:
            self._hold = True

    # -------------------------------------------------------- for the relay

    async def next_message(self) -> InboundMessage | None:
        """The next request in order, or None once the client asked to release."""
        while not self._queue:
            assert self._loop is not None  # set on connect, before any message
            self._queue_waiter = self._loop.create_future()
            try:
                await self._queue_waiter
            finally:
                self._queue_waiter = None
        item = self._queue.popleft()
        return None if isinstance(item, _Release) else item

    def _enqueue(self, item: InboundMessage | _Release) -> None:
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append(item)

    def _wake_relay(self) -> None:
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send_command(self, context_id: int, command: Command) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        write_buffers(
            self.transport,
            self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True),
        )

    def send_message(
        self, context_id: int, command: Command, data: bytes | memoryview | None = None
    ) -> None:
        """Write a command and, whole, its data set (a C-FIND identifier) to the client."""
        if self.transport is None or self.transport.is_closing():
            return
        buffers = self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True)
        if data is not None:
            buffers += self.assoc.send_data(context_id, data, is_command=False, is_last=True)
        write_buffers(self.transport, buffers)

    def send_data(self, context_id: int, data: bytes | memoryview, is_last: bool) -> None:
        """Write one data-set fragment to the client, cut to its maximum PDU."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.writelines(
            self.assoc.send_data(context_id, data, is_command=False, is_last=is_last)
        )

    def next_message_id(self) -> int:
        """A Message ID for a request dicomlb sends the client (C-GET sub-operations)."""
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the client's socket buffer has room (now if it has)."""
        if self._writable or self.transport is None or self.transport.is_closing():
            callback()
        else:
            self._when_writable.append(callback)

    @property
    def writable(self) -> bool:
        return self._writable

    def release(self) -> None:
        """Answer the client's A-RELEASE-RQ: every earlier message has been answered."""
        self._outcome = "released"
        self._send(self.assoc.send(ReleaseReply()))
        self._arm_timer(self.config.artim_timeout)  # the requestor closes; ARTIM if it does not

    def abort(self, reason: str) -> None:
        """A-ABORT the client association (stop, idle timeout)."""
        if self.transport is None or self.transport.is_closing():
            return
        self._outcome = f"aborted: {reason}"
        log.warning(
            "association.aborted peer=%s:%d calling_aet=%s reason=%r",
            *self.peer,
            self.calling_ae,
            reason,
        )
        self.listener.stats.aborted += 1
        self._send(self.assoc.send(Abort(source=AbortSource.SERVICE_PROVIDER)))
        self._shutdown(reason)

    # -------------------------------------------------------- internals

    def _pause_reading(self) -> None:
        if self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        self._last_activity = time.monotonic()  # the client's silence is timed from here
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _shutdown(self, reason: str) -> None:
        callbacks, self._when_writable = self._when_writable, []
        for callback in callbacks:
            callback()
        if self._current is not None:
            self._current.abort(reason)
            self._current = None
        if self._relay_task is not None and not self._relay_task.done():
            self._relay_task.cancel()
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _start_artim(self) -> None:
        self._stop_artim()
        loop = asyncio.get_running_loop()
        self._artim = loop.call_later(self.config.artim_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        """No whole A-ASSOCIATE-RQ within ARTIM of connect (Sta2), or the client did not close
        after its A-ASSOCIATE-RJ (Sta13): close (PS3.8 AA-2)."""
        self._artim = None
        self.assoc.artim_expired()
        if self._outcome == "open":
            self._outcome = "ARTIM timeout"
            log.info(
                "association.artim_expired peer=%s:%d artim=%gs bytes=%d",
                *self.peer,
                self.config.artim_timeout,
                self.bytes_in,
            )
        self._shutdown(self._outcome)

    def _leave_negotiating(self) -> None:
        if self.negotiating:
            stats = self.listener.stats
            stats.negotiating -= 1
            stats.negotiating_by_ip[self.source] -= 1
            if stats.negotiating_by_ip[self.source] <= 0:
                del stats.negotiating_by_ip[self.source]
            self.negotiating = False

    def _arm_timer(self, timeout: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._last_activity = time.monotonic()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(timeout, self._on_timer, timeout)

    def _on_timer(self, timeout: float) -> None:
        idle = time.monotonic() - self._last_activity
        if idle < timeout:  # activity since: re-arm for the rest (cheaper than resetting per read)
            self._timer = asyncio.get_running_loop().call_later(
                timeout - idle, self._on_timer, timeout
            )
            return
        self._timer = None
        if self.assoc.state.name in ("STA2", "STA13"):
            self.assoc.artim_expired()
            self._outcome = self._outcome if self._outcome != "open" else "ARTIM timeout"
            self._shutdown("ARTIM timeout")
        elif self._current is not None and not self._reading_paused:
            # Half a message, and the client owes the rest: its silence, not a backend's.
            self.abort(f"silent for {timeout:g}s in the middle of a message")
        elif self._relay_busy():
            self._arm_timer(timeout)  # waiting on a backend or paused by us: not idle
        else:
            self.abort(f"idle for {timeout:g}s")

    def _relay_busy(self) -> bool:
        return self.busy or self._current is not None or bool(self._queue)
