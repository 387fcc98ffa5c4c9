"""Config of the control plane: listeners.admin, its auth, watch; snapshot changes."""

from __future__ import annotations

from typing import Any

import pytest

from dicomlb import changes
from dicomlb.admin.server import authorized
from dicomlb.config import ConfigError, build_backend, build_snapshot, describe, hash_secret
from dicomlb.metrics import Metrics, percentile, status_class
from dicomlb.snapshot import AdminAuth

TOKEN_HASH = hash_secret("s3cret-token")


def config(**admin: Any) -> dict[str, Any]:
    return {
        "listeners": {"admin": admin},
        "pools": {
            "ct": {"backends": [{"name": "a", "dicom": "A@10.0.0.1:104"}]},
            "mr": {
                "backends": [
                    {"name": "b", "dicom": "B@10.0.0.2:104"},
                    {"name": "c", "dicom": "C@10.0.0.3:104"},
                ]
            },
        },
        "routes": [{"name": "ct", "match": {"Modality": "CT"}, "pool": "ct"}],
    }


def test_admin_defaults_to_loopback_8404_without_auth() -> None:
    snap = build_snapshot(config())
    assert snap.admin is not None
    assert (snap.admin.host, snap.admin.port) == ("127.0.0.1", 8404)
    assert not snap.admin.auth.required
    assert snap.watch is False


def test_no_admin_section_no_admin_listener() -> None:
    data = config()
    del data["listeners"]
    assert build_snapshot(data).admin is None


@pytest.mark.parametrize("bind", ["0.0.0.0:8404", "10.1.2.3:8404", "[::]:8404", "myhost:8404"])
def test_non_loopback_bind_without_auth_is_refused(bind: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_snapshot(config(bind=bind), "lb.yaml")
    assert str(err.value).startswith("lb.yaml: listeners.admin.auth: the admin listener binds")
    assert "dicomlb hash-password" in str(err.value)


@pytest.mark.parametrize("bind", ["127.0.0.1:9000", "[::1]:9000", "localhost:9000"])
def test_loopback_bind_without_auth_is_fine(bind: str) -> None:
    assert build_snapshot(config(bind=bind)).admin is not None


def test_non_loopback_bind_with_auth() -> None:
    snap = build_snapshot(
        config(
            bind="0.0.0.0:8404",
            auth={"bearer_tokens_sha256": [TOKEN_HASH.upper()], "basic": {"ops": TOKEN_HASH}},
        )
    )
    assert snap.admin is not None
    assert snap.admin.auth.bearer_tokens_sha256 == frozenset({TOKEN_HASH})
    assert dict(snap.admin.auth.basic) == {"ops": TOKEN_HASH}
    assert "admin listener: http://0.0.0.0:8404/ (auth: 1 bearer token(s); basic for ops)" in (
        describe(snap)
    )


def test_a_plain_password_is_not_a_hash() -> None:
    with pytest.raises(ConfigError) as err:
        build_snapshot(config(auth={"basic": {"ops": "hunter2"}}), "lb.yaml")
    assert str(err.value) == (
        'lb.yaml: listeners.admin.auth.basic.ops: "hunter2" is not a SHA-256 hex digest; write '
        "the SHA-256 hex digest (64 characters), made with `dicomlb hash-password`"
    )


def test_unknown_admin_key() -> None:
    with pytest.raises(ConfigError, match=r"listeners.admin.password: unknown key"):
        build_snapshot(config(password="x"))


def test_watch_is_read() -> None:
    data = config()
    data["watch"] = True
    snap = build_snapshot(data)
    assert snap.watch is True
    assert "reload on file change: yes" in describe(snap)


def test_authorized_checks_tokens_and_passwords() -> None:
    auth = AdminAuth(bearer_tokens_sha256=frozenset({TOKEN_HASH}), basic={"ops": TOKEN_HASH})
    assert authorized(auth, "Bearer s3cret-token") == f"token:{TOKEN_HASH[:8]}"
    assert authorized(auth, "Bearer wrong") is None
    assert authorized(auth, "Basic b3BzOnMzY3JldC10b2tlbg==") == "ops"  # ops:s3cret-token
    assert authorized(auth, "Basic b3BzOndyb25n") is None  # ops:wrong
    assert authorized(auth, "Basic !!!") is None
    assert authorized(auth, None) is None


def test_remove_backend_keeps_routes_pointing_at_the_new_pools() -> None:
    snap = build_snapshot(config())
    back = changes.remove_backend(snap, "a")
    assert [b.name for b in back.pools["ct"].backends] == []  # providers may fill it again
    assert back.routes[0].pool is back.pools["ct"]
    assert [b.name for b in snap.pools["ct"].backends] == ["a"]  # the old one is untouched
    with pytest.raises(changes.ChangeError, match='backend "zz" does not exist'):
        changes.remove_backend(snap, "zz")


def test_build_backend_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_backend({"name": "d", "dicom": "D@host"}, "pools.ct.backends[+]")
    assert "pools.ct.backends[+].dicom: " in str(err.value)
    assert "has no port" in str(err.value)


def test_status_class_and_percentile() -> None:
    assert [status_class(s) for s in (0, 1, 0xB007, 0xA700, 0xFE00, 0xFF00)] == [
        "success",
        "warning",
        "warning",
        "failure",
        "cancel",
        "pending",
    ]
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


def test_metrics_have_their_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.store_finished(route="r", pool="p", backend="b", status=0, seconds=0.01)
    assert b'dicomlb_messages_total{backend="b"' in one.exposition()
    assert b'dicomlb_messages_total{backend="b"' not in two.exposition()
    assert b"dicomlb_route_hits_total" in one.exposition()


def test_recent_http_requests_are_bounded() -> None:
    metrics = Metrics()
    for n in range(60):
        metrics.http_request(
            route="r", pool="p", backend="b", status=200, seconds=0.002,
            client="10.0.0.9", method=b"GET", target=f"/x/{n}?q=1".encode(),
        )  # fmt: skip
    assert len(metrics.recent_http) == 50
    newest = metrics.recent_http[-1].as_dict()
    assert newest["path"] == "/x/59" and newest["ms"] == 2.0 and newest["client"] == "10.0.0.9"
