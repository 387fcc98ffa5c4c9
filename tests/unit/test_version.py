"""`dicomlb --version` says which build runs: pure Python, or compiled with mypyc (setup.py)."""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

from dicomlb import __version__
from dicomlb.cli import loaded_module_files, main, version_line

EXTENSION = EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def test_pure_python_when_no_module_came_from_an_extension() -> None:
    files = ["/site/dicomlb/__init__.py", "/site/dicomlb/dicom/pdu.py", ""]
    assert version_line("0.1.0", files) == "dicomlb 0.1.0 (pure Python)"


def test_compiled_counts_the_modules_loaded_from_extensions() -> None:
    files = ["/site/dicomlb/__init__.py", f"/site/dicomlb/dicom/pdu{EXTENSION}"]
    assert version_line("0.1.0", files) == "dicomlb 0.1.0 (compiled with mypyc: 1 module)"
    files.append(f"/site/dicomlb/http/h1{EXTENSION}")
    assert version_line("0.1.0", files) == "dicomlb 0.1.0 (compiled with mypyc: 2 modules)"


def test_version_names_the_build_these_tests_import(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    said = capsys.readouterr().out.strip()
    assert said == version_line(__version__, loaded_module_files())
    # scripts/test.sh's compiled stage sets it; everywhere else the tree's src/ runs.
    expect_compiled = os.environ.get("DICOMLB_EXPECT_COMPILED") == "1"
    assert said.endswith("(pure Python)") is not expect_compiled, said
