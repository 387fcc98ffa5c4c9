"""dicomlb's memory: idle client associations and HTTP connections, and 2 GB streamed through.

    python3 bench/measure_memory.py                  # 2000 + 2000 idle, 2 GB C-STORE and upload
    python3 bench/measure_memory.py --quick          # 200 + 200 idle, 200 MB each
    python3 bench/measure_memory.py --size-mb 0      # idle connections only
    python3 bench/measure_memory.py --dicomlb-src /work/main/src --no-results

A fresh `dicomlb run` process for each of the three steps below (log level warning, health
checks off) with a DICOM listener in front of a DCMTK `storescp --ignore --fork` sink and an
HTTP listener in front of a small HTTP sink (`tests.memory.HttpSink`, a separate process
that reads and drops every body before it answers). Its resident memory (VmRSS in
/proc/PID/status) is read:

1. before and after opening N idle DICOM associations (A-ASSOCIATE-RQ with three
   presentation contexts, A-ASSOCIATE-AC read, then nothing): kB per association;
2. before and after opening N idle HTTP connections (no request), then after one GET on
   each of them (answered, connection kept alive): kB per connection;
3. sampled every 50 ms while DCMTK `storescu` sends one Part-10 file with a 2 GB Pixel
   Data element (written to a temporary file frame by frame, deleted afterwards), and
   while one 2 GB POST body (Content-Length, generated from one reused 1 MiB buffer)
   passes to the HTTP sink: peak growth over the RSS before.

The listener limits (`max_associations`, `max_negotiating`, `max_connections`) and idle
timeouts are raised so that N connections are all admitted and stay; this process raises
its descriptor limit to the hard limit before it starts dicomlb. A 2 GB phase is skipped
when the temporary directory has less than twice the file's size free. All peers run on
loopback on free ports with TCP_NODELAY=1 and are stopped by PID on the way out.
Results: a table on stdout and a section in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import git_head, write_section  # noqa: E402
from tests.dicomdata import LARGE_FRAME, write_large_instance  # noqa: E402
from tests.memory import (  # noqa: E402
    A_ABORT,
    HttpSink,
    associate_request,
    close_all,
    open_many,
    request_each,
    rss_kib,
    settled_rss,
)
from tests.peers import (  # noqa: E402
    LOOPBACK,
    DicomlbProcess,
    PeerError,
    StoreSCP,
    echoscu,
    free_port,
    peer_env,
    storescu,
    wait_listening,
)

SINK_AET = "SINK"
DICOMLB_AET = "DICOMLB"
SAMPLE_EVERY = 0.05  # seconds between RSS samples while data streams
SETTLE = 1.0  # seconds left to dicomlb after a phase before RSS is read
PIECE = bytes(range(256)) * 4096  # 1 MiB, reused for every piece of an upload
TARGETS = {"association": 6.0, "HTTP connection": 5.0, "stream": 50.0}  # kB, kB, MB


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the result table."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- dicomlb

CONFIG = """listeners:
  dicom:
    bind: "{host}:{dicom_port}"
    ae_title: {aet}
    max_associations: {many}
    max_negotiating: {many}
    max_negotiating_per_ip: {many}
    idle_timeout: 1h
  http:
    bind: "{host}:{http_port}"
    max_connections: {many}
    keepalive_timeout: 1h
pools:
  sink:
    health: {{enabled: false}}
    backends:
      - {{name: sink, dicom: "{sink}", max_associations: 4, max_pdu: 65536}}
  web:
    health: {{enabled: false}}
    backends: [{{name: web, http: "http://{host}:{web_port}"}}]
routes:
  - {{name: all, pool: sink}}
http_routes:
  - {{name: all, pool: web}}
"""


class PeakSampler:
    """Reads a process's VmRSS every SAMPLE_EVERY seconds on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))
                self.samples += 1

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- idle connections


@dataclass(slots=True, kw_only=True)
class Idle:
    """RSS around N idle connections of one kind, KiB."""

    what: str
    count: int
    before: int
    after: int
    closed: int

    @property
    def per_connection(self) -> float:
        return (self.after - self.before) / self.count


def idle_associations(lb: DicomlbProcess, port: int, count: int) -> tuple[Idle, Idle]:
    """RSS before, with `count` idle associations, and after they are aborted; then the
    same again from there (what the first round freed is reused: no growth, no leak)."""
    request = associate_request(DICOMLB_AET)

    async def one_round(what: str) -> Idle:
        before = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        opened = await open_many(port, count, request)
        after = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        await close_all(opened, A_ABORT)
        closed = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        return Idle(what=what, count=count, before=before, after=after, closed=closed)

    async def run() -> tuple[Idle, Idle]:
        await close_all(await open_many(port, 20, request), A_ABORT)  # warm up
        return await one_round("association"), await one_round("association, again")

    return asyncio.run(run())


