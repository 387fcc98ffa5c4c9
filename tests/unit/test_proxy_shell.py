"""The HTTP proxy's shell (`http/proxy.py`) on the in-memory network of `fakehttp.py`: what
a client sees (status, headers, bytes) for what the backends do, with a virtual clock for
the timeouts. No socket, no sleep."""

from __future__ import annotations

from typing import Any

import pytest

from dicomlb.config import build_snapshot
from dicomlb.http.proxy import HttpListener
from dicomlb.runtime import Runtime
from tests.unit.fakehttp import Client, FakeBackend, FakeLoop, advance, listener, run, settle

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


def config(*, pool: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pools": {
            "web": {
                "strategy": "round_robin",
                "health": {"enabled": False},
                "backends": [
                    {"name": "a", "http": "http://10.0.0.1:80"},
                    {"name": "b", "http": "http://10.0.0.2:80"},
                ],
                **(pool or {}),
            }
        },
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    base.update(extra)
    return base


def two(loop: FakeLoop) -> tuple[FakeBackend, FakeBackend]:
    return FakeBackend(loop, "10.0.0.1", 80), FakeBackend(loop, "10.0.0.2", 80)


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def in_use(http: HttpListener, name: str) -> int:
    return int(http.http.runtime.backends[name].budget.in_use)


def test_a_response_is_relayed_byte_for_byte_and_the_connection_reused() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        response = b"HTTP/1.1 200 OK\r\nX-Odd:  spaced \r\nContent-Length: 5\r\n\r\nhello"
        a.reply(response)
        b.reply(response)
        http = listener(config(pool={"strategy": "least_connections"}))
        client = Client(http)
        client.send(GET)
        await settle()
        assert client.take() == response
        client.send(GET)
        await settle()
        assert client.take() == response
        used = [*a.connections, *b.connections]
        assert len(used) == 1  # the keep-alive connection carried both
        assert bytes(a.requests[0] if a.requests else b.requests[0]).startswith(b"GET /x ")
        assert not client.closed

    run(test)


def test_requests_alternate_round_robin() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        b.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        client = Client(listener(config()))
        bodies = []
        for _ in range(4):
            client.send(GET)
            await settle()
            bodies.append(client.take()[-1:])
        assert sorted(bodies) == [b"a", b"a", b"b", b"b"]

    run(test)


def test_no_matching_route_is_404() -> None:
    async def test(loop: FakeLoop) -> None:
        two(loop)
        data = config(http_routes=[{"name": "api", "pool": "web", "match": {"path": "/api"}}])
        client = Client(listener(data))
        client.send(GET)
        await settle()
        out = client.take()
        assert status_of(out) == 404 and out.endswith(b"no route matches this request\n")

    run(test)


def test_a_refused_backend_is_retried_on_the_other() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.refuse = True
        b.refuse = True
        http = listener(config())
        client = Client(http)
        client.send(GET)
        await settle()
        out = client.take()
        assert status_of(out) == 503 and out.endswith(b"(tried a, b)\n")
        b.refuse = False
        b.reply(OK)
        client.send(GET)
        await settle()
        assert client.take() == OK
        assert in_use(http, "a") == 0 and in_use(http, "b") == 1

    run(test)


def test_a_503_answer_is_retried_for_a_get_but_a_504_is_relayed() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        b.reply(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        client = Client(listener(config(pool={"http": {"retries": 1}})))
        client.send(GET)
        await settle()
        assert client.take() == b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        assert len(a.requests) == 1 and len(b.requests) == 1  # tried both, relayed the last
        b.reply(OK)
        client.send(GET)
        await settle()
        assert client.take() == OK  # a's 503, then b's answer
        a.reply(b"HTTP/1.1 504 Late\r\nContent-Length: 0\r\n\r\n")
        b.reply(b"HTTP/1.1 504 Late\r\nContent-Length: 0\r\n\r\n")
        client.send(GET)
        await settle()
        assert status_of(client.take()) == 504
        assert len(a.requests) + len(b.requests) == 5

    run(test)


def test_a_silent_backend_gets_a_504_after_the_read_timeout() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(
            config(
                pool={
                    "backends": [{"name": "a", "http": "http://10.0.0.1:80"}],
                    "http": {"read_timeout": "10s"},
                }
            )
        )
        client = Client(http)
        client.send(GET)
        await settle()
        assert len(a.connections) == 1 and client.written == b""
        await advance(9)
        assert client.written == b""
        await advance(2)
        out = client.take()
        assert status_of(out) == 504 and b"did not answer within 10s" in out
        assert client.closed
        await settle()
        assert a.connections[0].closed_by_proxy and in_use(http, "a") == 0

    run(test)


def test_request_bodies_reach_the_backend_whole_and_chunked_ones_reframed() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(OK)
        b.reply(OK)
        client = Client(listener(config()))
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
        client.send(b"56789")
        await settle()
        assert client.take() == OK
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"3\r\nabc\r\n")
        await settle()
        client.send(b"2\r\nde\r\n0\r\n\r\n")
        await settle()
        assert client.take() == OK
        sent = sorted(a.requests + b.requests)
        assert sent[0].endswith(b"\r\n\r\n0123456789")
        assert sent[1].endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    run(test)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(GET.replace(b"/x", b"/1") + GET.replace(b"/x", b"/2"))
        await settle()
        conn = a.connections[0]
        assert bytes(conn.received).startswith(b"GET /1 ")
        assert b"/2" not in conn.received  # one at a time
        conn.received.clear()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        await settle()
        assert bytes(conn.received).startswith(b"GET /2 ")
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        await settle()
        out = client.take()
        assert out.endswith(b"\r\n\r\n2") and out.count(b"HTTP/1.1 200") == 2

    run(test)


