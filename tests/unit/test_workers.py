"""Worker processes, decided without processes: which worker runs what, the restart backoff,
the exit status, the spool parts no worker would own, and `workers` in the configuration."""

from __future__ import annotations

import copy
import json
import logging
import signal
from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot, describe
from dicomlb.install import pin
from dicomlb.logs import JsonFormatter, PlainFormatter
from dicomlb.workers import (
    RESTART_BASE,
    RESTART_CAP,
    STABLE,
    Worker,
    admin_port,
    describe_status,
    exit_status,
    failures_after,
    for_worker,
    parse_worker,
    restart_delay,
    spool_parts,
    stranded,
    stranded_message,
    worker_directory,
    worst_status,
)

BASE: dict[str, Any] = {
    "workers": 2,
    "listeners": {
        "dicom": {"bind": "0.0.0.0:11112"},
        "http": {"bind": "0.0.0.0:8042"},
        "admin": {"bind": "127.0.0.1:8404"},
    },
    "pools": {
        "pacs": {
            "backends": [
                {
                    "name": "orthanc",
                    "dicom": "ORTHANC@10.0.0.11:4242",
                    "http": "http://10.0.0.11:8042",
                    "max_associations": 4,
                },
                {
                    "name": "modality",
                    "dicom": "MOD@10.0.0.12:104",
                    "http": "http://10.0.0.12:80",
                    "max_associations": 1,
                },
            ],
            "http": {"max_connections": 16},
        }
    },
    "routes": [{"name": "all", "pool": "pacs"}],
    "http_routes": [{"name": "web", "pool": "pacs"}],
    "spool": {"directory": "/var/spool/dicomlb"},
    "state_dir": "/var/lib/dicomlb",
}


