"""Query/retrieve through dicomlb vs direct: C-FIND latency, C-GET and C-MOVE throughput.

    python3 bench/run_qr.py [--instances N] [--finds N] [--repeat N]

One Orthanc (Debian package) holds one synthetic CT study (512x512, 16-bit, ~0.5 MB per
instance). dicomlb (``python3 -m dicomlb run``) fronts it with one pool, `query: one`;
calling AE ``BENCHVIA`` takes a route with `move_destination: via_balancer`, every other
caller `passthrough`. Measured, direct and through dicomlb:

- C-FIND latency: study-level C-FINDs one after another on one pynetdicom association
  (median and p95 per query); the difference is dicomlb's overhead.
- C-GET: DCMTK ``getscu`` retrieving the study (files written to a temporary directory).
- C-MOVE: DCMTK ``movescu`` to a ``storescp --ignore`` destination, direct, passthrough
  (Orthanc sends straight to the destination), via_balancer (Orthanc → dicomlb → destination).

TCP_NODELAY=1 for every peer (DESIGN.md decision 5); rounds interleave the paths; medians
kept. Results: a table on stdout and the run_qr section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as FIND,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import write_section  # noqa: E402
from tests.dicomdata import make_ct_series, write_series  # noqa: E402
from tests.peers import (  # noqa: E402
    LOOPBACK,
    DicomlbProcess,
    Orthanc,
    PeerError,
    StoreSCP,
    echoscu,
    free_port,
    peer_env,
    run_dcmtk,
)

DICOMLB_AET = "DICOMLB"

CONFIG = """\
listeners:
  dicom: {{bind: "127.0.0.1:{port}", ae_title: {aet}}}
pools:
  pacs:
    query: one
    backends:
      - {{name: orthanc, dicom: "{orthanc}"}}
routes:
  - name: via
    match: {{calling_aet: BENCHVIA}}
    pool: pacs
    move_destination: via_balancer
  - name: default
    pool: pacs
dicom_nodes:
  DEST: "{dest}"
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def dicomlb(workdir: Path, port: int, orthanc: str, dest: str) -> Iterator[int]:
    """`python3 -m dicomlb run` with the Q/R config; yields its port."""
    env = peer_env({"PYTHONPATH": str(REPO / "src")})
    config = CONFIG.format(port=port, aet=DICOMLB_AET, orthanc=orthanc, dest=dest)
    options = ["--log-level", "warning"]
    with DicomlbProcess(config, port, workdir / "dicomlb", env=env, options=options):
        if echoscu(LOOPBACK, port, aec=DICOMLB_AET).returncode != 0:
            raise PeerError("C-ECHO through dicomlb failed")
        yield port


def find_latencies(port: int, aec: str, count: int) -> list[float]:
    """Seconds per study-level C-FIND, one after another on one association."""

    ae = AE("BENCH")
    ae.add_requested_context(FIND)
    assoc = ae.associate(LOOPBACK, port, ae_title=aec)
    if not assoc.is_established:
        raise PeerError(f"association to {aec}@{port} failed")
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:  # pynetdicom leaves Nagle on: ~40 ms per query on delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            answers = list(assoc.send_c_find(query, FIND))
            times.append(time.perf_counter() - started)
            results = sum(1 for _, ident in answers if ident is not None)
            if results != 1:
                final = answers[-1][0] if answers else None
                status = f"0x{int(final.Status):04X}" if final is not None else "none"
                log(f"C-FIND to {aec}@{port}: {results} results (expected 1), status {status}")
    finally:
        assoc.release()
    return times


