"""The control plane against real peers: metrics, probes, admin API actions, reload, auth.

DCMTK storescu sends through dicomlb to DCMTK storescp backends; the admin listener is
reached over HTTP on loopback, as an operator or Prometheus would.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomlb.config import hash_secret
from tests.dicomdata import make_small, make_studies, write_series
from tests.integration.conftest import uids_across
from tests.peers import StoreSCP, free_port, have_dcmtk, is_listening, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def config_for(*scps: StoreSCP, strategy: str = "round_robin", **health: Any) -> dict[str, Any]:
    return {
        "pools": {
            "main": {
                "strategy": strategy,
                "health": {"interval": "0.2s", "timeout": "1s", "fall": 1, "rise": 1, **health},
                "backends": [
                    {"name": scp.ae_title.lower(), "dicom": scp.address, "max_associations": 4}
                    for scp in scps
                ],
            }
        },
        "routes": [{"name": "everything", "pool": "main"}],
    }


@pytest.fixture
def scps(tmp_path: Path) -> Any:
    started: list[StoreSCP] = []

    def make(*names: str) -> list[StoreSCP]:
        for name in names:
            started.append(StoreSCP(name, tmp_path / name, fork=True).start())
        return started[-len(names) :]

    yield make
    for scp in started:
        scp.close()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the Prometheus sample `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def send(tmp_path: Path, port: int, datasets: list[Any], name: str) -> None:
    folder = tmp_path / "out" / name
    write_series(datasets, folder)
    result = storescu("127.0.0.1", port, folder, aet="CT_1", aec="DICOMLB")
    assert result.returncode == 0, result.stderr


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_metrics_move_with_traffic(tmp_path: Path, balancer: Any, scps: Any) -> None:
    a, b = scps("PACSA", "PACSB")
    lb = balancer(config_for(a, b), admin=True)
    status, before = lb.http("GET", "/metrics")
    assert status == 200
    assert sample(before, "dicomlb_messages_total") == 0
    assert sample(before, "dicomlb_backend_up", pool="main", backend="pacsa") == 1

    send(tmp_path, lb.port, make_small(10), "ten")
    wait_for(lambda: len(a.files()) + len(b.files()) == 10)
    _, text = lb.http("GET", "/metrics")
    ok = {"command": "C-STORE", "status_class": "success", "route": "everything", "pool": "main"}
    assert sample(text, "dicomlb_messages_total", **ok) == 10
    assert sample(text, "dicomlb_messages_total", backend="pacsa") == 5  # round robin
    assert sample(text, "dicomlb_route_hits_total", route="everything") == 10
    assert sample(text, "dicomlb_relay_duration_seconds_count", pool="main") == 10
    assert sample(text, "dicomlb_relay_duration_seconds_sum", pool="main") > 0
    assert sample(text, "dicomlb_associations_total", outcome="released") == 1
    assert sample(text, "dicomlb_associations_accepted_total") == 1
    assert sample(text, "dicomlb_received_bytes_total", listener="dicom") > 10 * 8192
    assert sample(text, "dicomlb_associations_active") == 0
    assert sample(text, "dicomlb_health_checks_total", backend="pacsa", result="ok") >= 1
    assert sample(text, "dicomlb_ready") == 1

    status, state = lb.http("GET", "/api/v1/status")
    assert status == 200
    assert state["totals"]["messages"] == {"success": 10}
    assert [r["hits"] for r in state["routes"]] == [10]
    recent = state["associations"]["recent"]
    assert recent[0]["calling_aet"] == "CT_1" and recent[0]["outcome"] == "released"
    assert recent[0]["messages"] == 10
    backends = {x["name"]: x for x in state["backends"]}
    assert backends["pacsa"]["messages"] == {"success": 5}
    assert backends["pacsa"]["latency"]["count"] == 5
    assert backends["pacsa"]["latency"]["p99"] >= backends["pacsa"]["latency"]["p50"] > 0


def test_healthz_and_readyz_flip_when_a_pool_has_no_backend_up(balancer: Any, scps: Any) -> None:
    (a,) = scps("PACSA")
    lb = balancer(config_for(a), admin=True)
    assert lb.http("GET", "/healthz") == (200, {"status": "alive", "version": "0.1.0"})
    assert lb.http("GET", "/readyz")[0] == 200
    a.stop()
    wait_for(lambda: lb.http("GET", "/readyz")[0] == 503)
    assert lb.http("GET", "/readyz")[1]["reasons"] == [
        "dicom route everything: pool main has no available backend"
    ]
    assert lb.http("GET", "/healthz/pools") == (
        503,
        {"status": "degraded", "pools_without_available_backend": ["main"]},
    )
    assert lb.http("GET", "/healthz")[0] == 200
    _, text = lb.http("GET", "/metrics")
    assert sample(text, "dicomlb_backend_up", backend="pacsa") == 0
    assert sample(text, "dicomlb_backend_transitions_total", backend="pacsa", state="down") == 1
    a.start()
    wait_for(lambda: lb.http("GET", "/readyz")[0] == 200)
    _, backend = lb.http("GET", "/api/v1/backends/pacsa")
    assert [t["state"] for t in backend["transitions"]] == ["down", "up"]
    assert [ok for _, ok in backend["checks"]].count(False) >= 1


def test_drained_backend_gets_no_new_studies_and_enable_brings_it_back(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA", "PACSB")
    lb = balancer(config_for(a, b, strategy="affinity"), admin=True)
    status, body = lb.http("POST", "/api/v1/backends/pacsa/drain")
    assert status == 200
    assert (body["mode"], body["state"], body["enabled"]) == ("draining", "drained", False)
    studies = make_studies([("CT", 3)] * 8)
    for n, instances in enumerate(studies.values()):
        send(tmp_path, lb.port, instances, f"drained-{n}")
    assert len(a.files()) == 0
    assert len(b.wait_files(24)) == 24

    assert lb.http("POST", "/api/v1/backends/pacsa/enable")[1]["state"] == "up"
    # Affinity: with both up, some new studies belong to pacsa (chosen so that one does).
    pool = [lb.backend("pacsa"), lb.backend("pacsb")]
    studies = make_studies([("CT", 3)] * 12, study_uids=uids_across(pool, 12))
    for n, instances in enumerate(studies.values()):
        send(tmp_path, lb.port, instances, f"enabled-{n}")
    assert len(a.wait_files(3)) >= 3

    assert lb.http("POST", "/api/v1/backends/pacsa/disable")[1]["state"] == "disabled"
    assert lb.http("POST", "/api/v1/backends/nope/drain")[0] == 404
    _, text = lb.http("GET", "/metrics")
    assert sample(text, "dicomlb_backend_enabled", backend="pacsa") == 0
    assert sample(text, "dicomlb_admin_actions_total", action="draining") == 1


def test_added_backend_receives_and_removed_one_does_not(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA", "PACSB")
    lb = balancer(config_for(a), admin=True)
    new = {"name": "pacsb", "dicom": b.address, "max_associations": 2}
    status, body = lb.http("POST", "/api/v1/pools/main/backends", new)
    assert status == 201, body
    assert (body["pool"], body["state"]) == ("main", "up")
    assert lb.http("POST", "/api/v1/pools/main/backends", new)[0] == 409
    status, body = lb.http("POST", "/api/v1/pools/main/backends", {"name": "x", "dicom": "X@h"})
    assert status == 422
    assert "pools.main.backends[+].dicom" in body["error"]
    assert lb.http("POST", "/api/v1/pools/nope/backends", {"name": "y", "dicom": "Y@h:1"})[0] == 404

    send(tmp_path, lb.port, make_small(6), "six")
    assert len(b.wait_files(3)) == 3 and len(a.files()) == 3  # round robin over both

    assert lb.http("DELETE", "/api/v1/backends/pacsa") == (200, {"removed": "pacsa"})
    assert lb.http("DELETE", "/api/v1/backends/pacsb")[0] == 409  # the last of its pool
    send(tmp_path, lb.port, make_small(4), "four")
    assert len(b.wait_files(7)) == 7 and len(a.files()) == 3
    assert [x["name"] for x in lb.http("GET", "/api/v1/backends")[1]] == ["pacsb"]


def test_reload_with_a_broken_file_keeps_the_old_config(
    tmp_path: Path, balancer: Any, scps: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = scps("PACSA", "PACSB")
    file = tmp_path / "lb.yaml"
    lb = balancer(config_for(a), admin=True, config_file=file)
    good = yaml.safe_load(file.read_text())

    broken = yaml.safe_load(file.read_text())
    broken["pools"]["main"]["backends"].append({"name": "pacsb", "dicom": "PACSB@127.0.0.1"})
    file.write_text(yaml.safe_dump(broken))
    with caplog.at_level(logging.INFO, logger="dicomlb"):
        status, body = lb.http("POST", "/api/v1/reload")
    assert status == 422
    assert body["result"] == "error" and body["source"] == "api"
    assert f"{file}: pools.main.backends[1].dicom: " in body["error"]
    assert "admin.reload result=error source=api" in caplog.text
    # Still the old config: pacsa only, and it serves.
    assert [x["name"] for x in lb.http("GET", "/api/v1/backends")[1]] == ["pacsa"]
    send(tmp_path, lb.port, make_small(3), "after-broken")
    assert len(a.wait_files(3)) == 3
    _, state = lb.http("GET", "/api/v1/status")
    assert state["config"]["last_reload"]["result"] == "error"
    assert "backends[1].dicom" in state["errors"][-1]["text"]
    _, text = lb.http("GET", "/metrics")
    assert sample(text, "dicomlb_config_reloads_total", result="error", source="api") == 1
    assert sample(text, "dicomlb_config_last_reload_successful") == 0

    file.write_text("pools: [unclosed\n")
    assert lb.http("POST", "/api/v1/reload")[0] == 422

    good["pools"]["main"]["backends"] = [{"name": "pacsb", "dicom": b.address}]
    file.write_text(yaml.safe_dump(good))
    status, body = lb.http("POST", "/api/v1/reload")
    assert (status, body["result"]) == (200, "ok")
    send(tmp_path, lb.port, make_small(2), "after-fixed")
    assert len(b.wait_files(2)) == 2 and len(a.files()) == 3
    _, text = lb.http("GET", "/metrics")
    assert sample(text, "dicomlb_config_reloads_total", result="ok") == 1
    assert sample(text, "dicomlb_config_last_reload_successful") == 1


def test_drain_survives_a_reload_of_an_unchanged_backend(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b = scps("PACSA", "PACSB")
    file = tmp_path / "lb.yaml"
    lb = balancer(config_for(a, b), admin=True, config_file=file)
    lb.http("POST", "/api/v1/backends/pacsa/drain")
    assert lb.http("POST", "/api/v1/reload")[0] == 200
    assert lb.http("GET", "/api/v1/backends/pacsa")[1]["mode"] == "draining"
    send(tmp_path, lb.port, make_small(4), "four")
    assert len(b.wait_files(4)) == 4 and not a.files()


def test_reload_during_a_400_instance_send_loses_nothing(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    a, b, c = scps("PACSA", "PACSB", "PACSC")
    file = tmp_path / "lb.yaml"
    config = config_for(a, b)
    lb = balancer(config, admin=True, config_file=file)
    folder = tmp_path / "out" / "big"
    datasets = make_small(400)
    sent = {ds.SOPInstanceUID for ds in datasets}
    write_series(datasets, folder)
    results: list[Any] = []
    sender = threading.Thread(
        target=lambda: results.append(storescu("127.0.0.1", lb.port, folder, aet="CT_1"))
    )
    sender.start()
    received = lambda: len(a.files()) + len(b.files()) + len(c.files())  # noqa: E731
    wait_for(lambda: received() >= 20, timeout=30)
    reloads = 0
    variants = [[a, b, c], [b, c], [a, b]]
    while sender.is_alive():
        backends = variants[reloads % len(variants)]
        changed = config_for(*backends)
        changed["listeners"] = config["listeners"]
        file.write_text(yaml.safe_dump(changed))
        status, body = lb.http("POST", "/api/v1/reload")
        assert status == 200, body
        reloads += 1
        time.sleep(0.05)
    sender.join()
    assert results[0].returncode == 0, results[0].stderr
    assert reloads >= 2, "the send finished before the reloads could happen"
    wait_for(lambda: received() >= 400, timeout=30)
    assert sum(len(s.files()) for s in (a, b, c)) == 400
    uids = {uid for s in (a, b, c) for uid in s.by_sop_instance_uid()}
    assert uids == sent


def test_auth_is_required_when_configured(balancer: Any, scps: Any) -> None:
    (a,) = scps("PACSA")
    config = config_for(a)
    config["listeners"] = {"admin": {"auth": {"bearer_tokens_sha256": [hash_secret("tok-123")]}}}
    lb = balancer(config, admin=True)
    status, body = lb.http("GET", "/api/v1/status")
    assert status == 401 and body == {"error": "authentication required", "schemes": ["bearer"]}
    assert lb.http("GET", "/metrics")[0] == 401
    assert lb.http("GET", "/api/v1/status", token="wrong")[0] == 401
    assert lb.http("POST", "/api/v1/backends/pacsa/drain")[0] == 401
    assert lb.http("GET", "/api/v1/status", token="tok-123")[0] == 200
    assert lb.http("GET", "/healthz")[0] == 200  # probes stay open
    assert lb.http("GET", "/readyz")[0] == 200
    assert lb.http("GET", "/")[0] == 200  # the page itself holds no data
    # A state change must be JSON (a cross-site form cannot send that).
    status, _ = lb.http(
        "POST",
        "/api/v1/backends/pacsa/drain",
        token="tok-123",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    assert lb.http("POST", "/api/v1/backends/pacsa/drain", token="tok-123")[0] == 200


def test_file_watch_reloads(tmp_path: Path, balancer: Any, scps: Any) -> None:
    a, b = scps("PACSA", "PACSB")
    file = tmp_path / "lb.yaml"
    config = config_for(a)
    config["watch"] = True
    lb = balancer(config, admin=True, config_file=file)
    time.sleep(0.5)  # let the watcher start
    changed = yaml.safe_load(file.read_text())
    changed["pools"]["main"]["backends"].append({"name": "pacsb", "dicom": b.address})
    file.write_text(yaml.safe_dump(changed))
    wait_for(lambda: len(lb.http("GET", "/api/v1/backends")[1]) == 2, timeout=15)
    assert lb.http("GET", "/api/v1/config")[1]["last_reload"]["source"] == "watch"


def test_file_watch_follows_a_configmap_swap(tmp_path: Path, balancer: Any, scps: Any) -> None:
    """A Kubernetes ConfigMap volume: lb.yaml -> ..data/lb.yaml, ..data -> a timestamped
    folder; an update writes a new folder and renames a new ..data over the old one."""
    a, b = scps("PACSA", "PACSB")
    volume = tmp_path / "volume"
    volume.mkdir()
    config = config_for(a)
    config["watch"] = True

    def publish(version: str, text: str) -> None:
        folder = volume / f"..{version}"
        folder.mkdir()
        (folder / "lb.yaml").write_text(text)
        (volume / "..data_tmp").symlink_to(folder.name)
        (volume / "..data_tmp").rename(volume / "..data")

    publish("2026_01", "")
    lb_file = volume / "lb.yaml"
    lb_file.symlink_to("..data/lb.yaml")
    lb = balancer(config, admin=True, config_file=lb_file)  # written through the links
    time.sleep(0.5)  # let the watcher start
    changed = yaml.safe_load(lb_file.read_text())
    changed["pools"]["main"]["backends"].append({"name": "pacsb", "dicom": b.address})
    publish("2026_02", yaml.safe_dump(changed))
    wait_for(lambda: len(lb.http("GET", "/api/v1/backends")[1]) == 2, timeout=15)
    assert lb.http("GET", "/api/v1/config")[1]["last_reload"]["source"] == "watch"


def test_admin_listener_is_rebound_only_when_its_bind_changes(
    tmp_path: Path, balancer: Any, scps: Any
) -> None:
    (a,) = scps("PACSA")
    file = tmp_path / "lb.yaml"
    lb = balancer(config_for(a), admin=True, config_file=file)
    server = lb.app.admin
    assert lb.http("POST", "/api/v1/reload")[0] == 200
    assert lb.app.admin is server  # unchanged: not rebound

    config = yaml.safe_load(file.read_text())
    new_port = free_port()
    config["listeners"]["admin"]["bind"] = f"127.0.0.1:{new_port}"
    file.write_text(yaml.safe_dump(config))
    old_url = lb.admin_url
    assert lb.http("POST", "/api/v1/reload")[0] == 200
    wait_for(lambda: lb.app.admin is not server and lb.app.admin.port == new_port)
    assert lb.http("GET", "/healthz")[0] == 200
    assert old_url != lb.admin_url
    assert not is_listening(int(old_url.rsplit(":", 1)[1]))


def test_reload_keeps_install_configuration_and_names_what_waits_for_a_restart(
    tmp_path: Path, balancer: Any, scps: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (a,) = scps("PACSA")
    file = tmp_path / "lb.yaml"
    lb = balancer(config_for(a), admin=True, config_file=file)
    moved = yaml.safe_load(file.read_text())
    moved["listeners"]["dicom"]["bind"] = f"127.0.0.1:{free_port()}"
    moved["listeners"]["dicom"]["max_associations"] = 7  # dynamic: applied
    file.write_text(yaml.safe_dump(moved))
    with caplog.at_level(logging.INFO, logger="dicomlb"):
        status, body = lb.http("POST", "/api/v1/reload")
    assert status == 200, body
    assert body["restart_needed"] == ["listeners.dicom.bind"]
    assert "config.restart_needed keys=listeners.dicom.bind" in caplog.text
    listener = next(x for x in lb.http("GET", "/api/v1/listeners")[1] if x["name"] == "dicom")
    assert listener["bind"].endswith(f":{lb.port}") and listener["max_associations"] == 7
    send(tmp_path, lb.port, make_small(2), "after-move")
    assert len(a.wait_files(2)) == 2

    # Without the listener in the file, the bound one goes on serving as it was.
    del moved["listeners"]["dicom"]
    file.write_text(yaml.safe_dump(moved))
    status, body = lb.http("POST", "/api/v1/reload")
    assert status == 200, body
    assert body["restart_needed"] == ["listeners.dicom"]
    send(tmp_path, lb.port, make_small(2), "after-removal")
    assert len(a.wait_files(4)) == 4
