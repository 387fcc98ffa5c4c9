"""Active health checks: a C-ECHO to each backend every `interval` (asyncio shell); an HTTP
request (`http/checks.py`) for backends without a DICOM address or when the pool's
`health.http` is set.

The verdicts feed each backend's `HealthState` (fall/rise); transitions are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dicomlb.capacity import CheckPlan
from dicomlb.dicom import uids
from dicomlb.dicom.dimse import echo_request
from dicomlb.dicom.upstream import Busy, UpstreamError, UpstreamPool
from dicomlb.health import Cause
from dicomlb.http.checks import DEFAULT_CHECK, HttpCheckError, http_check
from dicomlb.http.upstream import upstream_tls
from dicomlb.metrics import Metrics
from dicomlb.snapshot import HealthConfig

log = logging.getLogger(__name__)


VERIFICATION = (uids.VERIFICATION, uids.IMPLICIT_VR_LE)


async def echo(upstreams: UpstreamPool, calling_ae: str, timeout: float) -> None:
    """One C-ECHO to the backend of `upstreams`, in one of its association slots like any
    message (a backend that takes one association at a time must not find its only one
    taken by a check); raises UpstreamError on any failure, `Busy` when no slot came free
    within `timeout`."""
    address = upstreams.backend.config.dicom
    assert address is not None  # HealthChecker sends C-ECHO only to DICOM backends
    key = (calling_ae, address.ae_title, ())
    try:
        async with upstreams.probe(key, VERIFICATION, timeout) as up:
            context_id = up.context_for(VERIFICATION)
            assert context_id is not None  # the lease has the context it was asked for
            async with asyncio.timeout(timeout):
                answer = await up.send_command(context_id, echo_request(up.next_message_id()))
            if answer.status != 0:
                raise UpstreamError(f"C-ECHO status 0x{answer.status or 0:04X}", Cause.STATUS)
    except TimeoutError:
        raise UpstreamError(f"no answer within {timeout:g}s", Cause.CHECK_TIMEOUT) from None
    except OSError as err:
        raise UpstreamError(str(err) or type(err).__name__, Cause.REFUSED) from None


class HealthChecker:
    """Runs the active checks of one backend until stopped."""

    def __init__(
        self,
        upstreams: UpstreamPool,
        pool: str,
        health: HealthConfig,
        calling_ae: str,
        metrics: Metrics | None = None,
    ):
        self.upstreams = upstreams
        self.backend = upstreams.backend
        self.metrics = metrics if metrics is not None else Metrics()
        self.pool = pool
        self.health = health
        self.calling_ae = calling_ae
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the checks and wait until they end. A cancel that lands while an upstream
        association is being released can be absorbed there, so cancel again until done."""
        task = self._task
        if task is None:
            return
        self._stopped = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    async def check_once(self) -> bool:
        """Run one check and record it; True when it passed."""
        state = self.backend.health
        config = self.backend.config
        try:
            if config.store is not None and (config.dicom is None or self.health.http):
                from dicomlb.bridge.client import bridge_check  # store_via: auth, TLS, paths

                await bridge_check(config, self.health.http, self.health.timeout)
            elif config.http is not None and (config.dicom is None or self.health.http):
                context, server_name = upstream_tls(config)
                await http_check(
                    config.http,
                    self.health.http or DEFAULT_CHECK,
                    self.health.timeout,
                    tls=context,
                    server_name=server_name,
                )
            elif self._recent():
                log.debug(
                    "health.recent backend=%s reason=%r",
                    self.backend.name,
                    "no slot free; it answered a relayed message within the interval",
                )
            else:
                await echo(self.upstreams, self.calling_ae, self.health.timeout)
        except Busy as busy:
            # Every slot in use for the whole check: dicomlb's own load, no verdict.
            log.debug("health.skipped backend=%s reason=%r", self.backend.name, str(busy))
            return False
        except (UpstreamError, HttpCheckError) as err:
            self.last_error = str(err)
            self.metrics.health_check(self.backend.name, False)
            if state.failure(asyncio.get_running_loop().time()):
                log.warning(
                    "backend.down backend=%s pool=%s cause=check reason=%r",
                    self.backend.name,
                    self.pool,
                    self.last_error,
                )
                self.metrics.backend_transition(self.backend.name, up=False, cause="check")
            else:
                log.debug("health.failed backend=%s reason=%r", self.backend.name, self.last_error)
            return False
        self.last_error = None
        self.metrics.health_check(self.backend.name, True)
        if state.success():
            log.warning("backend.up backend=%s pool=%s", self.backend.name, self.pool)
            self.metrics.backend_transition(self.backend.name, up=True, cause="check")
        return True

    def _recent(self) -> bool:
        """No slot free for a check, and the backend answered a relayed message within the
        interval: that counts as a passed check."""
        upstreams = self.upstreams
        plan = upstreams.capacity.check(
            open_now=upstreams.open,
            now=asyncio.get_running_loop().time(),
            last_answer=upstreams.last_answer,
            interval=self.health.interval,
        )
        return plan is CheckPlan.RECENT

    async def _run(self) -> None:
        while not self._stopped:
            await self.check_once()
            await asyncio.sleep(self.health.interval)
