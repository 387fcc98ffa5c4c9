#!/usr/bin/env bash
# Set up and run `dicomlb demo` (extra arguments are passed on, e.g. --once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""
exec .venv/bin/dicomlb demo "$@"
