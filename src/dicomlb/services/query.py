"""C-FIND through the balancer (Patient Root, Study Root, Modality Worklist).

`query: one` (backends share a database): one healthy backend answers; its pending
responses and identifiers are relayed byte-exact and in order. `query: fanout`: every
available backend is asked in parallel, each within the pool's `query_timeout`; results are
de-duplicated by the UID of the query level (`qr.result_key`) and relayed as they arrive; a
backend that fails or times out leaves the others' results and a warning in the final
response's Error Comment. A client's C-CANCEL-RQ is passed on to every backend asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from dicomlb.delivery.passive import passive_failure
from dicomlb.dicom.dimse import (
    NO_DATA_SET,
    Command,
    CommandField,
    CommandReceived,
    Status,
    Tag,
)
from dicomlb.dicom.messages import InboundMessage
from dicomlb.dicom.qr import (
    CANCELLED,
    IDENTIFIER_TAGS,
    QUERY_RETRIEVE_LEVEL,
    FindMerger,
    find_final,
    identifier_values,
    result_key,
    unanswered_comment,
)
from dicomlb.dicom.tags import STUDY_INSTANCE_UID, HeaderScanner
from dicomlb.dicom.upstream import (
    PENDING_STATUSES,
    ResponseHandler,
    Unreachable,
    UpstreamAssociation,
    UpstreamError,
)
from dicomlb.placement import Refusal, common_refusal, refusal
from dicomlb.pools import BackendState, Pool
from dicomlb.services.session import MessageFailed, Session
from dicomlb.snapshot import MessageFacts, QueryMode, RouteConfig

log = logging.getLogger(__name__)


class QueryRefused(Exception):
    """The request cannot be placed; `status` and the text go back to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class Placed:
    """A Q/R request read and routed: its identifier, the values read from it, where it goes."""

    identifier: bytes
    values: dict[int, str]  # IDENTIFIER_TAGS and routing tags, as text
    route: RouteConfig
    pool: Pool

    @property
    def key(self) -> str:
        """The pool's affinity key value from the identifier ("" when absent)."""
        tag = self.route.pool.key
        return self.values.get(tag, "") if tag is not None else ""

    @property
    def mode(self) -> QueryMode:
        return self.route.query or self.route.pool.query


async def read_identifier(message: InboundMessage) -> bytes:
    """The request's whole data set (identifiers are small)."""
    if message.data is None:
        return b""
    parts: list[bytes] = []
    while True:
        fragment = await message.data.get()
        parts.append(bytes(fragment.data))
        if fragment.is_last:
            return b"".join(parts)


async def place(session: Session, message: InboundMessage, command_name: str) -> Placed:
    """Read the identifier and pick the route; raises QueryRefused when no route matches."""
    identifier = await read_identifier(message)
    wanted = session.runtime.snapshot.wanted_tags | IDENTIFIER_TAGS
    encoding = session.inbound.config.encoding(message.transfer_syntax)
    scanner = HeaderScanner(message.transfer_syntax, wanted, encoding=encoding)
    scanner.feed(identifier)
    scanner.finish()
    values = scanner.values
    inbound = session.inbound
    facts = MessageFacts(
        calling_aet=inbound.calling_ae,
        called_aet=inbound.called_ae,
        peer_ip=inbound.peer[0],
        command=command_name,
        sop_class_uid=message.command.sop_class_uid,
        tags=values,
    )
    route = session.runtime.router.select(facts)
    if route is None:
        raise QueryRefused(Status.NOT_AUTHORIZED, f"no route matches this {command_name}")
    return Placed(identifier, values, route, session.runtime.pools[route.pool.name])


def cancel_request(message_id: int) -> Command:
    """A C-CANCEL-RQ for the request `message_id` (PS3.7 9.3.2.3)."""
    return Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.C_CANCEL_RQ,
            Tag.MESSAGE_ID_BEING_RESPONDED_TO: message_id,
            Tag.COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        }
    )


