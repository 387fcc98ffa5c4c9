"""The spool's dispatcher over the in-memory network (`fakenet`): a real spool store in a
temporary directory, backends served by scripted SCPs. What is checked is what an operator
sees: each item's state, attempts and last error in the index, the files in `data/`, and
the log events."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomlb.config import build_snapshot
from dicomlb.dicom.part10 import file_header
from dicomlb.runtime import Runtime
from dicomlb.spool import dispatcher as dispatching
from dicomlb.spool.spool import Spool
from dicomlb.spool.state import CircuitBreaker, ItemState
from dicomlb.spool.store import Instance, Item, SpoolStore, Target, record
from tests.unit.fakenet import FakeSCP, Handler, Network, answer, ignore
from tests.unit.helpers import CT_IMAGE_STORAGE
from tests.unit.shells import BACKEND_HOSTS, backend, config, instance, run

EXPLICIT = "1.2.840.10008.1.2.1"
STUDY = "1.2.826.0.1.1"

Q, S, DL, DD = ItemState.QUEUED, ItemState.SENDING, ItemState.DELIVERED, ItemState.DEAD


class Bench:
    """A spool with its dispatcher on a runtime dialing an in-memory network."""

    def __init__(
        self,
        directory: Path,
        *,
        spool: dict[str, Any] | None = None,
        backends: str = "ab",
        **settings: Any,
    ) -> None:
        data = config(*(backend(name, **settings) for name in backends), health={"enabled": False})
        data["routes"][0]["ack"] = "spool"
        data["spool"] = {"directory": str(directory), "min_free_disk": 0, **(spool or {})}
        self.directory = directory
        self.network = Network()
        snapshot = build_snapshot(data)
        assert snapshot.spool is not None
        self.runtime = Runtime(snapshot, dial=self.network.dial)
        self.spool = Spool(snapshot.spool, lambda: self.runtime, rng=random.Random(7))
        self.store = self.spool.store
        self.scps: dict[str, list[FakeSCP]] = {name: [] for name in backends}

    def serve(self, name: str, handler: Handler | None = None) -> None:
        def scp() -> FakeSCP:
            made = FakeSCP(ae_title=name.upper(), handler=handler)
            self.scps[name].append(made)
            return made

        self.network.serve(*BACKEND_HOSTS[name], scp)

    def stored(self, name: str) -> list[bytes | None]:
        """The data sets `name`'s SCPs received."""
        return [m.data for scp in self.scps[name] for m in scp.messages]

    async def add(self, n: int, *targets: Target) -> list[Item]:
        """Spool instance `n` for `targets` (default: backend a of pool p)."""
        targets = targets or (Target(route="all", pool="p", backend="a"),)
        uid = f"1.2.3.{n}"
        header = file_header(
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=uid,
            transfer_syntax=EXPLICIT,
            source_ae="CT1",
            receiving_ae="DICOMLB",
            private_information=record(STUDY, targets),
        )
        inst = Instance(
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=uid,
            transfer_syntax=EXPLICIT,
            study_uid=STUDY,
            calling_aet="CT1",
            called_aet="DICOMLB",
            dataset_offset=len(header),
        )
        inst.parts.append(header)
        inst.size = len(header)
        self.store.add_part(inst, instance(STUDY, instance_uid=uid))
        items = await self.store.commit(inst, targets, time.time())
        self.spool.items += len(items)
        self.spool.bytes += sum(item.size for item in items)
        for target in targets:
            self.spool.dispatcher.wake(target.backend)
        return items

    def item(self, item: Item) -> Item:
        found = self.store.item(item.id)
        assert found is not None
        return found

    async def until(self, done: Callable[[], bool], timeout: float = 3.0) -> None:
        """Wait (in 10 ms steps) until `done()`; fail the test after `timeout`."""
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)

    async def settled(self, items: list[Item], states: set[ItemState], **kw: float) -> None:
        await self.until(lambda: all(self.item(i).state in states for i in items), **kw)

    def files(self) -> list[str]:
        return sorted(p.name for p in (self.directory / "data").iterdir())

    async def close(self) -> None:
        await self.spool.stop()
        for upstream in self.runtime.upstreams.values():
            await upstream.close()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(name + " ")]


