"""Delivery of spooled items: one sender per backend, retries, dead letters, failover.

Each backend gets a `BackendSender`: up to `max_associations` workers that claim due items
of that backend from the index, send them with the backend's sender (`delivery/senders`:
the same pooled, capped associations the relay uses, or HTTP for a `store_via` backend) and
record the outcome. A backend that is down
(health checks) or whose circuit breaker is open costs nothing: no connects, no attempts,
no item's attempt count grows. A failed attempt is retried after an exponential backoff
with jitter (`state.after_failure`); past `max_attempts` or `max_age` the item is dead,
with the reason, until an operator retries or purges it.

With `failover_after` set, queued items of a backend down that long move, study by study,
to the next backend of their pool (for `affinity` pools: the study's next rendezvous
backend); without it they wait for their backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from dicomlb.delivery import fate
from dicomlb.delivery.passive import passive_failure
from dicomlb.delivery.senders import (
    BridgeSender,
    DimseSender,
    SpooledInstance,
    sender_for,
)
from dicomlb.health import Cause
from dicomlb.pools import BackendState
from dicomlb.runtime import Runtime
from dicomlb.snapshot import SpoolConfig
from dicomlb.spool import state
from dicomlb.spool.state import BreakerState, CircuitBreaker, ItemState
from dicomlb.spool.store import KEEP_MAX, STOP_WAIT, Change, Item, SpoolStore
from dicomlb.spool.supervisor import Supervisor

log = logging.getLogger(__name__)

SWEEP_EVERY = 1.0  # seconds between sweeps (max age, failover, retention, recount)
RECOUNT_EVERY = 10  # sweeps between recounts of the index (the CLI may have purged)
CLAIM_BATCH = 32  # items claimed from the index at once per backend
# Items a backend's sender holds, per association, sent or ready to send: a claim is a
# thread hop (index and files), slow on a busy machine, and the workers must not run dry
# while it is under way. Those up to KEEP_MAX have their bytes in memory (like those
# handed over at ingest), so the ready ones hold at most AHEAD * KEEP_MAX per association.
AHEAD = 4
IDLE_WAIT = 1.0  # longest sleep of an idle feeder (ingest wakes it sooner)
QUIET = 0.05  # after finding nothing due, a feeder asks the index again only when woken
# (new queued items) or after this long: not once per item its workers take

Claimed = tuple[Item, bytes | memoryview | None]  # an item and, when small, its data set bytes


class Spool(Protocol):
    """What the dispatcher uses of the spool that owns it (`spool.spool.Spool`)."""

    config: SpoolConfig
    store: SpoolStore
    supervisor: Supervisor
    rng: random.Random
    runtime: Callable[[], Runtime]
    items: int  # the spool's counts, kept current as items are delivered or expire
    bytes: int

    def remember(self, pool: str, study: str, backend: str) -> None:
        """The study's backend in `pool` is now `backend` (failover)."""


