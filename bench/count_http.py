"""Cost per small HTTP request, counted rather than timed: nginx `proxy_pass` beside dicomlb.

    python3 bench/count_http.py [--seconds 4] [--rounds 3] [--python PY] [--no-results]

Over sockets (the proxies of run_http.py, one process / worker each, in front of one
backend nginx): `wrk -t1 -c50` small GETs (100-byte body) through each proxy, sides
interleaved; CPU is the proxy's user + system time (`/proc`) per request, median of the
rounds (the round of the median total, with its user / system split); system calls from
`strace -f -c` attached over one more run (strace slows the proxy, not what it counts); a
wake-up is one `epoll_wait` return.

The Python part alone, in memory: bench/http_inmemory.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # (dicomlb: the installed one, or PYTHONPATH's)

from bench.count_store import READS, WRITES  # noqa: E402
from bench.results import git_head, write_section  # noqa: E402
from bench.run_http import proxies, wrk  # noqa: E402
from bench.run_store import add_build_options, build_of  # noqa: E402
from tests.peers import LOOPBACK  # noqa: E402

CONNECTIONS = 50
TICK = os.sysconf("SC_CLK_TCK")
INSTRUCTIONS_BASE = 200  # in-memory requests of the shorter callgrind run
INSTRUCTIONS_MORE = 1000  # and how many more the longer one makes
# What wrk sends and what the backend nginx answers for /small.txt.
REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 13:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Last-Modified: Thu, 03 Dec 2026 13:39:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "692f3d4c-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)


def cpu_split(root: int) -> tuple[float, float]:
    """User and system CPU seconds of process `root` and its children (nginx's worker)."""
    user = system = 0.0
    for pid in family(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


def family(root: int) -> list[int]:
    """`root` and its child processes (nginx's workers)."""
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == root:
            pids.append(int(stat.parent.name))
    return pids


def strace_counts(pid: int, url: str, seconds: float) -> tuple[dict[str, int], float]:
    """System calls by name of `pid` and its children while wrk runs `seconds` against
    `url`; and the requests."""
    attach = [arg for child in family(pid) for arg in ("-p", str(child))]
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-o", out.name, *attach],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # attached to every thread
            requests = wrk(url, seconds, CONNECTIONS, None)["requests"]
        finally:
            tracer.send_signal(2)
            tracer.wait(timeout=30)
        calls: dict[str, int] = {}
        for line in Path(out.name).read_text().splitlines():
            cols = line.split()
            if not cols or cols[-1] == "total" or not cols[-1].isidentifier():
                continue
            if len(cols) >= 5 and cols[3].isdigit():
                calls[cols[-1]] = int(cols[3])
            elif len(cols) >= 5 and cols[2].isdigit():
                calls[cols[-1]] = int(cols[2])
    return calls, requests


def over_sockets(args: argparse.Namespace) -> list[str]:
    rows = [
        "| path | CPU µs / req. | user | system | req/s | syscalls / req. | reads | writes "
        "| epoll_wait |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with proxies(build_of(args)) as (_, ports, pids):
        urls = {path: f"http://{LOOPBACK}:{port}/small.txt" for path, port in ports.items()}
        for path in ports:  # warm up: connections open, code paths taken
            wrk(urls[path], 1, CONNECTIONS, None)
        # (user + system, user, system) µs per request, per round
        cpu: dict[str, list[tuple[float, float, float]]] = {path: [] for path in ports}
        rps: dict[str, list[float]] = {path: [] for path in ports}
        for round_ in range(args.rounds):
            order = list(ports) if round_ % 2 == 0 else list(reversed(ports))
            for path in order:
                before = cpu_split(pids[path])
                got = wrk(urls[path], args.seconds, CONNECTIONS, None)
                after = cpu_split(pids[path])
                user, system = (
                    (a - b) / got["requests"] * 1e6 for a, b in zip(after, before, strict=True)
                )
                cpu[path].append((user + system, user, system))
                rps[path].append(got["rps"])
                print(
                    f"round {round_ + 1} {path:8} {got['rps']:8.0f} req/s "
                    f"{user + system:6.1f} µs/req (user {user:.1f}, system {system:.1f})",
                    flush=True,
                )
        for path in ports:
            calls, requests = strace_counts(pids[path], urls[path], args.seconds / 2)
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
            print(f"{path}: " + " ".join(f"{n}={c / requests:.2f}" for n, c in top), flush=True)
            total, user, system = sorted(cpu[path])[len(cpu[path]) // 2]
            rows.append(
                f"| {path} | {total:.1f} | {user:.1f} | {system:.1f} | "
                f"{sorted(rps[path])[len(rps[path]) // 2]:.0f} | "
                f"{sum(calls.values()) / requests:.2f} | "
                f"{sum(calls.get(n, 0) for n in READS) / requests:.2f} | "
                f"{sum(calls.get(n, 0) for n in WRITES) / requests:.2f} | "
                f"{(calls.get('epoll_wait', 0) + calls.get('epoll_pwait', 0)) / requests:.3f} |"
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds, median (default 3)")
    add_build_options(parser)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    rows = over_sockets(args)
    print("\n".join(rows))
    if not args.no_results:
        write_section(
            "count_http",
            [
                "## Cost per small HTTP request, counted (`bench/count_http.py`)",
                "",
                f"commit {git_head()} · `wrk -t1 -c{CONNECTIONS}` GETs of a 100-byte file "
                "through each proxy (one process / worker each) to one backend nginx; CPU = "
                f"the proxy's user + system time per request (median of {args.rounds} runs of "
                f"{args.seconds:g} s, sides interleaved); system calls from `strace -f -c` "
                "over one more run; a wake-up is one `epoll_wait`.",
                "",
                *rows,
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
