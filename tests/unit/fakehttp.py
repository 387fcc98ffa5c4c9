"""An in-memory network for the HTTP proxy's shell (as httpcore's mock backend): no socket,
no sleep. `FakeLoop` is an event loop with a virtual clock (`advance`) whose
`create_connection` reaches `FakeBackend`s by address; `FakeTransport` carries bytes between
a protocol and the test. A test plays the client (`Client`: bytes in, bytes written back)
and the backends (`FakeBackend`: what each connection received, answers, closes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.http.proxy import ClientConnection, HttpListener
from dicomlb.runtime import Runtime

__all__ = [
    "Client",
    "FakeBackend",
    "FakeLoop",
    "FakeTransport",
    "advance",
    "listener",
    "run",
    "settle",
]


class FakeTransport(asyncio.Transport):
    """One end of an in-memory connection: what the protocol writes lands in `written`
    (and goes to `sink` when set); closing calls the protocol's `connection_lost` soon."""

    def __init__(
        self,
        protocol: asyncio.BaseProtocol,
        *,
        peername: tuple[str, int] = ("192.0.2.7", 40000),
        sink: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.protocol = protocol
        self.peername = peername
        self.sink = sink
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.eof_written = False
        self.high: int | None = None
        self.on_close: Callable[[], None] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peername}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        self.written += data
        if self.sink is not None:
            self.sink(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.on_close is not None:
            self.on_close()
        self.loop.call_soon(self.protocol.connection_lost, None)  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


class BackendConnection:
    """One connection the proxy opened to a `FakeBackend`."""

    def __init__(self, backend: FakeBackend, protocol: asyncio.Protocol) -> None:
        self.backend = backend
        self.protocol = protocol
        self.received = bytearray()
        self.transport = FakeTransport(protocol, peername=backend.address, sink=self._got)
        self.closed_by_proxy = False
        self.transport.on_close = self._closed

    def _got(self, data: bytes) -> None:
        self.received += data
        if self.backend.answer is not None:
            self.backend.answer(self)

    def _closed(self) -> None:
        self.closed_by_proxy = True
        self.backend.open.discard(self)

    def send(self, data: bytes) -> None:
        """Bytes from the backend to the proxy."""
        self.protocol.data_received(data)

    def close(self) -> None:
        """The backend closes the connection (EOF, then lost)."""
        if self.transport.closing:
            return
        self.protocol.eof_received()
        self.transport.close()


def complete_request(data: bytes | bytearray) -> int:
    """The length of the first complete request in `data` (Content-Length or chunked), 0 when
    it is not complete yet."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(data[:end]).lower()
    at = end + 4
    if b"transfer-encoding: chunked" in head:
        stop = data.find(b"0\r\n\r\n", at)
        return stop + 5 if stop >= 0 else 0
    length = 0
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return at + length if len(data) >= at + length else 0


class FakeBackend:
    """A backend at `address`: its connections (`connections`, `open`), and how it answers:
    `reply(response)` answers each complete request with the same bytes; None: the test
    answers by hand. `refuse`: connecting fails; `hang`: connecting never completes;
    `stall`: connecting calls `connection_made`, then never completes. A stalled connect
    cancelled closes its socket as the event loop does: uvloop without `connection_lost`
    (`lost_on_cancel` False), asyncio with it, soon after."""

    def __init__(self, loop: FakeLoop, host: str, port: int) -> None:
        self.address = (host, port)
        self.connections: list[BackendConnection] = []
        self.open: set[BackendConnection] = set()
        self.answer: Callable[[BackendConnection], None] | None = None
        self.refuse = False
        self.hang = False
        self.stall = False
        self.lost_on_cancel = False
        self.requests: list[bytes] = []
        loop.backends[self.address] = self

    def reply(self, response: bytes) -> None:
        def answer(conn: BackendConnection) -> None:
            while size := complete_request(conn.received):
                self.requests.append(bytes(conn.received[:size]))
                del conn.received[:size]
                conn.send(response)

        self.answer = answer

    async def connect(
        self, factory: Callable[[], asyncio.BaseProtocol]
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.hang:
            await asyncio.get_running_loop().create_future()
        protocol = factory()
        assert isinstance(protocol, asyncio.Protocol)
        conn = BackendConnection(self, protocol)
        self.connections.append(conn)
        self.open.add(conn)
        protocol.connection_made(conn.transport)
        if self.stall:
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                if self.lost_on_cancel:
                    conn.transport.close()
                else:  # uvloop closes the handle itself: the protocol hears nothing
                    conn.transport.closing = True
                    self.open.discard(conn)
                raise
        return conn.transport, protocol


class FakeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only by `advance` and whose connections are made in
    memory to the `FakeBackend`s registered by address."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.backends: dict[tuple[str, int], FakeBackend] = {}

    def time(self) -> float:
        return self.now

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **_: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        backend = self.backends.get((host, port))
        if backend is None:
            raise ConnectionRefusedError(111, f"nothing listens at {host}:{port}")
        return await backend.connect(protocol_factory)


def run(test: Callable[[FakeLoop], Coroutine[Any, Any, None]]) -> None:
    """Run `test(loop)` on a fresh FakeLoop."""
    with asyncio.Runner(loop_factory=FakeLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, FakeLoop)
        runner.run(test(loop))


async def settle(rounds: int = 20) -> None:
    """Let callbacks and tasks that are ready run (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def advance(seconds: float) -> None:
    """Move the virtual clock on; timers now due fire."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, FakeLoop)
    loop.now += seconds
    await settle()


def listener(config: dict[str, Any]) -> HttpListener:
    """An HTTP listener (not bound) for `config`, with `listeners.http` filled in."""
    config.setdefault("listeners", {}).setdefault("http", {"bind": "127.0.0.1:8080"})
    snapshot = build_snapshot(config, source="<test>")
    assert snapshot.http is not None
    return HttpListener(snapshot.http, Runtime(snapshot))


class Client:
    """A client connection of `listener`: `send` bytes, read what it was `written`."""

    def __init__(self, http: HttpListener, peer: tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        self.protocol = ClientConnection(http)
        self.transport = FakeTransport(self.protocol, peername=peer)
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    @property
    def written(self) -> bytes:
        return bytes(self.transport.written)

    def take(self) -> bytes:
        """What was written since the last `take`."""
        data = bytes(self.transport.written)
        self.transport.written.clear()
        return data

    @property
    def closed(self) -> bool:
        return self.transport.closing
