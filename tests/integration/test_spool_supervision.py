"""A dispatcher step that raises something unexpected (a failed index read, a bug in the
send path) is logged on one line, counted in /metrics, and the step runs again: its items
are delivered, none stays 'sending'. A spool on a real directory, a real storescp backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomlb.config import build_snapshot
from dicomlb.runtime import Runtime
from dicomlb.spool.spool import Spool
from dicomlb.spool.store import Item
from tests.dicomdata import make_small, write_series
from tests.integration.test_spool import spool_config
from tests.peers import StoreSCP, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def states(spool_dir: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(spool_dir / "index.sqlite3")) as db:
        return dict(db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


def test_a_feeder_step_that_raises_is_logged_counted_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first claim of the feeder raises; the feeder is restarted and claims again."""
    spool_dir = tmp_path / "spool"
    scp = StoreSCP("PACSA", tmp_path / "a").start()
    try:
        snapshot = build_snapshot(spool_config(spool_dir, [scp]), source="<test>")
        runtime = Runtime(snapshot)
        assert snapshot.spool is not None
        spool = Spool(snapshot.spool, lambda: runtime)
        claims: list[int] = []
        real_claim = spool.store.claim

        def claim(backend: str, now: float, limit: int) -> list[Item]:
            claims.append(limit)
            if len(claims) == 1:
                raise LookupError("an unexpected failure of a dispatcher step")
            return real_claim(backend, now, limit)

        spool.store.claim = claim  # type: ignore[method-assign]

        async def main() -> None:
            await spool.start()
            try:
                assert await until(lambda: len(claims) >= 2), "the feeder was not restarted"
                feeder = spool.supervisor.tasks["feeder/pacsa"]
                assert feeder.restarts == 1 and feeder.running
                assert feeder.last_error.startswith("LookupError: an unexpected failure")
            finally:
                await spool.stop()

        asyncio.run(main())
    finally:
        scp.close()
    failed = [r.getMessage() for r in caplog.records if "spool.task_failed" in r.getMessage()]
    assert len(failed) == 1, failed
    assert failed[0].startswith("spool.task_failed task=feeder/pacsa restarts=1 retry_in=0.1s")
    assert "LookupError" in failed[0]
    scraped = runtime.metrics.exposition().decode()
    assert 'dicomlb_spool_task_restarts_total{backend="pacsa",task="feeder"} 1.0' in scraped


def test_a_worker_step_that_raises_puts_its_item_back_and_delivers_it_later(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery attempt of each worker raises outside the send path's own error
    handling; the items go back to queued, the workers are restarted, everything arrives."""
    caplog.set_level(logging.INFO)
    spool_dir = tmp_path / "spool"
    scp = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    try:
        lb = balancer(spool_config(spool_dir, [scp]), admin=True)
        sender = lb.app.spool.dispatcher.senders["pacsa"]
        real_deliver = sender._deliver
        broken: set[int] = set()

        async def deliver(item: Item, *args: Any) -> None:
            if len(broken) < 2:
                broken.add(item.id)
                raise AttributeError("a bug in the send path")
            await real_deliver(item, *args)

        sender._deliver = deliver
        files = write_series(make_small(6), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        deadline = time.monotonic() + 20
        while len(scp.files()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(scp.files()) == 6, states(spool_dir)
        deadline = time.monotonic() + 10
        while states(spool_dir) != {"delivered": 6} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert states(spool_dir) == {"delivered": 6}, "an item stayed 'sending'"
        assert len(broken) == 2
        _, summary = lb.http("GET", "/api/v1/spool")
        dispatcher = summary["dispatcher"]
        assert dispatcher["restarts"] == 2 and not dispatcher["up"], dispatcher
        assert {t["task"] for t in dispatcher["troubled"]} <= {"worker/pacsa/0", "worker/pacsa/1"}
        _, scraped = lb.http("GET", "/metrics")
        assert "dicomlb_spool_dispatcher_up 0.0" in scraped
    finally:
        scp.close()
    failed = [r.getMessage() for r in caplog.records if "spool.task_failed" in r.getMessage()]
    assert len(failed) == 2 and all("AttributeError: a bug in the send path" in f for f in failed)
