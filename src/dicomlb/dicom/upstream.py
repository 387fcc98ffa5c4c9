"""Outbound associations to backends (asyncio shell) and their per-backend pool.

An `UpstreamAssociation` is one association dicomlb opened as requestor. The
`UpstreamPool` of a backend keeps idle ones for reuse, caps how many are open (Orthanc
takes 4 by default; fewer once `capacity.Capacity` learned the backend takes fewer), and
makes callers wait, not fail, while it is briefly saturated. In an `upstream: per_client`
pool nothing is kept idle: a client association's `ClientUpstreams` keeps its own.

An association is held for one message as a lease, `async with upstreams.lease(...) as up`,
whose exit gives it back on every path, cancellation included: to the idle list when every
request on it was answered, else aborted (a backend must never keep half a message).

Failures are typed (`Unreachable`, `Rejected`, `ContextRejected`, `Busy`, or an
`UpstreamError` during a message) and carry a `health.Cause`: what passive health counts is
decided from it (`delivery.passive`), never from the text.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, cast

from dicomlb.capacity import Capacity, Unanswered
from dicomlb.dicom import uids
from dicomlb.dicom.association import Association, AssocState, ConnectionClosed, Role
from dicomlb.dicom.contexts import LearnedContexts, Verdict
from dicomlb.dicom.dimse import (
    Command,
    CommandReceived,
    DataReceived,
    MessageAssembler,
    Status,
    response,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.negotiation import upstream_request
from dicomlb.dicom.pdu import (
    Abort,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    ContextResult,
    PData,
    ReleaseReply,
    ReleaseRequest,
)
from dicomlb.health import Cause
from dicomlb.pools import BackendState
from dicomlb.snapshot import BackendConfig, PoolConfig, UpstreamMode

if TYPE_CHECKING:
    from dicomlb.bridge.client import HttpStoreClient

log = logging.getLogger(__name__)

# (calling AE, called AE, forwarded user-information items): associations are reused only
# for the same identity toward the backend.
UpstreamKey = tuple[str, str, tuple[tuple[int, bytes], ...]]
SyntaxPair = tuple[str, str]  # (abstract syntax, transfer syntax)
# A response and its data set (a C-FIND identifier), whole; None when it has no data set.
ResponseHandler = Callable[[Command, bytes | None], None]
# Requests the backend sends us (C-STORE sub-operations of a C-GET): the command, then the
# data set's fragments as they arrive.
RequestHandler = Callable[[CommandReceived | DataReceived], None]
# Python 3.11's EnumType.__getattr__ makes `UpstreamMode.PER_CLIENT` slow to look up; it is
# read a few times per message.
_PER_CLIENT = UpstreamMode.PER_CLIENT
# PS3.7 C.4: pending statuses; more responses follow.
PENDING_STATUSES = frozenset({0xFF00, 0xFF01})


class UpstreamError(Exception):
    """The backend could not be reached or failed; the message did not get through.
    `cause` says why, for passive health (`health.counts_against_backend`)."""

    def __init__(self, reason: str, cause: Cause) -> None:
        super().__init__(reason)
        self.cause = cause


class Unreachable(UpstreamError):
    """No association: the connection was refused, reset or timed out, TLS failed, or no
    A-ASSOCIATE-AC came in time. Nothing was sent; another backend may be tried."""


class Rejected(UpstreamError):
    """A-ASSOCIATE-RJ: permanent (this sender is refused there) or transient (busy)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(
            reason, Cause.REJECTED_PERMANENT if permanent else Cause.REJECTED_TRANSIENT
        )
        self.permanent = permanent


class ContextRejected(UpstreamError):
    """The backend does not take this abstract syntax in this transfer syntax; `learned`:
    it said so before, and was not asked again."""

    def __init__(self, reason: str, *, learned: bool = False) -> None:
        super().__init__(reason, Cause.CONTEXT_REJECTED)
        self.learned = learned


