"""One running balancer per spool directory: a second instance on the same directory is
refused with a clear error and its own exit status; after the owner is gone (even by
SIGKILL) an instance started on the directory takes it over and delivers its backlog.
Real dicomlb processes, storescu and storescp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomlb.cli import SPOOL_BUSY
from tests.dicomdata import make_small, write_series
from tests.integration.test_spool import index_states, spool_config, wait_until
from tests.peers import DicomlbProcess, StoreSCP, free_port, have_dcmtk, sop_instance_uid, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK")


def config_text(spool_dir: Path, backend: StoreSCP, port: int) -> str:
    config = spool_config(spool_dir, [backend])
    config["listeners"] = {"dicom": {"ae_title": "DICOMLB", "bind": f"127.0.0.1:{port}"}}
    return yaml.safe_dump(config)


def test_a_second_instance_is_refused_and_a_later_one_takes_over(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    backend = StoreSCP("PACSA")  # not started yet: what is spooled waits
    first = DicomlbProcess(
        config_text(spool_dir, backend, port := free_port()), port, tmp_path / "first"
    )
    files = write_series(make_small(5), tmp_path / "out")
    try:
        first.start()
        assert storescu("127.0.0.1", port, files, aec="DICOMLB").returncode == 0
        assert wait_until(lambda: index_states(spool_dir).get("queued", 0) == 5)
        holder = (spool_dir / "owner.lock").read_text()
        assert f"pid {first.pid}" in holder

        second_dir = tmp_path / "second"
        second_dir.mkdir()
        (second_dir / "lb.yaml").write_text(config_text(spool_dir, backend, free_port()))
        refused = subprocess.run(
            [sys.executable, "-m", "dicomlb", "run", "-c", str(second_dir / "lb.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == SPOOL_BUSY, refused.stderr
        assert f"spool directory {spool_dir} is owned by another running dicomlb" in (
            refused.stderr
        )
        assert f"pid {first.pid}" in refused.stderr
        assert (spool_dir / "owner.lock").read_text() == holder  # the owner's record stays
        assert index_states(spool_dir) == {"queued": 5}  # and its backlog untouched

        first.kill()  # SIGKILL: the kernel releases the lock
        backend.start()
        later = DicomlbProcess(
            config_text(spool_dir, backend, port2 := free_port()), port2, tmp_path / "later"
        )
        with later:
            assert f"pid {later.pid}" in (spool_dir / "owner.lock").read_text()
            assert wait_until(lambda: len(backend.files()) == 5, timeout=30)
            assert set(backend.by_sop_instance_uid()) == {sop_instance_uid(p) for p in files}
            assert later.stop() == 0
    finally:
        first.close()
        backend.close()
