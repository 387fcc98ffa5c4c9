"""The running spool: store, limits, ingest of C-STOREs from the relay, and the dispatcher.

`Spool.ingest` is the relay's hook for routes with `ack: spool`: it takes the fragments the
relay already read and the rest of the data set, makes the instance durable (one index row
for the route's pool and one per mirror pool) and only then answers Success. When it cannot
keep that promise it answers 0xA700 (Out of resources) with the reason, never Success.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

from dicomlb.delivery import fate
from dicomlb.dicom.dimse import DataReceived, Status
from dicomlb.dicom.messages import ClientGone, InboundMessage, discard
from dicomlb.dicom.part10 import file_header
from dicomlb.dicom.tags import STUDY_INSTANCE_UID
from dicomlb.lru import BoundedLru
from dicomlb.pools import BackendState, Pool, rendezvous_order
from dicomlb.runtime import Runtime
from dicomlb.snapshot import PoolConfig, RouteConfig, SpoolConfig
from dicomlb.spool import state
from dicomlb.spool.dispatcher import Dispatcher
from dicomlb.spool.store import Instance, SpoolStore, Target, disk_full, record
from dicomlb.spool.supervisor import Supervisor, TaskState

log = logging.getLogger(__name__)

_AFFINITY_MEMORY = 100_000  # (pool, study) -> backend entries kept
_FREE_DISK_EVERY = 1.0  # seconds between statvfs calls


def placement_key(pool: PoolConfig, tags: Mapping[int, str]) -> str:
    """What a spooled instance is placed by in `pool`: its affinity key, else its study."""
    if pool.key is not None:
        return tags.get(pool.key, "")
    return tags.get(STUDY_INSTANCE_UID, "")


def first_choice(pool: Pool, key: str, study: str) -> BackendState:
    """Where a spooled instance of a study the spool has not placed yet goes: the pool's pick
    among available backends, else (all down) the first of the rendezvous order: the spool
    takes instances even when every backend is down."""
    return pool.pick(key) or rendezvous_order(key or study, pool.backends)[0]


class Spool:
    """Store-and-forward for routes with `ack: spool`, and the delivery of what it holds."""

    def __init__(
        self,
        config: SpoolConfig,
        runtime: Callable[[], Runtime],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.store = SpoolStore(config.directory)
        self.rng = rng or random.Random()
        # A study stays on the backend its first instance was given (also after failover).
        self.affinity: BoundedLru[tuple[str, str], str] = BoundedLru(_AFFINITY_MEMORY)
        self.items = 0
        self.bytes = 0
        self._free_disk = 0
        self._free_disk_at = 0.0
        self._refusing: str | None = None
        # Every long-running task of the spool (committer, sweep, senders) runs under it.
        self.supervisor = Supervisor(on_restart=self._restarted)
        self.dispatcher = Dispatcher(self)

    # -------------------------------------------------------- life

    async def start(self) -> None:
        """Open the directory (crash recovery), start the committer and the dispatcher."""
        recovery = await asyncio.to_thread(self.store.open)
        assert recovery is not None
        counts = await asyncio.to_thread(self.store.counts)
        self.items, self.bytes = counts.items, counts.bytes
        rows = await asyncio.to_thread(self.store.pending_studies)
        for pool, study, backend in rows:
            self.remember(pool, study, backend)
        await self.store.start(self.supervisor)
        log.info(
            "spool.started directory=%s queued=%d requeued=%d items=%d bytes=%d "
            "partial_files_removed=%d reindexed_files=%d orphan_files_removed=%d "
            "missing_files=%d",
            self.config.directory,
            recovery.queued,
            recovery.requeued,
            self.items,
            self.bytes,
            recovery.partial_files,
            recovery.reindexed_files,
            recovery.orphan_files,
            recovery.missing_files,
        )
        self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.store.stop()
        await self.supervisor.stop()
        log.info("spool.stopped items=%d bytes=%d", self.items, self.bytes)

    def _restarted(self, task: TaskState) -> None:
        self.runtime().metrics.spool_task_restart(task.kind, task.backend)

    # -------------------------------------------------------- limits

    def usage(self) -> state.Usage:
        now = time.monotonic()
        if now - self._free_disk_at >= _FREE_DISK_EVERY:
            self._free_disk = self.store.free_disk()
            self._free_disk_at = now
        return state.Usage(items=self.items, bytes=self.bytes, free_disk=self._free_disk)

    def refusal(self, incoming: int = 0) -> str | None:
        """Why a new instance must be refused now (spool limits), or None; logs changes."""
        why = state.refusal(self.usage(), self.config, incoming)
        if why != self._refusing:
            if why is not None:
                log.warning("spool.full reason=%r", why)
            else:
                log.info("spool.accepting items=%d bytes=%d", self.items, self.bytes)
            self._refusing = why
        return why

    def accepting(self) -> bool:
        """Whether new associations for spooled routes are welcome (back-pressure)."""
        return self.refusal() is None

    # -------------------------------------------------------- placement

    def remember(self, pool: str, study: str, backend: str) -> None:
        self.affinity.put((pool, study), backend)

    def choose(self, pool: Pool, key: str, study: str) -> BackendState:
        """The backend a spooled instance goes to: the one its study already has, else the
        pool's pick among available backends, else (all down) the study's first rendezvous
        backend: the spool takes instances even when every backend is down."""
        if study:
            known = self.affinity.get((pool.name, study))
            for backend in pool.backends:
                if backend.name == known:
                    return backend
        backend = first_choice(pool, key, study)
        if study:
            self.remember(pool.name, study, backend.name)
        return backend

    # -------------------------------------------------------- ingest

    async def ingest(
        self,
        runtime: Runtime,
        message: InboundMessage,
        route: RouteConfig,
        head: list[DataReceived],
        done: bool,
        tags: dict[int, str],
        started: float,
        *,
        calling_aet: str,
        called_aet: str,
        respond: Callable[[int, str | None], None],
    ) -> None:
        """Spool one C-STORE for `route` (placed on `runtime`'s pools) and answer the client,
        through `respond(status, comment)`, once it is safe."""
        command = message.command
        sop_uid = command.sop_instance_uid
        why = self.refusal()
        if why is not None:
            if not done:
                await discard(message)
            fate.refused(
                runtime,
                sop_instance_uid=sop_uid,
                route=route.name,
                pool=route.pool.name,
                status=Status.OUT_OF_RESOURCES,
                reason=why,
                spool=True,
            )
            respond(Status.OUT_OF_RESOURCES, f"spool full: {why}")
            return
        study = tags.get(STUDY_INSTANCE_UID, "")
        targets: list[Target] = []
        for n, pool_config in enumerate((route.pool, *route.mirror)):
            pool = runtime.pools[pool_config.name]
            backend = self.choose(pool, placement_key(pool_config, tags), study)
            targets.append(
                Target(
                    route=route.name,
                    pool=pool.name,
                    backend=backend.name,
                    mirror=n > 0,
                    sending=self.dispatcher.can_take(backend.name),
                )
            )
        header = file_header(
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=sop_uid,
            transfer_syntax=message.transfer_syntax,
            source_ae=calling_aet,
            receiving_ae=called_aet,
            private_information=record(study, targets),
        )
        instance = Instance(
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=sop_uid,
            transfer_syntax=message.transfer_syntax,
            study_uid=study,
            calling_aet=calling_aet,
            called_aet=called_aet,
            dataset_offset=len(header),
        )
        try:
            self.store.add_part(instance, header)
            for fragment in head:
                self.store.add_part(instance, fragment.data)
            while not done:
                assert message.data is not None
                fragment = await message.data.get()
                self.store.add_part(instance, fragment.data)
                done = fragment.is_last
            # Small instances are still in memory: their senders get the bytes, no re-read
            # (a view: the data set is not copied out of the joined file a second time).
            kept = instance.keep
            data = (
                memoryview(b"".join(kept))[instance.dataset_offset :] if kept is not None else None
            )
            committing = time.monotonic()
            items = await self.store.commit(instance, targets, time.time())
        except (ClientGone, asyncio.CancelledError):
            # Not acknowledged. Once handed to the committer the file is its business (it
            # may still be committed and delivered: at least once); before, it goes now.
            if not instance.committing:
                await asyncio.shield(self.store.discard(instance))
            raise
        except Exception as err:  # disk full, I/O error: the promise cannot be kept
            await self.store.discard(instance)
            if not done:
                await discard(message)
            if disk_full(err):
                self._free_disk_at = 0.0  # the limits see the full disk now, not in a second
                why = f"spool full: {self.refusal() or 'no space left on its file system'}"
            else:
                why = f"spool write failed: {err}"
            fate.refused(
                runtime,
                sop_instance_uid=sop_uid,
                route=route.name,
                pool=route.pool.name,
                status=Status.OUT_OF_RESOURCES,
                reason=why,
                spool=True,
                level=logging.ERROR,
            )
            respond(Status.OUT_OF_RESOURCES, why)
            return
        committed = time.monotonic() - committing
        self.items += len(targets)
        self.bytes += instance.size * len(targets)
        respond(Status.SUCCESS, None)
        fate.spooled(
            runtime,
            sop_instance_uid=sop_uid,
            route=route.name,
            targets=targets,
            items=items,
            started=started,
            committed=committed,
        )
        for target, item in zip(targets, items, strict=True):
            if target.sending:
                self.dispatcher.hand(item, data)
            else:
                self.dispatcher.wake(target.backend)