def test_queued_items_are_delivered_and_their_files_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        bench.serve("a")
        await bench.spool.start()
        try:
            items = [item for n in range(5) for item in await bench.add(n)]
            await bench.settled(items, {DL})
            await bench.until(lambda: bench.files() == [])
            delivered = [bench.item(i) for i in items]
            # one attempt each: the one that stored it
            assert all(i.attempts == 1 and i.last_error == "" for i in delivered)
            assert all(i.delivered_at is not None and i.file == "" for i in delivered)
            assert sorted(bench.stored("a")) == sorted(
                instance(STUDY, instance_uid=f"1.2.3.{n}") for n in range(5)
            )
            assert bench.spool.items == 0 and bench.spool.bytes == 0
        finally:
            await bench.close()

    run(main)
    lines = events(caplog, "store.delivered")
    assert len(lines) == 5
    assert all("backend=a status=0x0000 via=spool attempts=1" in line for line in lines)


def test_kept_delivered_files_go_when_their_time_is_up(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path, spool={"keep_delivered": "1h"})
        bench.serve("a")
        await bench.spool.start()
        try:
            (item,) = await bench.add(1)
            await bench.settled([item], {DL})
            kept = bench.item(item)
            assert kept.file == item.file and bench.files() == [item.file]
            assert bench.spool.items == 0 and bench.spool.bytes == item.size
            await bench.spool.dispatcher.sweep(time.time() + 1800)  # not yet
            assert bench.files() == [item.file]
            await bench.spool.dispatcher.sweep(time.time() + 3601)
            assert bench.files() == [] and bench.item(item).file == ""
            assert bench.item(item).state is DL and bench.spool.bytes == 0
        finally:
            await bench.close()

    run(main)


def test_a_refused_store_is_retried_after_a_backoff_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        bench = Bench(tmp_path, spool={"retry": {"base": "1h", "cap": "2h"}})
        bench.serve("a", answer(0xA700, "disk full"))
        await bench.spool.start()
        try:
            before = time.time()
            (item,) = await bench.add(1)
            await bench.until(lambda: bench.item(item).attempts == 1)
            failed = bench.item(item)
            assert failed.state is Q
            assert failed.last_error == "status 0xA700 (disk full)"
            # one hour, with jitter, from the failure
            assert before + 1800 <= failed.next_attempt_at <= time.time() + 3600
            assert bench.files() == [item.file]
            await asyncio.sleep(0.05)
            assert bench.item(item).attempts == 1, "not tried again before its time"
        finally:
            await bench.close()

    run(main)
    (line,) = events(caplog, "store.failed")
    assert "backend=a via=spool attempts=1" in line
    assert "reason='status 0xA700 (disk full)'" in line
    assert events(caplog, "spool.breaker_open") == [], "the backend answered: not its failure"


def test_an_item_past_max_attempts_is_dead_with_its_last_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        retry = {"base": "10ms", "cap": "10ms", "max_attempts": 3}
        bench = Bench(tmp_path, spool={"retry": retry})
        bench.serve("a", answer(0xC000, "cannot understand"))
        await bench.spool.start()
        try:
            (item,) = await bench.add(1)
            await bench.settled([item], {DD})
            dead = bench.item(item)
            assert dead.attempts == 3
            assert dead.last_error == (
                "3 attempts failed (max_attempts 3); last: status 0xC000 (cannot understand)"
            )
            assert len(bench.stored("a")) == 3
            assert bench.files() == [item.file], "a dead item keeps its file (retry, purge)"
        finally:
            await bench.close()

    run(main)
    assert len(events(caplog, "store.failed")) == 2
    (line,) = events(caplog, "store.dead")
    assert "backend=a item=1 attempts=3 reason='3 attempts failed (max_attempts 3)" in line


def test_a_queued_item_older_than_max_age_is_dead_at_the_sweep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        bench = Bench(tmp_path, spool={"retry": {"max_age": "1h"}})
        await bench.spool.start()
        try:
            bench.runtime.backends["a"].enabled = False  # it waits
            (item,) = await bench.add(1)
            await bench.spool.dispatcher.sweep(time.time() + 60)
            assert bench.item(item).state is Q
            await bench.spool.dispatcher.sweep(time.time() + 3601)
            dead = bench.item(item)
            assert dead.state is DD and dead.attempts == 0
            assert dead.last_error == "older than max_age 3600s"
        finally:
            await bench.close()

    run(main)
    (line,) = events(caplog, "store.dead")
    assert "attempts=0 reason='older than max_age 3600s'" in line


