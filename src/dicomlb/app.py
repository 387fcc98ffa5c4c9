"""Builds a snapshot into running parts; start, reload and graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from watchfiles import awatch

try:
    import uvloop

    LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # optional: not on Windows
    LOOP_FACTORY = None

from dicomlb import changes, descriptors, install
from dicomlb.admin.server import AdminServer
from dicomlb.changes import ChangeError
from dicomlb.checks import HealthChecker
from dicomlb.config import ConfigError, build_backend, load_snapshot
from dicomlb.control import (
    AssociationStatus,
    BackendConnections,
    DicomListenerStatus,
    HttpListenerStatus,
)
from dicomlb.dicom.acceptor import DicomListener
from dicomlb.dicom.upstream import UpstreamPool
from dicomlb.http.proxy import HttpListener
from dicomlb.metrics import Metrics, StateCollector
from dicomlb.pools import BackendState, Pool
from dicomlb.providers import api
from dicomlb.providers.docker import DockerProvider
from dicomlb.providers.merge import Definition, Item, ItemStatus, Merged, Provider, merge
from dicomlb.readiness import RouteReadiness, not_ready_reasons
from dicomlb.runtime import Runtime
from dicomlb.services.relay import Relay
from dicomlb.snapshot import Ack, AdminListenerConfig, Snapshot
from dicomlb.spool.spool import Spool
from dicomlb.studies import SAVE_SECONDS, StudyIndex
from dicomlb.workers import Worker, for_worker

log = logging.getLogger(__name__)


def file_digest(path: Path) -> bytes | None:
    """SHA-256 of a file's bytes, None when it cannot be read (mid-swap, removed)."""
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class App:
    """The running balancer: listeners, runtime (routes, pools, backends) and health checks."""

    def __init__(
        self,
        snapshot: Snapshot,
        config_path: str | Path | None = None,
        worker: Worker | None = None,
    ) -> None:
        """`snapshot` as loaded from the file; `worker`: which of the worker processes this
        one is (its own admin port, spool and state directories, shared data ports). Raises
        ApiStateError when the admin API's backends kept in `state_dir` cannot be read."""
        self.worker = worker
        if worker is not None:
            snapshot = for_worker(snapshot, worker)
        self.metrics = Metrics()
        # The providers' parts: the file's snapshot, the admin API's backends (kept in
        # state_dir), Docker's; `merged` joins them into what runs.
        self.file_snapshot = snapshot
        self.api_backends: list[api.ApiBackend] = api.load(snapshot.state_dir)
        self.docker_definitions: tuple[Definition, ...] = ()
        self.docker: DockerProvider | None = None
        self._providers = contextlib.AsyncExitStack()
        self._reported: set[tuple[str, str, str]] = set()
        self.merged = self._merge()
        self.runtime = Runtime(
            self.merged.snapshot, metrics=self.metrics, studies=StudyIndex(snapshot.state_dir)
        )
        self.config_path = Path(config_path) if config_path is not None else None
        self.spool: Spool | None = None
        if snapshot.spool is not None:
            self.spool = Spool(snapshot.spool, lambda: self.runtime)
        # The spool's directory and limits are install config: kept across reloads.
        self.relay = Relay(self.spool)
        self.dicom: DicomListener | None = None
        self.admin: AdminServer | None = None
        self.http: HttpListener | None = None
        self.checkers: dict[str, HealthChecker] = {}
        self.started_at = time.time()
        self.last_reload: dict[str, Any] = {
            "result": "ok",
            "source": "start",
            "time": self.started_at,
            "error": None,
            "restart_needed": [],
        }
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics.add_state_collector(StateCollector(self.state_for_metrics, self.metrics))

    @property
    def snapshot(self) -> Snapshot:
        return self.runtime.snapshot

    async def start(self) -> None:
        """Open the spool (recovering after a crash), bind the listeners, start the checks."""
        soft, hard = descriptors.raise_limit()
        log.info(
            "dicomlb.descriptors limit=%s hard=%s headroom=%d",
            "unlimited" if soft is None else soft,
            "unlimited" if hard is None else hard,
            descriptors.HEADROOM,
        )
        _warn(self.snapshot)
        self._report(self.merged)
        if self.spool is not None:
            await self.spool.start()
        self._saver = asyncio.get_running_loop().create_task(self._save_studies())
        if self.snapshot.dicom is not None:
            self.dicom = DicomListener(self.runtime, self.relay)
            await self.dicom.start()
        if self.snapshot.admin is not None:
            self.admin = AdminServer(self)
            await self.admin.start(self.snapshot.admin.host, self.snapshot.admin.port)
        if self.snapshot.http is not None:
            self.http = HttpListener(self.snapshot.http, self.runtime)
            await self.http.start()
        self._start_checkers()
        self._update_watcher()
        docker = self.snapshot.providers.docker
        if docker is not None:
            self.docker = await self._providers.enter_async_context(
                DockerProvider(docker, self._docker_changed)
            )
        log.info(
            "dicomlb.started source=%s pid=%d routes=%d pools=%d backends=%d",
            self.snapshot.source,
            os.getpid(),
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
                    self.runtime.upstreams[backend_config.name],
                    pool.name,
                    pool.health,
                    calling_ae,
                    self.metrics,
                    orthanc=pool.orthanc,
                )
                checker.start()
                self.checkers[backend_config.name] = checker

    async def reload(self, loaded: Snapshot) -> tuple[str, ...]:
        """Swap in a new snapshot from the file, merged with the other providers' backends:
        new associations use it, those in flight finish on theirs. Install configuration
        stays as it runs; returns the keys whose change waits for a restart."""
        snapshot, waiting = install.pin(self.file_snapshot, loaded)
        _warn(snapshot)
        if waiting:
            log.warning("config.restart_needed keys=%s", ",".join(waiting))
        self.file_snapshot = snapshot
        await self._apply()
        log.info("dicomlb.reloaded source=%s", snapshot.source)
        return waiting

    def _merge(self, extra: Sequence[Definition] = ()) -> Merged:
        return merge(
            self.file_snapshot,
            [*api.definitions(self.api_backends), *extra, *self.docker_definitions],
        )

    def _report(self, merged: Merged) -> None:
        """One log line per definition that newly fails (conflict or error)."""
        failed = {item.key: item for item in merged.failed}
        for key, item in failed.items():
            if key in self._reported:
                continue
            fields = (item.name, item.pool or "-", item.provider.value, item.origin, item.error)
            if item.status is ItemStatus.CONFLICT:
                log.error(
                    "provider.conflict backend=%s pool=%s provider=%s origin=%r error=%r", *fields
                )
            else:
                log.error(
                    "provider.error backend=%s pool=%s provider=%s origin=%r error=%r", *fields
                )
        self._reported = set(failed)

    async def _apply(self) -> None:
        """Merge the providers' parts again and swap the result in (under the reload lock,
        or before the start)."""
        self.merged = self._merge()
        self._report(self.merged)
        await self._swap(self.merged.snapshot)

    async def _docker_changed(self, definitions: tuple[Definition, ...]) -> None:
        """The Docker provider's containers changed: their backends join or leave."""
        before = {d.name for d in self.docker_definitions if d.backend is not None}
        after = {d.name for d in definitions if d.backend is not None}
        async with self._reload_lock:
            self.docker_definitions = definitions
            await self._apply()
        for name in sorted(after - before):
            log.warning("docker.backend backend=%s change=joined", name)
        for name in sorted(before - after):
            log.warning("docker.backend backend=%s change=left", name)

    async def _swap(self, snapshot: Snapshot) -> None:
        old = self.runtime
        self.runtime = Runtime(
            snapshot,
            old.backends,
            old.upstreams,
            self.metrics,
            studies=old.studies,
            moves=old.moves,
            commitments=old.commitments,
            joining=frozenset(d.name for d in self.docker_definitions),
        )
        if self.dicom is not None:
            self.dicom.runtime = self.runtime
        if self.http is not None:
            self.http.reload(self.runtime)
        for name in set(old.backends) - set(self.runtime.backends):
            checker = self.checkers.pop(name, None)
            if checker is not None:
                await checker.stop()
        for name, upstream in old.upstreams.items():
            if self.runtime.upstreams.get(name) is not upstream:  # removed, or its config changed
                self._spawn(self._retire_upstream(upstream))
        for name, backend in self.runtime.backends.items():
            checker = self.checkers.get(name)
            if checker is not None and checker.backend is not backend:
                await checker.stop()
                del self.checkers[name]
        self._start_checkers()
        await self._update_admin(old.snapshot)
        self._update_watcher()

    async def _retire_upstream(self, upstream: UpstreamPool) -> None:
        """Close a replaced backend's associations and HTTP sessions once the messages the
        old snapshot still has in flight on them are done (bounded by graceful_timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.snapshot.graceful_timeout
        while upstream.backend.active and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await upstream.close()

    async def _update_admin(self, old: Snapshot) -> None:
        """Rebind the admin listener only when its address changed (auth applies at once)."""
        new = self.snapshot.admin
        before = (old.admin.host, old.admin.port) if old.admin else None
        after = (new.host, new.port) if new else None
        if before == after:
            return
        # In a task: this reload may be running inside a request of the admin listener itself.
        self._spawn(self._rebind_admin(new))

    async def _rebind_admin(self, config: AdminListenerConfig | None) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if config is not None:
            self.admin = AdminServer(self)
            await self.admin.start(config.host, config.port)

    async def _save_studies(self) -> None:
        """Write the study table's recent instance rows every SAVE_SECONDS."""
        while True:
            await asyncio.sleep(SAVE_SECONDS)
            self.runtime.studies.save()

    def _update_watcher(self) -> None:
        wanted = self.snapshot.watch and self.config_path is not None
        if wanted and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        elif not wanted and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        """Reload when the config file's content changes (watchfiles debounces bursts).

        The folder is watched and the file's bytes compared, not the changed names: editors
        replace the file (a new inode), and a Kubernetes ConfigMap volume swaps a `..data`
        symlink, so no event names the file itself."""
        assert self.config_path is not None
        path = self.config_path.absolute()
        log.info("admin.watch path=%s", path)
        seen = await asyncio.to_thread(file_digest, path)
        async for _ in awatch(path.parent, recursive=False):
            now = await asyncio.to_thread(file_digest, path)
            if now != seen:
                seen = now
                await self.reload_from_file("watch")

    async def reload_from_file(self, source: str) -> dict[str, Any]:
        """Validate the config file and swap it in; on error keep the running config.

        Returns (and keeps in `last_reload`) the result: result ok|error, source, time, error.
        """
        async with self._reload_lock:
            if self.config_path is None:
                error = "dicomlb was started without a configuration file; nothing to reload"
                snapshot = None
            else:
                try:
                    snapshot = await asyncio.to_thread(
                        functools.partial(
                            load_snapshot, self.config_path, workers=self.file_snapshot.workers
                        )
                    )
                    if self.worker is not None:
                        snapshot = for_worker(snapshot, self.worker)
                    error = None
                except ConfigError as err:
                    snapshot, error = None, str(err)
            if snapshot is None:
                log.error("admin.reload result=error source=%s error=%r", source, error)
                self.metrics.reload_finished(ok=False, source=source, error=error or "")
                self.last_reload = {
                    "result": "error",
                    "source": source,
                    "time": time.time(),
                    "error": error,
                    "restart_needed": [],
                }
                return self.last_reload
            waiting = await self.reload(snapshot)
            log.info(
                "admin.reload result=ok source=%s path=%s restart_needed=%s",
                source,
                self.config_path,
                ",".join(waiting) or "-",
            )
            self.metrics.reload_finished(ok=True, source=source)
            self.last_reload = {
                "result": "ok",
                "source": source,
                "time": time.time(),
                "error": None,
                "restart_needed": list(waiting),
            }
            return self.last_reload

    # -------------------------------------------------------- operator actions

    def set_backend_mode(self, name: str, mode: str) -> BackendState:
        """`enabled`, `draining` (no new work; in flight finishes) or `disabled` (the same, and
        idle upstream associations are released now). Raises KeyError for an unknown name."""
        backend = self.runtime.backends[name]
        backend.mode = mode
        backend.enabled = mode == "enabled"
        if backend.enabled and backend.reset_health():  # the operator vouches for it
            log.warning("backend.up backend=%s cause=admin", name)
            self.metrics.backend_transition(name, up=True, cause="admin")
        if mode == "disabled":
            self._spawn(self.runtime.upstreams[name].close())
        self.metrics.admin_actions.labels(mode).inc()
        log.warning("admin.backend backend=%s mode=%s", name, mode)
        return backend

    async def add_backend(self, pool: str, data: Any) -> BackendState:
        """Add a backend (a mapping as in the file) to `pool`: the admin API provider's, kept
        across reloads (and restarts, with a state_dir). Raises ConfigError, ChangeError,
        OSError (the state file could not be written: nothing changed)."""
        config = build_backend(data, f"pools.{pool}.backends[+]")
        async with self._reload_lock:
            if pool not in self.file_snapshot.pools:
                raise ChangeError(
                    f'pool "{pool}" does not exist; use one of {", ".join(self.snapshot.pools)}'
                )
            found = changes.find_backend(self.snapshot, config.name)
            if found is not None or any(e.name == config.name for e in self.api_backends):
                where = f" in pool {found[0].name}" if found is not None else ""
                raise ChangeError(
                    f'backend "{config.name}" already exists{where}; pick another name'
                )
            entry = api.ApiBackend(pool=pool, data=dict(data))
            trial = self._merge(api.definitions([entry]))
            for item in trial.items:
                if (
                    item.provider is Provider.API
                    and item.name == config.name
                    and item.status is not ItemStatus.OK
                ):
                    raise ChangeError(item.error or f"backend {config.name} cannot be added")
            entries = [*self.api_backends, entry]
            await self._save_api(entries)
            self.api_backends = entries
            await self._apply()
        self.metrics.admin_actions.labels("add").inc()
        log.warning(
            "admin.backend backend=%s mode=added pool=%s dicom=%s", config.name, pool, config.dicom
        )
        return self.runtime.backends[config.name]

    async def remove_backend(self, name: str) -> None:
        """Remove a backend; its associations in flight finish. One the API added leaves for
        good; one of the file's until the next reload from the file; Docker's cannot be
        removed here. A pool keeps at least one backend. Raises ChangeError, OSError."""
        async with self._reload_lock:
            found = changes.find_backend(self.snapshot, name)
            if found is None:
                raise ChangeError(f'backend "{name}" does not exist')
            pool, _ = found
            if len(pool.backends) == 1:
                raise ChangeError(
                    f'backend "{name}" is the last of pool {pool.name}; add another first, or '
                    "drain it"
                )
            provider = self.merged.provider_of(name)
            if provider is Provider.DOCKER:
                origin = next(i.origin for i in self.merged.items if i.name == name)
                raise ChangeError(
                    f'backend "{name}" comes from Docker ({origin}); stop the container or '
                    "change its labels"
                )
            if provider is Provider.API:
                entries = [e for e in self.api_backends if e.name != name]
                await self._save_api(entries)
                self.api_backends = entries
            else:
                self.file_snapshot = changes.remove_backend(self.file_snapshot, name)
            await self._apply()
        self.metrics.admin_actions.labels("remove").inc()
        log.warning("admin.backend backend=%s mode=removed", name)

    async def _save_api(self, entries: list[api.ApiBackend]) -> None:
        """Keep the API's backends in state_dir (without one they last until a restart)."""
        state_dir = self.snapshot.state_dir
        if state_dir is not None:
            await asyncio.to_thread(api.save, state_dir, entries)

    def provider_items(self) -> list[Item]:
        return list(self.merged.items)

    def providers_status(self) -> dict[str, Any]:
        state_dir = self.snapshot.state_dir
        docker = self.snapshot.providers.docker
        watcher = self.docker
        return {
            "file": {"source": self.file_snapshot.source},
            "api": {
                "backends": len(self.api_backends),
                "state_file": str(Path(state_dir) / api.STATE_FILE) if state_dir else None,
            },
            "docker": None
            if docker is None
            else {
                "endpoint": docker.endpoint,
                "connected": watcher is not None and watcher.connected,
                "last_error": watcher.last_error if watcher is not None else None,
                "containers": len(watcher.containers) if watcher is not None else 0,
            },
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------- state

    def dicom_listener(self) -> DicomListenerStatus | None:
        config = self.snapshot.dicom
        if self.dicom is None or config is None:
            return None
        stats = self.dicom.stats
        return DicomListenerStatus(
            host=config.host,
            port=self.dicom.port,
            ae_title=config.ae_title,
            max_associations=config.max_associations,
            active=stats.active,
            accepted=stats.accepted,
            rejected=stats.rejected,
            aborted=stats.aborted,
            negotiating=stats.negotiating,
            refused=stats.refused,
        )

    def http_listener(self) -> HttpListenerStatus | None:
        if self.http is None:
            return None
        config = self.http.config
        return HttpListenerStatus(
            host=config.host,
            port=config.port,
            active=len(self.http.clients),
            max_connections=config.max_connections,
        )

    def pools(self) -> list[Pool]:
        return list(self.runtime.pools.values())

    def pools_in_use(self) -> set[str]:
        return {p.name for p in self.runtime.pools_in_use()}

    def backend_connections(self, backend: str) -> BackendConnections:
        upstream = self.runtime.upstreams.get(backend)
        state = self.runtime.backends.get(backend)
        budget = state.budget if state is not None and state.config.http is not None else None
        checker = self.checkers.get(backend)
        conns = self.http.http.connections.get(backend) if self.http is not None else None
        return BackendConnections(
            upstream_open=upstream.open if upstream is not None else 0,
            upstream_idle=len(upstream.idle) if upstream is not None else 0,
            last_check_error=checker.last_error if checker is not None else None,
            http_open=conns.open if conns is not None else None,
            http_idle=len(conns.idle) if conns is not None else None,
            http_in_use=budget.in_use if budget is not None else None,
            http_limit=budget.limit if budget is not None else None,
        )

    def associations(self) -> list[AssociationStatus]:
        if self.dicom is None:
            return []
        return [
            AssociationStatus(
                peer=f"{a.peer[0]}:{a.peer[1]}",
                calling_aet=a.calling_ae,
                called_aet=a.called_ae,
                started=a.started,
                messages=a.messages,
                bytes_in=a.bytes_in,
                busy=a.busy,
            )
            for a in self.dicom.associations
            if a.counted
        ]

    def pool_of(self, backend: str) -> str:
        for pool in self.runtime.pools.values():
            if any(b.name == backend for b in pool.backends):
                return pool.name
        return ""

    def ready(self) -> tuple[bool, list[str]]:
        """Whether this instance can take traffic now: its listeners accept, and every route
        has an available backend or spools with room; else the reasons it cannot."""
        snapshot = self.snapshot
        pools = self.runtime.pools
        down = [
            name
            for name, config, listener in (
                ("dicom", snapshot.dicom, self.dicom),
                ("http", snapshot.http, self.http),
            )
            if config is not None
            and (listener is None or listener.server is None or not listener.server.is_serving())
        ]
        routes = [
            RouteReadiness(
                name=r.name,
                listener="dicom",
                pool=r.pool.name,
                available=pools[r.pool.name].has_available(),
                spooled=r.ack is Ack.SPOOL,
            )
            for r in snapshot.routes
        ]
        routes += [
            RouteReadiness(
                name=r.name,
                listener="http",
                pool=r.pool.name,
                available=any(b.http_available for b in pools[r.pool.name].backends),
                spooled=False,
            )
            for r in snapshot.http_routes
        ]
        refusal = self.spool.refusal() if self.spool is not None else "no spool"
        reasons = not_ready_reasons(down, routes, refusal)
        return not reasons, reasons

    def pools_unavailable(self) -> list[str]:
        """The pools in use (by a route or the C-ECHO option) without an available backend."""
        return [
            p.name
            for p in self.runtime.pools_in_use()
            if not (p.has_available() or any(b.http_available for b in p.backends))
        ]

    def state_for_metrics(self) -> dict[str, Any]:
        """Live state the Prometheus collector reads at scrape time."""
        runtime = self.runtime
        backends = []
        for pool in runtime.pools.values():
            for b in pool.backends:
                upstream = runtime.upstreams[b.name]
                backends.append(
                    {
                        "pool": pool.name,
                        "name": b.name,
                        "up": b.health.up,
                        "enabled": b.enabled,
                        "active": b.active,
                        "upstream_open": upstream.open,
                        "upstream_idle": len(upstream.idle),
                        "http_connections": b.budget.in_use if b.config.http else None,
                        "http_connection_limit": b.budget.limit if b.config.http else None,
                    }
                )
        associations = self.dicom.associations if self.dicom is not None else set()
        return {
            "backends": backends,
            "pools": {
                name: sum(1 for b in pool.backends if b.available)
                for name, pool in runtime.pools.items()
            },
            "associations_active": self.dicom.stats.active if self.dicom is not None else 0,
            "open_bytes": sum(a.bytes_in for a in associations if a.counted),
            "ready": self.ready()[0],
            "pools_unavailable": len(self.pools_unavailable()),
            "http_connections": len(self.http.clients) if self.http is not None else None,
            "certificates": {
                name: listener.tls.expires
                for name, listener in (("dicom", self.snapshot.dicom), ("http", self.snapshot.http))
                if listener is not None
                and listener.tls is not None
                and listener.tls.expires is not None
            },
        }

    async def stop(self) -> None:
        """Stop accepting, let associations in flight finish (bounded), close everything."""
        log.info("dicomlb.stopping graceful_timeout=%gs", self.snapshot.graceful_timeout)
        await self._providers.aclose()
        self.docker = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.dicom is not None:
            await self.dicom.stop(self.snapshot.graceful_timeout)
        if self.http is not None:
            await self.http.stop(self.snapshot.graceful_timeout)
        for checker in self.checkers.values():
            await checker.stop()
        self.checkers.clear()
        if self.spool is not None:
            await self.spool.stop()
        await asyncio.gather(*(u.close() for u in self.runtime.upstreams.values()))
        if self._tasks:  # retiring upstream pools of reloads: nothing is in flight any more
            await asyncio.wait(list(self._tasks), timeout=self.snapshot.graceful_timeout)
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        self.runtime.studies.close()
        log.info("dicomlb.stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, ready: Callable[[App], None] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM (or `request_stop`), then stop gracefully; SIGHUP
        reloads the config file."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload_from_file("sighup")))
        try:
            if ready is not None:
                ready(self)
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()


def _warn(snapshot: Snapshot) -> None:
    """What `dicomlb check` warns about, in the log of the running process too."""
    for warning in snapshot.warnings:
        log.warning("config.warning source=%s text=%r", snapshot.source, warning)


def run_loop(main: Callable[[], object]) -> object:
    """Run the coroutine function `main` on uvloop when installed, else asyncio's loop."""
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        return runner.run(main())  # type: ignore[arg-type]
