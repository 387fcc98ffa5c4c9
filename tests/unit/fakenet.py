"""An in-memory network for unit tests of the DICOM asyncio shells: no sockets, no sleeps
(in the spirit of httpcore's mock backend). Both far ends are built from dicomlb's own
sans-IO cores (`Association`, `MessageAssembler`), so what crosses the fake wire is real
PDU bytes.

    network = Network()
    network.serve("10.0.0.1", 104, lambda: FakeSCP(handler=answer(Status.SUCCESS)))
    runtime = Runtime(snapshot, dial=network.dial)  # upstream pools dial the fake network
    client = FakeClient.connect(InboundAssociation(listener))  # a scripted SCU
    client.associate(request); accept = await client.next()

- `Network.dial` is a `dicomlb.dicom.upstream.Dial`: it connects the association to the
  scripted SCP served at the address (`serve`: a factory per connection), raises
  ConnectionRefusedError where nothing is served, and never returns for `hang`. Every
  SCP connected is in `network.scps`, in order.
- `FakeSCP`: accepts the proposed contexts its `contexts` take (abstract syntax -> transfer
  syntaxes; None takes everything), or rejects with `reject`, or stays `silent`; calls
  `handler(scp, message)` for every whole message it receives (requests and responses);
  `respond`, `send`, `release`, `abort`, `close` script the rest. It records `messages`,
  `released`, `aborted`, and `closed` (a future).
- `FakeClient`: the SCU side of an acceptor: `associate`, `send` (a whole message, or
  `send_command` / `send_data` to stream it), `release` (it closes on the reply unless
  `close_after_release` is False), `abort`, `write` (raw bytes), `close`; `await next()`
  gives what came back: `AssociateAccept`, `AssociateReject`, `ReleaseReply`, `Abort`,
  `ReleaseRequest`, a whole `Message`, or `ConnectionClosed`.
- `pipe(left, right)` joins any two protocols with a `FakeTransport` pair (writes are
  delivered on the next loop turn; `pause_reading` holds them, and a writer with more than
  HIGH_WATER bytes unread gets `pause_writing` until LOW_WATER; `close` reaches the other
  side as an EOF). `settle()` runs the loop until nothing is scheduled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from dicomlb.dicom.association import Association, Role
from dicomlb.dicom.dimse import (
    Command,
    CommandReceived,
    DataReceived,
    MessageAssembler,
    Tag,
    response,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.pdu import (
    Abort,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    PData,
    PresentationContextResult,
    ReleaseReply,
    ReleaseRequest,
    UserInformation,
)
from dicomlb.dicom.upstream import UpstreamAssociation

Address = tuple[str, int]
DATA_SET_PRESENT = 0x0000  # Command Data Set Type: any value but 0x0101
# asyncio's default write-buffer limits: a writer is paused above HIGH_WATER bytes not yet
# read by the other side, and resumed at LOW_WATER.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class FakeTransport(asyncio.Transport):
    """One end of an in-memory connection (made by `pipe`)."""

    def __init__(self, protocol: asyncio.BaseProtocol, peername: Address, sockname: Address):
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self.peer: FakeTransport | None = None
        self._extra: dict[str, Any] = {"peername": peername, "sockname": sockname}
        self._closing = False
        self._paused = False
        self._inbox: list[bytes] = []  # arrived while reading was paused
        self._eof = False  # the other side closed: lost once the inbox is delivered
        self._lost = False
        self.written = bytearray()  # everything this end wrote
        self.buffered = 0  # written, not yet read by the other side's protocol
        self._writing_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        chunk = bytes(data)
        self.written += chunk
        self.buffered += len(chunk)
        self._loop.call_soon(self.peer._receive, chunk)
        if self.buffered > HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.peer is not None:
            self._loop.call_soon(self.peer._receive_eof)
        self._loop.call_soon(self._lose)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        self._loop.call_soon(self._flush)

    def is_reading(self) -> bool:
        return not self._paused

    def _receive(self, data: bytes) -> None:
        if self._lost:
            return
        self._inbox.append(data)
        self._flush()

    def _flush(self) -> None:
        while self._inbox and not self._paused and not self._lost:
            chunk = self._inbox.pop(0)
            if self.peer is not None:
                self.peer._read(len(chunk))
            self._protocol.data_received(chunk)  # type: ignore[attr-defined]
        if self._eof and not self._inbox:
            self._lose()

    def _read(self, size: int) -> None:
        """The other side read `size` of the bytes this end wrote."""
        self.buffered -= size
        if self._writing_paused and self.buffered <= LOW_WATER and not self._lost:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _receive_eof(self) -> None:
        self._eof = True
        self._flush()

    def _lose(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._protocol.connection_lost(None)


def pipe(
    left: asyncio.BaseProtocol,
    right: asyncio.BaseProtocol,
    left_address: Address = ("10.0.0.100", 40000),
    right_address: Address = ("10.0.0.1", 104),
) -> tuple[FakeTransport, FakeTransport]:
    """Connect `left` (the side that dialed) to `right`; each gets `connection_made`."""
    a = FakeTransport(left, peername=right_address, sockname=left_address)
    b = FakeTransport(right, peername=left_address, sockname=right_address)
    a.peer, b.peer = b, a
    right.connection_made(b)
    left.connection_made(a)
    return a, b


async def settle(turns: int = 50) -> None:
    """Let the loop run what is scheduled now and what that schedules (no timers)."""
    for _ in range(turns):
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class Message:
    """A whole DIMSE message as a far end received it: command, and data set if any."""

    context_id: int
    command: Command
    data: bytes | None


class _Assembly:
    """Whole messages from P-DATA (data sets joined: test messages are small)."""

    def __init__(self) -> None:
        self.assembler = MessageAssembler()
        self._command: CommandReceived | None = None
        self._parts: list[bytes] = []

    def receive(self, event: PData) -> list[Message]:
        whole = []
        for dimse in self.assembler.receive(event.pdvs):
            if isinstance(dimse, CommandReceived):
                if dimse.command.has_data_set:
                    self._command, self._parts = dimse, []
                else:
                    whole.append(Message(dimse.context_id, dimse.command, None))
            else:
                assert isinstance(dimse, DataReceived) and self._command is not None
                self._parts.append(bytes(dimse.data))
                if dimse.is_last:
                    command, self._command = self._command, None
                    data = b"".join(self._parts)
                    whole.append(Message(command.context_id, command.command, data))
        return whole


def data_response(request: Command, status: int, *, comment: str | None = None) -> Command:
    """`dimse.response`, announcing a data set (a C-FIND identifier, a failed-UID list)."""
    return response(request, status, error_comment=comment).replace(
        {Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT}
    )


Handler = Callable[["FakeSCP", Message], None]


def answer(status: int, comment: str | None = None) -> Handler:
    """A handler answering every request with `status` (responses are ignored)."""

    def handle(scp: FakeSCP, message: Message) -> None:
        if not message.command.command_field & 0x8000:
            scp.respond(message, status, comment=comment)

    return handle


SUCCESS = answer(0x0000)  # FakeSCP's default handler


def ignore(scp: FakeSCP, message: Message) -> None:
    """A handler that never answers (a backend past its response timeout)."""


class FakeSCP(asyncio.Protocol):
    """A scripted DICOM SCP: the far end of an upstream association (see the module)."""

    def __init__(
        self,
        *,
        ae_title: str = "SCP",
        contexts: Mapping[str, Collection[str]] | None = None,
        reject: AssociateReject | None = None,
        silent: bool = False,
        handler: Handler | None = None,
        max_pdu: int = 16384,
    ) -> None:
        self.ae_title = ae_title
        self.takes = contexts
        self.reject = reject
        self.silent = silent  # never answers the A-ASSOCIATE-RQ
        self.handler = handler if handler is not None else SUCCESS
        self.assoc = Association(Role.ACCEPTOR, max_pdu=0)
        self.max_pdu = max_pdu
        self._assembly = _Assembly()
        self.transport: FakeTransport | None = None
        self.request: AssociateRequest | None = None
        self.messages: list[Message] = []
        self.released = False
        self.aborted = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, FakeTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            events = self.assoc.receive_data(data)
        except RemoteProtocolError as err:
            self._write(self.assoc.send(err.reply))
            self.close()
            return
        for event in events:
            if isinstance(event, AssociateRequest):
                self.request = event
                if self.silent:
                    continue
                if self.reject is not None:
                    self._write(self.assoc.send(self.reject))
                    continue
                self._write(self.assoc.send(self._accept(event)))
            elif isinstance(event, PData):
                for message in self._assembly.receive(event):
                    self.messages.append(message)
                    self.handler(self, message)
            elif isinstance(event, ReleaseRequest):
                self.released = True
                self._write(self.assoc.send(ReleaseReply()))
                self.close()
            elif isinstance(event, ReleaseReply):
                self.close()
            elif isinstance(event, Abort):
                self.aborted = True
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.assoc.receive_eof()
        if not self.closed.done():
            self.closed.set_result(None)

    def _accept(self, request: AssociateRequest) -> AssociateAccept:
        results = []
        for proposal in request.contexts:
            result, syntax = (
                ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
                proposal.transfer_syntaxes[0],
            )
            taken = None if self.takes is None else self.takes.get(proposal.abstract_syntax)
            if self.takes is None:
                result = ContextResult.ACCEPTANCE
            elif taken is not None:
                result = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
                for candidate in proposal.transfer_syntaxes:
                    if candidate in taken:
                        result, syntax = ContextResult.ACCEPTANCE, candidate
                        break
            results.append(
                PresentationContextResult(
                    context_id=proposal.context_id, result=result, transfer_syntax=syntax
                )
            )
        return AssociateAccept(
            called_ae=request.called_ae,
            calling_ae=request.calling_ae,
            contexts=tuple(results),
            user_info=UserInformation(max_pdu=self.max_pdu, implementation_class_uid="1.2.3.4"),
        )

    # -------------------------------------------------------- scripting

    def respond(
        self, request: Message, status: int, data: bytes | None = None, comment: str | None = None
    ) -> None:
        """Answer `request` with `status` (and a data set when `data` is given)."""
        if data is None:
            command = response(request.command, status, error_comment=comment)
        else:
            command = data_response(request.command, status, comment=comment)
        self.send(request.context_id, command, data)

    def send(self, context_id: int, command: Command, data: bytes | None = None) -> None:
        """Write a whole message (a response, or a request such as a C-GET's C-STORE)."""
        if self.transport is None or self.transport.is_closing():
            return
        buffers = self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True)
        if data is not None:
            buffers += self.assoc.send_data(context_id, data, is_command=False, is_last=True)
        self.transport.writelines(buffers)

    def release(self) -> None:
        """A-RELEASE-RQ (a backend's own idle timeout); closes on the reply."""
        self._write(self.assoc.send(ReleaseRequest()))

    def abort(self) -> None:
        self._write(self.assoc.send(Abort(source=AbortSource.SERVICE_PROVIDER)))
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


