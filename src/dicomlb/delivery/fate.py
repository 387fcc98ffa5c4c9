"""What became of each image: one log line, its metric and, once stored, where its study is.

Every path that takes or sends a C-STORE (services/store, the HTTP bridge, the spool and its
dispatcher) records an image's fate here, so each fate is written one way:
received -> routed -> delivered | failed | refused | spooled (then delivered | failed | dead).

Live images (sent while the client waits) are told by `answered` (the backend's status:
delivered or failed), `failed` (no answer) and `refused` (no backend took it); spooled
items by `spooled`, `delivered`, `retrying` and `dead`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dicomlb.dicom.messages import InboundMessage
from dicomlb.dicom.status import succeeded
from dicomlb.runtime import Runtime
from dicomlb.spool.store import Item, Target

log = logging.getLogger(__name__)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def received(message: InboundMessage, calling_aet: str, peer_ip: str) -> None:
    """A C-STORE arrived from a client (DEBUG)."""
    if log.isEnabledFor(logging.DEBUG):
        command = message.command
        log.debug(
            "store.received sop_instance_uid=%s sop_class_uid=%s calling_aet=%s peer=%s "
            "transfer_syntax=%s",
            command.sop_instance_uid,
            command.sop_class_uid,
            calling_aet,
            peer_ip,
            message.transfer_syntax,
        )


def routed(sop_instance_uid: str, route: str, pool: str, backend: str, key: str) -> None:
    """A route and a backend were picked (DEBUG; `key` the affinity value or "-")."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "store.routed sop_instance_uid=%s route=%s pool=%s backend=%s key=%s",
            sop_instance_uid,
            route,
            pool,
            backend,
            key,
        )


def answered(
    runtime: Runtime,
    *,
    sop_instance_uid: str,
    study_uid: str,
    route: str,
    pool: str,
    backend: str,
    status: int,
    started: float,
    via: str | None = None,
    reason: str | None = None,
) -> None:
    """The backend answered a live C-STORE: store.delivered when `status` says the instance is
    stored (its study recorded at `backend`), else store.failed. `via`: the bridge's way."""
    stored = succeeded(status)
    if stored:  # the instance always, the study when it was read
        runtime.studies.record(study_uid, backend, sop_instance_uid)
    runtime.metrics.store_finished(
        route=route,
        pool=pool,
        backend=backend,
        status=status,
        seconds=time.monotonic() - started,
        sop_instance_uid=sop_instance_uid,
        reason=reason or "",
    )
    level = logging.INFO if stored else logging.WARNING
    event = "store.delivered" if stored else "store.failed"
    if via is None:
        log.log(
            level,
            "%s sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X ms=%d",
            event,
            sop_instance_uid,
            route,
            pool,
            backend,
            status,
            _ms(started),
        )
        return
    log.log(
        level,
        "%s sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X via=%s ms=%d%s",
        event,
        sop_instance_uid,
        route,
        pool,
        backend,
        status,
        via,
        _ms(started),
        f" reason={reason!r}" if reason else "",
    )


def failed(
    runtime: Runtime,
    *,
    sop_instance_uid: str,
    route: str,
    pool: str,
    backend: str,
    status: int,
    reason: str,
    started: float,
) -> None:
    """A live C-STORE went to `backend` and got no answer (cut off, timed out)."""
    log.warning(
        "store.failed sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X reason=%r",
        sop_instance_uid,
        route,
        pool,
        backend,
        status,
        reason,
    )
    runtime.metrics.store_finished(
        route=route,
        pool=pool,
        backend=backend,
        status=status,
        seconds=time.monotonic() - started,
        sop_instance_uid=sop_instance_uid,
        reason=reason,
    )


def refused(
    runtime: Runtime,
    *,
    sop_instance_uid: str,
    route: str,
    pool: str,
    status: int,
    reason: str,
    spool: bool = False,
    level: int = logging.WARNING,
) -> None:
    """No backend (or, with `spool`, not the spool) took the C-STORE; `route` and `pool`
    empty when no route matched."""
    log.log(
        level,
        "store.failed sop_instance_uid=%s route=%s pool=%s status=0x%04X reason=%r",
        sop_instance_uid,
        route,
        pool,
        status,
        reason,
    )
    if spool:
        runtime.metrics.spool_refusal(
            route=route, pool=pool, status=status, sop_instance_uid=sop_instance_uid, reason=reason
        )
    else:
        runtime.metrics.store_finished(
            route=route,
            pool=pool,
            status=status,
            seconds=0.0,
            sop_instance_uid=sop_instance_uid,
            reason=reason,
        )


def spooled(
    runtime: Runtime,
    *,
    sop_instance_uid: str,
    route: str,
    targets: Sequence[Target],
    items: Sequence[Item],
    started: float,
    committed: float,
) -> None:
    """The instance is durable in the spool, one item per target (commit took `committed`
    seconds), and Success was sent."""
    runtime.metrics.spool_stored(route=route, pools=[t.pool for t in targets], seconds=committed)
    ms = _ms(started)
    for target, item in zip(targets, items, strict=True):
        log.info(
            "store.spooled sop_instance_uid=%s route=%s pool=%s backend=%s item=%d%s ms=%d",
            sop_instance_uid,
            route,
            target.pool,
            target.backend,
            item.id,
            " mirror=true" if target.mirror else "",
            ms,
        )


def delivered(runtime: Runtime, item: Item, status: int, started: float, via: str = "") -> None:
    """A spooled item is at its backend (`via`: the bridge's way, if it went over HTTP)."""
    runtime.metrics.spool_delivery(item.backend, "delivered")
    # where is the study: spooled instances count once they are delivered
    runtime.studies.record(item.study_uid, item.backend, item.sop_instance_uid)
    log.info(
        "store.delivered sop_instance_uid=%s route=%s pool=%s backend=%s status=0x%04X "
        "via=spool attempts=%d item=%d ms=%d%s",
        item.sop_instance_uid,
        item.route,
        item.pool,
        item.backend,
        status,
        item.attempts + 1,
        item.id,
        _ms(started),
        f" bridge={via}" if via else "",
    )


def retrying(runtime: Runtime, item: Item, attempts: int, retry_in: float, reason: str) -> None:
    """A spooled item's attempt failed; it is tried again in `retry_in` seconds."""
    runtime.metrics.spool_delivery(item.backend, "failed")
    log.warning(
        "store.failed sop_instance_uid=%s route=%s pool=%s backend=%s via=spool attempts=%d "
        "retry_in=%.1fs item=%d reason=%r",
        item.sop_instance_uid,
        item.route,
        item.pool,
        item.backend,
        attempts,
        retry_in,
        item.id,
        reason,
    )


def dead(runtime: Runtime, item: Item, attempts: int, reason: str) -> None:
    """A spooled item will not be tried again (until an operator retries it)."""
    runtime.metrics.spool_delivery(
        item.backend, "dead", sop_instance_uid=item.sop_instance_uid, reason=reason
    )
    log.error(
        "store.dead sop_instance_uid=%s route=%s pool=%s backend=%s item=%d attempts=%d reason=%r",
        item.sop_instance_uid,
        item.route,
        item.pool,
        item.backend,
        item.id,
        attempts,
        reason,
    )
