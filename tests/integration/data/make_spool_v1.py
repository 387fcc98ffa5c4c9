"""Make `spool_v1/`: a spool directory as dicomlb wrote it before every state change went
through named operations of `spool/store.py` (main at a9ea649). It is kept as made, so the
compatibility test proves that a spool left by that version is still delivered.

It was made with that version's own `SpoolStore` (Part-10 files carrying their record in
the file meta, the index schema, group commit, `claim`) and, for the states a dispatcher
reaches only after failed attempts, the very statements that version's dispatcher ran.
Four tiny CT instances of one study (8x8 pixels), route `all`, pool `pacs` (backend
`pacsa`) and mirror pool `mirror0` (backend `mirrorb`):

    instance  copy              state
    1         pacs / pacsa      queued (one failed attempt)
    1         mirror0 / mirrorb sending (the process stopped while it was on the wire)
    2         pacs / pacsa      sending
    3         pacs / pacsa      dead (max_attempts)
    3         mirror0 / mirrorb queued
    4         pacs / pacsa      delivered (its file removed)

Run from the repository root, on that version:
`python -m tests.integration.data.make_spool_v1`
(it replaces `tests/integration/data/spool_v1/`). The index is checkpointed and its WAL
removed, so the directory is three plain files and the data files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from tests.dicomdata import make_series, write_series
from tests.peers import dataset_bytes

from dicomlb.dicom.part10 import file_header
from dicomlb.spool.store import INDEX, Instance, SpoolStore, Target, record

HERE = Path(__file__).resolve().parent
TARGET = HERE / "spool_v1"
NOW = 1_780_000_000.0  # fixed stamps: the fixture's bytes do not depend on when it was made
MAIN = Target(route="all", pool="pacs", backend="pacsa")
MIRROR = Target(route="all", pool="mirror0", backend="mirrorb", mirror=True)


async def make(directory: Path, scratch: Path) -> None:
    store = SpoolStore(directory)
    store.open()
    await store.start()
    datasets = make_series(4, rows=8, cols=8, study_uid="1.2.826.0.1.3680043.10.1363.1")
    paths = write_series(datasets, scratch)
    copies = [[MAIN, MIRROR], [MAIN], [MAIN, MIRROR], [MAIN]]
    items = []
    for ds, path, targets in zip(datasets, paths, copies, strict=True):
        header = file_header(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
            source_ae="MODALITY",
            receiving_ae="DICOMLB",
            private_information=record(ds.StudyInstanceUID, targets),
        )
        instance = Instance(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
            study_uid=ds.StudyInstanceUID,
            calling_aet="MODALITY",
            called_aet="DICOMLB",
            dataset_offset=len(header),
        )
        store.add_part(instance, header)
        store.add_part(instance, dataset_bytes(path))
        items.append(await store.commit(instance, targets, NOW))
    (one_main, _), (two,), (three_main, _), (four,) = items
    # Everything of pacsa is claimed (sending), as by its sender.
    claimed = store.claim("pacsa", NOW + 1, 10)
    assert {item.id for item in claimed} == {one_main.id, two.id, three_main.id, four.id}
    store.claim("mirrorb", NOW + 1, 1)  # instance 1's mirror copy
    # The statements of that version's dispatcher: failed and retried, dead, delivered.
    await store.update(
        [
            (
                "UPDATE items SET state='queued', attempts=?, last_error=?, "
                "next_attempt_at=?, updated_at=? WHERE id=?",
                (1, "status 0xA700 (out of resources)", NOW + 2, NOW + 2, one_main.id),
            ),
            (
                "UPDATE items SET state='dead', attempts=?, last_error=?, updated_at=? WHERE id=?",
                (
                    3,
                    "3 attempts failed (max_attempts 3); last: status 0xC000",
                    NOW + 3,
                    three_main.id,
                ),
            ),
            (
                "UPDATE items SET state='delivered', attempts=attempts+1, last_error='', "
                "delivered_at=?, updated_at=?, file=? WHERE id=?",
                (NOW + 4, NOW + 4, "", four.id),
            ),
        ],
        remove=(four.file,),
    )
    await store.stop()
    # No free (recyclable) files nor WAL left behind: only what a restart would find.
    for leftover in store.tmp.iterdir():
        leftover.unlink()
    with contextlib.closing(sqlite3.connect(directory / INDEX)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "spool"
        asyncio.run(make(work, Path(scratch) / "in"))
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(work, TARGET)
    for path in sorted(TARGET.rglob("*")):
        print(path.relative_to(HERE), path.stat().st_size if path.is_file() else "")


if __name__ == "__main__":
    main()