def config(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        build_snapshot(data, "lb.yaml")
    return str(err.value)


def test_parse_worker_takes_k_of_n_and_refuses_the_rest() -> None:
    assert parse_worker("1/4") == Worker(index=1, count=4)
    assert str(Worker(index=0, count=2)) == "0/2"
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0", ""):
        with pytest.raises(ValueError, match="--worker"):
            parse_worker(bad)


def test_each_worker_has_its_admin_port_and_directories() -> None:
    assert [admin_port(8404, k) for k in range(3)] == [8404, 8405, 8406]
    assert worker_directory("/var/spool/dicomlb/", 1) == "/var/spool/dicomlb/worker-1"
    snapshot = build_snapshot(config())
    one = for_worker(snapshot, Worker(index=1, count=2))
    assert one.dicom is not None and one.dicom.reuse_port and one.dicom.port == 11112
    assert one.http is not None and one.http.reuse_port and one.http.port == 8042
    assert one.admin is not None and one.admin.port == 8405
    assert one.spool is not None and one.spool.directory == "/var/spool/dicomlb/worker-1"
    assert one.state_dir == "/var/lib/dicomlb/worker-1"
    assert snapshot.dicom is not None and not snapshot.dicom.reuse_port
    # One worker runs the file as written: no shared ports, the directories themselves.
    alone = build_snapshot(config(workers=1))
    assert for_worker(alone, Worker(index=0, count=1)) == alone


def test_workers_divide_backend_limits_with_instances() -> None:
    """A backend's limit is shared by every worker of every instance (floor 1)."""
    snapshot = build_snapshot(config(instances=2), "lb.yaml")
    pacs = snapshot.pools["pacs"]
    assert snapshot.workers == 2 and pacs.instances == 4
    assert [b.max_associations for b in pacs.backends] == [1, 1]  # 4 // 4, floor 1
    assert pacs.http is not None and pacs.http.max_connections == 4
    two = build_snapshot(config(), "lb.yaml").pools["pacs"]
    assert [b.max_associations for b in two.backends] == [2, 1]
    text = describe(build_snapshot(config(), "lb.yaml"))
    assert "workers: 2 processes" in text
    assert "shared by 2 processes (1 instance(s) x 2 workers)" in text
    assert "max associations 2 per worker" in text
    assert "worker K on port 8404 + K (8404-8405)" in text
    assert "/var/spool/dicomlb/worker-K" in text


def test_a_reload_divides_by_the_workers_running() -> None:
    """The file now says 4 workers; until a restart 2 run, and the limits stay theirs."""
    running = build_snapshot(config(), "lb.yaml")
    loaded = build_snapshot(config(workers=4), "lb.yaml", workers=running.workers)
    assert [b.max_associations for b in loaded.pools["pacs"].backends] == [2, 1]
    applied, waiting = pin(running, loaded)
    assert waiting == ("workers",)
    assert applied.workers == 2


def test_check_warns_when_a_backend_takes_fewer_associations_than_workers() -> None:
    snapshot = build_snapshot(config(), "lb.yaml")
    (warning,) = [w for w in snapshot.warnings if "modality" in w]
    assert 'backend "modality" takes 1 association(s)' in warning
    assert "2 dicomlb processes share it (1 instance(s) x 2 workers)" in warning
    assert not any("orthanc" in w for w in snapshot.warnings)
    assert not build_snapshot(config(workers=1)).warnings


def test_admin_ports_in_a_row_must_not_reach_other_ports() -> None:
    data = config(workers=3)
    data["listeners"]["admin"]["bind"] = "127.0.0.1:8040"  # 8040-8042 reaches http's 8042
    assert "listeners.admin.bind: the 3 workers' admin listeners take ports 8040-8042" in (
        errors(data)
    )
    data["listeners"]["admin"]["bind"] = "127.0.0.1:65535"
    assert "ports 65535-65537, past 65535" in errors(data)
    assert "workers" in errors(config(workers=0))
    assert "workers" in errors(config(workers=65))


def test_spool_parts_no_worker_owns_are_stranded() -> None:
    assert spool_parts(1) == {""}
    assert spool_parts(2) == {"worker-0", "worker-1"}
    holding = {"": 0, "worker-0": 3, "worker-1": 0, "worker-2": 5}
    assert stranded(holding, 3) == []
    assert stranded(holding, 2) == ["worker-2"]
    assert stranded(holding, 1) == ["worker-0", "worker-2"]
    assert stranded({"": 7, "worker-0": 1}, 2) == [""]
    message = stranded_message("/s", ["worker-2"], 2)
    assert "/s/worker-2 would never be delivered with workers: 2" in message
    assert "start with workers: 3 (or more)" in message
    assert "start with workers: 1" in stranded_message("/s", [""], 2)


def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_stable_run() -> None:
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays[0] == RESTART_BASE and delays[1] == 2 * RESTART_BASE
    assert delays == sorted(delays) and delays[-1] == RESTART_CAP
    assert restart_delay(10_000) == RESTART_CAP
    assert failures_after(0, 0.1) == 1
    assert failures_after(3, 1.0) == 4  # died again quickly
    assert failures_after(3, STABLE) == 1  # it had run long enough: start over


def test_the_supervisor_exits_with_the_worst_status() -> None:
    assert exit_status(0) == 0 and exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 128 + 9
    assert worst_status([0, 0]) == 0
    assert worst_status([0, 2, 3]) == 3
    assert worst_status([3, -signal.SIGTERM]) == 143
    assert worst_status([]) == 0
    assert describe_status(-signal.SIGKILL) == "SIGKILL"
    assert describe_status(2) == "2"
    assert describe_status(-200) == "signal 200"


def test_a_worker_tags_its_log_lines() -> None:
    record = logging.LogRecord(
        "dicomlb.app", logging.INFO, "", 0, "store.delivered ms=%d", (3,), None
    )
    assert PlainFormatter("1/2").format(record).endswith(" store.delivered ms=3 worker=1/2")
    assert PlainFormatter().format(record).endswith(" store.delivered ms=3")
    line = json.loads(JsonFormatter("1/2").format(record))
    assert (line["event"], line["ms"], line["worker"]) == ("store.delivered", 3, "1/2")
    assert "worker" not in json.loads(JsonFormatter().format(record))
