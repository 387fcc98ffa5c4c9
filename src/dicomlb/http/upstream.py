"""Keep-alive connections to HTTP backends (asyncio shell): one `UpstreamConnection` per
socket, pooled per backend by `BackendConnections` (idle ones reused last-in first-out,
closed after the pool's idle timeout).

The connection only moves bytes and feeds the `ResponseReader` core; what the events mean
is the `Exchange`'s business (`proxy.py`).
"""

from __future__ import annotations

import asyncio
import socket
import typing
from typing import TYPE_CHECKING

from dicomlb.http.h1 import Event, RemoteProtocolError, ResponseReader
from dicomlb.pools import BackendState
from dicomlb.snapshot import HttpAddress

if TYPE_CHECKING:
    from dicomlb.http.proxy import Exchange

__all__ = ["BackendConnections", "UpstreamConnection"]

WRITE_HIGH = 256 * 1024  # write buffer toward a backend before the client is paused


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend, carrying one exchange at a time."""

    def __init__(self, owner: BackendConnections) -> None:
        self.owner = owner
        self.reader = ResponseReader()
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
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
            self.exchange.client.pause_reading("upstream")

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading("upstream")

    # use -----------------------------------------------------------------------------------

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < idle_timeout
        )

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.close()


class BackendConnections:
    """The keep-alive connections of one backend."""

    def __init__(self, backend: BackendState, address: HttpAddress) -> None:
        self.backend = backend
        self.address = address
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle_timeout = 30.0

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
        conn.idle_since = now
        self.idle.append(conn)
        self._idle_timeout = idle_timeout
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(idle_timeout, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        keep = []
        for conn in self.idle:
            if conn.usable(now, self._idle_timeout):
                keep.append(conn)
            else:
                conn.close()
        self.idle = keep
        if keep:
            wait = min(c.idle_since for c in keep) + self._idle_timeout - now
            self._sweeper = loop.call_later(max(wait, 0.05), self._sweep)

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(self), self.address.host, self.address.port
            )
        return conn

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self.idle:
            conn.close()
        self.idle.clear()
