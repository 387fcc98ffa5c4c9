"""bench/RESULTS.md: each benchmark script owns one marked section and refreshes only it."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PREAMBLE = (
    "# Benchmark results\n\nWritten by the scripts in bench/; see bench/README.md. The machine "
    "is shared and noisy: compare the ratios, not the absolutes.\n"
)


def write_section(name: str, body: list[str]) -> None:
    """Replace the `<!-- name:begin -->` … `<!-- name:end -->` section (added at the end
    when missing); everything else in the file stays as it is."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = "\n".join([begin, *body, end])
    text = RESULTS.read_text() if RESULTS.exists() else PREAMBLE
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        RESULTS.write_text(head + section + rest.split(end, 1)[1])
    else:
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + section + "\n")


def git_head() -> str:
    """The short commit the benchmark ran on ("unknown" outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