class Busy(UpstreamError):
    """Every association slot of the backend stayed in use for the acquire timeout."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, Cause.BUSY)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY: without it each C-STORE can stall ~40 ms on delayed ACK (DESIGN 5)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# Below this, one joined write beats writelines (measured with uvloop: a small C-STORE's
# buffers cost less to copy than to hand over one by one).
_JOIN_LIMIT = 256 * 1024


def write_buffers(transport: asyncio.WriteTransport, buffers: list[bytes | memoryview]) -> None:
    """Write PDU pieces with as few copies and calls as the sizes allow."""
    if sum(map(len, buffers)) <= _JOIN_LIMIT:
        transport.write(b"".join(buffers))
    else:
        transport.writelines(buffers)


class UpstreamAssociation(asyncio.Protocol):
    """One association from dicomlb to a backend, used by one message at a time."""

    def __init__(self, backend: str, key: UpstreamKey, contexts: list[SyntaxPair], max_pdu: int):
        loop = asyncio.get_running_loop()
        self.loop = loop  # taken once: asyncio.get_running_loop() costs a getpid() per call
        self.backend = backend
        self.key = key
        self.assoc = Association(Role.REQUESTOR, max_pdu=max_pdu)
        self.request = upstream_request(
            calling_ae=key[0],
            called_ae=key[1],
            contexts=contexts,
            max_pdu=max_pdu,
            forwarded_items=key[2],
        )
        self.assembler = MessageAssembler()
        self.established: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.contexts: dict[SyntaxPair, int] = {}
        # Each proposed pair with the backend's result (PS3.8 9.3.3.2), from its A-ASSOCIATE-AC.
        self.answers: list[tuple[SyntaxPair, int]] = []
        self.error: UpstreamError | None = None  # the first failure; the association is done
        # Clean (reusable) only when every request sent was answered and no data set is
        # half sent: a lease gives back only clean associations, and aborts the others.
        self._unanswered = 0
        self._sending = False
        self.answered = 0  # final responses received: the backend answered messages on it
        self.transport: asyncio.Transport | None = None
        self._responses: dict[int, asyncio.Future[Command]] = {}
        self._on_response: dict[int, Callable[[Command], None]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._message_id = 0
        # Timers are armed lazily and re-armed for what is left when they fire, instead of a
        # call_later and a cancel per message (uvloop allocates a libuv timer for each).
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None  # loop time of the idle release, when idle
        self._releasing: asyncio.Task[None] | None = None
        self._response_timer: asyncio.TimerHandle | None = None
        self._response_deadlines: dict[int, float] = {}  # message ID -> loop time
        # Pending responses (C-FIND, C-MOVE, C-GET) go to these as they arrive; each one
        # gives the request `timeout` more seconds.
        self._on_pending: dict[int, ResponseHandler] = {}
        # The final response's data set (a C-MOVE / C-GET Failed SOP Instance UID List).
        self._on_final: dict[int, ResponseHandler] = {}
        self._timeouts: dict[int, float] = {}
        self._collecting: tuple[Command, list[bytes]] | None = None  # a response's data set
        self._data_to: RequestHandler | None = None  # where a request's data set goes
        self.on_request: RequestHandler | None = None  # set while requests are expected

    # -------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(self.transport)
        self.transport.write(self.assoc.send(self.request))

    def data_received(self, data: bytes) -> None:
        try:
            events = self.assoc.receive_data(data)
            for event in events:
                self._on_event(event)
        except RemoteProtocolError as err:
            log.warning("upstream.protocol_error backend=%s reason=%r", self.backend, str(err))
            self._write(self.assoc.send(err.reply))
            # during negotiation the backend itself is at fault; later, it answered a message
            cause = Cause.MALFORMED_ANSWER if self.established.done() else Cause.PROTOCOL_ERROR
            self._fail(UpstreamError(f"protocol error from backend: {err}", cause))

    def connection_lost(self, exc: Exception | None) -> None:
        self.assoc.receive_eof()
        self._closed(
            "connection closed by the backend" if exc is None else f"connection lost: {exc}"
        )
        if not self.closed.done():
            self.closed.set_result(None)
        self._stop_timers()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -------------------------------------------------------- events

    def _on_event(self, event: object) -> None:
        if isinstance(event, AssociateAccept):
            self.contexts = {}
            answered = {ctx.context_id: ctx.result for ctx in event.contexts}
            self.answers = []
            for proposal in self.request.contexts:
                result = self.assoc.accepted.get(proposal.context_id)
                pair = (proposal.abstract_syntax, proposal.transfer_syntaxes[0])
                # One transfer syntax was proposed per context: an acceptance naming another
                # (PS3.8 9.3.3.2 forbids it) would relay data the backend cannot read.
                if result is not None and result.transfer_syntax == pair[1]:
                    self.contexts[pair] = proposal.context_id
                    self.answers.append((pair, ContextResult.ACCEPTANCE))
                elif proposal.context_id in answered:
                    refusal = answered[proposal.context_id]
                    if refusal == ContextResult.ACCEPTANCE:  # in another syntax
                        refusal = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
                    self.answers.append((pair, refusal))
            if not self.established.done():
                self.established.set_result(None)
        elif isinstance(event, AssociateReject):
            # PS3.8 9.3.4: result 1 rejected-permanent, 2 rejected-transient
            self._fail(
                Rejected(
                    f"association rejected (result {event.result}, source {event.source}, "
                    f"reason {event.reason})",
                    permanent=event.result == 1,
                )
            )
        elif isinstance(event, PData):
            for dimse in self.assembler.receive(event.pdvs):
                if isinstance(dimse, CommandReceived):
                    if dimse.command.command_field & 0x8000:
                        if dimse.command.has_data_set:
                            self._collecting = (dimse.command, [])
                        else:
                            self._on_command(dimse.command)
                    else:
                        self._on_backend_request(dimse)
                else:
                    self._on_data(dimse)
        elif isinstance(event, ReleaseRequest):
            # The backend ends the association (e.g. its idle timeout): agree and stop using it.
            error = UpstreamError("released by the backend", self._cause(Cause.RELEASED))
            self._write(self.assoc.send(ReleaseReply()))
            self._fail(error)
        elif isinstance(event, ReleaseReply):
            self._close()
        elif isinstance(event, Abort):
            reason = f"aborted by the backend (reason {event.reason})"
            self._fail(UpstreamError(reason, self._cause(Cause.ABORTED)))
        elif isinstance(event, ConnectionClosed):
            self._closed("connection closed")

    def _on_backend_request(self, received: CommandReceived) -> None:
        """A request from the backend: a C-STORE sub-operation of a C-GET in flight."""
        handler = self.on_request
        if handler is None:
            log.warning(
                "upstream.unexpected_request backend=%s command=%s",
                self.backend,
                received.command.service,
            )
            if received.command.has_data_set:
                self._data_to = _ignore
            self.send_plain(
                received.context_id,
                response(
                    received.command,
                    Status.UNRECOGNIZED_OPERATION,
                    error_comment="dicomlb expects no requests on this association",
                ),
            )
            return
        if received.command.has_data_set:
            self._data_to = handler
        handler(received)

    def _on_data(self, fragment: DataReceived) -> None:
        target = self._data_to
        if target is not None:
            if fragment.is_last:
                self._data_to = None
            target(fragment)
            return
        if self._collecting is not None:
            command, parts = self._collecting
            parts.append(bytes(fragment.data))
            if fragment.is_last:
                self._collecting = None
                self._on_command(command, b"".join(parts))

    def _on_command(self, command: Command, data: bytes | None = None) -> None:
        responded = command.responded_to
        if command.status in PENDING_STATUSES:
            handler = self._on_pending.get(responded)
            if handler is not None:
                timeout = self._timeouts.get(responded)
                if timeout is not None and responded in self._response_deadlines:
                    self._response_deadlines[responded] = self.loop.time() + timeout
                handler(command, data)
                return
        self._on_pending.pop(responded, None)
        self._timeouts.pop(responded, None)
        on_final = self._on_final.pop(responded, None)
        if on_final is not None:
            on_final(command, data)
        future = self._responses.pop(responded, None)
        callback = self._on_response.pop(responded, None)
        self._response_deadlines.pop(responded, None)
        if future is None or future.done():
            log.warning(
                "upstream.unexpected_command backend=%s command=%s", self.backend, command.service
            )
            return
        self._unanswered -= 1
        self.answered += 1
        if callback is not None:
            callback(command)
        future.set_result(command)

    def _cause(self, after_accept: Cause) -> Cause:
        """What a backend's abort, release or close means now: while a data set is still
        going out it refused the message (never the backend's fault)."""
        return Cause.ABORTED_WHILE_SENDING if self._sending else after_accept

    def _closed(self, reason: str) -> None:
        self._fail(UpstreamError(reason, self._cause(Cause.CLOSED)))

    def _fail(self, failure: UpstreamError) -> None:
        if self.error is None:
            self.error = failure
        error = self.error
        if not self.established.done():
            self.established.set_exception(error)
            self.established.exception()  # the opener may have given up; do not warn
        for future in self._responses.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # its awaiter may be gone (a cancelled message): no warning
        self._responses.clear()
        self._on_response.clear()
        self._on_pending.clear()
        self._on_final.clear()
        self._response_deadlines.clear()
        self._writable.set()
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -------------------------------------------------------- use

    def pause_reading(self) -> None:
        """Stop reading from the backend (paired back-pressure: a slow client slows it)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def usable(self) -> bool:
        return self.error is None and self.transport is not None and not self.transport.is_closing()

    @property
    def clean(self) -> bool:
        """Usable, every request answered, no data set half sent: safe to reuse."""
        return self.usable and self._unanswered == 0 and not self._sending

    def _unusable(self) -> UpstreamError:
        return self.error or UpstreamError("association closed", Cause.LOCAL)

    def context_for(self, pair: SyntaxPair) -> int | None:
        return self.contexts.get(pair)

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def send_command(
        self,
        context_id: int,
        command: Command,
        data: Iterable[tuple[bytes | memoryview, bool]] = (),
        timeout: float | None = None,
        on_response: Callable[[Command], None] | None = None,
        on_pending: ResponseHandler | None = None,
        on_final: ResponseHandler | None = None,
    ) -> asyncio.Future[Command]:
        """Send a request's command set and the data-set fragments already at hand, in one
        write; the future resolves with the final response (TimeoutError after `timeout`
        without a response).

        `on_response` runs as soon as the final response is decoded, before the awaiting
        task resumes: relaying it to the client from there saves a loop turn per message.
        `on_pending` gets each pending response (C-FIND, C-MOVE, C-GET) with its data set;
        `on_final` the final response with its data set (None when it has none).
        """
        if not self.usable:
            raise self._unusable()
        loop = self.loop
        future: asyncio.Future[Command] = loop.create_future()
        self._responses[command.message_id] = future
        if on_response is not None:
            self._on_response[command.message_id] = on_response
        if on_pending is not None:
            self._on_pending[command.message_id] = on_pending
            if timeout is not None:
                self._timeouts[command.message_id] = timeout
        if on_final is not None:
            self._on_final[command.message_id] = on_final
        buffers = self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True)
        sending = command.has_data_set
        for fragment, is_last in data:
            buffers += self.assoc.send_data(context_id, fragment, is_command=False, is_last=is_last)
            sending = not is_last
        self._unanswered += 1
        self._sending = sending
        assert self.transport is not None
        write_buffers(self.transport, buffers)
        if timeout is not None:
            self._response_deadlines[command.message_id] = loop.time() + timeout
            if self._response_timer is None:
                self._response_timer = loop.call_later(timeout, self._on_response_timer)
        return future

    def _on_response_timer(self) -> None:
        """Fail the requests whose response is overdue; re-arm for the next deadline."""
        self._response_timer = None
        if not self._response_deadlines:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for message_id, deadline in list(self._response_deadlines.items()):
            if deadline <= now:
                del self._response_deadlines[message_id]
                self._on_response.pop(message_id, None)
                self._on_pending.pop(message_id, None)
                self._on_final.pop(message_id, None)
                future = self._responses.pop(message_id, None)
                if future is not None and not future.done():
                    future.set_exception(TimeoutError())
                    future.exception()  # as in _fail: its sender may be gone
        if self._response_deadlines:
            delay = min(self._response_deadlines.values()) - now
            self._response_timer = loop.call_later(delay, self._on_response_timer)

    def send_plain(
        self, context_id: int, command: Command, data: bytes | memoryview | None = None
    ) -> None:
        """Send a command that expects no response (C-CANCEL, a response to the backend)."""
        if not self.usable:
            return
        buffers = self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True)
        if data is not None:
            buffers += self.assoc.send_data(context_id, data, is_command=False, is_last=True)
        assert self.transport is not None
        write_buffers(self.transport, buffers)

    def send_data(self, context_id: int, data: bytes | memoryview, is_last: bool) -> None:
        """Send one data-set fragment, re-cut to the backend's maximum PDU."""
        if not self.usable:
            raise self._unusable()
        assert self.transport is not None
        self.transport.writelines(
            self.assoc.send_data(context_id, data, is_command=False, is_last=is_last)
        )
        self._sending = not is_last

    async def drain(self) -> None:
        """Wait while the backend's socket buffer is full (paired back-pressure)."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self.error is not None:
            raise self.error

    async def release(self, timeout: float = 5.0) -> None:
        """A-RELEASE, falling back to A-ABORT when the backend does not answer in time."""
        self._stop_timers()
        if not self.usable:
            self._close()
            return
        if self.assoc.state is not AssocState.STA6:
            self.abort()  # still negotiating: there is nothing to release yet
            return
        self.error = UpstreamError("released by dicomlb", Cause.LOCAL)
        self._write(self.assoc.send(ReleaseRequest()))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()
        except asyncio.CancelledError:
            self.abort()  # the caller is going away: do not leave the backend waiting
            raise

    def abort(self) -> None:
        """A-ABORT and close at once (a message was cut off half-way)."""
        self._stop_timers()
        if self.transport is not None and not self.transport.is_closing():
            self._write(self.assoc.send(Abort(source=AbortSource.SERVICE_USER)))
        self._fail(UpstreamError("aborted by dicomlb", Cause.LOCAL))

    def schedule_idle_release(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._idle_deadline = loop.time() + delay
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(delay, self._on_idle_timer)

    def cancel_idle_release(self) -> None:
        """The association is in use again: no idle release (an armed timer finds nothing)."""
        self._idle_deadline = None

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        if self._idle_deadline is None:
            return
        loop = asyncio.get_running_loop()
        remaining = self._idle_deadline - loop.time()
        if remaining > 0:  # used and released again since the timer was armed
            self._idle_timer = loop.call_later(remaining, self._on_idle_timer)
            return
        self._idle_deadline = None
        self._releasing = loop.create_task(self.release())

    def _stop_timers(self) -> None:
        self._idle_deadline = None
        for timer in (self._idle_timer, self._response_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._response_timer = None


class Dial(Protocol):
    """Opens a connection to `host`:`port` for the association `protocol()` makes and
    returns it (`dial_tcp`; the unit tests pass an in-memory network instead)."""

    async def __call__(
        self,
        protocol: Callable[[], UpstreamAssociation],
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> UpstreamAssociation: ...


async def dial_tcp(
    protocol: Callable[[], UpstreamAssociation],
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> UpstreamAssociation:
    """A TCP connection (TLS with `tls`, checked against `server_name`)."""
    _, up = await asyncio.get_running_loop().create_connection(
        protocol, host, port, ssl=tls, server_hostname=server_name if tls is not None else None
    )
    return up


async def connect(
    backend: BackendConfig,
    key: UpstreamKey,
    contexts: list[SyntaxPair],
    dial: Dial = dial_tcp,
) -> UpstreamAssociation:
    """Open the transport (TCP, or TLS when the backend has `tls`) and send the
    A-ASSOCIATE-RQ; await `.established` on the result for the answer."""
    assert backend.dicom is not None
    tls = backend.tls
    return await dial(
        lambda: UpstreamAssociation(backend.name, key, contexts, backend.max_pdu),
        backend.dicom.host,
        backend.dicom.port,
        tls=tls.context if tls is not None else None,
        server_name=(tls.server_name or backend.dicom.host) if tls is not None else None,
    )


_REFUSED = frozenset(
    {Verdict.ABSTRACT_REFUSED, Verdict.SYNTAX_REFUSED, Verdict.REFUSED_AS_ABSTRACT}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """A backend to ask, as `key`'s AE titles, about `pairs` within `timeout` before a client's
    association is answered (`UpstreamPool.ask`)."""

    upstream: UpstreamPool
    key: UpstreamKey
    pairs: tuple[SyntaxPair, ...]
    timeout: float


async def ask_backends(asks: Iterable[Ask]) -> None:
    """Ask every backend at once; done when all answered or gave up."""
    await asyncio.gather(*(a.upstream.ask(a.key, a.pairs, a.timeout) for a in asks))


def _ignore(_: CommandReceived | DataReceived) -> None:
    """Drops the data set of a request nobody expected."""


class Lease:
    """One upstream association held for one message (`UpstreamPool.lease`) or one health
    check (`UpstreamPool.probe`). Its exit gives the association back on every path,
    cancellation included, and counts the message in the backend's `active` meanwhile."""

    __slots__ = ("_answered", "_contexts", "_key", "_needed", "_owner", "_pool", "_probe", "_up")

    def __init__(
        self,
        pool: UpstreamPool,
        key: UpstreamKey,
        needed: SyntaxPair,
        contexts: list[SyntaxPair],
        *,
        owner: ClientUpstreams | None = None,
        probe: float | None = None,
    ) -> None:
        self._pool = pool
        self._key = key
        self._needed = needed
        self._contexts = contexts
        self._owner = owner
        self._probe = probe  # a health check: its timeout bounds every wait
        self._up: UpstreamAssociation | None = None
        self._answered = 0

    async def __aenter__(self) -> UpstreamAssociation:
        pool = self._pool
        up = None
        if self._owner is not None and pool.per_client:
            up = self._owner.take(pool, self._key, self._needed)
        if up is None:
            up = await pool.acquire(self._key, self._needed, self._contexts, self._probe)
        self._up = up
        self._answered = up.answered
        if self._probe is None:
            pool.backend.active += 1
        return up

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        up, self._up = self._up, None
        if up is None:
            return
        pool = self._pool
        if self._probe is None:
            pool.backend.active -= 1
            if up.answered != self._answered:  # the backend answered a relayed message
                pool.last_answer = up.loop.time()
        pool.give_back(up, owner=self._owner, keep=self._probe is None)


class ClientUpstreams:
    """The upstream associations one client association owns in `upstream: per_client`
    pools (HAProxy's model): one per backend, kept between its messages for no one else,
    released when the client's association ends (`close`)."""

    def __init__(self) -> None:
        self._parked: list[tuple[UpstreamPool, UpstreamAssociation]] = []
        self._closed = False

    def take(
        self, pool: UpstreamPool, key: UpstreamKey, needed: SyntaxPair
    ) -> UpstreamAssociation | None:
        """This client's association to `pool`'s backend when it serves `needed`; any other
        it holds there is released (one per client: its slot is for the new one)."""
        found = None
        for entry in [e for e in self._parked if e[0] is pool]:
            self._parked.remove(entry)
            up = entry[1]
            if found is None and up.usable and up.key == key and up.context_for(needed) is not None:
                found = up
            else:
                pool.retire(up)
        return found

    def park(self, pool: UpstreamPool, up: UpstreamAssociation) -> None:
        if self._closed:
            pool.retire(up)
        else:
            self._parked.append((pool, up))

    def close(self) -> None:
        """Release every association this client held (A-RELEASE in the pools' tasks)."""
        self._closed = True
        parked, self._parked = self._parked, []
        for pool, up in parked:
            pool.retire(up)


class UpstreamPool:
    """The outbound associations of one backend: reused when idle, capped, waited for.

    The cap is the backend's `max_associations`, or less once `capacity` learned that the
    backend takes fewer (a new association unanswered while dicomlb held others)."""

    def __init__(self, backend: BackendState, pool: PoolConfig, dial: Dial = dial_tcp) -> None:
        self.backend = backend
        self.pool = pool
        self.dial = dial  # how its associations' connections are opened
        self.idle: list[UpstreamAssociation] = []
        self.open = 0  # leased, idle, parked with a client, or being opened
        self._opening = 0  # being opened: not yet an association the backend took
        self.capacity = Capacity(backend.config.max_associations)
        self.last_answer: float | None = None  # loop time the backend last answered a message
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing: set[asyncio.Task[None]] = set()
        # What the backend accepted and refused, per (called AE, calling AE).
        self.learned = LearnedContexts()
        # The DICOM -> HTTP bridge's keep-alive client for `store_via` backends (made on
        # first use by dicomlb.delivery.senders.client_for; closed with the pool).
        self.bridge: HttpStoreClient | None = None

    @property
    def per_client(self) -> bool:
        return self.pool.upstream is _PER_CLIENT

    def unknown(self, key: UpstreamKey, pairs: Iterable[SyntaxPair]) -> list[SyntaxPair]:
        """Those of `pairs` the backend has not said about (as `key`'s AE titles)."""
        return [pair for pair in pairs if self.verdict(key, pair) is Verdict.UNKNOWN]

    async def ask(self, key: UpstreamKey, pairs: Iterable[SyntaxPair], timeout: float) -> None:
        """Learn what the backend takes of `pairs` before a client is answered: an
        association proposing those not known yet, released at once. Only when a slot is
        free or idle now (a client is waiting); a backend that cannot be reached teaches
        nothing, and its health is the checks' business."""
        unknown = self.unknown(key, pairs)
        # (an idle association may be replaced; a slot in use is not waited for)
        if not unknown or self.held >= self.capacity.limit(asyncio.get_running_loop().time()):
            return
        try:
            # Released at once, as a health check's: kept idle, it would hold the one slot of
            # a backend taking one association at a time for a client that may never send.
            async with Lease(self, key, unknown[0], unknown, probe=timeout):
                pass
        except ContextRejected:
            pass  # learned all the same
        except UpstreamError as err:
            log.info(
                "contexts.not_asked backend=%s calling_aet=%s called_aet=%s cause=%s reason=%r",
                self.backend.name,
                key[0],
                key[1],
                err.cause.value,
                str(err),
            )
            return
        log.info(
            "contexts.asked backend=%s calling_aet=%s called_aet=%s proposed=%d refused=%d",
            self.backend.name,
            key[0],
            key[1],
            len(unknown),
            sum(1 for pair in unknown if self.verdict(key, pair) in _REFUSED),
        )

    def verdict(self, key: UpstreamKey, pair: SyntaxPair) -> Verdict:
        """What the backend said about `pair` when associated as `key`'s AE titles, since it
        last came up (a backend reconfigured while down may say otherwise now)."""
        return self.learned.verdict((key[1], key[0]), pair, self.backend.health.recoveries)

    def lease(
        self,
        key: UpstreamKey,
        needed: SyntaxPair,
        contexts: list[SyntaxPair],
        *,
        owner: ClientUpstreams | None = None,
    ) -> Lease:
        """`async with pool.lease(key, needed, contexts) as up:` an association to this
        backend with `needed` accepted, for exclusive use until the block ends.

        `contexts` are proposed when a new association is opened, so that it also serves the
        client's later messages. `owner`: the client association's, kept by it in a
        `per_client` pool. Entering raises `Unreachable`, `Rejected`, `ContextRejected` or
        `Busy` (no slot within the pool's acquire timeout).
        """
        return Lease(self, key, needed, contexts, owner=owner)

    def probe(self, key: UpstreamKey, needed: SyntaxPair, timeout: float) -> Lease:
        """A lease for a health check: it takes a slot like any association, waits for one
        and for the A-ASSOCIATE-AC at most `timeout` each, and is released afterwards, never
        kept idle (a backend taking one association at a time needs the slot back)."""
        return Lease(self, key, needed, [needed], probe=timeout)

    async def acquire(
        self,
        key: UpstreamKey,
        needed: SyntaxPair,
        contexts: list[SyntaxPair],
        probe: float | None,
    ) -> UpstreamAssociation:
        """An association for a `Lease` to hold (callers take leases: `lease`, `probe`)."""
        if self.backend.config.dicom is None:
            raise ContextRejected(
                f"{self.backend.name} has no dicom address (http only: C-STORE over store_via)"
            )
        if self.verdict(key, needed) in _REFUSED:  # said before: no association to ask again
            raise ContextRejected(self._refusal(key, needed), learned=True)
        up = self._take_idle(key, needed)
        if up is not None:  # the usual case, before any clock or loop is looked at
            return up
        loop = asyncio.get_running_loop()
        wait = self.pool.acquire_timeout if probe is None else probe
        deadline = loop.time() + wait
        retried = False
        while True:
            up = self._take_idle(key, needed)
            if up is not None:
                return up
            self._prune()
            limit = self.capacity.limit(loop.time())
            if self.open < limit:
                try:
                    return await self._open(key, needed, contexts, probe)
                except Unreachable as err:
                    if err.cause is not Cause.NO_ACCEPT_WHILE_HOLDING:
                        raise
                    others = self.open - self._opening
                    verdict = self.capacity.unanswered(others, loop.time(), retried=retried)
                    if verdict is Unanswered.FAIL:
                        raise
                    retried = True
                    log.warning(
                        "upstream.capacity backend=%s limit=%d configured=%d remember=%gs "
                        "reason=%r",
                        self.backend.name,
                        self.capacity.limit(loop.time()),
                        self.capacity.configured,
                        self.capacity.remember,
                        f"{err}, while dicomlb held {others}: freeing one and trying again",
                    )
                    continue
            if self.idle:
                # Full of idle associations for other clients or contexts: replace one.
                self.retire(self.idle.pop(0))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Busy(f"all {limit} associations to {self.backend.name} busy for {wait:g}s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                pass  # the next turn finds the deadline passed (or a slot freed meanwhile)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the freed slot is the next one's
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _take_idle(self, key: UpstreamKey, needed: SyntaxPair) -> UpstreamAssociation | None:
        for up in self.idle:
            if up.key == key and up.context_for(needed) is not None and up.usable:
                self.idle.remove(up)
                up.cancel_idle_release()
                return up
        return None

    async def _open(
        self,
        key: UpstreamKey,
        needed: SyntaxPair,
        contexts: list[SyntaxPair],
        probe: float | None,
    ) -> UpstreamAssociation:
        self.open += 1
        self._opening += 1
        address = self.backend.config.dicom
        assert address is not None  # config.py: DICOM routes use pools of DICOM backends
        # The needed SOP class in the default syntax too: refused there, the backend does not
        # take the SOP class at all (`contexts.LearnedContexts`). And verification: a backend
        # that takes none of the others still answers with an A-ASSOCIATE-AC saying what it
        # refuses, where many would reject the association.
        proposal = [
            needed,
            (needed[0], uids.IMPLICIT_VR_LE),
            *contexts,
            (uids.VERIFICATION, uids.IMPLICIT_VR_LE),
        ]
        timeout = self.pool.connect_timeout if probe is None else probe
        up: UpstreamAssociation | None = None
        try:
            async with asyncio.timeout(timeout):
                up = await connect(self.backend.config, key, proposal, self.dial)
                await up.established
        except BaseException as err:
            self.open -= 1
            self._opening -= 1
            self._wake()
            if up is not None:
                up.abort()
            if isinstance(err, OSError | UpstreamError):
                raise self._unreachable(err, up is not None, timeout) from None
            raise
        self._opening -= 1
        self.learned.learn((key[1], key[0]), up.answers, self.backend.health.recoveries)
        if up.context_for(needed) is None:
            self.retire(up)
            raise ContextRejected(self._refusal(key, needed))
        up.closed.add_done_callback(lambda _: self._forget(up))
        log.debug("upstream.associated backend=%s calling_aet=%s", self.backend.name, key[0])
        return up

    def _refusal(self, key: UpstreamKey, needed: SyntaxPair) -> str:
        if self.verdict(key, needed) is Verdict.ABSTRACT_REFUSED:
            return f"{self.backend.name} does not support SOP class {needed[0]}"
        return (
            f"{self.backend.name} rejected abstract syntax {needed[0]} "
            f"with transfer syntax {needed[1]}"
        )

    def _unreachable(
        self, err: OSError | UpstreamError, connected: bool, timeout: float
    ) -> UpstreamError:
        """The typed error for an association that could not be made."""
        address = self.backend.config.dicom
        if isinstance(err, Rejected):
            return err
        cause: Cause
        if isinstance(err, UpstreamError):
            cause, reason = err.cause, str(err)
        elif isinstance(err, TimeoutError):  # (an OSError too: tested first)
            if not connected:
                cause, done = Cause.CONNECT_TIMEOUT, "no connection"
            elif self.open > self._opening:
                # Its association limit is likely full with dicomlb's own (established ones;
                # others still waiting for their answer prove nothing): not its failure.
                cause, done = Cause.NO_ACCEPT_WHILE_HOLDING, "no A-ASSOCIATE-AC"
            else:
                cause, done = Cause.NO_ACCEPT, "no A-ASSOCIATE-AC"
            reason = f"{done} within connect_timeout {timeout:g}s"
        elif isinstance(err, ssl.SSLError):
            cause, reason = Cause.TLS, f"TLS: {err}"
        else:
            cause, reason = Cause.REFUSED, str(err) or type(err).__name__
        return Unreachable(f"cannot associate with {address}: {reason}", cause)

    def give_back(
        self, up: UpstreamAssociation, *, owner: ClientUpstreams | None = None, keep: bool = True
    ) -> None:
        """End a lease: a clean association goes back to its client (`owner`, in a
        `per_client` pool) or to the idle list (`keep`, in a shared pool), else it is
        released; any other is aborted (a half-sent message must never reach the backend
        whole). A slot no one keeps is freed."""
        if not up.clean:
            self.open -= 1
            up.abort()
        elif owner is not None and self.per_client:
            owner.park(self, up)  # the slot stays the client's until its association ends
            return
        elif keep and not self.per_client:
            self.idle.append(up)
            up.schedule_idle_release(self.pool.idle_timeout)
        else:
            self.retire(up)
            return
        self._wake()

    @property
    def held(self) -> int:
        """Associations leased out (or being opened) now."""
        return self.open - len(self.idle)

    def _forget(self, up: UpstreamAssociation) -> None:
        if up in self.idle:
            self.idle.remove(up)
            self.open -= 1
            self._wake()

    def retire(self, up: UpstreamAssociation) -> None:
        """`up` leaves the pool (not to be reused): released, and its slot free once the
        release is over — the backend still counts it until then."""
        with contextlib.suppress(ValueError):
            self.idle.remove(up)
        task = asyncio.get_running_loop().create_task(up.release())
        self._closing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        self.open -= 1
        self._wake()

    def _prune(self) -> None:
        for up in [u for u in self.idle if not u.usable]:
            self.idle.remove(up)
            self.open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Release every idle association (on stop or when the backend is removed)."""
        idle, self.idle = self.idle, []
        self.open -= len(idle)
        await asyncio.gather(*(up.release() for up in idle), *self._closing, return_exceptions=True)
        if self.bridge is not None:
            await self.bridge.close()
