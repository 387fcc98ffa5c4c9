"""Floods against a running dicomlb (a process, in front of storescp and Orthanc, the canary
storing and GETting every half second): idle connections on every listener, association
requests and HTTP heads sent a byte at a time, HTTP bodies that stall, association floods
from one AE, from many AEs of one address and from many addresses.

Each test counts, from the client side and from the log, what was refused or closed and how;
checks that the documented limit held (docs/operations/sizing.md); and then that nothing
is left held, RSS grew less than RSS_GROWTH_LIMIT, the descriptors came back, and the canary
kept going without a failure. Clients bind other loopback addresses (127.0.0.2 ...) to meet
the per-address limits; the canary is 127.0.0.1. Deadlines are short so that each test takes
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import re
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dicomlb.dicom.pdu import (
    AssociateRequest,
    PresentationContextProposal,
    UserInformation,
    encode,
)
from tests.adversarial.wire import LOOPBACK, Canary, FuzzTarget
from tests.peers import have_dcmtk, have_orthanc

pytestmark = [
    pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (Debian dcmtk)"),
    pytest.mark.skipif(not have_orthanc(), reason="needs Orthanc (Debian orthanc)"),
    pytest.mark.orthanc,
]

FLOOD = 2000  # idle connections per listener
ARTIM = 2.0
IDLE = 4.0
HEAD = 2.0  # http head_timeout
HTTP_IDLE = 2.0  # http idle_timeout: a request standing still
KEEPALIVE = 3.0  # http keepalive_timeout: a connection without a request
MAX_NEGOTIATING = 128  # the defaults
NEGOTIATING_PER_IP = 16
MAX_ASSOCIATIONS = 40
ASSOCIATIONS_PER_IP = 8
ASSOCIATIONS_PER_AET = 6
HTTP_MAX_CONNECTIONS = 2048
RSS_GROWTH_LIMIT = 20 << 20
FD_SLACK = 4  # idle backend associations, a health check under way
SETTLE = 10.0  # seconds for what a flood left to close once the flood is over

LIMITS = {
    "dicom": {
        "artim_timeout": ARTIM,
        "idle_timeout": IDLE,
        "max_negotiating": MAX_NEGOTIATING,
        "max_negotiating_per_ip": NEGOTIATING_PER_IP,
        "max_associations": MAX_ASSOCIATIONS,
        "max_associations_per_ip": ASSOCIATIONS_PER_IP,
        "max_associations_per_calling_aet": ASSOCIATIONS_PER_AET,
    },
    "http": {
        "head_timeout": HEAD,
        "idle_timeout": HTTP_IDLE,
        "keepalive_timeout": KEEPALIVE,
        "max_connections": HTTP_MAX_CONNECTIONS,
    },
}

# PS3.8 9.3.4: A-ASSOCIATE-RJ result 2 (transient), source 3 (service provider, presentation
# related), reason 2 (local limit exceeded)
BUSY = (2, 3, 2)
RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    # The test process holds FLOOD sockets at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    with FuzzTarget(tmp_path_factory.mktemp("floods"), listeners=LIMITS) as running:
        yield running
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def sources(first: int, count: int) -> list[str]:
    """`count` loopback addresses from 127.0.<first>.1: hosts of their own to dicomlb."""
    return [f"127.0.{first}.{n + 1}" for n in range(count)]


# --------------------------------------------------------------------------- watching


@dataclass
class Watch:
    """What a test's flood is measured against: the state before, and the canary."""

    target: FuzzTarget
    canary: Canary
    log_start: int
    rss_before: int
    fds_before: int
    refused_before: int

    def lines(self, event: str) -> list[str]:
        return self.target.log_lines(self.log_start, event)

    def refused(self) -> int:
        """Connections the DICOM listener closed on arrival since the flood began."""
        return dicom_listener(self.target)["refused"] - self.refused_before


def dicom_listener(target: FuzzTarget) -> dict[str, int]:
    return next(entry for entry in target.admin("/api/v1/listeners") if entry["name"] == "dicom")


