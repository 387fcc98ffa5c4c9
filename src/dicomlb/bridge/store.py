"""C-STOREs through the bridge: from a client association (`ack: backend`, called by
`services.store`) and from the spool (`ack: spool`, called by the dispatcher's sender).

Each instance becomes a Part-10 stream, the file meta group from `part10.file_header` and
then the data set bytes as the sender sent them; the answer goes back to the sender (or the
spool) as a DIMSE status. Every image's fate is logged like the DIMSE path's, with
`via=orthanc_rest | stow_rs`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from dicomlb.bridge.client import BridgeInstance, HttpStoreClient
from dicomlb.bridge.core import StoreOutcome
from dicomlb.delivery import fate
from dicomlb.delivery.passive import passive_failure
from dicomlb.dicom.dimse import DataReceived
from dicomlb.dicom.messages import ClientGone, InboundMessage, discard
from dicomlb.dicom.part10 import file_header
from dicomlb.dicom.qr import STUDY_INSTANCE_UID
from dicomlb.health import Cause
from dicomlb.pools import BackendState
from dicomlb.snapshot import PoolConfig, RouteConfig

if TYPE_CHECKING:
    from dicomlb.runtime import Runtime
    from dicomlb.spool.dispatcher import BackendSender, Claimed

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read at a time from a large spooled file


def client_for(runtime: Runtime, backend: BackendState) -> HttpStoreClient:
    """The backend's bridge client (owned by its upstream pool, kept across reloads)."""
    upstream = runtime.upstreams[backend.name]
    if upstream.bridge is None or upstream.bridge.backend != backend.config:
        upstream.bridge = HttpStoreClient(backend.config)
    return upstream.bridge


def _timeouts(pool: PoolConfig | None) -> dict[str, float]:
    if pool is None:
        return {"connect_timeout": 5.0, "read_timeout": 120.0}
    return {"connect_timeout": pool.connect_timeout, "read_timeout": pool.response_timeout}


def cause_of(outcome: StoreOutcome) -> Cause:
    """What a failed bridge request tells passive health: no connection, or one that broke
    before an answer, counts; an HTTP answer (4xx / 5xx) is the message's failure."""
    if outcome.unreachable:
        return Cause.REFUSED
    return Cause.STATUS if outcome.answered else Cause.CLOSED


class _MessageBody:
    """The Part-10 stream of one message still arriving from the client."""

    def __init__(
        self, prefix: bytes, message: InboundMessage, head: list[DataReceived], done: bool
    ) -> None:
        self.prefix = prefix
        self.message = message
        self.head = head
        self.done = done
        self.gone: ClientGone | None = None
        self.started = False  # a byte went out: the stream cannot be sent elsewhere

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        yield self.prefix
        for fragment in self.head:
            yield bytes(fragment.data)
        assert self.message.data is not None
        while not self.done:
            try:
                fragment = await self.message.data.get()
            except ClientGone as err:
                self.gone = err
                raise
            self.done = fragment.is_last
            yield bytes(fragment.data)


async def relay_store(
    runtime: Runtime,
    message: InboundMessage,
    route: RouteConfig,
    backend: BackendState,
    head: list[DataReceived],
    done: bool,
    tags: dict[int, str],
    started: float,
    *,
    calling_aet: str,
    respond: Callable[[int, str | None], None],
) -> str | None:
    """Send one C-STORE from the client to `backend` over HTTP and answer the client; None.

    When no connection to `backend` can be made (refused, TLS failure, connect timeout)
    nothing has been sent: the passive health failure is recorded, the client is not
    answered and the reason is returned, for `services.store` to try the pool's next backend
    (as `Session.place` does for a DIMSE backend that cannot be reached)."""
    command = message.command
    store = backend.config.store
    assert store is not None
    prefix = file_header(
        sop_class_uid=command.sop_class_uid,
        sop_instance_uid=command.sop_instance_uid,
        transfer_syntax=message.transfer_syntax,
        source_ae=calling_aet,
    )
    stream = _MessageBody(prefix, message, head, done)
    body: BridgeInstance
    if done:  # the whole data set is already here: send it with a Content-Length
        data = b"".join([prefix, *(bytes(f.data) for f in head)])
        body = BridgeInstance(sop_instance_uid=command.sop_instance_uid, body=data)
    else:
        body = BridgeInstance(sop_instance_uid=command.sop_instance_uid, body=stream)
    backend.active += 1
    try:
        outcomes = await client_for(runtime, backend).send([body], **_timeouts(route.pool))
    finally:
        backend.active -= 1
    if stream.gone is not None:
        raise stream.gone
    outcome = outcomes[0]
    if outcome.unreachable and not stream.started:
        log.warning(
            "backend.unreachable backend=%s pool=%s via=%s reason=%r",
            backend.name,
            route.pool.name,
            store.via.value,
            outcome.comment,
        )
        cause = cause_of(outcome)
        passive_failure(runtime.metrics, backend, route.pool.name, cause, outcome.comment)
        return outcome.comment
    await discard(message)  # the request failed mid-stream: drop the rest
    _account(runtime, message, route, backend, outcome, tags, started, respond)
    return None