class Dispatcher:
    """The senders of every backend, and the periodic sweep."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.store = spool.store
        self.senders: dict[str, BackendSender] = {}
        self.supervisor = spool.supervisor
        self._sweeper: str | None = None  # the sweep's name in the supervisor
        self._handing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._sync_senders()
        self._sweeper = self.supervisor.spawn(self._run, kind="sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            await self.supervisor.stop([self._sweeper])
        await asyncio.gather(*(s.stop() for s in self.senders.values()))
        if not self.senders:  # never started: nothing of this run is on the wire
            return
        # What was on the wire is sent again next time (at least once). In the batch queue,
        # after the outcomes still pending (a delivery recorded stays delivered); if the
        # index refuses now, the next start's recovery does it.
        try:
            await asyncio.wait_for(
                self.store.update([Change.requeue_sending()], durable=True), STOP_WAIT
            )
        except TimeoutError:
            log.error("spool.requeue_failed reason=%r", "the index refused writes")

    def wake(self, backend: str) -> None:
        sender = self.senders.get(backend)
        if sender is not None:
            sender.wake()

    def can_take(self, backend: str) -> bool:
        """Whether a new item for `backend` can go straight to its sender (it has room and
        the backend is up): then it is inserted as 'sending' and handed over in memory."""
        sender = self.senders.get(backend)
        return sender is not None and sender.has_room()

    def hand(self, item: Item, data: bytes | memoryview | None) -> None:
        """Give a just-spooled 'sending' item to its sender."""
        sender = self.senders.get(item.backend)
        if sender is None:  # gone since can_take: leave it to the index
            task = asyncio.get_running_loop().create_task(self._requeue(item))
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)
            return
        sender.take(item, data)

    async def _requeue(self, item: Item) -> None:
        await self.store.update([Change.requeue(item.id)])

    def _sync_senders(self) -> None:
        for name in self.spool.runtime().backends:
            if name not in self.senders:
                sender = BackendSender(self, name)
                self.senders[name] = sender
                sender.start()

    async def _run(self) -> None:
        """Sweep every SWEEP_EVERY (a failed sweep is the supervisor's: logged, restarted)."""
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            sweeps += 1
            self._sync_senders()
            await self.sweep(time.time(), recount=sweeps % RECOUNT_EVERY == 0)

    async def sweep(self, now: float, *, recount: bool = False) -> None:
        """Dead letters for items too old, failover, retention of delivered files."""
        spool = self.spool
        config = spool.config
        if config.retry.max_age:
            old = await asyncio.to_thread(
                functools.partial(
                    self.store.items,
                    states=[ItemState.QUEUED],
                    created_before=now - config.retry.max_age,
                )
            )
            for item in old:
                last = f"; last: {item.last_error}" if item.last_error else ""
                reason = f"older than max_age {config.retry.max_age:g}s{last}"
                await self.record_dead(item, item.attempts, reason)
        if config.failover_after is not None:
            for name, sender in self.senders.items():
                if state.should_fail_over(
                    down_since=sender.down_since, now=now, failover_after=config.failover_after
                ):
                    await self.fail_over(name, now)
        if config.keep_delivered:
            expired = await asyncio.to_thread(self.store.expired_files, now - config.keep_delivered)
            if expired:
                applied = await self.store.update([Change.expire_file(i.id) for i in expired])
                gone = [item for item, n in zip(expired, applied, strict=True) if n]
                await asyncio.to_thread(self.store.remove_files, [item.file for item in gone])
                spool.bytes -= sum(item.size for item in gone)
        if recount:
            counts = await asyncio.to_thread(self.store.counts)
            spool.items, spool.bytes = counts.items, counts.bytes

    async def fail_over(self, backend: str, now: float) -> None:
        """Move the queued studies of `backend` to the next available backend of their pool."""
        runtime = self.spool.runtime()
        rows = await asyncio.to_thread(self.store.queued_studies, backend)
        moves = []
        targets: set[str] = set()
        for pool_name, study, count in rows:
            pool = runtime.pools.get(pool_name)
            target = pool.pick(study, exclude=frozenset({backend})) if pool else None
            if target is None:
                continue
            moves.append(Change.reassign(pool_name, study, frm=backend, to=target.name, now=now))
            self.spool.remember(pool_name, study, target.name)
            log.warning(
                "spool.failover study_uid=%s pool=%s from=%s to=%s items=%d",
                study,
                pool_name,
                backend,
                target.name,
                count,
            )
            targets.add(target.name)
        if moves:
            await self.store.update(moves)
        for name in targets:  # once the index has them: a sender woken sooner finds none
            self.wake(name)

    async def record_dead(self, item: Item, attempts: int, reason: str) -> None:
        """The item is dead (from the state it was read in: sending after its last attempt,
        queued when too old); nothing when it moved meanwhile (a sender took it)."""
        now = time.time()
        change = Change.give_up(item.id, item.state, attempts=attempts, reason=reason, now=now)
        (applied,) = await self.store.update([change])
        if not applied:
            return
        fate.dead(self.spool.runtime(), item, attempts, reason)


class BackendSender:
    """Delivers the spooled items of one backend, `max_associations` at a time."""

    def __init__(self, dispatcher: Dispatcher, name: str) -> None:
        self.dispatcher = dispatcher
        self.spool = dispatcher.spool
        self.store = dispatcher.store
        self.name = name
        self.breaker = CircuitBreaker(threshold=3, base=1.0, cap=30.0)
        self.inflight = 0
        self.unavailable_since: float | None = None
        # Claimed items (and, for small ones, their data set bytes) waiting for a worker.
        self._ready: collections.deque[Claimed] = collections.deque()
        self._has_ready = asyncio.Event()
        self._event = asyncio.Event()  # wakes the feeder: new items, or a worker took one
        self._dirty = True  # items may have been queued since the index was last asked
        self._quiet_until = 0.0  # the index had nothing due: do not ask before (unless dirty)
        self._tasks: list[str] = []  # names of the feeder and workers in the supervisor

    @property
    def down_since(self) -> float | None:
        """Since when this backend has been down (health or breaker), if it is."""
        times = [t for t in (self.unavailable_since, self.breaker.down_since) if t is not None]
        return min(times) if times else None

    def start(self) -> None:
        runtime = self.spool.runtime()
        backend = runtime.backends[self.name]
        supervisor = self.dispatcher.supervisor
        self._tasks = [supervisor.spawn(self._feed, kind="feeder", backend=self.name)]
        for n in range(backend.config.max_associations):
            work = functools.partial(self._work, n)
            self._tasks.append(supervisor.spawn(work, kind="worker", backend=self.name, index=n))

    async def stop(self) -> None:
        await self.dispatcher.supervisor.stop(self._tasks)

    def wake(self) -> None:
        """New queued items for this backend (ingest, failover, a failed attempt)."""
        self._dirty = True
        self._event.set()

    def has_room(self) -> bool:
        """Room in the ready queue, and the backend is not known to be down."""
        runtime = self.spool.runtime()
        backend = runtime.backends.get(self.name)
        if backend is None or not self._available(backend, runtime):
            return False
        if self.breaker.state is not BreakerState.CLOSED:
            return False
        return len(self._ready) + self.inflight < AHEAD * backend.config.max_associations

    def take(self, item: Item, data: bytes | memoryview | None) -> None:
        self._ready.append((item, data))
        self._has_ready.set()

    async def _idle(self, timeout: float) -> None:
        self._event.clear()
        # asyncio.timeout, not wait_for: no task made for each wait
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    # -------------------------------------------------------- feeding the workers

    async def _feed(self) -> None:
        """Claim due items in batches (one thread hop reads the index and the small files)
        while the backend is available and its breaker lets attempts through."""
        loop = asyncio.get_running_loop()  # once: each call costs a getpid() system call
        while True:
            runtime = self.spool.runtime()
            backend = runtime.backends.get(self.name)
            if backend is None:
                await self._idle(IDLE_WAIT)
                continue
            now = time.time()
            if not self._available(backend, runtime):
                if self.unavailable_since is None:
                    self.unavailable_since = now
                await self._release_ready()
                await self._idle(0.5)
                continue
            self.unavailable_since = None
            if not self.breaker.allow(now):
                await self._release_ready()
                await self._idle(min(max(self.breaker.retry_at - now, 0.05), IDLE_WAIT))
                continue
            limit = backend.config.max_associations
            want = AHEAD * limit - len(self._ready) - self.inflight
            if self.breaker.state is BreakerState.HALF_OPEN:
                want = 0 if self._ready or self.inflight else 1  # one probe decides
            if want <= 0:
                await self._idle(IDLE_WAIT)
                continue
            if not self._dirty and now < self._quiet_until:
                # A worker took a handed-over item: room, but the index had nothing due.
                await self._idle(self._quiet_until - now)
                continue
            self._event.clear()
            self._dirty = False
            batch, due = await loop.run_in_executor(None, self._claim, now, min(want, CLAIM_BATCH))
            if batch:
                self._ready.extend(batch)
                self._has_ready.set()
                continue
            now = time.time()
            self._quiet_until = now + QUIET if due is None else min(due, now + QUIET)
            wait = IDLE_WAIT if due is None else min(max(due - now, 0.01), IDLE_WAIT)
            if not self._event.is_set():
                await self._idle(wait)

    def _claim(self, now: float, limit: int) -> tuple[list[Claimed], float | None]:
        """(thread) Claim due items and read the small ones; or when the next one is due."""
        items = self.store.claim(self.name, now, limit)
        if not items:
            return [], self.store.next_due(self.name)
        batch: list[Claimed] = []
        for item in items:
            data = None
            if item.size - item.dataset_offset <= KEEP_MAX:
                try:
                    data = self.store.read(item)
                except OSError:
                    data = None  # the worker reads again and reports the error
            batch.append((item, data))
        return batch, None

    async def _release_ready(self) -> None:
        """Give claimed, unsent items back (the backend went down): no attempt counted."""
        if not self._ready:
            return
        items, self._ready = list(self._ready), collections.deque()
        await self.store.update([Change.requeue(item.id) for item, _ in items])

    async def _work(self, n: int) -> None:
        while True:
            while not self._ready:
                self._has_ready.clear()
                await self._has_ready.wait()
            item, data = self._ready.popleft()
            self._event.set()  # room for more: the feeder may claim
            runtime = self.spool.runtime()
            backend = runtime.backends.get(self.name)
            if (
                backend is None
                or self.name not in runtime.upstreams
                or not self._available(backend, runtime)
                or not self.breaker.allow(time.time())
            ):
                await self._requeue(item)
                continue
            self.inflight += 1
            settled = False
            try:
                await self._deliver(item, data, backend, runtime)
                settled = True
            finally:
                self.inflight -= 1
                self._event.set()  # a slot is free (a half-open breaker's probe decided)
                if not settled:  # the attempt broke off (a failure, a stop): queued again
                    self._put_back(item)

    async def _requeue(self, item: Item) -> None:
        """Back to queued without an attempt: the backend, not the item, was the problem."""
        self._put_back(item)

    def _put_back(self, item: Item) -> None:
        self.store.update_soon([Change.requeue(item.id)])

    def _available(self, backend: BackendState, runtime: Runtime) -> bool:
        """Enabled, and up by the health checks when its pool runs them (without checks
        nothing would bring a passively failed backend back: the breaker probes instead)."""
        return backend.enabled and (backend.health.up or not self._checked(runtime))

    def _checked(self, runtime: Runtime) -> bool:
        return any(
            pool.health.enabled and any(b.name == self.name for b in pool.backends)
            for pool in runtime.snapshot.pools.values()
        )

    # -------------------------------------------------------- one item

    async def _deliver(
        self,
        item: Item,
        data: bytes | memoryview | None,
        backend: BackendState,
        runtime: Runtime,
    ) -> None:
        sender = sender_for(runtime, backend)
        batch = [(item, data)]
        if isinstance(sender, BridgeSender):  # STOW-RS: more of the ready small items at once
            while len(batch) < sender.batch and self._ready and self._ready[0][1] is not None:
                batch.append(self._ready.popleft())
        started = time.monotonic()
        pool = runtime.snapshot.pools.get(item.pool)
        sources = [SpooledInstance(claimed, bytes_, self.store) for claimed, bytes_ in batch]
        sent = await sender.send_many(sources, pool)
        failure = next((s for s in sent if s.cause is not None), None)
        if failure is not None:
            assert failure.cause is not None
            self._backend_failed(
                backend, runtime, failure.outcome.comment, failure.cause, item.pool
            )
        elif sent[0].outcome.answered:
            self.breaker.success()
            backend.health.success()
        for (claimed, _), result in zip(batch, sent, strict=True):
            if result.untried and isinstance(sender, DimseSender):
                # No association: the backend, not the item, failed; no attempt counted, the
                # breaker decides when to try again.
                await self._requeue(claimed)
            elif result.outcome.stored:
                await self._delivered(claimed, result.outcome.status, started, via=sender.via)
            else:
                await self._failed(claimed, result.reason)

    def _backend_failed(
        self, backend: BackendState, runtime: Runtime, reason: str, cause: Cause, pool: str
    ) -> None:
        now = time.time()
        if self.breaker.failure(now):
            log.warning(
                "spool.breaker_open backend=%s retry_in=%.1fs reason=%r",
                self.name,
                self.breaker.retry_at - now,
                reason,
            )
        passive_failure(runtime.metrics, backend, pool, cause, reason)

    async def _delivered(self, item: Item, status: int, started: float, via: str = "") -> None:
        now = time.time()
        keep = bool(self.spool.config.keep_delivered)
        self.store.update_soon(
            [Change.deliver(item.id, now, file=item.file if keep else "")],
            remove=() if keep else (item.file,),
        )
        self.spool.items -= 1
        if not keep:
            self.spool.bytes -= item.size
        fate.delivered(self.spool.runtime(), item, status, started, via)

    async def _failed(self, item: Item, reason: str) -> None:
        attempts = item.attempts + 1
        now = time.time()
        outcome = state.after_failure(
            attempts=attempts,
            created_at=item.created_at,
            now=now,
            reason=reason,
            retry=self.spool.config.retry,
            rng=self.spool.rng,
        )
        if outcome.state is ItemState.DEAD:
            await self.dispatcher.record_dead(item, attempts, outcome.reason)
            return
        await self.store.update(
            [
                Change.fail(
                    item.id,
                    attempts=attempts,
                    reason=reason,
                    next_attempt_at=outcome.next_attempt_at,
                    now=now,
                )
            ]
        )
        self.wake()  # its retry time may come before what the feeder last saw
        fate.retrying(self.spool.runtime(), item, attempts, outcome.next_attempt_at - now, reason)
