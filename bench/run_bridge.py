"""The DICOM -> HTTP bridge: C-STORE throughput into Orthanc over DIMSE vs REST vs STOW-RS.

    python3 bench/run_bridge.py [--instances N] [--small N] [--repeat N] [--no-write]

DCMTK storescu sends one folder over one association to:

- direct: Orthanc's DICOM port (reference);
- dicomlb DIMSE: dicomlb relaying to Orthanc's DICOM port;
- dicomlb REST: dicomlb converting each C-STORE to `POST /instances` (`store_via: orthanc_rest`);
- dicomlb STOW-RS: dicomlb converting each C-STORE to `POST /dicom-web/studies`
  (`store_via: stow_rs`, the orthanc-dicomweb plugin).

Two workloads: CT 512x512 16-bit (~0.5 MB per instance) and small 64x64 (~9 KB). Every
run gets a fresh Orthanc (same ports, empty database) so no run sees AlreadyStored; one
dicomlb (`python3 -m dicomlb run`, this tree's src) routes by calling AE title. TCP_NODELAY=1
for every peer (DESIGN.md decision 5); rounds interleave the paths; medians kept. Results: a
table on stdout and the run_bridge section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import write_section  # noqa: E402
from tests.dicomdata import make_ct_series, make_small, write_series  # noqa: E402
from tests.peers import (  # noqa: E402
    LOOPBACK,
    Orthanc,
    PeerError,
    echoscu,
    free_port,
    peer_env,
    run_dcmtk,
    stop_process,
    wait_listening,
)

DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PATHS = ("direct", "dimse", "rest", "stow")
LABEL = {
    "direct": "direct DIMSE (storescu → Orthanc)",
    "dimse": "dicomlb → Orthanc DIMSE",
    "rest": "dicomlb → Orthanc REST",
    "stow": "dicomlb → Orthanc STOW-RS",
}

CONFIG = """\
listeners:
  dicom: {{bind: "127.0.0.1:{port}", ae_title: DICOMLB}}
pools:
  dimse:
    health: {{enabled: false}}
    backends: [{{name: o-dimse, dicom: "ORTHANC@127.0.0.1:{dicom}", max_associations: 4}}]
  rest:
    health: {{enabled: false}}
    backends: [{{name: o-rest, http: "http://127.0.0.1:{http}", store_via: orthanc_rest}}]
  stow:
    health: {{enabled: false}}
    backends: [{{name: o-stow, http: "http://127.0.0.1:{http}", store_via: stow_rs}}]
routes:
  - {{name: rest, match: {{calling_aet: BENCH_REST}}, pool: rest}}
  - {{name: stow, match: {{calling_aet: BENCH_STOW}}, pool: stow}}
  - {{name: dimse, pool: dimse}}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def dicomlb(workdir: Path, port: int, dicom: int, http: int) -> Iterator[int]:
    """`python3 -m dicomlb run` with the bridge config; yields its port."""
    env = peer_env({"PYTHONPATH": str(REPO / "src")})
    cfg = workdir / "dicomlb.yaml"
    cfg.write_text(CONFIG.format(port=port, dicom=dicom, http=http))
    logfile = workdir / "dicomlb.log"
    with open(logfile, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomlb", "--log-level", "warning", "run", "-c", str(cfg)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_listening(port, timeout=20, process=process, what="dicomlb", log=logfile)
        if echoscu(LOOPBACK, port, aec="DICOMLB").returncode != 0:
            raise PeerError("C-ECHO through dicomlb failed")
        yield port
    finally:
        stop_process(process)


def send(path: str, folder: Path, lb_port: int, orthanc: Orthanc) -> float:
    """Seconds for storescu to send `folder` along `path`."""
    if path == "direct":
        target, aec, aet = orthanc.dicom_port, "ORTHANC", "BENCH"
    else:
        target, aec, aet = (
            lb_port,
            "DICOMLB",
            {"dimse": "BENCH", "rest": "BENCH_REST"}.get(path, "BENCH_STOW"),
        )
    started = time.perf_counter()
    result = run_dcmtk(
        "storescu", ["-aet", aet, "-aec", aec, "+sd", LOOPBACK, str(target), str(folder)]
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise PeerError(f"storescu along {path} failed: {result.stderr[-500:]}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="CT instances (512x512)")
    parser.add_argument("--small", type=int, default=500, help="small instances (64x64)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    http_port, dicom_port, lb_port = free_port(), free_port(), free_port()
    try:
        workloads = {
            "ct": write_series(make_ct_series(args.instances), work / "ct"),
            "small": write_series(make_small(args.small), work / "small"),
        }
        sizes = {k: sum(p.stat().st_size for p in v) for k, v in workloads.items()}
        rows: dict[str, list[float]] = {}
        with dicomlb(work, lb_port, dicom_port, http_port):
            for n in range(args.repeat):
                log(f"round {n + 1}/{args.repeat}")
                for workload in workloads:
                    for path in PATHS:
                        with Orthanc(
                            "ORTHANC",
                            plugins=[DICOMWEB],
                            http_port=http_port,
                            dicom_port=dicom_port,
                        ) as orthanc:
                            seconds = send(path, work / workload, lb_port, orthanc)
                            stored = len(orthanc.instances())
                            if stored != len(workloads[workload]):
                                raise PeerError(f"{path}: Orthanc has {stored} instances")
                        rows.setdefault(f"{workload} {path}", []).append(seconds)
        body = report(args, rows, sizes, load_before)
        print("\n".join(body))
        if not args.no_write:
            write_section("run_bridge", body)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    args: argparse.Namespace,
    rows: dict[str, list[float]],
    sizes: dict[str, int],
    load_before: float,
) -> list[str]:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    med = {k: statistics.median(v) for k, v in rows.items()}
    counts = {"ct": args.instances, "small": args.small}
    lines = [
        "## DICOM → HTTP bridge (`bench/run_bridge.py`)",
        "",
        f"{when} · `nproc` = {os.cpu_count()} · 1-min load average before → after "
        f"{load_before:.2f} → {os.getloadavg()[0]:.2f} · Orthanc 1.10.1 + DICOMweb 1.7 · "
        f"DCMTK 3.6.7 · Python {platform.python_version()} · dicomlb git {git}",
        "",
        f"storescu, one association, into a fresh Orthanc per run: {args.instances} CT "
        f"512x512 instances ({sizes['ct'] / 1e6:.0f} MB) and {args.small} small 64x64 ones "
        f"({sizes['small'] / 1e6:.1f} MB). Median of {args.repeat} interleaved rounds; ratio "
        "= throughput / direct DIMSE.",
        "",
        "| path | CT inst/s | ratio | small inst/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        cells = []
        for workload in ("ct", "small"):
            rate = counts[workload] / med[f"{workload} {path}"]
            base = counts[workload] / med[f"{workload} direct"]
            cells += [f"{rate:.0f}", f"{rate / base:.2f}"]
        lines.append(f"| {LABEL[path]} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
