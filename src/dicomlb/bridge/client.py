"""The bridge's asyncio shell: one keep-alive HTTP connection pool per `store_via` backend
(aiohttp, at most `max_associations` connections, each in a slot of the backend's HTTP
connection budget from before it connects until it is closed), requests built from
`core.py`'s framing, answers mapped by `core.map_answer`.

Bodies known whole (small instances, batches of spooled ones) go with Content-Length and are
sent again once on a fresh connection when a pooled one turns out closed; streamed bodies
(an instance still arriving from the sender, a large spooled file) go chunked and are never
replayed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace

from dicomlb.bridge import core
from dicomlb.bridge.core import StoreOutcome
from dicomlb.http.budget import ConnectionBudget, Use
from dicomlb.http.checks import HttpCheckError
from dicomlb.http.lease import BudgetFull, acquire, full, lease, release
from dicomlb.snapshot import BackendConfig, HttpCheckConfig, HttpStoreConfig, StoreVia

__all__ = [
    "KEEPALIVE",
    "BridgeInstance",
    "HttpStoreClient",
    "bridge_check",
    "check_target",
]

KEEPALIVE = 0.8  # seconds a pooled connection is reused; Orthanc closes idle ones after 1 s
_MAX_ANSWER = 1 << 20  # bytes of an answer read for the status mapping


@dataclass(slots=True, kw_only=True)
class BridgeInstance:
    """One instance to store: its UID and its Part-10 bytes, whole or as a stream."""

    sop_instance_uid: str
    body: bytes | AsyncIterable[bytes]


class _BudgetConnector(aiohttp.TCPConnector):
    """aiohttp's connector, each new connection in a slot of `budget` (waited for up to
    `wait` seconds), given back when aiohttp closes it."""

    def __init__(self, budget: ConnectionBudget, **options: Any) -> None:
        super().__init__(**options)
        self.budget = budget
        self.wait = 30.0

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        budget = self.budget
        try:
            await acquire(budget, Use.BRIDGE, self.wait)
        except TimeoutError:
            raise BudgetFull(full(budget, self.wait)) from None
        try:
            proto = await super()._create_connection(req, traces, timeout)
        except BaseException:
            release(budget)
            raise
        closed = proto.closed
        if closed is None:  # (lost already)
            release(budget)
        else:
            closed.add_done_callback(lambda done: _closed(budget, done))
        return proto


def _closed(budget: ConnectionBudget, done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()  # (a reset is no news here: the request saw it)
    release(budget)


class HttpStoreClient:
    """C-STOREs to one backend over HTTP; the session is made on first use (in the loop)."""

    def __init__(self, backend: BackendConfig, budget: ConnectionBudget) -> None:
        assert backend.http is not None and backend.store is not None  # config.py checks
        self.backend = backend
        self.address = backend.http
        self.store: HttpStoreConfig = backend.store
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        self.url = (
            f"{self.address.scheme}://{host}:{self.address.port}"
            f"{core.store_path(self.address, self.store)}"
        )
        self.budget = budget
        self._session: aiohttp.ClientSession | None = None
        self._connector: _BudgetConnector | None = None

    def _open(self, wait: float) -> aiohttp.ClientSession:
        """The session; a new connection waits `wait` seconds for a slot of the budget."""
        if self._session is None or self._session.closed:
            self._connector = connector = _BudgetConnector(
                self.budget,
                limit=self.backend.max_associations,
                limit_per_host=self.backend.max_associations,
                keepalive_timeout=KEEPALIVE,
                ssl=self.store.context if self.store.context is not None else True,
            )
            headers = {"User-Agent": "dicomlb-bridge"}
            if self.store.authorization is not None:
                headers["Authorization"] = self.store.authorization
            if self.store.via is StoreVia.STOW_RS:
                headers["Accept"] = "application/dicom+json"
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, auto_decompress=True
            )
        assert self._connector is not None
        self._connector.wait = wait
        return self._session

    async def close(self) -> None:
        """Close the pooled connections (backend removed, or stop)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        instances: Sequence[BridgeInstance],
        *,
        connect_timeout: float,
        read_timeout: float,
        acquire_timeout: float,
    ) -> list[StoreOutcome]:
        """Store `instances` in one request (several only for STOW-RS); one outcome each.
        Never raises for the backend's failures: they are outcomes.

        The connection is taken from the keep-alive pool or made (a slot of the backend's
        budget within `acquire_timeout`, connect, TLS handshake) before any byte of the
        body is read; when that fails the outcomes are `unreachable`: nothing was sent and
        the caller may try another backend with the same body (`busy` when no slot came:
        dicomlb's own load, not the backend's failure)."""
        uids = [i.sop_instance_uid for i in instances]
        boundary = base64.b32encode(os.urandom(15)).decode("ascii").lower()
        whole = all(isinstance(i.body, bytes) for i in instances)
        body: bytes | AsyncIterator[bytes]
        if self.store.via is StoreVia.ORTHANC_REST:
            assert len(instances) == 1, "Orthanc REST takes one instance per request"
            only = instances[0].body
            body = only if isinstance(only, bytes) else _iterate(only)
        elif whole:
            pieces: list[bytes] = []
            for n, instance in enumerate(instances):
                assert isinstance(instance.body, bytes)
                pieces += [core.multipart_part(boundary, n == 0), instance.body]
            body = b"".join([*pieces, core.multipart_close(boundary)])
        else:
            body = _multipart(boundary, instances)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=acquire_timeout + connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        headers = {"Content-Type": core.content_type(self.store.via, boundary)}
        attempts = 2 if isinstance(body, bytes) else 1
        for attempt in range(attempts):
            try:
                async with self._open(acquire_timeout).post(
                    self.url, data=body, headers=headers, timeout=timeout
                ) as answer:
                    data = await answer.content.read(_MAX_ANSWER)
                    return core.map_answer(self.store.via, answer.status, data, uids)
            except BudgetFull as err:
                return [core.busy(str(err))] * len(uids)
            except aiohttp.ClientConnectorError as err:  # refused, unresolvable, TLS failure
                return [core.connection_failed(_describe(err), unreachable=True)] * len(uids)
            except aiohttp.ConnectionTimeoutError:
                reason = f"cannot connect: no connection within {connect_timeout:g}s"
                return [core.connection_failed(reason, unreachable=True)] * len(uids)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
                if attempt + 1 < attempts:
                    continue  # a pooled connection closed by the backend: once more, fresh
                return [core.connection_failed(_describe(err))] * len(uids)
            except TimeoutError:
                reason = f"no answer within {read_timeout:g}s"
                return [core.connection_failed(reason)] * len(uids)
            except aiohttp.ClientError as err:
                return [core.connection_failed(_describe(err))] * len(uids)
        raise AssertionError("unreachable")  # pragma: no cover


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, aiohttp.ClientConnectorCertificateError):  # short: comments are 64 chars
        cert = err.certificate_error
        detail = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or cert
        text = f"TLS certificate not trusted: {detail}"
    elif isinstance(err, aiohttp.ClientSSLError):
        ssl_error = err.os_error
        text = f"TLS handshake failed: {getattr(ssl_error, 'reason', None) or ssl_error}"
    elif isinstance(err, aiohttp.ClientConnectorError):
        text = f"cannot connect: {err.os_error.strerror or err.os_error}"
    return text


