"""PS3.7 C.4 status categories."""

from __future__ import annotations

import pytest

from dicomlb.dicom.status import Category, category, succeeded


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        (0x0000, True),
        (0x0001, True),
        (0xB000, True),
        (0xB007, True),
        (0xA700, False),
        (0x0110, False),
        (0xC000, False),
        (0xA900, False),
    ],
)
def test_a_store_succeeded_on_success_and_warnings(status: int, stored: bool) -> None:
    assert succeeded(status) is stored


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, Category.SUCCESS),
        (0x0001, Category.WARNING),
        (0xB006, Category.WARNING),
        (0xFE00, Category.CANCEL),
        (0xFF00, Category.PENDING),
        (0xFF01, Category.PENDING),
        (0xA801, Category.FAILURE),
        (0x0122, Category.FAILURE),
        (0xFFFF, Category.FAILURE),
    ],
)
def test_categories(status: int, expected: Category) -> None:
    assert category(status) is expected
