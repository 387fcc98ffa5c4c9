"""dicomlb's build: pure Python, or with DICOMLB_COMPILE=1 its per-message modules compiled
with mypyc (needs mypy and a C compiler at build time, so it is opt-in):

    DICOMLB_COMPILE=1 .venv/bin/pip install --no-build-isolation .

Everything else is in pyproject.toml; `dicomlb --version` says which build runs.
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import setup

COMPILE = os.environ.get("DICOMLB_COMPILE") == "1"

# Compiled: the modules every C-STORE and HTTP request runs through, where mypyc cut the
# instructions per message measurably (bench/RESULTS.md, "mypyc: compiled vs pure Python").
COMPILED = [
    # sans-IO cores
    "dicomlb/dicom/pdu.py",
    "dicomlb/dicom/association.py",
    "dicomlb/dicom/dimse.py",
    "dicomlb/dicom/tags.py",
    "dicomlb/http/h1.py",
    "dicomlb/http/paths.py",
    # routing and placement decisions
    "dicomlb/routing.py",
    "dicomlb/placement.py",
    "dicomlb/pools.py",
    "dicomlb/http/routing.py",
    "dicomlb/http/balancing.py",
    # the shells of the relay paths
    "dicomlb/dicom/acceptor.py",
    "dicomlb/services/relay.py",
    "dicomlb/services/session.py",
    "dicomlb/services/store.py",
    "dicomlb/dicom/upstream.py",
    "dicomlb/delivery/fate.py",
    "dicomlb/runtime.py",
    "dicomlb/http/proxy.py",
    "dicomlb/http/upstream.py",
]
COMPILED_BUILD = "build/mypyc"  # C sources and extension modules; the pure build uses build/lib
# The steps that only write the project's metadata: compiling there too would run mypy twice
# per install (pip asks for the metadata, then for the wheel).
METADATA_ONLY = {"egg_info", "dist_info"}

if COMPILE and METADATA_ONLY.isdisjoint(sys.argv[1:]):
    from mypyc.build import mypycify

    # From scratch each time: a module taken off COMPILED must not ship as the extension an
    # earlier build left there.
    shutil.rmtree(COMPILED_BUILD, ignore_errors=True)
    setup(
        ext_modules=mypycify(
            [f"src/{path}" for path in COMPILED], opt_level="3", target_dir=COMPILED_BUILD
        ),
        options={"build": {"build_base": COMPILED_BUILD}},
    )
else:
    setup()
