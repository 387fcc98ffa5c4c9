"""`ack: spool` with real peers: DCMTK storescu -> dicomlb (spool) -> DCMTK storescp backends."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomlb.pools import rendezvous_order
from dicomlb.spool.state import ItemState
from dicomlb.spool.store import SpoolStore
from tests.dicomdata import make_series, make_small, make_studies, write_series
from tests.peers import (
    StoreSCP,
    dataset_bytes,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    peer_env,
    sop_instance_uid,
    storescu,
    wait_listening,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def spool_config(
    spool_dir: Path,
    backends: list[StoreSCP],
    *,
    mirrors: list[StoreSCP] = (),  # type: ignore[assignment]
    strategy: str = "affinity",
    health: bool = False,
    **spool: Any,
) -> dict[str, Any]:
    pools: dict[str, Any] = {
        "pacs": {
            "strategy": strategy,
            "health": {
                "enabled": health,
                "interval": "0.2s",
                "timeout": "1s",
                "fall": 1,
                "rise": 1,
            },
            "connect_timeout": "1s",
            "backends": [
                {"name": scp.ae_title.lower(), "dicom": scp.address, "max_associations": 2}
                for scp in backends
            ],
        }
    }
    for n, scp in enumerate(mirrors):
        pools[f"mirror{n}"] = {
            "health": {"enabled": False},
            "backends": [{"name": scp.ae_title.lower(), "dicom": scp.address}],
        }
    route: dict[str, Any] = {"name": "all", "pool": "pacs", "ack": "spool"}
    if mirrors:
        route["mirror"] = [f"mirror{n}" for n in range(len(mirrors))]
    return {
        "pools": pools,
        "routes": [route],
        "spool": {
            "directory": str(spool_dir),
            "min_free_disk": 0,
            "retry": {"base": "0.1s", "cap": "0.5s", **spool.pop("retry", {})},
            **spool,
        },
    }


def wait_until(predicate: Any, timeout: float = 20.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def index_states(spool_dir: Path) -> dict[str, int]:
    # closing: a connection's `with` ends a transaction, not the connection
    with contextlib.closing(sqlite3.connect(spool_dir / "index.sqlite3")) as db:
        return dict(db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())


@pytest.fixture
def scps(tmp_path: Path) -> Any:
    made: list[StoreSCP] = []

    def make(name: str, start: bool = True) -> StoreSCP:
        scp = StoreSCP(name, tmp_path / name, fork=True)
        if start:
            scp.start()
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.close()


def test_spooled_instances_arrive_byte_identical_and_studies_stay_together(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA"), scps("PACSB")
    lb = balancer(spool_config(tmp_path / "spool", [a, b]))
    studies = make_studies([("CT", 5)] * 6)
    sent: dict[str, Path] = {}
    for uid, instances in studies.items():
        for path in write_series(instances, tmp_path / "out" / uid):
            sent[sop_instance_uid(path)] = path
    result = storescu("127.0.0.1", lb.port, tmp_path / "out", aec="DICOMLB")
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: len(a.files()) + len(b.files()) == len(sent))
    received = {**a.by_sop_instance_uid(), **b.by_sop_instance_uid()}
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
    on_a = set(a.by_sop_instance_uid())
    for instances in studies.values():
        where = {ds.SOPInstanceUID in on_a for ds in instances}
        assert len(where) == 1, "a study was split across backends"
    assert wait_until(lambda: index_states(tmp_path / "spool") == {"delivered": len(sent)})
    # Delivered files are removed after the commit that says so, off the commit's path.
    data = tmp_path / "spool" / "data"
    assert wait_until(lambda: not list(data.iterdir())), "delivered files are removed"


def test_backends_down_during_ingest_get_everything_when_back(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a = scps("PACSA", start=False)
    lb = balancer(spool_config(tmp_path / "spool", [a], health=True))
    files = write_series(make_small(60), tmp_path / "out")
    result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB")
    assert result.returncode == 0, result.stderr  # acknowledged with every backend down
    assert (
        index_states(tmp_path / "spool").get("queued", 0)
        + index_states(tmp_path / "spool").get("sending", 0)
        == 60
    )
    time.sleep(1.0)
    assert not a.files()
    a.start()
    assert wait_until(lambda: len(a.files()) == 60, timeout=30)
    assert {sop_instance_uid(p) for p in files} == set(a.by_sop_instance_uid())


class RefusingBackend:
    """A pynetdicom storage SCP that answers every C-STORE with 0xA700 (Out of resources)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stores = 0
        ae = AE(ae_title="REFUSING")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    def on_store(self, event: Any) -> int:
        self.stores += 1
        return 0xA700

    def close(self) -> None:
        self.server.shutdown()


