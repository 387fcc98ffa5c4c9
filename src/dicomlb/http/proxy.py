"""The HTTP listener and reverse proxy (asyncio shell around the `h1` core).

Per client connection a `ClientConnection` feeds bytes to a `RequestReader` and keeps the
events in order (pipelined requests wait their turn); each request becomes an `Exchange`:
route → middlewares → backend → a pooled keep-alive `UpstreamConnection` → the head (as
received, rewritten only where a middleware asked) and the body streamed as it arrives; the
response is streamed back the same way. Back-pressure is paired: a full client write buffer
pauses reading from the backend, a full backend write buffer pauses reading from the client.

Timeouts are idle timeouts, checked lazily by one timer per client connection: the head of a
request must arrive within `head_timeout` of its first byte (slowloris), a connection
between requests closes after `keepalive_timeout`, and during a request nothing may stand
still longer than `idle_timeout` (or the pool's `read_timeout` while a response is due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from dicomlb import descriptors
from dicomlb.delivery.passive import passive_ejection, passive_failure
from dicomlb.health import Cause
from dicomlb.http import orthanc
from dicomlb.http.affinity import StickyTable, least_loaded, request_key
from dicomlb.http.balancing import ramping_excluded
from dicomlb.http.checks import DEFAULT_CHECK
from dicomlb.http.h1 import (
    Data,
    EndOfMessage,
    Event,
    LocalResponse,
    ReaderState,
    RemoteProtocolError,
    Request,
    RequestReader,
    Response,
    Upgrade,
    can_discard,
    chunk,
    close_connection,
    forward_head,
    header,
    last_chunk,
    serialize_response,
)
from dicomlb.http.lease import BudgetFull
from dicomlb.http.locate import MAX_LOCATING, locate
from dicomlb.http.middlewares import RequestContext, build_middleware
from dicomlb.http.routing import HttpRouter, request_path
from dicomlb.http.upstream import BackendConnections, UpstreamConnection
from dicomlb.pools import BackendState, Pool, Protocol
from dicomlb.runtime import Runtime
from dicomlb.snapshot import (
    HttpKey,
    HttpListenerConfig,
    HttpPoolConfig,
    HttpRouteConfig,
    KeyKind,
    RequestFacts,
    Strategy,
)
from dicomlb.tls import ServerHandshake

log = logging.getLogger(__name__)

__all__ = ["ClientConnection", "Exchange", "HttpListener", "HttpRuntime", "LingeringClose"]

DEFAULT_POOL_HTTP = HttpPoolConfig()
CLIENT_WRITE_HIGH = 256 * 1024
PENDING_HIGH = 256 * 1024  # body bytes held while a backend connection is being opened
QUEUE_HIGH = 64  # pipelined events held before reading from the client pauses
# Reading and dropping what a client still sends after its answer (a request body answered
# early, or a connection being closed): at most this long between reads and in all (nginx's
# lingering_timeout and lingering_time).
LINGER_TIMEOUT = 5.0
LINGER_TIME = 30.0
WRITES = frozenset((b"POST", b"PUT", b"DELETE", b"PATCH"))  # to an Orthanc pool's writer
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE", b"PROPFIND"))
_ERROR = object()  # queued in place of events after a malformed request
_NONE: frozenset[str] = frozenset()
_CLIENT_IP_KEY = HttpKey(kind=KeyKind.CLIENT_IP)  # sticky / affinity without a key: the client
# Method names as text (routing facts, metrics, logs) without a decode per request.
_METHOD_NAMES = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS")}


class RoutePlan:
    """What a request on one route needs from the snapshot, resolved once per snapshot
    rather than looked up per request."""

    __slots__ = ("balanced", "middlewares", "options", "orthanc", "pool", "read_timeout", "route")

    def __init__(self, route: HttpRouteConfig, pool: Pool) -> None:
        self.route = route
        self.pool = pool
        self.options = options = route.pool.http or DEFAULT_POOL_HTTP
        self.read_timeout = route.read_timeout or options.read_timeout
        self.middlewares = tuple(build_middleware(m) for m in route.middlewares)
        self.orthanc = route.pool.orthanc
        # Nothing but the pool's strategy places a request: no Orthanc writer or pins, no
        # stickiness or affinity key, no slow start.
        self.balanced = not (
            route.pool.orthanc
            or route.pool.orthanc_writer
            or options.sticky
            or pool.config.strategy is Strategy.AFFINITY
            or options.slow_start > 0
        )


class HttpRuntime:
    """The HTTP side of one snapshot: router, middlewares, pools; connections, sticky and
    owner tables are carried over from the previous runtime for what stays."""

    def __init__(self, runtime: Runtime, previous: HttpRuntime | None = None) -> None:
        snapshot = runtime.snapshot
        self.runtime = runtime
        self.router = HttpRouter(snapshot.http_routes)
        self.pools: Mapping[str, Pool] = runtime.pools
        self.plans = {
            route.name: RoutePlan(route, self.pools[route.pool.name])
            for route in snapshot.http_routes
        }
        # The plan of every request when the first route matches everything.
        everything = self.router.everything
        self.everything = self.plans[everything.name] if everything is not None else None
        old_conns = previous.connections if previous else {}
        self.connections: dict[str, BackendConnections] = {}
        for name, backend in runtime.backends.items():
            address = backend.config.http
            if address is None:
                continue
            conns = old_conns.get(name)
            if conns is None or conns.backend is not backend or conns.address != address:
                conns = BackendConnections(backend, address)
            self.connections[name] = conns
        self.sticky: dict[str, StickyTable] = previous.sticky if previous else {}
        self.owners: dict[str, orthanc.OwnerTable] = previous.owners if previous else {}
        for pool in snapshot.pools.values():
            self.sticky.setdefault(pool.name, StickyTable())
            self.owners.setdefault(pool.name, orthanc.OwnerTable())
        self.retired = [c for n, c in old_conns.items() if self.connections.get(n) is not c]
        self.rng: random.Random = previous.rng if previous else random.Random()  # slow start
        # Owner lookups in flight (resource -> its task), shared by the requests asking for
        # the same resource; at most MAX_LOCATING.
        self.locating: dict[str, asyncio.Task[str | None]] = previous.locating if previous else {}

    def locate(
        self, pool: Pool, resource: str, authorization: bytes | None
    ) -> asyncio.Task[str | None] | None:
        """The lookup of `resource`'s owner among `pool`'s available backends (started, or
        joined when one runs already); None when too many run."""
        task = self.locating.get(resource)
        if task is not None:
            return task
        if len(self.locating) >= MAX_LOCATING:
            return None
        options = pool.config.http or DEFAULT_POOL_HTTP
        candidates = [
            self.connections[b.name]
            for b in pool.backends
            if b.http_available and b.name in self.connections
        ]
        task = asyncio.get_running_loop().create_task(
            self._locate(pool.name, candidates, resource, options.connect_timeout, authorization)
        )
        self.locating[resource] = task
        task.add_done_callback(lambda _: self.locating.pop(resource, None))
        return task

    async def _locate(
        self,
        pool: str,
        candidates: list[BackendConnections],
        resource: str,
        timeout: float,
        authorization: bytes | None,
    ) -> str | None:
        started = time.monotonic()
        config = self.pools[pool].config
        check = config.health.http or DEFAULT_CHECK
        owner = await locate(
            candidates, resource, timeout, check=check, authorization=authorization
        )
        ms = (time.monotonic() - started) * 1000
        if owner is None:
            log.info(
                "http.not_located pool=%s resource=%s backends=%d ms=%d",
                pool,
                resource,
                len(candidates),
                ms,
            )
            return None
        self.owners[pool].remember(resource, owner)
        log.info(
            "http.located pool=%s resource=%s backend=%s backends=%d ms=%d",
            pool,
            resource,
            owner,
            len(candidates),
            ms,
        )
        return owner

    def close(self) -> None:
        for conns in self.connections.values():
            conns.close()
        for task in list(self.locating.values()):
            task.cancel()


class HttpListener:
    """Accepts HTTP clients on `listeners.http`."""

    def __init__(self, config: HttpListenerConfig, runtime: Runtime) -> None:
        self.config = config
        self.http = HttpRuntime(runtime)
        self.server: asyncio.Server | None = None
        self.clients: set[ClientConnection] = set()
        self.fd_limit: int | None = None

    def reload(self, runtime: Runtime) -> None:
        """New requests use `runtime` and new connections its listener settings (the bind
        stays); requests in flight finish on theirs."""
        if runtime.snapshot.http is not None:
            self.config = runtime.snapshot.http
        self.http = HttpRuntime(runtime, self.http)
        for conns in self.http.retired:
            conns.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self.config.tls
        self.fd_limit = descriptors.soft_limit()
        self.server = await loop.create_server(
            lambda: ClientConnection(self),
            self.config.host,
            self.config.port,
            backlog=1024,
            reuse_address=True,
            reuse_port=self.config.reuse_port,
        )
        log.info(
            "listener.started listener=http bind=%s:%d tls=%s",
            self.config.host,
            self.config.port,
            "on" if tls is not None else "off",
        )

    async def stop(self, graceful_timeout: float) -> None:
        """Stop accepting; let requests in flight finish (bounded); close the rest."""
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.exchange is None:
                client.close()
            else:
                client.closing_after_exchange = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(graceful_timeout):
                while any(c.exchange is not None for c in self.clients):
                    await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.close()
        self.http.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.server.wait_closed()


class ClientConnection(asyncio.Protocol):
    """One client connection: requests in order, one exchange at a time."""

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.config = listener.config
        self.loop = asyncio.get_running_loop()
        self.reader = RequestReader(
            max_head_size=self.config.max_head_size, slashes=self.config.encoded_slashes
        )
        self.queue: deque[Any] = deque()
        self.exchange: Exchange | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.paused: set[str] = set()
        self.write_paused = False
        self.closed = False
        self.closing_after_exchange = False
        self.tunnel: UpstreamConnection | None = None
        self.error: RemoteProtocolError | None = None
        self.last_activity = self.loop.time()
        self.head_started: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.handshake: asyncio.Task[None] | None = None  # the TLS handshake, while it runs
        self.discarding = False  # dropping the rest of a request body answered early
        self.discard_started = 0.0
        self.lingering: LingeringClose | None = None

    # asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop: not a subclass
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        clients = self.listener.clients
        tls = self.config.tls
        if len(clients) >= self.config.max_connections or descriptors.in_headroom(
            descriptors.transport_fd(transport), self.listener.fd_limit
        ):
            log.warning("http.refused peer=%s:%d reason='too many connections'", *self.peer)
            if tls is None:  # (no handshake is spent on a client refused)
                transport.write(
                    LocalResponse(
                        status=503, body=b"too many connections\n", close=True
                    ).serialize()
                )
            transport.close()
            self.closed = True
            return
        clients.add(self)  # counted while its TLS handshake runs too
        if tls is not None:
            self.handshake = self.loop.create_task(
                self._start_tls(ServerHandshake(transport), tls.context)
            )
            return
        self._ensure_timer(self.config.keepalive_timeout)

    async def _start_tls(self, handshake: ServerHandshake, context: ssl.SSLContext) -> None:
        """Run the server side of the TLS handshake (within `head_timeout`); the client's
        requests are then read through it. A refused handshake is logged, one line."""
        try:
            tls = await handshake.run(context, self.config.head_timeout)
        except Exception as err:  # the client's handshake failed; the connection is closed
            log.warning(
                "listener.tls_failed listener=http peer=%s:%d reason=%r",
                *self.peer,
                str(err) or type(err).__name__,
            )
            self.closed = True
            self.listener.clients.discard(self)
            return
        finally:
            self.handshake = None
        if self.closed:  # (stopped meanwhile)
            tls.close()
            return
        self.transport = tls
        tls.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        self.last_activity = self.loop.time()
        self._ensure_timer(self.config.keepalive_timeout)
        handshake.hand_over(tls, self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        try:
            events = self.reader.receive_data(data)
        except RemoteProtocolError as err:
            self.error = err
            self.queue.append(_ERROR)
            self.pause_reading("error")
            self._pump()
            return
        exchange = self.exchange
        if exchange is None and not self.queue:
            if self.discarding:
                events = self._discard(events)
                if not events and self.reader.state is not ReaderState.HEAD:
                    return
            if (
                len(events) == 2 and type(events[1]) is EndOfMessage and not events[0].chunked  # type: ignore[union-attr]
            ):
                # The common case: a whole request without a body.
                self._start(events[0], done=True)  # type: ignore[arg-type]
                return
            if not events and self.head_started is None:
                self.head_started = self.last_activity
                self._ensure_timer(self.config.head_timeout)
        if exchange is not None and not exchange.request_done and not self.queue:
            # The common case: body bytes of the request in progress.
            for i, event in enumerate(events):
                exchange.on_request_event(event)
                if exchange.request_done:
                    self.queue.extend(events[i + 1 :])
                    break
        else:
            self.queue.extend(events)
        if self.queue:
            self._pump()

    def eof_received(self) -> bool:
        try:
            self.reader.receive_eof()
        except RemoteProtocolError:
            if self.exchange is not None and not self.exchange.request_done:
                self.exchange.client_gone("the client closed mid-request")
            self.close()
            return False
        if self.tunnel is not None:
            self.tunnel.write_eof()
            return True
        if self.exchange is None and not self.queue:
            self.close()
            return False
        self.closing_after_exchange = True
        return True  # half-closed: the response still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.exchange is not None:
            self.exchange.client_gone("the client closed the connection")
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # flow ----------------------------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _pump(self) -> None:
        """Start queued requests while the one before has finished."""
        queue = self.queue
        while queue and not self.closed:
            exchange = self.exchange
            if exchange is None:
                item = queue.popleft()
                if item is _ERROR:
                    self._refuse()
                    return
                if type(item) is Request:
                    # A request without a body has its end right behind it.
                    done = bool(queue) and type(queue[0]) is EndOfMessage and not item.chunked
                    if done:
                        queue.popleft()
                    self._start(item, done=done)
                # (a stray Upgrade / Data here belongs to a refused request: dropped)
            elif not exchange.request_done:
                item = queue.popleft()
                if item is _ERROR:
                    exchange.client_gone(f"malformed request body ({self.error})")
                    self._refuse()
                    return
                exchange.on_request_event(item)
            else:
                break
        if len(queue) > QUEUE_HIGH:
            self.pause_reading("pipeline")
        elif self.paused:
            self.resume_reading("pipeline")

    def _start(self, request: Request, *, done: bool) -> None:
        """Begin the exchange for `request`; `done`: the request has no body (its end came
        with it)."""
        self.head_started = None
        self.exchange = exchange = Exchange(self, request)
        if done:
            exchange.request_done = True
            exchange.backend_activity = self.last_activity
        exchange.start()
        if not exchange.finished:
            limit = self.config.idle_timeout
            if exchange.read_timeout < limit:  # (no min(): a builtin call per request)
                limit = exchange.read_timeout
            # Most requests find the timer due early enough already (checked against this
            # callback's time, no clock read).
            if self.timer is None or self.timer_at > self.last_activity + limit:
                self._ensure_timer(limit)

    def exchange_done(self, keep_alive: bool, now: float, *, body_pending: bool = False) -> None:
        """The exchange in progress has sent its whole response at `now` (the loop's time);
        `body_pending`: before the whole request body came (an early answer). That rest is
        then read and dropped, and the connection kept when `keep_alive` (the exchange
        checked it is bounded), or it is closed lingering."""
        self.exchange = None
        self.last_activity = now
        if body_pending:
            if keep_alive and not self.closing_after_exchange:
                self._discard_rest()
            else:
                self.linger()
            return
        if not keep_alive or self.closing_after_exchange:
            self.close()
            return
        if self.queue:
            self._pump()

    def _discard_rest(self) -> None:
        """Read and drop the rest of the answered request's body, then carry on with the
        next request; bounded by LINGER_TIMEOUT / LINGER_TIME (the timer)."""
        self.discarding = True
        self.discard_started = self.last_activity
        if self.queue:
            rest = self._discard(list(self.queue))
            self.queue.clear()
            self.queue.extend(rest)
        self._ensure_timer(LINGER_TIMEOUT)
        if self.queue:
            self._pump()

    def _discard(self, events: list[Any]) -> list[Any]:
        """Drop the body pieces at the start of `events`; the events after the body's end
        (discarding stops there)."""
        for i, event in enumerate(events):
            if type(event) is not Data:
                self.discarding = False
                return events[i + 1 :] if type(event) is EndOfMessage else events[i:]
        return []

    def linger(self) -> None:
        """Close, without the kernel resetting the connection (and with it maybe the answer
        the client has not read yet) for the bytes the client still sends: see
        `LingeringClose`."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.lingering = LingeringClose(self, self.transport)

    def _refuse(self) -> None:
        err = self.error
        assert err is not None
        status = err.status_hint
        log.warning("http.refused peer=%s:%d status=%d reason=%r", *self.peer, status, str(err))
        self.write(LocalResponse(status=status, body=f"{err}\n".encode(), close=True).serialize())
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.handshake is not None:
            self.handshake.cancel()  # (it closes the connection)
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        elif self.lingering is not None:
            self.lingering.close()
        self.listener.clients.discard(self)

    # timeouts ------------------------------------------------------------------------------

    def _ensure_timer(self, limit: float) -> None:
        """Make the timer fire within `limit` seconds; it re-checks lazily what is due."""
        deadline = self.loop.time() + limit
        if self.timer is not None:
            if self.timer_at <= deadline:
                return
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        exchange = self.exchange
        if self.tunnel is not None:
            limit, deadline_from = self.config.tunnel_timeout, self.last_activity
        elif exchange is not None:
            limit, deadline_from = exchange.current_timeout(), self.last_activity
            if exchange.request_done and exchange.response is None:
                # Waiting for the backend: client bytes (pipelined requests) do not
                # postpone the 504.
                deadline_from = max(exchange.started, exchange.backend_activity)
        elif self.discarding:
            limit = LINGER_TIMEOUT  # since the last read, and LINGER_TIME in all
            deadline_from = min(self.last_activity, self.discard_started + LINGER_TIME - limit)
        elif self.head_started is not None or self.reader.state is ReaderState.HEAD:
            start = self.head_started if self.head_started is not None else self.last_activity
            limit, deadline_from = self.config.head_timeout, start
        else:
            limit, deadline_from = self.config.keepalive_timeout, self.last_activity
        remaining = deadline_from + limit - now
        if remaining > 0:
            self._ensure_timer(remaining)
            return
        if exchange is not None:
            exchange.timed_out(limit)
        elif self.discarding:
            log.info(
                "http.closed peer=%s:%d reason='request body still coming %gs after its answer'",
                *self.peer,
                now - self.discard_started,
            )
            self.close()
        elif self.tunnel is None and (
            self.head_started is not None or self.reader.state is ReaderState.HEAD
        ):
            log.warning(
                "http.refused peer=%s:%d status=408 reason='head not complete in %gs'",
                *self.peer,
                limit,
            )
            self.write(
                LocalResponse(
                    status=408, body=b"request head took too long\n", close=True
                ).serialize()
            )
            self.close()
        else:
            self.close()
        if not self.closed:
            self._ensure_timer(self.config.idle_timeout)


class LingeringClose(asyncio.Protocol):
    """A client connection closing while the client may still be sending (a request body
    that will not be read): closing at once would make the kernel answer those bytes with a
    reset, which can destroy the answer before the client reads it. So the answer goes out,
    the sending side is shut (TLS cannot half-close: there the answer alone goes out), and
    what the client still sends is read and dropped until it closes, for at most
    LINGER_TIMEOUT between reads and LINGER_TIME in all (nginx's lingering close). The
    connection counts toward `max_connections` until it is gone."""

    def __init__(self, client: ClientConnection, transport: asyncio.Transport) -> None:
        self.client = client
        self.transport = transport
        self.loop = client.loop
        self.started = self.last = self.loop.time()
        transport.set_protocol(self)
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered
        transport.resume_reading()
        self.timer = self.loop.call_later(LINGER_TIMEOUT, self._check)

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.client.connection_lost(exc)

    def close(self) -> None:
        self.transport.close()

    def _check(self) -> None:
        deadline = min(self.last + LINGER_TIMEOUT, self.started + LINGER_TIME)
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._check)
            return
        log.info(
            "http.closed peer=%s:%d reason='still sending %gs after its answer'",
            *self.client.peer,
            self.loop.time() - self.started,
        )
        self.transport.abort()  # (a client neither reading nor closing: its time is up)


