"""dicomlb's build: pure Python, or with DICOMLB_COMPILE=1 its per-message modules compiled
with mypyc (needs mypy and a C compiler at build time, so it is opt-in):

    DICOMLB_COMPILE=1 .venv/bin/pip install --no-build-isolation .

Everything else is in pyproject.toml; `dicomlb --version` says which build runs.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILE = os.environ.get("DICOMLB_COMPILE") == "1"

# Compiled: the modules every C-STORE and HTTP request runs through, where mypyc cut
# instructions per message measurably (bench/RESULTS.md, "mypyc: compiled vs pure Python").
COMPILED = [
    "dicomlb/dicom/pdu.py",
    "dicomlb/dicom/association.py",
    "dicomlb/dicom/dimse.py",
    "dicomlb/dicom/tags.py",
    "dicomlb/http/h1.py",
    "dicomlb/http/paths.py",
    "dicomlb/placement.py",
    "dicomlb/routing.py",
    "dicomlb/pools.py",
    "dicomlb/http/routing.py",
    "dicomlb/http/balancing.py",
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

if COMPILE:
    from mypyc.build import mypycify

    setup(ext_modules=mypycify([f"src/{path}" for path in COMPILED], opt_level="3"))
else:
    setup()
