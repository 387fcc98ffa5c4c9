"""C-STORE throughput, side by side: direct, through HAProxy (TCP mode), through dicomlb.

    python3 bench/run_store.py [--quick] [--repeat N] [--only direct,haproxy]

DCMTK ``storescu`` sends synthetic CT (512x512, 16-bit, ~0.5 MB) and small (64x64, ~9 KB)
instances to a ``storescp --ignore --fork`` sink over 1 association and over 4 in parallel
(4 storescu processes at once, a quarter of the files each). Every path gets identical
storescu arguments and files; only the port and called AE title differ. Each measurement
is repeated (paths interleaved, order rotated per round) and the median kept. This machine
is shared and noisy: read the ratios, not the absolutes (DESIGN.md, "bench/").

Every process gets TCP_NODELAY=1 (DESIGN.md decision 5); every subprocess has a timeout and
every server is stopped on the way out. Results: a table on stdout and a section in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import write_section  # noqa: E402
from tests.dicomdata import make_ct_series, make_small, write_series  # noqa: E402
from tests.peers import (  # noqa: E402
    DicomlbProcess,
    PeerError,
    StoreSCP,
    dcmtk_tool,
    echoscu,
    free_port,
    peer_env,
    stop_process,
    wait_listening,
)

OUT = REPO / "bench" / "out"
PATHS = ("direct", "haproxy", "dicomlb")
CONCURRENCY = (1, 4)
SINK_AET = "SINK"
DICOMLB_AET = "DICOMLB"
STORESCU_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSet:
    """One synthesised workload: ``parts`` directories holding a quarter of the files each."""

    name: str
    parts: tuple[Path, ...]
    count: int
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where storescu sends: a port and the AE title to call there."""

    path: str
    port: int
    aec: str


@dataclass(frozen=True, slots=True)
class Build:
    """Which dicomlb a bench starts: the tree at `src` (on PYTHONPATH, under this Python), or
    with `python` the dicomlb installed for that Python (a venv built with DICOMLB_COMPILE=1)."""

    src: Path
    python: str | None = None

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable

    def env(self) -> dict[str, str]:
        """The peer environment for dicomlb, with `src` first on PYTHONPATH unless `python`."""
        if self.python is not None:
            return peer_env()
        path = [str(self.src.resolve()), os.environ.get("PYTHONPATH")]
        return peer_env({"PYTHONPATH": os.pathsep.join(filter(None, path))})


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """--dicomlb-src and --python, for every bench that starts dicomlb."""
    parser.add_argument(
        "--dicomlb-src",
        type=Path,
        default=REPO / "src",
        help="directory put on PYTHONPATH for `python3 -m dicomlb` (default: this tree's src)",
    )
    parser.add_argument(
        "--python",
        help="run the dicomlb installed for this Python instead (e.g. .venv-compiled/bin/python, "
        "a DICOMLB_COMPILE=1 build); --dicomlb-src is then not used",
    )


