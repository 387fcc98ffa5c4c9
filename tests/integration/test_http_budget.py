"""One backend's HTTP connection budget with real peers: proxied requests (HTTP clients
through the listener), the DICOM -> HTTP bridge (pynetdicom C-STOREs, `store_via:
orthanc_rest`) and the active HTTP checks, all at once to one backend whose pool has
`http.max_connections: 3`. The backend counts, each time it accepts a connection, how many
of dicomlb's connections are open then (the kernel's view: a connection whose close has
reached the backend is not counted, even when the backend has not read that close yet)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any, Self

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.dicomdata import make_series
from tests.peers import LOOPBACK, free_port

LIMIT = 3


class CountingBackend:
    """An HTTP/1.1 keep-alive backend, a thread per connection, that looks at every accept
    how many connections are still open: `peak` is the most seen at once. `POST /instances`
    answers as Orthanc's REST API (after `delay`), `GET /system` as Orthanc does, anything
    else 200 after `delay`."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.peak = 0
        self.accepted = 0
        self.requests: dict[str, int] = {}
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, self.port), backlog=64)
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def open_now(self) -> int:
        """dicomlb's connections open now: those whose close has not arrived."""
        with self._lock:
            return sum(1 for sock in self._open if not _closed_by_peer(sock))

    def __enter__(self) -> Self:
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                live = 1 + sum(1 for other in self._open if not _closed_by_peer(other))
                self._open.add(sock)
                self.accepted += 1
                self.peak = max(self.peak, live)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                length = 0
                chunked = False
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                    if name.strip().lower() == "transfer-encoding":
                        chunked = "chunked" in value.lower()
                if chunked:
                    while (size := int(reader.readline().split(b";")[0], 16)) > 0:
                        reader.read(size + 2)
                    reader.readline()
                else:
                    reader.read(length)
                with self._lock:
                    key = f"{method} {path.split('?')[0]}"
                    self.requests[key] = self.requests.get(key, 0) + 1
                if path == "/system":
                    body = b'{"Version": "test"}'
                else:
                    time.sleep(self.delay)
                    body = json.dumps({"ID": "x", "Status": "Success"}).encode()
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open.discard(sock)
            reader.close()
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """The other side's FIN or RST has arrived (a peek reads EOF or fails)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _get(port: int, path: str, count: int) -> list[int]:
    """`count` requests on one keep-alive client connection; their statuses."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    statuses = []
    try:
        for _ in range(count):
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        conn.close()
    return statuses


def _store(port: int, datasets: list[Any]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOMLB")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _in_use(lb: Any) -> int:
    async def look() -> int:
        return int(lb.backend("node").budget.in_use)

    return int(lb.call(look()))


def test_proxy_bridge_and_checks_share_one_budget(balancer: Any) -> None:
    with CountingBackend() as node:
        http_port = free_port()
        lb = balancer(
            {
                "listeners": {"http": {"bind": f"{LOOPBACK}:{http_port}"}},
                "pools": {
                    "pacs": {
                        "strategy": "round_robin",
                        "acquire_timeout": "20s",
                        "health": {"interval": "100ms", "timeout": "1s", "fall": 1},
                        "http": {
                            "max_connections": LIMIT,
                            "acquire_timeout": "20s",
                            "idle_timeout": "500ms",
                            "retries": 0,
                        },
                        "backends": [
                            {
                                "name": "node",
                                "http": node.url,
                                "store_via": "orthanc_rest",
                                "max_associations": 4,  # the bridge alone would open 4
                            }
                        ],
                    }
                },
                "routes": [{"name": "dicom", "pool": "pacs"}],
                "http_routes": [{"name": "web", "pool": "pacs"}],
            },
            admin=True,
        )
        results: dict[str, list[int]] = {}
        lock = threading.Lock()

        def run(name: str, work: Any) -> None:
            got = work()
            with lock:
                results[name] = got

        threads = [
            threading.Thread(target=run, args=(f"get{n}", lambda: _get(http_port, "/a", 8)))
            for n in range(5)
        ] + [
            threading.Thread(
                target=run,
                args=(f"store{n}", lambda: _store(lb.port, make_series(6, rows=16, cols=16))),
            )
            for n in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

        assert all(s == [200] * 8 for n, s in results.items() if n.startswith("get")), results
        assert all(s == [0] * 6 for n, s in results.items() if n.startswith("store")), results
        assert len(results) == 8
        assert node.requests["GET /a"] == 40 and node.requests["POST /instances"] == 18
        assert node.requests.get("GET /system", 0) >= 1  # the checks got their slots too
        # Saturated, never over: the budget was full and the backend saw no more than it.
        assert node.peak == LIMIT, (node.peak, node.accepted)
        assert lb.backend("node").http_health.up  # busy, not down

        status, view = lb.http("GET", "/api/v1/backends/node")
        assert status == 200
        assert view["http_connection_limit"] == LIMIT
        assert 0 <= view["http_connections"] <= LIMIT
        status, text = lb.http("GET", "/metrics")
        assert f'dicomlb_backend_http_connection_limit{{backend="node"}} {LIMIT}.0' in text
        assert 'dicomlb_backend_http_connections{backend="node"}' in text

        # Nothing leaks: once idle connections have timed out (proxy 500 ms, bridge 0.8 s)
        # only checks come and go; what the budget counts is what the backend sees.
        deadline = time.monotonic() + 10
        while (_in_use(lb), node.open_now()) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        in_use = _in_use(lb)
        assert in_use <= 1 and node.open_now() <= 1, (in_use, node.open_now())
