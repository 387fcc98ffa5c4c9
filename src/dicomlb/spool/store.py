"""The spool on disk: Part-10 files in `data/`, an SQLite index, and group commit.

Layout of `spool.directory`::

    index.sqlite3   the index (WAL mode): one row per item (an instance for one pool)
    tmp/            files being written, and delivered files waiting to be overwritten by
                    new ones (`*.free`); whatever is here at start is removed
    data/           complete, fsynced files, `<uuid>.dcm` (mirror copies are hard links,
                    `<uuid>.<k>.dcm`)

An instance becomes safe in this order, and only then is Success sent (DESIGN decision 6):
write to `tmp/`, fsync the file, rename it into `data/` (hard-link mirror copies), fsync
`data/`, insert the index rows. The file is the record: its file meta carries what its
rows hold (Private Information: route, study, each copy's pool and backend; the AE titles;
the UIDs), and only complete, fsynced files ever enter `data/`. So the rows' commit need
not reach the disk before Success (synchronous=NORMAL: it survives a crash of the process,
not of the machine): a file in `data/` without a row — the machine stopped before the
index's WAL was written out — gets its rows back from its file meta at start. Concurrent
writers share one batch: while a batch is being made durable the next one gathers, so the
directory fsync and the index commit are paid once per batch, not once per instance.

An instance's bytes are written on the event loop as they arrive: a write lands in the
page cache (tens of microseconds for SPILL_AT bytes), which costs less than handing it to a
thread and back. What waits for the disk (fsync, the index) runs on threads: the group
committer's for its batch, placer threads for files that arrive while a batch is in flight.
The query and maintenance methods block too; the asyncio side calls them through
`asyncio.to_thread`. One lock serialises use of the SQLite connection across threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from dicomlb.dicom.part10 import read_file_meta
from dicomlb.spool.state import (
    PURGEABLE,
    ItemState,
    check_purge,
    check_transition,
    restart_delay,
)
from dicomlb.spool.supervisor import Supervisor

log = logging.getLogger(__name__)

INDEX = "index.sqlite3"
OWNER_LOCK = "owner.lock"  # flock'ed by the running balancer that owns the directory
SPILL_AT = 256 << 10  # bytes gathered in memory before they go to the temp file
KEEP_MAX = 1 << 20  # instances up to this size also stay in memory for their senders
SYNC_FILE_RANGE_WRITE = 2  # sync_file_range(2): start writeback, do not wait
PLACERS = 8  # threads fsyncing the files of one batch in parallel
LINGER = 0.01  # seconds bookkeeping-only updates wait to share a batch
LINGER_JOBS = 512  # ...unless this many are waiting
RECYCLE_FILES = 16  # delivered files kept in tmp/ to be overwritten by new instances...
RECYCLE_SIZE = 4 << 20  # ...when no larger than this
REFUSED_BASE = 0.1  # seconds before bookkeeping the disk refused is tried again...
REFUSED_CAP = 5.0  # ...doubling up to this while the disk keeps refusing
STOP_WAIT = 5.0  # seconds stop() waits for pending bookkeeping
META_READ = 64 << 10  # bytes read to find a file's meta group at recovery
SOURCE_AE = 0x00020016
RECEIVING_AE = 0x00020018
SOP_CLASS = 0x00020002
SOP_INSTANCE = 0x00020003
TRANSFER_SYNTAX = 0x00020010

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,               -- name in data/; '' once the file is removed
    state TEXT NOT NULL,              -- queued | sending | delivered | dead
    route TEXT NOT NULL,
    pool TEXT NOT NULL,
    backend TEXT NOT NULL,            -- chosen at spool time, kept for the study
    mirror INTEGER NOT NULL,          -- 1: a mirror copy (route's mirror pools)
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    calling_aet TEXT NOT NULL,        -- the sender's AE title, kept toward the backend
    called_aet TEXT NOT NULL,         -- the AE title the sender called
    size INTEGER NOT NULL,            -- bytes of the Part-10 file
    dataset_offset INTEGER NOT NULL,  -- where the data set starts in the file
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL,    -- wall clock (time.time())
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS items_due ON items (state, backend, next_attempt_at);
CREATE INDEX IF NOT EXISTS items_study ON items (pool, study_uid, state);
"""

