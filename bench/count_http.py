"""Cost per small HTTP request, counted rather than timed: nginx `proxy_pass` beside dicomlb.

    python3 bench/count_http.py [--seconds 4] [--rounds 3] [--no-results]
    python3 bench/count_http.py --python 20000 [--profile]   # the Python part alone

Over sockets (the proxies of run_http.py, one process / worker each, in front of one
backend nginx): `wrk -t1 -c50` small GETs (100-byte body) through each proxy, sides
interleaved; CPU is the proxy's user + system time (`/proc`) per request, median of the
rounds; system calls from `strace -f -c` attached over one more run (strace slows the
proxy, not what it counts); a wake-up is one `epoll_wait` return.

`--python N`: dicomlb's own per-request work with no system call and no event loop turn:
a `ClientConnection` and a pooled `UpstreamConnection` on in-memory transports, fed the
bytes wrk sends and nginx answers, N times (process CPU time, best of 5). What the Python
code costs, not what the kernel does. `--instructions`: the same counted in instructions
(callgrind), which do not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench.count_store import READS, WRITES  # noqa: E402
from bench.results import git_head, write_section  # noqa: E402
from bench.run_http import cpu_seconds, proxies, wrk  # noqa: E402
from tests.peers import LOOPBACK  # noqa: E402

from dicomlb.app import LOOP_FACTORY  # noqa: E402
from dicomlb.config import build_snapshot  # noqa: E402
from dicomlb.http.proxy import ClientConnection, HttpListener  # noqa: E402
from dicomlb.http.upstream import UpstreamConnection  # noqa: E402
from dicomlb.runtime import Runtime  # noqa: E402

CONNECTIONS = 50
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


def strace_counts(pid: int, url: str, seconds: float) -> tuple[dict[str, int], float]:
    """System calls by name while wrk runs `seconds` against `url`; and the requests."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-o", out.name, "-p", str(pid)],
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
        "| path | CPU µs / req. | req/s | syscalls / req. | reads | writes | epoll_wait |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with proxies(args.dicomlb_src) as (_, ports, pids):
        urls = {path: f"http://{LOOPBACK}:{port}/small.txt" for path, port in ports.items()}
        for path in ports:  # warm up: connections open, code paths taken
            wrk(urls[path], 1, CONNECTIONS, None)
        cpu: dict[str, list[float]] = {path: [] for path in ports}
        rps: dict[str, list[float]] = {path: [] for path in ports}
        for round_ in range(args.rounds):
            order = list(ports) if round_ % 2 == 0 else list(reversed(ports))
            for path in order:
                before = cpu_seconds(pids[path])
                got = wrk(urls[path], args.seconds, CONNECTIONS, None)
                cpu[path].append((cpu_seconds(pids[path]) - before) / got["requests"] * 1e6)
                rps[path].append(got["rps"])
                print(
                    f"round {round_ + 1} {path:8} {got['rps']:8.0f} req/s "
                    f"{cpu[path][-1]:6.1f} µs/req",
                    flush=True,
                )
        for path in ports:
            calls, requests = strace_counts(pids[path], urls[path], args.seconds / 2)
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
            print(f"{path}: " + " ".join(f"{n}={c / requests:.2f}" for n, c in top), flush=True)
            rows.append(
                f"| {path} | {sorted(cpu[path])[len(cpu[path]) // 2]:.1f} | "
                f"{sorted(rps[path])[len(rps[path]) // 2]:.0f} | "
                f"{sum(calls.values()) / requests:.2f} | "
                f"{sum(calls.get(n, 0) for n in READS) / requests:.2f} | "
                f"{sum(calls.get(n, 0) for n in WRITES) / requests:.2f} | "
                f"{(calls.get('epoll_wait', 0) + calls.get('epoll_pwait', 0)) / requests:.3f} |"
            )
    return rows


class MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written and never reads: the protocol is fed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def python_cost(count: int, runs: int, profile: bool) -> float:
    """µs of Python per small GET relayed (best of `runs` runs of `count`)."""
    snapshot = build_snapshot(
        {
            "listeners": {"http": {"bind": "127.0.0.1:8080"}},
            "pools": {
                "web": {
                    "health": {"enabled": False},
                    "backends": [{"name": "nginx", "http": "http://127.0.0.1:8081"}],
                }
            },
            "http_routes": [{"name": "all", "pool": "web"}],
        }
    )
    assert snapshot.http is not None
    listener = HttpListener(snapshot.http, Runtime(snapshot))
    client = ClientConnection(listener)
    to_client = MemoryTransport()
    client.connection_made(to_client)
    conns = listener.http.connections["nginx"]
    upstream = UpstreamConnection(conns)
    to_backend = MemoryTransport()
    upstream.connection_made(to_backend)
    conns.open += 1
    conns.give_back(upstream, asyncio.get_running_loop().time(), 60.0)
    client_received = client.data_received
    backend_received = upstream.data_received
    request, response = REQUEST, RESPONSE

    def run() -> None:
        for _ in range(count):
            client_received(request)
            backend_received(response)

    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    if to_client.written != runs * count * len(RESPONSE) or client.closed:
        raise RuntimeError("the in-memory exchange did not relay every response")
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return best / count * 1e6


def instructions() -> float:
    """Instructions per in-memory request: two runs under callgrind that differ only in the
    number of requests (start-up and imports cancel out)."""
    collected = []
    for count in (INSTRUCTIONS_BASE, INSTRUCTIONS_BASE + INSTRUCTIONS_MORE):
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--python",
                str(count),
                "--runs",
                "1",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        found = re.search(r"Collected : (\d+)", out)
        assert found is not None, out
        collected.append(int(found.group(1)))
    return (collected[1] - collected[0]) / INSTRUCTIONS_MORE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds, median (default 3)")
    parser.add_argument(
        "--python",
        type=int,
        default=0,
        metavar="N",
        help="measure the Python part alone over N in-memory requests",
    )
    parser.add_argument("--runs", type=int, default=5, help="with --python: best of (5)")
    parser.add_argument("--profile", action="store_true", help="with --python: cProfile")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per in-memory request (valgrind --tool=callgrind)",
    )
    parser.add_argument("--dicomlb-src", type=Path, default=REPO / "src")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.python:
        loop = LOOP_FACTORY() if LOOP_FACTORY is not None else asyncio.new_event_loop()
        cost = loop.run_until_complete(python_cost(args.python, args.runs, args.profile))
        loop.close()
        print(f"python: {cost:.2f} µs per small GET (in memory, best of {args.runs} runs)")
        return 0
    if args.instructions:
        print(f"python: {instructions():,.0f} instructions per small GET (in memory, callgrind)")
        return 0
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
