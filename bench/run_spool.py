"""Spool vs pass-through: C-STORE throughput with `ack: spool` and `ack: backend`, and the
time to drain a backlog.

    python3 bench/run_spool.py [--quick] [--repeat N] [--dicomlb-src DIR | --python PY]

Two dicomlb processes in front of one ``storescp --ignore --fork`` sink: one routes with
``ack: backend`` (pass-through: the sink's status goes back), the other with ``ack: spool``
(Success once the instance is fsynced in the spool; the dispatcher delivers it to the sink
meanwhile). DCMTK ``storescu`` sends the same CT (512x512, ~0.5 MB) and small (64x64,
~9 kB) instances over 1 and 4 associations to each, interleaved, median of the rounds;
between rounds the spool is left to drain so one round's delivery does not slow the next.

A third dicomlb, like the second but with its spool on tmpfs (`/dev/shm`, where there is
one), shows what the spool costs apart from the disk: its fsyncs return at once, so the
gap between it and the disk spool is the disk's, the gap between it and pass-through the
software's. Beside the runs, the script times what the disk alone needs to make one
instance of each size durable (write, fsync, rename, directory fsync, an index row).

Then the backlog: with the sink stopped, 2000 small instances are spooled; the sink is
started and the time until every one is delivered is measured (and compared with storescu
sending the same files straight to the sink).

Results: a table on stdout and the `run_spool` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from bench.results import write_section  # noqa: E402
from tests.peers import (  # noqa: E402
    DicomlbProcess,
    PeerError,
    StoreSCP,
    echoscu,
    free_port,
)

import run_store  # noqa: E402
from run_store import (  # noqa: E402
    CONCURRENCY,
    Build,
    DataSet,
    Target,
    add_build_options,
    build_of,
    log,
    send,
    synthesise,
    versions,
)

PATHS = ("pass-through", "spool", "spool on tmpfs")
TMPFS = Path("/dev/shm")  # a RAM file system: fsync returns at once
AET = "DICOMLB"

CONFIG = """listeners:
  dicom: {{bind: "127.0.0.1:{port}", ae_title: {aet}}}
pools:
  sink:
    health: {{interval: 0.5s, timeout: 1s, fall: 1, rise: 1}}
    backends:
      - {{name: sink, dicom: "{sink}", max_associations: 4}}
routes:
  - {{name: all, pool: sink, ack: {ack}}}
spool:
  directory: "{spool}"
  min_free_disk: 0
"""


@contextlib.contextmanager
def dicomlb(
    ack: str, sink: str, workdir: Path, build: Build, spool_root: Path | None = None
) -> Iterator[tuple[int, Path]]:
    """Run `python -m dicomlb run` (`build`) with one route (`ack`) to the sink, its spool
    under `spool_root` (default `workdir`); yield port, spool."""
    port = free_port()
    spool = (spool_root or workdir) / f"spool-{ack}"
    config = CONFIG.format(port=port, aet=AET, sink=sink, ack=ack, spool=spool)
    options = ["--log-level", "warning"]
    with DicomlbProcess(
        config,
        port,
        workdir / f"dicomlb-{ack}",
        env=build.env(),
        options=options,
        python=build.interpreter,
    ):
        echo = echoscu("127.0.0.1", port, aet="BENCH", aec=AET, timeout=30)
        if echo.returncode != 0:
            raise PeerError(f"C-ECHO through dicomlb failed: {echo.stderr.strip()}")
        yield port, spool


def undelivered(spool: Path) -> int:
    """Items not yet delivered (queued, sending, dead) in the spool's index."""
    index = spool / "index.sqlite3"
    if not index.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM items WHERE state != 'delivered'").fetchone()
    return int(count)


def wait_drained(spool: Path, timeout: float = 600.0) -> float:
    """Seconds until every spooled item is delivered."""
    started = time.perf_counter()
    while undelivered(spool):
        if time.perf_counter() - started > timeout:
            raise PeerError(f"spool {spool} not drained after {timeout:g}s")
        time.sleep(0.02)
    return time.perf_counter() - started


def measure(
    targets: dict[str, Target],
    spools: dict[str, Path],
    datasets: Sequence[DataSet],
    repeat: int,
) -> dict[tuple[str, int, str], list[float]]:
    """Seconds per (data set, concurrency, path); a spooling path's spool (`spools`) is
    left to drain after each send."""
    times: dict[tuple[str, int, str], list[float]] = {}
    paths = list(targets)
    for round_no in range(repeat):
        order = paths[round_no % 2 :] + paths[: round_no % 2]
        for data in datasets:
            for concurrency in CONCURRENCY:
                for path in order:
                    seconds = send(targets[path], data, concurrency)
                    times.setdefault((data.name, concurrency, path), []).append(seconds)
                    spool = spools.get(path)
                    drain = wait_drained(spool) if spool is not None else 0.0
                    log(
                        f"round {round_no + 1}/{repeat} {data.name:5} x{concurrency} {path:14} "
                        f"{seconds:7.3f}s {data.count / seconds:7.0f} inst/s"
                        + (f" (drained {drain:.2f}s later)" if spool is not None else "")
                    )
    return times


def backlog(sink: StoreSCP, target: Target, spool: Path, data: DataSet) -> tuple[float, float]:
    """Spool `data` with the sink down, start the sink: seconds to drain; and the seconds
    storescu takes to send the same files straight to the sink (4 associations)."""
    sink.stop()
    send(target, data, 4)
    if undelivered(spool) != data.count:
        raise PeerError(f"expected {data.count} spooled items, found {undelivered(spool)}")
    started = time.perf_counter()
    sink.start()
    wait_drained(spool)
    drain = time.perf_counter() - started
    direct = send(Target(path="direct", port=sink.port, aec=sink.ae_title), data, 4)
    return drain, direct


