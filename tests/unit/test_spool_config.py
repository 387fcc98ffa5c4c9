"""The spool's configuration: `ack`, `mirror` on routes and the `spool:` section."""

from __future__ import annotations

from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot, describe, parse_size
from dicomlb.snapshot import Ack, RetryConfig


def config(**spool: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "pools": {
            "pacs": {"backends": [{"name": "a", "dicom": "A@10.0.0.1:104"}]},
            "research": {"backends": [{"name": "r", "dicom": "R@10.0.0.2:104"}]},
        },
        "routes": [{"name": "ct", "pool": "pacs", "ack": "spool", "mirror": ["research"]}],
    }
    if spool:
        data["spool"] = spool
    return data


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    return str(caught.value)


def test_spooled_route_with_mirror_and_defaults() -> None:
    snap = build_snapshot(config(directory="/var/spool/dicomlb"), "lb.yaml")
    route = snap.routes[0]
    assert route.ack is Ack.SPOOL
    assert [p.name for p in route.mirror] == ["research"]
    assert route.mirror[0] is snap.pools["research"]
    assert snap.spool is not None and snap.spool.retry == RetryConfig()
    assert snap.spool.failover_after is None and snap.spool.max_bytes == 0
    assert 0x0020000D in snap.wanted_tags  # the spool records each item's study
    text = describe(snap)
    assert "-> pool pacs (ack: spool; mirror to research)" in text
    assert "spool: /var/spool/dicomlb" in text and "wait for the study's backend" in text


def test_sizes_and_durations() -> None:
    snap = build_snapshot(
        config(
            directory="s",
            max_bytes="20GB",
            min_free_disk="1.5GiB",
            max_items=1000,
            retry={"base": "500ms", "cap": "5m", "max_attempts": 0, "max_age": "48h"},
            failover_after="10m",
            keep_delivered="1h",
        )
    )
    sp = snap.spool
    assert sp is not None
    assert (sp.max_bytes, sp.min_free_disk, sp.max_items) == (20 * 10**9, 3 << 29, 1000)
    assert sp.retry == RetryConfig(base=0.5, cap=300, max_attempts=0, max_age=172800)
    assert (sp.failover_after, sp.keep_delivered) == (600, 3600)
    assert parse_size(512) == 512 and parse_size("4 KiB") == 4096


def test_ack_spool_without_a_spool_section_names_the_route() -> None:
    assert errors(config()).startswith(
        'lb.yaml: routes[0].ack: route "ct" has ack: spool but there is no spool section'
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["routes"][0].update(mirror=["nope"]),
            'routes[0].mirror[0]: pool "nope" does not exist',
        ),
        (
            lambda d: d["routes"][0].update(mirror=["pacs"]),
            'routes[0].mirror[0]: pool "pacs" already gets this route',
        ),
        (
            lambda d: d["routes"][0].update(ack="backend"),
            'routes[0].mirror: route "ct" mirrors through the spool, so it needs ack: spool',
        ),
        (lambda d: d["routes"][0].update(ack="later"), 'routes[0].ack: "later" is not a ack'),
        (lambda d: d["spool"].update(max_bytes="lots"), 'spool.max_bytes: "lots" is not a size'),
        (lambda d: d["spool"].update(dir="x"), 'spool.dir: unknown key "dir"'),
        (
            lambda d: d["spool"].update(retry={"base": "1m", "cap": "1s"}),
            "spool.retry.cap: cap (1s) is shorter than base (1m)",
        ),
        (
            lambda d: d["spool"].update(retry={"max_attempts": -1}),
            "spool.retry.max_attempts: -1 is too small",
        ),
        (lambda d: d["spool"].pop("directory"), "spool.directory: directory is required"),
    ],
)
def test_bad_spool_config_names_the_field(mutate: Any, expected: str) -> None:
    data = config(directory="s")
    mutate(data)
    assert f"lb.yaml: {expected}" in errors(data)
