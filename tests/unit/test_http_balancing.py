"""Slow start, passive-ejection window and the pool options that set them (pure)."""

from __future__ import annotations

import random
from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.health import HealthState
from dicomlb.http.balancing import MIN_SHARE, FailureWindow, SlowStart, ramping_excluded
from dicomlb.pools import BackendState, Pool
from tests.unit.test_http_parts import config, errors


def pool_with(http: dict[str, Any]) -> Pool:
    data = config()
    data["pools"]["web"]["http"] = http
    pool_config = build_snapshot(data, "lb.yaml").pools["web"]
    return Pool(pool_config, [BackendState(b, pool_config.health) for b in pool_config.backends])


def test_pool_options_parse() -> None:
    options = pool_with(
        {
            "slow_start": "30s",
            "max_connections": 8,
            "acquire_timeout": "2s",
            "passive": {"failures": 3, "window": "5s"},
        }
    ).config.http
    assert options is not None
    assert (options.slow_start, options.max_connections, options.acquire_timeout) == (30, 8, 2)
    assert (options.passive, options.passive_failures, options.passive_window) == (True, 3, 5)
    off = pool_with({"passive": False}).config.http
    assert off is not None and off.passive is False
    data = config()
    data["pools"]["web"]["http"] = {"passive": {"failures": 0}}
    assert "pools.web.http.passive" in errors(data)


def test_slow_start_ramps_after_recovery_only() -> None:
    health = HealthState(fall=1, rise=1)
    ramp = SlowStart(30.0)
    assert ramp.share(health, 0.0) == 1.0  # up from the start: no ramp
    health.failure(0.0)
    assert ramp.share(health, 1.0) == 1.0  # down (the pool skips it anyway)
    assert health.success()  # down → up
    assert ramp.share(health, 10.0) == MIN_SHARE
    assert ramp.share(health, 25.0) == 0.5
    assert ramp.share(health, 40.0) == 1.0
    assert ramp.share(health, 41.0) == 1.0
    assert SlowStart(0.0).share(health, 5.0) == 1.0


def test_ramping_backend_gets_its_share_and_never_nothing() -> None:
    pool = pool_with({"slow_start": "30s"})
    a, b = pool.backends
    rng = random.Random(7)
    shares = {"a": 0.25, "b": 1.0}
    skipped = sum(
        "a" in ramping_excluded(pool.backends, lambda x: shares[x.name], rng, frozenset())
        for _ in range(4000)
    )
    assert 2800 < skipped < 3200  # a takes part in ~25% of picks
    shares["b"] = 0.0  # both ramping and both drawn out: one must still be picked
    b.health.up = True
    for _ in range(100):
        excluded = ramping_excluded(pool.backends, lambda x: 0.0, rng, frozenset())
        assert pool.pick("", excluded) is not None
    # an excluded (already tried) backend stays excluded
    assert "b" in ramping_excluded(pool.backends, lambda x: 1.0, rng, frozenset({"b"}))
    assert a.available


def test_failure_window_needs_the_threshold_within_the_window() -> None:
    window = FailureWindow(failures=3, window=10.0)
    assert not window.failure(0.0)
    assert not window.failure(5.0)
    assert not window.failure(11.0)  # 3 failures, but over 11 s
    assert window.failure(12.0)  # 5, 11, 12: within 10 s
    assert not window.failure(13.0)  # starts over


def test_eject_takes_a_backend_down_once() -> None:
    health = HealthState(fall=3, rise=2)
    assert health.eject(0.0) and not health.up
    assert not health.eject(0.0)
    health.success()
    assert health.success() and health.up and health.recoveries == 1
