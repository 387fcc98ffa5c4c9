"""The HTTP load balancer in the control plane: requests through the HTTP listener to aiohttp
backends move the metrics and the status document, `/readyz` counts HTTP routes' pools, and
each request has an access log line (plain and JSON)."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dicomlb.logs import JsonFormatter
from tests.httppeers import HttpBalancer, WebBackend
from tests.integration.test_admin import sample, wait_for
from tests.peers import LOOPBACK, free_port


def admin(lb: HttpBalancer, path: str) -> tuple[int, Any]:
    """GET on the admin listener: (status, JSON or text)."""
    assert lb.app.admin is not None
    try:
        with urllib.request.urlopen(lb.app.admin.url.rstrip("/") + path, timeout=10) as answer:
            status, raw, kind = answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        status, raw, kind = err.code, err.read(), err.headers["Content-Type"]
    return status, json.loads(raw) if "json" in kind else raw.decode()


@pytest.fixture
def backends() -> Iterator[list[WebBackend]]:
    started = [WebBackend(name).start() for name in ("web-a", "web-b")]
    yield started
    for b in started:
        b.stop()


@pytest.fixture
def lb(backends: list[WebBackend]) -> Iterator[HttpBalancer]:
    config = {
        "listeners": {"admin": {"bind": f"{LOOPBACK}:{free_port()}"}},
        "pools": {
            "web": {
                "health": {"interval": "200ms", "timeout": "500ms", "fall": 1, "rise": 1},
                "backends": [{"name": b.name, "http": b.url} for b in backends],
            }
        },
        "http_routes": [
            {"name": "app", "match": {"path_prefix": "/app/"}, "pool": "web"},
            {"name": "status", "match": {"path_prefix": "/status/"}, "pool": "web"},
        ],
    }
    with HttpBalancer(config) as balancer:
        yield balancer


def test_http_metrics_and_status_move_with_requests(
    lb: HttpBalancer, backends: list[WebBackend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
    for n in range(6):
        conn.request("GET", f"/app/{n}")
        assert conn.getresponse().read().startswith(b"web-")
    conn.request("GET", "/status/500")  # the backend's own 500
    assert conn.getresponse().read().startswith(b"web-")
    other = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
    other.request("GET", "/elsewhere")
    response = other.getresponse()
    assert response.status == 404 and b"no route" in response.read()
    other.close()

    _, text = admin(lb, "/metrics")
    ok = {"route": "app", "pool": "web", "status_class": "2xx"}
    assert sample(text, "dicomlb_http_requests_total", **ok) == 6
    assert sample(text, "dicomlb_http_requests_total", backend="web-a", status_class="2xx") == 3
    assert sample(text, "dicomlb_http_requests_total", route="status", status_class="5xx") == 1
    assert sample(text, "dicomlb_http_requests_total", route="", status_class="4xx") == 1
    assert sample(text, "dicomlb_http_request_duration_seconds_count", route="app") == 6
    assert sample(text, "dicomlb_http_request_duration_seconds_sum", backend="web-b") > 0
    # `conn` is kept alive (`other` was closed after the 404: it may take a moment)
    wait_for(lambda: sample(admin(lb, "/metrics")[1], "dicomlb_http_active_connections") == 1)
    conn.close()
    wait_for(lambda: sample(admin(lb, "/metrics")[1], "dicomlb_http_active_connections") == 0)

    _, state = admin(lb, "/api/v1/status")
    listener = next(x for x in state["listeners"] if x["name"] == "http")
    assert listener["bind"].endswith(f":{lb.port}") and listener["requests"] == 8
    routes = {r["name"]: r for r in state["http_routes"]}
    assert routes["app"]["hits"] == 6 and routes["app"]["requests"] == {"2xx": 6}
    assert routes["status"]["requests"] == {"5xx": 1}
    assert routes["app"]["match"] != "everything" and routes["app"]["pool"] == "web"
    assert routes[""]["hits"] == 1  # no route matched
    web = {b["name"]: b for b in state["backends"]}
    assert web["web-a"]["http"] == backends[0].url and web["web-a"]["dicom"] is None
    assert web["web-a"]["http_requests"]["2xx"] == 3
    assert web["web-a"]["http_latency"]["count"] >= 3
    assert {p["name"]: p["in_use"] for p in state["pools"]} == {"web": True}
    assert state["pools"][0]["instances"] == 1
    for name in ("web-a", "web-b"):  # keep-alive connections to each backend, idle now
        assert web[name]["http_open_connections"] >= 1
        assert web[name]["http_idle_connections"] == web[name]["http_open_connections"]
    recent = state["http_recent"]  # newest first
    assert [(r["method"], r["path"], r["status"]) for r in recent] == [
        ("GET", "/elsewhere", 404),
        ("GET", "/status/500", 500),
        *[("GET", f"/app/{n}", 200) for n in reversed(range(6))],
    ]
    assert recent[0]["route"] == "" and recent[0]["backend"] == ""
    assert recent[1]["route"] == "status" and recent[1]["backend"] in ("web-a", "web-b")
    assert all(r["client"] == LOOPBACK and r["ms"] >= 0 and r["time"] > 0 for r in recent)

    # One access line per request; with --log-format json its fields are members.
    lines = [r for r in caplog.records if r.getMessage().startswith("http.request ")]
    assert len(lines) == 8
    first = json.loads(JsonFormatter().format(lines[0]))
    assert first["event"] == "http.request" and first["route"] == "app"
    assert first["pool"] == "web" and first["backend"] in ("web-a", "web-b")
    assert first["method"] == "GET" and first["path"] == "/app/0" and first["status"] == 200
    assert isinstance(first["ms"], int) and first["bytes"] > 0


def test_readyz_counts_pools_of_http_routes(lb: HttpBalancer, backends: list[WebBackend]) -> None:
    assert admin(lb, "/readyz")[0] == 200
    for b in backends:
        b.stop()
    wait_for(lambda: admin(lb, "/readyz")[0] == 503)
    assert admin(lb, "/readyz")[1]["reasons"] == [
        "http route app: pool web has no available backend",
        "http route status: pool web has no available backend",
    ]
    assert admin(lb, "/healthz/pools") == (
        503,
        {"status": "degraded", "pools_without_available_backend": ["web"]},
    )
    metrics = admin(lb, "/metrics")[1]
    assert sample(metrics, "dicomlb_ready") == 0
    assert sample(metrics, "dicomlb_pools_unavailable") == 1
    for n, b in enumerate(backends):  # the fixture stops them again
        backends[n] = WebBackend(b.name, b.port).start()
    wait_for(lambda: admin(lb, "/readyz")[0] == 200)
