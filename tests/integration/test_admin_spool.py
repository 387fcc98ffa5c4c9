"""The spool in the control plane, against real peers: DCMTK storescu sends through dicomlb
(`ack: spool`) to DCMTK storescp / a refusing pynetdicom backend; the metrics and the admin
API move as an operator would see them, and a dead letter retried through the API arrives."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from dicomlb.logs import JsonFormatter
from tests.dicomdata import make_small, write_series
from tests.integration.test_admin import sample, wait_for
from tests.integration.test_spool import RefusingBackend, spool_config
from tests.peers import StoreSCP, have_dcmtk, sop_instance_uid, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def metrics(lb: Any) -> str:
    status, text = lb.http("GET", "/metrics")
    assert status == 200
    return str(text)


def test_spool_depth_and_age_move_while_the_backend_is_down_then_drain(
    tmp_path: Path, balancer: Any
) -> None:
    a = StoreSCP("PACSA", tmp_path / "a", fork=True)  # not started: down
    try:
        config = spool_config(tmp_path / "spool", [a], health=True)
        lb = balancer(config, admin=True)
        files = write_series(make_small(6), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0

        status, spool = lb.http("GET", "/api/v1/spool")
        assert status == 200
        assert spool["by_state"]["queued"] + spool["by_state"]["sending"] == 6
        assert spool["items"] == 6 and spool["dead"] == 0 and spool["accepting"] is True
        assert spool["bytes"] > 6 * 1000
        assert spool["oldest_age_seconds"] >= 0
        assert spool["backends"]["pacsa"]["queued"] == 6
        wait_for(lambda: lb.http("GET", "/api/v1/spool")[1]["oldest_age_seconds"] > 0.3)

        text = metrics(lb)
        assert sample(text, "dicomlb_spool_items", state="queued") == 6
        assert sample(text, "dicomlb_spool_backend_items", backend="pacsa", state="queued") == 6
        assert sample(text, "dicomlb_spool_bytes") == spool["bytes"]
        assert sample(text, "dicomlb_spool_oldest_age_seconds") > 0.3
        assert sample(text, "dicomlb_spool_dead_items") == 0
        assert sample(text, "dicomlb_spool_accepting") == 1
        assert sample(text, "dicomlb_spool_spooled_total", route="all", pool="pacs") == 6
        assert sample(text, "dicomlb_spool_commit_seconds_count") == 6
        assert sample(text, "dicomlb_spool_commit_seconds_sum") > 0
        assert sample(text, "dicomlb_spool_deliveries_total") == 0  # down costs no attempt
        # Answered Success once durable: route hits and messages count, no backend reached.
        assert sample(text, "dicomlb_route_hits_total", route="all") == 6
        assert sample(text, "dicomlb_messages_total", status_class="success", backend="") == 6

        status, listed = lb.http("GET", "/api/v1/spool/items?state=queued,sending&backend=pacsa")
        assert status == 200
        assert {i["sop_instance_uid"] for i in listed} == {sop_instance_uid(p) for p in files}
        assert all(i["on_disk"] and i["route"] == "all" for i in listed)
        assert lb.http("GET", "/api/v1/spool/items?limit=2")[1][1]["id"] == listed[1]["id"]
        assert lb.http("GET", f"/api/v1/spool/items/{listed[0]['id']}")[1] == listed[0]
        assert lb.http("GET", "/api/v1/spool/items?state=nope")[0] == 400
        assert lb.http("GET", "/api/v1/spool/items/999")[0] == 404

        a.start()
        wait_for(lambda: len(a.files()) == 6, timeout=30)
        wait_for(lambda: sample(metrics(lb), "dicomlb_spool_items", state="delivered") == 6)
        text = metrics(lb)
        assert sample(text, "dicomlb_spool_items", state="queued") == 0
        assert sample(text, "dicomlb_spool_oldest_age_seconds") == 0
        assert sample(text, "dicomlb_spool_deliveries_total", backend="pacsa", result="delivered")
        assert sample(text, "dicomlb_spool_bytes") == 0  # delivered files are removed
        status, state = lb.http("GET", "/api/v1/status")
        assert state["spool"]["by_state"]["delivered"] == 6
    finally:
        a.close()


def test_dead_letters_show_in_metrics_and_are_retried_and_purged_through_the_api(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = RefusingBackend()
    config = spool_config(tmp_path / "spool", [], retry={"max_attempts": 2})
    config["pools"]["pacs"]["backends"] = [
        {"name": "pacs-a", "dicom": f"PACSA@127.0.0.1:{refusing.port}"}
    ]
    config["pools"]["pacs"]["idle_timeout"] = "0.2s"  # no reuse of the refusing association
    lb = balancer(config, admin=True)
    files = write_series(make_small(3), tmp_path / "out")
    caplog.set_level(logging.INFO)
    try:
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        wait_for(lambda: lb.http("GET", "/api/v1/spool")[1]["dead"] == 3, timeout=20)
    finally:
        refusing.close()

    text = metrics(lb)
    assert sample(text, "dicomlb_spool_dead_items") == 3
    assert sample(text, "dicomlb_spool_items", state="dead") == 3
    assert sample(text, "dicomlb_spool_deliveries_total", backend="pacs-a", result="failed") == 3
    assert sample(text, "dicomlb_spool_deliveries_total", backend="pacs-a", result="dead") == 3
    _, spool = lb.http("GET", "/api/v1/spool")
    dead = spool["dead_letters"]
    assert len(dead) == 3
    assert all("max_attempts 2" in d["last_error"] and "0xA700" in d["last_error"] for d in dead)
    assert all(d["sop_class_name"] == "CT Image Storage" for d in dead)
    ids = [d["id"] for d in dead]

    # The operator purges one, fixes the backend (storescp on the same port), retries one,
    # then every other dead letter.
    assert lb.http("DELETE", f"/api/v1/spool/items/{ids[2]}") == (200, {"purged": 1})
    assert lb.http("DELETE", f"/api/v1/spool/items/{ids[2]}")[0] == 404
    with StoreSCP("PACSA", tmp_path / "a", port=refusing.port) as good:
        assert lb.http("POST", f"/api/v1/spool/items/{ids[0]}/retry") == (200, {"queued": 1})
        wait_for(lambda: len(good.files()) == 1)
        assert set(good.by_sop_instance_uid()) == {dead[0]["sop_instance_uid"]}
        wait_for(lambda: lb.http("GET", "/api/v1/spool")[1]["by_state"]["delivered"] == 1)
        status, body = lb.http("POST", f"/api/v1/spool/items/{ids[0]}/retry")
        assert status == 409 and "delivered" in body["error"]
        assert lb.http("POST", "/api/v1/spool/retry-dead") == (200, {"queued": 1})
        wait_for(lambda: len(good.files()) == 2)
    wait_for(lambda: sample(metrics(lb), "dicomlb_spool_dead_items") == 0)
    text = metrics(lb)
    assert sample(text, "dicomlb_spool_items", state="delivered") == 2
    assert sample(text, "dicomlb_spool_deliveries_total", backend="pacs-a", result="delivered") == 2
    assert sample(text, "dicomlb_spool_operations_total", action="retry") == 2
    assert sample(text, "dicomlb_spool_operations_total", action="purge") == 1
    assert lb.http("POST", "/api/v1/spool/purge-dead") == (200, {"purged": 0})

    # The access log: one association.closed line per association, as JSON with fields.
    closed = [r for r in caplog.records if r.getMessage().startswith("association.closed")]
    assert closed
    line = json.loads(JsonFormatter().format(closed[0]))
    assert line["event"] == "association.closed"
    assert line["calling_aet"] == "STORESCU" and line["called_aet"] == "DICOMLB"
    assert line["messages"] == 3 and line["outcome"] == "released" and line["bytes"] > 0


def test_spool_api_answers_404_without_a_spool(tmp_path: Path, balancer: Any) -> None:
    a = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    try:
        config = {
            "pools": {"main": {"backends": [{"name": "pacsa", "dicom": a.address}]}},
            "routes": [{"name": "all", "pool": "main"}],
        }
        lb = balancer(config, admin=True)
        status, body = lb.http("GET", "/api/v1/spool")
        assert status == 404 and "no spool" in body["error"]
        assert lb.http("POST", "/api/v1/spool/retry-dead")[0] == 404
        assert lb.http("GET", "/api/v1/status")[1]["spool"] is None
        assert "dicomlb_spool_items" not in metrics(lb)
    finally:
        a.close()


def test_a_spooling_instance_stays_ready_while_its_backends_are_down(
    tmp_path: Path, balancer: Any
) -> None:
    """Readiness is this instance's: with `ack: spool` and room in the spool it takes
    instances although no backend is up (`/healthz/pools` says so); a full spool is what
    makes it not ready."""
    a = StoreSCP("PACSA", tmp_path / "a", fork=True)  # not started: down
    try:
        lb = balancer(spool_config(tmp_path / "spool", [a], health=True, max_items=3), admin=True)
        wait_for(lambda: lb.http("GET", "/healthz/pools")[0] == 503)
        assert lb.http("GET", "/healthz/pools")[1]["pools_without_available_backend"] == ["pacs"]
        assert lb.http("GET", "/readyz") == (200, {"status": "ready"})
        text = metrics(lb)
        assert sample(text, "dicomlb_ready") == 1
        assert sample(text, "dicomlb_pools_unavailable") == 1
        assert sample(text, "dicomlb_pool_available_backends", pool="pacs") == 0

        files = write_series(make_small(3), tmp_path / "out")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        status, body = lb.http("GET", "/readyz")
        assert status == 503, body
        (reason,) = body["reasons"]
        assert reason.startswith(
            "dicom route all: pool pacs has no available backend and the spool refuses new "
            "instances ("
        )
        assert sample(metrics(lb), "dicomlb_ready") == 0

        a.start()
        wait_for(lambda: len(a.files()) == 3, timeout=30)
        wait_for(lambda: lb.http("GET", "/readyz")[0] == 200)
        wait_for(lambda: lb.http("GET", "/healthz/pools")[0] == 200)
        assert lb.http("GET", "/healthz/pools")[1] == {
            "status": "ok",
            "pools_without_available_backend": [],
        }
    finally:
        a.close()