def build_of(args: argparse.Namespace) -> Build:
    # Absolute but not resolved: a venv's python is a symlink that finds its venv by name.
    python = os.path.abspath(args.python) if args.python else None
    return Build(src=args.dicomlb_src, python=python)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the result table."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def synthesise(name: str, count: int, kind: str, root: Path) -> DataSet:
    """Write ``count`` instances split over 4 directories; reuse them if already there."""
    base = root / name
    stamp = base / f".complete-{kind}-{count}"
    parts = tuple(base / f"part{i}" for i in range(4))
    if not stamp.exists():
        shutil.rmtree(base, ignore_errors=True)
        started = time.perf_counter()
        per_part = [count // 4 + (1 if i < count % 4 else 0) for i in range(4)]
        study = None
        for part, n in zip(parts, per_part, strict=True):
            if kind == "ct":
                datasets = make_ct_series(n, study_uid=study)
                study = str(datasets[0].StudyInstanceUID)
            else:
                datasets = make_small(n, modality="CT")
            write_series(datasets, part)
        stamp.touch()
        log(f"synthesised {count} {name} instances in {time.perf_counter() - started:.1f}s")
    files = [f for part in parts for f in part.iterdir() if f.is_file()]
    if len(files) != count:
        raise RuntimeError(f"{base}: expected {count} files, found {len(files)}; delete it")
    return DataSet(name=name, parts=parts, count=count, nbytes=sum(f.stat().st_size for f in files))


# --------------------------------------------------------------------------- proxies


@contextlib.contextmanager
def haproxy(sink_port: int, workdir: Path) -> Iterator[int]:
    """Run HAProxy in TCP mode in the foreground in front of the sink; yield its port."""
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        f"""global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend dicom
    bind 127.0.0.1:{port}
    default_backend sink

backend sink
    server sink 127.0.0.1:{sink_port}
"""
    )
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    logfile = workdir / "haproxy.log"
    with open(logfile, "wb") as out:
        process = subprocess.Popen(
            [binary, "-f", str(cfg), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=peer_env(),
            start_new_session=True,
        )
    try:
        wait_listening(port, timeout=15, process=process, what="haproxy", log=logfile)
        yield port
    finally:
        stop_process(process)


DICOMLB_CONFIG = """listeners:
  dicom: {{bind: "127.0.0.1:{port}", ae_title: {aet}}}
pools:
  sink:
    strategy: round_robin
    health: {{interval: 5s, timeout: 2s, fall: 3, rise: 2}}
    backends:
      - {{name: sink, dicom: "{sink}", max_associations: 8}}
routes:
  - name: ct
    match: {{Modality: CT}}
    pool: sink
  - name: default
    pool: sink
"""


@contextlib.contextmanager
def dicomlb(sink_address: str, workdir: Path, build: Build) -> Iterator[int]:
    """Run ``python3 -m dicomlb run -c cfg.yaml`` in front of the sink; yield its port.

    Raises PeerError with the reason when dicomlb cannot be imported or does not listen.
    """
    env = build.env()
    probe = subprocess.run(
        [build.interpreter, "-c", "import dicomlb.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise PeerError(f"dicomlb CLI not importable ({build}): {last}")
    port = free_port()
    config = DICOMLB_CONFIG.format(port=port, aet=DICOMLB_AET, sink=sink_address)
    with DicomlbProcess(config, port, workdir / "dicomlb", env=env, python=build.interpreter):
        echo = echoscu("127.0.0.1", port, aet="BENCH", aec=DICOMLB_AET, timeout=30)
        if echo.returncode != 0:
            raise PeerError(f"dicomlb listens but C-ECHO through it failed: {echo.stderr.strip()}")
        yield port


# --------------------------------------------------------------------------- measuring


def storescu_args(target: Target, directory: Path) -> list[str]:
    """Identical for every path: explicit VR LE proposed, directories scanned (``+sd``)."""
    return [
        dcmtk_tool("storescu"),
        "-aet",
        "BENCH",
        "-aec",
        target.aec,
        "-xe",
        "+sd",
        "127.0.0.1",
        str(target.port),
        str(directory),
    ]


def send(target: Target, data: DataSet, concurrency: int) -> float:
    """Wall time for storescu to send every file of ``data`` over ``concurrency`` associations."""
    if concurrency == 1:
        groups: list[Sequence[Path]] = [data.parts]
    elif concurrency == len(data.parts):
        groups = [[part] for part in data.parts]
    else:
        raise ValueError(f"concurrency {concurrency} unsupported; use 1 or {len(data.parts)}")
    commands = []
    for group in groups:
        cmd = storescu_args(target, group[0])
        commands.append(cmd + [str(p) for p in group[1:]])
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=peer_env(),
        )
        for cmd in commands
    ]
    outputs: list[tuple[int, bytes]] = []
    try:
        for process in processes:
            remaining = max(1.0, STORESCU_TIMEOUT - (time.perf_counter() - started))
            output, _ = process.communicate(timeout=remaining)
            outputs.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    elapsed = time.perf_counter() - started
    for code, output in outputs:
        if code != 0:
            text = output.decode(errors="replace").strip()[-800:]
            raise PeerError(f"storescu to {target.path} exited {code}: {text}")
    return elapsed


def measure(
    targets: Sequence[Target], datasets: Sequence[DataSet], repeat: int
) -> dict[tuple[str, int, str], list[float]]:
    """Run every (data set, concurrency, path) ``repeat`` times, paths interleaved."""
    times: dict[tuple[str, int, str], list[float]] = {}
    for round_no in range(repeat):
        shift = round_no % len(targets)
        order = list(targets[shift:]) + list(targets[:shift])
        for data in datasets:
            for concurrency in CONCURRENCY:
                for target in order:
                    seconds = send(target, data, concurrency)
                    times.setdefault((data.name, concurrency, target.path), []).append(seconds)
                    log(
                        f"round {round_no + 1}/{repeat} {data.name:5} x{concurrency} "
                        f"{target.path:8} {seconds:7.3f}s {data.count / seconds:8.0f} inst/s"
                    )
    return times


# --------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    """Versions of everything measured, for the results file."""

    def first_line(cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    dcmtk = first_line([dcmtk_tool("storescu"), "--version"]).strip("$ ").removeprefix("dcmtk: ")
    haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
    haproxy_words = first_line([haproxy_bin, "-v"]).split()
    haproxy_version = haproxy_words[2] if len(haproxy_words) > 2 else "?"
    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        uv = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uv = "not installed"
    return {
        "DCMTK": dcmtk,
        "HAProxy": haproxy_version,
        "Python": platform.python_version(),
        "uvloop": uv,
        "dicomlb": f"git {rev}",
    }


RATIOS = (("dicomlb", "haproxy"), ("haproxy", "direct"), ("dicomlb", "direct"))


def table(
    times: dict[tuple[str, int, str], list[float]],
    datasets: Sequence[DataSet],
    paths: Sequence[str],
    ratios: Sequence[tuple[str, str]] = RATIOS,
) -> list[str]:
    """Markdown lines: throughput per (data set, concurrency, path), then the `ratios` of
    throughputs (path a / path b) among the paths measured."""
    lines = [
        "| data | assoc | path | median s | inst/s | MB/s | runs |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    rates: dict[tuple[str, int, str], float] = {}
    for data in datasets:
        for concurrency in CONCURRENCY:
            for path in paths:
                runs = times.get((data.name, concurrency, path))
                if not runs:
                    continue
                median = statistics.median(runs)
                rates[(data.name, concurrency, path)] = data.count / median
                mbps = data.nbytes / median / 1e6
                lines.append(
                    f"| {data.name} ({data.count} x {data.nbytes / data.count / 1e3:.0f} kB) "
                    f"| {concurrency} | {path} | {median:.3f} | {data.count / median:.0f} "
                    f"| {mbps:.0f} | {len(runs)} |"
                )
    present = [(a, b) for a, b in ratios if a in paths and b in paths]
    if present:
        lines += ["", "| data | assoc | " + " | ".join(f"{a} / {b}" for a, b in present) + " |"]
        lines.append("|---|---:|" + "---:|" * len(present))
        for data in datasets:
            for concurrency in CONCURRENCY:
                cells = []
                for a, b in present:
                    ra, rb = (
                        rates.get((data.name, concurrency, a)),
                        rates.get((data.name, concurrency, b)),
                    )
                    cells.append(f"{ra / rb:.2f}" if ra and rb else "-")
                lines.append(f"| {data.name} | {concurrency} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 CT + 500 small, 1 round")
    parser.add_argument("--repeat", type=int, help="rounds per measurement (default 3; quick 1)")
    parser.add_argument("--ct", type=int, help="number of CT instances (default 400)")
    parser.add_argument("--small", type=int, help="number of small instances (default 2000)")
    parser.add_argument(
        "--only", default=",".join(PATHS), help="comma-separated paths (direct,haproxy,dicomlb)"
    )
    add_build_options(parser)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.ct = args.ct or (100 if args.quick else 400)
    args.small = args.small or (500 if args.quick else 2000)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.only) - set(PATHS)
    if unknown:
        parser.error(f"--only: unknown path(s) {sorted(unknown)}; choose from {', '.join(PATHS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Synthesise, start the sink and proxies, measure, report."""
    args = parse_args(argv)
    load_before = os.getloadavg()
    data_root = OUT / "data"
    datasets = [
        synthesise("ct", args.ct, "ct", data_root),
        synthesise("small", args.small, "small", data_root),
    ]
    warmup = synthesise("warmup", 40, "small", data_root)
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-")))
        sink = stack.enter_context(StoreSCP(SINK_AET, ignore=True, fork=True))
        targets: list[Target] = []
        if "direct" in args.only:
            targets.append(Target(path="direct", port=sink.port, aec=SINK_AET))
        if "haproxy" in args.only:
            try:
                port = stack.enter_context(haproxy(sink.port, workdir))
                targets.append(Target(path="haproxy", port=port, aec=SINK_AET))
            except PeerError as err:
                skipped["haproxy"] = str(err)
        if "dicomlb" in args.only:
            try:
                port = stack.enter_context(dicomlb(sink.address, workdir, build_of(args)))
                targets.append(Target(path="dicomlb", port=port, aec=DICOMLB_AET))
            except PeerError as err:
                skipped["dicomlb"] = str(err)
        for path, reason in skipped.items():
            log(f"SKIPPING {path}: {reason}")
        if not targets:
            log("nothing to measure")
            return 1
        for target in targets:  # warm up: first association, page cache, imports
            send(target, warmup, 1)
        times = measure(targets, datasets, args.repeat)

    paths = [t.path for t in targets]
    rows = table(times, datasets, paths)
    print("\n".join(rows))
    if not args.no_results:
        info = versions()
        load = " → ".join(f"{x[0]:.2f}" for x in (load_before, os.getloadavg()))
        body = [
            "## C-STORE throughput (`bench/run_store.py`)",
            "",
            f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} · `nproc` = {os.cpu_count()} · "
            f"1-min load average before → after {load} · "
            + " · ".join(f"{k} {v}" for k, v in info.items()),
            "",
            f"storescu `-aet BENCH -aec <SINK|DICOMLB> -xe +sd DIR...` → "
            f"`storescp --ignore --fork +xa` sink; TCP_NODELAY=1 everywhere; median of "
            f"{args.repeat} interleaved round(s){' (--quick)' if args.quick else ''}; "
            f"MB = 10⁶ bytes of Part-10 files.",
            "",
            *rows,
        ]
        for path, reason in skipped.items():
            body += ["", f"Skipped {path}: {reason.splitlines()[0]}"]
        write_section("run_store", body)
        log("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