def test_garbage_is_answered_400_and_closed() -> None:
    async def test(loop: FakeLoop) -> None:
        two(loop)
        client = Client(listener(config()))
        client.send(b"NOT HTTP AT ALL\r\n\r\n")
        await settle()
        assert status_of(client.take()) == 400 and client.closed

    run(test)


def test_a_slow_head_gets_408_and_an_idle_connection_closes() -> None:
    async def test(loop: FakeLoop) -> None:
        two(loop)
        http = listener(
            config(
                listeners={
                    "http": {
                        "bind": "127.0.0.1:8080",
                        "head_timeout": "5s",
                        "keepalive_timeout": "20s",
                    }
                }
            )
        )
        slow = Client(http)
        slow.send(b"GET / HTTP/1.1\r\nHo")
        idle = Client(http, peer=("192.0.2.8", 40001))
        await advance(6)
        out = slow.take()
        assert status_of(out) == 408 and slow.closed
        assert not idle.closed
        await advance(15)
        assert idle.closed and idle.written == b""

    run(test)


def test_an_http10_client_gets_the_answer_and_the_connection_closes() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        b.reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        client = Client(listener(config()))
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        await settle()
        out = client.take()
        assert b"100 Continue" not in out  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client
        assert status_of(out) == 200 and out.endswith(b"ok")
        assert client.closed

    run(test)


def test_a_full_budget_makes_requests_wait_then_503() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(
            config(
                pool={
                    "backends": [{"name": "a", "http": "http://10.0.0.1:80"}],
                    "http": {"max_connections": 1, "acquire_timeout": "2s"},
                }
            )
        )
        first = Client(http)
        second = Client(http, peer=("192.0.2.8", 40001))
        first.send(GET)
        second.send(GET)
        await settle()
        assert len(a.connections) == 1 and in_use(http, "a") == 1
        conn = a.connections[0]
        conn.received.clear()
        conn.send(OK)
        await settle()
        assert first.take() == OK
        # The waiting request took the connection over: no second connection.
        assert bytes(conn.received).startswith(b"GET /x") and len(a.connections) == 1
        third = Client(http, peer=("192.0.2.9", 40002))
        third.send(GET)
        await settle()
        await advance(2.5)
        out = third.take()
        assert status_of(out) == 503 and b"all its 1 connections busy" in out
        conn.send(OK)
        await settle()
        assert second.take() == OK
        assert in_use(http, "a") == 1  # the idle keep-alive connection

    run(test)


def test_a_connection_lost_while_handed_over_sends_the_waiter_back_in_line() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        pool = {
            "backends": [{"name": "a", "http": "http://10.0.0.1:80"}],
            "http": {"max_connections": 1},
        }
        http = listener(config(pool=pool))
        first = Client(http)
        second = Client(http, peer=("192.0.2.8", 40001))
        first.send(GET)
        second.send(GET)
        await settle()
        conn = a.connections[0]
        conn.send(OK)  # handed over to the second request, whose task runs later
        # The loop reports the connection lost before that task runs.
        conn.transport.closing = True
        a.open.discard(conn)
        conn.protocol.connection_lost(None)
        await settle()
        assert first.take() == OK
        assert len(a.connections) == 2  # a new connection in the slot that came back
        a.connections[1].send(OK)
        await settle()
        assert second.take() == OK
        assert http.http.connections["a"].open == 1 and in_use(http, "a") == 1

    run(test)


