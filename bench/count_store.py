"""Cost per C-STORE, counted rather than timed: CPU time, system calls and event-loop
wake-ups of the proxy process per instance, HAProxy (TCP mode) beside dicomlb.

    python3 bench/count_store.py [--small N] [--ct N] [--no-results]

One storescu association sends N instances through each proxy to a ``storescp --ignore``
sink. CPU is the proxy's user + system time (``/proc/PID/stat``) over a send; system calls
are ``strace -f -c`` attached to the proxy over a second send (strace slows the process,
not what it calls); a wake-up is one ``epoll_wait`` return. Counts do not depend on what
else the machine runs, so this is the steady measure on a shared machine; throughput stays
with run_store.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import git_head, write_section  # noqa: E402
from bench.run_store import (  # noqa: E402
    DICOMLB_AET,
    OUT,
    SINK_AET,
    Build,
    DataSet,
    Target,
    add_build_options,
    build_of,
    dicomlb,
    haproxy,
    log,
    send,
    synthesise,
)
from tests.peers import StoreSCP  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
READS = ("read", "recvfrom", "recvmsg", "readv")
WRITES = ("write", "sendto", "sendmsg", "writev")


@dataclass(frozen=True, slots=True)
class Counts:
    """Per instance: CPU µs, system calls, reads, writes, epoll_wait calls."""

    cpu_us: float
    syscalls: float
    reads: float
    writes: float
    wakeups: float


def listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:port (ss -p)."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"pid=(\d+)", out)
    if found is None:
        raise RuntimeError(f"no process listens on port {port}: {out!r}")
    return int(found.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def strace_counts(pid: int, target: Target, data: DataSet) -> dict[str, int]:
    """System calls by name while `count` instances pass."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-o", out.name, "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # attached to every thread
            send(target, data, 1)
        finally:
            tracer.send_signal(2)
            tracer.wait(timeout=30)
        calls: dict[str, int] = {}
        for line in Path(out.name).read_text().splitlines():
            cols = line.split()
            if cols and cols[-1] == "total":
                continue
            if len(cols) >= 5 and cols[-1].isidentifier() and cols[3].isdigit():
                calls[cols[-1]] = int(cols[3])
            elif len(cols) >= 5 and cols[-1].isidentifier() and cols[2].isdigit():
                calls[cols[-1]] = int(cols[2])
    return calls


def measure(target: Target, data: DataSet, rounds: int) -> Counts:
    count = data.count
    pid = listener_pid(target.port)
    cpu = []
    for _ in range(rounds):
        before = cpu_seconds(pid)
        send(target, data, 1)
        cpu.append((cpu_seconds(pid) - before) / count * 1e6)
    calls = strace_counts(pid, target, data)
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    log(f"{target.path}: " + " ".join(f"{name}={n / count:.1f}" for name, n in top))
    return Counts(
        cpu_us=sorted(cpu)[len(cpu) // 2],
        syscalls=total / count,
        reads=sum(calls.get(name, 0) for name in READS) / count,
        writes=sum(calls.get(name, 0) for name in WRITES) / count,
        wakeups=(calls.get("epoll_wait", 0) + calls.get("epoll_pwait", 0)) / count,
    )


@contextlib.contextmanager
def proxies(sink: StoreSCP, workdir: Path, build: Build) -> Iterator[list[Target]]:
    with contextlib.ExitStack() as stack:
        through_haproxy = stack.enter_context(haproxy(sink.port, workdir))
        through_dicomlb = stack.enter_context(dicomlb(sink.address, workdir, build))
        yield [
            Target(path="haproxy", port=through_haproxy, aec=SINK_AET),
            Target(path="dicomlb", port=through_dicomlb, aec=DICOMLB_AET),
        ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="small instances (default 1000)")
    parser.add_argument("--ct", type=int, default=200, help="CT instances (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds, median (default 3)")
    add_build_options(parser)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    data_root = OUT / "data"
    sets = [
        ("small", synthesise(f"count-small-{args.small}", args.small, "small", data_root)),
        ("CT", synthesise(f"count-ct-{args.ct}", args.ct, "ct", data_root)),
    ]
    rows = [
        "| instances | path | CPU µs / inst. | syscalls / inst. | reads | writes | epoll_wait |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-count-")))
        sink = stack.enter_context(StoreSCP(SINK_AET, ignore=True, fork=True))
        targets = stack.enter_context(proxies(sink, workdir, build_of(args)))
        for target in targets:
            send(target, sets[0][1], 1)  # warm up
        for name, data in sets:
            for target in targets:
                c = measure(target, data, args.rounds)
                log(f"{name} {target.path}: {c}")
                rows.append(
                    f"| {name} ({data.count}) | {target.path} | {c.cpu_us:.0f} | "
                    f"{c.syscalls:.1f} | {c.reads:.1f} | {c.writes:.1f} | {c.wakeups:.1f} |"
                )
    print("\n".join(rows))
    if not args.no_results:
        write_section(
            "count_store",
            [
                "## Cost per C-STORE, counted (`bench/count_store.py`)",
                "",
                f"commit {git_head()} · one storescu association through each proxy to a "
                "`storescp --ignore` sink; CPU = the proxy process's user + system time per "
                f"instance (median of {args.rounds}); system calls from `strace -f -c` over "
                "one more send; a wake-up is one `epoll_wait`.",
                "",
                *rows,
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
