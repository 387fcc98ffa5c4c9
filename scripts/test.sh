#!/usr/bin/env bash
# Set up (Debian dcmtk + orthanc + orthanc-dicomweb, the project with its test extras) and run lint and tests.
# Extra arguments go to pytest; `-m slow` runs the slow soak tests instead of the default set.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test dcmtk orthanc orthanc-dicomweb
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
