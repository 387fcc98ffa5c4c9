"""The long wire-fuzz run: ≥ 100,000 mutated sessions at a dicomlb process, canary running.

Starts the fuzzer's target (tests/adversarial/wire.py: dicomlb in front of a DCMTK storescp
and a real Orthanc), captures the seed sessions from real clients, replays mutations of
them, then checks the pass criteria (no traceback or ERROR line, nothing held once the
deadlines have passed, RSS growth under 10 MB, no canary failure) and writes the figures to
bench/RESULTS.md. Usage: `python3 bench/fuzz_wire.py [--sessions 100000] [--seed 7]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent)]

from bench.results import git_head, write_section  # noqa: E402
from tests.adversarial.wire import SETTLE, FuzzTarget, campaign  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=4 * 3600, help="stop earlier at this")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="fuzz-wire-") as work,
        FuzzTarget(Path(work)) as target,
    ):
        seeds = target.capture_seeds()
        report = campaign(
            target,
            seeds,
            sessions=args.sessions,
            seconds=args.seconds,
            seed=args.seed,
            parallel=args.parallel,
        )
    failures = report.failures()
    print(report.summary())
    for failure in failures:
        print("FAIL", failure)
    if args.no_results:
        return 1 if failures else 0
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(report.by_kind.items()))
    write_section(
        "fuzz_wire",
        [
            "## Wire fuzzing, long run (`bench/fuzz_wire.py`)",
            "",
            f"{when} · `nproc` = {os.cpu_count()} · 1-min load average before {load:.2f} · "
            f"Python {sys.version.split()[0]} · dicomlb git {git_head()} · seed {args.seed} · "
            f"{args.parallel} sessions at a time",
            "",
            "Sessions captured from real clients (echoscu, storescu incl. deflated, findscu, "
            "getscu, movescu; HTTP GET, keep-alive, upload, chunked) are mutated (bits, "
            "boundary values in bytes and length fields, truncated, duplicated, dropped, "
            "reordered and foreign PDUs, tiny Maximum Length, header edits, odd "
            "fragmentation, RST / FIN / linger endings) and replayed at a dicomlb process in "
            "front of a DCMTK storescp and a real Orthanc, from 8 loopback addresses, while a "
            "canary stores a valid instance and GETs `/system` every 0.5 s. Pass: 0 "
            f"tracebacks and ERROR lines; nothing held {SETTLE:g} s after the last session "
            "(client associations and connections, backend slots, HTTP backend connections); "
            "RSS growth < 10 MB; 0 canary failures.",
            "",
            "| sessions | seconds | sessions/s | tracebacks | ERROR lines | held after | "
            "RSS before → after | fds before → after | canary stores / GETs | canary failures "
            "| verdict |",
            "|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|",
            f"| {report.sessions} | {report.seconds:.0f} | {report.per_second:.0f} | "
            f"{report.tracebacks} | {len(report.errors)} | {len(report.held)} | "
            f"{report.rss_before / 2**20:.1f} → {report.rss_after / 2**20:.1f} MiB | "
            f"{report.fds_before} → {report.fds_after} | "
            f"{report.canary_stores} / {report.canary_gets} | {len(report.canary_failures)} | "
            f"{'pass' if not failures else 'FAIL'} |",
            "",
            f"Sessions by seed: {kinds}.",
            *([""] + [f"- {failure}" for failure in failures] if failures else []),
        ],
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