def _account(
    runtime: Runtime,
    message: InboundMessage,
    route: RouteConfig,
    backend: BackendState,
    outcome: StoreOutcome,
    tags: dict[int, str],
    started: float,
    respond: Callable[[int, str | None], None],
) -> None:
    pool = route.pool.name
    store = backend.config.store
    assert store is not None
    if outcome.backend_failed:
        passive_failure(runtime.metrics, backend, pool, cause_of(outcome), outcome.comment)
    elif outcome.status < 0xFF00:
        backend.health.success()
    fate.answered(
        runtime,
        sop_instance_uid=message.command.sop_instance_uid,
        study_uid=tags.get(STUDY_INSTANCE_UID, ""),
        route=route.name,
        pool=pool,
        backend=backend.name,
        status=outcome.status,
        started=started,
        via=store.via.value,
        reason=outcome.comment,
    )
    respond(outcome.status, outcome.comment or None)


# ------------------------------------------------------------ the spool


async def _spooled_body(sender: BackendSender, item_file: Claimed) -> bytes | AsyncIterator[bytes]:
    item, data = item_file
    prefix = file_header(
        sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid,
        transfer_syntax=item.transfer_syntax,
        source_ae=item.calling_aet,
    )
    if data is not None:
        return prefix + data
    from dicomlb.spool.dispatcher import READ_WHOLE

    if item.size - item.dataset_offset <= READ_WHOLE:
        return prefix + await asyncio.to_thread(sender.store.read, item)

    async def chunks() -> AsyncIterator[bytes]:
        yield prefix
        offset = item.dataset_offset
        while offset < item.size:
            chunk = await asyncio.to_thread(sender.store.read, item, offset, CHUNK)
            if not chunk:
                raise OSError(f"spool file {item.file} is shorter than its index row says")
            offset += len(chunk)
            yield chunk

    return chunks()


async def deliver_spooled(
    sender: BackendSender, claimed: Claimed, backend: BackendState, runtime: Runtime
) -> None:
    """Deliver one spooled item (and, for `stow_batch` > 1, more of the sender's ready small
    items in the same STOW-RS request); record each one's fate like the DIMSE path."""
    store = backend.config.store
    assert store is not None
    batch = [claimed]
    while len(batch) < store.stow_batch and sender._ready and sender._ready[0][1] is not None:
        batch.append(sender._ready.popleft())
    started = time.monotonic()
    pool = runtime.snapshot.pools.get(claimed[0].pool)
    try:
        bodies = [
            BridgeInstance(
                sop_instance_uid=item.sop_instance_uid, body=await _spooled_body(sender, (item, d))
            )
            for item, d in batch
        ]
    except OSError as err:
        for item, _ in batch:
            await sender._failed(item, f"cannot read spool file: {err}")
        return
    backend.active += len(batch)
    try:
        outcomes = await client_for(runtime, backend).send(bodies, **_timeouts(pool))
    except OSError as err:  # reading a large spool file failed mid-request
        outcomes = [StoreOutcome(status=0x0110, comment=str(err))] * len(batch)
    finally:
        backend.active -= len(batch)
    if any(o.backend_failed for o in outcomes):
        sender._backend_failed(
            backend, runtime, outcomes[0].comment, cause_of(outcomes[0]), claimed[0].pool
        )
    else:
        sender.breaker.success()
        backend.health.success()
    for (item, _), outcome in zip(batch, outcomes, strict=True):
        if outcome.stored:
            await sender._delivered(item, outcome.status, started, via=store.via.value)
        else:
            text = f"status 0x{outcome.status:04X}" + (
                f" ({outcome.comment})" if outcome.comment else ""
            )
            await sender._failed(item, text)