class Asked:
    """The backends a request is in flight at, so a C-CANCEL reaches each of them."""

    def __init__(self, session: Session, message: InboundMessage) -> None:
        self.inbound = session.inbound
        self.message_id = message.command.message_id
        self.cancelled = False
        self._live: dict[str, tuple[UpstreamAssociation, int, int]] = {}

    def __enter__(self) -> Asked:
        self.inbound.on_cancel = self._on_cancel
        return self

    def __exit__(self, *_: object) -> None:
        self.inbound.on_cancel = None

    def add(self, backend: str, up: UpstreamAssociation, context_id: int, message_id: int) -> None:
        self._live[backend] = (up, context_id, message_id)
        if self.cancelled:
            up.send_plain(context_id, cancel_request(message_id))

    def discard(self, backend: str) -> None:
        self._live.pop(backend, None)

    def _on_cancel(self, received: CommandReceived) -> None:
        if received.command.responded_to != self.message_id:
            return
        self.cancelled = True
        log.info(
            "find.cancelled calling_aet=%s message_id=%d backends=%d",
            self.inbound.calling_ae,
            self.message_id,
            len(self._live),
        )
        for up, context_id, message_id in self._live.values():
            up.send_plain(context_id, cancel_request(message_id))


async def find(session: Session, message: InboundMessage) -> None:
    """Serve one C-FIND-RQ."""
    started = time.monotonic()
    try:
        placed = await place(session, message, "C-FIND")
    except QueryRefused as refusal:
        log.warning("find.failed status=0x%04X reason=%r", refusal.status, str(refusal))
        session.inbound.send_command(
            message.context_id, find_final(message.command, refusal.status, str(refusal))
        )
        return
    if placed.mode is QueryMode.FANOUT:
        await _fanout(session, message, placed, started)
    else:
        await _one(session, message, placed, started)


async def _one(session: Session, message: InboundMessage, placed: Placed, started: float) -> None:
    pool = placed.pool
    results = 0

    def relay_pending(answer: Command, data: bytes | None) -> None:
        nonlocal results
        results += 1
        session.inbound.send_message(
            message.context_id,
            answer.replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: message.command.message_id}),
            data,
        )

    async with contextlib.AsyncExitStack() as leases:
        try:
            backend, up = await session.connect(pool, placed.key, message, leases)
        except MessageFailed as failure:
            log.warning(
                "find.failed pool=%s status=0x%04X reason=%r",
                pool.name,
                failure.status,
                str(failure),
            )
            session.inbound.send_command(
                message.context_id, find_final(message.command, failure.status, str(failure))
            )
            return
        with Asked(session, message) as asked:
            try:
                status, comment = await _ask(
                    session, message, placed, backend, up, asked, relay_pending
                )
            except (UpstreamError, TimeoutError) as err:
                reason = _reason(err, placed.route.pool.response_timeout)
                failed: int = Status.PROCESSING_FAILURE
                if isinstance(err, UpstreamError):
                    passive_failure(session.runtime.metrics, backend, pool.name, err.cause, reason)
                    refused = None if results else refusal(err.cause)
                    failed = refused.status if refused is not None else failed
                log.warning(
                    "find.failed route=%s pool=%s backend=%s status=0x%04X reason=%r",
                    placed.route.name,
                    pool.name,
                    backend.name,
                    failed,
                    reason,
                )
                session.inbound.send_command(
                    message.context_id,
                    find_final(message.command, failed, f"{backend.name}: {reason}"),
                )
                return
    session.inbound.send_command(message.context_id, find_final(message.command, status, comment))
    log.info(
        "find.relayed route=%s pool=%s backend=%s mode=one level=%s results=%d status=0x%04X ms=%d",
        placed.route.name,
        pool.name,
        backend.name,
        placed.values.get(QUERY_RETRIEVE_LEVEL, "-") or "-",
        results,
        status,
        (time.monotonic() - started) * 1000,
    )


async def _ask(
    session: Session,
    message: InboundMessage,
    placed: Placed,
    backend: BackendState,
    up: UpstreamAssociation,
    asked: Asked,
    on_pending: ResponseHandler,
    timeout: float | None = None,
) -> tuple[int, str | None]:
    """Send the C-FIND over `up` (leased by the caller), pending responses to `on_pending`;
    the final status and Error Comment. Raises UpstreamError, or TimeoutError (a slow query
    is not the backend's failure: PS3.4 leaves its duration to the backend)."""
    pool_config = placed.route.pool
    context_id = up.context_for((message.abstract_syntax, message.transfer_syntax))
    assert context_id is not None
    message_id = up.next_message_id()
    try:
        pending = up.send_command(
            context_id,
            message.command.replace({Tag.MESSAGE_ID: message_id}),
            [(placed.identifier, True)],
            timeout if timeout is not None else pool_config.response_timeout,
            on_pending=on_pending,
        )
        asked.add(backend.name, up, context_id, message_id)
        answer = await pending
    finally:
        asked.discard(backend.name)
    backend.health.success()
    return answer.status or 0, answer.error_comment