def test_a_websocket_upgrade_becomes_a_tunnel() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        await settle()
        conn = a.connections[0]
        switching = (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        conn.send(switching + b"hi")
        await settle()
        assert client.take() == switching + b"hi"
        conn.received.clear()
        client.send(b"\x81\x02yo")
        await settle()
        assert bytes(conn.received) == b"\x81\x02yo"
        conn.send(b"more")
        assert client.take() == b"more"
        conn.close()
        await settle()
        assert client.closed

    run(test)


def test_a_backend_closing_mid_response_closes_the_client() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(GET)
        await settle()
        conn = a.connections[0]
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await settle()
        assert client.take().endswith(b"12345")
        conn.close()
        await settle()
        assert client.closed and in_use(http, "a") == 0

    run(test)


def test_a_pooled_connection_closed_by_the_backend_is_replaced_unseen() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        a.reply(OK)
        client.send(GET)
        await settle()
        assert client.take() == OK
        # The backend closes the pooled connection as the next request is written to it.
        a.answer = lambda conn: conn.close() if len(a.connections) == 1 else None
        client.send(GET)
        await settle()
        assert len(a.connections) == 2
        a.connections[1].send(OK)
        await settle()
        assert client.take() == OK

    run(test)


def test_a_client_leaving_mid_request_closes_the_backend_connection() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        await settle()
        assert len(a.connections) == 1
        client.transport.close()
        await settle()
        assert a.connections[0].closed_by_proxy
        assert in_use(http, "a") == 0 and http.http.runtime.backends["a"].active == 0

    run(test)


@pytest.mark.parametrize("lost_on_cancel", [False, True], ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("end", ["client leaves", "connect timeout"])
def test_a_connect_given_up_after_connection_made_holds_nothing(
    lost_on_cancel: bool, end: str
) -> None:
    """The event loop called `connection_made`, then the connect was cancelled (the client
    left) or timed out: the connection's slot and open count come back once, whether the
    loop calls `connection_lost` (asyncio) or not (uvloop)."""

    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        a.stall = True
        a.lost_on_cancel = lost_on_cancel
        pool = {
            "backends": [{"name": "a", "http": "http://10.0.0.1:80"}],
            "http": {"connect_timeout": "1s", "retries": 0},
        }
        http = listener(config(pool=pool))
        conns = http.http.connections["a"]
        client = Client(http)
        client.send(GET)
        await settle()
        assert len(a.connections) == 1 and conns.open == 1 and in_use(http, "a") == 1
        if end == "client leaves":
            client.transport.close()
            await settle()
        else:
            await advance(1.5)
            assert status_of(client.take()) == 502
        assert not a.open
        assert conns.open == 0 and not conns.idle and in_use(http, "a") == 0
        a.stall = False
        a.reply(OK)
        again = Client(http, peer=("192.0.2.8", 40001))
        again.send(GET)
        await settle()
        assert again.take() == OK
        assert conns.open == 1 and conns.idle and in_use(http, "a") == 1

    run(test)


def test_a_full_client_buffer_pauses_the_backend() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(GET)
        await settle()
        conn = a.connections[0]
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        client.protocol.pause_writing()
        assert not conn.transport.reading
        client.protocol.resume_writing()
        assert conn.transport.reading
        # And the other way: a full backend buffer pauses reading from the client.
        client.send(b"")
        conn.protocol.pause_writing()  # type: ignore[attr-defined]
        assert not client.transport.reading
        conn.protocol.resume_writing()  # type: ignore[attr-defined]
        assert client.transport.reading
        conn.send(b"cd")
        await settle()
        assert client.take().endswith(b"abcd")

    run(test)


def test_an_early_answer_to_a_large_upload_closes_lingering() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\nabc")
        await settle()
        a.connections[0].send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        await settle()
        out = client.take()
        assert status_of(out) == 403 and b"connection: close" in out.lower()
        assert client.transport.eof_written  # the answer goes out, the client may send on
        client.send(b"more body")
        await advance(6)
        assert client.transport.aborted  # LINGER_TIMEOUT without the client closing

    run(test)


def test_an_early_answer_to_a_small_upload_keeps_the_connection() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        client = Client(http)
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
        await settle()
        a.connections[0].send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        await settle()
        assert status_of(client.take()) == 403
        a.reply(OK)
        client.send(b"def" + GET)  # the rest of the body is dropped, the next request served
        await settle()
        assert client.take() == OK and not client.closed

    run(test)


def test_middlewares_answer_or_rewrite() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        a.reply(OK)
        data = config(
            pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]},
            middlewares={
                "deny": {"ip_filter": {"deny": ["192.0.2.0/24"]}},
                "small": {"max_body": {"limit": 4}},
                "hdr": {"headers": {"response": {"set": {"X-Served-By": "dicomlb"}}}},
                "strip": {"strip_prefix": {"prefixes": ["/app"]}},
            },
            http_routes=[
                {"name": "blocked", "pool": "web", "match": {"path": "/blocked"}},
                {"name": "small", "pool": "web", "match": {"path": "/small"}},
                {"name": "app", "pool": "web", "match": {"path_prefix": "/app"}},
            ],
        )
        data["http_routes"][0]["middlewares"] = ["deny"]
        data["http_routes"][1]["middlewares"] = ["small"]
        data["http_routes"][2]["middlewares"] = ["strip", "hdr"]
        client = Client(listener(data))
        client.send(b"GET /blocked HTTP/1.1\r\nHost: h\r\n\r\n")
        await settle()
        assert status_of(client.take()) == 403
        client.send(b"GET /app/y HTTP/1.1\r\nHost: h\r\n\r\n")
        await settle()
        out = client.take()
        assert b"x-served-by: dicomlb" in out.lower() and out.endswith(b"ok")
        assert a.requests[-1].startswith(b"GET /y ")
        client.send(b"POST /small HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
        await settle()
        out = client.take()
        assert status_of(out) == 413 and b"connection: close" in out.lower()
        assert client.transport.eof_written  # closing, lingering for what the client sends

    run(test)


def test_an_orthanc_pool_sends_a_job_to_the_node_that_runs_it() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        job = b'{"ID": "4a2f", "Path": "/jobs/4a2f"}'
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        a.reply(answer % len(job) + job)
        b.reply(answer % len(job) + job)
        http = listener(config(pool={"orthanc": True}))
        client = Client(http)
        client.send(b"POST /modalities/x/move HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
        await settle()
        assert client.take().endswith(job)
        holder = a if a.requests else b
        for _ in range(3):
            client.send(b"GET /jobs/4a2f HTTP/1.1\r\nHost: h\r\n\r\n")
            await settle()
            assert client.take().endswith(job)
        assert len(holder.requests) == 4  # every look at the job went to its node
        client.send(
            b"GET /transfers/push/9/commit HTTP/1.1\r\nHost: h\r\nsender-transfer-id: t\r\n\r\n"
        )
        await settle()
        assert status_of(client.take()) == 200

    run(test)


def test_sticky_cookie_keeps_a_client_on_one_backend() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        b.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        client = Client(listener(config(pool={"http": {"sticky": True, "key": "cookie:sid"}})))
        seen = set()
        for _ in range(4):
            client.send(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: sid=42\r\n\r\n")
            await settle()
            seen.add(client.take()[-1:])
        assert len(seen) == 1

    run(test)


def test_too_many_clients_are_refused_503() -> None:
    async def test(loop: FakeLoop) -> None:
        two(loop)
        http = listener(
            config(listeners={"http": {"bind": "127.0.0.1:8080", "max_connections": 1}})
        )
        first = Client(http)
        second = Client(http, peer=("192.0.2.8", 40001))
        assert status_of(second.take()) == 503 and second.closed
        assert not first.closed and len(http.clients) == 1

    run(test)


def test_stop_lets_a_request_in_flight_finish() -> None:
    async def test(loop: FakeLoop) -> None:
        a, _ = two(loop)
        http = listener(config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]}))
        busy = Client(http)
        idle = Client(http, peer=("192.0.2.8", 40001))
        busy.send(GET)
        await settle()
        stopping = loop.create_task(http.stop(graceful_timeout=5))
        await settle()
        assert idle.closed and not busy.closed
        a.connections[0].send(OK)
        await advance(0.1)
        await stopping
        assert busy.take() == OK and busy.closed

    run(test)


def test_reload_keeps_connections_of_backends_that_stay() -> None:
    async def test(loop: FakeLoop) -> None:
        a, b = two(loop)
        a.reply(OK)
        b.reply(OK)
        http = listener(config())
        client = Client(http)
        client.send(GET)
        await settle()
        assert client.take() == OK
        old = http.http
        data = config(pool={"backends": [{"name": "a", "http": "http://10.0.0.1:80"}]})
        data["listeners"] = {"http": {"bind": "127.0.0.1:8080"}}
        snapshot = build_snapshot(data, source="<test>")
        http.reload(Runtime(snapshot, old.runtime.backends, old.runtime.upstreams))
        assert http.http.connections["a"] is old.connections["a"]  # kept, with its pool
        assert "b" not in http.http.connections
        for _ in range(2):
            client.send(GET)
            await settle()
            assert client.take() == OK
        assert len(b.requests) <= 1 and len(a.requests) >= 2

    run(test)