def test_dead_letters_after_max_attempts_with_the_reason(tmp_path: Path, balancer: Any) -> None:
    refusing = RefusingBackend()
    try:
        config = spool_config(tmp_path / "spool", [], retry={"max_attempts": 3})
        config["pools"]["pacs"]["backends"] = [
            {"name": "refusing", "dicom": f"REFUSING@127.0.0.1:{refusing.port}"}
        ]
        lb = balancer(config)
        files = write_series(make_small(4), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        assert wait_until(lambda: index_states(tmp_path / "spool").get("dead", 0) == 4)
    finally:
        refusing.close()
    assert refusing.stores == 12  # 4 instances x max_attempts 3, then no more
    store = SpoolStore(tmp_path / "spool")
    store.open(recover=False)
    dead = store.items(states=[ItemState.DEAD])
    store.close()
    assert {item.attempts for item in dead} == {3}
    assert all("max_attempts 3" in item.last_error for item in dead)
    assert all("0xA700" in item.last_error for item in dead), dead[0].last_error
    assert {item.sop_instance_uid for item in dead} == {sop_instance_uid(p) for p in files}


def test_spool_limit_refusal_is_visible_to_storescu(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a = scps("PACSA", start=False)  # down: nothing drains
    lb = balancer(spool_config(tmp_path / "spool", [a], max_items=5))
    files = write_series(make_small(8), tmp_path / "out")
    result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB", extra_args=["-v"])
    assert "Refused: OutOfResources" in result.stdout + result.stderr
    assert sum(index_states(tmp_path / "spool").values()) == 5
    # A new association is now refused outright (A-ASSOCIATE-RJ transient).
    again = storescu("127.0.0.1", lb.port, files[:1], aec="DICOMLB")
    assert again.returncode != 0
    assert "reject" in (again.stdout + again.stderr).lower()


def test_mirrors_receive_every_instance(tmp_path: Path, balancer: Any, scps: Any) -> None:
    a, research = scps("PACSA"), scps("RESEARCH")
    lb = balancer(spool_config(tmp_path / "spool", [a], mirrors=[research]))
    files = write_series(make_series(12, rows=128, cols=128), tmp_path / "out")
    assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
    assert wait_until(lambda: len(a.files()) == 12 and len(research.files()) == 12)
    sent = {sop_instance_uid(p): p for p in files}
    for scp in (a, research):
        for uid, path in scp.by_sop_instance_uid().items():
            assert dataset_bytes(path) == dataset_bytes(sent[uid])


def _run_dicomlb(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dicomlb", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": SRC, "TCP_NODELAY": "1"},
        )


def test_kill_9_mid_send_loses_nothing_acknowledged(tmp_path: Path, scps: Any) -> None:
    """kill -9 the balancer while storescu sends 400 instances through the spool; after a
    restart every instance storescu saw acknowledged reaches the backend, byte-identical.

    The backend is down until the restart, so what was acknowledged lives only in the spool.
    """
    a = scps("PACSA", start=False)
    port = free_port()
    spool_dir = tmp_path / "spool"
    config = tmp_path / "lb.yaml"
    config.write_text(
        f"listeners:\n  dicom: {{bind: '127.0.0.1:{port}', ae_title: DICOMLB}}\n"
        "pools:\n  pacs:\n    health: {enabled: false}\n"
        f"    backends:\n      - {{name: a, dicom: '{a.address}'}}\n"
        "routes:\n  - {name: all, pool: pacs, ack: spool}\n"
        f"spool:\n  directory: '{spool_dir}'\n  min_free_disk: 0\n"
        "  retry: {base: 0.1s, cap: 1s}\n"
    )
    files = write_series(make_series(400, rows=256, cols=256), tmp_path / "out")
    sent = {sop_instance_uid(p): p for p in files}
    by_path = {str(p): uid for uid, p in sent.items()}
    log = tmp_path / "dicomlb.log"
    lb = _run_dicomlb(config, log)
    try:
        wait_listening(port, timeout=20, process=lb, what="dicomlb", log=log)
        sender = subprocess.Popen(
            [
                dcmtk_tool("storescu"),
                "-v",
                "-aet",
                "CT1",
                "-aec",
                "DICOMLB",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=peer_env(),
        )
        acknowledged: set[str] = set()
        current = ""
        assert sender.stdout is not None
        for line in sender.stdout:
            if "Sending file: " in line:
                current = by_path[line.split("Sending file: ", 1)[1].strip()]
            elif "Received Store Response (Success)" in line:
                acknowledged.add(current)
                if len(acknowledged) == 150:
                    os.kill(lb.pid, signal.SIGKILL)
        sender.wait(60)
        lb.wait(10)
        assert 150 <= len(acknowledged) < 400, "the kill came too late to test anything"
        assert not a.files()
        a.start()
        lb = _run_dicomlb(config, log)
        wait_listening(port, timeout=20, process=lb, what="dicomlb", log=log)
        assert wait_until(
            lambda: acknowledged <= set(a.by_sop_instance_uid()), timeout=60, every=0.2
        ), f"missing {len(acknowledged - set(a.by_sop_instance_uid()))} acknowledged instances"
        for uid, path in a.by_sop_instance_uid().items():
            assert dataset_bytes(path) == dataset_bytes(sent[uid]), "a partial file was sent"
        # No partial file is left; delivered files may wait in tmp/ to be overwritten.
        assert all(p.suffix == ".free" for p in (spool_dir / "tmp").iterdir())
    finally:
        for process in (lb,):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    text = log.read_text()
    assert "spool.started" in text and text.count("spool.started") == 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomlb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def test_cli_lists_shows_retries_and_purges_dead_letters(tmp_path: Path, balancer: Any) -> None:
    refusing = RefusingBackend()
    config = spool_config(tmp_path / "spool", [], retry={"max_attempts": 1})
    config["pools"]["pacs"]["backends"] = [
        {"name": "pacs-a", "dicom": f"PACSA@127.0.0.1:{refusing.port}"}
    ]
    config["pools"]["pacs"]["idle_timeout"] = "0.2s"  # no reuse of the refusing association
    lb = balancer(config)
    config_file = tmp_path / "lb.yaml"
    config_file.write_text(yaml.safe_dump(config))
    files = write_series(make_small(3), tmp_path / "out")
    try:
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        assert wait_until(lambda: index_states(tmp_path / "spool").get("dead", 0) == 3)
    finally:
        refusing.close()
    listed = _cli("spool", "ls", "-c", str(config_file), "--state", "dead")
    assert listed.returncode == 0, listed.stderr
    assert "3 dead" in listed.stdout
    assert all(sop_instance_uid(p) in listed.stdout for p in files)
    assert "0xA700" in listed.stdout
    shown = _cli("spool", "show", "1", "-c", str(config_file))
    assert "state: dead" in shown.stdout and "last_error:" in shown.stdout
    assert _cli("spool", "show", "99", "-c", str(config_file)).returncode == 2
    # The backend is fixed (a storescp on the same port); the operator retries.
    with StoreSCP("PACSA", tmp_path / "a", port=refusing.port) as good:
        retried = _cli("spool", "retry", "--dead", "-c", str(config_file))
        assert "3 item(s) queued again" in retried.stdout
        assert wait_until(lambda: len(good.files()) == 3)
        assert {sop_instance_uid(p) for p in files} == set(good.by_sop_instance_uid())
    assert wait_until(lambda: index_states(tmp_path / "spool") == {"delivered": 3})
    purged = _cli("spool", "purge", "--delivered", "-c", str(config_file))
    assert "3 item(s) purged" in purged.stdout
    refused = _cli("spool", "purge", "-c", str(config_file))
    assert refused.returncode == 2 and "name the items" in refused.stderr
    assert index_states(tmp_path / "spool") == {}


def test_down_backend_costs_no_attempts_and_study_fails_over_when_configured(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA"), scps("PACSB")
    # Health checks off: only the dispatcher's circuit breaker notices the dead backend.
    lb = balancer(spool_config(tmp_path / "spool", [a, b], failover_after="1s"))
    pool = [lb.backend("pacsa"), lb.backend("pacsb")]
    for _ in range(20):  # bounded: 8 studies on one backend has probability 1/128
        studies = make_studies([("CT", 4)] * 8)
        first = {uid: rendezvous_order(uid, pool)[0].name for uid in studies}
        if len(set(first.values())) == 2:
            break
    a.stop()
    for uid, instances in studies.items():
        write_series(instances, tmp_path / "out" / uid)
    assert storescu("127.0.0.1", lb.port, tmp_path / "out", aec="DICOMLB").returncode == 0
    total = sum(len(v) for v in studies.values())
    assert wait_until(lambda: len(b.files()) == total, timeout=30)
    # storescp writes the file before it answers, and the delivery is recorded after the
    # answer (a bookkeeping update that rides with the next batch): wait for the index too.
    spool = tmp_path / "spool"
    assert wait_until(lambda: index_states(spool) == {"delivered": total}, timeout=10), (
        index_states(spool)
    )
    on_b = set(b.by_sop_instance_uid())
    for instances in studies.values():
        assert {ds.SOPInstanceUID for ds in instances} <= on_b
    store = SpoolStore(tmp_path / "spool")
    store.open(recover=False)
    items = store.items()
    store.close()
    moved = [i for i in items if first[i.study_uid] == "pacsa"]
    assert moved and all(i.backend == "pacsb" for i in moved)
    assert all(i.attempts == 1 for i in items), [(i.id, i.attempts, i.last_error) for i in items]


def test_without_failover_a_study_waits_for_its_backend(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA"), scps("PACSB")
    lb = balancer(spool_config(tmp_path / "spool", [a, b]))
    pool = [lb.backend("pacsa"), lb.backend("pacsb")]
    for _ in range(50):
        studies = make_studies([("CT", 3)])
        (uid,) = studies
        if rendezvous_order(uid, pool)[0].name == "pacsa":
            break
    a.stop()
    write_series(studies[uid], tmp_path / "out")
    assert storescu("127.0.0.1", lb.port, tmp_path / "out", aec="DICOMLB").returncode == 0
    time.sleep(2.0)
    assert not b.files()
    a.start()
    assert wait_until(lambda: len(a.files()) == 3, timeout=40)
