"""Passive health, applied in one place: every path that sends to a backend (DICOM relay,
query, retrieve, bridge, spool dispatcher, HTTP proxy) reports its failures here with a
`Cause`; `health.counts_against_backend` decides whether they count, and a backend taken
down is logged once (`backend.down ... cause=passive`) and counted in the metric.

Without active checks (`health.enabled: false`) a backend taken down comes back after its
pool's `fail_timeout` (nginx's): a timer here brings it up.
"""

from __future__ import annotations

import asyncio
import logging

from dicomlb.health import Cause, counts_against_backend
from dicomlb.metrics import Metrics
from dicomlb.pools import BackendState, Protocol

log = logging.getLogger(__name__)


def passive_failure(
    metrics: Metrics,
    backend: BackendState,
    pool: str,
    cause: Cause,
    reason: str,
    protocol: Protocol = Protocol.DICOM,
) -> bool:
    """Count a failure against `backend`'s `protocol` side when the rule says so; True when
    it went down."""
    if not counts_against_backend(cause):
        return False
    loop = asyncio.get_running_loop()
    if not backend.health_of(protocol).failure(loop.time()):
        return False
    _went_down(metrics, backend, pool, cause.value, reason, protocol)
    return True


def passive_ejection(
    metrics: Metrics,
    backend: BackendState,
    pool: str,
    reason: str,
    protocol: Protocol = Protocol.HTTP,
) -> bool:
    """Take `backend`'s `protocol` side down now (HTTP's passive window of 502/503/504
    answers filled up); True when it was up."""
    if not backend.health_of(protocol).eject(asyncio.get_running_loop().time()):
        return False
    _went_down(metrics, backend, pool, "failure_window", reason, protocol)
    return True


def _went_down(
    metrics: Metrics,
    backend: BackendState,
    pool: str,
    why: str,
    reason: str,
    protocol: Protocol,
) -> None:
    log.warning(
        "backend.down backend=%s pool=%s cause=passive why=%s protocol=%s reason=%r",
        backend.name,
        pool,
        why,
        protocol.value,
        reason,
    )
    metrics.backend_transition(
        backend.name, up=False, cause="passive", reason=f"{protocol.value} {why}: {reason}"
    )
    _arm_expiry(metrics, backend, pool, protocol)


def _arm_expiry(metrics: Metrics, backend: BackendState, pool: str, protocol: Protocol) -> None:
    at = backend.health_of(protocol).expires_at()
    if at is not None:
        asyncio.get_running_loop().call_at(at, _expire, metrics, backend, pool, protocol)


def _expire(metrics: Metrics, backend: BackendState, pool: str, protocol: Protocol) -> None:
    if backend.health_of(protocol).expire(asyncio.get_running_loop().time()):
        log.warning(
            "backend.up backend=%s pool=%s cause=fail_timeout protocol=%s",
            backend.name,
            pool,
            protocol.value,
        )
        metrics.backend_transition(backend.name, up=True, cause="fail_timeout")
    else:  # woken a clock tick early, or down again since: wait for what is left
        _arm_expiry(metrics, backend, pool, protocol)
