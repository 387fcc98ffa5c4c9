"""Builds a snapshot into running parts; start, reload and graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from dicomlb.checks import HealthChecker
from dicomlb.dicom.acceptor import DicomListener
from dicomlb.http.proxy import HttpListener
from dicomlb.runtime import Runtime
from dicomlb.snapshot import Snapshot

log = logging.getLogger(__name__)


class App:
    """The running balancer: listeners, runtime (routes, pools, backends) and health checks."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.runtime = Runtime(snapshot)
        self.dicom: DicomListener | None = None
        self.http: HttpListener | None = None
        self.checkers: dict[str, HealthChecker] = {}
        self._stopping = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        return self.runtime.snapshot

    async def start(self) -> None:
        """Bind the listeners and start the health checks."""
        if self.snapshot.dicom is not None:
            self.dicom = DicomListener(self.runtime)
            await self.dicom.start()
        if self.snapshot.http is not None:
            self.http = HttpListener(self.snapshot.http, self.runtime)
            await self.http.start()
        self._start_checkers()
        log.info(
            "dicomlb.started source=%s routes=%d pools=%d backends=%d",
            self.snapshot.source,
            len(self.snapshot.routes),
            len(self.snapshot.pools),
            len(self.runtime.backends),
        )

    def _start_checkers(self) -> None:
        calling_ae = self.snapshot.dicom.ae_title if self.snapshot.dicom else "DICOMLB"
        for pool in self.snapshot.pools.values():
            if not pool.health.enabled:
                continue
            for backend_config in pool.backends:
                if backend_config.name in self.checkers:
                    continue
                checker = HealthChecker(
                    self.runtime.backends[backend_config.name], pool.name, pool.health, calling_ae
                )
                checker.start()
                self.checkers[backend_config.name] = checker

    async def reload(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot: new associations use it, those in flight finish on theirs."""
        old = self.runtime
        self.runtime = Runtime(snapshot, old.backends, old.upstreams)
        if self.dicom is not None:
            self.dicom.runtime = self.runtime
        if self.http is not None:
            self.http.reload(self.runtime)
        for name in set(old.backends) - set(self.runtime.backends):
            checker = self.checkers.pop(name, None)
            if checker is not None:
                await checker.stop()
            await old.upstreams[name].close()
        for name, backend in self.runtime.backends.items():
            checker = self.checkers.get(name)
            if checker is not None and checker.backend is not backend:
                await checker.stop()
                del self.checkers[name]
        self._start_checkers()
        log.info("dicomlb.reloaded source=%s", snapshot.source)

    async def stop(self) -> None:
        """Stop accepting, let associations in flight finish (bounded), close everything."""
        log.info("dicomlb.stopping graceful_timeout=%gs", self.snapshot.graceful_timeout)
        if self.dicom is not None:
            await self.dicom.stop(self.snapshot.graceful_timeout)
        if self.http is not None:
            await self.http.stop(self.snapshot.graceful_timeout)
        for checker in self.checkers.values():
            await checker.stop()
        self.checkers.clear()
        await asyncio.gather(*(u.close() for u in self.runtime.upstreams.values()))
        log.info("dicomlb.stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, ready: Callable[[App], None] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM (or `request_stop`), then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            if ready is not None:
                ready(self)
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()


def run_loop(main: Callable[[], object]) -> object:
    """Run the coroutine function `main` on uvloop when installed, else asyncio's loop."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]
