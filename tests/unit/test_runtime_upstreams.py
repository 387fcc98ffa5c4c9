"""A reload keeps an unchanged backend's upstream pool (its associations and learned
capacity) and gives it the pool's new settings (`upstream`, timeouts)."""

from __future__ import annotations

from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.runtime import Runtime
from dicomlb.snapshot import UpstreamMode


def config(**pool: Any) -> dict[str, Any]:
    return {
        "pools": {"p": {"backends": [{"name": "scp", "dicom": "SCP@127.0.0.1:104"}], **pool}},
        "routes": [{"name": "all", "pool": "p"}],
    }


def test_a_reload_keeps_the_upstream_pool_with_the_new_settings() -> None:
    old = Runtime(build_snapshot(config()))
    assert not old.upstreams["scp"].per_client
    new_snapshot = build_snapshot(config(upstream="per_client", connect_timeout="2s"))
    new = Runtime(new_snapshot, old.backends, old.upstreams)
    upstream = new.upstreams["scp"]
    assert upstream is old.upstreams["scp"]
    assert upstream.per_client
    assert upstream.pool.upstream is UpstreamMode.PER_CLIENT
    assert upstream.pool.connect_timeout == 2.0