_HANG = object()


class Network:
    """Addresses served by scripted SCPs; `dial` is a `dicomlb.dicom.upstream.Dial`."""

    def __init__(self) -> None:
        self._servers: dict[Address, Callable[[], FakeSCP] | object] = {}
        self.scps: list[FakeSCP] = []
        self.dialed: list[Address] = []

    def serve(self, host: str, port: int, scp: Callable[[], FakeSCP] = FakeSCP) -> None:
        """Connections to `host`:`port` reach a new `scp()` each."""
        self._servers[(host, port)] = scp

    def hang(self, host: str, port: int) -> None:
        """Connections to `host`:`port` never complete (a connect timeout)."""
        self._servers[(host, port)] = _HANG

    def refuse(self, host: str, port: int) -> None:
        """Connections to `host`:`port` are refused (as nothing listening)."""
        self._servers.pop((host, port), None)

    async def dial(
        self,
        protocol: Callable[[], UpstreamAssociation],
        host: str,
        port: int,
        *,
        tls: Any = None,
        server_name: str | None = None,
    ) -> UpstreamAssociation:
        self.dialed.append((host, port))
        server = self._servers.get((host, port))
        if server is None:
            raise ConnectionRefusedError(111, f"Connect call failed ('{host}', {port})")
        if server is _HANG:
            await asyncio.get_running_loop().create_future()
        assert callable(server)
        scp = server()
        up = protocol()
        pipe(up, scp, ("10.0.0.100", 40000 + len(self.dialed)), (host, port))
        self.scps.append(scp)
        return up


