"""RFC 9112 / 9110 rules for the request head, through the listener to a real aiohttp
backend: Host exactly once, fields named in Connection removed before anything reads the
head, HTTP/1.0 and 1.1 only, and the pipeline behind `Connection: close` ignored."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dicomlb.http.middlewares import hash_password
from tests.httppeers import HttpBalancer, WebBackend, raw_exchange
from tests.peers import LOOPBACK


@pytest.fixture
def backend() -> Iterator[WebBackend]:
    started = WebBackend("a").start()
    yield started
    started.stop()


def balancer(backend: WebBackend, middlewares: dict[str, Any] | None = None) -> HttpBalancer:
    return HttpBalancer(
        {
            "pools": {"web": {"backends": [{"name": "a", "http": backend.url}]}},
            "middlewares": middlewares or {},
            "http_routes": [{"name": "all", "pool": "web", "middlewares": list(middlewares or {})}],
        }
    )


def relayed(backend: WebBackend) -> list[str]:
    """The paths of the requests the backend got, health checks (GET /) left out."""
    return [path for _, path in backend.seen if path != "/"]


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "head",
    [
        b"GET /name HTTP/1.1\r\nX-A: b\r\n\r\n",
        b"GET /name HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /name HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /name HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_host_rules_and_framing_named_in_connection_are_400(
    backend: WebBackend, head: bytes
) -> None:
    with balancer(backend) as lb:
        answer = raw_exchange(lb.port, head)
        assert status_of(answer) == 400 and b"Connection: close" in answer
    assert relayed(backend) == []


def test_http10_without_host_is_served(backend: WebBackend) -> None:
    with balancer(backend) as lb:
        assert raw_exchange(lb.port, b"GET /name HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\na")


def test_fields_named_in_connection_never_reach_middlewares_or_the_backend(
    backend: WebBackend,
) -> None:
    with balancer(backend) as lb:
        answer = raw_exchange(
            lb.port,
            b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret, Host\r\n"
            b"X-Secret: 1\r\nX-Kept: 2\r\n\r\n",
        )
        assert status_of(answer) == 200
        fields = {k.lower() for k, _ in json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]}
        assert "x-kept" in fields and "host" in fields and "x-secret" not in fields
    # basic_auth does not see credentials the client made hop-by-hop
    users = {"alice": hash_password("s3cret", iterations=1000)}
    token = base64.b64encode(b"alice:s3cret")
    with balancer(backend, {"staff": {"basic_auth": {"users": users}}}) as lb:
        good = b"GET /name HTTP/1.1\r\nHost: a\r\nAuthorization: Basic " + token + b"\r\n"
        assert status_of(raw_exchange(lb.port, good + b"Connection: close\r\n\r\n")) == 200
        hidden = good + b"Connection: close, Authorization\r\n\r\n"
        assert status_of(raw_exchange(lb.port, hidden)) == 401


def test_other_http_versions_are_505_and_do_not_poison_the_pool(backend: WebBackend) -> None:
    with balancer(backend) as lb:
        for version in (b"2.0", b"0.9"):
            answer = raw_exchange(lb.port, b"GET /name HTTP/" + version + b"\r\nHost: a\r\n\r\n")
            assert status_of(answer) == 505, answer
        # the pooled backend connection still speaks HTTP/1.1 to the next client
        for _ in range(3):
            answer = raw_exchange(
                lb.port, b"GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\na")
    assert relayed(backend) == ["/name"] * 3


def test_the_pipeline_behind_connection_close_is_ignored(backend: WebBackend) -> None:
    with balancer(backend) as lb:
        pipeline = (
            b"GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n"
            b"NOT HTTP AT ALL\r\n\r\n"
        )
        with socket.create_connection((LOOPBACK, lb.port), timeout=5) as sock:
            sock.sendall(pipeline)
            answer = b""
            while piece := sock.recv(65536):  # dicomlb closes after the first answer
                answer += piece
        assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\na")
        assert answer.count(b"HTTP/1.1") == 1
    assert relayed(backend) == ["/name"]
