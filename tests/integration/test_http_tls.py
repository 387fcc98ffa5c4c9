"""HTTPS on both sides of the HTTP load balancer, with a test CA (the `pki` fixture):
the listener terminating TLS (optionally asking for client certificates) and https
backends (small aiohttp servers) verified against `tls.ca`, with dicomlb's certificate
when they ask for one."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot, describe
from dicomlb.tls import server_context
from tests.httppeers import HttpBalancer, WebBackend
from tests.peers import LOOPBACK


def client_tls(pki: Path, *, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return context


def https_get(
    lb: HttpBalancer,
    path: str,
    context: ssl.SSLContext,
    method: str = "GET",
    body: bytes | None = None,
    conn: http.client.HTTPSConnection | None = None,
) -> tuple[int, bytes]:
    conn = conn or http.client.HTTPSConnection(LOOPBACK, lb.port, timeout=20, context=context)
    conn.request(method, path, body=body, headers={"Host": "pacs.example.org"})
    response = conn.getresponse()
    return response.status, response.read()


def wait_available(lb: HttpBalancer, name: str, up: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while lb.backend(name).available != up:
        assert time.monotonic() < deadline, f"{name} never became {'up' if up else 'down'}"
        time.sleep(0.05)


@pytest.fixture
def plain() -> Iterator[WebBackend]:
    backend = WebBackend("plain").start()
    yield backend
    backend.stop()


@pytest.fixture
def secure(pki: Path) -> Iterator[WebBackend]:
    backend = WebBackend(
        "secure",
        tls=server_context(cert=str(pki / "backend.crt"), key=str(pki / "backend.key"), ca=None),
    ).start()
    yield backend
    backend.stop()


def config(
    backend: WebBackend, listener: dict[str, Any] | None = None, **tls: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": backend.name, "http": backend.url}
    if tls:
        entry["tls"] = tls
    return {
        "listeners": {"http": listener or {}},
        "pools": {
            "web": {
                "health": {"interval": "200ms", "timeout": "1s", "fall": 1, "rise": 1},
                "backends": [entry],
            }
        },
        "middlewares": {"fwd": {"forwarded": {}}},
        "http_routes": [{"name": "all", "pool": "web", "middlewares": ["fwd"]}],
    }


def test_listener_terminates_tls(pki: Path, plain: WebBackend) -> None:
    tls = {"cert": str(pki / "dicomlb.crt"), "key": str(pki / "dicomlb.key")}
    with HttpBalancer(config(plain, {"tls": tls})) as lb:
        assert lb.url.startswith("https://")
        context = client_tls(pki)
        conn = http.client.HTTPSConnection(LOOPBACK, lb.port, timeout=20, context=context)
        assert https_get(lb, "/name", context, conn=conn) == (200, b"plain")
        body = bytes(range(256)) * 20_000  # keep-alive, a body streamed through TLS
        status, answer = https_get(lb, "/echo", context, "POST", body, conn=conn)
        assert (status, answer.decode()) == (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}")
        status, answer = https_get(lb, "/headers", context, conn=conn)
        fields = {k.lower(): v for k, v in json.loads(answer)["headers"]}
        assert fields["x-forwarded-proto"] == "https" and "proto=https" in fields["forwarded"]
        assert fields["host"] == "pacs.example.org"
        # plain HTTP on the TLS port gets nowhere
        with pytest.raises((http.client.HTTPException, OSError)):
            raw = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=5)
            raw.request("GET", "/name")
            raw.getresponse().read()


def test_listener_with_ca_requires_client_certificates(pki: Path, plain: WebBackend) -> None:
    tls = {
        "cert": str(pki / "dicomlb.crt"),
        "key": str(pki / "dicomlb.key"),
        "ca": str(pki / "ca.crt"),
    }
    with HttpBalancer(config(plain, {"tls": tls})) as lb:
        assert https_get(lb, "/name", client_tls(pki, cert="modality")) == (200, b"plain")
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            https_get(lb, "/name", client_tls(pki))


def test_https_backend_verified_with_its_ca(pki: Path, secure: WebBackend) -> None:
    assert secure.url.startswith("https://")
    with HttpBalancer(config(secure, ca=str(pki / "ca.crt"))) as lb:
        wait_available(lb, "secure", True)  # the health check speaks TLS too
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=20)
        conn.request("GET", "/name")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"secure")
        body = b"y" * 3_000_000
        conn.request("POST", "/echo", body=body, headers={"Host": "pacs.example.org"})
        answer = conn.getresponse().read().decode()
        assert answer == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
        conn.request("GET", "/headers", headers={"Host": "pacs.example.org"})
        fields = {k.lower(): v for k, v in json.loads(conn.getresponse().read())["headers"]}
        assert fields["host"] == "pacs.example.org"  # Host preserved, TLS name is the address
        assert secure.requests >= 2


def test_https_backend_unknown_ca_fails_cleanly(pki: Path, secure: WebBackend) -> None:
    with HttpBalancer(config(secure)) as lb:  # system CAs: the test CA is not among them
        wait_available(lb, "secure", False)
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=20)
        conn.request("GET", "/name")
        response = conn.getresponse()
        assert response.status in (502, 503) and b"secure" not in response.read()
    with HttpBalancer(config(secure, verify=False)) as lb:  # verify: false accepts it
        wait_available(lb, "secure", True)
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=20)
        conn.request("GET", "/name")
        assert conn.getresponse().read() == b"secure"


def test_https_backend_asking_for_a_client_certificate(pki: Path) -> None:
    context = server_context(
        cert=str(pki / "backend.crt"), key=str(pki / "backend.key"), ca=str(pki / "ca.crt")
    )
    with WebBackend("mutual", tls=context) as backend:
        tls = {
            "ca": str(pki / "ca.crt"),
            "cert": str(pki / "dicomlb.crt"),
            "key": str(pki / "dicomlb.key"),
        }
        with HttpBalancer(config(backend, **tls)) as lb:
            wait_available(lb, "mutual", True)
            conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=20)
            conn.request("GET", "/name")
            assert conn.getresponse().read() == b"mutual"


def test_https_backend_config(pki: Path) -> None:
    def build(url: str) -> Any:
        data = {
            "pools": {"web": {"backends": [{"name": "b", "http": url}]}},
            "http_routes": [{"name": "all", "pool": "web"}],
        }
        return build_snapshot(data, source="<test>")

    address = build("https://10.0.0.5").pools["web"].backends[0].http
    assert (address.scheme, address.port) == ("https", 443)
    with pytest.raises(ConfigError, match="has a path"):
        build("https://10.0.0.5:8443/orthanc")
    data = {
        "listeners": {"http": {"tls": {"cert": "/nonexistent.crt", "key": "/nonexistent.key"}}},
        "pools": {"web": {"backends": [{"name": "b", "http": "http://h:1"}]}},
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    data["listeners"]["http"]["tls"] = {
        "cert": str(pki / "dicomlb.crt"),
        "key": str(pki / "dicomlb.key"),
        "ca": str(pki / "ca.crt"),
    }
    assert "; TLS (client certificates required);" in describe(build_snapshot(data, "<test>"))
    data["listeners"]["http"]["tls"] = {"cert": "/nonexistent.crt", "key": "/nonexistent.key"}
    with pytest.raises(ConfigError, match=r"listeners\.http\.tls: cannot set up TLS"):
        build_snapshot(data, source="<test>")
