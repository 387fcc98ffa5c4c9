"""`workers: 2` with a real `dicomlb run`: a supervisor and two worker processes sharing the
DICOM port (SO_REUSEPORT), each with its own admin listener (port + K). storescu
associations land on both workers and every instance reaches the archive once; SIGHUP
reloads both; a killed worker is started again; SIGTERM ends every process; a supervisor
killed with SIGKILL leaves no worker behind; a spool part no worker owns is refused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomlb.app import run_loop
from dicomlb.spool.store import SpoolStore
from dicomlb.supervisor import Supervisor
from dicomlb.workers import Worker
from tests.dicomdata import make_small, write_series
from tests.integration.test_spool_store import DATASET, ingest
from tests.peers import (
    DicomlbProcess,
    StoreSCP,
    free_port,
    have_dcmtk,
    is_listening,
    sop_instance_uid,
    storescu,
    wait_listening,
)

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs dcmtk")

WORKERS = 2
ASSOCIATIONS = 16  # all on one worker by chance: 2 x 2^-16
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def admin_ports() -> int:
    """A port P with P + 1 free as well (one admin listener per worker)."""
    for _ in range(50):
        port = free_port()
        if not any(is_listening(port + k) for k in range(WORKERS)):
            return port
    raise AssertionError("no two free ports in a row")


def status(port: int) -> dict[str, Any]:
    with OPENER.open(f"http://127.0.0.1:{port}/api/v1/status", timeout=10) as answer:
        return dict(json.load(answer))


def answer(port: int) -> dict[str, Any] | None:
    """The status document, or None while nothing answers on `port`."""
    try:
        return status(port)
    except OSError:
        return None


def metric(port: int, name: str) -> float:
    with OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def config_text(dicom_port: int, admin_port: int, backend: StoreSCP, spool: Path) -> str:
    return yaml.safe_dump(
        {
            "workers": WORKERS,
            "graceful_timeout": "5s",
            "listeners": {
                "dicom": {"bind": f"127.0.0.1:{dicom_port}"},
                "admin": {"bind": f"127.0.0.1:{admin_port}"},
            },
            "pools": {
                "archive": {
                    "backends": [{"name": "archive", "dicom": backend.address}],
                    "health": {"interval": "1s"},
                }
            },
            "routes": [{"name": "all", "pool": "archive"}],
            "spool": {"directory": str(spool)},
        }
    )


class Workers:
    """The supervisor, its workers' admin ports and an archive behind them."""

    def __init__(self, tmp: Path, backend: StoreSCP) -> None:
        self.dicom_port = free_port()
        self.admin_port = admin_ports()
        self.admin_ports = [self.admin_port + k for k in range(WORKERS)]
        self.spool = tmp / "spool"
        self.process = DicomlbProcess(
            config_text(self.dicom_port, self.admin_port, backend, self.spool),
            self.dicom_port,
            tmp / "lb",
            start_timeout=90,
        )

    def wait_workers(self) -> None:
        """After the supervisor has started (`with self.process`): every worker listens."""
        for port in self.admin_ports:
            wait_listening(port, timeout=90, process=self.process.process, what="a worker")

    def pids(self) -> list[int]:
        return [status(port)["worker"]["pid"] for port in self.admin_ports]

    def log(self) -> str:
        return self.process.log_path.read_text()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[StoreSCP]:
    with StoreSCP("ARCHIVE", tmp_path / "archive", fork=True) as scp:
        yield scp


