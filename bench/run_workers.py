"""Worker processes: dicomlb with `workers: 1` and with `workers: N` side by side, in one run.

    python3 bench/run_workers.py [--workers 2] [--repeat 3] [--duration 8] [--no-results]

Both run at once, each with a DICOM and an HTTP listener, in front of the same backends: a
`storescp --ignore --fork` sink (as `run_store.py`) and nginx serving a 100-byte file (as
`run_http.py`). Workloads: CT and small C-STOREs over 4 associations in parallel (four
storescu processes; the kernel spreads their connections over the workers), and a small
HTTP GET with `wrk -t2 -c50`. Paths and workloads are interleaved per round, their order
rotated, and the median kept; beside throughput, the CPU seconds all of a dicomlb's
processes used per message. Results: a table on stdout and the "Worker processes" section
of bench/RESULTS.md. The machine is shared and noisy: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import git_head, write_section  # noqa: E402
from bench.run_http import cpu_seconds, wrk  # noqa: E402
from bench.run_store import OUT, Target, send, synthesise  # noqa: E402
from tests.httppeers import Nginx  # noqa: E402
from tests.peers import (  # noqa: E402
    LOOPBACK,
    DicomlbProcess,
    PeerError,
    StoreSCP,
    echoscu,
    free_port,
    peer_env,
)

AET = "DICOMLB"
ASSOCIATIONS = 4
CONNECTIONS = 50
WRK_THREADS = 2  # two client threads: one core's client must not be the limit of two workers


@dataclass(frozen=True, slots=True, kw_only=True)
class Balancer:
    """One running dicomlb: its name, DICOM target, HTTP URL and supervisor pid."""

    name: str
    target: Target
    url: str
    pid: int


def config(workers: int, dicom: int, http: int, sink: str, web: int) -> str:
    return f"""workers: {workers}
listeners:
  dicom: {{bind: "{LOOPBACK}:{dicom}", ae_title: {AET}}}
  http: {{bind: "{LOOPBACK}:{http}"}}
pools:
  sink:
    health: {{interval: 5s}}
    backends: [{{name: sink, dicom: "{sink}", max_associations: 8}}]
  web:
    health: {{enabled: false}}
    backends: [{{name: nginx, http: "http://{LOOPBACK}:{web}"}}]
routes:
  - {{name: ct, match: {{Modality: CT}}, pool: sink}}
  - {{name: default, pool: sink}}
http_routes:
  - {{name: all, pool: web}}
