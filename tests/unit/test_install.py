"""Install configuration is kept across reloads, and what waits for a restart is named."""

from __future__ import annotations

from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.install import pin

BASE: dict[str, Any] = {
    "listeners": {"dicom": {"bind": "127.0.0.1:11112"}, "http": {"bind": "127.0.0.1:8080"}},
    "pools": {
        "main": {
            "backends": [{"name": "a", "dicom": "A@127.0.0.1:104", "http": "http://127.0.0.1:8042"}]
        }
    },
    "routes": [{"name": "all", "pool": "main"}],
    "http_routes": [{"name": "web", "pool": "main"}],
    "spool": {"directory": "/var/spool/dicomlb"},
    "state_dir": "/var/lib/dicomlb",
}


def changed(**parts: Any) -> dict[str, Any]:
    config = {**BASE, **parts}
    return config


def test_a_reload_that_changes_only_dynamic_keys_waits_for_nothing() -> None:
    running = build_snapshot(BASE)
    loaded = build_snapshot(
        changed(listeners={"dicom": {"bind": "127.0.0.1:11112", "max_associations": 7},
                           "http": {"bind": "127.0.0.1:8080", "keepalive_timeout": "9s"}})
    )  # fmt: skip
    applied, waiting = pin(running, loaded)
    assert waiting == ()
    assert applied.dicom is not None and applied.dicom.max_associations == 7
    assert applied.http is not None and applied.http.keepalive_timeout == 9


def test_binds_spool_and_state_dir_stay_and_are_named() -> None:
    running = build_snapshot(BASE)
    loaded = build_snapshot(
        changed(
            listeners={"dicom": {"bind": "127.0.0.1:11113", "ae_title": "NEWAE"},
                       "http": {"bind": "127.0.0.1:8081"}},
            spool={"directory": "/srv/spool", "max_items": 5},
            state_dir="/srv/state",
        )
    )  # fmt: skip
    applied, waiting = pin(running, loaded)
    assert waiting == (
        "listeners.dicom.bind",
        "listeners.http.bind",
        "spool.directory",
        "spool.max_items",
        "state_dir",
    )
    assert applied.dicom is not None and running.dicom is not None
    assert (applied.dicom.host, applied.dicom.port) == (running.dicom.host, running.dicom.port)
    assert applied.dicom.ae_title == "NEWAE"  # the rest of the listener's settings apply
    assert applied.http is not None and applied.http.port == 8080
    assert applied.spool == running.spool
    assert applied.state_dir == running.state_dir


def test_removing_or_adding_a_listener_waits_for_a_restart() -> None:
    running = build_snapshot(BASE)
    without = {k: v for k, v in BASE.items() if k not in ("http_routes",)}
    without["listeners"] = {"http": BASE["listeners"]["http"]}
    without["routes"] = []
    without["http_routes"] = BASE["http_routes"]
    applied, waiting = pin(running, build_snapshot(without))
    assert waiting == ("listeners.dicom",)
    assert applied.dicom == running.dicom  # the bound listener keeps its settings

    smaller = build_snapshot({**without, "listeners": {"http": BASE["listeners"]["http"]}})
    applied, waiting = pin(smaller, build_snapshot(BASE))
    assert waiting == ("listeners.dicom",)
    assert applied.dicom is None