def timed(tool: str, args: Sequence[str]) -> float:
    started = time.perf_counter()
    result = run_dcmtk(tool, args, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise PeerError(f"{tool} failed: {result.stderr.strip()[-300:]}")
    return elapsed


def get_study(port: int, aec: str, study: str, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return timed(
        "getscu",
        ["-S", "-aet", "BENCH", "-aec", aec, "-k", "QueryRetrieveLevel=STUDY", "-k",
         f"StudyInstanceUID={study}", "-od", str(out), LOOPBACK, str(port)],
    )  # fmt: skip


def move_study(port: int, aec: str, aet: str, study: str) -> float:
    return timed(
        "movescu",
        ["-S", "-aet", aet, "-aec", aec, "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
         f"StudyInstanceUID={study}", LOOPBACK, str(port)],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="CT instances in the study")
    parser.add_argument("--finds", type=int, default=200, help="C-FINDs per path and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-qr-"))
    lb_port = free_port()
    try:
        dest = StoreSCP("DEST", work / "dest", ignore=True, fork=True)
        modalities = {
            "BENCH": f"BENCH@{LOOPBACK}:{free_port()}",
            "BENCHVIA": f"BENCHVIA@{LOOPBACK}:{free_port()}",
            "DEST": dest.address,
            DICOMLB_AET: f"{DICOMLB_AET}@{LOOPBACK}:{lb_port}",
        }
        with dest, Orthanc("ORTHANC", modalities=modalities) as orthanc:
            series = make_ct_series(args.instances)
            study = str(series[0].StudyInstanceUID)
            paths = write_series(series, work / "study")
            nbytes = sum(p.stat().st_size for p in paths)
            log(f"loading {len(paths)} instances into Orthanc")
            run_dcmtk(
                "storescu", ["-aec", "ORTHANC", LOOPBACK, str(orthanc.dicom_port), *map(str, paths)]
            )
            with dicomlb(work, lb_port, orthanc.address, dest.address):
                rows = measure(args, orthanc, lb_port, study, work)
        body = report(args, rows, nbytes, load_before)
        print("\n".join(body))
        if not args.no_write:
            write_section("run_qr", body)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(
    args: argparse.Namespace, orthanc: Orthanc, lb_port: int, study: str, work: Path
) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    direct = (orthanc.dicom_port, "ORTHANC")
    via = (lb_port, DICOMLB_AET)
    for n in range(args.repeat):
        log(f"round {n + 1}/{args.repeat}")
        for name, (port, aec) in (("direct", direct), ("dicomlb", via)):
            lat = find_latencies(port, aec, args.finds)
            rows.setdefault(f"find-median {name}", []).append(statistics.median(lat))
            rows.setdefault(f"find-p95 {name}", []).append(sorted(lat)[int(0.95 * len(lat))])
            rows.setdefault(f"get {name}", []).append(get_study(port, aec, study, work / "got"))
        rows.setdefault("move direct", []).append(move_study(*direct, "BENCH", study))
        rows.setdefault("move dicomlb passthrough", []).append(move_study(*via, "BENCH", study))
        rows.setdefault("move dicomlb via_balancer", []).append(move_study(*via, "BENCHVIA", study))
    return rows


def report(
    args: argparse.Namespace, rows: dict[str, list[float]], nbytes: int, load_before: float
) -> list[str]:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    med = {k: statistics.median(v) for k, v in rows.items()}
    n = args.instances
    lines = [
        "## Query/retrieve (`bench/run_qr.py`)",
        "",
        f"{when} · `nproc` = {os.cpu_count()} · 1-min load average before → after "
        f"{load_before:.2f} → {os.getloadavg()[0]:.2f} · Orthanc 1.10.1 · DCMTK 3.6.7 · "
        f"Python {platform.python_version()} · dicomlb git {git}",
        "",
        f"One Orthanc, one study of {n} CT instances ({nbytes / 1e6:.0f} MB); "
        f"C-FIND: {args.finds} study-level queries on one pynetdicom association; C-GET: "
        "getscu to files; C-MOVE: movescu to `storescp --ignore`. Median of "
        f"{args.repeat} interleaved rounds.",
        "",
        "| measure | direct | dicomlb | dicomlb - direct or ratio |",
        "|---|---:|---:|---:|",
    ]
    for what in ("find-median", "find-p95"):
        d, b = med[f"{what} direct"] * 1000, med[f"{what} dicomlb"] * 1000
        lines.append(f"| C-FIND latency, {what[5:]} (ms) | {d:.2f} | {b:.2f} | {b - d:+.2f} ms |")
    d, b = n / med["get direct"], n / med["get dicomlb"]
    lines.append(f"| C-GET (inst/s) | {d:.0f} | {b:.0f} | {b / d:.2f} |")
    d = n / med["move direct"]
    for mode in ("passthrough", "via_balancer"):
        b = n / med[f"move dicomlb {mode}"]
        lines.append(f"| C-MOVE {mode} (inst/s) | {d:.0f} | {b:.0f} | {b / d:.2f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