"""


@contextlib.contextmanager
def balancer(workers: int, sink: str, web: int, workdir: Path, src: Path) -> Iterator[Balancer]:
    """dicomlb with `workers` workers, once every worker has started."""
    dicom, http = free_port(), free_port()
    env = peer_env({"PYTHONPATH": str(src.resolve())})
    process = DicomlbProcess(
        config(workers, dicom, http, sink, web),
        dicom,
        workdir / f"w{workers}",
        env=env,
        options=["--log-level", "info"],
        start_timeout=120,
    )
    with process:
        deadline = time.monotonic() + 120
        while process.log_path.read_text().count("dicomlb.started") < workers:
            if time.monotonic() > deadline:
                raise PeerError(f"{workers} workers did not all start: {process.log_path}")
            time.sleep(0.2)
        echo = echoscu(LOOPBACK, dicom, aet="BENCH", aec=AET, timeout=30)
        if echo.returncode != 0:
            raise PeerError(f"C-ECHO through dicomlb failed: {echo.stderr.strip()}")
        yield Balancer(
            name=f"workers {workers}",
            target=Target(path=f"workers {workers}", port=dicom, aec=AET),
            url=f"http://{LOOPBACK}:{http}/small.txt",
            pid=process.pid,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="the count beside 1 (default 2)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--ct", type=int, default=400)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--dicomlb-src", type=Path, default=REPO / "src")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    data_root = OUT / "data"
    datasets = {
        "CT C-STORE": synthesise("ct", args.ct, "ct", data_root),
        "small C-STORE": synthesise("small", args.small, "small", data_root),
    }
    warmup = synthesise("warmup", 40, "small", data_root)
    workloads = [*datasets, "small GET"]
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    p99: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-workers-")))
        www = work / "www"
        www.mkdir(parents=True)
        work.chmod(0o755)  # nginx workers run as nobody when started by root
        (www / "small.txt").write_bytes(b"x" * 100)
        nginx = Nginx(f"root {www};").start()
        stack.callback(nginx.stop)
        sink = stack.enter_context(StoreSCP("SINK", ignore=True, fork=True))
        balancers = [
            stack.enter_context(balancer(n, sink.address, nginx.port, work, args.dicomlb_src))
            for n in (1, args.workers)
        ]
        for lb in balancers:
            send(lb.target, warmup, ASSOCIATIONS)
        for round_no in range(args.repeat):
            shift = round_no % len(balancers)
            order = balancers[shift:] + balancers[:shift]
            for workload in workloads:
                for lb in order:
                    before = cpu_seconds(lb.pid)
                    if workload in datasets:
                        data = datasets[workload]
                        seconds = send(lb.target, data, ASSOCIATIONS)
                        rate, messages = data.count / seconds, data.count
                    else:
                        got = wrk(lb.url, args.duration, CONNECTIONS, None, WRK_THREADS)
                        rate, messages = got["rps"], got["requests"]
                        p99.setdefault(lb.name, []).append(got["p99"])
                    used = (cpu_seconds(lb.pid) - before) / messages * 1e6
                    rates.setdefault((workload, lb.name), []).append(rate)
                    cpu.setdefault((workload, lb.name), []).append(used)
                    print(
                        f"round {round_no + 1}/{args.repeat} {workload:13} {lb.name:9} "
                        f"{rate:9.0f}/s cpu {used:6.1f} µs/message",
                        file=sys.stderr,
                        flush=True,
                    )
    load_after = os.getloadavg()[0]
    names = [f"workers {n}" for n in (1, args.workers)]
    rows = [
        "| workload | path | per second | dicomlb CPU µs per message | runs |",
        "|---|---|---:|---:|---:|",
    ]
    ratios = [
        f"| workload | {names[1]} / {names[0]} (per second) | "
        f"{names[1]} / {names[0]} (CPU per message) |",
        "|---|---:|---:|",
    ]
    for workload in workloads:
        med = {n: statistics.median(rates[(workload, n)]) for n in names}
        use = {n: statistics.median(cpu[(workload, n)]) for n in names}
        for n in names:
            rows.append(
                f"| {workload} | {n} | {med[n]:.0f} | {use[n]:.0f} | {len(rates[(workload, n)])} |"
            )
        ratios.append(
            f"| {workload} | {med[names[1]] / med[names[0]]:.2f} | "
            f"{use[names[1]] / use[names[0]]:.2f} |"
        )
    p99s = ", ".join(f"{n} {statistics.median(p99[n]):.2f} ms" for n in names)
    body = [
        "## Worker processes (`bench/run_workers.py`)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} · `nproc` = {os.cpu_count()} · 1-min "
        f"load average before → after {load_before:.2f} → {load_after:.2f} · dicomlb git "
        f"{git_head()}",
        "",
        f"dicomlb `workers: 1` and `workers: {args.workers}` running at once in front of one "
        "`storescp --ignore --fork` sink and one nginx; C-STORE: "
        f"{ASSOCIATIONS} storescu processes in parallel (one association each, "
        f"{args.ct} CT / {args.small} small instances in all); HTTP: `wrk -t{WRK_THREADS} "
        f"-c{CONNECTIONS} -d{args.duration:g}s` for a 100-byte file (p99: {p99s}); CPU: "
        "user + system of the supervisor and its workers; median of "
        f"{args.repeat} interleaved rounds.",
        "",
        *rows,
        "",
        *ratios,
    ]
    print("\n".join(body))
    if not args.no_results:
        write_section("run_workers", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
