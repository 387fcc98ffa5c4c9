"""With DICOMLB_EXPECT_COMPILED=1 (scripts/test.sh's compiled stage) the tests must run against
the mypyc build installed in the virtualenv, not the tree's src/: stop at once otherwise."""

from __future__ import annotations

import os

import pytest

import dicomlb
from dicomlb.cli import loaded_module_files, version_line


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("DICOMLB_EXPECT_COMPILED") != "1":
        return
    said = version_line(dicomlb.__version__, loaded_module_files())
    if said.endswith("(pure Python)"):
        raise pytest.UsageError(
            f"DICOMLB_EXPECT_COMPILED=1 but {said} runs, imported from {dicomlb.__file__}; "
            "install with DICOMLB_COMPILE=1 and run pytest where src/ is not on sys.path"
        )