def test_two_workers_share_the_port_reload_restart_and_stop(
    tmp_path: Path, backend: StoreSCP
) -> None:
    site = Workers(tmp_path, backend)
    with site.process:
        site.wait_workers()
        supervisor = site.process.pid
        first = site.pids()
        assert len(set(first)) == WORKERS and supervisor not in first
        assert [status(p)["worker"]["index"] for p in site.admin_ports] == [0, 1]
        # The supervisor holds no listener: only the workers do.
        sockets = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{site.dicom_port}"], capture_output=True, text=True
        ).stdout
        assert sorted(int(p) for p in re.findall(r"pid=(\d+)", sockets)) == sorted(first)

        files = write_series(make_small(ASSOCIATIONS * 2, modality="MR"), tmp_path / "in")
        for k in range(ASSOCIATIONS):  # one association each
            sent = storescu("127.0.0.1", site.dicom_port, files[2 * k : 2 * k + 2])
            assert sent.returncode == 0, sent.stderr
        accepted = [metric(p, "dicomlb_associations_accepted_total") for p in site.admin_ports]
        assert sum(accepted) == ASSOCIATIONS and all(accepted), accepted
        received = backend.wait_files(len(files), timeout=30)
        assert sorted(sop_instance_uid(f) for f in received) == sorted(
            sop_instance_uid(f) for f in files
        )
        for k, pid in enumerate(first):  # each worker's lines say which worker wrote them
            assert re.search(rf"dicomlb.started .* pid={pid} .*worker={k}/2$", site.log(), re.M)
        assert (site.spool / "worker-0" / "owner.lock").exists()
        assert (site.spool / "worker-1" / "owner.lock").exists()

        # SIGHUP to the supervisor: every worker reloads the file.
        os.kill(supervisor, signal.SIGHUP)
        for port in site.admin_ports:
            wait_for(
                lambda port=port: status(port)["config"]["last_reload"]["source"] == "sighup",
                f"a reload at admin port {port}",
            )
            # The worker's own directories and admin port are kept: nothing waits for a restart.
            assert status(port)["config"]["last_reload"]["restart_needed"] == []

        # A second supervisor on the same ports would share them silently: refused.
        second = subprocess.run(
            [sys.executable, "-m", "dicomlb", "run", "-c", str(site.process.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{site.dicom_port}" in second.stderr

        # A worker that dies is started again, on its admin port, with a new pid.
        os.kill(first[1], signal.SIGKILL)
        wait_for(lambda: not alive(first[1]), "the killed worker to go")
        restarted = wait_for(
            lambda: next(
                (a for a in [answer(site.admin_ports[1])] if a and a["worker"]["pid"] != first[1]),
                None,
            ),
            "worker 1 to come back",
            timeout=90,
        )
        log = site.log()
        assert f"worker.exited worker=1/2 pid={first[1]} code=SIGKILL failures=1" in log
        assert re.search(rf"worker.started worker=1/2 pid={restarted['worker']['pid']}\b", log)
        more = write_series(make_small(4, modality="MR"), tmp_path / "more")
        for path in more:
            assert storescu("127.0.0.1", site.dicom_port, [path]).returncode == 0
        backend.wait_files(len(files) + len(more), timeout=30)

        # SIGTERM: every worker drains and ends, then the supervisor, with status 0.
        workers = [first[0], restarted["worker"]["pid"]]
        assert site.process.stop() == 0
        assert not any(alive(pid) for pid in workers)
        assert not is_listening(site.dicom_port)
        assert "supervisor.stopped code=0" in site.log()
    assert len(backend.files()) == len(files) + len(more)  # each instance once


def test_workers_end_when_the_supervisor_is_killed(tmp_path: Path, backend: StoreSCP) -> None:
    site = Workers(tmp_path, backend)
    with site.process:
        site.wait_workers()
        workers = site.pids()
        site.process.kill()  # SIGKILL: no chance to pass anything on
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to end", 60)
        assert not is_listening(site.dicom_port)


def test_a_spool_part_no_worker_owns_is_refused(tmp_path: Path, backend: StoreSCP) -> None:
    site = Workers(tmp_path, backend)

    async def queue_one() -> None:
        store = SpoolStore(site.spool / "worker-2")  # written with workers: 3
        store.open()
        await store.start()
        await ingest(store, 1, DATASET)
        await store.stop()
        store.close()

    asyncio.run(queue_one())
    done = subprocess.run(
        [sys.executable, "-m", "dicomlb", "run", "-c", str(site.process.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"spool items in {site.spool / 'worker-2'} would never be delivered" in done.stderr
    assert "start with workers: 3 (or more)" in done.stderr
    assert not is_listening(site.dicom_port)
    spool_ls = [sys.executable, "-m", "dicomlb", "spool", "ls", "-c", str(site.process.config_path)]
    listed = subprocess.run(spool_ls, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 2 and "give --worker K (0 to 1)" in listed.stderr
    listed = subprocess.run(
        [*spool_ls, "--worker", "2"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert f"spool {site.spool / 'worker-2'}: 1 queued" in listed.stdout


def test_the_supervisor_restarts_a_failing_worker_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Worker 1 exits 3 at once, again and again; worker 0 runs until SIGTERM. Worker 1 is
    started again after 0.5 s, then 1 s, ...; the stop ends worker 0 cleanly and the
    supervisor's status is the worst last one, 3."""
    steady = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    steady += "time.sleep(60)"

    def command(worker: Worker) -> list[str]:
        script = steady if worker.index == 0 else "raise SystemExit(3)"
        return [sys.executable, "-c", script]

    supervisor = Supervisor(command, 2, graceful_timeout=5)

    async def main() -> int:
        asyncio.get_running_loop().call_later(4, supervisor.stop)
        return await supervisor.run()

    caplog.set_level(logging.INFO, logger="dicomlb.supervisor")
    started = time.monotonic()
    assert run_loop(main) == 3
    assert time.monotonic() - started < 15
    text = caplog.text
    assert re.search(r"worker.exited worker=1/2 pid=\d+ code=3 failures=1 restart_in=0.5s", text)
    assert re.search(r"worker.exited worker=1/2 pid=\d+ code=3 failures=2 restart_in=1.0s", text)
    assert re.search(r"worker.exited worker=0/2 pid=\d+ code=0$", text, re.MULTILINE)
    assert text.count("worker.started worker=0/2") == 1
    assert "supervisor.stopped code=3" in text
    assert not supervisor.processes
