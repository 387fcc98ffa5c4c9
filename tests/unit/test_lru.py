"""BoundedLru: the bounded, least-recently-used-first mapping every peer-keyed table uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomlb.lru import BoundedLru


def test_the_least_recently_used_entry_goes_first() -> None:
    table: BoundedLru[str, int] = BoundedLru(2)
    table.put("a", 1)
    table.put("b", 2)
    assert table.get("a") == 1  # a is now the most recent
    table.put("c", 3)
    assert "b" not in table
    assert list(table) == ["a", "c"]


def test_pop_removes_and_returns_the_value() -> None:
    table: BoundedLru[str, str] = BoundedLru(10)
    for key, value in (("k1", "x"), ("k2", "y"), ("k3", "x")):
        table.put(key, value)
    assert table.pop("k2") == "y"
    assert list(table) == ["k1", "k3"]
    assert table.pop("k2") is None


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedLru(0)


@given(st.integers(1, 8), st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=200))
def test_never_more_than_capacity_and_agrees_with_a_model(
    capacity: int, steps: list[tuple[bool, int]]
) -> None:
    table: BoundedLru[int, int] = BoundedLru(capacity)
    model: list[int] = []  # keys, least recently used first
    for is_put, key in steps:
        if is_put:
            table.put(key, key * 10)
            if key in model:
                model.remove(key)
            model.append(key)
            del model[:-capacity]
        else:
            found = table.get(key)
            assert found == (key * 10 if key in model else None)
            if key in model:
                model.remove(key)
                model.append(key)
        assert len(table) <= capacity
        assert list(table) == model