async def _fanout(
    session: Session, message: InboundMessage, placed: Placed, started: float
) -> None:
    pool = placed.pool
    pool_config = placed.route.pool
    backends = [b for b in pool.backends if b.available]
    if not backends:
        reason = f"no healthy backend in pool {pool.name}"
        log.warning(
            "find.failed pool=%s status=0x%04X reason=%r",
            pool.name,
            Status.OUT_OF_RESOURCES,
            reason,
        )
        session.inbound.send_command(
            message.context_id, find_final(message.command, Status.OUT_OF_RESOURCES, reason)
        )
        return
    merger = FindMerger()
    problems: dict[str, str] = {}
    refusals: list[Refusal | None] = []  # of the backends that gave no answer
    brief: dict[str, str] = {}  # the same, short enough to share a 64-character Error Comment
    per_backend: dict[str, int] = {}
    ts = message.transfer_syntax
    studies = session.runtime.studies

    def make_handler(backend: BackendState) -> ResponseHandler:
        def on_pending(answer: Command, data: bytes | None) -> None:
            per_backend[backend.name] = per_backend.get(backend.name, 0) + 1
            if data is None:
                return
            values = identifier_values(data, ts)
            if values.get(STUDY_INSTANCE_UID):
                studies.record(values[STUDY_INSTANCE_UID], backend.name)  # queries teach too
            if merger.first(result_key(values, data)):
                session.inbound.send_message(
                    message.context_id,
                    answer.replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: message.command.message_id}),
                    data,
                )

        return on_pending

    async def ask(backend: BackendState, asked: Asked) -> None:
        lease = session.runtime.upstreams[backend.name].lease(
            session.upstream_key(pool_config, backend),
            (message.abstract_syntax, message.transfer_syntax),
            session.contexts,
        )
        try:
            async with asyncio.timeout(pool_config.query_timeout), lease as up:
                status, comment = await _ask(
                    session, message, placed, backend, up, asked, make_handler(backend)
                )
        except TimeoutError:
            problems[backend.name] = brief[backend.name] = "timed out"
            refusals.append(None)
        except UpstreamError as err:
            problems[backend.name] = str(err)
            refused = None if per_backend.get(backend.name) else refusal(err.cause)
            if refused is not None:
                brief[backend.name] = refused.why
            else:
                brief[backend.name] = (
                    "unreachable" if isinstance(err, Unreachable) else str(err)[:24]
                )
            refusals.append(refused)
            passive_failure(session.runtime.metrics, backend, pool.name, err.cause, str(err))
        else:
            if status not in (Status.SUCCESS, CANCELLED) and status not in PENDING_STATUSES:
                problems[backend.name] = f"status 0x{status:04X}" + (
                    f" {comment}" if comment else ""
                )
                brief[backend.name] = problems[backend.name][:24]
            return
        log.warning(
            "find.backend_failed route=%s pool=%s backend=%s reason=%r",
            placed.route.name,
            pool.name,
            backend.name,
            problems[backend.name],
        )

    with Asked(session, message) as asked:
        await asyncio.gather(*(ask(b, asked) for b in backends))
        cancelled = asked.cancelled
    answered = len(problems) < len(backends)
    comment = unanswered_comment(brief, partial=answered)
    if cancelled:
        status = CANCELLED
    elif not answered:
        refused = common_refusal(refusals)
        status = refused.status if refused is not None else Status.PROCESSING_FAILURE
    else:
        status = Status.SUCCESS
    session.inbound.send_command(message.context_id, find_final(message.command, status, comment))
    log.log(
        logging.WARNING if problems else logging.INFO,
        "find.relayed route=%s pool=%s mode=fanout backends=%d failed=%d level=%s results=%d "
        "duplicates=%d status=0x%04X ms=%d",
        placed.route.name,
        pool.name,
        len(backends),
        len(problems),
        placed.values.get(QUERY_RETRIEVE_LEVEL, "-") or "-",
        merger.unique,
        merger.duplicates,
        status,
        (time.monotonic() - started) * 1000,
    )


def _reason(err: BaseException, timeout: float) -> str:
    return f"no response within {timeout:g}s" if isinstance(err, TimeoutError) else str(err)
