"""Where is a study? The study -> backend table that C-MOVE and C-GET are sent by.

Every routed C-STORE records (StudyInstanceUID, backend), and in memory (SOP Instance UID,
backend) for storage commitment. The table lives in memory and,
when the config has a `state_dir`, in SQLite there (`studies.sqlite3`), so it survives
restarts. Only a pair not seen before costs a write: a 300-instance series writes once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "studies.sqlite3"
# SOP Instance UID -> backend, in memory only, for storage commitment (an N-ACTION names
# instances, not studies): the most recent this many instances (~150 bytes each).
INSTANCE_LIMIT = 200_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS study_location (
    study_uid TEXT NOT NULL,
    backend TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (study_uid, backend)
) WITHOUT ROWID
"""


class StudyIndex:
    """Study Instance UID -> the backends that received instances of it, in order seen."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self._where: dict[str, list[str]] = {}
        self._instances: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        self.path: Path | None = None
        if state_dir is not None:
            directory = Path(state_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / FILE_NAME
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            rows = self._db.execute(
                "SELECT study_uid, backend FROM study_location ORDER BY first_seen"
            )
            for study_uid, backend in rows:
                self._where.setdefault(study_uid, []).append(backend)
            log.info("studies.loaded path=%s studies=%d", self.path, len(self._where))

    def record(self, study_uid: str, backend: str, sop_instance_uid: str = "") -> None:
        """`backend` received an instance of `study_uid` (`sop_instance_uid`, when given)."""
        if sop_instance_uid:
            self._instances.pop(sop_instance_uid, None)
            self._instances[sop_instance_uid] = backend
            if len(self._instances) > INSTANCE_LIMIT:
                del self._instances[next(iter(self._instances))]
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
        """The backends recently sent these instances, for those dicomlb remembers."""
        known = self._instances
        return {uid: known[uid] for uid in sop_instance_uids if uid in known}

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
