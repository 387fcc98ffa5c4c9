"""The admin listener: dashboard, JSON API v1, Prometheus `/metrics`, `/healthz`, `/readyz`.

An aiohttp application bound to `listeners.admin` (127.0.0.1:8404 by default). Everything
but the dashboard page and the probes needs the configured bearer token or basic-auth
password when auth is set (the config refuses a non-loopback bind without it). Requests that
change something must send JSON (`Content-Type: application/json`), which a cross-site form
cannot. The API is described in docs/admin-api.yaml.

With a spool, `/api/v1/spool…` reads and changes it through `SpoolView` (the operations of
`dicomlb spool`); with an HTTP listener, the status document has its listener, routes and
the backends' HTTP counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dicomlb import __version__
from dicomlb.admin.spool import SpoolView
from dicomlb.changes import ChangeError
from dicomlb.config import ConfigError
from dicomlb.control import Control
from dicomlb.metrics import CONTENT_TYPE
from dicomlb.pools import BackendState
from dicomlb.providers.merge import ItemStatus
from dicomlb.routing import uid_name
from dicomlb.snapshot import AdminAuth
from dicomlb.spool.ops import OperationError
from dicomlb.spool.state import ItemState

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/healthz/pools", "/favicon.ico"})
MODES = {"drain": "draining", "disable": "disabled", "enable": "enabled"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The dashboard's icon, also given inline in the page: browsers ask for /favicon.ico anyway.
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#171d24"/>'
    b'<path d="M3 4h10M3 8h10M3 12h10" stroke="#58a6ff" stroke-width="2"/></svg>'
)
_UID = re.compile(r"\b[0-9]+(?:\.[0-9]+){2,}\b")


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def authorized(auth: AdminAuth, header: str | None) -> str | None:
    """Who the Authorization header proves to be (`token:` and the first 8 hex digits of its
    digest in the config, or the user), or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and auth.bearer_tokens_sha256:
        digest = _sha256(value)
        for accepted in auth.bearer_tokens_sha256:
            if hmac.compare_digest(digest, accepted):
                return f"token:{accepted[:8]}"
    elif scheme.lower() == "basic" and auth.basic:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        known = auth.basic.get(user)
        if known is not None and hmac.compare_digest(_sha256(password), known):
            return user
    return None


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's Host header names this listener in a way DNS rebinding cannot
    forge: no header (not a browser), an IP literal, `localhost`, or a configured name. A
    page from evil.example whose name was made to resolve to 127.0.0.1 sends `evil.example`."""
    if not host:
        return True
    if host.startswith("["):  # [v6]:port
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _challenge(auth: AdminAuth, request: web.Request) -> str:
    """The WWW-Authenticate of a 401. The dashboard's own requests (`X-Requested-With`) get
    a scheme browsers do not prompt for: a Basic challenge to a script's fetch opens the
    browser's password dialog (in headless Chromium, a request that never ends) instead of
    letting the page ask with its own form."""
    if "X-Requested-With" in request.headers:
        return 'Dashboard realm="dicomlb"'
    return 'Basic realm="dicomlb"' if auth.basic else 'Bearer realm="dicomlb"'


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for the admin listener: a request the peer malformed (a header
    over 8190 bytes, bad syntax) gets aiohttp's 400 and one line here instead of an ERROR
    with a traceback; anything else is aiohttp's to log."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            # The exception's text quotes the request (an Authorization header): not logged.
            log.warning(
                "admin.refused peer=%s status=%d reason=%s",
                args[0] if args else "-",
                exc_info.code,
                type(exc_info).__name__,
            )
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def backend_state(backend: BackendState) -> str:
    """One word for the dashboard: up, down, draining, drained, disabled."""
    if backend.mode == "disabled":
        return "disabled"
    if backend.mode == "draining":
        return "draining" if backend.active else "drained"
    return "up" if backend.health.up else "down"


class AdminServer:
    """The admin listener of one running balancer."""

    def __init__(self, app: Control) -> None:
        self.app = app
        self.web = web.Application(middlewares=[self._middleware])
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.host = ""
        self.port = 0
        r = self.web.router
        r.add_get("/", self.index)
        r.add_get("/favicon.ico", self.favicon)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/healthz/pools", self.pools_health)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/v1/status", self.status)
        r.add_get("/api/v1/listeners", self.listeners)
        r.add_get("/api/v1/pools", self.pools)
        r.add_get("/api/v1/pools/{pool}", self.pool)
        r.add_post("/api/v1/pools/{pool}/backends", self.add_backend, name="add")
        r.add_get("/api/v1/backends", self.backends)
        r.add_get("/api/v1/backends/{name}", self.backend)
        r.add_delete("/api/v1/backends/{name}", self.remove_backend, name="remove")
        r.add_post("/api/v1/backends/{name}/{action:drain|disable|enable}", self.backend_action)
        r.add_get("/api/v1/routes", self.routes)
        r.add_get("/api/v1/associations", self.associations)
        r.add_get("/api/v1/config", self.config)
        r.add_post("/api/v1/reload", self.reload, name="reload")
        r.add_get("/api/v1/spool", self.spool_summary)
        r.add_get("/api/v1/spool/items", self.spool_items)
        r.add_get("/api/v1/spool/items/{id:\\d+}", self.spool_item)
        r.add_delete("/api/v1/spool/items/{id:\\d+}", self.spool_purge_item, name="spool-purge")
        r.add_post("/api/v1/spool/items/{id:\\d+}/retry", self.spool_retry_item, name="spool-retry")
        r.add_post("/api/v1/spool/retry-dead", self.spool_retry_dead, name="spool-retry-dead")
        r.add_post("/api/v1/spool/purge-dead", self.spool_purge_dead, name="spool-purge-dead")
        self.spool = SpoolView(app.spool, app.metrics) if app.spool is not None else None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.web,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        addresses = self._runner.addresses
        self.host = host
        self.port = int(addresses[0][1]) if addresses else port
        log.info("listener.started listener=admin bind=%s:%d", host, self.port)

    async def stop(self) -> None:
        if self.spool is not None:
            await self.spool.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("listener.stopped listener=admin bind=%s:%d", self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # -------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        config = self.app.snapshot.admin
        auth = config.auth if config is not None else AdminAuth()
        user = "anonymous"
        if not auth.required:
            host = request.headers.get("Host")
            if not host_allowed(host, config.allowed_hosts if config is not None else frozenset()):
                log.warning(
                    "admin.refused peer=%s status=421 reason=host_not_allowed host=%s",
                    request.remote,
                    host,
                )
                return web.json_response(
                    {
                        "error": f"Host {host} is not this listener's; use localhost or its "
                        "address, or add the name to listeners.admin.allowed_hosts"
                    },
                    status=421,
                )
        elif request.path not in OPEN_PATHS:
            found = authorized(auth, request.headers.get("Authorization"))
            if found is None:
                log.warning(
                    "admin.unauthorized peer=%s method=%s path=%s",
                    request.remote,
                    request.method,
                    request.path,
                )
                schemes = (["basic"] if auth.basic else []) + (
                    ["bearer"] if auth.bearer_tokens_sha256 else []
                )
                return web.json_response(
                    {"error": "authentication required", "schemes": schemes},
                    status=401,
                    headers={"WWW-Authenticate": _challenge(auth, request)},
                )
            user = found
        status = 500
        try:
            if request.method in ("POST", "PUT", "PATCH", "DELETE") and (
                request.content_type != "application/json"
            ):
                status = 415
                return web.json_response(
                    {"error": "send Content-Type: application/json (a body of {} is enough)"},
                    status=415,
                )
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        finally:
            self._log_request(request, user, status, time.monotonic() - started)

    def _log_request(self, request: web.Request, user: str, status: int, seconds: float) -> None:
        """Every request that may change something: `admin.audit` (who, what, from where, the
        outcome); reads: `admin.request` at DEBUG."""
        ms = int(seconds * 1000)
        if request.method in ("GET", "HEAD", "OPTIONS"):
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "admin.request peer=%s user=%s method=%s path=%s status=%d ms=%d",
                    request.remote,
                    user,
                    request.method,
                    request.path,
                    status,
                    ms,
                )
            return
        match = request.match_info
        log.warning(
            "admin.audit action=%s backend=%s pool=%s item=%s user=%s peer=%s method=%s "
            "path=%s status=%d ms=%d",
            match.get("action") or match.route.name or "-",
            match.get("name", "-"),
            match.get("pool", "-"),
            match.get("id", "-"),
            user,
            request.remote,
            request.method,
            request.path,
            status,
            ms,
        )

    # -------------------------------------------------------- probes and metrics

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = resources.files("dicomlb.admin").joinpath("static/index.html").read_bytes()
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "alive", "version": __version__})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        ready, reasons = self.app.ready()
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if reasons:
            body["reasons"] = reasons
        return web.json_response(body, status=200 if ready else 503)

    async def pools_health(self, request: web.Request) -> web.StreamResponse:
        missing = self.app.pools_unavailable()
        return web.json_response(
            {
                "status": "degraded" if missing else "ok",
                "pools_without_available_backend": missing,
            },
            status=503 if missing else 200,
        )

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if self.spool is not None:
            await self.spool.summary()  # the spool gauges: the index read now
        return web.Response(
            body=self.app.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE}
        )

    # -------------------------------------------------------- reading

    async def status(self, request: web.Request) -> web.StreamResponse:
        state = self.snapshot_state()
        state["spool"] = await self.spool.summary() if self.spool is not None else None
        return web.json_response(state)

    async def listeners(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._listeners())

    async def pools(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._pools())

    async def pool(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["pool"]
        for pool in self._pools():
            if pool["name"] == name:
                return web.json_response(pool)
        return _not_found(f'pool "{name}" does not exist')

    async def backends(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._backends())

    async def backend(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        for backend in self._backends():
            if backend["name"] == name:
                return web.json_response(backend)
        return _not_found(f'backend "{name}" does not exist')

    async def routes(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._routes())

    async def associations(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._associations())

    async def config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._config())

    # -------------------------------------------------------- actions

    async def backend_action(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        try:
            backend = self.app.set_backend_mode(name, MODES[action])
        except KeyError:
            return _not_found(f'backend "{name}" does not exist')
        return web.json_response(self._backend(backend, self.app.pool_of(name)))

    async def add_backend(self, request: web.Request) -> web.StreamResponse:
        pool = request.match_info["pool"]
        data = await _json_body(request)
        try:
            backend = await self.app.add_backend(pool, data)
        except ConfigError as err:
            return web.json_response({"error": str(err)}, status=422)
        except ChangeError as err:
            status = 404 if "does not exist" in str(err) else 409
            return web.json_response({"error": str(err)}, status=status)
        except OSError as err:
            return _state_not_written(err)
        return web.json_response(self._backend(backend, pool), status=201)

    async def remove_backend(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            await self.app.remove_backend(name)
        except ChangeError as err:
            status = 404 if "does not exist" in str(err) else 409
            return web.json_response({"error": str(err)}, status=status)
        except OSError as err:
            return _state_not_written(err)
        return web.json_response({"removed": name})

    async def reload(self, request: web.Request) -> web.StreamResponse:
        result = await self.app.reload_from_file("api")
        return web.json_response(result, status=200 if result["result"] == "ok" else 422)

    # -------------------------------------------------------- spool

    def _no_spool(self) -> web.StreamResponse:
        return _not_found("there is no spool: add a `spool` section (and `ack: spool` routes)")

    async def spool_summary(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        return web.json_response(await self.spool.summary())

    async def spool_items(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        query = request.query
        try:
            states = [
                ItemState(name)
                for given in query.getall("state", [])
                for name in given.split(",")
                if name
            ]
            limit = int(query.get("limit", "100"))
        except ValueError:
            known = ", ".join(str(s) for s in ItemState)
            return web.json_response(
                {"error": f"state is one of {known} (comma-separated); limit is a number"},
                status=400,
            )
        items = await self.spool.items(
            states=states,
            backend=query.get("backend") or None,
            study=query.get("study") or None,
            limit=limit,
        )
        return web.json_response(items)

    async def spool_item(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        try:
            return web.json_response(await self.spool.item(int(request.match_info["id"])))
        except OperationError as err:
            return _not_found(str(err))

    async def spool_retry_item(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        item_id = int(request.match_info["id"])
        try:
            item = await self.spool.item(item_id)
        except OperationError as err:
            return _not_found(str(err))
        queued = await self.spool.retry([item_id])
        if not queued:
            return web.json_response(
                {
                    "error": f"spooled item {item_id} is {item['state']}"
                    + ("" if item["on_disk"] else ", its file is gone")
                    + "; only dead items (and delivered ones still kept) can be retried"
                },
                status=409,
            )
        log.warning("admin.spool action=retry item=%d", item_id)
        return web.json_response({"queued": queued})

    async def spool_purge_item(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        item_id = int(request.match_info["id"])
        try:
            await self.spool.item(item_id)
        except OperationError as err:
            return _not_found(str(err))
        purged = await self.spool.purge([item_id])
        if not purged:
            return web.json_response(
                {"error": f"spooled item {item_id} is being sent; purge it when the attempt ends"},
                status=409,
            )
        log.warning("admin.spool action=purge item=%d", item_id)
        return web.json_response({"purged": purged})

    async def spool_retry_dead(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        queued = await self.spool.retry(all_dead=True)
        log.warning("admin.spool action=retry-dead items=%d", queued)
        return web.json_response({"queued": queued})

    async def spool_purge_dead(self, request: web.Request) -> web.StreamResponse:
        if self.spool is None:
            return self._no_spool()
        purged = await self.spool.purge(states=[ItemState.DEAD])
        log.warning("admin.spool action=purge-dead items=%d", purged)
        return web.json_response({"purged": purged})

    # -------------------------------------------------------- state as JSON

    def snapshot_state(self) -> dict[str, Any]:
        """Everything the dashboard shows, in one document."""
        ready, reasons = self.app.ready()
        now = time.time()
        metrics = self.app.metrics
        by_class: dict[str, float] = {}
        for labels, value in metrics.counter_values(metrics.messages):
            by_class[labels["status_class"]] = by_class.get(labels["status_class"], 0) + value
        state = self.app.state_for_metrics()
        return {
            "version": __version__,
            "now": now,
            "started": self.app.started_at,
            "worker": None
            if self.app.worker is None
            else {
                "index": self.app.worker.index,
                "count": self.app.worker.count,
                "pid": os.getpid(),
            },
            "ready": ready,
            "not_ready_reasons": reasons,
            "not_ready_pools": self.app.pools_unavailable(),
            "config": self._config(),
            "listeners": self._listeners(),
            "totals": {
                "messages": by_class,
                "received_bytes": metrics.closed_bytes + state["open_bytes"],
            },
            "pools": self._pools(),
            "backends": self._backends(),
            "routes": self._routes(),
            "http_routes": self._http_routes(),
            "associations": self._associations(),
            "http_recent": [r.as_dict() for r in reversed(metrics.recent_http)],
            "errors": [e.as_dict() for e in metrics.errors.records()],
            "protocols": self._protocols(),
            "uid_names": self._uid_names(),
        }

    def _protocols(self) -> list[str]:
        """What this configuration balances, `dicom` and / or `http`: the dashboard leads with
        it and hides what is not there."""
        snapshot = self.app.snapshot
        out = []
        if self.app.dicom_listener() is not None or snapshot.routes:
            out.append("dicom")
        if self.app.http_listener() is not None or snapshot.http_routes:
            out.append("http")
        return out

    def _uid_names(self) -> dict[str, str]:
        """The name of each UID the routes' matches mention (a SOP class), for the page."""
        names: dict[str, str] = {}
        for route in self.app.snapshot.routes:
            for uid in _UID.findall(route.match_text):
                name = uid_name(uid)
                if name:
                    names[uid] = name
        return names

    def _config(self) -> dict[str, Any]:
        """The configuration's source, its last reload, and the merged backends: every
        provider's definitions with their fate (`ok`, `conflict`, `error`)."""
        snapshot = self.app.snapshot
        return {
            "source": snapshot.source,
            "path": str(self.app.config_path) if self.app.config_path else None,
            "watch": snapshot.watch,
            "last_reload": self.app.last_reload,
            "providers": self.app.providers_status(),
            "backends": [
                {
                    "name": item.name,
                    "pool": item.pool,
                    "provider": item.provider.value,
                    "origin": item.origin,
                    "status": item.status.value,
                    "error": item.error,
                }
                for item in self.app.provider_items()
            ],
        }

    def _listeners(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        dicom = self.app.dicom_listener()
        if dicom is not None:
            out.append(
                {
                    "name": "dicom",
                    "bind": f"{dicom.host}:{dicom.port}",
                    "ae_title": dicom.ae_title,
                    "active": dicom.active,
                    "max_associations": dicom.max_associations,
                    "accepted": dicom.accepted,
                    "rejected": dicom.rejected,
                    "aborted": dicom.aborted,
                    "negotiating": dicom.negotiating,
                    "refused": dicom.refused,
                }
            )
        http = self.app.http_listener()
        if http is not None:
            metrics = self.app.metrics
            out.append(
                {
                    "name": "http",
                    "bind": f"{http.host}:{http.port}",
                    "active": http.active,
                    "max_connections": http.max_connections,
                    "requests": sum(v for _, v in metrics.counter_values(metrics.http_requests)),
                }
            )
        admin = self.app.snapshot.admin
        if admin is not None:
            out.append(
                {
                    "name": "admin",
                    "bind": f"{self.host}:{self.port}",
                    "auth": admin.auth.required,
                }
            )
        return out

    def _message_counts(self) -> dict[tuple[str, str], dict[str, float]]:
        """(kind, name) -> {status_class: count}, kind route | pool | backend."""
        counts: dict[tuple[str, str], dict[str, float]] = {}
        metrics = self.app.metrics
        for labels, value in metrics.counter_values(metrics.messages):
            for kind in ("route", "pool", "backend"):
                if labels[kind]:
                    bucket = counts.setdefault((kind, labels[kind]), {})
                    cls = labels["status_class"]
                    bucket[cls] = bucket.get(cls, 0) + value
        return counts

    def _http_counts(self) -> dict[tuple[str, str], dict[str, float]]:
        """(kind, name) -> {status_class: requests}, kind route | pool | backend."""
        counts: dict[tuple[str, str], dict[str, float]] = {}
        metrics = self.app.metrics
        for labels, value in metrics.counter_values(metrics.http_requests):
            for kind in ("route", "pool", "backend"):
                name = labels[kind]
                if name or kind == "route":  # route "": requests no route matched
                    bucket = counts.setdefault((kind, name), {})
                    cls = labels["status_class"]
                    bucket[cls] = bucket.get(cls, 0) + value
        return counts

    def _http_routes(self) -> list[dict[str, Any]]:
        counts = self._http_counts()
        routes = [
            {
                "name": route.name,
                "match": route.match_text,
                "pool": route.pool.name,
                "middlewares": [m.name for m in route.middlewares],
                "hits": sum(counts.get(("route", route.name), {}).values()),
                "requests": counts.get(("route", route.name), {}),
            }
            for route in self.app.snapshot.http_routes
        ]
        unmatched = counts.get(("route", ""))
        if unmatched:
            routes.append(
                {
                    "name": "",
                    "match": "no route matched (404)",
                    "pool": "",
                    "middlewares": [],
                    "hits": sum(unmatched.values()),
                    "requests": unmatched,
                }
            )
        return routes

    def _pools(self) -> list[dict[str, Any]]:
        in_use = self.app.pools_in_use()
        counts = self._message_counts()
        out = []
        for pool in self.app.pools():
            config = pool.config
            names = [b.name for b in pool.backends]
            out.append(
                {
                    "name": pool.name,
                    "strategy": config.strategy.value,
                    "key": config.key_name,
                    "in_use": pool.name in in_use,
                    "instances": config.instances,
                    "backends": names,
                    "available": sum(1 for b in pool.backends if b.available),
                    "active": sum(b.active for b in pool.backends),
                    "messages": counts.get(("pool", pool.name), {}),
                    "latency": self.app.metrics.latency_of(names),
                }
            )
        return out

    def _backends(self) -> list[dict[str, Any]]:
        out = []
        for pool in self.app.pools():
            for backend in pool.backends:
                out.append(self._backend(backend, pool.name))
        return out

    def _backend(self, backend: BackendState, pool: str) -> dict[str, Any]:
        metrics = self.app.metrics
        conns = self.app.backend_connections(backend.name)
        config = backend.config
        provider = next(
            (
                item.provider.value
                for item in self.app.provider_items()
                if item.name == backend.name and item.status is ItemStatus.OK
            ),
            "file",
        )
        return {
            "name": backend.name,
            "pool": pool,
            "provider": provider,
            "dicom": str(config.dicom) if config.dicom is not None else None,
            "http": str(config.http) if config.http is not None else None,
            "weight": config.weight,
            "max_associations": config.max_associations,
            "state": backend_state(backend),
            "up": backend.health.up,
            "enabled": backend.enabled,
            "mode": backend.mode,
            "active": backend.active,
            "upstream_open": conns.upstream_open,
            "upstream_idle": conns.upstream_idle,
            "last_error": conns.last_check_error,
            "checks": [[t, ok] for t, ok in metrics.checks.get(backend.name, ())],
            "transitions": [
                {"time": t, "state": s, "cause": c}
                for t, s, c in metrics.transitions.get(backend.name, ())
            ],
            "messages": self._message_counts().get(("backend", backend.name), {}),
            "latency": metrics.latency(backend.name),
            "http_requests": self._http_counts().get(("backend", backend.name), {}),
            "http_latency": metrics.http_latency(backend.name),
            "http_open_connections": conns.http_open,
            "http_idle_connections": conns.http_idle,
            "http_connections": conns.http_in_use,
            "http_connection_limit": conns.http_limit,
        }

    def _routes(self) -> list[dict[str, Any]]:
        metrics = self.app.metrics
        hits = {
            labels["route"]: value for labels, value in metrics.counter_values(metrics.route_hits)
        }
        counts = self._message_counts()
        return [
            {
                "name": route.name,
                "match": route.match_text or "everything",
                "pool": route.pool.name,
                "hits": hits.get(route.name, 0),
                "messages": counts.get(("route", route.name), {}),
            }
            for route in self.app.snapshot.routes
        ]

    def _associations(self) -> dict[str, Any]:
        now = time.monotonic()
        active: list[dict[str, Any]] = [
            {
                "peer": a.peer,
                "calling_aet": a.calling_aet,
                "called_aet": a.called_aet,
                "seconds": round(now - a.started, 3),
                "messages": a.messages,
                "bytes": a.bytes_in,
                "busy": a.busy,
            }
            for a in self.app.associations()
        ]
        active.sort(key=lambda a: -a["seconds"])
        recent = [r.as_dict() for r in reversed(self.app.metrics.recent_associations)]
        return {"active": active, "recent": recent}


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "the body is not JSON"}', content_type="application/json"
        ) from None


def _state_not_written(err: OSError) -> web.StreamResponse:
    log.error("admin.state_error error=%r", str(err))
    return web.json_response(
        {"error": f"the API's backends could not be written to state_dir ({err}); nothing changed"},
        status=503,
    )


def _not_found(message: str) -> web.StreamResponse:
    return web.json_response({"error": message}, status=404)
