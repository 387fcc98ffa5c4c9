"""Cost per spooled instance, counted rather than timed: CPU time, SQL statements and system
calls of the dicomlb process per instance, for ingest (`ack: spool`, the sink down) and for
the dispatcher's drain of that backlog; two dicomlb trees side by side, interleaved.

    python3 bench/count_spool.py [--count N] [--rounds N] [--src LABEL=DIR ...]

Each round starts, for each tree in turn (the order alternates round by round), a fresh
dicomlb with an empty spool in front of a ``storescp --ignore --fork`` sink; stops the sink;
sends N small instances over 4 storescu associations (ingest); starts the sink and waits
until the index says every item is delivered (drain). CPU is the process's user + system
time (``/proc/PID/stat``) over each phase; SQL statements are counted by an SQLite trace
callback installed by a ``sitecustomize`` on the process's path (every statement the index
runs, BEGIN and COMMIT included). One more round runs the drain under ``strace -f -c``
(its system calls; strace slows the process, so that round's CPU and times are not kept). Counts do
not depend on what else the machine runs: the steady measure on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path[:0] = [str(BENCH), str(REPO)]

from bench.count_store import cpu_seconds, listener_pid  # noqa: E402
from bench.results import write_section  # noqa: E402
from bench.run_spool import AET, CONFIG, undelivered, wait_drained  # noqa: E402
from bench.run_store import OUT, DataSet, Target, log, send, synthesise  # noqa: E402
from tests.peers import DicomlbProcess, PeerError, StoreSCP, echoscu, free_port, peer_env  # noqa: E402

SITECUSTOMIZE = """
import os, signal, sqlite3

_statements = [0]
_connect = sqlite3.connect


def _count(sql):
    _statements[0] += 1


def connect(*args, **kwargs):
    db = _connect(*args, **kwargs)
    db.set_trace_callback(_count)
    return db


def _dump(signum, frame):
    with open(os.environ["BENCH_SQL_COUNT"], "w") as out:
        out.write(str(_statements[0]))


