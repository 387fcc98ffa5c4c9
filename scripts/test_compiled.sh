#!/usr/bin/env bash
# The compiled stage of scripts/test.sh: dicomlb built with mypyc (setup.py, DICOMLB_COMPILE=1)
# into a second virtualenv, .venv-compiled, with the same test extras; `dicomlb --version` must
# say compiled; then the unit tests and the per-message paths' integration tests (C-STORE
# relay, the wire, leases, query/retrieve, the spool, the HTTP proxy, the adversarial wire
# fuzz) run against that install.
# pytest runs from the repository root, where src/ is not on sys.path, so the compiled package
# is the one imported (tests/conftest.py stops the run otherwise). Extra arguments replace the
# test selection, e.g. `bash scripts/test_compiled.sh tests/unit/test_h1.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-compiled
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# The extras first (mypy builds the compiled modules; this also installs dicomlb pure)...
"$venv/bin/python" -m pip install -q "setuptools>=77" wheel ".[test]"
# ...then dicomlb again, compiled, with the mypy just installed.
DICOMLB_COMPILE=1 "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps \
  --force-reinstall .
version=$("$venv/bin/dicomlb" --version)
echo "$version"
case "$version" in
  *"(compiled with mypyc: "*) ;;
  *) echo "scripts/test_compiled.sh: the build in $venv is not compiled: $version" >&2; exit 1 ;;
esac
export DICOMLB_EXPECT_COMPILED=1
if [ $# -gt 0 ]; then exec "$venv/bin/python" -m pytest "$@"; fi
"$venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider tests/unit \
  tests/integration/test_store_relay.py tests/integration/test_wire.py \
  tests/integration/test_leases.py tests/integration/test_query_retrieve.py \
  tests/integration/test_spool.py tests/integration/test_http_proxy.py \
  tests/adversarial/test_wire_fuzz.py