class Exchange:
    """One request and its response, from routing to the last byte."""

    # Per-request state starts from these class defaults (immutable values only), so a
    # small request does not pay for assigning every field: an exchange is made per request.
    # Keep the attributes a request sets few: past 30 an instance loses CPython's shared-key
    # dict and a small request costs ≈0.7 µs more.
    route: HttpRouteConfig | None = None
    plan: RoutePlan | None = None
    options = DEFAULT_POOL_HTTP
    backend: BackendState | None = None
    upstream: UpstreamConnection | None = None
    connecting: asyncio.Task[None] | None = None
    pending: list[bytes] | None = None  # framed body bytes waiting for a backend connection
    # Everything sent (head first, made by `start`), while small enough to resend.
    replay: list[bytes] | None = None
    pending_size = 0
    replay_size = 0
    head = b""
    response: Response | None = None  # the final response's head, once it came
    response_chunked = False
    status = 0
    bytes_out = 0
    bytes_in = 0
    max_body: int | None = None
    learn: list[bytes] | None = None
    response_edits: list[Any] | tuple[()] = ()
    read_timeout = DEFAULT_POOL_HTTP.read_timeout
    finished = False
    pin_key: str | None = None
    tried: tuple[str, ...] = ()  # backends tried, one per try
    _path: str | None = None
    upgrade_tunnel = False
    counted = False  # this exchange is in its backend's `active` count
    backend_activity = 0.0  # request sent in full, or backend bytes: the read timeout's start
    verbatim = True  # no head rewrite: relay the backend's bytes unchanged
    # Response bodies as events too (re-framed, learned from, or 1xx dropped for HTTP/1.0):
    # else the reader only frames the response and its bytes are relayed as they came.
    decode = False
    ready = False  # out has something complete to write
    close_client = False  # the answer came before the request body, which is not drained

    def __init__(self, client: ClientConnection, request: Request) -> None:
        self.client = client
        self.request = request
        self.http = client.listener.http
        self.started = client.last_activity  # set by the callback that brings the request
        self.request_done = False
        # Response bytes for the client, written once per batch: the backend's own bytes
        # while `verbatim`, else the head and body written from the events.
        self.out: list[bytes] = []

    @property
    def path(self) -> str:
        """The request's normalised path, without the query (logs, Orthanc rules)."""
        path = self._path
        if path is None:
            path = self._path = request_path(self.request.target.decode("latin-1"))
        return path

    # request side --------------------------------------------------------------------------

    def start(self) -> None:
        """Route, run middlewares, choose a backend, send (or wait for a connection)."""
        client = self.client
        request = self.request
        http = self.http
        plan = http.everything
        if plan is None:
            facts = RequestFacts(
                method=_METHOD_NAMES.get(request.method) or request.method.decode("latin-1"),
                target=request.target.decode("latin-1"),
                headers=request.headers,
                client_ip=client.peer[0],
            )
            self._path = facts.path
            chosen = http.router.select(facts)
            if chosen is None:
                self.local(LocalResponse(status=404, body=b"no route matches this request\n"))
                return
            plan = http.plans[chosen.name]
        self.route = plan.route
        self.plan = plan
        self.options = plan.options
        self.read_timeout = plan.read_timeout
        headers: Sequence[tuple[bytes, bytes]] = request.headers
        target = request.target
        middlewares = plan.middlewares
        if middlewares:
            headers = list(headers)
            host = header(request.headers, b"host") or b""
            ctx = RequestContext(
                method=request.method,
                target=target,
                headers=headers,
                client_ip=client.peer[0],
                host=host,
                scheme=b"https" if client.config.tls is not None else b"http",
                slashes=client.config.encoded_slashes,
            )
            now = client.loop.time()
            for middleware in middlewares:
                answer = middleware.request(ctx, now)
                if answer is not None:
                    self.local(answer)
                    return
            target, headers = ctx.target, ctx.headers
            self.max_body = ctx.max_body
            self.response_edits = ctx.response_edits
        unknown = self._orthanc_pin() if plan.orthanc else None
        if self.response_edits or self.learn is not None or request.version != b"1.1":
            self.decode = True
        self.head = head = forward_head(request, target, headers)
        if len(head) <= self.options.retry_buffer:
            self.replay = [head]
            self.replay_size = len(head)
        if unknown is not None:
            lookup = http.locate(plan.pool, unknown, header(request.headers, b"authorization"))
            if lookup is not None:  # the request waits for it as for a connection
                self.connecting = client.loop.create_task(self._located(unknown, lookup))
                return
        self._choose_and_send()

    async def _located(self, resource: str, lookup: asyncio.Task[str | None]) -> None:
        """Send once the owner of `resource` is known (pinned to it), or to the pool's pick
        when no backend owns it (one of them answers 404)."""
        owner = await asyncio.shield(lookup)  # others may wait for the same lookup
        self.connecting = None
        if self.finished:
            return
        if owner is not None:
            self.pin_key = resource
        self._choose_and_send()

    def _orthanc_pin(self) -> str | None:
        """Pin the request to its resource's owner or its transfer's node; the resource to
        look for first when no owner is known (another instance saw it created)."""
        owners = self.http.owners[self.route.pool.name]  # type: ignore[union-attr]
        resource = orthanc.resource_of(self.path)
        unknown = None
        if resource is not None:
            if owners.owner(resource) is not None:
                self.pin_key = resource
            elif orthanc.is_locatable(resource):
                unknown = resource
        transfer = header(self.request.headers, orthanc.TRANSFER_HEADER)
        if transfer is not None:
            self.pin_key = "transfer:" + transfer.decode("latin-1")
            unknown = None
        if orthanc.is_commit(self.path):
            self.read_timeout = max(self.read_timeout, self.options.commit_timeout)
        if self.request.method == b"POST" or self.request.method == b"PUT":
            self.learn = []
        return unknown

    def _pick(self) -> BackendState | None:
        plan = self.plan
        assert plan is not None and self.route is not None
        pool = plan.pool
        exclude = frozenset(self.tried) if self.tried else _NONE
        if plan.balanced:
            return pool.pick("", exclude, Protocol.HTTP)
        if self.pin_key is not None:
            return (
                self.http.sticky[pool.name].place(pool, self.pin_key, exclude, computed=True)
                if (self.pin_key.startswith("transfer:"))
                else self._owner(pool, exclude)
            )
        writer = self.route.pool.orthanc_writer
        if writer is not None and self.request.method in WRITES:
            for b in pool.backends:  # down, drained or failed already: balanced like reads
                if b.name == writer and b.http_available and b.name not in exclude:
                    return b
        options = self.options
        key_spec = options.key
        if options.sticky or pool.config.strategy is Strategy.AFFINITY:
            if key_spec is None:
                key_spec = _CLIENT_IP_KEY
            key = request_key(key_spec, self.request.headers, self.client.peer[0])
            if key is not None:
                if options.sticky:
                    return self.http.sticky[pool.name].place(pool, key, exclude)
                return pool.pick(key, exclude, Protocol.HTTP)
        if options.slow_start > 0:
            exclude = self._slow_start(pool, exclude)
        return pool.pick("", exclude, Protocol.HTTP)

    def _slow_start(self, pool: Pool, exclude: frozenset[str]) -> frozenset[str]:
        """Leave recovering backends out of this pick in proportion to their ramp."""
        connections = self.http.connections
        now = self.client.loop.time()
        options = self.options
        return ramping_excluded(
            pool.backends,
            lambda b: connections[b.name].ramp(options).share(b.http_health, now),
            self.http.rng,
            exclude,
        )

    def _owner(self, pool: Pool, exclude: frozenset[str]) -> BackendState | None:
        assert self.pin_key is not None
        name = self.http.owners[pool.name].owner(self.pin_key)
        for b in pool.backends:
            if b.name == name and b.http_available and b.name not in exclude:
                return b
        return least_loaded(pool, exclude)  # the owner is gone: any node answers 404

    def _choose_and_send(self) -> None:
        backend = self._pick()
        if backend is None:
            pool = self.route.pool.name if self.route else "?"
            why = f"no backend of pool {pool} is available"
            if self.tried:
                why += f" (tried {', '.join(sorted(self.tried))})"
            self.local(LocalResponse(status=503, body=f"{why}\n".encode(), close=False))
            return
        self.backend = backend
        self.tried += (backend.name,)
        backend.active += 1
        self.counted = True
        conns = self.http.connections[backend.name]
        # (this callback's time: the request's, or the response's that brought a retry)
        conn = conns.take(self.client.last_activity, self.options.idle_timeout)
        if conn is not None:
            self._attach(conn)
        else:
            self.connecting = self.client.loop.create_task(self._connect(conns))

    async def _connect(self, conns: BackendConnections) -> None:
        """A connection in a slot of the backend's connection budget (handed over by a
        request that finished, or new), waiting in line up to `acquire_timeout`."""
        options = self.options
        try:
            conn, handed = await conns.connect(options.acquire_timeout, options.connect_timeout)
        except BudgetFull:
            self.connecting = None
            backend = self.backend
            assert backend is not None
            self.local(
                LocalResponse(
                    status=503,
                    body=(
                        f"backend {backend.name} has all its {conns.budget.limit} connections "
                        f"busy (waited {options.acquire_timeout:g}s)\n"
                    ).encode(),
                )
            )
            return
        except (OSError, TimeoutError) as err:
            self.connecting = None
            reason = str(err) or type(err).__name__
            cause = Cause.TLS if isinstance(err, ssl.SSLError) else Cause.REFUSED
            if isinstance(err, TimeoutError):
                reason = f"no connection within {options.connect_timeout:g}s"
                cause = Cause.CONNECT_TIMEOUT
            self._backend_failed(reason, cause)
            return
        self.connecting = None
        if self.finished:
            if handed:
                conns.give_back(conn, self.client.loop.time(), options.idle_timeout)
            else:
                conn.close()
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        self.backend_activity = self.client.loop.time()
        conn.exchange = self
        conn.requests += 1
        conn.reader.expect(self.request.method, decode=self.decode)
        replay = self.replay
        pending = self.pending
        if replay is not None:
            # The head and every body byte so far, in order: the first try's head and
            # pending bytes, or all a retry must send again.
            if len(replay) == 1:
                conn.write(replay[0])
            else:
                conn.writelines(replay)
        else:  # too large to replay, so this is the first try (retries need `replay`)
            conn.write(self.head)
            if pending:
                conn.writelines(pending)
        if pending:
            self.pending = None
            self.pending_size = 0
            self.client.resume_reading("connecting")
        if self.client.write_paused:
            conn.pause_reading()

    def _record(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > self.options.retry_buffer:
                self.replay = None
            else:
                replay.append(data)

    def _send(self, data: bytes) -> None:
        self._record(data)
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
        elif not self.finished:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_HIGH:
                self.client.pause_reading("connecting")

    def on_request_event(self, event: Event) -> None:
        """A body piece, the end of the request, or tunnel bytes from the client."""
        if self.finished and not self.upgrade_tunnel:
            if isinstance(event, EndOfMessage):
                self.request_done = True
            return
        if type(event) is Data:
            data = event.data
            self.bytes_in += len(data)
            if self.max_body is not None and self.bytes_in > self.max_body:
                self.local(
                    LocalResponse(
                        status=413,
                        body=f"request body larger than {self.max_body} bytes\n".encode(),
                        close=True,
                    )
                )
                self.request_done = True
                return
            if self.request.chunked:
                self._send(b"".join(chunk(data)))
            else:
                self._send(data)
        elif isinstance(event, EndOfMessage):
            self.request_done = True
            self.backend_activity = self.client.last_activity  # now: set by this callback
            if self.request.chunked:
                self._send(last_chunk(event.trailers))
        elif isinstance(event, Upgrade) and event.data:
            self._send(event.data)

    def pause_client(self) -> None:
        self.client.pause_reading("upstream")

    def resume_client(self) -> None:
        self.client.resume_reading("upstream")

    # response side -------------------------------------------------------------------------

    def on_upstream_events(
        self, conn: UpstreamConnection, events: list[Event], data: bytes = b""
    ) -> None:
        """Relay what the backend sent. When nothing in the response head needs rewriting
        the backend's bytes (`data`) go to the client verbatim, one write per batch; the
        events then only tell where the response ends and what it says."""
        client = self.client
        client.last_activity = self.backend_activity = client.loop.time()
        out = self.out
        if data and self.verbatim:
            out.append(data)
            if self.response is not None:  # more of a body: complete as it comes
                self.ready = True
        for event in events:
            if conn.exchange is not self:  # released mid-batch (a retry): drop its bytes
                if self.verbatim:
                    out.clear()
                break
            kind = type(event)
            if kind is Data:
                piece = event.data  # type: ignore[union-attr]
                if self.learn is not None:
                    self.learn.append(piece)
                self.ready = True
                if self.verbatim:
                    continue
                if self.response_chunked:
                    out += chunk(piece)
                else:
                    out.append(piece)
            elif kind is Response:
                self._on_response(conn, event)  # type: ignore[arg-type]
            elif kind is EndOfMessage:
                if self.response is None:  # the end of a 1xx interim response
                    continue
                if self.response_chunked and not self.verbatim:
                    out.append(last_chunk(event.trailers))  # type: ignore[union-attr]
                # The end may come alone in its own read (a chunked body's last chunk,
                # `0\r\n\r\n`): those held bytes are complete too and must go out now.
                self.ready = True
                self._flush()
                self._response_complete(conn)
                if not self.upgrade_tunnel:
                    return  # the connection is released: later events are not this exchange's
            elif kind is Upgrade:
                self.ready = True
                if not self.verbatim:
                    out.append(event.data)  # type: ignore[union-attr]
        self._flush()

    def _flush(self) -> None:
        if not self.ready:
            return  # nothing complete yet (a partial head stays held)
        self.ready = False
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.bytes_out += len(data)
            self.client.write(data)

    def _on_response(self, conn: UpstreamConnection, response: Response) -> None:
        status = response.status
        if status < 200 and status != 101:
            if self.request.version == b"1.1":
                self.ready = True
                if not self.verbatim:  # (verbatim: its bytes are in `out` already)
                    self.out.append(
                        serialize_response(status, response.headers, response.reason, b"1.1")
                    )
            else:  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client; drop it from the bytes
                self._drop_verbatim()
            return
        backend = self.backend
        assert backend is not None
        if status in (502, 503, 504):
            self._passive_failure(f"status {status}", Cause.STATUS)
            if status != 504 and self._can_retry(safe_status=True):
                log.info(
                    "http.retry backend=%s status=%d method=%s path=%s",
                    backend.name,
                    status,
                    self.request.method.decode(),
                    self.path,
                )
                if self.verbatim:
                    self.out.clear()  # the refused answer is not relayed
                self._release_upstream(reuse=False)
                self._choose_and_send()
                return
        elif backend.http_health.failures:
            backend.http_health.success()
        self.response = response
        self.status = status
        if self.learn is not None and not (
            200 <= status < 300
            and orthanc.is_learnable(
                header(response.headers, b"content-type"), response.content_length
            )
        ):
            self.learn = None
        if status == 101:
            self.upgrade_tunnel = True
        if self.response_edits:
            self._drop_verbatim()
        self.ready = True
        if not self.request_done and status != 101 and not self.request.upgrade:
            self._early(response)
        if not self.verbatim:  # the head written again, the body framed again
            headers = response.headers
            if self.response_edits or self.close_client:
                edited = list(headers)
                for edit in self.response_edits:
                    edit(edited)
                if self.close_client:
                    close_connection(edited)
                headers = tuple(edited)
            self.response_chunked = response.chunked
            self.out.append(serialize_response(status, headers, response.reason, response.version))

    def _early(self, response: Response) -> None:
        """The answer came before the whole request body. The rest is read and dropped
        after it, and the connection kept, when `can_discard` allows; else the answer says
        `Connection: close` and the connection closes lingering after it."""
        config = self.client.config
        if can_discard(self.request, self.bytes_in, config.discard_body_max):
            return
        self.close_client = True
        if not self.verbatim:
            return  # (the head is written from its fields, with the edit)
        out = self.out
        data = b"".join(out)
        at = data.find(response.head)
        if at < 0:
            # The head's start went out in an earlier write, behind a 100 Continue: that
            # client sends its body, so it is dropped after all (bounded in time only).
            self.close_client = False
            return
        edited = list(response.headers)
        close_connection(edited)
        head = serialize_response(response.status, edited, response.reason, response.version)
        out[:] = [data[:at], head, data[at + len(response.head) :]]

    def _drop_verbatim(self) -> None:
        """From here on write the response from events (the head is rewritten)."""
        if self.verbatim:
            self.verbatim = False
            self.out.clear()  # the backend's bytes: what follows is written from events

    def _response_complete(self, conn: UpstreamConnection) -> None:
        response = self.response
        assert response is not None
        if response.upgrade:
            # 101: both connections become one tunnel; bytes flow verbatim both ways.
            client = self.client
            client.tunnel = conn
            self.finished = True
            if log.isEnabledFor(logging.INFO):
                self._log()
            queued = [e.data for e in client.queue if isinstance(e, Upgrade)]
            client.queue.clear()
            for data in queued:
                conn.write(data)
            client.exchange = None
            return
        if self.learn is not None and self.backend is not None and self.route is not None:
            learned = self.http.owners[self.route.pool.name].learn(
                b"".join(self.learn), self.backend.name
            )
            for resource in learned:
                log.debug("http.learned resource=%s backend=%s", resource, self.backend.name)
        keep_upstream = response.keep_alive and self.request_done and not self.request.upgrade
        self._release_upstream(reuse=keep_upstream)
        self._finish(
            keep_alive=response.keep_alive
            and self.request.keep_alive
            and not self.request.upgrade
            and not self.close_client
        )

    def _can_retry(self, *, safe_status: bool = False) -> bool:
        if self.response is not None or self.finished or len(self.tried) > self.options.retries:
            return False
        if self.replay is None:
            return False  # part of the body is gone already: never replay a large stream
        if safe_status:
            return self.request_done and (
                self.request.method in IDEMPOTENT or self.replay is not None
            )
        return True

    def _passive_failure(self, reason: str, cause: Cause) -> None:
        """Tell passive health about a failed request (`health.counts_against_backend`
        decides: connect errors and timeouts count toward `health.fall`, answers never).
        502/503/504 answers eject a backend only through the passive window
        (`http.passive: {failures, window}`), so a single error page does not eject it."""
        backend = self.backend
        assert backend is not None
        route = self.route
        if route is None or not self.options.passive:
            return
        metrics = self.http.runtime.metrics
        if cause is Cause.STATUS:
            conns = self.http.connections[backend.name]
            if conns.window(self.options).failure(self.client.loop.time()):
                passive_ejection(metrics, backend, route.pool.name, reason, Protocol.HTTP)
            return
        passive_failure(metrics, backend, route.pool.name, cause, reason, Protocol.HTTP)

    def _backend_failed(self, reason: str, cause: Cause) -> None:
        backend = self.backend
        assert backend is not None
        log.warning(
            "backend.unreachable backend=%s method=%s path=%s reason=%r",
            backend.name,
            self.request.method.decode(),
            self.path,
            reason,
        )
        self._passive_failure(reason, cause)
        self._release_upstream(reuse=False)
        if self._can_retry():
            self._choose_and_send()
            return
        self.local(
            LocalResponse(
                status=502,
                body=f"backend {backend.name} failed: {reason}\n".encode(),
            )
        )

    def upstream_failed(self, conn: UpstreamConnection, reason: str, *, received: bool) -> None:
        """The backend connection broke or sent garbage."""
        if self.upgrade_tunnel:
            self.client.close()
            return
        if conn.exchange is not self or self.finished:
            return
        if self.response is not None:
            log.warning(
                "http.aborted backend=%s path=%s reason=%r",
                self.backend.name if self.backend else "-",
                self.path,
                reason,
            )
            self.status = self.status or 502
            self._release_upstream(reuse=False)
            self._finish(keep_alive=False)
            return
        reused = conn.requests > 1
        if reused and not received and self.replay is not None:
            # A pooled connection the backend had closed: not a backend failure.
            self._release_upstream(reuse=False)
            name = self.backend.name if self.backend else ""
            self.tried = tuple(t for t in self.tried if t != name)
            self._choose_and_send()
            return
        if received:
            cause = Cause.PROTOCOL_ERROR
        else:  # still sending the body: the backend refused this request, it is not down
            cause = Cause.CLOSED if self.request_done else Cause.ABORTED_WHILE_SENDING
        self._backend_failed(reason, cause)

    def timed_out(self, limit: float) -> None:
        if self.response is not None:
            log.warning("http.aborted path=%s reason='idle %gs'", self.path, limit)
            self._release_upstream(reuse=False)
            self._finish(keep_alive=False)
            return
        if not self.request_done:
            self._release_upstream(reuse=False)
            self.local(LocalResponse(status=408, body=b"request body stalled\n", close=True))
            return
        name = self.backend.name if self.backend else "-"
        self._passive_failure(f"no response in {limit:g}s", Cause.RESPONSE_TIMEOUT)
        self._release_upstream(reuse=False)
        self.local(
            LocalResponse(
                status=504,
                body=f"backend {name} did not answer within {limit:g}s\n".encode(),
                close=True,
            )
        )

    def current_timeout(self) -> float:
        if self.request_done and self.response is None:
            return self.read_timeout
        return max(self.client.config.idle_timeout, self.read_timeout if self.request_done else 0)

    # ending --------------------------------------------------------------------------------

    def _release_upstream(self, *, reuse: bool) -> None:
        """Let go of the backend connection (pooled when `reuse`) and of the backend's
        in-flight count; safe to call more than once."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.upstream
        client = self.client
        if conn is not None:
            self.upstream = None
            # Reading from the backend is paused only while the client's buffer is full
            # (pause_writing / _attach); resume_writing resumes it otherwise.
            if client.write_paused:
                conn.resume_reading()
            if reuse and not conn.closed and self.backend is not None:
                self.http.connections[self.backend.name].give_back(
                    conn, client.last_activity, self.options.idle_timeout
                )
            else:
                conn.close()
        if self.counted and self.backend is not None:
            self.counted = False
            self.backend.active -= 1
        if client.paused:
            client.resume_reading("upstream")
            client.resume_reading("connecting")

    def local(self, response: LocalResponse) -> None:
        """Answer the client from dicomlb itself (refusals, 502 / 503 / 504)."""
        if self.finished:
            return
        self._release_upstream(reuse=False)
        self.status = response.status
        close = response.close or not (
            self.request_done
            or can_discard(self.request, self.bytes_in, self.client.config.discard_body_max)
        )
        if close and not response.close:
            response = LocalResponse(
                status=response.status, body=response.body, headers=response.headers, close=True
            )
        if response.status >= 500:
            log.warning(
                "http.failed route=%s pool=%s status=%d method=%s path=%s reason=%r",
                self.route.name if self.route else "-",
                self.route.pool.name if self.route else "-",
                response.status,
                self.request.method.decode(),
                self.path,
                response.body.decode(errors="replace").strip(),
            )
        data = response.serialize()
        self.bytes_out += len(data)
        self.client.write(data)
        self._finish(keep_alive=self.request.keep_alive and not close)

    def client_gone(self, reason: str) -> None:
        if self.finished:
            return
        self.status = self.status or 499
        self._release_upstream(reuse=False)
        self._finish(keep_alive=False)

    def _finish(self, *, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if log.isEnabledFor(logging.INFO):
            self._log()
        route = self.route
        client = self.client
        now = client.loop.time()
        request = self.request
        backend = self.backend
        # (positional: keyword arguments cost a quarter of a microsecond more per request)
        self.http.runtime.metrics.http_request(
            route.name if route else "",
            route.pool.name if route else "",
            backend.name if backend else "",
            self.status,
            now - self.started,
            client.peer[0],
            request.method,
            request.target,
        )
        client.exchange_done(keep_alive, now, body_pending=not self.request_done)

    def _log(self) -> None:
        """The access log line (callers check the level first: most runs have it off)."""
        route = self.route
        log.info(
            "http.request route=%s pool=%s backend=%s method=%s path=%s status=%d ms=%d bytes=%d",
            route.name if route else "-",
            route.pool.name if route else "-",
            (self.backend.name if self.backend else "-"),
            self.request.method.decode("latin-1"),
            self.path,
            self.status,
            (self.client.loop.time() - self.started) * 1000,
            self.bytes_out,
        )