def idle_http(lb: DicomlbProcess, port: int, count: int) -> tuple[Idle, Idle]:
    """RSS with `count` connections that sent nothing, then after one GET on each."""

    async def run() -> tuple[Idle, Idle]:
        warm = await open_many(port, 20)
        await request_each(warm)
        await close_all(warm)
        before = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        opened = await open_many(port, count)
        silent = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        await request_each(opened)
        used = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        await close_all(opened)
        closed = await asyncio.to_thread(settled_rss, lb.pid, SETTLE)
        return (
            Idle(what="HTTP, no request", count=count, before=before, after=silent, closed=closed),
            Idle(what="HTTP, one request", count=count, before=before, after=used, closed=closed),
        )

    return asyncio.run(run())


# --------------------------------------------------------------------------- streaming


@dataclass(slots=True, kw_only=True)
class Stream:
    """Peak RSS while `nbytes` passed through, KiB, and the time it took."""

    what: str
    nbytes: int
    before: int
    peak: int
    seconds: float
    samples: int

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 1024


def store_large(lb: DicomlbProcess, port: int, frames: int, workdir: Path) -> Stream:
    """storescu one instance of `frames` 2 MB frames through dicomlb; peak RSS meanwhile."""
    path = workdir / "large.dcm"
    started = time.perf_counter()
    write_large_instance(path, frames)
    log(f"wrote {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.0f}s")
    try:
        before = settled_rss(lb.pid, SETTLE)
        started = time.perf_counter()
        with PeakSampler(lb.pid) as sampler:
            sent = storescu(LOOPBACK, port, [path], aet="BENCH", aec=DICOMLB_AET, timeout=1800)
        seconds = time.perf_counter() - started
        if sent.returncode != 0:
            raise PeerError(f"storescu exited {sent.returncode}: {sent.stderr.strip()[-800:]}")
    finally:
        path.unlink(missing_ok=True)
    return Stream(
        what="C-STORE",
        nbytes=frames * LARGE_FRAME,
        before=before,
        peak=sampler.peak,
        seconds=seconds,
        samples=sampler.samples,
    )


def upload_large(lb: DicomlbProcess, port: int, nbytes: int) -> Stream:
    """POST `nbytes` (Content-Length) through dicomlb to the HTTP sink; peak RSS meanwhile."""
    before = settled_rss(lb.pid, SETTLE)
    started = time.perf_counter()
    with PeakSampler(lb.pid) as sampler, socket.create_connection((LOOPBACK, port), 30) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % nbytes
        )
        view = memoryview(PIECE)
        left = nbytes
        while left:
            piece = view[: min(left, len(PIECE))]
            sock.sendall(piece)
            left -= len(piece)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    seconds = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(str(nbytes).encode()):
        raise PeerError(f"upload answered {answer[:200]!r}")
    return Stream(
        what="HTTP upload",
        nbytes=nbytes,
        before=before,
        peak=sampler.peak,
        seconds=seconds,
        samples=sampler.samples,
    )


@dataclass(frozen=True, slots=True)
class Balancer:
    """A running `dicomlb run` and its two listeners' ports."""

    process: DicomlbProcess
    dicom_port: int
    http_port: int


@contextlib.contextmanager
def balancer(
    workdir: Path, sink: str, web_port: int, many: int, env: dict[str, str]
) -> Iterator[Balancer]:
    """Start a fresh `dicomlb run` (so one phase's freed memory is not the next one's) and
    check it relays a C-ECHO; stopped on the way out."""
    dicom_port, http_port = free_port(), free_port()
    config = CONFIG.format(
        host=LOOPBACK,
        dicom_port=dicom_port,
        http_port=http_port,
        aet=DICOMLB_AET,
        many=many,
        sink=sink,
        web_port=web_port,
    )
    with DicomlbProcess(
        config, dicom_port, workdir, env=env, options=["--log-level", "warning"]
    ) as process:
        wait_listening(http_port, timeout=20, what="dicomlb HTTP listener")
        echo = echoscu(LOOPBACK, dicom_port, aet="BENCH", aec=DICOMLB_AET, timeout=30)
        if echo.returncode != 0:
            raise PeerError(f"C-ECHO through dicomlb failed: {echo.stderr.strip()}")
        log(f"dicomlb pid {process.pid}, RSS {rss_kib(process.pid) / 1024:.1f} MiB at start")
        yield Balancer(process, dicom_port, http_port)