def test_an_unreachable_backend_opens_the_breaker_without_burning_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle feeder must be woken, not found by its next look at the index.
    monkeypatch.setattr(dispatching, "IDLE_WAIT", 30.0)

    async def main() -> None:
        bench = Bench(tmp_path)
        await bench.spool.start()  # nothing serves backend a: connections are refused
        try:
            sender = bench.spool.dispatcher.senders["a"]
            sender.breaker = CircuitBreaker(threshold=3, base=0.2, cap=0.2)
            items = [item for n in range(6) for item in await bench.add(n)]
            await bench.until(lambda: bool(events(caplog, "spool.breaker_open")))
            assert sender.down_since is not None
            assert not bench.spool.dispatcher.can_take("a")
            await bench.settled(items, {Q})
            assert [bench.item(i).attempts for i in items] == [0] * 6
            assert [bench.item(i).last_error for i in items] == [""] * 6
            dials = len(bench.network.dialed)
            assert dials <= 3, "an open breaker costs no connects"
            bench.serve("a")  # back: the probe after retry_at gets through
            await bench.settled(items, {DL})
            assert [bench.item(i).attempts for i in items] == [1] * 6, "only the one that did"
            assert sender.down_since is None
        finally:
            await bench.close()

    run(main)
    (line,) = events(caplog, "spool.breaker_open")
    assert line.startswith("spool.breaker_open backend=a retry_in=0.2s reason=")
    assert events(caplog, "store.failed") == [] and events(caplog, "store.dead") == []


def test_a_backend_down_for_failover_after_gives_its_studies_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatching, "SWEEP_EVERY", 0.01)
    # An idle feeder must be woken, not found by its next look at the index.
    monkeypatch.setattr(dispatching, "IDLE_WAIT", 30.0)

    async def main() -> None:
        bench = Bench(tmp_path, spool={"failover_after": "50ms"})
        bench.serve("a")
        bench.serve("b")
        await bench.spool.start()
        try:
            bench.runtime.backends["a"].enabled = False
            items = [item for n in range(3) for item in await bench.add(n)]
            await bench.settled(items, {DL})
            moved = [bench.item(i) for i in items]
            assert [i.backend for i in moved] == ["b"] * 3
            assert [i.attempts for i in moved] == [1] * 3
            assert bench.stored("a") == [] and len(bench.stored("b")) == 3
            assert bench.spool.affinity.get(("p", STUDY)) == "b"
        finally:
            await bench.close()

    run(main)
    (line,) = events(caplog, "spool.failover")
    assert line == f"spool.failover study_uid={STUDY} pool=p from=a to=b items=3"


