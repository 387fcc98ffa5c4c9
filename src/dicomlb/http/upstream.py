"""Keep-alive connections to HTTP backends (asyncio shell): one `UpstreamConnection` per
socket, pooled per backend by `BackendConnections` (idle ones reused last-in first-out,
closed after the pool's idle timeout, or at once when the backend is draining), capped per
backend by its connection budget (`http/budget.py`, `http.max_connections`, shared with the
bridge and the health checks: requests wait their turn in order), with the backend's
slow-start ramp and passive-ejection window.

The connection only moves bytes and feeds the `ResponseReader` core; what the events mean
is its `ExchangeSink`'s business (the proxy's `Exchange`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing
from typing import Protocol

from dicomlb.http.balancing import FailureWindow, SlowStart
from dicomlb.http.budget import Use
from dicomlb.http.h1 import Event, ReaderState, RemoteProtocolError, ResponseReader
from dicomlb.http.lease import BudgetFull, acquire, full, release
from dicomlb.pools import BackendState
from dicomlb.snapshot import BackendConfig, HttpAddress, HttpPoolConfig
from dicomlb.tls import default_client_context

__all__ = ["BackendConnections", "ExchangeSink", "UpstreamConnection", "upstream_tls"]

WRITE_HIGH = 256 * 1024  # write buffer toward a backend before the client is paused
_IDLE = ReaderState.IDLE  # (a global: an Enum member read from its class costs ~130 ns)


class ExchangeSink(Protocol):
    """What a connection tells the exchange it carries."""

    def on_upstream_events(
        self, conn: UpstreamConnection, events: list[Event], data: bytes = b""
    ) -> None:
        """The response's events; `data`, when given, are the bytes they were read from."""
        ...

    def upstream_failed(self, conn: UpstreamConnection, reason: str, *, received: bool) -> None:
        """The connection failed; `received` when some of the response had come."""
        ...

    def pause_client(self) -> None:
        """The backend's write buffer is full: stop reading the client."""
        ...

    def resume_client(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend, carrying one exchange at a time."""

    def __init__(self, owner: BackendConnections) -> None:
        self.owner = owner
        self.reader = ResponseReader()
        self.transport: asyncio.Transport | None = None
        self.exchange: ExchangeSink | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0  # exchanges carried, for logs (reused when > 0)

    # asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop: not a subclass
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # DESIGN.md decision 5
        transport.set_write_buffer_limits(high=WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            events = self.reader.receive_data(data)
        except RemoteProtocolError as err:
            exchange.upstream_failed(self, str(err), received=True)
            return
        exchange.on_upstream_events(self, events, data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.forget(self)
        exchange = self.exchange
        if exchange is None:
            return
        try:
            events: list[Event] = self.reader.receive_eof()
        except RemoteProtocolError as err:
            exchange.upstream_failed(self, str(err), received=self.reader.state.value != "idle")
            return
        if events:
            exchange.on_upstream_events(self, events)
        if self.exchange is exchange:  # closed before the response was complete
            exchange.upstream_failed(self, "the backend closed the connection", received=False)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_client()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_client()

    # use -----------------------------------------------------------------------------------

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < idle_timeout
            and self.reader.state is _IDLE  # (ERROR: bytes after a response)
        )

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    # what the proxy does with the connection (it never touches the transport) -------------

    def write(self, data: bytes) -> None:
        """Bytes for the backend; dropped once the connection is closed (whoever carries
        it hears so from `connection_lost`, or let it go)."""
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.writelines(pieces)

    def write_eof(self) -> None:
        """The client finished sending (a tunnel): so does this side, where TCP can."""
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def pause_reading(self) -> None:
        """The client is not reading: stop reading the backend."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


def upstream_tls(config: BackendConfig) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context and server name toward an `https://` backend (its `tls` block, or
    the system's CAs), or (None, None) for plain http."""
    address = config.http
    if address is None or address.scheme != "https":
        return None, None
    tls = config.tls
    context = tls.context if tls is not None else default_client_context()
    name = tls.server_name if tls is not None and tls.server_name else address.host
    return context, name


class BackendConnections:
    """The keep-alive connections of one backend; each holds a slot of the backend's
    connection budget from before it connects until it is closed."""

    def __init__(self, backend: BackendState, address: HttpAddress) -> None:
        self.backend = backend
        self.address = address
        self.budget = backend.budget
        self.budget.shed = self.shed_idle
        self.ssl, self.server_hostname = upstream_tls(backend.config)
        self.idle: list[UpstreamConnection] = []
        # The connections open or being opened, each holding one slot of the budget: being
        # here is holding it, so `forget` gives it back once, whoever calls it first.
        self.live: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle_timeout = 30.0
        self._ramp: SlowStart | None = None
        self._window: FailureWindow | None = None

    def ramp(self, options: HttpPoolConfig) -> SlowStart:
        """The backend's slow-start state (its pool's `http.slow_start`)."""
        ramp = self._ramp
        if ramp is None or ramp.duration != options.slow_start:
            ramp = self._ramp = SlowStart(options.slow_start)
        return ramp

    def window(self, options: HttpPoolConfig) -> FailureWindow:
        """The backend's passive-ejection window (its pool's `http.passive` thresholds)."""
        window = self._window
        if (
            window is None
            or window.failures != options.passive_failures
            or window.window != options.passive_window
        ):
            window = self._window = FailureWindow(
                failures=options.passive_failures, window=options.passive_window
            )
        return window

    @property
    def open(self) -> int:
        """Connections open or being opened (slots of the budget held)."""
        return len(self.live)

    def take(self, now: float, idle_timeout: float) -> UpstreamConnection | None:
        """An idle connection to reuse, or None."""
        while self.idle:
            conn = self.idle.pop()
            if conn.usable(now, idle_timeout):
                return conn
            conn.close()
        return None

    def give_back(self, conn: UpstreamConnection, now: float, idle_timeout: float) -> None:
        """`conn` finished an exchange cleanly and may carry another."""
        conn.exchange = None
        if not self.backend.enabled:  # draining: no new work comes, close as it goes idle
            conn.close()
            return
        budget = self.budget
        while (waiter := budget.hand_over(self)) is not None:
            if waiter.wake(conn):
                return  # the next request in line takes it, with its slot
        if budget.others_waiting(self):  # the bridge or a check waits: free the slot
            conn.close()
            return
        conn.idle_since = now
        self.idle.append(conn)
        self._idle_timeout = idle_timeout
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(idle_timeout, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        """`conn` is closed: its slot is free (once, however often this is called)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn in self.live:
            self.live.remove(conn)
            release(self.budget)

    def shed_idle(self) -> bool:
        """Close the longest idle connection, for someone waiting for its slot; False when
        none is idle."""
        if not self.idle:
            return False
        self.idle.pop(0).close()
        return True

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        keep = []
        enabled = self.backend.enabled
        for conn in self.idle:
            if enabled and conn.usable(now, self._idle_timeout):
                keep.append(conn)
            else:
                conn.close()
        self.idle = keep
        if keep:
            wait = min(c.idle_since for c in keep) + self._idle_timeout - now
            self._sweeper = loop.call_later(max(wait, 0.05), self._sweep)

    async def connect(self, wait: float, timeout: float) -> tuple[UpstreamConnection, bool]:
        """A connection for one exchange, in a slot of the backend's budget: handed over by
        a request that finished (True), or new (False). Raises BudgetFull when no slot came
        within `wait`, OSError or TimeoutError when connecting failed; it then holds
        nothing, cancelled too."""
        budget = self.budget
        while True:
            try:
                handed: UpstreamConnection | None = await acquire(
                    budget, Use.PROXY, wait, owner=self
                )
            except TimeoutError:
                raise BudgetFull(full(budget, wait)) from None
            if handed is None:
                break
            if not handed.closed:
                return handed, True
            # (lost on its way here, its slot gone with it to the line: wait again)
        conn = UpstreamConnection(self)
        self.live.add(conn)  # the slot is the connection's from here
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn,
                    self.address.host,
                    self.address.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                )
        except BaseException:
            # A connect given up after `connection_made` closes the socket: asyncio then
            # calls `connection_lost`, uvloop does not. Either way the slot comes back here.
            conn.close()
            self.forget(conn)
            raise
        if conn.closed:  # lost before this task ran again (its slot is back already)
            raise ConnectionResetError("the backend closed the connection at once")
        return conn, False

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.budget.shed == self.shed_idle:
            self.budget.shed = None
        for conn in self.idle:
            conn.close()
        self.idle.clear()