_COLUMNS = (
    "id, file, state, route, pool, backend, mirror, study_uid, sop_class_uid, "
    "sop_instance_uid, transfer_syntax, calling_aet, called_aet, size, dataset_offset, "
    "attempts, last_error, next_attempt_at, created_at, updated_at, delivered_at"
)
_NAMES = tuple(_COLUMNS.split(", "))
_NEXT_ATTEMPT_AT, _ID = _NAMES.index("next_attempt_at"), _NAMES.index("id")
# The columns a new row is inserted with (the others keep their defaults).
_INSERTED = tuple(n for n in _NAMES if n not in ("id", "attempts", "last_error", "delivered_at"))
_INSERT = f"INSERT INTO items ({', '.join(_INSERTED)}) VALUES ({', '.join('?' * len(_INSERTED))})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One row of the index: an instance on its way to one pool's backend."""

    id: int
    file: str
    state: ItemState
    route: str
    pool: str
    backend: str
    mirror: bool
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    size: int
    dataset_offset: int
    attempts: int
    last_error: str
    next_attempt_at: float
    created_at: float
    updated_at: float
    delivered_at: float | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Item:
        values = dict(zip(_NAMES, row, strict=True))
        values["state"] = ItemState(values["state"])
        values["mirror"] = bool(values["mirror"])
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where one copy of an ingested instance goes."""

    route: str
    pool: str
    backend: str
    mirror: bool = False
    sending: bool = False  # handed straight to its backend's sender: inserted as 'sending'


def record(study: str, targets: Sequence[Target]) -> bytes:
    """What a spool file carries in its file meta (Private Information) so that its index
    rows can be made again from the file alone: the study and each copy's route, pool,
    backend (the k-th copy is the file `<uuid>.<k>.dcm`, the first `<uuid>.dcm`)."""
    copies = [
        {"route": t.route, "pool": t.pool, "backend": t.backend, "mirror": t.mirror}
        for t in targets
    ]
    return json.dumps({"study": study, "copies": copies}, separators=(",", ":")).encode()


@dataclass(slots=True, kw_only=True)
class Instance:
    """An instance being ingested: its facts and its bytes, gathered in memory and written to
    a temp file every SPILL_AT bytes (writeback starts at once, so the final fsync has little
    left to wait for); up to KEEP_MAX a copy stays in `keep` for the senders. Once complete
    its copies are named (`names`); it enters data/ under them once fsynced."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    calling_aet: str
    called_aet: str
    dataset_offset: int
    parts: list[bytes | memoryview] = field(default_factory=list)
    keep: list[bytes | memoryview] | None = field(default_factory=list)
    buffered: int = 0
    size: int = 0
    spill_path: str | None = None  # plain strings on this path: pathlib costs per call
    stem: str = ""  # the file's name in tmp/ and data/, without suffix
    spill_fd: int | None = None
    recycled: int = -1  # the temp file is a delivered file of this size, being overwritten
    names: list[str] = field(default_factory=list)  # in data/, once complete
    committing: bool = False  # handed to the group committer


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    items: int  # queued + sending + dead: what max_items limits
    bytes: int  # bytes of files still on disk: what max_bytes limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What opening the spool found after the previous run."""

    requeued: int  # 'sending' when the previous run stopped
    queued: int  # undelivered items, to be sent
    partial_files: int  # temp files of instances never acknowledged: removed
    reindexed_files: int  # files in data/ whose rows were lost (machine crash): rows again
    orphan_files: int  # files in data/ without rows nor dicomlb's record in them: removed
    missing_files: int  # index rows whose file is gone: made dead


# -------------------------------------------------------- state changes (pure)
#
# Every change of an item's row is one of the named operations below. Each checks its move
# against state.TRANSITIONS before any SQL is made (a move not there raises TransitionError:
# a bug), and names the state it expects in its WHERE clause, so a change made meanwhile by
# someone else (a sweep, the CLI, a stop) is never overwritten: the rows it changed say
# whether it applied. They are statements, run by `SpoolStore.update` / `update_soon` (in
# the group commit's batch) or `execute` (at once, for operations beside the balancer).


