"""Readiness of one instance: listeners accept, and every route has a backend or a spool
with room. Pools without backends are not this instance's unreadiness."""

from __future__ import annotations

from dicomlb.readiness import RouteReadiness, not_ready_reasons


def route(name: str, *, available: bool, spooled: bool = False) -> RouteReadiness:
    return RouteReadiness(
        name=name, listener="dicom", pool=f"{name}-pool", available=available, spooled=spooled
    )


def test_a_spooling_route_stays_ready_without_backends_while_the_spool_has_room() -> None:
    spooled = route("ct", available=False, spooled=True)
    assert not_ready_reasons([], [spooled], None) == []
    assert not_ready_reasons([], [spooled], "spool holds 10 items, max_items 10") == [
        "dicom route ct: pool ct-pool has no available backend and the spool refuses new "
        "instances (spool holds 10 items, max_items 10)"
    ]
    # A full spool does not matter while a backend takes the route's instances.
    assert not_ready_reasons([], [route("ct", available=True, spooled=True)], "full") == []


def test_every_route_counts_and_every_listener() -> None:
    routes = [route("ct", available=True), route("mr", available=False)]
    assert not_ready_reasons([], routes, None) == [
        "dicom route mr: pool mr-pool has no available backend"
    ]
    assert not_ready_reasons(["http"], [], None) == ["listener http is not accepting connections"]
    assert not_ready_reasons([], [], None) == []  # no routes: ready once listening