@contextlib.contextmanager
def flooding(target: FuzzTarget) -> Iterator[Watch]:
    """Run the block with the canary going; then wait until what the flood left has closed,
    and check what every flood must leave behind: nothing held, RSS bounded, descriptors
    back, no traceback or ERROR line, the canary unhurt."""
    watch = Watch(
        target=target,
        canary=Canary(target),
        log_start=len(target.log()),
        rss_before=target.rss(),
        fds_before=target.fds(),
        refused_before=dicom_listener(target)["refused"],
    )
    with watch.canary:
        yield watch
        # The canary goes on after the flood too (a test may have paused it).
        stores, gets = watch.canary.stores, watch.canary.gets
        until = time.monotonic() + 5
        while watch.canary.stores == stores or watch.canary.gets == gets:
            if time.monotonic() > until:
                break
            time.sleep(0.1)
        after = (watch.canary.stores - stores, watch.canary.gets - gets)
    deadline = time.monotonic() + SETTLE
    while True:
        held, fds = target.held(), target.fds()
        if (not held and fds <= watch.fds_before + FD_SLACK) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rss_after = target.rss()
    log = target.log()[watch.log_start :]
    failures = [f"held after {SETTLE:g}s: {what}" for what in held]
    if fds > watch.fds_before + FD_SLACK:
        failures.append(f"descriptors {watch.fds_before} -> {fds}")
    if rss_after - watch.rss_before > RSS_GROWTH_LIMIT:
        growth = (rss_after - watch.rss_before) / 2**20
        failures.append(f"RSS grew {growth:.1f} MiB")
    if "Traceback (most recent call last)" in log:
        failures.append("a traceback in the log")
    failures += [f"ERROR line: {line}" for line in log.splitlines() if " ERROR " in line][:5]
    canary = watch.canary
    failures += [f"canary: {failure}" for failure in canary.store_failures[:5]]
    failures += [f"canary: {failure}" for failure in canary.get_failures[:5]]
    if not all(after):
        failures.append(f"canary stalled after the flood: {after[0]} stores, {after[1]} GETs")
    assert target.alive(), "dicomlb died"
    assert failures == [], failures


# --------------------------------------------------------------------------- clients


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset: no TIME-WAIT left behind for each of thousands of client ports
    (on a shared machine they would fill the port range other tests bind from)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(frozen=True, slots=True)
class Closed:
    """How one client connection ended."""

    source: str
    how: str  # "eof" or "reset" (the server closed it), "kept" (still open), "unconnected"
    seconds: float  # from connect to the server's close (or to the end of watching)
    first: bytes  # the first bytes the server sent


FIRST_CLIENT_PORT = 61000  # above the kernel's ephemeral range (32768-60999)


async def open_from(
    port: int, source: str, n: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from `source`, port FIRST_CLIENT_PORT + n: thousands of client ports
    taken from the ephemeral range would be taken from the other tests on this machine,
    which bind free ports from it (port 0, the kernel's pick, if that one is in use)."""
    for local_port in (FIRST_CLIENT_PORT + n, 0):
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, port, local_addr=(source, local_port)), 10
            )
        except OSError as err:
            if err.errno != errno.EADDRINUSE or local_port == 0:
                raise
    raise AssertionError("unreachable")


async def hold(
    port: int, source: str, n: int, *, send: bytes = b"", drip: float = 0.0, watch: float
) -> Closed:
    """Connect from `source` (client port number `n`), send `send` (a byte every `drip`
    seconds if set), and wait up to `watch` seconds for the server to close the connection."""
    try:
        reader, writer = await open_from(port, source, n)
    except (OSError, TimeoutError):
        return Closed(source, "unconnected", 0.0, b"")
    opened = time.monotonic()
    first = bytearray()
    ended: list[tuple[str, float]] = []

    async def read() -> None:
        try:
            while data := await reader.read(4096):
                first.extend(data[: 64 - len(first)])
            ended.append(("eof", time.monotonic()))
        except ConnectionError:
            ended.append(("reset", time.monotonic()))

    reading = asyncio.create_task(read())
    try:
        if drip:
            for byte in send:
                if reading.done() or writer.transport.is_closing():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(drip)
        elif send:
            writer.write(send)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(reading), max(0.0, opened + watch - time.monotonic())
            )
    finally:
        reading.cancel()
        reset(writer)
    if ended:
        how, at = ended[0]
        return Closed(source, how, at - opened, bytes(first))
    return Closed(source, "kept", time.monotonic() - opened, bytes(first))