@dataclass(frozen=True, slots=True)
class Change:
    """One statement of a named state change; `item` when it concerns one item."""

    operation: str
    sql: str
    params: tuple[Any, ...]
    item: int | None = None

    @classmethod
    def claim(cls, backend: str, now: float, limit: int) -> Change:
        """A sender takes up to `limit` queued items of `backend` that are due, earliest
        first: one statement, which returns the rows it took (in no particular order)."""
        frm, to = _move(ItemState.QUEUED, ItemState.SENDING)
        return cls(
            "claim",
            "UPDATE items SET state=?, updated_at=? WHERE id IN (SELECT id FROM items "
            "WHERE state=? AND backend=? AND next_attempt_at<=? ORDER BY next_attempt_at, id "
            f"LIMIT ?) AND state=? RETURNING {_COLUMNS}",
            (to, now, frm, backend, now, limit, frm),
        )

    @classmethod
    def requeue(cls, item_id: int) -> Change:
        """Give an item being sent back to the queue, no attempt counted (the backend, not the
        item, was the problem; or the sender let it go unsent)."""
        frm, to = _move(ItemState.SENDING, ItemState.QUEUED)
        return cls(
            "requeue",
            "UPDATE items SET state=? WHERE id=? AND state=?",
            (to, item_id, frm),
            item_id,
        )

    @classmethod
    def requeue_sending(cls) -> Change:
        """Every item being sent back to the queue: the senders stopped (or the process did)."""
        frm, to = _move(ItemState.SENDING, ItemState.QUEUED)
        return cls("requeue_sending", "UPDATE items SET state=? WHERE state=?", (to, frm))

    @classmethod
    def deliver(cls, item_id: int, now: float, *, file: str) -> Change:
        """The backend stored the item; `file` its name when kept (retention), else ''."""
        frm, to = _move(ItemState.SENDING, ItemState.DELIVERED)
        return cls(
            "deliver",
            "UPDATE items SET state=?, attempts=attempts+1, last_error='', delivered_at=?, "
            "updated_at=?, file=? WHERE id=? AND state=?",
            (to, now, now, file, item_id, frm),
            item_id,
        )

    @classmethod
    def fail(
        cls, item_id: int, *, attempts: int, reason: str, next_attempt_at: float, now: float
    ) -> Change:
        """A failed attempt, to be retried at `next_attempt_at`."""
        frm, to = _move(ItemState.SENDING, ItemState.QUEUED)
        return cls(
            "fail",
            "UPDATE items SET state=?, attempts=?, last_error=?, next_attempt_at=?, updated_at=? "
            "WHERE id=? AND state=?",
            (to, attempts, reason, next_attempt_at, now, item_id, frm),
            item_id,
        )

    @classmethod
    def give_up(
        cls, item_id: int, current: ItemState, *, attempts: int, reason: str, now: float
    ) -> Change:
        """The item is dead: its last allowed attempt failed (`current` sending), or it waited
        past max_age (`current` queued)."""
        frm, to = _move(current, ItemState.DEAD)
        return cls(
            "give_up",
            "UPDATE items SET state=?, attempts=?, last_error=?, updated_at=? "
            "WHERE id=? AND state=?",
            (to, attempts, reason, now, item_id, frm),
            item_id,
        )

    @classmethod
    def retry(cls, ids: Sequence[int], now: float) -> list[Change]:
        """Queue dead or delivered items (by id) again with a fresh attempt count, those still
        on disk (an operator asks)."""
        return [
            cls._retry(current, "id IN " + _marks(ids), tuple(ids), now) for current in _RETRYABLE
        ]

    @classmethod
    def retry_dead(cls, now: float) -> Change:
        """Queue every dead item still on disk again with a fresh attempt count."""
        return cls._retry(ItemState.DEAD, "1", (), now)

    @classmethod
    def expire_file(cls, item_id: int) -> Change:
        """A delivered item's file is removed (retention over); the row stays delivered."""
        return cls(
            "expire_file",
            "UPDATE items SET file='' WHERE id=? AND state=?",
            (item_id, ItemState.DELIVERED.value),
            item_id,
        )

    @classmethod
    def reassign(cls, pool: str, study: str, *, frm: str, to: str, now: float) -> Change:
        """The queued items of a study move from backend `frm` to `to` (failover); the state
        stays queued, and an item a sender took meanwhile stays where it is."""
        return cls(
            "reassign",
            "UPDATE items SET backend=?, updated_at=? WHERE state=? AND backend=? AND pool=? "
            "AND study_uid=?",
            (to, now, ItemState.QUEUED.value, frm, pool, study),
        )

    @classmethod
    def lose_file(cls, name: str, reason: str) -> list[Change]:
        """The file `name` is gone (found at start): its queued items are dead, and no row
        names it any more."""
        frm, to = _move(ItemState.QUEUED, ItemState.DEAD)
        return [
            cls(
                "lose_file",
                "UPDATE items SET state=?, last_error=? WHERE file=? AND state=?",
                (to, reason, name, frm),
            ),
            cls("lose_file", "UPDATE items SET file='' WHERE file=?", (name,)),
        ]

    @classmethod
    def _retry(cls, current: ItemState, where: str, params: tuple[Any, ...], now: float) -> Change:
        frm, to = _move(current, ItemState.QUEUED)
        return cls(
            "retry",
            "UPDATE items SET state=?, attempts=0, next_attempt_at=?, updated_at=?, "
            f"last_error='retry requested' WHERE state=? AND file != '' AND {where}",
            (to, now, now, frm, *params),
        )


_RETRYABLE = (ItemState.DEAD, ItemState.DELIVERED)


def _move(current: ItemState, target: ItemState) -> tuple[str, str]:
    check_transition(current, target)
    return current.value, target.value


def _due_order(row: Sequence[Any]) -> tuple[float, int]:
    return row[_NEXT_ATTEMPT_AT], row[_ID]


def _marks(values: Sequence[object]) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


class _Job:
    __slots__ = (
        "applied",
        "durable",
        "future",
        "instance",
        "now",
        "remove",
        "syncing",
        "targets",
        "updates",
    )

    def __init__(
        self,
        future: asyncio.Future[Any],
        *,
        instance: Instance | None = None,
        targets: Sequence[Target] = (),
        now: float = 0.0,
        updates: Sequence[Change] = (),
        durable: bool = False,
        remove: Sequence[str] = (),
    ) -> None:
        self.remove = remove
        self.applied: list[int] = []  # rows each update changed, once committed
        self.future = future
        self.instance = instance
        self.targets = targets
        self.now = now
        self.updates = updates
        self.durable = durable
        self.syncing: Future[None] | None = None


class SpoolBusy(RuntimeError):
    """Another running balancer owns the spool directory; the text says which and what to
    do."""


