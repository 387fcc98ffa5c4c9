"""What a `dicomlb run` process holds: an idle client association or HTTP connection costs a
few kB, and a large instance or upload streams through with flat memory. The figures at
scale (2,000 connections, 2 GB) are bench/measure_memory.py's; these are the guard.

Per connection, RSS is read settled before and after opening IDLE connections; a buffer
preallocated per connection (a 64 KiB read buffer, a StreamReader, a copy of the
negotiation) or objects kept per connection push it past the bound. Streams: the peak RSS
(VmHWM, reset first) while STREAM_BYTES pass, against a bound far below their size.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dicomdata import LARGE_FRAME, write_large_instance
from tests.memory import (
    A_ABORT,
    HttpSink,
    associate_request,
    close_all,
    open_many,
    peak_rss_kib,
    request_each,
    reset_peak,
    settled_rss,
)
from tests.peers import LOOPBACK, DicomlbProcess, StoreSCP, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

IDLE = 500  # idle connections of each kind
# Measured ≈ 6.2 kB per association and ≈ 3.5 / 4.1 kB per HTTP connection (without and
# after a request) at 2,000 each; the bounds leave room for the noise of 500.
ASSOCIATION_KIB = 10.0
HTTP_CONNECTION_KIB = 8.0
STREAM_BYTES = 100 * LARGE_FRAME  # 200 MB
STREAM_GROWTH_KIB = 32 * 1024

CONFIG = """listeners:
  dicom:
    bind: "{host}:{dicom_port}"
    ae_title: DICOMLB
    max_associations: 2000
    max_negotiating: 2000
    max_negotiating_per_ip: 2000
  http:
    bind: "{host}:{http_port}"
pools:
  sink:
    health: {{enabled: false}}
    backends: [{{name: sink, dicom: "{sink}"}}]
  web:
    health: {{enabled: false}}
    backends: [{{name: web, http: "{web}"}}]
routes:
  - {{name: all, pool: sink}}
http_routes:
  - {{name: all, pool: web}}
"""


class Balancer:
    """The dicomlb process under test and its ports."""

    def __init__(self, process: DicomlbProcess, dicom_port: int, http_port: int) -> None:
        self.process = process
        self.pid = process.pid
        self.dicom_port = dicom_port
        self.http_port = http_port


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[StoreSCP, HttpSink]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2 * IDLE + 256:
        pytest.skip(f"descriptor hard limit {hard} is below {2 * IDLE + 256}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # dicomlb inherits it
    try:
        with StoreSCP("SINK", ignore=True, fork=True) as scp, HttpSink() as web:
            yield scp, web
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def lb(peers: tuple[StoreSCP, HttpSink], tmp_path: Path) -> Iterator[Balancer]:
    """A fresh dicomlb per test: memory freed by one test's connections would hide the
    next one's."""
    scp, web = peers
    dicom_port, http_port = free_port(), free_port()
    config = CONFIG.format(
        host=LOOPBACK,
        dicom_port=dicom_port,
        http_port=http_port,
        sink=scp.address,
        web=web.url,
    )
    with DicomlbProcess(
        config, dicom_port, tmp_path / "lb", options=["--log-level", "warning"]
    ) as process:
        yield Balancer(process, dicom_port, http_port)


def test_idle_associations_cost_a_few_kb(lb: Balancer) -> None:
    request = associate_request("DICOMLB")

    async def run() -> float:
        await close_all(await open_many(lb.dicom_port, 20, request), A_ABORT)  # first-use costs
        before = await asyncio.to_thread(settled_rss, lb.pid)
        opened = await open_many(lb.dicom_port, IDLE, request)
        try:
            return (await asyncio.to_thread(settled_rss, lb.pid) - before) / IDLE
        finally:
            await close_all(opened, A_ABORT)

    per_association = asyncio.run(run())
    assert per_association < ASSOCIATION_KIB, f"{per_association:.1f} KiB per idle association"


def test_idle_http_connections_cost_a_few_kb(lb: Balancer) -> None:
    async def run() -> tuple[float, float]:
        warm = await open_many(lb.http_port, 20)
        await request_each(warm)
        await close_all(warm)
        before = await asyncio.to_thread(settled_rss, lb.pid)
        opened = await open_many(lb.http_port, IDLE)
        try:
            silent = await asyncio.to_thread(settled_rss, lb.pid)
            await request_each(opened)
            used = await asyncio.to_thread(settled_rss, lb.pid)
        finally:
            await close_all(opened)
        return (silent - before) / IDLE, (used - before) / IDLE

    silent, used = asyncio.run(run())
    assert silent < HTTP_CONNECTION_KIB, f"{silent:.1f} KiB per connection without a request"
    assert used < HTTP_CONNECTION_KIB, f"{used:.1f} KiB per connection after one request"


def test_large_instance_streams_with_flat_memory(lb: Balancer, tmp_path: Path) -> None:
    source = write_large_instance(tmp_path / "large.dcm", STREAM_BYTES // LARGE_FRAME)
    before = settled_rss(lb.pid, 0.2)
    reset_peak(lb.pid)
    sent = storescu(LOOPBACK, lb.dicom_port, [source], aec="DICOMLB", timeout=300)
    assert sent.returncode == 0, sent.stderr
    growth = peak_rss_kib(lb.pid) - before
    assert growth < STREAM_GROWTH_KIB, f"RSS grew {growth >> 10} MiB for a 200 MB instance"


def test_large_upload_streams_with_flat_memory(lb: Balancer) -> None:
    piece = memoryview(bytes(range(256)) * 4096)
    before = settled_rss(lb.pid, 0.2)
    reset_peak(lb.pid)
    with socket.create_connection((LOOPBACK, lb.http_port), 30) as sock:
        sock.settimeout(60)
        sock.sendall(
            b"POST /up HTTP/1.1\r\nHost: memory\r\nContent-Length: %d\r\n\r\n" % STREAM_BYTES
        )
        left = STREAM_BYTES
        while left:
            chunk = piece[: min(left, len(piece))]
            sock.sendall(chunk)
            left -= len(chunk)
        answer = b""
        while not answer.endswith(str(STREAM_BYTES).encode()):
            data = sock.recv(65536)
            assert data, f"connection closed after {answer!r}"
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer
    growth = peak_rss_kib(lb.pid) - before
    assert growth < STREAM_GROWTH_KIB, f"RSS grew {growth >> 10} MiB for a 200 MB upload"
