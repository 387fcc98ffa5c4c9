"""Sending one instance to one backend, whatever the backend speaks: a `Sender` per kind of
backend (`sender_for`), and the instance as an `InstanceSource` (still arriving from a
client, or spooled).

`BridgeSender` stores over HTTP (Orthanc REST, STOW-RS; `stow_batch` instances per request),
for a client's C-STORE (`services/store`) and for the spool's dispatcher. `DimseSender` sends
a spooled instance as a C-STORE over the backend's pooled associations. A client's own
C-STORE to a DICOM backend goes through `Session.forward` instead: the backend's response is
handed back to the client as it is, like every other relayed DIMSE request's.

A sender decides nothing about health, retries or the client's answer: it reports what the
attempt came to (`Sent`), and its caller applies passive health, the spool's breaker and
the image's fate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from dicomlb.bridge.client import BridgeInstance, HttpStoreClient
from dicomlb.bridge.core import StoreOutcome
from dicomlb.dicom.dimse import DATA_SET_PRESENT, Command, CommandField, DataReceived, Tag
from dicomlb.dicom.messages import ClientGone, InboundMessage
from dicomlb.dicom.part10 import file_header
from dicomlb.dicom.upstream import (
    ContextRejected,
    Rejected,
    UpstreamAssociation,
    UpstreamError,
    UpstreamPool,
)
from dicomlb.health import Cause
from dicomlb.pools import BackendState
from dicomlb.runtime import Runtime
from dicomlb.snapshot import CalledAet, PoolConfig
from dicomlb.spool.store import Item, SpoolStore

READ_WHOLE = 8 << 20  # spooled data sets up to this size are read in one go, larger in chunks
DIMSE_CHUNK = 4 << 20  # bytes read at a time from a large spooled file, for a C-STORE
BRIDGE_CHUNK = 1 << 20  # the same, for an HTTP request body
PROCESSING_FAILURE = 0x0110


# ------------------------------------------------------------------ the instance


class InstanceSource(Protocol):
    """One instance to send: its facts and its data set (without file meta)."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def calling_aet(self) -> str: ...
    @property
    def called_aet(self) -> str: ...
    @property
    def size(self) -> int | None:
        """The data set's length when known."""

    async def whole(self) -> bytes | memoryview | None:
        """The whole data set when it is in memory (or small enough to read at once)."""

    def chunks(self, size: int) -> AsyncIterator[bytes | memoryview]:
        """The data set, piece by piece (at most `size` bytes each when read from a file)."""


class LiveInstance:
    """A client's C-STORE still arriving: the fragments read for routing, then the rest."""

    def __init__(
        self,
        message: InboundMessage,
        head: list[DataReceived],
        done: bool,
        *,
        calling_aet: str,
        called_aet: str,
    ) -> None:
        self.message = message
        self.head = head
        self.done = done
        self.calling_aet = calling_aet
        self.called_aet = called_aet
        # The client went while its data set was being sent: raised again by the caller.
        self.gone: ClientGone | None = None

    @property
    def sop_class_uid(self) -> str:
        return self.message.command.sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.message.command.sop_instance_uid

    @property
    def transfer_syntax(self) -> str:
        return self.message.transfer_syntax

    @property
    def size(self) -> int | None:
        return None

    async def whole(self) -> bytes | None:
        if not self.done:
            return None
        return b"".join(bytes(fragment.data) for fragment in self.head)

    async def chunks(self, size: int) -> AsyncIterator[bytes | memoryview]:
        for fragment in self.head:
            yield fragment.data
        assert self.message.data is not None
        while not self.done:
            try:
                fragment = await self.message.data.get()
            except ClientGone as err:
                self.gone = err
                raise
            self.done = fragment.is_last
            yield fragment.data


class SpooledInstance:
    """A spooled item: its data set in memory when small (`data`), else in its file."""

    def __init__(self, item: Item, data: bytes | memoryview | None, store: SpoolStore) -> None:
        self.item = item
        self.data = data
        self.store = store

    @property
    def sop_class_uid(self) -> str:
        return self.item.sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.item.sop_instance_uid

    @property
    def transfer_syntax(self) -> str:
        return self.item.transfer_syntax

    @property
    def calling_aet(self) -> str:
        return self.item.calling_aet

    @property
    def called_aet(self) -> str:
        return self.item.called_aet

    @property
    def size(self) -> int:
        return self.item.size - self.item.dataset_offset

    async def whole(self) -> bytes | memoryview | None:
        if self.data is not None:
            return self.data
        if self.size <= READ_WHOLE:
            return await asyncio.to_thread(self.store.read, self.item)
        return None

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        item = self.item
        offset = item.dataset_offset
        while offset < item.size:
            chunk = await asyncio.to_thread(self.store.read, item, offset, size)
            if not chunk:
                raise OSError(f"spool file {item.file} is shorter than its index row says")
            offset += len(chunk)
            yield chunk


