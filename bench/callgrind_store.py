"""Instructions per small C-STORE in dicomlb, user space only (valgrind callgrind).

    python3 bench/callgrind_store.py [--small N] [--warmup N] [--top K]
                                     [--dicomlb-src DIR | --python PY]

dicomlb runs under ``valgrind --tool=callgrind`` with collection off; after a warm-up send,
collection is switched on (``callgrind_control -i on``) for one storescu association of N
small instances to a ``storescp --ignore`` sink, then off, and the profile dumped.
Instruction counts do not depend on what else the machine runs (steady to well under 1 %
between runs), so this is the measure for changes too small to see in CPU time; the kernel's
share (system calls, TCP) is not in it: `count_store.py` counts those.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_store import (  # noqa: E402
    DICOMLB_AET,
    DICOMLB_CONFIG,
    OUT,
    SINK_AET,
    Target,
    add_build_options,
    build_of,
    log,
    send,
    synthesise,
)
from tests.peers import StoreSCP, free_port, stop_process, wait_listening  # noqa: E402


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def total_instructions(out_dir: Path) -> tuple[int, Path]:
    """The `totals:` Ir of the newest dump in `out_dir`."""
    dumps = sorted(out_dir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    for dump in reversed(dumps):
        found = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
        if found is not None and int(found.group(1)) > 0:
            return int(found.group(1)), dump
    names = ", ".join(p.name for p in dumps)
    raise RuntimeError(f"no callgrind dump with instructions in {out_dir}: {names}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="instances counted (300)")
    parser.add_argument("--warmup", type=int, default=100, help="instances sent before (100)")
    parser.add_argument("--top", type=int, default=0, help="print the K costliest functions")
    add_build_options(parser)
    parser.add_argument(
        "--log-level", default="info", help="dicomlb's --log-level (warning: no per-image line)"
    )
    parser.add_argument("--keep", type=Path, help="copy the profile there (callgrind_annotate)")
    args = parser.parse_args(argv)
    data_root = OUT / "data"
    warm = synthesise(f"count-small-{args.warmup}", args.warmup, "small", data_root)
    data = synthesise(f"count-small-{args.small}", args.small, "small", data_root)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cg-")))
        sink = stack.enter_context(StoreSCP(SINK_AET, ignore=True, fork=True))
        port = free_port()
        (workdir / "dicomlb.yaml").write_text(
            DICOMLB_CONFIG.format(port=port, aet=DICOMLB_AET, sink=sink.address)
        )
        build = build_of(args)
        logfile = workdir / "dicomlb.log"
        with open(logfile, "wb") as out:
            process = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={workdir}/callgrind.out.%p",
                    build.interpreter,
                    "-m",
                    "dicomlb",
                    "--log-level",
                    args.log_level,
                    "run",
                    "-c",
                    str(workdir / "dicomlb.yaml"),
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=build.env(),
                start_new_session=True,
            )
        stack.callback(stop_process, process)
        wait_listening(port, timeout=300, process=process, what="dicomlb", log=logfile)
        target = Target(path="dicomlb", port=port, aec=DICOMLB_AET)
        send(target, warm, 1)
        control(process.pid, "-z")
        control(process.pid, "-i", "on")
        send(target, data, 1)
        control(process.pid, "-i", "off")
        control(process.pid, "-d")
        total, dump = total_instructions(workdir)
        per = total / data.count
        log(f"dicomlb: {total:,} instructions for {data.count} small instances")
        print(f"instructions per small instance: {per:,.0f}")
        if args.keep is not None:
            shutil.copyfile(dump, args.keep)
        if args.top:
            report = subprocess.run(
                ["callgrind_annotate", "--inclusive=no", str(dump)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            lines = [line for line in report.splitlines() if re.match(r"\s*[\d,]+ \(", line)]
            print("\n".join(lines[: args.top]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
