"""What a DIMSE status code means: PS3.7 C.4's categories, in one table (pure)."""

from __future__ import annotations

import enum


class Category(enum.StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    CANCEL = "cancel"
    PENDING = "pending"
    FAILURE = "failure"


# Python 3.11's EnumType.__getattr__ makes `Category.X` slow to look up; every answered
# message is categorised.
_SUCCESS, _WARNING, _CANCEL, _PENDING, _FAILURE = (
    Category.SUCCESS,
    Category.WARNING,
    Category.CANCEL,
    Category.PENDING,
    Category.FAILURE,
)
_DONE = frozenset({_SUCCESS, _WARNING})

WARNING_MASK = 0xF000
WARNING_GROUP = 0xB000  # 0xBxxx: done, with a warning
ATTRIBUTE_WARNING = 0x0001  # optional attributes not supported / list not supported
CANCEL = 0xFE00
PENDING = (0xFF00, 0xFF01)


def category(status: int) -> Category:
    """The PS3.7 C.4 category of `status`; anything not listed is a failure."""
    if status == 0:
        return _SUCCESS
    if status == ATTRIBUTE_WARNING or (status & WARNING_MASK) == WARNING_GROUP:
        return _WARNING
    if status == CANCEL:
        return _CANCEL
    if status in PENDING:
        return _PENDING
    return _FAILURE


def succeeded(status: int) -> bool:
    """The operation was done (success or a warning): for a C-STORE, the peer kept the
    instance."""
    return category(status) in _DONE