class SpoolStore:
    """Files and index of one spool directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.tmp = self.directory / "tmp"
        self._data, self._tmp = str(self.data), str(self.tmp)
        self._lock = threading.Lock()
        # One thread makes the batches durable: the same thread each time, so the loop's
        # hand-offs do not wake a different idle worker (each wake and GIL hand-over costs).
        self._committer_thread = ThreadPoolExecutor(1, thread_name_prefix="spool-commit")
        self._placers = ThreadPoolExecutor(PLACERS, thread_name_prefix="spool-place")
        # Delivered files that cannot be recycled are unlinked here, after their commit and
        # off its path: on this ext4 (mounted with discard) an unlink costs about as much as
        # the commit itself.
        self._remover = ThreadPoolExecutor(1, thread_name_prefix="spool-remove")
        # Delivered files to overwrite: their blocks are allocated and their pages cached, so
        # writing and fsyncing a new instance there costs less than a new file (CT on this
        # VM: write 0.22 -> 0.08 ms, fsync 0.43 -> 0.31 ms, unlink 0.22 -> rename 0.01 ms).
        self._free: collections.deque[tuple[str, int]] = collections.deque()  # (path, size)
        self._busy = False  # a batch is being made durable (the next one gathers)
        self._db: sqlite3.Connection | None = None
        self._synchronous = ""  # the index connection's PRAGMA synchronous, once set
        self._data_fd: int | None = None  # data/, kept open for its fsyncs
        self._owner_fd: int | None = None  # OWNER_LOCK, locked while this process owns it
        self._jobs: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, from `start`
        self._lingering = False  # the committer lets bookkeeping gather (LINGER)
        self._supervisor: Supervisor | None = None
        self._committer: str | None = None  # the committer's name in the supervisor
        self.batches = 0  # group commits so far (for tests and the bench)
        self.committed = 0  # instances made durable so far

    # -------------------------------------------------------- opening

    def open(self, *, recover: bool = True) -> Recovery | None:
        """Create or open the directory and index; with `recover`, clean up after a crash.

        `recover=False` is for operations (CLI) beside a running balancer: it touches no file.
        With `recover` the process becomes the directory's owner (raises SpoolBusy when a
        running one is), until `close` or its end.
        """
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        if recover:
            self._take_ownership()
        db = sqlite3.connect(
            self.directory / INDEX, check_same_thread=False, isolation_level=None, timeout=30
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        self._db = db
        self._data_fd = os.open(self.data, os.O_RDONLY | os.O_DIRECTORY)
        return self._recover() if recover else None

    def _take_ownership(self) -> None:
        """flock OWNER_LOCK: one balancer per spool directory. The kernel drops the lock
        when the owner ends, however it ends (kill -9 included), so the next instance
        started on the directory takes it over and delivers what it holds."""
        path = self.directory / OWNER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise SpoolBusy(
                f"spool directory {self.directory} is owned by another running dicomlb "
                f"({holder}); give each instance its own spool directory (volume)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._owner_fd = fd

    def close(self) -> None:
        self._committer_thread.shutdown(wait=True)
        self._placers.shutdown(wait=True)
        self._remover.shutdown(wait=True)
        while self._free:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._free.popleft()[0])
        if self._data_fd is not None:
            os.close(self._data_fd)
            self._data_fd = None
        if self._owner_fd is not None:  # closing it releases the lock
            os.close(self._owner_fd)
            self._owner_fd = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the spool index is not open")
        return self._db

    def _begin(self, synchronous: str) -> sqlite3.Connection:
        """(holding the lock) Start a write transaction; `synchronous` FULL when its commit
        must be on disk before it returns, NORMAL when losing it only means work again."""
        db = self.db
        if synchronous != self._synchronous:
            db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        db.execute("BEGIN IMMEDIATE")
        return db

    def _recover(self) -> Recovery:
        partial = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)  # never acknowledged: discard, never send
            partial += leftover.suffix != ".free"  # (a delivered file kept for reuse)
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            requeued = _run(db, Change.requeue_sending())
            known = {name for (name,) in db.execute("SELECT file FROM items WHERE file != ''")}
            on_disk = {p.name for p in self.data.iterdir()}
            missing = known - on_disk
            for name in missing:
                for change in Change.lose_file(name, "spool file missing at start"):
                    _run(db, change)
            reindexed, orphans = self._reindex(on_disk - known)
            (queued,) = db.execute("SELECT count(*) FROM items WHERE state='queued'").fetchone()
            db.execute("COMMIT")
        for name in orphans:
            (self.data / name).unlink(missing_ok=True)
        if partial or orphans:
            self._fsync_data()
        return Recovery(
            requeued=requeued,
            queued=queued,
            partial_files=partial,
            reindexed_files=reindexed,
            orphan_files=len(orphans),
            missing_files=len(missing),
        )

    def _reindex(self, names: Iterable[str]) -> tuple[int, list[str]]:
        """(in the recovery transaction) Rows again, queued, for files in data/ that have
        none, from the record in their file meta; the number of files taken back, and the
        names to remove (no record of dicomlb's, or a copy the record does not list)."""
        copies: dict[str, list[str]] = collections.defaultdict(list)
        for name in names:
            copies[name.split(".", 1)[0]].append(name)
        taken, remove = 0, []
        for stem, group in sorted(copies.items()):
            try:
                with open(self.data / group[0], "rb") as handle:
                    meta = read_file_meta(handle.read(META_READ))
                    stat = os.fstat(handle.fileno())
                record = json.loads(meta.private_information() or b"null")
                study, targets = record["study"], [Target(**copy) for copy in record["copies"]]
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("spool.orphan_removed files=%s reason=%r", ",".join(group), str(err))
                remove.extend(group)
                continue
            instance = Instance(
                sop_class_uid=meta.text(SOP_CLASS),
                sop_instance_uid=meta.text(SOP_INSTANCE),
                transfer_syntax=meta.text(TRANSFER_SYNTAX),
                study_uid=study,
                calling_aet=meta.text(SOURCE_AE),
                called_aet=meta.text(RECEIVING_AE),
                dataset_offset=meta.dataset_offset,
                size=stat.st_size,
            )
            for k, target in enumerate(targets):
                name = f"{stem}.dcm" if k == 0 else f"{stem}.{k}.dcm"
                if name in group:
                    self._insert_row(name, target, instance, stat.st_mtime, queued=True)
            remove.extend(name for name in group if not _copy_listed(name, len(targets)))
            taken += 1
            log.warning(
                "spool.reindexed sop_instance_uid=%s files=%s",
                instance.sop_instance_uid,
                ",".join(sorted(group)),
            )
        return taken, remove

    # -------------------------------------------------------- ingest (async side)

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the group committer (on the running loop), under `supervisor`."""
        self._wake = asyncio.Event()
        # Taken once: asyncio.get_running_loop() costs a getpid() system call per call.
        self._loop = asyncio.get_running_loop()
        self._supervisor = supervisor or Supervisor()
        self._committer = self._supervisor.spawn(self._commit_loop, kind="committer")

    async def stop(self) -> None:
        """Commit what is pending (for STOP_WAIT at most: a full disk may refuse it; what is
        lost is done again at the next start), stop the committer, close the index."""
        if self._committer is not None and self._jobs:
            try:
                await asyncio.wait_for(self.update([], durable=True), STOP_WAIT)
            except TimeoutError:
                log.error(
                    "spool.stop_unsaved updates=%d reason=%r",
                    len(self._jobs),
                    "the index refused writes; items being sent are queued again at start",
                )
        if self._committer is not None:
            assert self._supervisor is not None
            await self._supervisor.stop([self._committer])
            self._committer = None
        await asyncio.to_thread(self.close)

    def add_part(self, instance: Instance, data: bytes | memoryview) -> None:
        """Append data-set bytes; past SPILL_AT they go to the instance's temp file (OSError
        if they cannot). A view of immutable bytes (a received PDU's) is kept as it is: a
        copy would cost a memcpy of every instance; only a view of a buffer that may change
        is copied."""
        piece = data if isinstance(data, bytes) or isinstance(data.obj, bytes) else bytes(data)
        instance.parts.append(piece)
        instance.buffered += len(piece)
        instance.size += len(piece)
        if instance.keep is not None:
            if instance.size <= KEEP_MAX:
                instance.keep.append(piece)
            else:
                instance.keep = None
        if instance.buffered >= SPILL_AT:
            self._spill(instance)

    async def discard(self, instance: Instance) -> None:
        """Drop an instance that will not be acknowledged (the client went away)."""
        if instance.spill_path is not None or instance.names:
            await asyncio.to_thread(self._remove_spill, instance)

    async def commit(self, instance: Instance, targets: Sequence[Target], now: float) -> list[Item]:
        """Make `instance` durable with one index row per target; the rows. Returns only once
        the file and `data/` are on disk and the rows written (the file is their record);
        raises OSError / sqlite3.Error if not."""
        future: asyncio.Future[list[Item]] = self._running_loop().create_future()
        self._place(instance, len(targets))
        instance.committing = True
        job = _Job(future, instance=instance, targets=targets, now=now, durable=True)
        if self._busy:
            # The fsync starts now on a placer thread, while the previous batch commits and
            # this one gathers. An idle committer syncs the file itself: one thread hand-off
            # less for a lone sender.
            job.syncing = self._placers.submit(_sync, instance, self._data)
        self._submit(job)
        return await future

    async def update(
        self,
        changes: Sequence[Change],
        *,
        durable: bool = False,
        remove: Sequence[str] = (),
    ) -> list[int]:
        """Run state changes in the next batch (shared commit), in order; the rows each
        changed (0: it did not apply). Then remove the files named in `remove`, when every
        change applied (a delivered item's file goes only once its row says delivered)."""
        future: asyncio.Future[list[int]] = self._running_loop().create_future()
        self._submit(_Job(future, updates=changes, durable=durable, remove=remove))
        return await future

    def update_soon(self, changes: Sequence[Change], *, remove: Sequence[str] = ()) -> None:
        """Like `update`, without waiting: for outcomes whose loss only means sending again
        (delivered, back to queued). They ride along with the next batch, or after LINGER."""
        future: asyncio.Future[list[int]] = self._running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._submit(_Job(future, updates=changes, remove=remove))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the spool store is not started")
        return self._loop

    def _submit(self, job: _Job) -> None:
        if self._wake is None:
            raise RuntimeError("the spool store is not started")
        self._jobs.append(job)
        if self._lingering and not job.durable and len(self._jobs) < LINGER_JOBS:
            return  # the committer's linger ends soon: this rides with it
        self._wake.set()

    async def _commit_loop(self) -> None:
        assert self._wake is not None
        loop = self._running_loop()
        refused = 0  # consecutive batches the disk refused
        if self._jobs:  # restarted by the supervisor: work may be waiting
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not any(job.durable for job in self._jobs) and len(self._jobs) < LINGER_JOBS:
                # Only bookkeeping so far: let it gather (or ride with the next ingest). One
                # timed wait, woken early only by a durable job or a full batch (`_submit`),
                # not by every piece of bookkeeping.
                self._lingering = True
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LINGER):
                            await self._wake.wait()
                finally:
                    self._lingering = False
                self._wake.clear()
            batch, self._jobs = self._jobs, []
            if not batch:
                continue
            self._busy = True
            refusal: float | None = None
            try:
                results = await loop.run_in_executor(
                    self._committer_thread, self._commit_batch, batch
                )
            except (OSError, sqlite3.OperationalError) as err:
                # The disk refused (full, I/O error): nobody gets Success, and the
                # bookkeeping (an item back to queued, delivered, failed) is kept, in order,
                # and tried again: dropped, it would leave its item 'sending' for good.
                refused += 1
                refusal = self._refused(batch, err, refused)
            except Exception as err:  # the whole batch failed: nobody gets Success
                log.error("spool.commit_failed items=%d reason=%r", len(batch), str(err))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                self._tidy(batch)
                continue
            finally:
                self._busy = False
            if refusal is not None:
                await asyncio.sleep(refusal)  # new work waits too: the disk is the problem
                self._wake.set()
                continue
            refused = 0
            for job, result in zip(batch, results, strict=True):
                if job.future.done() or job.remove:
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(job.applied if job.instance is None else result)
            # After the writers that wait for this batch have resumed: Success goes first.
            loop.call_soon(self._tidy, batch)

    def _refused(self, batch: list[_Job], err: BaseException, refused: int) -> float:
        """A batch the disk refused: its ingests fail, its bookkeeping is kept for a retry;
        the seconds to wait before it."""
        ingests = [job for job in batch if job.instance is not None]
        kept = [job for job in batch if job.instance is None and not job.future.done()]
        for job in ingests:
            if not job.future.done():
                job.future.set_exception(err)
        self._tidy(ingests)
        self._jobs[:0] = kept
        delay = restart_delay(refused, base=REFUSED_BASE, cap=REFUSED_CAP)
        log.error(
            "spool.commit_failed items=%d updates_kept=%d retry_in=%.1fs reason=%r",
            len(ingests),
            len(kept),
            delay,
            str(err),
        )
        return delay

    def _tidy(self, batch: list[_Job]) -> None:
        """After a batch: close its files, recycle or unlink the files it marked delivered.
        Cheap steps stay on the loop: on the committer thread each would cost a GIL
        hand-over, dearer than the step itself."""
        for job in batch:
            if job.instance is not None and job.instance.spill_fd is not None:
                os.close(job.instance.spill_fd)
                job.instance.spill_fd = None
        removing = [job for job in batch if job.remove and not job.future.done()]
        # A change that did not apply (the item moved meanwhile) keeps its file.
        unlink = self._recycle(name for job in removing if all(job.applied) for name in job.remove)
        if unlink:
            removed = asyncio.wrap_future(
                self._remover.submit(self.remove_files, unlink), loop=self._loop
            )
            removed.add_done_callback(functools.partial(_removed, removing))
        else:
            for job in removing:
                job.future.set_result(job.applied)

    # -------------------------------------------------------- ingest (disk side, threads)

    def _open_temp(self, instance: Instance) -> None:
        """The instance's temp file: a delivered file to overwrite if one is
        kept, else a new one. Either way it is in tmp/ until complete and fsynced."""
        instance.stem = uuid.uuid4().hex
        path = f"{self._tmp}/{instance.stem}.part"
        with contextlib.suppress(IndexError, OSError):
            free, size = self._free.popleft()
            os.rename(free, path)
            instance.spill_fd = os.open(path, os.O_WRONLY)
            instance.spill_path = path
            instance.recycled = size
            return
        instance.spill_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        instance.spill_path = path

    def _recycle(self, names: Iterable[str]) -> list[str]:
        """Keep delivered files to be overwritten, up to RECYCLE_FILES; the
        names left to unlink. Only a file with no other link is kept: a mirror copy (hard
        link) may still be waiting to be sent."""
        unlink = []
        for name in names:
            if not name:
                continue
            path = f"{self._data}/{name}"
            try:
                stat = os.stat(path)
                if (
                    stat.st_nlink == 1
                    and stat.st_size <= RECYCLE_SIZE
                    and len(self._free) < RECYCLE_FILES
                ):
                    free = f"{self._tmp}/{uuid.uuid4().hex}.free"
                    os.rename(path, free)
                    self._free.append((free, stat.st_size))
                    continue
            except OSError:
                pass
            unlink.append(name)
        return unlink

    def _spill(self, instance: Instance) -> None:
        """Write the gathered bytes to the temp file and start their writeback."""
        if instance.spill_fd is None:
            self._open_temp(instance)
            assert instance.spill_fd is not None
        _write_all(instance.spill_fd, instance.parts)
        instance.parts, instance.buffered = [], 0
        if _sync_file_range is not None:
            _sync_file_range(instance.spill_fd, 0, 0, SYNC_FILE_RANGE_WRITE)

    def _commit_batch(self, batch: list[_Job]) -> list[Any]:
        """One group commit: files fsynced, `data/` fsynced once, one index transaction.
        Per-job results: row ids, None, or the exception of that job. The files of the
        jobs' `remove` are the caller's to remove, after."""
        results: list[Any] = [None] * len(batch)
        placed: dict[int, list[str]] = {}
        ingests = [(n, job) for n, job in enumerate(batch) if job.instance is not None]
        # A file handed to a placer thread when its last byte came (a batch was in flight)
        # is waited for; the others are synced now, in parallel when there are several (the
        # disk merges the flushes), the last one on this thread.
        unsynced = [job for _, job in ingests if job.syncing is None]
        for job in unsynced[:-1]:
            assert job.instance is not None
            job.syncing = self._placers.submit(_sync, job.instance, self._data)
        for n, job in ingests:
            assert job.instance is not None
            try:
                if job.syncing is None:
                    _sync(job.instance, self._data)
                else:
                    job.syncing.result()
            except OSError as err:
                self._remove_spill(job.instance)
                results[n] = err
            else:
                placed[n] = job.instance.names
        if placed:
            self._fsync_data()
        # Ingested rows need not wait for the disk (their files are the record); explicitly
        # durable bookkeeping does.
        durable = any(job.durable and job.instance is None for job in batch)
        try:
            with self._lock:
                db = self._begin("FULL" if durable else "NORMAL")
                try:
                    for n, job in enumerate(batch):
                        if n in placed:
                            assert job.instance is not None
                            results[n] = self._insert(job, placed[n])
                        job.applied = [_run(db, change) for change in job.updates]
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
        except BaseException:
            for names in placed.values():
                for name in names:
                    (self.data / name).unlink(missing_ok=True)
            raise
        self.batches += 1
        self.committed += len(placed)
        return results

    def _fsync_data(self) -> None:
        assert self._data_fd is not None
        os.fsync(self._data_fd)

    def _place(self, instance: Instance, copies: int) -> None:
        """Write the rest and name the file's copies in data/; `_sync` moves it there."""
        if instance.spill_fd is None:
            self._open_temp(instance)
        assert instance.spill_fd is not None and instance.spill_path is not None
        fd, stem = instance.spill_fd, instance.stem
        _write_all(fd, instance.parts)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        # A delivered file's leftover bytes are cut; an equal size (a series of one
        # geometry) changes no metadata, which keeps the fsync cheap.
        if end < instance.recycled:
            os.ftruncate(fd, end)
        instance.names = [f"{stem}.dcm"] + [f"{stem}.{k}.dcm" for k in range(1, copies)]

    def _remove_spill(self, instance: Instance) -> None:
        """Remove an unacknowledged instance's files, temp or placed."""
        if instance.spill_fd is not None:
            os.close(instance.spill_fd)
            instance.spill_fd = None
        if instance.spill_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(instance.spill_path)
            instance.spill_path = None
        for name in instance.names:
            (self.data / name).unlink(missing_ok=True)
        instance.names = []

    def _insert(self, job: _Job, names: list[str]) -> list[Item]:
        instance = job.instance
        assert instance is not None
        return [
            self._insert_row(name, target, instance, job.now)
            for target, name in zip(job.targets, names, strict=True)
        ]

    def _insert_row(
        self, name: str, target: Target, instance: Instance, now: float, *, queued: bool = False
    ) -> Item:
        """(holding the lock, in a transaction) The index row of one copy of an instance."""
        state = ItemState.SENDING if target.sending and not queued else ItemState.QUEUED
        values: dict[str, Any] = {
            "file": name,
            "state": state,
            "route": target.route,
            "pool": target.pool,
            "backend": target.backend,
            "mirror": target.mirror,
            "study_uid": instance.study_uid,
            "sop_class_uid": instance.sop_class_uid,
            "sop_instance_uid": instance.sop_instance_uid,
            "transfer_syntax": instance.transfer_syntax,
            "calling_aet": instance.calling_aet,
            "called_aet": instance.called_aet,
            "size": instance.size,
            "dataset_offset": instance.dataset_offset,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        cursor = self.db.execute(_INSERT, tuple(values[name] for name in _INSERTED))
        assert cursor.lastrowid is not None
        return Item(id=cursor.lastrowid, attempts=0, last_error="", delivered_at=None, **values)

    # -------------------------------------------------------- queries (threads)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def items(
        self,
        *,
        states: Iterable[ItemState] = (),
        backend: str | None = None,
        study: str | None = None,
        created_before: float | None = None,
        limit: int = -1,
    ) -> list[Item]:
        """Items, oldest first, filtered by state, backend, study and age."""
        parts: list[str] = ["1"]
        params: list[Any] = []
        wanted = [str(s) for s in states]
        if wanted:
            parts.append("state IN " + _marks(wanted))
            params += wanted
        for column, value in (("backend", backend), ("study_uid", study)):
            if value:
                parts.append(f"{column} = ?")
                params.append(value)
        if created_before is not None:
            parts.append("created_at < ?")
            params.append(created_before)
        return self._select(" AND ".join(parts), params, limit)

    def item(self, item_id: int) -> Item | None:
        found = self._select("id = ?", [item_id], 1)
        return found[0] if found else None

    def expired_files(self, before: float) -> list[Item]:
        """Delivered items whose file is still kept and was delivered before `before`."""
        return self._select(
            "state = ? AND file != '' AND delivered_at < ?", [ItemState.DELIVERED.value, before]
        )

    def _select(self, where: str, params: list[Any], limit: int = -1) -> list[Item]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM items WHERE {where} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [Item.from_row(row) for row in rows]

    def by_state(self) -> dict[str, int]:
        """Items in each state."""
        rows = self._query("SELECT state, count(*) FROM items GROUP BY state")
        return {state: int(n) for state, n in rows}

    def by_backend(self) -> dict[str, dict[str, int]]:
        """Items of each backend in each state (both indexed)."""
        counts: dict[str, dict[str, int]] = {}
        for backend, state, n in self._query(
            "SELECT backend, state, count(*) FROM items GROUP BY state, backend"
        ):
            counts.setdefault(backend, {})[state] = int(n)
        return counts

    def oldest_pending(self) -> float | None:
        """created_at of the oldest queued or sending item, if any."""
        (oldest,) = self._query(
            "SELECT min(created_at) FROM items WHERE state IN (?, ?)",
            (ItemState.QUEUED.value, ItemState.SENDING.value),
        )[0]
        return None if oldest is None else float(oldest)

    def pending_studies(self) -> list[tuple[str, str, str]]:
        """(pool, study, backend) of the studies with items queued or being sent."""
        rows = self._query(
            "SELECT pool, study_uid, backend FROM items WHERE state IN (?, ?) "
            "AND study_uid != '' GROUP BY pool, study_uid",
            (ItemState.QUEUED.value, ItemState.SENDING.value),
        )
        return [(pool, study, backend) for pool, study, backend in rows]

    def queued_studies(self, backend: str) -> list[tuple[str, str, int]]:
        """(pool, study, items) of the studies with items queued for `backend`."""
        rows = self._query(
            "SELECT pool, study_uid, count(*) FROM items WHERE state=? AND backend=? "
            "GROUP BY pool, study_uid",
            (ItemState.QUEUED.value, backend),
        )
        return [(pool, study, int(n)) for pool, study, n in rows]

    def execute(self, changes: Iterable[Change]) -> list[int]:
        """Run state changes at once, in one durable transaction; the rows each changed."""
        with self._lock:
            db = self._begin("FULL")
            try:
                applied = [_run(db, change) for change in changes]
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        return applied

    def purge(self, ids: Sequence[int] = (), states: Iterable[ItemState] = ()) -> int:
        """Delete items (those of `ids`, or in `states`, or both) and their files; the number
        deleted. Only items in state.PURGEABLE states are (never one being sent)."""
        allowed = check_purge(frozenset(states) or PURGEABLE)
        wanted = [str(s) for s in allowed]
        where = "state IN " + _marks(wanted)
        params: list[Any] = wanted
        if ids:
            where += " AND id IN " + _marks(ids)
            params = [*params, *ids]
        with self._lock:
            db = self._begin("FULL")
            try:
                files = [f for (f,) in db.execute(f"SELECT file FROM items WHERE {where}", params)]
                removed = db.execute(f"DELETE FROM items WHERE {where}", params).rowcount
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        # Mirror copies are hard links of one another: each name is removed on its own.
        self.remove_files(files)
        return removed

    def claim(self, backend: str, now: float, limit: int) -> list[Item]:
        """Up to `limit` queued items of `backend` that are due, marked sending, earliest
        first."""
        change = Change.claim(backend, now, limit)
        with self._lock:
            db = self._begin("NORMAL")  # losing 'sending' only resends
            try:
                rows = db.execute(change.sql, change.params).fetchall()
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        rows.sort(key=_due_order)
        return [Item.from_row(row) for row in rows]

    def next_due(self, backend: str) -> float | None:
        """When the earliest queued item of `backend` is due, if any."""
        (due,) = self._query(
            "SELECT min(next_attempt_at) FROM items WHERE state=? AND backend=?",
            (ItemState.QUEUED.value, backend),
        )[0]
        return None if due is None else float(due)

    def counts(self) -> Counts:
        (items,) = self._query(
            "SELECT count(*) FROM items WHERE state != ?", (ItemState.DELIVERED.value,)
        )[0]
        (size,) = self._query("SELECT coalesce(sum(size), 0) FROM items WHERE file != ''")[0]
        return Counts(items=int(items), bytes=int(size))

    def read(self, item: Item, offset: int = -1, length: int = -1) -> bytes:
        """Bytes of an item's file, from `offset` (default: the data set's start), `length`
        of them at most (default: to the end the index row says). Three system calls (open,
        pread, close): on a disk thread each one is a GIL hand-over with the loop."""
        start = item.dataset_offset if offset < 0 else offset
        wanted = item.size - start if length < 0 else length
        fd = os.open(f"{self._data}/{item.file}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, max(wanted, 0), start)  # short only at the file's end
        finally:
            os.close(fd)

    def remove_files(self, names: Iterable[str]) -> None:
        for name in names:
            if name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._data}/{name}")

    def free_disk(self) -> int:
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), when libc has it (elsewhere the fsync does it all)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _find_sync_file_range()


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    pending = [memoryview(p) for p in parts if len(p)]
    while pending:
        written = os.writev(fd, pending[:512])
        while written and pending:
            if written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            else:
                pending[0] = pending[0][written:]
                written = 0