# ------------------------------------------------------------------ what came of it


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """What one attempt at a backend came to."""

    outcome: StoreOutcome  # the status for the sender; `stored`; `answered` by the backend
    reason: str = ""  # not stored: why, as the spool records it
    cause: Cause | None = None  # the backend failed: what passive health and the breaker hear
    untried: bool = False  # the backend could not be asked: nothing sent, another may try


# A plain Success, the usual answer: one shared (immutable) value, not two made each time.
_SUCCESS = Sent(outcome=StoreOutcome(status=0))


class Sender(Protocol):
    """Sends instances to one backend."""

    backend: BackendState
    via: str  # how it sends over HTTP (`store_via`), "" over DIMSE: named in log lines

    async def send(self, source: InstanceSource, pool: PoolConfig | None) -> Sent:
        """One instance, within `pool`'s timeouts (defaults without a pool)."""

    async def send_many(
        self, sources: Sequence[InstanceSource], pool: PoolConfig | None
    ) -> list[Sent]:
        """Several instances (in one request where the backend takes that); one Sent each."""


def sender_for(runtime: Runtime, backend: BackendState) -> Sender:
    """The sender for `backend`: over HTTP for a `store_via` backend, else DIMSE."""
    if backend.config.store is not None:
        return BridgeSender(backend, client_for(runtime, backend))
    dicom = runtime.snapshot.dicom
    return DimseSender(backend, runtime.upstreams[backend.name], dicom.ae_title if dicom else "")


# ------------------------------------------------------------------ over HTTP


def client_for(runtime: Runtime, backend: BackendState) -> HttpStoreClient:
    """The backend's bridge client (owned by its upstream pool, kept across reloads)."""
    upstream = runtime.upstreams[backend.name]
    if upstream.bridge is None or upstream.bridge.backend != backend.config:
        upstream.bridge = HttpStoreClient(backend.config, backend.budget)
    return upstream.bridge


def cause_of(outcome: StoreOutcome) -> Cause:
    """What a failed bridge request tells passive health: no connection, or one that broke
    before an answer, counts; an HTTP answer (4xx / 5xx) is the message's failure."""
    if outcome.busy:
        return Cause.BUSY
    if outcome.unreachable:
        return Cause.REFUSED
    return Cause.STATUS if outcome.answered else Cause.CLOSED


def _timeouts(pool: PoolConfig | None) -> dict[str, float]:
    if pool is None:
        return {"connect_timeout": 5.0, "read_timeout": 120.0, "acquire_timeout": 30.0}
    return {
        "connect_timeout": pool.connect_timeout,
        "read_timeout": pool.response_timeout,
        "acquire_timeout": pool.acquire_timeout,
    }


def _status_reason(outcome: StoreOutcome) -> str:
    return f"status 0x{outcome.status:04X}" + (f" ({outcome.comment})" if outcome.comment else "")


class _Part10:
    """An instance's Part-10 stream: the file meta, then its data set as it comes."""

    def __init__(self, prefix: bytes, source: InstanceSource) -> None:
        self.prefix = prefix
        self.source = source
        self.started = False  # a byte went out: the stream cannot be sent elsewhere

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        yield self.prefix
        async for chunk in self.source.chunks(BRIDGE_CHUNK):
            yield bytes(chunk)


class BridgeSender:
    """C-STOREs as HTTP requests (`store_via`), `batch` instances per STOW-RS request."""

    def __init__(self, backend: BackendState, client: HttpStoreClient) -> None:
        assert backend.config.store is not None
        self.backend = backend
        self.client = client
        self.via = backend.config.store.via.value
        self.batch = backend.config.store.stow_batch

    async def send(self, source: InstanceSource, pool: PoolConfig | None) -> Sent:
        (sent,) = await self.send_many([source], pool)
        return sent

    async def send_many(
        self, sources: Sequence[InstanceSource], pool: PoolConfig | None
    ) -> list[Sent]:
        """Raises the client's ClientGone when a live instance's client went mid-request."""
        streams: list[_Part10] = []
        try:
            bodies = [
                BridgeInstance(
                    sop_instance_uid=source.sop_instance_uid, body=await self._body(source, streams)
                )
                for source in sources
            ]
        except OSError as err:
            reason = f"cannot read spool file: {err}"
            # Nothing was asked of the backend: neither its failure nor its success.
            failed = StoreOutcome(status=PROCESSING_FAILURE, comment=reason, answered=False)
            return [Sent(outcome=failed, reason=reason)] * len(sources)
        self.backend.active += len(sources)
        try:
            outcomes = await self.client.send(bodies, **_timeouts(pool))
        except OSError as err:  # reading a large spool file failed mid-request
            outcomes = [StoreOutcome(status=PROCESSING_FAILURE, comment=str(err))] * len(sources)
        finally:
            self.backend.active -= len(sources)
        for source in sources:
            if isinstance(source, LiveInstance) and source.gone is not None:
                raise source.gone
        started = any(stream.started for stream in streams)
        return [
            Sent(
                outcome=outcome,
                reason=_status_reason(outcome),
                cause=cause_of(outcome) if outcome.backend_failed else None,
                untried=outcome.unreachable and not started,
            )
            for outcome in outcomes
        ]

    async def _body(self, source: InstanceSource, streams: list[_Part10]) -> bytes | _Part10:
        prefix = file_header(
            sop_class_uid=source.sop_class_uid,
            sop_instance_uid=source.sop_instance_uid,
            transfer_syntax=source.transfer_syntax,
            source_ae=source.calling_aet,
        )
        data = await source.whole()
        if data is not None:  # sent with a Content-Length
            return prefix + data
        stream = _Part10(prefix, source)
        streams.append(stream)
        return stream