# --------------------------------------------------------------------------- report


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to the hard one (dicomlb inherits it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def table(idle: Sequence[Idle], streams: Sequence[Stream]) -> list[str]:
    """Markdown lines: kB per idle connection, MB of peak growth per stream, and the targets."""
    lines = [
        "| idle | N | RSS before MiB | with N MiB | kB each | target kB | closed MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in idle:
        target = TARGETS["association" if row.what.startswith("association") else "HTTP connection"]
        lines.append(
            f"| {row.what} | {row.count} | {row.before / 1024:.1f} | {row.after / 1024:.1f} "
            f"| {row.per_connection:.1f} | ≈ {target:.0f} | {row.closed / 1024:.1f} |"
        )
    if streams:
        lines += [
            "",
            "| streamed | GB | RSS before MiB | peak MiB | growth MiB | target MiB | MB/s "
            "| samples |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in streams:
            lines.append(
                f"| {s.what} | {s.nbytes / 1e9:.2f} | {s.before / 1024:.1f} | {s.peak / 1024:.1f} "
                f"| {s.growth_mib:.1f} | < {TARGETS['stream']:.0f} "
                f"| {s.nbytes / s.seconds / 1e6:.0f} | {s.samples} |"
            )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 + 200 idle, 200 MB streams")
    parser.add_argument("--associations", type=int, help="idle associations (default 2000)")
    parser.add_argument("--connections", type=int, help="idle HTTP connections (default 2000)")
    parser.add_argument(
        "--size-mb", type=int, help="MB (10^6 bytes, even) per stream (default 2000; 0: none)"
    )
    parser.add_argument(
        "--dicomlb-src",
        type=Path,
        default=REPO / "src",
        help="directory put on PYTHONPATH for `python3 -m dicomlb` (default: this tree's src)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    quick = args.quick
    args.associations = (
        args.associations if args.associations is not None else (200 if quick else 2000)
    )
    args.connections = (
        args.connections if args.connections is not None else (200 if quick else 2000)
    )
    args.size_mb = args.size_mb if args.size_mb is not None else (200 if quick else 2000)
    if args.size_mb % 2:
        parser.error("--size-mb must be even (whole 2 MB frames)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sinks and dicomlb, measure each phase, report."""
    args = parse_args(argv)
    fd_limit = raise_descriptor_limit()
    needed = args.associations + args.connections + 64
    if fd_limit < needed:
        log(f"descriptor hard limit {fd_limit} < {needed}: lower --associations/--connections")
        return 1
    load_before = os.getloadavg()[0]
    idle: list[Idle] = []
    streams: list[Stream] = []
    skipped: list[str] = []
    env = peer_env({"PYTHONPATH": str(args.dicomlb_src.resolve())})
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-memory-")))
        sink = stack.enter_context(StoreSCP(SINK_AET, ignore=True, fork=True))
        web_port = stack.enter_context(HttpSink()).port
        many = max(args.associations, args.connections) + 100

        def fresh(phase: str) -> contextlib.AbstractContextManager[Balancer]:
            return balancer(workdir / phase, sink.address, web_port, many, env)

        if args.associations:
            with fresh("associations") as lb:
                idle.extend(idle_associations(lb.process, lb.dicom_port, args.associations))
            log(f"{idle[-2]}\n{idle[-1]}")
        if args.connections:
            with fresh("http") as lb:
                idle.extend(idle_http(lb.process, lb.http_port, args.connections))
            log(f"{idle[-2]}\n{idle[-1]}")
        if args.size_mb:
            frames = args.size_mb // 2
            with fresh("streams") as lb:
                free = shutil.disk_usage(workdir).free
                if free < 2 * frames * LARGE_FRAME:
                    skipped.append(
                        f"C-STORE of {args.size_mb} MB: {free / 1e9:.1f} GB free in "
                        f"{workdir.parent}"
                    )
                else:
                    streams.append(store_large(lb.process, lb.dicom_port, frames, workdir))
                    log(f"{streams[-1]}")
                streams.append(upload_large(lb.process, lb.http_port, frames * LARGE_FRAME))
                log(f"{streams[-1]}")
    rows = table(idle, streams)
    print("\n".join(rows))
    for reason in skipped:
        print(f"skipped: {reason}")
    if not args.no_results:
        now = dt.datetime.now().astimezone()
        body = [
            "## Memory (`bench/measure_memory.py`)",
            "",
            f"{now:%Y-%m-%d %H:%M %Z} · `nproc` = {os.cpu_count()} · 1-min load average "
            f"before → after {load_before:.2f} → {os.getloadavg()[0]:.2f} · Python "
            f"{platform.python_version()} · dicomlb git {git_head()}",
            "",
            "VmRSS of a fresh `dicomlb run` process per step (log level warning, health checks "
            "off), settled "
            f"{SETTLE:g} s after each step; kB = KiB. Idle associations: A-ASSOCIATE-RQ with "
            "3 presentation contexts, A-ASSOCIATE-AC, then silence. HTTP: TCP connections "
            "with no request, then the same after one GET each (keep-alive). Streams: peak of "
            f"samples every {SAMPLE_EVERY * 1000:.0f} ms over the RSS before; C-STORE by DCMTK "
            "storescu to `storescp --ignore --fork`, upload with Content-Length to a sink "
            "that reads and drops the body.",
            "",
            *rows,
            *(f"\nSkipped: {reason}" for reason in skipped),
        ]
        write_section("measure_memory", body)
        log("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
