"""Active health checks (asyncio shell), every `interval`: a C-ECHO to each backend with a
DICOM address, an HTTP request (`http/checks.py`) to each with an HTTP address — the pool's
`health.http`, else `GET /system` for Orthanc pools, else `GET /`. A backend with both
addresses gets both, each feeding the health state of its own side (`BackendState.health`,
`.http_health`), so each side's routes see their own.

The verdicts feed the `HealthState`s (fall/rise); transitions are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from dicomlb.bridge.client import bridge_check
from dicomlb.capacity import CheckPlan
from dicomlb.dicom import uids
from dicomlb.dicom.dimse import echo_request
from dicomlb.dicom.upstream import Busy, UpstreamError, UpstreamPool
from dicomlb.health import Cause
from dicomlb.http.budget import Use
from dicomlb.http.checks import DEFAULT_CHECK, HttpCheckError, http_check
from dicomlb.http.lease import BudgetFull, lease
from dicomlb.http.upstream import upstream_tls
from dicomlb.metrics import Metrics
from dicomlb.pools import Protocol
from dicomlb.snapshot import HealthConfig, HttpCheckConfig

log = logging.getLogger(__name__)

# Orthanc answers `GET /` with a redirect; `/system` answers 200, or 401 when authentication
# is on and the check has no credentials: Orthanc is alive either way.
ORTHANC_CHECK = HttpCheckConfig(path="/system", status=(200, 401))


def http_check_of(check: HttpCheckConfig | None, *, orthanc: bool) -> HttpCheckConfig:
    """The HTTP check of a pool: its `health.http`, else Orthanc's `/system` for Orthanc
    pools, else `GET /` answered 200."""
    if check is not None:
        return check
    return ORTHANC_CHECK if orthanc else DEFAULT_CHECK


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
        *,
        orthanc: bool = False,
    ):
        self.upstreams = upstreams
        self.backend = upstreams.backend
        self.orthanc = orthanc  # the pool's backends are Orthanc: its REST API is checked so
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
        """Run one check of each side the backend has (its DICOM and HTTP addresses, at
        once) and record each in that side's health state; True when all passed."""
        config = self.backend.config
        sides: list[tuple[Protocol, Awaitable[object]]] = []
        if config.dicom is not None:
            sides.append((Protocol.DICOM, self._dicom_check()))
        if config.http is not None:
            sides.append((Protocol.HTTP, self._http_check()))
        results = await asyncio.gather(*(self._record(side, check) for side, check in sides))
        errors = [error for error in results if error is not None]
        self.last_error = "; ".join(errors) if errors else None
        return not errors

    async def _dicom_check(self) -> None:
        """C-ECHO in one of the backend's slots; when none is free and the backend answered
        a relayed message within the interval, that counts as a passed check."""
        if self._recent():
            log.debug(
                "health.recent backend=%s reason=%r",
                self.backend.name,
                "no slot free; it answered a relayed message within the interval",
            )
            return
        await echo(self.upstreams, self.calling_ae, self.health.timeout)

    async def _http_check(self) -> None:
        """One request in a slot of the backend's HTTP connection budget: a check waits
        first in line (an idle keep-alive connection of the proxy is closed for it) up to
        its timeout, then is skipped (BudgetFull: no verdict)."""
        backend = self.backend
        config = backend.config
        timeout = self.health.timeout
        assert config.http is not None
        if config.store is not None:  # store_via: its credentials, TLS and paths
            await bridge_check(config, self.health.http, timeout, backend.budget)
            return
        context, server_name = upstream_tls(config)
        async with lease(backend.budget, Use.CHECK, timeout):
            await http_check(
                config.http,
                http_check_of(self.health.http, orthanc=self.orthanc),
                timeout,
                tls=context,
                server_name=server_name,
            )

    async def _record(self, side: Protocol, check: Awaitable[object]) -> str | None:
        """Await one side's check and feed its verdict to that side's state; the error."""
        state = self.backend.health_of(side)
        # One side's failure is named by its protocol when the other side is checked too.
        what = f"{side.value}: " if self.backend.split else ""
        try:
            await check
        except (Busy, BudgetFull) as busy:
            # Every slot in use for the whole check: dicomlb's own load, no verdict.
            log.debug("health.skipped backend=%s reason=%r", self.backend.name, str(busy))
            return None
        except (UpstreamError, HttpCheckError) as err:
            error = f"{what}{err}"
            self.metrics.health_check(self.backend.name, False)
            if state.failure(asyncio.get_running_loop().time()):
                log.warning(
                    "backend.down backend=%s pool=%s cause=check protocol=%s reason=%r",
                    self.backend.name,
                    self.pool,
                    side.value,
                    error,
                )
                self.metrics.backend_transition(
                    self.backend.name, up=False, cause="check", reason=error
                )
            else:
                log.debug("health.failed backend=%s reason=%r", self.backend.name, error)
            return error
        self.metrics.health_check(self.backend.name, True)
        if state.success():
            log.warning(
                "backend.up backend=%s pool=%s protocol=%s",
                self.backend.name,
                self.pool,
                side.value,
            )
            self.metrics.backend_transition(self.backend.name, up=True, cause="check")
        return None

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