def _rollback(db: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite rolls back by itself after some errors (SQLITE_FULL,
    SQLITE_IOERR...): a second ROLLBACK would then raise and hide the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def disk_full(err: BaseException) -> bool:
    """Whether a spool write failed for lack of space (file system or SQLite)."""
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _log_failure(future: asyncio.Future[list[int]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("spool.update_failed reason=%r", str(future.exception()))


def _removed(jobs: list[_Job], removal: asyncio.Future[None]) -> None:
    """The jobs whose files were to go after their commit: done (or why not)."""
    failure = None if removal.cancelled() else removal.exception()
    for job in jobs:
        if job.future.done():
            continue
        if failure is not None:
            job.future.set_exception(failure)
        else:
            job.future.set_result(job.applied)


def _run(db: sqlite3.Connection, change: Change) -> int:
    """(holding the lock, in a transaction) Run one change; the rows it changed. A change
    of one item that finds it in another state than it expects is logged: someone else
    moved it first, and that move stands."""
    changed = db.execute(change.sql, change.params).rowcount
    if not changed and change.item is not None:
        log.info("spool.change_skipped operation=%s item=%d", change.operation, change.item)
    return changed


def _sync(instance: Instance, data: str) -> None:
    """(thread) fsync a placed instance's file, then rename it into data/ and link its other
    copies: only complete files ever enter data/ (the loop closes it after the batch)."""
    assert instance.spill_fd is not None and instance.spill_path is not None
    os.fsync(instance.spill_fd)
    first, *others = instance.names
    os.rename(instance.spill_path, f"{data}/{first}")
    instance.spill_path = None
    for name in others:
        os.link(f"{data}/{first}", f"{data}/{name}")


def _copy_listed(name: str, copies: int) -> bool:
    """Whether `<uuid>.dcm` / `<uuid>.<k>.dcm` is one of a record's `copies`."""
    parts = name.split(".")
    return len(parts) == 2 or (len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < copies)
