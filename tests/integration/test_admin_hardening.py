"""The admin listener against hostile clients: DNS rebinding, huge headers, bad reloads;
and its audit trail."""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dicomlb.config import hash_secret
from tests.peers import free_port
from tests.unit.test_config_limits import billion_laughs

TOKEN = "s3cret-token"


def config(**admin: Any) -> dict[str, Any]:
    return {
        "listeners": {"admin": {"bind": f"127.0.0.1:{free_port()}", **admin}},
        "pools": {
            "p": {
                "health": {"enabled": False},
                "backends": [{"name": "pacs", "dicom": f"PACS@127.0.0.1:{free_port()}"}],
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


def raw(port: int, head: str, body: bytes = b"") -> bytes:
    """One request as written, on its own connection; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(event)]


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 421),
        ("evil.example:{port}", 421),
        ("localhost:{port}", 200),
        ("LOCALHOST.", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("lb.internal:{port}", 200),  # listed in allowed_hosts
    ],
)
def test_without_auth_the_host_must_name_this_listener(
    balancer: Any, caplog: pytest.LogCaptureFixture, host: str, status: int
) -> None:
    lb = balancer(config(allowed_hosts=["LB.internal"]))
    port = lb.app.admin.port
    with caplog.at_level(logging.INFO):
        answer = raw(port, f"GET /api/v1/status HTTP/1.1\r\nHost: {host.format(port=port)}\r\n"
                     "Connection: close\r\n\r\n")  # fmt: skip
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:100]
    refused = records(caplog, "admin.refused")
    if status == 421:
        assert len(refused) == 1
        assert refused[0].getMessage() == (
            f"admin.refused peer=127.0.0.1 status=421 reason=host_not_allowed "
            f"host={host.format(port=port)}"
        )
    else:
        assert refused == []


def test_with_auth_any_host_may_present_the_token(balancer: Any) -> None:
    lb = balancer(config(auth={"bearer_tokens_sha256": [hash_secret(TOKEN)]}))
    headers = {"Host": "lb.example.org"}
    assert lb.http("GET", "/api/v1/status", headers=headers, token=TOKEN)[0] == 200
    assert lb.http("GET", "/api/v1/status", headers=headers)[0] == 401


def test_every_change_is_audited_with_who_what_and_from_where(
    balancer: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    digest = hash_secret(TOKEN)
    lb = balancer(config(auth={"bearer_tokens_sha256": [digest]}), config_file=tmp_path / "lb.yaml")
    with caplog.at_level(logging.INFO):
        assert lb.http("POST", "/api/v1/backends/pacs/drain", token=TOKEN)[0] == 200
        assert lb.http("POST", "/api/v1/reload", token=TOKEN)[0] == 200
        assert lb.http("DELETE", "/api/v1/backends/nope", token=TOKEN)[0] == 404
        assert lb.http("GET", "/api/v1/backends", token=TOKEN)[0] == 200  # a read: no audit
    audit = [r.getMessage() for r in records(caplog, "admin.audit")]
    who = f"user=token:{digest[:8]} peer=127.0.0.1"
    assert [line.split(" ms=")[0] for line in audit] == [
        f"admin.audit action=drain backend=pacs pool=- item=- {who} method=POST "
        "path=/api/v1/backends/pacs/drain status=200",
        f"admin.audit action=reload backend=- pool=- item=- {who} method=POST "
        "path=/api/v1/reload status=200",
        f"admin.audit action=remove backend=nope pool=- item=- {who} method=DELETE "
        "path=/api/v1/backends/nope status=404",
    ]
    assert all(r.levelno == logging.WARNING for r in records(caplog, "admin.audit"))


def test_without_auth_the_user_is_anonymous(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(config())
    with caplog.at_level(logging.INFO):
        assert lb.http("POST", "/api/v1/backends/pacs/disable")[0] == 200
    (line,) = [r.getMessage() for r in records(caplog, "admin.audit")]
    assert " action=disable backend=pacs " in line and " user=anonymous peer=127.0.0.1 " in line


def test_a_100kb_authorization_header_gets_400_and_one_line(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(config(auth={"bearer_tokens_sha256": [hash_secret(TOKEN)]}))
    with caplog.at_level(logging.DEBUG):
        answer = raw(
            lb.app.admin.port,
            "GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + "a" * 100_000
            + "\r\n\r\n",
        )
        time.sleep(0.2)
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert [r.getMessage() for r in records(caplog, "admin.refused")] == [
        "admin.refused peer=127.0.0.1 status=400 reason=LineTooLong"
    ]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert lb.http("GET", "/api/v1/status", token=TOKEN)[0] == 200


def test_a_reload_of_an_alias_bomb_is_refused_counted_and_logged_while_traffic_flows(
    balancer: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    file = tmp_path / "lb.yaml"
    lb = balancer(config(), config_file=file)
    file.write_text(billion_laughs(8))  # 9**8 strings expanded: minutes of validation
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:  # /healthz answered by the event loop all along
        while not done.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(lb.admin_url + "/healthz", timeout=30) as response:
                assert response.status == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with caplog.at_level(logging.INFO):
            started = time.monotonic()
            status, body = lb.http("POST", "/api/v1/reload")
            took = time.monotonic() - started
            time.sleep(0.2)
    finally:
        done.set()
        prober.join(30)
    assert status == 422 and took < 2, (status, took)
    assert f"{file}:" in body["error"] and "aliases repeat more than" in body["error"]
    assert latencies and max(latencies) < 0.5, max(latencies)
    (line,) = [r for r in records(caplog, "admin.reload")]
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("admin.reload result=error source=api error=")
    _, metrics = lb.http("GET", "/metrics")
    assert 'dicomlb_config_reloads_total{result="error",source="api"} 1.0' in metrics


def test_a_reload_of_a_fifo_is_refused_at_once(
    balancer: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    file = tmp_path / "lb.yaml"
    lb = balancer(config(), config_file=file)
    file.unlink()
    os.mkfifo(file)
    with caplog.at_level(logging.INFO):
        status, body = lb.http("POST", "/api/v1/reload")
    assert status == 422
    assert body["error"] == f"{file}: is a FIFO, not a regular file; point at the YAML file itself"
    assert len(records(caplog, "admin.reload result=error")) == 1
    file.unlink()  # and the next reload works again: nothing is left waiting on the FIFO
    file.write_text("")
    assert lb.http("POST", "/api/v1/reload")[0] == 422


def test_the_dashboard_is_challenged_without_a_browser_dialog(balancer: Any) -> None:
    # A Basic challenge to a page's fetch opens the browser's own password dialog; the page
    # says who it is and gets a scheme browsers do not prompt for, and the schemes to offer.
    auth = {"basic": {"ops": hash_secret("pw")}, "bearer_tokens_sha256": [hash_secret(TOKEN)]}
    lb = balancer(config(auth=auth))
    status, body = lb.http("GET", "/api/v1/status")
    assert status == 401 and body["schemes"] == ["basic", "bearer"]
    request = urllib.request.Request(lb.admin_url + "/api/v1/status")
    for page, challenge in ((False, 'Basic realm="dicomlb"'), (True, 'Dashboard realm="dicomlb"')):
        if page:
            request.add_header("X-Requested-With", "dicomlb-dashboard")
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as err:
            assert err.code == 401 and err.headers["WWW-Authenticate"] == challenge
        else:
            raise AssertionError("no 401")
    basic = "Basic " + base64.b64encode(b"ops:pw").decode()
    assert lb.http("GET", "/api/v1/status", headers={"Authorization": basic})[0] == 200
    # the page's icon needs no credentials, and is there: no 404 in the browser's console
    with urllib.request.urlopen(lb.admin_url + "/favicon.ico", timeout=10) as icon:
        assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"
        assert icon.read().startswith(b"<svg")