# ------------------------------------------------------------------ DIMSE


class DimseSender:
    """A spooled instance as a C-STORE over the backend's pooled associations."""

    def __init__(self, backend: BackendState, upstream: UpstreamPool, ae_title: str) -> None:
        self.backend = backend
        self.upstream = upstream
        self.ae_title = ae_title or "DICOMLB"  # the calling AE title when the source has none
        self.via = ""  # no bridge

    async def send_many(
        self, sources: Sequence[InstanceSource], pool: PoolConfig | None
    ) -> list[Sent]:
        return [await self.send(source, pool) for source in sources]

    async def send(self, source: InstanceSource, pool: PoolConfig | None) -> Sent:
        dicom = self.backend.config.dicom
        assert dicom is not None  # not store_via: a DICOM backend
        called = (
            source.called_aet
            if pool is not None and pool.called_aet is CalledAet.PASSTHROUGH
            else dicom.ae_title
        )
        calling = source.calling_aet or self.ae_title
        needed = (source.sop_class_uid, source.transfer_syntax)
        timeout = pool.response_timeout if pool is not None else 120.0
        associated = False
        try:
            # The lease gives the association back on every exit, aborted if cut off.
            async with self.upstream.lease((calling, called, ()), needed, [needed]) as up:
                associated = True
                status, comment = await _store(source, up, timeout)
        except (UpstreamError, TimeoutError, OSError) as err:
            refused = isinstance(err, ContextRejected) or (
                isinstance(err, Rejected) and err.permanent
            )
            if not associated and not refused:
                # The backend, not the item, failed: nothing was sent.
                assert isinstance(err, UpstreamError)  # all that entering a lease raises
                failed = StoreOutcome(
                    status=PROCESSING_FAILURE,
                    comment=str(err),
                    backend_failed=True,
                    unreachable=True,
                    answered=False,
                )
                return Sent(outcome=failed, reason=str(err), cause=err.cause, untried=True)
            if isinstance(err, TimeoutError):
                reason, cause = f"no response within {timeout:g}s", Cause.RESPONSE_TIMEOUT
            else:
                reason = str(err) or type(err).__name__
                cause = err.cause if isinstance(err, UpstreamError) else Cause.LOCAL
            failed = StoreOutcome(
                status=PROCESSING_FAILURE,
                comment=reason,
                backend_failed=not refused,
                answered=False,
            )
            return Sent(outcome=failed, reason=reason, cause=None if refused else cause)
        if status == 0 and not comment:
            return _SUCCESS
        outcome = StoreOutcome(status=status, comment=comment)
        # The reason is only read when the instance was not stored.
        return Sent(outcome=outcome, reason="" if outcome.stored else _status_reason(outcome))


async def _store(
    source: InstanceSource, up: UpstreamAssociation, timeout: float
) -> tuple[int, str]:
    """A C-STORE-RQ for `source` over `up`, its data set whole or in chunks; the status."""
    needed = (source.sop_class_uid, source.transfer_syntax)
    context_id = up.context_for(needed)
    assert context_id is not None
    command = Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: source.sop_class_uid,
            Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
            Tag.MESSAGE_ID: up.next_message_id(),
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
            Tag.AFFECTED_SOP_INSTANCE_UID: source.sop_instance_uid,
        }
    )
    data = await source.whole()
    if data is not None:
        pending = up.send_command(context_id, command, [(data, True)], timeout)
        await up.drain()
    else:
        # Known size: the last chunk is the one that reaches it.
        total = source.size
        assert total is not None
        chunks = source.chunks(DIMSE_CHUNK)
        first = await anext(chunks)
        sent = len(first)
        pending = up.send_command(context_id, command, [(first, sent >= total)], timeout)
        await up.drain()
        async for chunk in chunks:
            sent += len(chunk)
            up.send_data(context_id, chunk, sent >= total)
            await up.drain()
    answer = await pending
    return answer.status or 0, answer.error_comment or ""