sqlite3.connect = connect
signal.signal(signal.SIGUSR2, _dump)
"""


@dataclass(slots=True)
class Phase:
    """Per instance, one value per round."""

    cpu_us: list[float] = field(default_factory=list)
    sql: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Side:
    label: str
    src: Path
    ingest: Phase = field(default_factory=Phase)
    drain: Phase = field(default_factory=Phase)
    syscalls: dict[str, float] = field(default_factory=dict)


class Counted:
    """A running dicomlb: its CPU seconds and SQL statements so far."""

    def __init__(self, pid: int, count_file: Path) -> None:
        self.pid = pid
        self.count_file = count_file

    def sql(self) -> int:
        self.count_file.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self.count_file.read_text())
            time.sleep(0.01)
        raise PeerError("dicomlb did not report its SQL statement count")

    def snapshot(self) -> tuple[float, int]:
        return cpu_seconds(self.pid), self.sql()


@contextlib.contextmanager
def spooling(sink: str, workdir: Path, src: Path) -> Iterator[tuple[Target, Path, Counted]]:
    """A dicomlb of `src` routing everything with `ack: spool` to `sink`, SQL counted."""
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    count_file = workdir / "sql-count"
    path = [str(site), str(src), os.environ.get("PYTHONPATH", "")]
    env = peer_env(
        {"PYTHONPATH": os.pathsep.join(filter(None, path)), "BENCH_SQL_COUNT": str(count_file)}
    )
    port = free_port()
    spool = workdir / "spool"
    config = CONFIG.format(port=port, aet=AET, sink=sink, ack="spool", spool=spool)
    options = ["--log-level", "warning"]
    with DicomlbProcess(config, port, workdir / "dicomlb", env=env, options=options):
        echo = echoscu("127.0.0.1", port, aet="BENCH", aec=AET, timeout=30)
        if echo.returncode != 0:
            raise PeerError(f"C-ECHO through dicomlb failed: {echo.stderr.strip()}")
        target = Target(path="spool", port=port, aec=AET)
        yield target, spool, Counted(listener_pid(port), count_file)


@contextlib.contextmanager
def straced(pid: int, out: Path) -> Iterator[None]:
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # attached to every thread
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)


def syscall_counts(report: Path) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in report.read_text().splitlines():
        cols = line.split()
        if not cols or cols[-1] == "total" or not cols[-1].isidentifier():
            continue
        numbers = [c for c in cols[:-1] if c.replace(".", "").isdigit()]
        if len(numbers) >= 4:  # % time, seconds, usecs/call, calls [, errors]
            calls[cols[-1]] = int(numbers[3])
    return calls


def one_round(side: Side, data: DataSet, workdir: Path, *, trace: bool) -> None:
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(StoreSCP("SINK", ignore=True, fork=True))
        target, spool, counted = stack.enter_context(spooling(sink.address, workdir, side.src))
        send(target, data, 1)  # warm up: imports, first association, first batches
        wait_drained(spool)
        sink.stop()
        cpu0, sql0 = counted.snapshot()
        started = time.perf_counter()
        send(target, data, 4)
        ingest_wall = time.perf_counter() - started
        cpu1, sql1 = counted.snapshot()
        if undelivered(spool) != data.count:
            raise PeerError(f"expected {data.count} spooled items, found {undelivered(spool)}")
        report = workdir / "strace.txt"
        with straced(counted.pid, report) if trace else contextlib.nullcontext():
            started = time.perf_counter()
            sink.start()
            wait_drained(spool)
            drain_wall = time.perf_counter() - started
        cpu2, sql2 = counted.snapshot()
    n = data.count
    if trace:  # strace slows the process: only its system calls count from this round
        side.syscalls = {name: k / n for name, k in syscall_counts(report).items()}
        return
    side.ingest.cpu_us.append((cpu1 - cpu0) / n * 1e6)
    side.ingest.sql.append((sql1 - sql0) / n)
    side.ingest.wall_s.append(ingest_wall)
    side.drain.cpu_us.append((cpu2 - cpu1) / n * 1e6)
    side.drain.sql.append((sql2 - sql1) / n)
    side.drain.wall_s.append(drain_wall)
    log(
        f"{side.label:8} ingest {side.ingest.cpu_us[-1]:6.0f} µs {side.ingest.sql[-1]:5.2f} sql "
        f"{ingest_wall:6.2f}s | drain {side.drain.cpu_us[-1]:6.0f} µs "
        f"{side.drain.sql[-1]:5.2f} sql {drain_wall:6.2f}s"
    )


def table(sides: Sequence[Side], count: int) -> list[str]:
    med = statistics.median
    rows = [
        "| measure (per instance, median of rounds) | " + " | ".join(s.label for s in sides) + " |",
        "|---|" + "---:|" * len(sides),
    ]

    def row(name: str, values: Sequence[str]) -> None:
        rows.append(f"| {name} | " + " | ".join(values) + " |")

    for phase in ("ingest", "drain"):
        got = [getattr(s, phase) for s in sides]
        row(f"{phase}: CPU µs", [f"{med(p.cpu_us):.0f}" for p in got])
        row(f"{phase}: SQL statements", [f"{med(p.sql):.2f}" for p in got])
        row(f"{phase}: instances / s (wall)", [f"{count / med(p.wall_s):.0f}" for p in got])
    names = sorted(
        {n for s in sides for n in s.syscalls},
        key=lambda n: -max(s.syscalls.get(n, 0) for s in sides),
    )
    row("drain: system calls", [f"{sum(s.syscalls.values()):.1f}" for s in sides])
    for name in names[:8]:
        row(f"drain: `{name}`", [f"{s.syscalls.get(name, 0):.2f}" for s in sides])
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="small instances (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree (default 3)")
    parser.add_argument(
        "--src",
        action="append",
        metavar="LABEL=DIR",
        help="a dicomlb tree to run (repeat to compare; default: this one's src/)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sides = []
    for spec in args.src or [f"this={REPO / 'src'}"]:
        label, _, directory = spec.partition("=")
        sides.append(Side(label=label, src=Path(directory).resolve()))
    data = synthesise(f"backlog{args.count}", args.count, "small", OUT / "data")
    for round_no in range(args.rounds + 1):  # the last one under strace
        order = sides[round_no % len(sides) :] + sides[: round_no % len(sides)]
        for side in order:
            with tempfile.TemporaryDirectory(prefix="bench-count-spool-") as workdir:
                one_round(side, data, Path(workdir), trace=round_no == args.rounds)
    rows = table(sides, data.count)
    print("\n".join(rows))
    if not args.no_results:
        write_section(
            "count_spool",
            [
                "## Cost per spooled instance, counted (`bench/count_spool.py`)",
                "",
                f"{data.count} small instances over 4 storescu associations into `ack: spool` "
                f"with the sink down (ingest), then the sink started (drain); {args.rounds} "
                "rounds, trees interleaved; CPU = the dicomlb process's user + system time; SQL "
                "= statements the index ran (trace callback); system calls from `strace -f -c` "
                "over one more round's drain.",
                "",
                *rows,
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
