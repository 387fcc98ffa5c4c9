"""The admin listener's view of the spool: summary, items, retry and purge.

It works like `dicomlb spool` beside a running balancer: its own SQLite connection to the
index (WAL: reading never blocks the committer, and the balancer's store lock is never
taken from here), the operations of `spool/ops.py`, run in a thread. After a retry the
backends' senders are woken, so the item leaves at once; after a purge the spool's
in-memory counts (its limits) are recounted.

A summary read is kept for `FRESH` seconds: the dashboard polls every second and
Prometheus scrapes, and neither needs the index read twice within that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from dicomlb.routing import uid_name
from dicomlb.snapshot import Ack
from dicomlb.spool import ops
from dicomlb.spool.state import ItemState
from dicomlb.spool.store import Item, SpoolStore

if TYPE_CHECKING:
    from dicomlb.metrics import Metrics
    from dicomlb.spool.spool import Spool

__all__ = ["DEAD_LETTERS", "SpoolView", "dispatcher_state", "item_dict"]

FRESH = 0.5  # seconds a summary is reused
DEAD_LETTERS = 50  # dead items listed in the summary (oldest first)
MAX_LIMIT = 10_000  # items one listing may return


def item_dict(item: Item) -> dict[str, Any]:
    """An index row as JSON (the file name stays inside the spool)."""
    data = asdict(item)
    data["state"] = str(item.state)
    data["on_disk"] = bool(data.pop("file"))
    data["sop_class_name"] = uid_name(item.sop_class_uid) or item.sop_class_uid
    return data


def dispatcher_state(spool: Spool) -> dict[str, Any]:
    """Whether every spool task runs, the restarts so far, and the tasks in trouble (waiting
    to be restarted, or restarted within the last HEALTHY_AFTER seconds) with their cause."""
    tasks = spool.supervisor.tasks.values()
    troubled = spool.supervisor.troubled()
    return {
        "up": not troubled,
        "tasks": len(tasks),
        "restarts": sum(t.restarts for t in tasks),
        "troubled": [
            {
                "task": t.name,
                "running": t.running,
                "restarts": t.restarts,
                "last_error": t.last_error,
                "failed_at": t.failed_at,
                "retry_at": t.retry_at,
            }
            for t in troubled
        ],
    }


class SpoolView:
    """Reads and changes one running spool for the admin API, the dashboard and `/metrics`."""

    def __init__(self, spool: Spool, metrics: Metrics) -> None:
        self.spool = spool
        self.metrics = metrics
        self._store: SpoolStore | None = None
        self._open_lock = asyncio.Lock()
        self._summary: dict[str, Any] | None = None
        self._summary_at = 0.0

    async def _opened(self) -> SpoolStore:
        async with self._open_lock:
            if self._store is None:
                store = SpoolStore(self.spool.config.directory)
                await asyncio.to_thread(store.open, recover=False)
                self._store = store
            return self._store

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)

    # -------------------------------------------------------- reading

    async def summary(self, *, fresh: float = FRESH) -> dict[str, Any]:
        """Depth by state and backend, bytes, oldest wait, limits and the dead letters.

        Also stored as `metrics.spool_state`, which the spool gauges of `/metrics` show."""
        now = time.monotonic()
        if self._summary is not None and now - self._summary_at < fresh:
            return self._summary
        store = await self._opened()
        stats, dead = await asyncio.to_thread(self._read, store)
        wall = time.time()
        by_state: dict[str, int] = {str(s): 0 for s in ItemState}
        for counts in stats.by_backend.values():
            for item_state, n in counts.items():
                by_state[item_state] = by_state.get(item_state, 0) + n
        spool = self.spool
        senders = spool.dispatcher.senders
        backends: dict[str, dict[str, Any]] = {}
        # Backends with items, and those of pools that spooled routes send to (a sender
        # exists for every backend, HTTP-only ones included: they are left out).
        runtime = spool.runtime()
        spooled_pools = {
            pool.name
            for route in runtime.snapshot.routes
            if route.ack is Ack.SPOOL
            for pool in (route.pool, *route.mirror)
        }
        shown = set(stats.by_backend) | {
            b.name
            for name, pool in runtime.pools.items()
            if name in spooled_pools
            for b in pool.backends
        }
        for name in sorted(shown):
            entry: dict[str, Any] = {str(s): 0 for s in ItemState}
            entry.update(stats.by_backend.get(name, {}))
            sender = senders.get(name)
            if sender is not None:
                entry["breaker"] = sender.breaker.state.value
                entry["inflight"] = sender.inflight
                down = sender.down_since
                entry["down_seconds"] = None if down is None else round(max(wall - down, 0), 1)
            backends[name] = entry
        usage = spool.usage()
        refusal = spool.refusal()
        config = spool.config
        summary: dict[str, Any] = {
            "directory": str(config.directory),
            "by_state": by_state,
            "items": usage.items,  # undelivered: what max_items limits
            "bytes": stats.bytes,
            "dead": by_state.get("dead", 0),
            "oldest_pending_at": stats.oldest_pending_at,
            "oldest_age_seconds": (
                None
                if stats.oldest_pending_at is None
                else round(max(wall - stats.oldest_pending_at, 0.0), 3)
            ),
            "accepting": refusal is None,
            "refusal": refusal,
            "free_disk": usage.free_disk,
            "limits": {
                "max_items": config.max_items,
                "max_bytes": config.max_bytes,
                "min_free_disk": config.min_free_disk,
                "max_attempts": config.retry.max_attempts,
                "max_age": config.retry.max_age,
            },
            "backends": backends,
            "dispatcher": dispatcher_state(spool),
            "dead_letters": [item_dict(item) for item in dead],
        }
        self._summary, self._summary_at = summary, now
        self.metrics.spool_state = summary
        return summary

    @staticmethod
    def _read(store: SpoolStore) -> tuple[ops.Stats, list[Item]]:
        dead = ops.list_items(store, states=[ItemState.DEAD], limit=DEAD_LETTERS)
        return ops.stats(store), dead

    async def items(
        self,
        *,
        states: Sequence[ItemState] = (),
        backend: str | None = None,
        study: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Items, oldest first, filtered as `dicomlb spool ls` does."""
        store = await self._opened()
        found = await asyncio.to_thread(
            ops.list_items,
            store,
            states=states,
            backend=backend,
            study=study,
            limit=max(1, min(limit, MAX_LIMIT)),
        )
        return [item_dict(item) for item in found]

    async def item(self, item_id: int) -> dict[str, Any]:
        """One item; raises ops.OperationError when there is none."""
        store = await self._opened()
        return item_dict(await asyncio.to_thread(ops.show, store, item_id))

    # -------------------------------------------------------- changing

    async def retry(self, ids: Sequence[int] = (), *, all_dead: bool = False) -> int:
        """Queue dead (or kept delivered) items again with fresh attempts; how many."""
        store = await self._opened()
        queued = await asyncio.to_thread(ops.retry, store, ids, all_dead=all_dead)
        for sender in self.spool.dispatcher.senders.values():
            sender.wake()  # claim now rather than at the next idle poll
        self.metrics.spool_operations.labels("retry").inc(queued)
        self._summary = None
        return queued

    async def purge(self, ids: Sequence[int] = (), *, states: Sequence[ItemState] = ()) -> int:
        """Delete items (by id, or every item in `states`) and their files; how many."""
        store = await self._opened()
        removed = await asyncio.to_thread(ops.purge, store, ids, states=states)
        counts = await asyncio.to_thread(store.counts)
        # The limits are checked against these: freed room counts at once, not at the
        # dispatcher's next recount.
        self.spool.items, self.spool.bytes = counts.items, counts.bytes
        self.metrics.spool_operations.labels("purge").inc(removed)
        self._summary = None
        return removed
