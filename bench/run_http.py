"""HTTP throughput, side by side: wrk → nginx `proxy_pass` (keep-alive upstream) and wrk →
dicomlb, in front of the same backend (nginx serving static files), in one run.

    python3 bench/run_http.py [--duration 8] [--connections 50] [--repeat 3]
    python3 bench/run_http.py --workloads small --repeat 5 --no-results
    python3 bench/run_http.py --dicomlb-src /work/main/src   # which dicomlb to start

Workloads: a small GET (≈100 bytes), a 512 KiB GET and a 512 KiB POST (nginx answers the
POST after reading the body). Paths and workloads are interleaved per round; the median
of the rounds is kept. Beside throughput, the CPU time the proxy process(es) used per
request (user + system, from /proc): unlike req/s it does not depend on which process of
the box is the bottleneck. Results: a table on stdout and a marked section in
bench/RESULTS.md. The machine is shared and noisy: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import write_section  # noqa: E402
from bench.run_store import Build, add_build_options, build_of  # noqa: E402
from tests.httppeers import Nginx  # noqa: E402
from tests.peers import LOOPBACK, free_port, stop_process, wait_listening  # noqa: E402

BIG = 512 * 1024
WORKLOADS = ("small GET", "512 KiB GET", "512 KiB POST")
PATHS = ("nginx", "dicomlb")


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process `root` and its children (nginx's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        if pid == root or int(fields[1]) == root:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def wrk(
    url: str, seconds: float, connections: int, script: Path | None, threads: int = 1
) -> dict[str, float]:
    """Run wrk; returns requests/s, MB/s (response bytes) and p99 latency in ms."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")
    count = re.search(r"(\d+) requests in", out)
    requests = float(count.group(1)) if count else rps * seconds
    return {"rps": rps, "p99": float(p99.group(1)) * scale, "requests": requests}


