"""The Python part of a small HTTP GET through dicomlb, alone: no system call, no event
loop turn, and few imports (so that it runs under callgrind in reasonable time).

    python3 bench/http_inmemory.py [--count 20000] [--runs 5] [--profile]
    python3 bench/http_inmemory.py --instructions     # callgrind: steady on a busy machine

A `ClientConnection` and a pooled `UpstreamConnection` on in-memory transports are fed the
bytes wrk sends and a backend nginx answers for a 100-byte file, `count` times: process
CPU time per request (best of `runs`), or instructions per request (two callgrind runs that
differ only in the number of requests, so start-up and imports cancel out). CPU time on a
machine shared with other work varies twofold from run to run; instructions do not.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.http.proxy import ClientConnection, HttpListener
from dicomlb.http.upstream import UpstreamConnection
from dicomlb.runtime import Runtime

try:
    import uvloop
except ImportError:  # (dicomlb runs on asyncio's loop then too)
    uvloop = None  # type: ignore[assignment]

# What wrk sends and what the backend nginx answers for /small.txt.
REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 13:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Last-Modified: Thu, 03 Dec 2026 13:39:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "692f3d4c-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)
INSTRUCTIONS_BASE = 200  # requests of the shorter callgrind run
INSTRUCTIONS_MORE = 1000  # and how many more the longer one makes


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
    if not conns.budget.take():
        raise RuntimeError("no slot of the backend's connection budget for the one connection")
    conns.live.add(upstream)  # the slot is the connection's, as when it connects
    conns.give_back(upstream, asyncio.get_running_loop().time(), 60.0)
    gc.freeze()  # what start-up made is not traversed by the collections the requests cause
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
                "--count",
                str(count),
                "--runs",
                "1",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict probes in both runs
        ).stderr
        found = re.search(r"Collected : (\d+)", out)
        assert found is not None, out
        collected.append(int(found.group(1)))
    return (collected[1] - collected[0]) / INSTRUCTIONS_MORE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="requests per run (20000)")
    parser.add_argument("--runs", type=int, default=5, help="best of (5)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions per request (callgrind)"
    )
    args = parser.parse_args(argv)
    if args.instructions:
        print(f"python: {instructions():,.0f} instructions per small GET (in memory, callgrind)")
        return 0
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    cost = loop.run_until_complete(python_cost(args.count, args.runs, args.profile))
    loop.close()
    print(f"python: {cost:.2f} µs per small GET (in memory, best of {args.runs} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