class FakeClient(asyncio.Protocol):
    """A scripted DICOM SCU: the client of an acceptor's association (see the module)."""

    def __init__(self, *, max_pdu: int = 16384) -> None:
        self.assoc = Association(Role.REQUESTOR, max_pdu=max_pdu)
        self._assembly = _Assembly()
        self.transport: FakeTransport | None = None
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_after_release = True  # False: a client that stays after A-RELEASE-RP

    @classmethod
    def connect(
        cls,
        server: asyncio.Protocol,
        peer: Address = ("10.0.0.5", 50000),
        *,
        max_pdu: int = 16384,
    ) -> FakeClient:
        """A client connected from `peer` to `server` (an `InboundAssociation`)."""
        client = cls(max_pdu=max_pdu)
        pipe(client, server, peer, ("10.0.0.200", 11112))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, FakeTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            events = self.assoc.receive_data(data)
        except RemoteProtocolError as err:  # the test sees it as an event
            self.events.put_nowait(err)
            return
        for event in events:
            if isinstance(event, PData):
                for message in self._assembly.receive(event):
                    self.events.put_nowait(message)
            else:
                self.events.put_nowait(event)
                if isinstance(event, ReleaseReply) and self.close_after_release:
                    self.close()  # PS3.8 AR-3: the requestor closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        for event in self.assoc.receive_eof():
            self.events.put_nowait(event)
        if not self.closed.done():
            self.closed.set_result(None)

    async def next(self, timeout: float = 2.0) -> object:
        """The next thing the server sent (or ConnectionClosed when it closed)."""
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def next_message(self, timeout: float = 2.0) -> Message:
        event = await self.next(timeout)
        assert isinstance(event, Message), event
        return event

    # -------------------------------------------------------- scripting

    def associate(self, request: AssociateRequest) -> None:
        self.write(self.assoc.send(request))

    def send(self, context_id: int, command: Command, data: bytes | None = None) -> None:
        """A whole message: the command, then its data set if any."""
        self.send_command(context_id, command)
        if data is not None:
            self.send_data(context_id, data, is_last=True)

    def send_command(self, context_id: int, command: Command) -> None:
        self._writelines(
            self.assoc.send_data(context_id, command.encode(), is_command=True, is_last=True)
        )

    def send_data(self, context_id: int, data: bytes, *, is_last: bool) -> None:
        self._writelines(self.assoc.send_data(context_id, data, is_command=False, is_last=is_last))

    def release(self) -> None:
        self.write(self.assoc.send(ReleaseRequest()))

    def abort(self) -> None:
        self.write(self.assoc.send(Abort(source=AbortSource.SERVICE_USER)))

    def write(self, data: bytes) -> None:
        """Raw bytes to the server."""
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def _writelines(self, buffers: list[bytes | memoryview]) -> None:
        assert self.transport is not None
        self.transport.writelines(buffers)