def test_without_failover_after_a_study_waits_for_its_backend(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        bench.serve("b")
        await bench.spool.start()
        try:
            bench.runtime.backends["a"].enabled = False
            (item,) = await bench.add(1)
            await bench.spool.dispatcher.sweep(time.time() + 86400)
            assert bench.item(item).backend == "a" and bench.item(item).state is Q
        finally:
            await bench.close()

    run(main)


def test_with_no_other_backend_up_a_study_stays_where_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        bench = Bench(tmp_path, spool={"failover_after": "1s"})
        await bench.spool.start()
        try:
            for name in "ab":
                bench.runtime.backends[name].enabled = False
            (item,) = await bench.add(1)
            await bench.until(lambda: bench.spool.dispatcher.senders["a"].down_since is not None)
            await bench.spool.dispatcher.sweep(time.time() + 60)
            assert bench.item(item).backend == "a" and bench.item(item).state is Q
        finally:
            await bench.close()

    run(main)
    assert events(caplog, "spool.failover") == []


def test_a_mirror_gets_its_own_copy_and_the_file_goes_after_both(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        bench.serve("a")
        bench.serve("b", answer(0xA700))
        await bench.spool.start()
        try:
            primary, mirror = await bench.add(
                1,
                Target(route="all", pool="p", backend="a"),
                Target(route="all", pool="p", backend="b", mirror=True),
            )
            assert mirror.mirror and not primary.mirror
            await bench.settled([primary], {DL})
            await bench.until(lambda: bench.item(mirror).attempts == 1)
            assert bench.item(mirror).state is Q, "the mirror's failure is its own"
            # The primary's file goes once the commit marking it delivered is done.
            await bench.until(lambda: bench.files() == [mirror.file])
            assert len(bench.stored("a")) == 1 and len(bench.stored("b")) == 1
        finally:
            await bench.close()

    run(main)


def test_a_disabled_backend_is_not_tried_until_it_is_enabled(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        bench.serve("a")
        await bench.spool.start()
        try:
            backend_a = bench.runtime.backends["a"]
            backend_a.enabled, backend_a.mode = False, "draining"
            await asyncio.sleep(0.02)  # the feeder sees it down
            assert not bench.spool.dispatcher.can_take("a")
            (item,) = await bench.add(1)
            await asyncio.sleep(0.1)
            assert bench.item(item).state is Q and bench.item(item).attempts == 0
            assert bench.network.dialed == []
            assert bench.spool.dispatcher.senders["a"].down_since is not None
            backend_a.enabled, backend_a.mode = True, "enabled"
            bench.spool.dispatcher.wake("a")
            await bench.settled([item], {DL})
            assert bench.spool.dispatcher.can_take("a")
        finally:
            await bench.close()

    run(main)


def test_an_item_handed_over_in_memory_is_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        bench.serve("a")
        await bench.spool.start()
        try:
            dispatcher = bench.spool.dispatcher
            assert dispatcher.can_take("a") and not dispatcher.can_take("nowhere")
            (item,) = await bench.add(1, Target(route="all", pool="p", backend="a", sending=True))
            assert item.state is S
            dispatcher.hand(item, instance(STUDY, instance_uid="1.2.3.1"))
            await bench.settled([item], {DL})
            # a sender gone since can_take: the item goes back to the index
            (lost,) = await bench.add(2, Target(route="all", pool="p", backend="x", sending=True))
            dispatcher.hand(lost, None)
            await bench.settled([lost], {Q})
        finally:
            await bench.close()

    run(main)


def test_stopping_mid_send_leaves_nothing_sending_and_a_restart_delivers(
    tmp_path: Path,
) -> None:
    async def first() -> list[Item]:
        bench = Bench(tmp_path, max_associations=1)
        bench.serve("a", ignore)  # the store is on the wire, never answered
        await bench.spool.start()
        try:
            items = [item for n in range(3) for item in await bench.add(n)]
            await bench.until(lambda: len(bench.stored("a")) == 1)

            # one on the wire, at least one more claimed for the worker (a sender holds a few
            # ahead), the rest waiting in the index
            def claimed_ahead() -> bool:
                states = [bench.item(i).state for i in items]
                return states[0] is S and states.count(S) >= 2 and set(states) <= {S, Q}

            await bench.until(claimed_ahead)
        finally:
            await bench.close()
        return items

    items = run_for(first)
    store = SpoolStore(tmp_path)
    store.open(recover=False)
    try:
        after = [store.item(item.id) for item in items]
        assert [(i.state, i.attempts) for i in after if i is not None] == [(Q, 0)] * 3, (
            "a stop is not the items' failure"
        )
    finally:
        store.close()

    async def second() -> None:
        bench = Bench(tmp_path)
        bench.serve("a")
        await bench.spool.start()
        try:
            assert bench.spool.items == 3
            await bench.settled(items, {DL})
            assert len(bench.stored("a")) == 3
        finally:
            await bench.close()

    run(second)


def test_a_sweep_recounts_what_the_index_holds(tmp_path: Path) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        await bench.spool.start()
        try:
            bench.runtime.backends["a"].enabled = False
            (item,) = await bench.add(1)
            bench.spool.items, bench.spool.bytes = 99, 99
            await bench.spool.dispatcher.sweep(time.time(), recount=True)
            assert (bench.spool.items, bench.spool.bytes) == (1, item.size)
        finally:
            await bench.close()

    run(main)


def run_for(test: Callable[[], Any]) -> Any:
    """`run`, returning what `test` returns."""
    result: list[Any] = []

    async def keep() -> None:
        result.append(await test())

    run(keep)
    return result[0]
