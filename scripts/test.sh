#!/usr/bin/env bash
# Set up (Debian dcmtk, orthanc, orthanc-dicomweb, orthanc-postgresql, postgresql, nginx,
# chromium, curl; prometheus for promtool; haproxy for several instances behind one address;
# docker.io, busybox-static and debootstrap for a real Docker engine; systemd for
# systemd-analyze; the project with its test extras) and run lint, the documentation build
# and tests. The browser test drives Debian's chromium through playwright (no browser
# download). Extra arguments go to pytest; `-m slow` runs the slow tests instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test dcmtk orthanc orthanc-dicomweb orthanc-postgresql postgresql nginx chromium curl prometheus haproxy docker.io busybox-static debootstrap systemd
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/lint-imports  # the layers (.importlinter)
.venv/bin/mypy  # all of src, strictly ([tool.mypy] in pyproject.toml)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet  # the site from docs/ (mkdocs.yml)
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