async def flood(
    port: int,
    addresses: list[str],
    count: int,
    *,
    send: bytes = b"",
    drip: float = 0.0,
    watch: float,
    batch: int = 100,
) -> list[Closed]:
    """`count` connections spread over `addresses`, opened `batch` at a time (a burst the
    listener's backlog takes), all held at once."""
    tasks = []
    for n in range(count):
        source = addresses[n % len(addresses)]
        hold_one = hold(port, source, n // len(addresses), send=send, drip=drip, watch=watch)
        tasks.append(asyncio.create_task(hold_one))
        if n % batch == batch - 1:
            await asyncio.sleep(0.01)
    return list(await asyncio.gather(*tasks))


def _flood_in_child(port: int, addresses: list[str], count: int, options: dict[str, Any]) -> Any:
    return asyncio.run(flood(port, addresses, count, **options))


def flood_from_child(port: int, addresses: list[str], count: int, **options: Any) -> list[Closed]:
    """`flood` from another process: the canary's pynetdicom uses select(), which fails on
    descriptors past 1,024, so the thousands of sockets must not be in the test process."""
    spawn = multiprocessing.get_context("spawn")  # the canary's threads run: no fork
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        result: list[Closed] = child.submit(
            _flood_in_child, port, addresses, count, options
        ).result(timeout=120)
        return result


def tally(closed: list[Closed]) -> Counter[str]:
    return Counter(c.how for c in closed)


def associate_rq(calling_ae: str) -> bytes:
    return encode(
        AssociateRequest(
            called_ae="DICOMLB",
            calling_ae=calling_ae,
            contexts=(
                PresentationContextProposal(
                    context_id=1,
                    abstract_syntax="1.2.840.10008.1.1",
                    transfer_syntaxes=("1.2.840.10008.1.2",),
                ),
            ),
            user_info=UserInformation(max_pdu=16384, implementation_class_uid="1.2.3.4"),
        )
    )


@dataclass
class Attempt:
    source: str
    calling_ae: str
    answer: str  # "accepted", "rejected", "closed"
    reject: tuple[int, int, int] | None = None
    writer: asyncio.StreamWriter | None = None  # an accepted association, still open


async def associate(port: int, source: str, n: int, calling_ae: str) -> Attempt:
    """Send an A-ASSOCIATE-RQ from `source` (client port number `n`); an accepted
    association stays open."""
    try:
        reader, writer = await open_from(port, source, n)
    except (OSError, TimeoutError):
        return Attempt(source, calling_ae, "closed")
    try:
        writer.write(associate_rq(calling_ae))
        head = await asyncio.wait_for(reader.readexactly(6), 10)
        body = await asyncio.wait_for(reader.readexactly(struct.unpack(">I", head[2:])[0]), 10)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        reset(writer)
        return Attempt(source, calling_ae, "closed")
    if head[0] == 0x02:
        return Attempt(source, calling_ae, "accepted", writer=writer)
    reset(writer)
    if head[0] == 0x03:
        return Attempt(source, calling_ae, "rejected", reject=(body[1], body[2], body[3]))
    return Attempt(source, calling_ae, f"PDU type {head[0]:#x}")


async def association_flood(
    port: int, attempts: list[tuple[str, str]], *, per_source: int = 8
) -> list[Attempt]:
    """Every (source, calling AE) attempt, `per_source` at a time from each address (under
    max_negotiating_per_ip: a flood is throttled there, tested elsewhere); the accepted
    associations are held until all are done, then released."""
    gates: dict[str, asyncio.Semaphore] = {}
    numbers: Counter[str] = Counter()

    async def one(source: str, calling_ae: str) -> Attempt:
        gate = gates.setdefault(source, asyncio.Semaphore(per_source))
        numbers[source] += 1
        n = numbers[source]
        async with gate:
            return await associate(port, source, n, calling_ae)

    results = await asyncio.gather(*(one(source, aet) for source, aet in attempts))
    for attempt in results:
        if attempt.writer is not None:
            attempt.writer.write(RELEASE_RQ)
    await asyncio.sleep(0.2)
    for attempt in results:
        if attempt.writer is not None:
            reset(attempt.writer)
    return list(results)


def logged_refusals(lines: list[str]) -> int:
    """Refusals a run of `listener.refused` lines accounts for: each line, and the ones it
    says were held back before it."""
    return sum(1 + int(re.search(r"refused_since=(\d+)", line)[1]) for line in lines)  # type: ignore[index]


# --------------------------------------------------------------------------- idle connections


def test_idle_dicom_connections_meet_the_per_address_negotiating_limit(
    target: FuzzTarget,
) -> None:
    """2,000 connections from 4 addresses that never send a byte: 16 of each address are
    kept until ARTIM and closed then, every other one is closed at once; the canary (another
    address) associates throughout."""
    addresses = sources(1, 4)
    with flooding(target) as watch:
        started = time.monotonic()
        closed = flood_from_child(target.dicom_port, addresses, FLOOD, watch=ARTIM + 3)
        spent = time.monotonic() - started
        refused_by_api = watch.refused()
    assert set(tally(closed)) <= {"eof", "reset"}, tally(closed)
    assert all(c.first == b"" for c in closed), "no PDU is sent to a connection never heard"
    at_once = [c for c in closed if c.seconds < ARTIM / 2]
    at_artim = [c for c in closed if ARTIM * 0.8 <= c.seconds <= ARTIM + 2]
    assert len(at_once) + len(at_artim) == FLOOD, (spent, sorted(c.seconds for c in closed))
    kept = Counter(c.source for c in at_artim)
    # Opened well within ARTIM: no kept one has expired to make room for another yet.
    assert spent < ARTIM + 3
    assert kept == {address: NEGOTIATING_PER_IP for address in addresses}, kept
    assert refused_by_api == len(at_once)
    lines = watch.lines("listener.refused")
    assert lines and all("limit=max_negotiating_per_ip" in line for line in lines), lines[:3]
    assert len(lines) <= spent + 2  # at most one line a second
    assert logged_refusals(lines) <= len(at_once)
    assert len(watch.lines("association.artim_expired")) == len(at_artim)


def test_idle_dicom_connections_meet_the_overall_negotiating_limit(target: FuzzTarget) -> None:
    """From 12 addresses (192 connections under the per-address limit) only
    max_negotiating are kept; one more from the canary's own address is closed at once, and
    once ARTIM has closed the flood the canary associates again."""
    addresses = sources(2, 12)
    count = NEGOTIATING_PER_IP * len(addresses)
    with flooding(target) as watch, watch.canary.paused(get=False):
        closed = flood_from_child(target.dicom_port, addresses, count, watch=ARTIM + 3)
        refused_by_api = watch.refused()
    at_once = [c for c in closed if c.seconds < ARTIM / 2]
    at_artim = [c for c in closed if ARTIM * 0.8 <= c.seconds <= ARTIM + 2]
    assert len(at_artim) == MAX_NEGOTIATING, sorted(c.seconds for c in closed)
    assert len(at_once) == count - MAX_NEGOTIATING
    assert refused_by_api == len(at_once)
    lines = watch.lines("listener.refused")
    assert any("limit=max_negotiating " in line for line in lines), lines[:3]


def test_idle_http_connections_are_closed_at_the_keepalive_deadline(target: FuzzTarget) -> None:
    """2,000 idle HTTP connections (under max_connections) are all kept, then closed without
    a word at keepalive_timeout; the canary's GETs pass meanwhile."""
    addresses = sources(3, 4)
    with flooding(target):
        closed = flood_from_child(target.http_port, addresses, FLOOD, watch=KEEPALIVE + 3)
    assert set(tally(closed)) <= {"eof", "reset"}, tally(closed)
    seconds = sorted(c.seconds for c in closed)
    assert seconds[0] >= KEEPALIVE * 0.8 and seconds[-1] <= KEEPALIVE + 2, seconds[:: FLOOD // 10]
    assert all(c.first == b"" for c in closed)


def test_http_connections_beyond_max_connections_get_503(target: FuzzTarget) -> None:
    """Past max_connections a new HTTP connection gets a 503 and is closed; the ones kept
    are closed at keepalive_timeout. (The canary's GETs pause: they would be among the
    refused.)"""
    addresses = sources(4, 4)
    count = HTTP_MAX_CONNECTIONS + 200
    with flooding(target) as watch, watch.canary.paused(store=False):
        closed = flood_from_child(target.http_port, addresses, count, watch=KEEPALIVE + 3)
    refused = [c for c in closed if c.first.startswith(b"HTTP/1.1 503")]
    kept = [c for c in closed if c.first == b"" and c.seconds >= KEEPALIVE * 0.8]
    assert len(refused) == count - HTTP_MAX_CONNECTIONS, tally(closed)
    assert len(kept) == HTTP_MAX_CONNECTIONS
    assert all(c.seconds < KEEPALIVE / 2 for c in refused)
    lines = watch.lines("http.refused")
    assert len(lines) == len(refused)
    assert all("too many connections" in line for line in lines)


def test_idle_admin_connections_leave_the_admin_api_answering(target: FuzzTarget) -> None:
    """The admin listener has no connection limit of its own (it is the operator's, on
    loopback; the descriptor headroom is kept for it): 2,000 idle connections to it, and the
    API still answers; closed by the client, their descriptors come back."""
    addresses = sources(5, 4)

    with flooding(target), ThreadPoolExecutor(1) as background:
        flooded = background.submit(
            flood_from_child, target.admin_port, addresses, FLOOD, watch=5.0
        )
        time.sleep(3.0)  # the child started (about a second) and holds its connections
        started = time.monotonic()
        target.admin("/api/v1/listeners")
        answered = time.monotonic() - started
        closed = flooded.result(timeout=60)
    assert answered < 2.0
    assert tally(closed) == {"kept": FLOOD}, tally(closed)


# --------------------------------------------------------------------------- slow peers


def test_association_requests_a_byte_at_a_time_end_at_artim(target: FuzzTarget) -> None:
    """A-ASSOCIATE-RQs dripped a byte every 0.1 s (a whole one would take 10 s): each is
    closed at ARTIM, bytes arriving do not extend it, no answer is sent."""
    addresses = sources(6, 5)
    count = 50
    with flooding(target) as watch:
        closed = flood_from_child(
            target.dicom_port,
            addresses,
            count,
            send=associate_rq("DRIPPER"),
            drip=0.1,
            watch=ARTIM + 3,
        )
    assert set(tally(closed)) <= {"eof", "reset"}, tally(closed)
    assert all(ARTIM * 0.8 <= c.seconds <= ARTIM + 1 for c in closed), [c.seconds for c in closed]
    assert all(c.first == b"" for c in closed)
    assert len(watch.lines("association.artim_expired")) == count


def test_http_heads_a_byte_at_a_time_get_408_at_head_timeout(target: FuzzTarget) -> None:
    addresses = sources(7, 5)
    count = 50
    head = b"GET /system HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: loris\r\n" * 40
    with flooding(target) as watch:
        closed = flood_from_child(
            target.http_port, addresses, count, send=head, drip=0.1, watch=HEAD + 3
        )
    assert all(c.first.startswith(b"HTTP/1.1 408") for c in closed), tally(closed)
    assert all(HEAD * 0.8 <= c.seconds <= HEAD + 1 for c in closed), [c.seconds for c in closed]
    lines = watch.lines("http.refused")
    assert len(lines) == count and all("status=408" in line for line in lines), lines[:3]


def test_http_bodies_that_stall_get_408_at_idle_timeout(target: FuzzTarget) -> None:
    """Uploads whose body stops half-way: 408 after idle_timeout, the backend connection
    given up (nothing held after)."""
    addresses = sources(8, 4)
    count = 20
    head = (
        b"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    with flooding(target):
        closed = flood_from_child(
            target.http_port, addresses, count, send=head + b"\0" * 1000, watch=HTTP_IDLE + 3
        )
    assert all(c.first.startswith(b"HTTP/1.1 408") for c in closed), [c.first for c in closed]
    seconds = [c.seconds for c in closed]
    assert all(HTTP_IDLE * 0.8 <= s <= HTTP_IDLE + 1 for s in seconds), seconds


# --------------------------------------------------------------------------- association floods


def test_association_flood_from_one_ae_meets_the_per_calling_aet_limit(
    target: FuzzTarget,
) -> None:
    source = sources(9, 1)[0]
    attempts = [(source, "FLOOD")] * 100
    with flooding(target) as watch:
        results = asyncio.run(association_flood(target.dicom_port, attempts))
    answers = Counter(r.answer for r in results)
    assert answers == {"accepted": ASSOCIATIONS_PER_AET, "rejected": 100 - ASSOCIATIONS_PER_AET}
    assert {r.reject for r in results if r.reject} == {BUSY}
    lines = watch.lines("association.rejected")
    assert len(lines) == answers["rejected"]
    assert all("max_associations_per_calling_aet=" in line for line in lines), lines[:3]


def test_association_flood_from_many_aes_of_one_address_meets_the_per_address_limit(
    target: FuzzTarget,
) -> None:
    source = sources(10, 1)[0]
    attempts = [(source, f"FLOOD{n:03d}") for n in range(100)]
    with flooding(target) as watch:
        results = asyncio.run(association_flood(target.dicom_port, attempts))
    answers = Counter(r.answer for r in results)
    assert answers == {"accepted": ASSOCIATIONS_PER_IP, "rejected": 100 - ASSOCIATIONS_PER_IP}
    assert {r.reject for r in results if r.reject} == {BUSY}
    lines = watch.lines("association.rejected")
    assert len(lines) == answers["rejected"]
    assert all("max_associations_per_ip=" in line for line in lines), lines[:3]


def test_association_flood_from_many_addresses_meets_the_overall_limit(
    target: FuzzTarget,
) -> None:
    """Each address and AE under its own limit, together past max_associations. (The
    canary's store pauses: it would be one of the refused.)"""
    addresses = sources(11, 12)
    attempts = [(a, f"FLOOD{i}-{n}") for i, a in enumerate(addresses) for n in range(4)]
    with flooding(target) as watch, watch.canary.paused(get=False):
        results = asyncio.run(association_flood(target.dicom_port, attempts))
    answers = Counter(r.answer for r in results)
    assert answers == {"accepted": MAX_ASSOCIATIONS, "rejected": len(attempts) - MAX_ASSOCIATIONS}
    assert {r.reject for r in results if r.reject} == {BUSY}
    lines = watch.lines("association.rejected")
    assert len(lines) == answers["rejected"]
    assert all(f"max_associations={MAX_ASSOCIATIONS}" in line for line in lines), lines[:3]


@pytest.mark.slow
def test_idle_connection_floods_repeated(target: FuzzTarget, tmp_path: Path) -> None:
    """Ten idle floods on each data listener in a row: RSS and descriptors stay flat.

    Four flooding addresses, as in the single floods: eight would hold all of
    max_negotiating (8 x max_negotiating_per_ip) and lock the canary out until ARTIM, which
    is the documented reach of those two limits, not a leak."""
    before = target.rss()
    for _ in range(10):
        with flooding(target):
            flood_from_child(target.dicom_port, sources(12, 4), FLOOD, watch=ARTIM + 2)
            flood_from_child(target.http_port, sources(13, 4), FLOOD, watch=KEEPALIVE + 2)
    assert target.rss() - before < RSS_GROWTH_LIMIT