def commit_latency(directory: Path, size: int, rounds: int = 50) -> float:
    """Median ms of what one spool commit costs the disk, without dicomlb: write a file of
    `size` bytes, fsync, rename, fsync the directory, commit an SQLite row (WAL,
    synchronous=NORMAL: the file is the record)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(directory / "probe.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (a)")
    body = os.urandom(size)
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        fd = os.open(directory / f"{n}.part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.write(fd, body)
        os.fsync(fd)
        os.close(fd)
        os.rename(directory / f"{n}.part", directory / f"{n}.dcm")
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (n,))
        db.execute("COMMIT")
        times.append(time.perf_counter() - started)
    db.close()
    return statistics.median(times) * 1000


def table(times: dict[tuple[str, int, str], list[float]], datasets: Sequence[DataSet]) -> list[str]:
    ratios = [("spool", "pass-through"), ("spool on tmpfs", "pass-through")]
    return run_store.table(times, datasets, PATHS, ratios=ratios)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 CT + 500 small, 1 round")
    parser.add_argument("--repeat", type=int, help="rounds per measurement (default 3; quick 1)")
    parser.add_argument("--ct", type=int, help="number of CT instances (default 400)")
    parser.add_argument("--small", type=int, help="number of small instances (default 2000)")
    parser.add_argument("--backlog", type=int, default=2000, help="backlog size (default 2000)")
    add_build_options(parser)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.ct = args.ct or (100 if args.quick else 400)
    args.small = args.small or (500 if args.quick else 2000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    root = run_store.OUT / "data"
    datasets = [
        synthesise("ct", args.ct, "ct", root),
        synthesise("small", args.small, "small", root),
    ]
    queue = synthesise(f"backlog{args.backlog}", args.backlog, "small", root)
    warmup = synthesise("warmup", 40, "small", root)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-spool-")))
        sink = stack.enter_context(StoreSCP("SINK", ignore=True, fork=True))
        build = build_of(args)
        pt_port, _ = stack.enter_context(dicomlb("backend", sink.address, workdir, build))
        sp_port, spool = stack.enter_context(dicomlb("spool", sink.address, workdir, build))
        targets = {
            "pass-through": Target(path="pass-through", port=pt_port, aec=AET),
            "spool": Target(path="spool", port=sp_port, aec=AET),
        }
        spools = {"spool": spool}
        if TMPFS.is_dir():
            memory = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=TMPFS)))
            mem_port, spools["spool on tmpfs"] = stack.enter_context(
                dicomlb("spool", sink.address, workdir, build, spool_root=memory)
            )
            targets["spool on tmpfs"] = Target(path="spool on tmpfs", port=mem_port, aec=AET)
        for target in targets.values():
            send(target, warmup, 1)
        for directory in spools.values():
            wait_drained(directory)
        latency = {
            data.name: commit_latency(workdir / f"probe-{data.name}", data.nbytes // data.count)
            for data in datasets
        }
        times = measure(targets, spools, datasets, args.repeat)
        drain, direct = backlog(sink, targets["spool"], spool, queue)
        log(f"backlog {queue.count}: drained in {drain:.2f}s; direct send {direct:.2f}s")
    load_after = os.getloadavg()
    info = versions()
    body = [
        "## Spool vs pass-through (`bench/run_spool.py`)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · `nproc` = {os.cpu_count()} · 1-min "
        f"load average before → after {load_before[0]:.2f} → {load_after[0]:.2f} · DCMTK "
        f"{info['DCMTK']} · Python {info['Python']} · uvloop {info['uvloop']} · "
        f"dicomlb {info['dicomlb']}",
        "",
        "storescu `-xe +sd` → dicomlb (`ack: backend` or `ack: spool`, one pool, the sink "
        "with max_associations 4) → `storescp --ignore --fork` sink; TCP_NODELAY=1 "
        f"everywhere; median of {args.repeat} interleaved round(s); the spool is drained "
        "between rounds; spool timing ends at the last Success (files and directory fsynced, "
        "index rows written).",
        "",
        *table(times, datasets),
        "",
        f"Backlog: {queue.count} small instances spooled with the sink down; sink started → "
        f"all delivered in **{drain:.2f} s** ({queue.count / drain:.0f} inst/s, including "
        f"≤ 0.5 s for the health check to see the sink up). The same files sent by storescu "
        f"straight to the sink over 4 associations: {direct:.2f} s "
        f"(drain / direct time = {drain / direct:.1f}).",
        "",
        "Reading: the spool's price is the durable commit. This disk needs a median "
        + ", ".join(f"{ms:.2f} ms for a {name} instance" for name, ms in latency.items())
        + " to make one file durable (write, fsync, rename, directory fsync, an index row; "
        "measured by this script beside the runs; it swings with other load on the shared "
        "VM). With one association storescu waits for each Success, so every instance pays "
        "a whole commit; concurrent associations share one (group commit). The dispatcher "
        "delivers in the same process meanwhile, so the spool columns also pay for a second "
        "transfer to the sink. The spool on tmpfs does all the same work but its fsyncs "
        "return at once: the gap from it to the disk spool is the disk's.",
    ]
    print("\n".join(body))
    if not args.no_results:
        write_section("run_spool", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