async def _iterate(source: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in source:
        yield chunk


async def _multipart(boundary: str, instances: Sequence[BridgeInstance]) -> AsyncIterator[bytes]:
    for n, instance in enumerate(instances):
        yield core.multipart_part(boundary, n == 0)
        if isinstance(instance.body, bytes):
            yield instance.body
        else:
            async for chunk in instance.body:
                yield chunk
    yield core.multipart_close(boundary)


def check_target(
    backend: BackendConfig, check: HttpCheckConfig | None
) -> tuple[str, str, tuple[int, ...]]:
    """Method, path and expected statuses of a `store_via` backend's active check: the pool's
    `health.http` when set, else Orthanc's `/system` or DICOMweb's `/studies?limit=1`."""
    assert backend.http is not None and backend.store is not None
    base = backend.http.path
    if check is not None:
        return check.method, f"{base}{check.path}", check.status
    if backend.store.via is StoreVia.ORTHANC_REST:
        return "GET", f"{base}/system", (200,)
    return "GET", f"{base}{backend.store.stow_path}/studies?limit=1", (200, 204)


async def bridge_check(
    backend: BackendConfig, check: HttpCheckConfig | None, timeout: float, budget: ConnectionBudget
) -> int:
    """One active check of a `store_via` backend with its credentials and TLS, in a slot of
    its connection budget (BudgetFull when none came within `timeout`); returns the
    status, raises HttpCheckError when it is not expected or the backend cannot be reached."""
    assert backend.http is not None and backend.store is not None
    method, path, expected = check_target(backend, check)
    address = backend.http
    host = f"[{address.host}]" if ":" in address.host else address.host
    headers = {"User-Agent": "dicomlb-health", "Connection": "close"}
    if check is not None and check.username is not None:
        token = base64.b64encode(f"{check.username}:{check.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif backend.store.authorization is not None:
        headers["Authorization"] = backend.store.authorization
    context = backend.store.context
    async with lease(budget, Use.CHECK, timeout):
        status = await _check_request(
            method, f"{address.scheme}://{host}:{address.port}{path}", headers, context, timeout
        )
    if status not in expected:
        raise HttpCheckError(
            f"{method} {path} answered {status}, expected {' or '.join(map(str, expected))}"
        )
    return status


async def _check_request(
    method: str, url: str, headers: dict[str, str], context: ssl.SSLContext | None, timeout: float
) -> int:
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=context if context is not None else True, force_close=True
                ),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as session,
            session.request(method, url, headers=headers) as answer,
        ):
            return answer.status
    except TimeoutError:
        raise HttpCheckError(f"no answer within {timeout:g}s") from None
    except aiohttp.ClientError as err:
        raise HttpCheckError(_describe(err)) from None
