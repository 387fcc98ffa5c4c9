"""Measuring a dicomlb process's memory from outside, for tests/integration/test_memory.py and
bench/measure_memory.py: its resident memory (now, settled, and the peak since a reset),
many idle client connections opened at once, and an HTTP sink that reads and drops bodies.

    with HttpSink() as sink:                             # its own process, on a free port
        before = settled_rss(lb.pid)
        opened = asyncio.run(open_many(port, 500, associate_request("DICOMLB")))
        per_association = (settled_rss(lb.pid) - before) / 500   # KiB
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from dicomlb.dicom.pdu import (
    AssociateRequest,
    PresentationContextProposal,
    UserInformation,
    encode,
)
from tests.peers import LOOPBACK, PeerError, PeerProcess, free_port, stop_process, wait_listening

MIB = 1 << 20
OPEN_AT_ONCE = 64  # connections being opened concurrently
A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT, service user, no reason

Opened = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


# --------------------------------------------------------------------------- /proc


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` now, KiB (VmRSS)."""
    return _status_kib(pid, "VmRSS:")


def settled_rss(pid: int, settle: float = 1.0) -> int:
    """VmRSS after `settle` seconds, the lowest of five reads 50 ms apart (a timer firing
    may hold a little for a moment)."""
    time.sleep(settle)
    reads = []
    for _ in range(5):
        reads.append(rss_kib(pid))
        time.sleep(0.05)
    return min(reads)


def reset_peak(pid: int) -> None:
    """Make the process's peak resident memory (VmHWM) its current one (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_kib(pid: int) -> int:
    """Peak resident memory of process `pid` since start or `reset_peak`, KiB (VmHWM)."""
    return _status_kib(pid, "VmHWM:")


# --------------------------------------------------------------------------- idle clients


def associate_request(called_ae: str) -> bytes:
    """A-ASSOCIATE-RQ as a modality sends it: verification, CT and MR storage."""
    storage = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR LE
    return encode(
        AssociateRequest(
            called_ae=called_ae,
            calling_ae="IDLE",
            contexts=(
                PresentationContextProposal(
                    context_id=1,
                    abstract_syntax="1.2.840.10008.1.1",
                    transfer_syntaxes=("1.2.840.10008.1.2",),
                ),
                PresentationContextProposal(
                    context_id=3,
                    abstract_syntax="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntaxes=storage,
                ),
                PresentationContextProposal(
                    context_id=5,
                    abstract_syntax="1.2.840.10008.5.1.4.1.1.4",
                    transfer_syntaxes=storage,
                ),
            ),
            user_info=UserInformation(max_pdu=65536, implementation_class_uid="1.2.826.0.1.3"),
        )
    )


async def open_many(port: int, count: int, first: bytes = b"") -> Opened:
    """Open `count` connections to 127.0.0.1:`port`, OPEN_AT_ONCE at a time; send `first`.

    When `first` is an A-ASSOCIATE-RQ, each connection waits for A-ASSOCIATE-AC (any other
    answer raises PeerError). The caller closes them (`close_all`).
    """
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    opened: Opened = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 30)
            opened.append((reader, writer))
            if not first:
                return
            writer.write(first)
            header = await asyncio.wait_for(reader.readexactly(6), 30)
            await reader.readexactly(int.from_bytes(header[2:6], "big"))
            if header[0] != 0x02:
                raise PeerError(f"association answered with PDU type {header[0]:#04x}")

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        await close_all(opened)
        raise
    return opened


async def request_each(opened: Opened, path: str = "/idle") -> None:
    """One GET on every connection, four at a time; each answer (200, Content-Length) is
    read whole and the connection kept open."""
    gate = asyncio.Semaphore(4)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with gate:
            writer.write(b"GET %s HTTP/1.1\r\nHost: memory\r\n\r\n" % path.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 200"):
                raise PeerError(f"GET answered {head.splitlines()[0]!r}")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)

    await asyncio.gather(*(one(r, w) for r, w in opened))


async def close_all(opened: Opened, last: bytes = b"") -> None:
    """Send `last` (an A-ABORT, say) on every connection and close it."""
    for _, writer in opened:
        if last and not writer.is_closing():
            writer.write(last)
        writer.close()
    for _, writer in opened:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --------------------------------------------------------------------------- HTTP sink


async def _sink_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one keep-alive connection; each body (Content-Length) is read
    and dropped first, and the answer is its length in bytes."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            left = length
            while left:
                chunk = await reader.read(min(left, MIB))
                if not chunk:
                    return
                left -= len(chunk)
            body = str(length).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def _serve_sink(port: int) -> None:
    server = await asyncio.start_server(_sink_connection, LOOPBACK, port)
    async with server:
        await server.serve_forever()


class HttpSink(PeerProcess):
    """An HTTP/1.1 backend in its own process that reads and drops every request body, then
    answers 200 with the body's length; keep-alive. Stopped by its PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="http-sink-"))
        self.log_path = self.workdir / "sink.log"
        self._process = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        with open(self.log_path, "wb") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.memory", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        wait_listening(
            self.port, timeout=15, process=self._process, what="HTTP sink", log=self.log_path
        )
        return self

    def close(self) -> None:
        stop_process(self._process)
        self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(_serve_sink(int(sys.argv[1])))