@contextlib.contextmanager
def proxies(build: Build) -> Iterator[tuple[Path, dict[str, int], dict[str, int]]]:
    """The backend nginx (`/small.txt`, 100 bytes; `/big.bin`, 512 KiB; `/post`), nginx
    `proxy_pass` to it and dicomlb (`build`) in front of it: yields the
    work directory (with `post.lua` for wrk), the two proxies' ports and pids."""
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    work.chmod(0o755)  # nginx workers run as nobody when started by root
    (work / "www").mkdir()
    (work / "www" / "small.txt").write_bytes(b"x" * 100)
    (work / "www" / "big.bin").write_bytes(os.urandom(BIG))
    (work / "post.lua").write_text(
        f'wrk.method = "POST"\nwrk.body = string.rep("x", {BIG})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    backend = Nginx(
        f"""root {work / "www"};
        location = /post {{ client_max_body_size 10m; client_body_buffer_size 1m;
                            return 200 "ok\\n"; }}"""
    ).start()
    proxy = Nginx(
        """location / { proxy_pass http://backend; proxy_http_version 1.1;
                      proxy_set_header Connection ""; proxy_set_header Host $host;
                      client_max_body_size 10m; proxy_request_buffering off;
                      proxy_buffering on; }""",
        http_extra=f"upstream backend {{ server {LOOPBACK}:{backend.port}; keepalive 64; }}",
    ).start()
    lb_port = free_port()
    config = work / "lb.yaml"
    config.write_text(
        f"""listeners:
  http: {{bind: "{LOOPBACK}:{lb_port}"}}
pools:
  web:
    health: {{enabled: false}}
    backends: [{{name: nginx, http: "http://{LOOPBACK}:{backend.port}"}}]
http_routes:
  - {{name: all, pool: web}}
"""
    )
    lb = subprocess.Popen(
        [build.interpreter, "-m", "dicomlb", "--log-level", "warning", "run", "-c", str(config)],
        env=build.env(),
        stdout=subprocess.DEVNULL,
        stderr=open(work / "lb.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        wait_listening(lb_port, timeout=20, process=lb, what="dicomlb")
        assert proxy.pid is not None
        yield (
            work,
            {"nginx": proxy.port, "dicomlb": lb_port},
            {"nginx": proxy.pid, "dicomlb": lb.pid},
        )
    finally:
        stop_process(lb, timeout=10, graceful=True)
        proxy.stop()
        backend.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept (with lb.log) when a run failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workloads", default="", help="comma-separated: small, get, post (default: all)"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    add_build_options(parser)
    args = parser.parse_args()
    short = {"small": WORKLOADS[0], "get": WORKLOADS[1], "post": WORKLOADS[2]}
    workloads = (
        tuple(short[w.strip()] for w in args.workloads.split(",")) if args.workloads else WORKLOADS
    )

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with proxies(build_of(args)) as (work, ports, pids):
        post = work / "post.lua"
        load_before = os.getloadavg()[0]
        for round_ in range(args.repeat):
            for workload in workloads:
                order = PATHS if round_ % 2 == 0 else tuple(reversed(PATHS))
                for path in order:
                    base = f"http://{LOOPBACK}:{ports[path]}"
                    url, script = {
                        "small GET": (f"{base}/small.txt", None),
                        "512 KiB GET": (f"{base}/big.bin", None),
                        "512 KiB POST": (f"{base}/post", post),
                    }[workload]
                    before = cpu_seconds(pids[path])
                    got = wrk(url, args.duration, args.connections, script)
                    got["cpu_us"] = (cpu_seconds(pids[path]) - before) / got["requests"] * 1e6
                    results.setdefault((workload, path), []).append(got)
                    print(
                        f"round {round_ + 1} {workload:13} {path:8} {got['rps']:9.0f} req/s "
                        f"p99 {got['p99']:7.2f} ms cpu {got['cpu_us']:6.1f} µs/req",
                        flush=True,
                    )
        load_after = os.getloadavg()[0]

    rows = []
    ratios = []
    for workload in workloads:
        med = {}
        for path in PATHS:
            runs = results[(workload, path)]
            rps = statistics.median(r["rps"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            cpu = statistics.median(r["cpu_us"] for r in runs)
            med[path] = rps
            med[f"{path} cpu"] = cpu
            mbs = rps * (BIG if "512" in workload else 100) / 1e6
            rows.append(
                f"| {workload} | {path} | {rps:.0f} | {mbs:.0f} | {p99:.2f} | {cpu:.1f} | "
                f"{len(runs)} |"
            )
        ratios.append(
            f"| {workload} | {med['dicomlb'] / med['nginx']:.2f} | "
            f"{med['dicomlb cpu'] / med['nginx cpu']:.1f} |"
        )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    nginx_version = subprocess.run(
        ["/usr/sbin/nginx", "-v"], capture_output=True, text=True
    ).stderr.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "## HTTP proxy throughput (`bench/run_http.py`)",
        "",
        f"{now} · `nproc` = {os.cpu_count()} · 1-min load average before → after "
        f"{load_before:.2f} → {load_after:.2f} · {wrk_version.strip()} · {nginx_version} · "
        f"Python {platform.python_version()} · dicomlb git {commit}",
        "",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s; backend: nginx serving static "
        "files (POST: read body, answer 200); nginx path: `proxy_pass` to an upstream with "
        "`keepalive 64`, HTTP/1.1, request buffering off; dicomlb: one process, uvloop, log "
        f"level warning; median of {args.repeat} interleaved rounds; MB = 10⁶ bytes of "
        "bodies.",
        "",
        "| workload | path | req/s | MB/s | p99 ms | proxy CPU µs/req | runs |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| workload | dicomlb / nginx (req/s) | dicomlb / nginx (CPU per request) |",
        "|---|---:|---:|",
        *ratios,
    ]
    print("\n".join(body))
    if args.no_results:
        return
    write_section("run_http", body)


if __name__ == "__main__":
    main()
