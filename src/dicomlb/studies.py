"""Where is a study? The study -> backend table that C-MOVE and C-GET are sent by.

Every routed C-STORE records (SOP Instance UID, backend) for storage commitment (an
N-ACTION names instances, not studies), and (StudyInstanceUID, backend) when the study was
read. Both live in memory always (the instances bounded, least recently used first out)
and, when the config has a `state_dir`, in SQLite there (`studies.sqlite3`), so they
survive restarts. Only a study pair not seen before costs a write: a 300-instance series writes
once. Instance rows are written in batches (`save`, at least every SAVE_SECONDS while the
App runs, and on close), the most recent INSTANCE_LIMIT kept: a crash loses at most the last
second's, and those only fall back to the pool's choice.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from dicomlb.lru import BoundedLru

log = logging.getLogger(__name__)

FILE_NAME = "studies.sqlite3"
# SOP Instance UID -> backend for storage commitment: the most recent this many instances
# (~150 bytes each in memory).
INSTANCE_LIMIT = 200_000
SAVE_SECONDS = 1.0  # instance rows wait at most this long for their batch (App timer)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS study_location (
    study_uid TEXT NOT NULL,
    backend TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (study_uid, backend)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instance_location (
    sop_instance_uid TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    seen REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instance_seen ON instance_location (seen);
"""


class StudyIndex:
    """Study Instance UID -> the backends that received instances of it, in order seen."""

    def __init__(self, state_dir: str | Path | None = None, *, limit: int = INSTANCE_LIMIT) -> None:
        self._where: dict[str, list[str]] = {}
        self._instances: BoundedLru[str, str] = BoundedLru(limit)
        self._unsaved: list[tuple[str, str, float]] = []
        self._rows = 0  # instance rows on disk, about
        self.limit = limit
        self._db: sqlite3.Connection | None = None
        self.path: Path | None = None
        if state_dir is not None:
            directory = Path(state_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / FILE_NAME
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute(
                "SELECT study_uid, backend FROM study_location ORDER BY first_seen"
            )
            for study_uid, backend in rows:
                self._where.setdefault(study_uid, []).append(backend)
            recent = self._db.execute(
                "SELECT sop_instance_uid, backend FROM "
                "(SELECT * FROM instance_location ORDER BY seen DESC LIMIT ?) ORDER BY seen",
                (limit,),
            )
            for sop_instance_uid, backend in recent:
                self._instances.put(sop_instance_uid, backend)
            (self._rows,) = self._db.execute("SELECT count(*) FROM instance_location").fetchone()
            log.info(
                "studies.loaded path=%s studies=%d instances=%d",
                self.path,
                len(self._where),
                len(self._instances),
            )

    def record(self, study_uid: str, backend: str, sop_instance_uid: str = "") -> None:
        """`backend` received an instance of `study_uid` (`sop_instance_uid`, when given)."""
        if sop_instance_uid:
            self._instances.put(sop_instance_uid, backend)
            if self._db is not None:
                self._unsaved.append((sop_instance_uid, backend, time.time()))
        if not study_uid:
            return
        backends = self._where.setdefault(study_uid, [])
        if backend in backends:
            return
        backends.append(backend)
        if self._db is not None:
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO study_location VALUES (?, ?, ?)",
                    (study_uid, backend, time.time()),
                )
            except sqlite3.Error as err:  # the table is a hint; losing a row is not data loss
                log.warning(
                    "studies.write_failed study_instance_uid=%s backend=%s reason=%r",
                    study_uid,
                    backend,
                    str(err),
                )

    def record_many(self, study_uid: str, backends: Iterable[str]) -> None:
        for backend in backends:
            self.record(study_uid, backend)

    def locate(self, study_uid: str) -> list[str]:
        """The backends known to hold `study_uid` (empty when unknown)."""
        return list(self._where.get(study_uid, ()))

    def holders(self, sop_instance_uids: Iterable[str]) -> dict[str, str]:
        """The backends recently sent these instances, for those dicomlb remembers (asked
        for, they are kept longest: the least recently used go first)."""
        found = {}
        for uid in sop_instance_uids:
            backend = self._instances.get(uid)
            if backend is not None:
                found[uid] = backend
        return found

    def save(self) -> None:
        """Write the instance rows recorded since the last save, and forget the oldest
        beyond the limit (one transaction, no fsync: the table is a hint)."""
        if self._db is None or not self._unsaved:
            return
        rows, self._unsaved = self._unsaved, []
        db = self._db
        try:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO instance_location VALUES (?, ?, ?)", rows)
            self._rows += len(rows)  # an upper bound (a replaced row counts again)
            if self._rows > self.limit * 5 // 4:  # prune now and then, not every save
                db.execute(
                    "DELETE FROM instance_location WHERE seen < (SELECT seen FROM "
                    "instance_location ORDER BY seen DESC LIMIT 1 OFFSET ?)",
                    (self.limit - 1,),
                )
                self._rows = self.limit
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("studies.write_failed instances=%d reason=%r", len(rows), str(err))

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        if self._db is not None:
            self.save()
            self._db.close()
            self._db = None
