"""A backend's answer that comes before the whole request body (Orthanc's 401 as soon as it
has the head): the client keeps its connection when the rest of the body is bounded — dicomlb
reads and drops it, as the backend itself would — and otherwise gets `Connection: close` and
a lingering close (its answer intact, no reset). The backend connection that carried part of
a body is never reused. Run on asyncio's loop and on uvloop (what `dicomlb run` uses).

The last tests run httplib2 (it sends without credentials, gets 401, and sends again with
them on the same connection) against a real Orthanc with authentication on, directly and
through dicomlb, and compare."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httplib2
import pytest
import uvloop

from tests.dicomdata import make_series
from tests.httppeers import HttpBalancer, LoopThread
from tests.peers import LOOPBACK, Orthanc, free_port, have_orthanc

CAP = 64 * 1024  # discard_body_max of the tests that cross it


class UvLoopThread(LoopThread):
    """A uvloop loop on a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()


class Balancer(HttpBalancer):
    """dicomlb's HTTP side on the loop `kind` names."""

    def __init__(self, config: dict[str, Any], kind: str) -> None:
        super().__init__(config)
        if kind == "uvloop":
            self.runner.close()
            self.runner = UvLoopThread()

    def clients(self) -> int:
        """Client connections the listener counts (lingering ones included)."""
        assert self.app.http is not None
        return len(self.app.http.clients)

    def wait_clients(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.clients() != count:
            assert time.monotonic() < deadline, f"{self.clients()} client connections, not {count}"
            time.sleep(0.02)


class EarlyBackend:
    """A raw backend that answers as Orthanc with authentication does: a request without
    `Authorization` gets 401 as soon as its head is in, then its body is read and dropped
    (`/early`) or not read at all (`/early-stop`: the backend waits for the connection to
    end, as one that means to close it would). With `Authorization` (or on `/ok`) the body
    is read and the answer is 200 with its size. Every request is recorded with the number
    of its backend connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.connections = 0
        self.requests: list[tuple[int, str, str]] = []  # (connection, method, path)
        self.runner = LoopThread()
        self.server: asyncio.Server | None = None

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, self.port)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                async with asyncio.timeout(30):
                    head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                self.requests.append((number, method, path))
                length = int(fields.get("content-length", "0"))
                if path == "/ok" or "authorization" in fields:
                    body = await reader.readexactly(length)
                    text = b"%d" % len(body)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
                    )
                    continue
                writer.write(
                    b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="t"\r\n'
                    b"Connection: keep-alive\r\nContent-Length: 5\r\n\r\nnope\n"
                )
                await writer.drain()
                if path == "/early-stop":
                    while await reader.read(65536):
                        pass
                    return
                await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            writer.close()

    def start(self) -> EarlyBackend:
        self.runner.call(self._start())
        return self

    def stop(self) -> None:
        self.runner.call(self._stop())
        self.runner.close()


@pytest.fixture
def early() -> Iterator[EarlyBackend]:
    backend = EarlyBackend().start()
    yield backend
    backend.stop()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def config(backend: EarlyBackend, **listener: Any) -> dict[str, Any]:
    return {
        "listeners": {"http": listener},
        "pools": {
            "web": {
                "health": {"interval": "1h"},
                "http": {"retries": 0},
                "backends": [{"name": "early", "http": backend.url}],
            }
        },
        "http_routes": [{"name": "all", "pool": "web"}],
    }


def head(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pacs", *fields, "", ""]
    return "\r\n".join(lines).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body from `sock`, and not a byte more: pipelined
    responses may arrive in one segment, and what follows stays for the next call (or for
    `finish_cleanly`, which finds any stray byte)."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):  # heads are short: a byte at a time
        piece = sock.recv(1)
        assert piece, f"connection closed before a response head: {data!r}"
        data += piece
    lines = data[:-4].decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields["content-length"])
    body = b""
    while len(body) < length:
        piece = sock.recv(length - len(body))
        assert piece, "connection closed inside a response body"
        body += piece
    return int(lines[0].split(" ")[1]), fields, body


def connect(lb: HttpBalancer) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, lb.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def finish_cleanly(sock: socket.socket) -> None:
    """Half-close and read to the end: the server's close must be a FIN, not a reset."""
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(65536) == b""
    sock.close()


def test_early_answer_within_the_cap_keeps_the_connection(
    early: EarlyBackend, loop_kind: str
) -> None:
    body = bytes(range(256)) * 1200  # 300 kB, a CT image's size
    with Balancer(config(early), loop_kind) as lb:
        sock = connect(lb)
        for _ in range(3):
            sock.sendall(head("POST", "/early", f"Content-Length: {len(body)}") + body[:1000])
            status, fields, answer = read_response(sock)
            assert (status, answer) == (401, b"nope\n")
            assert fields.get("connection") != "close"
            sock.sendall(body[1000:])  # the client finishes sending, as httplib2 does
            # ... and sends again with credentials, on the same connection
            sock.sendall(
                head("POST", "/early", "Authorization: Basic eDp5", f"Content-Length: {len(body)}")
                + body
            )
            assert read_response(sock)[::2] == (200, b"%d" % len(body))
        assert lb.clients() == 1
        finish_cleanly(sock)
        lb.wait_clients(0)


def test_early_answer_then_pipelined_requests_behind_the_body(
    early: EarlyBackend, loop_kind: str
) -> None:
    body = b"x" * 20_000
    with Balancer(config(early), loop_kind) as lb:
        sock = connect(lb)
        sock.sendall(head("POST", "/early", f"Content-Length: {len(body)}") + body[:10])
        assert read_response(sock)[0] == 401
        # the rest of the body and two requests behind it in one write
        sock.sendall(body[10:] + head("GET", "/ok") + head("GET", "/ok"))
        assert read_response(sock)[::2] == (200, b"0")
        assert read_response(sock)[::2] == (200, b"0")
        finish_cleanly(sock)


def test_backend_connection_with_part_of_a_body_is_not_reused(
    early: EarlyBackend, loop_kind: str
) -> None:
    body = b"y" * 100_000
    with Balancer(config(early), loop_kind) as lb:
        sock = connect(lb)
        sock.sendall(head("POST", "/early-stop", f"Content-Length: {len(body)}") + body[:1000])
        assert read_response(sock)[0] == 401
        sock.sendall(body[1000:])
        sock.sendall(head("GET", "/ok"))
        assert read_response(sock)[::2] == (200, b"0")  # not lost in the first connection
        on = {path: number for number, _, path in early.requests}
        assert on["/ok"] != on["/early-stop"]
        finish_cleanly(sock)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_over_the_cap_or_unknown_length_closes_lingering(
    early: EarlyBackend, loop_kind: str, framing: str
) -> None:
    body = b"z" * (2 * 1024 * 1024)
    if framing == "length":
        start = head("POST", "/early", f"Content-Length: {len(body)}") + body[:1000]
        rest = body[1000:]
    else:  # the length is not known: the connection closes whatever the size
        start = head("POST", "/early", "Transfer-Encoding: chunked") + b"3e8\r\n" + body[:1000]
        rest = (
            b"\r\n"
            + b"".join(
                b"%x\r\n%s\r\n" % (65536, body[i : i + 65536]) for i in range(0, len(body), 65536)
            )
            + b"0\r\n\r\n"
        )
    with Balancer(config(early, discard_body_max=CAP), loop_kind) as lb:
        sock = connect(lb)
        sock.sendall(start)
        status, fields, answer = read_response(sock)
        assert (status, fields["connection"], answer) == (401, "close", b"nope\n")
        assert lb.clients() == 1  # lingering: still counted
        sock.sendall(rest)  # no broken pipe: dicomlb reads and drops it
        finish_cleanly(sock)
        lb.wait_clients(0)


def test_expect_continue_answered_without_a_body(early: EarlyBackend, loop_kind: str) -> None:
    """The backend's final answer comes without a 100: the client gets it at once, told the
    connection closes (it may never send the body, so the next bytes are not known to be the
    body); dicomlb shuts its side, so a client waiting on the connection sees it end."""
    with Balancer(config(early), loop_kind) as lb:
        sock = connect(lb)
        sock.sendall(head("POST", "/early", "Expect: 100-continue", "Content-Length: 5000"))
        status, fields, answer = read_response(sock)
        assert (status, fields["connection"], answer) == (401, "close", b"nope\n")
        sock.settimeout(3)
        assert sock.recv(100) == b""  # the half-close came without waiting for the body
        sock.close()
        lb.wait_clients(0)
        # A client that sends the body anyway (after its own timer) gets no reset either.
        sock = connect(lb)
        sock.sendall(head("POST", "/early", "Expect: 100-continue", "Content-Length: 50000"))
        assert read_response(sock)[0] == 401
        sock.sendall(b"b" * 50000)
        finish_cleanly(sock)
        lb.wait_clients(0)


# --- TLS: handshakes run by dicomlb (refusals logged), lingering without a half-close -------


def tls_listener(pki: Path) -> dict[str, str]:
    return {
        "cert": str(pki / "dicomlb.crt"),
        "key": str(pki / "dicomlb.key"),
        "ca": str(pki / "ca.crt"),  # client certificates required
    }


def tls_client(pki: Path, *, cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(str(pki / "modality.crt"), str(pki / "modality.key"))
    return context


def test_refused_tls_handshakes_are_logged_one_line_each(
    pki: Path, early: EarlyBackend, loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Balancer(config(early, tls=tls_listener(pki)), loop_kind) as lb:
        with tls_client(pki).wrap_socket(connect(lb), server_hostname=LOOPBACK) as sock:
            for _ in range(2):  # keep-alive through the handshake dicomlb ran
                sock.sendall(head("GET", "/ok"))
                assert read_response(sock)[::2] == (200, b"0")
        # no client certificate: no answer (TLS 1.3 tells the client after its handshake)
        bare = tls_client(pki, cert=False)
        with (
            contextlib.suppress(ssl.SSLError, ConnectionResetError),
            bare.wrap_socket(connect(lb), server_hostname=LOOPBACK) as sock,
        ):
            sock.sendall(head("GET", "/ok"))
            assert sock.recv(100) == b""
        # plain HTTP on the TLS port
        with connect(lb) as plain:
            plain.sendall(head("GET", "/ok"))
            with contextlib.suppress(ConnectionResetError):  # (an alert, then the end)
                while plain.recv(100):
                    pass
        lb.wait_clients(0)
    lines = [r.getMessage() for r in caplog.records if "tls_failed" in r.getMessage()]
    assert len(lines) == 2, lines
    assert all(
        line.startswith("listener.tls_failed listener=http peer=127.0.0.1:") for line in lines
    )
    assert "CERTIFICATE" in lines[0].upper()


def test_over_the_cap_through_tls_drains_then_closes(
    pki: Path, early: EarlyBackend, loop_kind: str
) -> None:
    body = b"t" * (1024 * 1024)
    listener = {"tls": tls_listener(pki), "discard_body_max": CAP}
    with Balancer(config(early, **listener), loop_kind) as lb:
        sock = tls_client(pki).wrap_socket(connect(lb), server_hostname=LOOPBACK)
        sock.sendall(head("POST", "/early", f"Content-Length: {len(body)}") + body[:1000])
        status, fields, _ = read_response(sock)
        assert (status, fields["connection"]) == (401, "close")
        assert lb.clients() == 1
        sock.sendall(body[1000:])  # read and dropped: no reset under the client
        sock.close()
        lb.wait_clients(0)


# --- httplib2 against Orthanc with authentication, directly and through dicomlb ------------


class CountingConnection(httplib2.HTTPConnectionWithTimeout):
    """httplib2's plain connection, counting the TCP connections it opens."""

    opened = 0

    def connect(self) -> None:
        CountingConnection.opened += 1
        super().connect()


@pytest.fixture(scope="module")
def guarded() -> Iterator[Orthanc]:
    """Orthanc with its default authentication on and one registered user."""
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "secret"}}
    with Orthanc(config=config) as node:
        node.start()
        yield node


def part10(rows: int) -> bytes:
    buffer = io.BytesIO()
    make_series(1, rows=rows, cols=rows)[0].save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def upload(url: str, data: bytes) -> tuple[int, int]:
    """POST /instances with a new httplib2 client given credentials: it sends without them,
    gets 401 and sends again on its connection. (status, TCP connections it opened)"""
    client = httplib2.Http(timeout=30, proxy_info=None)
    client.add_credentials("alice", "secret")
    CountingConnection.opened = 0
    response, _ = client.request(
        f"{url}/instances",
        "POST",
        body=data,
        headers={"Content-Type": "application/dicom"},
        connection_type=CountingConnection,
    )
    client.close()
    return response.status, CountingConnection.opened


@pytest.mark.orthanc
@pytest.mark.skipif(not have_orthanc(), reason="needs the Debian orthanc package")
@pytest.mark.parametrize("rows", [512, 1536], ids=["500kB", "4.7MB"])
def test_httplib2_uploads_to_orthanc_with_authentication(guarded: Orthanc, rows: int) -> None:
    data = part10(rows)
    config = {
        "pools": {
            "orthanc": {
                "orthanc": True,
                "health": {
                    "interval": "1s",
                    "http": {"path": "/system", "username": "alice", "password": "secret"},
                },
                "backends": [{"name": "node", "http": guarded.url}],
            }
        },
        "http_routes": [{"name": "all", "pool": "orthanc"}],
    }
    repeats = 20
    direct = [upload(guarded.url, data) for _ in range(repeats)]
    assert direct == [(200, 1)] * repeats  # Orthanc itself keeps the connection
    with HttpBalancer(config) as lb:
        through = [upload(lb.url, data) for _ in range(repeats)]
    assert through == direct
