"""`python -m dicomlb.reference [DOCS]`: write the generated reference pages into
DOCS/reference (DOCS defaults to ./docs)."""

from __future__ import annotations

import sys
from pathlib import Path

from dicomlb.reference import PAGES


def main(argv: list[str]) -> int:
    directory = Path(argv[0] if argv else "docs") / "reference"
    if not directory.is_dir():
        print(f"{directory} is not a directory; run this from the repository root", file=sys.stderr)
        return 2
    for name, render in PAGES.items():
        page = directory / name
        text = render()
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            page.write_text(text, encoding="utf-8")
            print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
