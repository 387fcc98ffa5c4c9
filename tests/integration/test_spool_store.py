"""The spool store on a real disk: group commit, Part-10 files, crash recovery."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pydicom

from dicomlb.dicom.part10 import file_header
from dicomlb.spool.state import ItemState
from dicomlb.spool.store import SPILL_AT, Change, Instance, Item, SpoolStore, Target, record

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def instance(n: int, targets: list[Target] | None = None) -> Instance:
    header = file_header(
        sop_class_uid=CT,
        sop_instance_uid=f"1.2.3.{n}",
        transfer_syntax=EXPLICIT,
        source_ae="CT1",
        receiving_ae="DICOMLB",
        private_information=record("1.2.3", targets or []),
    )
    inst = Instance(
        sop_class_uid=CT,
        sop_instance_uid=f"1.2.3.{n}",
        transfer_syntax=EXPLICIT,
        study_uid="1.2.3",
        calling_aet="CT1",
        called_aet="DICOMLB",
        dataset_offset=len(header),
    )
    inst.parts.append(header)
    inst.size = len(header)
    return inst


async def ingest(store: SpoolStore, n: int, body: bytes, copies: int = 1) -> list[Item]:
    targets = [
        Target(route="r", pool=f"p{k}", backend=f"b{k}", mirror=k > 0) for k in range(copies)
    ]
    inst = instance(n, targets)
    store.add_part(inst, body)
    return await store.commit(inst, targets, 1000.0)


# (0008,0060) Modality CS "CT", explicit VR little endian
DATASET = b"\x08\x00\x60\x00CS\x02\x00CT"


def test_concurrent_writers_share_fsync_batches(tmp_path: Path) -> None:
    async def main() -> SpoolStore:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        ids = await asyncio.gather(*(ingest(store, n, DATASET) for n in range(200)))
        assert sorted(i.id for (i,) in ids) == list(range(1, 201))
        await store.stop()
        return store

    store = asyncio.run(main())
    assert store.committed == 200
    assert store.batches < 50, f"{store.batches} batches for 200 concurrent writers"
    files = sorted((tmp_path / "data").iterdir())
    assert len(files) == 200
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert ds.file_meta.MediaStorageSOPClassUID == CT
    assert ds.Modality == "CT"
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_large_instance_spills_to_a_temp_file_and_mirror_is_a_hard_link(tmp_path: Path) -> None:
    body = DATASET + b"\x10\x00\x10\x00PN\x00\x00" * (SPILL_AT // 8 + 10)

    async def main() -> list[Item]:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        inst = instance(1)
        for k in range(0, len(body), 100_000):
            store.add_part(inst, body[k : k + 100_000])
        # Spilled as it came: only the bytes since the last SPILL_AT are still in memory.
        assert inst.spill_path is not None and Path(inst.spill_path).stat().st_size >= SPILL_AT
        assert inst.buffered < SPILL_AT
        targets = [
            Target(route="r", pool="p", backend="b"),
            Target(route="r", pool="m", backend="c", mirror=True),
        ]
        items = await store.commit(inst, targets, 1.0)
        await store.stop()
        return items

    items = asyncio.run(main())
    assert len(items) == 2
    files = sorted((tmp_path / "data").iterdir())
    assert len(files) == 2 and files[0].stat().st_ino == files[1].stat().st_ino
    assert files[0].read_bytes().endswith(body)
    assert not list((tmp_path / "tmp").iterdir())


def test_recovery_discards_partial_and_orphan_files_and_requeues_sending(tmp_path: Path) -> None:
    async def main() -> None:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        for n in range(3):
            await ingest(store, n, DATASET)
        await store.stop()

    asyncio.run(main())
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("UPDATE items SET state='sending' WHERE id=1")
    (tmp_path / "tmp" / "crashed.part").write_bytes(b"\x00" * 100)  # crash mid-write
    (tmp_path / "data" / "orphan.dcm").write_bytes(b"\x00" * 100)  # crash before commit
    store = SpoolStore(tmp_path)
    recovery = store.open()
    assert recovery is not None
    assert (recovery.requeued, recovery.queued) == (1, 3)
    assert (recovery.partial_files, recovery.orphan_files, recovery.missing_files) == (1, 1, 0)
    assert not (tmp_path / "data" / "orphan.dcm").exists()
    assert not list((tmp_path / "tmp").iterdir())
    assert {item.state for item in store.items()} == {"queued"}
    store.close()


def test_files_whose_rows_were_lost_get_them_back_from_their_file_meta(tmp_path: Path) -> None:
    """The rows' commit is not waited for: after a machine crash a file in data/ may have no
    row. Its file meta carries what the rows held; a file without that record goes."""

    async def main() -> list[Item]:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        first = await ingest(store, 1, DATASET, copies=2)  # with a mirror copy
        second = await ingest(store, 2, DATASET)
        await store.stop()
        return first + second

    before = asyncio.run(main())
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("DELETE FROM items")  # as if the WAL had not reached the disk
    foreign = file_header(sop_class_uid=CT, sop_instance_uid="9.9", transfer_syntax=EXPLICIT)
    (tmp_path / "data" / "foreign.dcm").write_bytes(foreign + DATASET)
    store = SpoolStore(tmp_path)
    recovery = store.open()
    assert recovery is not None
    assert (recovery.reindexed_files, recovery.orphan_files, recovery.queued) == (2, 1, 3)
    assert not (tmp_path / "data" / "foreign.dcm").exists()
    fields = ("file", "route", "pool", "backend", "mirror", "study_uid", "sop_class_uid",
              "sop_instance_uid", "transfer_syntax", "calling_aet", "called_aet", "size",
              "dataset_offset")  # fmt: skip
    again = {item.file: item for item in store.items()}
    for item in before:
        assert again[item.file].state == "queued"
        assert [getattr(again[item.file], f) for f in fields] == [getattr(item, f) for f in fields]
    assert store.read(again[before[0].file]) == DATASET
    store.close()


def test_delivered_files_are_overwritten_by_new_instances_but_never_a_mirrors_link(
    tmp_path: Path,
) -> None:
    big = DATASET + b"\x10\x00\x10\x00PN\x00\x00" * (SPILL_AT // 8 + 10)  # spills

    async def main() -> None:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        (first,) = await ingest(store, 1, big)
        await store.update([], remove=[first.file])  # delivered: kept in tmp/ for reuse
        assert [p.suffix for p in (tmp_path / "tmp").iterdir()] == [".free"]
        assert not (tmp_path / "data" / first.file).exists()
        inst = instance(2)
        store.add_part(inst, DATASET)  # shorter than what it overwrites
        (second,) = await store.commit(inst, [Target(route="r", pool="p", backend="b")], 1.0)
        assert inst.recycled
        assert not list((tmp_path / "tmp").iterdir())
        on_disk = pydicom.dcmread(tmp_path / "data" / second.file)
        assert on_disk.file_meta.MediaStorageSOPInstanceUID == "1.2.3.2"
        assert on_disk.Modality == "CT"
        assert (tmp_path / "data" / second.file).stat().st_size == second.size
        # A copy whose mirror link is still queued is unlinked, never overwritten.
        main_copy, mirror = await ingest(store, 3, big, copies=2)
        await store.update([], remove=[main_copy.file])
        assert not list((tmp_path / "tmp").iterdir())
        mirrored = (tmp_path / "data" / mirror.file).read_bytes()
        assert mirrored.endswith(big) and len(mirrored) == mirror.size
        await store.update([], remove=[second.file])
        await store.stop()  # kept files go with a graceful stop
        assert not list((tmp_path / "tmp").iterdir())

    asyncio.run(main())


def test_a_change_applies_only_to_an_item_in_the_state_it_expects(tmp_path: Path) -> None:
    """Two parties racing for one item: the first change wins, the second reports it did not
    apply and leaves the row (and the file) as the first left it."""

    async def main() -> None:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        try:
            (one,), (two,) = [await ingest(store, n, DATASET) for n in (1, 2)]
            claimed = store.claim("b0", 2000.0, 10)
            assert [(i.id, i.state) for i in claimed] == [(one.id, "sending"), (two.id, "sending")]
            # The sweep read `one` as queued and too old; a sender took it meanwhile.
            late = Change.give_up(one.id, ItemState.QUEUED, attempts=0, reason="old", now=1.0)
            assert await store.update([late]) == [0]
            # A stop requeued `two` while its delivery was on the way: the delivery finds it
            # queued, does not apply, and its file stays for the next attempt.
            assert await store.update([Change.requeue_sending()], durable=True) == [2]
            done = Change.deliver(two.id, 3000.0, file="")
            assert await store.update([done], remove=[two.file]) == [0]
            assert (tmp_path / "data" / two.file).exists()
            # An operator's retry touches neither (neither is dead).
            assert store.execute(Change.retry([one.id, two.id], 4000.0)) == [0, 0]
            assert {i.id: i.state for i in store.items()} == {one.id: "queued", two.id: "queued"}
            # Claimed again and delivered: now the change applies and the file goes.
            store.claim("b0", 5000.0, 10)
            assert await store.update(
                [Change.deliver(two.id, 5000.0, file="")], remove=[two.file]
            ) == [1]
            assert not (tmp_path / "data" / two.file).exists()
            # Purge never takes an item being sent.
            assert store.purge([one.id]) == 0
            assert store.purge([one.id, two.id], [ItemState.DELIVERED]) == 1
            assert [(i.id, i.state) for i in store.items()] == [(one.id, "sending")]
        finally:
            await store.stop()

    asyncio.run(main())


def test_a_view_of_a_buffer_that_may_change_is_copied_and_reads_follow_the_row(
    tmp_path: Path,
) -> None:
    """Received PDUs are immutable bytes, kept as views; a view of a bytearray is copied when
    added, so what the caller does with the buffer afterwards is not what gets spooled."""

    async def main() -> tuple[SpoolStore, Item, bytes, bytes, bytes]:
        store = SpoolStore(tmp_path)
        store.open()
        await store.start()
        targets = [Target(route="r", pool="p", backend="b")]
        inst = instance(1, targets)
        immutable = DATASET + b"\x10\x00\x10\x00PN\x04\x00DOE^"
        store.add_part(inst, memoryview(immutable)[: len(DATASET)])
        buffer = bytearray(immutable[len(DATASET) :])
        store.add_part(inst, memoryview(buffer))
        buffer[:] = b"\xff" * len(buffer)  # the caller reuses its buffer
        (item,) = await store.commit(inst, targets, 1000.0)
        whole = await asyncio.to_thread(store.read, item)
        piece = await asyncio.to_thread(store.read, item, item.dataset_offset + 4, 6)
        tail = await asyncio.to_thread(store.read, item, item.size - 4)
        await store.stop()
        return store, item, whole, piece, tail

    store, item, whole, piece, tail = asyncio.run(main())
    expected = DATASET + b"\x10\x00\x10\x00PN\x04\x00DOE^"
    assert whole == expected
    assert piece == expected[4:10]
    assert tail == expected[-4:]
    on_disk = (store.data / item.file).read_bytes()
    assert on_disk[item.dataset_offset :] == expected
