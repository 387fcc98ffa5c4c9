"""The documentation: README.md and the mkdocs site in docs/. Every relative link reaches a
file, and every YAML block marked `<!-- config -->` is a whole configuration that dicomlb
accepts (`mkdocs build --strict` in scripts/test.sh checks the site's own links and anchors)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomlb.config import build_snapshot

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
MARKER = "<!-- config -->"

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MARKED_YAML = re.compile(r"^<!-- config -->\n```yaml\n(.*?)^```[ \t]*$", re.M | re.S)


def relative_links(text: str) -> list[str]:
    """Link targets outside code that name a file of the repository (no scheme, not just an
    anchor), without their anchor."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def marked_configs() -> list[tuple[str, str]]:
    found = []
    for path in [README, *PAGES]:
        text = path.read_text()
        for match in MARKED_YAML.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def test_readme_fits_a_first_read() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move details into docs/"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("\n", 6)[:6]
    assert head[2] == "```sh"
    assert head[3].startswith("bash scripts/demo.sh ")
    assert head[4].startswith("bash scripts/test.sh ")


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file(path: Path) -> None:
    missing = [
        target
        for target in relative_links(path.read_text())
        if not (path.parent / target).resolve().is_file()
    ]
    assert missing == [], f"{path.relative_to(ROOT)} links to missing files"


def test_link_finder_sees_links_and_skips_code() -> None:
    text = "See [a](x.md#h), ![img](p.png), [web](https://e.org), [top](#t), `[c](no.md)`.\n"
    text += "```\n[d](fenced.md)\n```\n"
    assert relative_links(text) == ["x.md", "p.png"]


def test_marked_examples_are_found() -> None:
    where = [place for place, _ in marked_configs()]
    assert any(place.startswith("README.md:") for place in where)
    assert len(where) >= 5


@pytest.mark.parametrize(
    ("place", "text"), [pytest.param(place, text, id=place) for place, text in marked_configs()]
)
def test_marked_example_is_a_valid_configuration(place: str, text: str) -> None:
    build_snapshot(yaml.safe_load(text), place)


def test_dicomlb_check_accepts_the_first_configuration(tmp_path: Path) -> None:
    first = next(
        text for place, text in marked_configs() if place.startswith("docs/getting-started.md:")
    )
    config = tmp_path / "lb.yaml"
    config.write_text(first)
    done = subprocess.run(
        [sys.executable, "-m", "dicomlb", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "DICOMLB" in done.stdout
