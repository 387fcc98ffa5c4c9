"""The HTTP load balancer against real HTTP peers (aiohttp backends) on loopback: balancing,
streaming both ways, keep-alive and pipelining, HEAD / chunked, websocket tunnel,
middlewares, health and failures, refusals that do not hurt other clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.httppeers import HttpBalancer, RawBackend, WebBackend, raw_exchange
from tests.peers import LOOPBACK


@pytest.fixture
def backends() -> Iterator[list[WebBackend]]:
    started = [WebBackend(name).start() for name in ("a", "b")]
    yield started
    for b in started:
        b.stop()


def pool(backends: list[WebBackend], **extra: Any) -> dict[str, Any]:
    return {
        "health": {"interval": "200ms", "timeout": "500ms", "fall": 1, "rise": 1},
        "backends": [{"name": b.name, "http": b.url} for b in backends],
        **extra,
    }


@pytest.fixture
def lb(backends: list[WebBackend]) -> Iterator[HttpBalancer]:
    with HttpBalancer(
        {"pools": {"web": pool(backends)}, "http_routes": [{"name": "all", "pool": "web"}]}
    ) as balancer:
        yield balancer


def get(
    lb: HttpBalancer,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = conn or http.client.HTTPConnection(LOOPBACK, lb.port, timeout=20)
    headers = headers or {}
    chunked = headers.get("Transfer-Encoding") == "chunked"
    conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    return response.status, response.read(), response


def test_round_robin_over_one_keep_alive_connection(lb: HttpBalancer) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
    names = [get(lb, "/name", conn=conn)[1] for _ in range(6)]
    assert names == [b"a", b"b"] * 3


def test_pipelined_requests_answered_in_order(lb: HttpBalancer) -> None:
    wire = (
        b"".join(b"GET /anything/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10))
        + b"GET /anything/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = raw_exchange(lb.port, wire, timeout=10)
    positions = [answer.find(b"GET /anything/%d" % i) for i in range(10)]
    assert all(p > 0 for p in positions) and positions == sorted(positions)
    assert answer.count(b"HTTP/1.1 200 OK") == 11


def test_large_upload_and_download_streamed(lb: HttpBalancer) -> None:
    body = bytes(range(256)) * (32 * 1024 * 1024 // 256)  # 32 MiB
    status, answer, _ = get(lb, "/echo", "POST", body)
    assert status == 200
    assert answer.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    # chunked upload (a generator body makes http.client send chunked)
    pieces = [body[i : i + 100_000] for i in range(0, 5_000_000, 100_000)]
    status, answer, _ = get(
        lb, "/echo", "POST", iter(pieces), headers={"Transfer-Encoding": "chunked"}
    )
    joined = b"".join(pieces)
    assert answer.decode() == f"{len(joined)} {hashlib.sha256(joined).hexdigest()}"
    status, answer, _response = get(lb, "/big?size=20000000")
    assert status == 200 and answer == b"x" * 20_000_000


def test_chunked_head_and_304_like_bodies(lb: HttpBalancer) -> None:
    status, answer, response = get(lb, "/chunked?n=4&size=5")
    assert answer == b"AAAAABBBBBCCCCCDDDDD"
    assert response.getheader("Transfer-Encoding") == "chunked"
    conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
    status, answer, response = get(lb, "/big?size=1000", "HEAD", conn=conn)
    assert status == 200 and answer == b"" and response.getheader("Content-Length") == "1000"
    assert get(lb, "/status/204", conn=conn)[:2] == (204, b"")
    assert get(lb, "/name", conn=conn)[0] == 200  # the connection is still in step


def raw_pool(backend: RawBackend, **http: Any) -> dict[str, Any]:
    return {
        "pools": {
            "web": {
                "backends": [{"name": "raw", "http": backend.url}],
                "http": {"idle_timeout": "30s", **http},  # pooled longer than the backend keeps
            }
        },
        "http_routes": [{"name": "all", "pool": "web"}],
    }


def test_last_chunk_alone_in_its_own_read_is_relayed() -> None:
    # The `0\r\n\r\n` that ends a chunked body came on its own and was held, never written:
    # the client waited for it until its timeout.
    with RawBackend() as backend, HttpBalancer(raw_pool(backend)) as lb:
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=5)
        for _ in range(3):
            assert get(lb, "/split-chunked", conn=conn)[:2] == (200, b"hello")
        assert get(lb, "/after", conn=conn)[1].startswith(b"GET /after 0 ")


def test_a_refused_request_without_a_body_leaves_the_connection_open(
    backends: list[WebBackend],
) -> None:
    # 404 (no route) and 503 (every node down) answer a whole request: the client's
    # connection carries the next one. A refused request with a body keeps it too: the body
    # is read and dropped after the answer (up to `discard_body_max`).
    config = {
        "pools": {"web": pool(backends)},
        "http_routes": [{"name": "app", "pool": "web", "match": {"path_prefix": "/app/"}}],
    }
    with HttpBalancer(config) as lb:
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=5)
        status, answer, response = get(lb, "/elsewhere", conn=conn)
        assert (status, answer) == (404, b"no route matches this request\n")
        assert response.getheader("Connection") is None
        status, answer, _ = get(lb, "/app/1", conn=conn)
        assert status == 200 and answer.endswith(b" GET /app/1")
        conn.close()
        raw = socket.create_connection((LOOPBACK, lb.port), timeout=5)
        raw.sendall(b"POST /elsewhere HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        answer = raw.recv(4096)  # before the body
        assert answer.startswith(b"HTTP/1.1 404 ") and b"Connection" not in answer
        raw.sendall(b"0123456789GET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 404 ")
        raw.close()


def test_a_connection_that_sent_bytes_after_its_response_is_not_reused() -> None:
    # The backend wrote the start of a response nobody asked for behind its answer: the
    # answer is relayed, the connection is dropped; the next request goes on a new one
    # and gets its own answer, not the stray bytes.
    with RawBackend() as backend, HttpBalancer(raw_pool(backend)) as lb:
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=5)
        status, answer, _ = get(lb, "/stray", conn=conn)
        assert (status, answer.split(b" ")[:2]) == (200, [b"GET", b"/stray"])
        status, answer, _ = get(lb, "/after", conn=conn)
        assert (status, answer.split(b" ")[:2]) == (200, [b"GET", b"/after"])
        assert backend.connections >= 2


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_request_on_a_pooled_connection_the_backend_closed_is_retried(method: str) -> None:
    # The backend closes each connection instead of answering its second request: the
    # request (head and body) goes again on a fresh connection, promptly.
    body = b"x" * 5000 if method != "GET" else None
    expected = f"{method} /second {len(body or b'')} {hashlib.sha256(body or b'').hexdigest()}"
    with RawBackend(close_on_reuse=True) as backend, HttpBalancer(raw_pool(backend)) as lb:
        assert get(lb, "/first")[0] == 200  # leaves a pooled connection
        started = time.monotonic()
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=5)
        status, answer, _ = get(lb, "/second", method, body, conn=conn)
        assert (status, answer.decode()) == (200, expected)
        assert time.monotonic() - started < 2
        assert backend.connections >= 2


def test_unreplayable_request_on_a_closed_pooled_connection_is_a_clean_502() -> None:
    with (
        RawBackend(close_on_reuse=True) as backend,
        HttpBalancer(raw_pool(backend, retry_buffer=0)) as lb,
    ):
        assert get(lb, "/first")[0] == 200
        started = time.monotonic()
        status, _, _ = get(lb, "/second", "POST", b"y" * 1000)
        assert status == 502 and time.monotonic() - started < 2


def test_requests_spaced_around_the_backend_keepalive_timeout() -> None:
    # The backend closes idle keep-alive connections after 0.2 s; dicomlb pools them for
    # 30 s. Requests spaced around 0.2 s race the close: each gets its answer (a retry on a
    # fresh connection) or a clean 502, quickly, never a hang.
    with RawBackend(keepalive=0.2) as backend, HttpBalancer(raw_pool(backend)) as lb:
        statuses = []
        for i in range(24):
            time.sleep(0.17 + (i % 7) * 0.01)
            body = b"%d" % i * 300 if i % 2 else None
            method = "POST" if body else "GET"
            started = time.monotonic()
            status, answer, _ = get(lb, f"/r{i}", method, body)
            assert time.monotonic() - started < 3
            statuses.append(status)
            if status == 200:
                size = len(body or b"")
                assert answer.decode().startswith(f"{method} /r{i} {size} ")
        assert set(statuses) <= {200, 502} and statuses.count(200) >= 20


def test_expect_100_continue_relayed(lb: HttpBalancer) -> None:
    with socket.create_connection((LOOPBACK, lb.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(1000)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        final = sock.recv(1000)
        assert final.startswith(b"HTTP/1.1 200") and b"5 " in final


def test_websocket_tunnel(lb: HttpBalancer) -> None:
    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{lb.url}/ws") as ws:
            got = []
            for word in ("one", "two"):
                await ws.send_str(word)
                got.append((await ws.receive(timeout=5)).data)
            await ws.send_bytes(b"\x00" * 100_000)
            got.append(str(len((await ws.receive(timeout=5)).data)))
            return got

    got = asyncio.run(talk())
    assert got[0].endswith(":one") and got[1] == got[0][0] + ":two" and got[2] == "100000"


def test_middlewares_rewrite_head(backends: list[WebBackend]) -> None:
    config = {
        "pools": {"web": pool(backends[:1])},
        "middlewares": {
            "strip": {"strip_prefix": {"prefixes": ["/app"]}},
            "fwd": {"forwarded": {}},
            "hdr": {
                "headers": {
                    "request": {"set": {"X-Env": "test"}},
                    "response": {"set": {"X-Served-By": "dicomlb"}},
                }
            },
            "deny": {"ip_filter": {"deny": ["127.0.0.0/8"]}},
        },
        "http_routes": [
            {
                "name": "blocked",
                "pool": "web",
                "match": {"path_prefix": "/blocked"},
                "middlewares": ["deny"],
            },
            {"name": "app", "pool": "web", "middlewares": ["strip", "fwd", "hdr"]},
        ],
    }
    with HttpBalancer(config) as lb:
        status, body, response = get(lb, "/app/headers?q=1", headers={"Host": "pacs.example"})
        assert status == 200 and response.getheader("X-Served-By") == "dicomlb"
        import json

        seen = json.loads(body)
        assert seen["path"] == "/headers?q=1"
        fields = {k: v for k, v in seen["headers"]}
        assert fields["Host"] == "pacs.example"  # Host preserved
        assert fields["X-Env"] == "test" and fields["X-Forwarded-For"] == "127.0.0.1"
        assert fields["X-Forwarded-Host"] == "pacs.example"
        status, body, _ = get(lb, "/blocked")
        assert status == 403 and b"forbidden" in body


def test_backend_down_traffic_moves_then_all_down_is_503(backends: list[WebBackend]) -> None:
    with HttpBalancer(
        {"pools": {"web": pool(backends)}, "http_routes": [{"name": "all", "pool": "web"}]}
    ) as lb:
        backends[0].stop()
        names = [get(lb, "/name")[1] for _ in range(6)]  # connect errors retried elsewhere
        assert names == [b"b"] * 6
        backends[1].stop()
        started = time.monotonic()
        status, body, _ = get(lb, "/name")
        assert (status in (502, 503) and b"web" in body) or b"backend" in body
        time.sleep(0.6)  # health checks mark both down
        status, body, _ = get(lb, "/name")
        assert status == 503 and body == b"no backend of pool web is available\n"
        assert time.monotonic() - started < 5
        backends[:] = [
            WebBackend("a", port=backends[0].port).start(),
            WebBackend("b", port=backends[1].port).start(),
        ]
        deadline = time.monotonic() + 5
        while get(lb, "/name")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_slow_backend_is_504_after_read_timeout(backends: list[WebBackend]) -> None:
    config = {
        "pools": {"web": pool(backends[:1], http={"read_timeout": "300ms"})},
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    with HttpBalancer(config) as lb:
        status, body, _ = get(lb, "/slow?s=2")
        assert status == 504 and b"did not answer within 0.3s" in body


def test_garbage_huge_heads_and_slowloris_refused_without_hurting_others(
    backends: list[WebBackend],
) -> None:
    config = {
        "listeners": {"http": {"head_timeout": "1s", "max_head_size": 8192}},
        "pools": {"web": pool(backends)},
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    with HttpBalancer(config) as lb:
        assert raw_exchange(lb.port, b"\x16\x03\x01garbage\r\n\r\n").startswith(
            b"HTTP/1.1 400 Bad Request"
        )
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert raw_exchange(lb.port, huge).startswith(b"HTTP/1.1 431")
        slow = [socket.create_connection((LOOPBACK, lb.port)) for _ in range(20)]
        stop = threading.Event()

        def trickle() -> None:
            for s in slow:
                s.sendall(b"GET / HTTP/1.1\r\n")
            while not stop.is_set():
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X")
                time.sleep(0.1)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            for _ in range(20):  # others are served at once meanwhile
                assert get(lb, "/name")[0] == 200
            assert time.monotonic() - started < 3
            time.sleep(1.5)
            for s in slow:  # each slowloris connection got 408 and was closed
                s.settimeout(2)
                data = b""
                try:
                    while chunk := s.recv(4096):
                        data += chunk
                except OSError:
                    pass
                assert data.startswith(b"HTTP/1.1 408")
        finally:
            stop.set()
            thread.join()
            for s in slow:
                s.close()


def test_sticky_cookie_first_placed_by_least_load(backends: list[WebBackend]) -> None:
    config = {
        "pools": {
            "web": pool(
                backends, strategy="round_robin", http={"key": "cookie:session", "sticky": True}
            )
        },
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    with HttpBalancer(config) as lb:
        for session in ("s1", "s2", "s3"):
            names = {
                get(lb, "/name", headers={"Cookie": f"session={session}"})[1] for _ in range(5)
            }
            assert len(names) == 1


def _stream_upload(lb: HttpBalancer, total: int) -> tuple[str, int]:
    """POST `total` bytes generated on the fly (chunked); returns (answer, peak RSS growth)."""
    import resource

    piece = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            digest.update(piece)
            sent += len(piece)
            yield piece

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    status, answer, _ = get(lb, "/echo", "POST", pieces(), headers={"Transfer-Encoding": "chunked"})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert status == 200
    assert answer.decode() == f"{total} {digest.hexdigest()}"
    return answer.decode(), after - before


def test_streamed_upload_with_flat_memory(lb: HttpBalancer) -> None:
    _, growth = _stream_upload(lb, 512 * 1024 * 1024)
    assert growth < 64 * 1024 * 1024  # 512 MiB passed; dicomlb, client and backend hold ~MBs


@pytest.mark.slow
def test_2gb_streamed_upload_with_flat_memory(lb: HttpBalancer) -> None:
    _, growth = _stream_upload(lb, 2 * 1024 * 1024 * 1024)
    assert growth < 64 * 1024 * 1024


def test_reload_swaps_routes_for_new_requests(backends: list[WebBackend]) -> None:
    from dicomlb.config import build_snapshot

    first = {
        "pools": {"a": pool(backends[:1]), "b": pool(backends[1:])},
        "http_routes": [{"name": "all", "pool": "a"}],
    }
    with HttpBalancer(first) as lb:
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)
        assert get(lb, "/name", conn=conn)[1] == b"a"
        second = {
            "listeners": {"http": {"bind": f"{LOOPBACK}:{lb.port}"}},
            "pools": {"a": pool(backends[:1]), "b": pool(backends[1:])},
            "http_routes": [{"name": "all", "pool": "b"}],
        }
        lb.runner.call(lb.app.reload(build_snapshot(second, "<reload>")))
        assert get(lb, "/name", conn=conn)[1] == b"b"  # same client connection, new snapshot


def test_max_connections_waits_then_503_and_drain_closes_idle(backends: list[WebBackend]) -> None:
    config = pool(
        backends[:1], http={"max_connections": 1, "acquire_timeout": "300ms", "retries": 0}
    )
    with HttpBalancer(
        {"pools": {"web": config}, "http_routes": [{"name": "all", "pool": "web"}]}
    ) as lb:
        results: list[tuple[int, bytes]] = []

        def slow(seconds: str) -> None:
            status, body, _ = get(lb, f"/slow?s={seconds}")
            results.append((status, body))

        # A short wait for the one slot succeeds; a long one times out with 503.
        first = threading.Thread(target=slow, args=("0.15",))
        first.start()
        time.sleep(0.05)
        assert get(lb, "/name")[:2] == (200, b"a")  # waited for the slot, then served
        first.join()
        first = threading.Thread(target=slow, args=("1",))
        first.start()
        time.sleep(0.05)
        status, body, _ = get(lb, "/name")
        assert status == 503 and b"all its 1 connections busy" in body
        first.join()
        assert results == [(200, b"a"), (200, b"a")]

        assert lb.app.http is not None
        conns = lb.app.http.http.connections["a"]
        assert conns.open <= 1 and len(conns.idle) <= 1  # the cap held
        # Drain while a request is in flight: it finishes, its connection is then closed.
        first = threading.Thread(target=slow, args=("0.2",))
        first.start()
        time.sleep(0.05)
        lb.backend("a").enabled = False
        first.join()
        assert results[-1] == (200, b"a")
        time.sleep(0.05)
        assert conns.idle == [] and conns.open == 0
        assert get(lb, "/name")[0] == 503  # no new requests to a drained backend


def test_orthanc_writer_takes_writes_reads_balanced(backends: list[WebBackend]) -> None:
    from dicomlb.pools import rendezvous_score

    a, b = backends
    config = {
        "pools": {"orthanc": pool(backends, orthanc={"writer": "b"})},
        "http_routes": [{"name": "rest", "pool": "orthanc"}],
    }
    with HttpBalancer(config) as lb:
        conn = http.client.HTTPConnection(LOOPBACK, lb.port, timeout=10)

        def on(backend: WebBackend, prefix: str) -> list[tuple[str, str]]:
            return [seen for seen in backend.seen if seen[1].startswith(prefix)]

        for i in range(8):
            method = "GET" if i < 2 or i > 5 else "HEAD"
            assert get(lb, f"/instances/{i}", method, conn=conn)[0] == 200
        for method in ("POST", "PUT", "DELETE", "PATCH", "POST"):
            assert get(lb, "/instances", method, b"{}", conn=conn)[0] == 200
        reads_a, reads_b = on(a, "/instances/"), on(b, "/instances/")
        assert len(reads_a) == len(reads_b) == 4  # reads balanced (round robin)
        assert {m for m, _ in reads_a} == {m for m, _ in reads_b} == {"GET", "HEAD"}
        assert [m for m, p in on(b, "/instances") if p == "/instances"] == [
            "POST", "PUT", "DELETE", "PATCH", "POST"
        ]  # fmt: skip
        assert on(a, "/instances") == reads_a  # no write on a

        # A sender-transfer-id placed on a (not the writer) keeps every request there.
        transfer = next(
            t
            for t in (f"t{i}" for i in range(100))
            if rendezvous_score(f"transfer:{t}", lb.backend("a"))
            > rendezvous_score(f"transfer:{t}", lb.backend("b"))
        )
        for method in ("POST", "PUT", "PUT", "POST"):
            headers = {"sender-transfer-id": transfer}
            get(lb, "/transfers/push", method, b"x", headers=headers, conn=conn)
        assert len(on(a, "/transfers")) == 4 and on(b, "/transfers") == []

        # The writer drained: writes are balanced like reads; a job learned on a stays there.
        lb.backend("b").enabled = False
        status, body, _ = get(lb, "/job/j1", "POST", b"{}", conn=conn)
        assert status == 200 and b"/jobs/j1" in body and on(a, "/job/") == [("POST", "/job/j1")]
        lb.backend("b").enabled = True
        get(lb, "/jobs/j1/cancel", "POST", b"{}", conn=conn)
        get(lb, "/jobs/j1", "DELETE", conn=conn)
        assert [m for m, _ in on(a, "/jobs/j1")] == ["POST", "DELETE"] and on(b, "/jobs/") == []
        get(lb, "/instances", "POST", b"{}", conn=conn)  # the writer is back
        assert on(b, "/instances")[-1] == ("POST", "/instances")


def test_orthanc_writer_must_be_a_backend_of_the_pool(backends: list[WebBackend]) -> None:
    from dicomlb.config import ConfigError, build_snapshot, describe

    config = {
        "pools": {"orthanc": pool(backends, orthanc={"writer": "nope"})},
        "http_routes": [{"name": "rest", "pool": "orthanc"}],
    }
    with pytest.raises(ConfigError, match=r"pools\.orthanc\.orthanc\.writer: backend \"nope\""):
        build_snapshot(config, source="<test>")
    config["pools"]["orthanc"]["orthanc"] = {"writer": "a"}
    config["listeners"] = {"http": {"bind": "127.0.0.1:8080"}}
    text = describe(build_snapshot(config, source="<test>"))
    assert "1. rest: everything -> pool orthanc (writes to a)" in text
    config["pools"]["orthanc"]["orthanc"] = True  # still valid
    snapshot = build_snapshot(config, source="<test>")
    assert snapshot.pools["orthanc"].orthanc and snapshot.pools["orthanc"].orthanc_writer is None
