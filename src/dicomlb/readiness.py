"""Whether this instance can take traffic now (pure: facts in, reasons out).

Readiness is about this instance, not about its backends: a load balancer in front of
several dicomlb instances (a Kubernetes Service, HAProxy) should stop sending to one only
when it cannot take what is sent. A route whose pool has no available backend still takes
instances when it spools (`ack: spool`) and the spool has room, which is exactly when the
spool matters; taking that instance out of service would turn a queued delivery into a
refusal. Pools without an available backend are reported on their own (`/healthz/pools`,
`dicomlb_pool_available_backends`), for alerts rather than for routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RouteReadiness", "not_ready_reasons"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteReadiness:
    """What readiness needs to know about one route now."""

    name: str
    listener: str  # `dicom` or `http`: the listener its traffic comes in on
    pool: str
    available: bool  # its pool has a backend that may take new work on this side
    spooled: bool  # `ack: spool`: the spool answers for it while no backend is available


def not_ready_reasons(
    listeners_down: Sequence[str],
    routes: Sequence[RouteReadiness],
    spool_refusal: str | None,
) -> list[str]:
    """Why this instance cannot take traffic now; empty when it can. `listeners_down` names
    configured listeners that do not accept connections; `spool_refusal` is why the spool
    refuses new instances now (None: it has room, or there is no spool)."""
    reasons = [f"listener {name} is not accepting connections" for name in listeners_down]
    for route in routes:
        if route.available:
            continue
        if route.spooled:
            if spool_refusal is None:
                continue
            reasons.append(
                f"{route.listener} route {route.name}: pool {route.pool} has no available "
                f"backend and the spool refuses new instances ({spool_refusal})"
            )
        else:
            reasons.append(
                f"{route.listener} route {route.name}: pool {route.pool} has no available backend"
            )
    return reasons
