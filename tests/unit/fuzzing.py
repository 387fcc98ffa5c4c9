"""What the core fuzz tests share: hypothesis settings (a fast default and a `slow` variant
with many more examples), small fragments, and the check that work grows linearly with the
input (counted calls and CPU time, never wall time)."""

from __future__ import annotations

import random
import sys
import time
import types
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine

# The default run stays fast; `-m slow` runs every property with many more examples.
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST_MACHINE = settings(FAST, max_examples=40, stateful_step_count=30)
SLOW_MACHINE = settings(SLOW, max_examples=1500, stateful_step_count=60)


def fast_and_slow(
    body: Callable[..., None], **strategies: Any
) -> tuple[Callable[..., None], Callable[..., None]]:
    """Two hypothesis tests of `body` over `strategies`: the default one, and a copy marked
    `slow` with many more examples. Bind them to `test_x, test_x_slow` in the module."""

    def copy(name: str) -> Callable[..., None]:
        clone = types.FunctionType(
            body.__code__, body.__globals__, name, body.__defaults__, body.__closure__
        )
        clone.__qualname__ = name
        clone.__annotations__ = dict(body.__annotations__)
        return clone

    name = body.__name__.lstrip("_")
    fast = FAST(given(**strategies)(copy(f"test_{name}")))
    slow = pytest.mark.slow(SLOW(given(**strategies)(copy(f"test_{name}_slow"))))
    return fast, slow


def machine_tests(
    machine: type[RuleBasedStateMachine],
) -> tuple[type[Any], type[Any]]:
    """The TestCase of a state machine, fast, and a `slow` one with many more examples."""
    fast = type(f"Test{machine.__name__}", (machine.TestCase,), {"settings": FAST_MACHINE})
    slow = type(f"Test{machine.__name__}Slow", (machine.TestCase,), {"settings": SLOW_MACHINE})
    return fast, pytest.mark.slow(slow)


def small_pieces(data: bytes, seed: int = 0, *, largest: int = 16) -> list[bytes]:
    """`data` cut into pieces of 1..`largest` bytes (seeded: the same cuts every run)."""
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, largest)
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def count_calls(work: Callable[[], object]) -> int:
    """Python and C function calls made by `work`: work counted, not timed."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(previous)
    return count


def cpu_seconds(work: Callable[[], object], *, repeat: int = 3) -> float:
    """The least CPU time (this process) of `repeat` runs of `work`."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def assert_linear(run: Callable[[int], object], size: int) -> None:
    """`run(n)` feeds about n bytes: 4 times the bytes may cost 4 times the work, with slack,
    not 16 times (what re-reading a growing buffer costs). Calls are counted exactly; CPU
    time, which also sees copying inside C (`bytes += bytes`), gets a generous factor."""
    calls = [count_calls(partial(run, n)) for n in (size, 4 * size)]
    assert calls[1] < 6 * calls[0], f"{calls[0]} calls for {size} bytes, {calls[1]} for 4x"
    cpu = [cpu_seconds(partial(run, n)) for n in (size, 4 * size)]
    # A quadratic step costs 16x; 9x leaves room for caches and a loaded machine.
    assert cpu[1] < 9 * cpu[0] + 0.02, f"{cpu[0]:.4f}s CPU for {size} bytes, {cpu[1]:.4f}s for 4x"
