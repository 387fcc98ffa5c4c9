#!/usr/bin/env bash
# Set up (Debian dcmtk, orthanc, orthanc-dicomweb, orthanc-postgresql, postgresql, nginx,
# chromium, curl; prometheus for promtool; haproxy for several instances behind one address;
# docker.io, busybox-static and debootstrap for a real Docker engine; systemd for
# systemd-analyze; gcc and python3-dev for the mypyc build; the project with its test extras)
# and run lint, the documentation build and tests, then the per-message tests again against
# dicomlb compiled with mypyc (scripts/test_compiled.sh). The browser test drives Debian's
# chromium through playwright (no browser download). Extra arguments go to one pytest run over
# the whole suite instead (`-m slow` runs the slow tests; no coverage then).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test gcc python3-dev dcmtk orthanc orthanc-dicomweb orthanc-postgresql postgresql nginx chromium curl prometheus haproxy docker.io busybox-static debootstrap systemd
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/lint-imports  # the layers (.importlinter)
.venv/bin/mypy  # all of src, strictly ([tool.mypy] in pyproject.toml)
.venv/bin/vulture src scripts/vulture_whitelist.py --min-confidence 60  # no dead code
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet  # the site from docs/ (mkdocs.yml)
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi  # e.g. -m slow, or a few files
# The unit tests once under coverage, and the shells and services gated on it
# (scripts/unit_coverage.py); CPU-time budgets (`timing`) and the other suites once without.
.venv/bin/python -m pytest tests/unit -m "not slow and not timing" --cov=dicomlb --cov-report=term:skip-covered
.venv/bin/python scripts/unit_coverage.py
.venv/bin/python -m pytest tests/unit -m "timing and not slow"
.venv/bin/python -m pytest -m "not slow" --ignore=tests/unit
# The compiled stage: the same package built with mypyc, in .venv-compiled, against the unit
# tests and the per-message paths' integration tests (dicomlb must install and pass both ways).
exec bash scripts/test_compiled.sh
