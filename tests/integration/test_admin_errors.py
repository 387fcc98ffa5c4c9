"""The status document's recent errors, against real peers: a store a backend refuses, one no
route takes, an association refused, a backend going down, an HTTP 5xx; each with its kind,
what it is about (SOP instance, backend, peer) and why. Also what the page needs to lay
itself out: the protocols configured and the names of the SOP classes routes mention."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_small, write_series
from tests.httppeers import HttpBalancer, WebBackend
from tests.integration.test_spool import RefusingBackend
from tests.peers import LOOPBACK, StoreSCP, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

CT = "1.2.840.10008.5.1.4.1.1.2"


def wait_for(read: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def errors_of(lb: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in lb.http("GET", "/api/v1/status")[1]["errors"] if e["kind"] == kind]


def dicom_config(scp: StoreSCP, refusing: RefusingBackend) -> dict[str, Any]:
    return {
        "listeners": {"dicom": {"bind": f"127.0.0.1:{free_port()}", "check_called_aet": True}},
        "pools": {
            "main": {
                "health": {"interval": "0.2s", "timeout": "1s", "fall": 1, "rise": 1},
                "backends": [{"name": "pacs-a", "dicom": scp.address}],
            },
            "refusing": {
                "health": {"enabled": False},
                "backends": [
                    {"name": "refusing-a", "dicom": f"REFUSING@127.0.0.1:{refusing.port}"}
                ],
            },
        },
        "routes": [
            {
                "name": "refused-ct",
                "match": {"sop_class": "CTImageStorage", "PatientID": "REFUSE"},
                "pool": "refusing",
            },
            {"name": "ct", "match": {"sop_class": CT}, "pool": "main"},
        ],
    }


def test_recent_errors_say_what_failed_and_why(tmp_path: Path, balancer: Any) -> None:
    scp = StoreSCP("PACSA", tmp_path / "a", fork=True).start()
    refusing = RefusingBackend()
    try:
        config = dicom_config(scp, refusing)
        config["listeners"]["dicom"]["ae_title"] = "DICOMLB"
        lb = balancer(config, admin=True)
        ok = write_series(make_small(2), tmp_path / "ok")
        assert storescu(LOOPBACK, lb.port, ok, aec="DICOMLB").returncode == 0
        assert lb.http("GET", "/api/v1/status")[1]["errors"] == []

        refused = write_series(make_small(1, patient_id="REFUSE"), tmp_path / "refused")
        assert storescu(LOOPBACK, lb.port, refused, aec="DICOMLB").returncode != 0
        (failed,) = errors_of(lb, "store.failed")
        assert failed["backend"] == "refusing-a" and failed["route"] == "refused-ct"
        assert failed["status"] == "0xA700" and "OUT_OF_RESOURCES" in failed["text"]

        unrouted = write_series(make_small(1, modality="OT"), tmp_path / "ot")
        assert storescu(LOOPBACK, lb.port, unrouted, aec="DICOMLB").returncode != 0
        (no_route,) = errors_of(lb, "store.refused")
        assert no_route["text"] == "C-STORE refused (no route): no route matches this instance"
        assert no_route["sop_instance_uid"] and no_route["status"] == "0x0124"

        assert storescu(LOOPBACK, lb.port, ok, aet="CT_9", aec="WRONG").returncode != 0
        (rejected,) = errors_of(lb, "association.rejected")
        assert rejected["calling_aet"] == "CT_9" and rejected["called_aet"] == "WRONG"
        assert rejected["peer"].startswith("127.0.0.1:")
        assert "WRONG" in rejected["text"]

        scp.stop()
        down = wait_for(lambda: errors_of(lb, "backend.down"))
        assert down and down[0]["backend"] == "pacs-a" and down[0]["cause"] == "check"
        assert down[0]["text"].startswith("backend pacs-a down (check): ")
        assert len(down[0]["text"]) > len("backend pacs-a down (check): ")  # the check's error

        _, state = lb.http("GET", "/api/v1/status")
        assert [e["time"] for e in state["errors"]] == sorted(e["time"] for e in state["errors"])
        assert all(set(e) >= {"time", "kind", "text", "count"} for e in state["errors"])
        assert "TEST^DICOMLB" not in str(state["errors"])  # never a patient's name
        assert state["protocols"] == ["dicom"]
        assert state["uid_names"] == {CT: "CT Image Storage"}
        routes = {r["name"]: r["match"] for r in state["routes"]}
        assert routes == {
            "refused-ct": "sop_class = CTImageStorage and PatientID = REFUSE",
            "ct": f"sop_class = {CT}",
        }
    finally:
        scp.close()
        refusing.close()


def test_an_http_only_configuration_reports_http_and_its_5xx(tmp_path: Path) -> None:
    web = WebBackend("web-1").start()
    admin = free_port()
    config = {
        "listeners": {"admin": {"bind": f"{LOOPBACK}:{admin}"}},
        "pools": {
            "web": {"health": {"enabled": False}, "backends": [{"name": "web-1", "http": web.url}]}
        },
        "http_routes": [
            {"name": "api", "match": {"path_prefix": ["/status/", "/api/"]}, "pool": "web"}
        ],
    }
    try:
        with HttpBalancer(config) as lb:
            conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
            conn.request("GET", "/status/503?PatientName=DOE^JANE")
            response = conn.getresponse()
            response.read()
            assert response.status == 503
            conn.close()
            status = http.client.HTTPConnection(LOOPBACK, admin, timeout=10)
            status.request("GET", "/api/v1/status")
            state = json.loads(status.getresponse().read())
            status.close()
    finally:
        web.stop()
    assert state["protocols"] == ["http"]
    assert state["http_routes"][0]["match"] == "path_prefix: [/status/, /api/]"
    (error,) = [e for e in state["errors"] if e["kind"] == "http.5xx"]
    assert error["text"] == "GET /status/503 answered 503 (backend web-1)"
    assert (error["backend"], error["route"], error["status"]) == ("web-1", "api", "503")
    assert "DOE" not in str(state)
