"""Operations on a spool: list, show, retry, purge (the CLI; the admin API will reuse them).

They open the index beside a running balancer (SQLite WAL: readers and one writer at a
time) and touch no file that the balancer may be writing: a retried item is picked up by
the running dispatcher within a second; purged items are gone from disk and index.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomlb.spool.state import ItemState
from dicomlb.spool.store import INDEX, Change, Item, SpoolStore


class OperationError(ValueError):
    """An operation that cannot be done as asked; the text says why and what to do."""


@contextmanager
def opened(directory: str) -> Iterator[SpoolStore]:
    """The spool at `directory`, opened without crash recovery (the balancer may run)."""
    store = SpoolStore(directory)
    store.open(recover=False)
    try:
        yield store
    finally:
        store.close()


_PART = re.compile(r"worker-\d+")


def holding(directory: str) -> dict[str, int]:
    """Items not delivered (queued, sending, dead) in the spool directory itself ("") and in
    each worker's part of it (`worker-K`), for those that have an index."""
    base = Path(directory)
    parts = {"": base, **{p.name: p for p in base.glob("worker-*") if _PART.fullmatch(p.name)}}
    found: dict[str, int] = {}
    for part, path in parts.items():
        if (path / INDEX).exists():
            with opened(str(path)) as store:
                by_state = store.by_state()
            found[part] = sum(n for state, n in by_state.items() if state != ItemState.DELIVERED)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    by_state: dict[str, int]
    bytes: int


def summary(store: SpoolStore) -> Summary:
    return Summary(by_state=store.by_state(), bytes=store.counts().bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Counts for the control plane: items by backend and state, bytes, the oldest wait."""

    by_backend: dict[str, dict[str, int]]  # backend -> state -> items
    bytes: int
    oldest_pending_at: float | None  # created_at of the oldest queued or sending item


def stats(store: SpoolStore) -> Stats:
    """Index counts the admin listener shows and exports (state and backend are indexed)."""
    return Stats(
        by_backend=store.by_backend(),
        bytes=store.counts().bytes,
        oldest_pending_at=store.oldest_pending(),
    )


def list_items(
    store: SpoolStore,
    *,
    states: Sequence[ItemState] = (),
    backend: str | None = None,
    study: str | None = None,
    limit: int = 100,
) -> list[Item]:
    """Items, oldest first, filtered by state, backend and study."""
    return store.items(states=states, backend=backend, study=study, limit=limit)


def show(store: SpoolStore, item_id: int) -> Item:
    item = store.item(item_id)
    if item is None:
        raise OperationError(f"no spooled item {item_id}; `dicomlb spool ls` lists them")
    return item


def retry(
    store: SpoolStore, ids: Sequence[int] = (), *, all_dead: bool = False, now: float | None = None
) -> int:
    """Queue dead items again with a fresh attempt count (by id, or every dead item); the
    number queued. Items still on disk only: a delivered item whose file is gone cannot be."""
    if not ids and not all_dead:
        raise OperationError("name the items to retry, or use --dead for every dead item")
    stamp = time.time() if now is None else now
    changes = Change.retry(ids, stamp) if ids else [Change.retry_dead(stamp)]
    return sum(store.execute(changes))


def purge(
    store: SpoolStore,
    ids: Sequence[int] = (),
    *,
    states: Sequence[ItemState] = (),
) -> int:
    """Delete items (by id, or every item in `states`) and their files; the number removed.

    Queued items can be purged only by id, and items being sent never: stop the balancer or
    wait for the attempt to end."""
    if not ids and not states:
        raise OperationError("name the items to purge, or a state: --dead or --delivered")
    if ItemState.SENDING in states or (ItemState.QUEUED in states and not ids):
        raise OperationError(
            "purging every queued item drops images not yet delivered; name them by id"
        )
    return store.purge(ids, states)


def describe_item(item: Item) -> str:
    """Every field of an item, one per line, for `dicomlb spool show`."""
    lines = []
    for name in Item.__slots__:
        value = getattr(item, name)
        if name.endswith("_at") and isinstance(value, float):
            value = f"{_when(value)} ({value:.3f})"
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def row(item: Item) -> str:
    """One line per item for `dicomlb spool ls`."""
    error = f"  {item.last_error}" if item.last_error else ""
    mirror = " mirror" if item.mirror else ""
    return (
        f"{item.id:>7}  {item.state:<9}  {item.backend:<12}  {item.attempts:>3}  "
        f"{_when(item.created_at)}  {item.sop_instance_uid}{mirror}{error}"
    )


HEADER = f"{'id':>7}  {'state':<9}  {'backend':<12}  {'try':>3}  {'created (UTC)':<19}  sop"


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
