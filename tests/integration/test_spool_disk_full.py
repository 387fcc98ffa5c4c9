"""A disk-full episode under the spool, with real peers: DCMTK storescu -> dicomlb
(`ack: spool`, the spool on an 8 MB tmpfs) -> DCMTK storescp.

The spool takes instances until the file system is full and then refuses them (a failure
status, then A-ASSOCIATE-RJ, logged as "spool full"); a filler file takes the last bytes
while the backend is down, so the dispatcher's SQLite writes fail with "database or disk is
full". Once the filler is gone and the backend is up, every acknowledged instance arrives
without a restart; meanwhile the admin API and /metrics showed the failing spool tasks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_series, write_series
from tests.integration.test_spool import spool_config, wait_until
from tests.peers import StoreSCP, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

FS_SIZE = "8m"
RECOVERY = 60.0  # seconds for everything to arrive: breaker cooldown (cap 30 s) and restarts


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_SIZE, unmounted after the test (which needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:  # still busy: detach it now, the kernel frees it when idle
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, timeout=30)
            pytest.fail(f"the tmpfs was still in use after the test: {done.stderr.strip()}")


def fill(path: Path) -> None:
    """Write to `path` until its file system has not one block left."""
    with open(path, "wb", buffering=0) as filler:
        for size in (1 << 20, 64 << 10, 4 << 10, 1):
            try:
                while filler.write(bytes(size)):
                    pass
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise


def spooled_uids(spool_dir: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(spool_dir / "index.sqlite3")) as db:
        return {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM items")}


def states(spool_dir: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(spool_dir / "index.sqlite3")) as db:
        return dict(db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())


def test_everything_acknowledged_goes_out_after_the_disk_was_full_without_a_restart(
    tmp_path: Path, small_fs: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # (small_fs before balancer: dicomlb is stopped before the tmpfs is unmounted)
    caplog.set_level(logging.INFO)
    spool_dir = small_fs / "spool"
    backend = StoreSCP("PACSA", tmp_path / "a", fork=True)  # down until space is back
    # Something else on the file system, removed to make room once the episode is over.
    (small_fs / "other").write_bytes(bytes(2 << 20))
    try:
        lb = balancer(spool_config(spool_dir, [backend], min_free_disk=1 << 20), admin=True)
        # 80 x 128 kB: more than the file system has room for.
        files = write_series(make_series(80, rows=256, cols=256), tmp_path / "out")
        sent = storescu("127.0.0.1", lb.port, files, aec="DICOMLB", extra_args=["-v"])
        out = sent.stdout + sent.stderr
        assert sent.returncode != 0, "the spool took 10 MB on an 8 MB file system"
        assert "Refused: OutOfResources" in out, out[-2000:]
        acknowledged = spooled_uids(spool_dir)
        assert 20 < len(acknowledged) < 80
        assert out.count("Received Store Response (Success)") == len(acknowledged)
        assert "spool full" in caplog.text
        # A new association is refused outright, and the log says why.
        again = storescu("127.0.0.1", lb.port, files[-1:], aec="DICOMLB")
        assert again.returncode != 0
        assert "reject" in (again.stdout + again.stderr).lower()
        rejected = [r.message for r in caplog.records if "association.rejected" in r.message]
        assert rejected and "why='spool full: " in rejected[-1], rejected

        fill(small_fs / "filler")
        # The backend is down: the dispatcher probes it, and its index writes hit the full
        # disk (the feeder's claim, the worker's requeue). Waited for on the API itself: the
        # ingest's own "disk is full" lines came before, during the send.

        def troubled() -> bool:
            view = lb.http("GET", "/api/v1/spool")[1]["dispatcher"]
            return (
                not view["up"]
                and view["restarts"] > 0
                and any("database or disk is full" in t["last_error"] for t in view["troubled"])
            )

        wait_until(troubled, timeout=30)
        full_view = lb.http("GET", "/api/v1/spool")[1]
        full_metrics = lb.http("GET", "/metrics")[1]

        (small_fs / "filler").unlink()
        (small_fs / "other").unlink()
        backend.start()
        arrived = wait_until(
            lambda: acknowledged <= set(backend.by_sop_instance_uid()), timeout=RECOVERY
        )
        missing = acknowledged - set(backend.by_sop_instance_uid())
        assert arrived, f"{len(missing)} acknowledged never arrived: {states(spool_dir)}"
        assert wait_until(lambda: states(spool_dir) == {"delivered": len(acknowledged)})

        # While the disk was full, the API and /metrics showed the failing spool tasks.
        dispatcher = full_view["dispatcher"]
        assert dispatcher["up"] is False and dispatcher["restarts"] > 0, dispatcher
        assert any("database or disk is full" in t["last_error"] for t in dispatcher["troubled"]), (
            dispatcher
        )
        assert "dicomlb_spool_dispatcher_up 0.0" in full_metrics
        assert 'dicomlb_spool_task_restarts_total{backend="pacsa",task="feeder"}' in full_metrics
        failures = [r for r in caplog.records if "spool.task_failed" in r.message]
        assert failures and all("\n" not in r.getMessage() for r in failures)
        assert all(r.exc_info is None for r in failures), "one line, no traceback"
    finally:
        backend.close()
