"""The routing-tag scanner's worst case: CPU seconds per MiB of crafted data sets.

    python3 bench/run_scan.py [--repeat N] [--size BYTES] [--only KIND,...] [--no-results]
    python3 bench/run_scan.py --dicomlb-src /work/main/src --only fallback-elements --no-results

Each kind below is a data set built to make `HeaderScanner` work hard (no routing tag before
the cap, so the scan runs to `MAX_BYTES`). It is fed in P-DATA-sized fragments (4 KiB and
16 KiB) as `services.store` feeds it, until the scanner is done (the cap) or the data
ends; the CPU time (`time.process_time`, the best of `--repeat` runs) is what one such
C-STORE costs the event loop. `--dicomlb-src` measures another checkout's scanner (e.g.
main before the fix; expect minutes for the `fallback-*` kinds at 1 MiB there).

Results: a table on stdout and the `run_scan` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def _source_path() -> None:
    """`--dicomlb-src DIR` first on sys.path, before dicomlb is imported."""
    if "--dicomlb-src" in sys.argv:
        sys.path.insert(0, sys.argv[sys.argv.index("--dicomlb-src") + 1])
    sys.path[:0] = [str(BENCH.parent)]


_source_path()

from bench.results import git_head, write_section  # noqa: E402

from dicomlb.dicom import uids  # noqa: E402
from dicomlb.dicom.tags import MAX_BYTES, HeaderScanner  # noqa: E402

# What a typical config asks for: routing on Modality, affinity on the study.
WANTED = frozenset({0x00080060, 0x0020000D, 0x00100020, 0x00080005})
FRAGMENTS = (4096, 16384)

_SQ_UNDEFINED = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
_ITEM_UNDEFINED = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
_EMPTY_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
_ITEM_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQ_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
# Not an item where an item must start: the walker leaves the rest to pydicom.
_ODD_START = _SQ_UNDEFINED + _ITEM_DELIMITER
_TINY = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 0)  # an empty element: 8 bytes
_TINY_IMPLICIT = struct.pack("<HHL", 0x0008, 0x0100, 0)
# An item holding an undefined-length sequence with one empty item: 44 bytes, 3 datasets.
_NESTED = (
    _ITEM_UNDEFINED
    + struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    + _EMPTY_ITEM
    + _SEQ_DELIMITER
    + _ITEM_DELIMITER
)


def _fill(prefix: bytes, unit: bytes, size: int) -> bytes:
    return (prefix + unit * ((size - len(prefix)) // len(unit) + 1))[:size]


def _deflated(size: int) -> bytes:
    plain = _fill(_SQ_UNDEFINED + _ITEM_UNDEFINED, _TINY, size)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(plain) + deflater.flush()


# kind -> (transfer syntax, data set of `size` bytes (inflated), what it exercises)
KINDS: dict[str, tuple[str, Callable[[int], bytes], str]] = {
    "fallback-elements": (
        uids.EXPLICIT_VR_LE,
        lambda size: _fill(_ODD_START + _ITEM_UNDEFINED, _TINY, size),
        "pydicom fallback; 8-byte elements in an undefined-length item",
    ),
    "fallback-items": (
        uids.EXPLICIT_VR_LE,
        lambda size: _fill(_ODD_START, _EMPTY_ITEM, size),
        "pydicom fallback; empty 8-byte items (a Dataset each)",
    ),
    "fallback-nested": (
        uids.EXPLICIT_VR_LE,
        lambda size: _fill(_ODD_START, _NESTED, size),
        "pydicom fallback; 44-byte items each holding a sequence",
    ),
    "walker-elements": (
        uids.EXPLICIT_VR_LE,
        lambda size: _fill(_SQ_UNDEFINED + _ITEM_UNDEFINED, _TINY, size),
        "walker; 8-byte elements in an undefined-length item",
    ),
    "walker-implicit": (
        uids.IMPLICIT_VR_LE,
        lambda size: _fill(
            struct.pack("<HHL", 0x0008, 0x1140, 0xFFFFFFFF) + _ITEM_UNDEFINED, _TINY_IMPLICIT, size
        ),
        "walker, implicit VR; 8-byte elements in an undefined-length item",
    ),
    "walker-items": (
        uids.EXPLICIT_VR_LE,
        lambda size: _fill(_SQ_UNDEFINED, _EMPTY_ITEM, size),
        "walker; empty 8-byte items",
    ),
    "deflated": (
        uids.DEFLATED_EXPLICIT_VR_LE,
        _deflated,
        "walker on deflate: ~1 KiB on the wire inflates to the cap",
    ),
}


def scan_cpu(ts: str, data: bytes, fragment: int) -> tuple[float, int]:
    """CPU seconds to scan `data` fed in `fragment`-byte pieces, and the bytes fed."""
    started = time.process_time()
    scanner = HeaderScanner(ts, WANTED)
    fed = 0
    for start in range(0, len(data), fragment):
        piece = data[start : start + fragment]
        fed += len(piece)
        if scanner.feed(piece):
            break
    else:
        scanner.finish()
    return time.process_time() - started, fed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=MAX_BYTES + 64 * 1024)
    parser.add_argument("--only", default=",".join(KINDS))
    parser.add_argument("--dicomlb-src", help="import dicomlb from this src directory")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load = os.getloadavg()[0]
    rows = [
        "| kind | what | fragment | KiB on the wire | KiB scanned | CPU ms per message "
        "| CPU s per MiB scanned |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in args.only.split(","):
        ts, build, what = KINDS[kind]
        data = build(args.size)
        for fragment in FRAGMENTS:
            runs = [scan_cpu(ts, data, fragment) for _ in range(args.repeat)]
            best = min(seconds for seconds, _ in runs)
            fed = runs[0][1]
            # Deflate: what the scanner walks is the inflated data set, up to the cap.
            scanned = min(args.size, MAX_BYTES) if ts == uids.DEFLATED_EXPLICIT_VR_LE else fed
            row = (
                f"| {kind} | {what} | {fragment // 1024} KiB | {fed / 1024:.1f} | "
                f"{scanned // 1024} | {best * 1000:.1f} | {best / (scanned / (1 << 20)):.3f} |"
            )
            print(row, flush=True)
            rows.append(row)
    if args.no_results:
        return
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_section(
        "run_scan",
        [
            "## Routing-tag scanner, worst case (`bench/run_scan.py`)",
            "",
            f"{when} · `nproc` = {os.cpu_count()} · 1-min load average before {load:.2f} · "
            f"Python {sys.version.split()[0]} · dicomlb git {git_head()}",
            "",
            f"Crafted data sets with no routing tag before the {MAX_BYTES // 1024} KiB cap, "
            "fed as P-DATA fragments until the scanner gives up; CPU time of one C-STORE's "
            f"scan (`time.process_time`), best of {args.repeat}. Reproduce: "
            "`python3 bench/run_scan.py`.",
            "",
            *rows,
            "",
            "Before the fix, the `fallback-*` kinds re-read the whole buffer with pydicom on "
            "every fragment: `fallback-elements` took 0.16 s for 64 KiB and 2.24 s for "
            "256 KiB in 4 KiB fragments (quadratic; ~36 s extrapolated for 1 MiB, the event "
            "loop blocked all along). Now pydicom reads the buffer once, at the end of the "
            "data set or at a cap.",
            "",
            "Reading: the worst per MiB is pydicom on empty 8-byte items (a Dataset each), "
            "~1.5 s of CPU per MiB; `FALLBACK_MAX_BYTES` (64 KiB from the element the walker "
            "cannot follow) keeps one such C-STORE under ~0.1 s. Everything else is the "
            "incremental walker, ~0.03-0.04 s per MiB at the 1 MiB cap, the same for 4 KiB "
            "and 16 KiB fragments (linear: no work is repeated per fragment). Deflate is the "
            "worst per byte on the wire: ~1.6 KiB inflates to the 1 MiB cap, ~40 ms per "
            "message. Moving the fallback's cases into the walker would bring the first rows "
            "to the walker's figure.",
        ],
    )


if __name__ == "__main__":
    main()
