"""C-ECHO: answered by dicomlb, or relayed to a backend of the listener's `echo_pool`."""

from __future__ import annotations

import contextlib
import logging
import time

from dicomlb.dicom.dimse import Status
from dicomlb.dicom.messages import InboundMessage
from dicomlb.services.session import MessageFailed, Session

log = logging.getLogger(__name__)


async def echo(session: Session, message: InboundMessage) -> None:
    """Serve one C-ECHO-RQ."""
    runtime = session.runtime
    pool_config = runtime.snapshot.dicom.echo_pool if runtime.snapshot.dicom else None
    if pool_config is None:
        session.respond(message, Status.SUCCESS)
        return
    pool = runtime.pools[pool_config.name]
    started = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as leases:
            backend, up = await session.connect(pool, "", message, leases)
            status = await session.forward(message, pool_config, backend, up, [], done=True)
    except MessageFailed as failure:
        log.warning("echo.failed pool=%s reason=%r", pool.name, str(failure))
        session.respond(message, failure.status, str(failure))
        return
    runtime.metrics.store_finished(
        pool=pool.name,
        backend=backend.name,
        status=status,
        seconds=time.monotonic() - started,
        command="C-ECHO",
    )
    log.info(
        "echo.relayed pool=%s backend=%s status=0x%04X ms=%d",
        pool.name,
        backend.name,
        status,
        (time.monotonic() - started) * 1000,
    )
