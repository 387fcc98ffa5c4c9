"""The config file: YAML → validated models (pydantic) → `Snapshot`; every error names the field.

`load_snapshot("lb.yaml")` reads and checks a file; `build_snapshot(data)` does the same for
data already loaded. Both raise `ConfigError`, whose text has one line per problem::

    lb.yaml: pools.ct.backends[1].dicom: "ORTHANC@10.0.0.5" has no port; write AET@host:port

Names (pools, backends) are resolved here once, so the snapshot holds references.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StrictBool, StrictInt, ValidationError

from dicomlb.config.admin import AdminListenerModel, build_admin
from dicomlb.config.dicom import (
    BRIDGE_FIELDS,
    DEFAULT_AFFINITY_KEY,
    ECHO_LOCAL,
    BackendModel,
    DicomAddressText,
    DicomListenerModel,
    OrthancModel,
    PoolModel,
    RouteModel,
    backend_store,
)
from dicomlb.config.http import (
    HttpListenerModel,
    HttpRouteModel,
    build_http,
    http_check_config,
    http_pool_config,
)
from dicomlb.config.providers import ProvidersModel, build_providers
from dicomlb.config.spool import SpoolModel, build_spool
from dicomlb.config.tls import backend_tls, listener_tls
from dicomlb.config.tools import (
    NAME,
    NAME_HINT,
    AeTitle,
    ConfigError,
    ConfigIssue,
    Count,
    Interval,
    Model,
    defaults,
    format_duration,
    is_loopback,
    issue_from_pydantic,
    load_yaml,
    unset,
    value_kind,
    written,
)
from dicomlb.dicom.tags import STUDY_INSTANCE_UID, tag_from_name
from dicomlb.routing import MatchError, parse_match
from dicomlb.shadowing import Conjunction, shadowed
from dicomlb.snapshot import (
    Ack,
    AdminListenerConfig,
    AllowRule,
    BackendConfig,
    DicomListenerConfig,
    HealthConfig,
    HttpListenerConfig,
    PoolConfig,
    RouteConfig,
    ScanLimit,
    Snapshot,
    Strategy,
    http_per_instance,
    per_instance,
)

__all__ = ["ConfigModel", "build_backend", "build_snapshot", "load_snapshot"]


class ListenersModel(Model):
    """`listeners`: what dicomlb listens on; a listener left out is not run."""

    dicom: DicomListenerModel | None = Field(default=None, description="The DICOM listener.")
    admin: AdminListenerModel | None = Field(
        default=None, description="The admin listener: dashboard, API, `/metrics`, probes."
    )
    http: HttpListenerModel | None = Field(default=None, description="The HTTP load balancer.")


_SNAPSHOT = defaults(Snapshot)


class ConfigModel(Model):
    """The configuration file of dicomlb."""

    listeners: ListenersModel | None = Field(default=None, description="What dicomlb listens on.")
    pools: dict[str, PoolModel] = Field(
        description="Pools by name: backends and how they are balanced."
    )
    routes: list[RouteModel] = Field(
        default=[], description="DICOM routes, tried in file order; the first match wins."
    )
    http_routes: list[HttpRouteModel] = Field(
        default=[], description="HTTP routes, tried in file order; the first match wins."
    )
    middlewares: dict[str, Any] = Field(
        default={},
        description="Named HTTP middlewares, each one kind with its options, attached to "
        "HTTP routes by name.",
    )
    graceful_timeout: Interval | None = unset(
        "How long associations in flight may finish on SIGINT / SIGTERM before they are aborted.",
        format_duration(_SNAPSHOT["graceful_timeout"]),
    )
    watch: StrictBool | None = unset(
        "Reload when the configuration file changes.", _SNAPSHOT["watch"]
    )
    spool: SpoolModel | None = Field(
        default=None,
        description="The durable store-and-forward queue; needed by `ack: spool` routes.",
    )
    dicom_nodes: dict[AeTitle, DicomAddressText] | None = Field(
        default=None,
        description='`{AET: "AET@host:port"}`: C-MOVE destinations dicomlb relays to itself '
        "(`move_destination: via_balancer`).",
    )
    state_dir: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None,
        description="Directory for `studies.sqlite3` (the study to backend table, and the "
        "storage-commitment instance map) and `api-backends.json` (backends added through "
        "the admin API); none: kept in memory only.",
    )
    providers: ProvidersModel | None = Field(
        default=None,
        description="Where backends come from beside this file: the admin API (always) and "
        "Docker containers' labels. Install configuration: a change waits for a restart.",
    )
    instances: Count | None = unset(
        "How many dicomlb instances run with this configuration in front of the same "
        "backends: each backend's `max_associations` and each pool's `http.max_connections` "
        "are divided by it (rounded down, at least 1), so together the instances stay within "
        "what a backend takes.",
        1,
    )
    workers: Annotated[StrictInt, Field(ge=1, le=MAX_WORKERS)] | None = unset(
        "Worker processes `dicomlb run` starts on this machine, each one an instance: they "
        "share the DICOM and HTTP ports (SO_REUSEPORT), and each has its own admin listener "
        "(the admin port + K for worker K, from 0), spool directory and `state_dir` "
        "(`<directory>/worker-K`). Backends' limits are divided by `instances` x `workers`. "
        "Install configuration: a change waits for a restart.",
        1,
    )


# More worker processes than this is a typo (the machine's cores are far fewer).
MAX_WORKERS = 64


def load_snapshot(path: str | Path, *, workers: int | None = None) -> Snapshot:
    """Read, validate and build the configuration file at `path`. Raises ConfigError.

    `workers`: the worker processes running, when a reload must divide the backends' limits
    by those rather than by a count the file now writes (that one waits for a restart)."""
    return build_snapshot(load_yaml(path), str(path), workers=workers)


def build_snapshot(data: Any, source: str = "<config>", *, workers: int | None = None) -> Snapshot:
    """Validate loaded YAML data and build the snapshot. Raises ConfigError listing every
    problem found."""
    if data is None:
        raise ConfigError(
            source, [ConfigIssue(message="the configuration is empty; write pools and routes")]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    message=f"the top level is {value_kind(data)}; write a mapping with "
                    "listeners, pools and routes"
                )
            ],
        )
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            source, [issue_from_pydantic(e, ConfigModel) for e in err.errors()]
        ) from None
    builder = _Builder(model, workers)
    snapshot = builder.build(source)
    if builder.issues:
        raise ConfigError(source, builder.issues)
    return snapshot


def build_backend(data: Any, path: str = "backend", source: str = "<api>") -> BackendConfig:
    """Validate one backend mapping (as written under `pools.<name>.backends`), e.g. from the
    admin API. Raises ConfigError naming the field."""
    try:
        model = BackendModel.model_validate(data)
    except ValidationError as err:
        found = [issue_from_pydantic(error, BackendModel) for error in err.errors()]
        raise ConfigError(
            source,
            [ConfigIssue(path=f"{path}.{i.path}".rstrip("."), message=i.message) for i in found],
        ) from None
    issues: list[ConfigIssue] = []
    tls = backend_tls(model.tls, f"{path}.tls", issues)
    store = backend_store(model, path, tls, issues)
    if issues:
        raise ConfigError(source, issues)
    return BackendConfig(
        name=model.name,
        dicom=model.dicom,
        tls=tls,
        store=store,
        **written(model, "name", "dicom", "tls", *BRIDGE_FIELDS),
    )


def _reaches(host: str, port: int, bind_host: str, bind_port: int) -> bool:
    """Whether `host:port` is a listener bound at `bind_host:bind_port` on this machine,
    judged from the literal addresses (names other than localhost are not resolved)."""
    if port != bind_port:
        return False
    if host == bind_host:
        return True
    wildcard = bind_host in ("0.0.0.0", "::", "")
    return is_loopback(host) and (wildcard or is_loopback(bind_host))


class _Builder:
    """Cross-field checks and name resolution, collecting every issue."""

    def __init__(self, model: ConfigModel, running_workers: int | None = None) -> None:
        self.model = model
        # The worker processes that share each backend on this machine.
        self.workers = running_workers or model.workers or 1
        self.issues: list[ConfigIssue] = []
        self.warnings: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path=path, message=message))

    def build(self, source: str) -> Snapshot:
        pools = self.pools()
        routes = self.routes(pools)
        dicom = self.dicom_listener(pools)
        if dicom is not None and not self.model.routes:
            example = next(iter(pools), "POOL")
            self.fail(
                "routes",
                "there are no routes, so the dicom listener cannot forward anything; add "
                f"one, e.g. - {{name: default, pool: {example}}}",
            )
        wanted: set[int] = set()
        for _, tags in routes:
            wanted |= tags
        for pool in pools.values():
            if pool.key is not None:
                wanted.add(pool.key)
        if any(route.ack is Ack.SPOOL for route, _ in routes):
            wanted.add(STUDY_INSTANCE_UID)
        extra: dict[str, Any] = {}
        if self.model.graceful_timeout is not None:
            extra["graceful_timeout"] = self.model.graceful_timeout
        if self.model.watch is not None:
            extra["watch"] = self.model.watch
        listeners = self.model.listeners
        admin = build_admin(listeners.admin if listeners else None, self.fail)
        if admin is not None:
            extra["admin"] = admin
        spool = build_spool(self.model.spool, self.fail)
        if spool is not None:
            extra["spool"] = spool
        if self.model.dicom_nodes:
            extra["dicom_nodes"] = types.MappingProxyType(dict(self.model.dicom_nodes))
        if self.model.state_dir is not None:
            extra["state_dir"] = self.model.state_dir
            wanted.add(STUDY_INSTANCE_UID)  # the study -> backend table records every store
        http_listener = listeners.http if listeners else None
        http_tls = (
            listener_tls(http_listener.tls, "listeners.http.tls", self.issues)
            if http_listener is not None and http_listener.tls is not None
            else None
        )
        extra["http"], extra["http_routes"] = build_http(
            http_listener,
            self.model.http_routes,
            self.model.middlewares,
            pools,
            self.fail,
            self.warnings.append,
            http_tls,
        )
        extra["providers"] = providers = build_providers(self.model.providers, self.fail)
        if providers.docker is None:
            for name, pool in pools.items():
                if not pool.backends:
                    self.warnings.append(
                        f'pool "{name}" has no backends: it serves nothing until the admin '
                        "API adds one (or providers.docker brings containers)"
                    )
        self.self_references(pools, dicom, extra["http"])
        if self.model.workers is not None:
            extra["workers"] = self.model.workers
            self.worker_ports(dicom, extra["http"], admin)
        return Snapshot(
            source=source,
            dicom=dicom,
            pools=types.MappingProxyType(pools),
            routes=tuple(route for route, _ in routes),
            wanted_tags=frozenset(wanted),
            warnings=tuple(self.warnings),
            **extra,
        )

    def self_references(
        self,
        pools: Mapping[str, PoolConfig],
        dicom: DicomListenerConfig | None,
        http: HttpListenerConfig | None,
    ) -> None:
        """A backend whose address is one of dicomlb's own listeners: every message would
        come back in and go out again until limits or timeouts stop it."""
        for pool_name, pool in pools.items():
            for i, backend in enumerate(pool.backends):
                pairs = (
                    ("dicom", "DICOM", backend.dicom, dicom, "images", "storage node"),
                    ("http", "HTTP", backend.http, http, "requests", "web server"),
                )
                for field, kind, address, listener, what, peer in pairs:
                    if (
                        address is not None
                        and listener is not None
                        and _reaches(address.host, address.port, listener.host, listener.port)
                    ):
                        self.fail(
                            f"pools.{pool_name}.backends[{i}].{field}",
                            f"{address} is dicomlb's own {kind} listener "
                            f"({listener.host}:{listener.port}); {what} would loop back into "
                            f"it — give the {peer}'s address",
                        )

    def worker_ports(
        self,
        dicom: DicomListenerConfig | None,
        http: HttpListenerConfig | None,
        admin: AdminListenerConfig | None,
    ) -> None:
        """Workers share the data listeners' ports and take admin ports in a row, which must
        not reach a data port."""
        workers = self.model.workers or 1
        if workers <= 1:
            return
        taken = {
            listener.port: name
            for name, listener in (("dicom", dicom), ("http", http))
            if listener is not None
        }
        if admin is not None:
            row = range(admin.port, admin.port + workers)
            for port in row:
                if port in taken:
                    self.fail(
                        "listeners.admin.bind",
                        f"the {workers} workers' admin listeners take ports {row.start}-"
                        f"{row.stop - 1} (one each), and {port} is the {taken[port]} "
                        "listener's; move the admin port",
                    )
            if row.stop - 1 > 65535:
                self.fail(
                    "listeners.admin.bind",
                    f"the {workers} workers' admin listeners take ports {row.start}-"
                    f"{row.stop - 1}, past 65535; give a lower admin port",
                )

    def shared_limits(self, path: str, backend: BackendConfig, processes: int) -> None:
        """Warn where a backend's limit is below the processes sharing it: each keeps 1, so
        together they may open more than it takes."""
        if processes <= 1 or backend.dicom is None or backend.max_associations >= processes:
            return
        instances = processes // self.workers
        who = (
            f"{instances} instance(s) x {self.workers} workers"
            if self.workers > 1
            else f"{instances} instances"
        )
        self.warnings.append(
            f'{path}: backend "{backend.name}" takes {backend.max_associations} '
            f"association(s) at a time (max_associations) but {processes} dicomlb processes "
            f"share it ({who}): each keeps at least 1, so together they may open "
            f"{processes}; raise the backend's limit or run fewer workers"
        )

    def pools(self) -> dict[str, PoolConfig]:
        pools: dict[str, PoolConfig] = {}
        backend_at: dict[str, str] = {}
        for pool_name, spec in self.model.pools.items():
            path = f"pools.{pool_name}"
            if not NAME.fullmatch(pool_name):
                self.fail(path, f'"{pool_name}" is not a valid pool name; {NAME_HINT}')
            key: int | None = None
            key_name: str | None = None
            if spec.strategy is Strategy.AFFINITY:
                key_name = spec.key if spec.key is not None else DEFAULT_AFFINITY_KEY
                try:
                    key = tag_from_name(key_name)
                except ValueError as err:
                    self.fail(f"{path}.key", str(err))
            elif spec.key is not None:
                self.fail(
                    f"{path}.key",
                    f"key is used only by strategy affinity, and this pool is "
                    f"{spec.strategy.value}; remove key or set strategy: affinity",
                )
            instances = (spec.instances or self.model.instances or 1) * self.workers
            backends = []
            for i, b in enumerate(spec.backends):
                b_path = f"{path}.backends[{i}]"
                if b.name in backend_at:
                    self.fail(
                        f"{b_path}.name",
                        f'backend "{b.name}" is already defined at {backend_at[b.name]}; a '
                        "backend name stands for one node, so give each backend its own name",
                    )
                else:
                    backend_at[b.name] = b_path
                tls = backend_tls(b.tls, f"{b_path}.tls", self.issues)
                if b.dicom is None and b.http is None:
                    self.fail(
                        b_path,
                        f'backend "{b.name}" has no address; write dicom: AET@host:port '
                        "and / or http: http://host:port",
                    )
                store = backend_store(b, b_path, tls, self.issues)
                backend = BackendConfig(
                    name=b.name,
                    dicom=b.dicom,
                    tls=tls,
                    store=store,
                    **written(b, "name", "dicom", "tls", *BRIDGE_FIELDS),
                )
                self.shared_limits(b_path, backend, instances)
                backends.append(per_instance(backend, instances))
            health = (
                HealthConfig(
                    **written(spec.health, "http"), http=http_check_config(spec.health.http)
                )
                if spec.health
                else HealthConfig()
            )
            orthanc = spec.orthanc is not None and spec.orthanc is not False
            writer = spec.orthanc.writer if isinstance(spec.orthanc, OrthancModel) else None
            if writer is not None and writer not in {b.name for b in backends}:
                self.fail(
                    f"{path}.orthanc.writer",
                    f'backend "{writer}" is not in pool "{pool_name}"; name one of its '
                    f"backends: {', '.join(b.name for b in backends)}",
                )
            pools[pool_name] = PoolConfig(
                name=pool_name,
                strategy=spec.strategy,
                key=key,
                key_name=key_name,
                health=health,
                backends=tuple(backends),
                http=http_per_instance(http_pool_config(spec.http, orthanc), instances),
                orthanc=orthanc,
                orthanc_writer=writer,
                instances=instances,
                **written(
                    spec, "strategy", "key", "health", "backends", "http", "orthanc", "instances"
                ),
            )
        return pools

    def routes(self, pools: Mapping[str, PoolConfig]) -> list[tuple[RouteConfig, frozenset[int]]]:
        routes: list[tuple[RouteConfig, frozenset[int]]] = []
        matches: list[tuple[str, Conjunction]] = []
        first_at: dict[str, int] = {}
        catch_all: str | None = None
        for i, spec in enumerate(self.model.routes):
            path = f"routes[{i}]"
            if spec.name in first_at:
                self.fail(
                    f"{path}.name",
                    f'route "{spec.name}" is already defined at routes[{first_at[spec.name]}]; '
                    "give each route its own name",
                )
            else:
                first_at[spec.name] = i
            pool = pools.get(spec.pool)
            if pool is None:
                self.fail(
                    f"{path}.pool",
                    f'route "{spec.name}" sends to pool "{spec.pool}", which does not exist; '
                    f"use one of {_names(pools)}",
                )
            if catch_all is not None:
                self.fail(
                    path,
                    f'route "{spec.name}" is unreachable: route "{catch_all}" before it matches '
                    f'everything; move "{catch_all}" last or give it a match',
                )
            try:
                match = parse_match(spec.match, f"{path}.match")
            except MatchError as err:
                self.fail(err.path, err.message)
                continue
            if match.matches_everything and catch_all is None:
                catch_all = spec.name
            matches.append((spec.name, match.conjunction))
            ack = spec.ack or Ack.BACKEND
            if ack is Ack.SPOOL and self.model.spool is None:
                self.fail(
                    f"{path}.ack",
                    f'route "{spec.name}" has ack: spool but there is no spool section; add '
                    "spool: {directory: /var/spool/dicomlb} or use ack: backend",
                )
            mirrors = self.mirrors(spec, path, pools, ack)
            # C-STOREs may also go over HTTP (store_via); other services to such a backend
            # are refused at run time with a status naming it.
            missing = (
                [b.name for b in pool.backends if b.dicom is None and b.store is None]
                if pool
                else []
            )
            if missing:
                self.fail(
                    f"{path}.pool",
                    f'pool "{spec.pool}" has backends without a dicom address '
                    f"({', '.join(missing)}); give each one dicom: AET@host:port (or "
                    "store_via: orthanc_rest | stow_rs to send C-STOREs over http)",
                )
            if pool is not None:
                route = RouteConfig(
                    name=spec.name,
                    match=match.predicate,
                    partial=match.partial,
                    pool=pool,
                    match_text=match.text,
                    ack=ack,
                    mirror=mirrors,
                    query=spec.query,
                    move_destination=spec.move_destination,
                    on_scan_limit=spec.on_scan_limit or ScanLimit.REFUSE,
                )
                routes.append((route, match.tags))
        for name, earlier in shadowed(matches):
            self.warnings.append(
                f'route "{name}" can never match: route "{earlier}" before it matches '
                "everything it matches"
            )
        return routes

    def mirrors(
        self, spec: RouteModel, path: str, pools: Mapping[str, PoolConfig], ack: Ack
    ) -> tuple[PoolConfig, ...]:
        if not spec.mirror:
            return ()
        if ack is not Ack.SPOOL:
            self.fail(
                f"{path}.mirror",
                f'route "{spec.name}" mirrors through the spool, so it needs ack: spool; add '
                "ack: spool to the route (mirrors of ack: backend routes are not built yet)",
            )
        mirrors: list[PoolConfig] = []
        for j, name in enumerate(spec.mirror):
            mirror = pools.get(name)
            if mirror is None:
                self.fail(
                    f"{path}.mirror[{j}]",
                    f'pool "{name}" does not exist; use one of {_names(pools)}',
                )
            elif name == spec.pool or mirror in mirrors:
                self.fail(
                    f"{path}.mirror[{j}]",
                    f'pool "{name}" already gets this route\'s instances; list each pool once',
                )
            else:
                mirrors.append(mirror)
        return tuple(mirrors)

    def dicom_listener(self, pools: Mapping[str, PoolConfig]) -> DicomListenerConfig | None:
        if self.model.listeners is None or self.model.listeners.dicom is None:
            return None
        spec = self.model.listeners.dicom
        kwargs = written(spec, "bind", "echo", "transfer_syntaxes", "tls", "allow")
        if spec.allow is not None:
            kwargs["allow"] = tuple(AllowRule(aet=a.aet, network=a.cidr) for a in spec.allow)
        if spec.tls is not None:
            kwargs["tls"] = listener_tls(spec.tls, "listeners.dicom.tls", self.issues)
        if spec.bind is not None:
            kwargs["host"], kwargs["port"] = spec.bind
        if spec.transfer_syntaxes is not None:
            entries = spec.transfer_syntaxes
            kwargs["any_transfer_syntax"] = any(not entry.uid for entry in entries)
            kwargs["transfer_syntaxes"] = tuple(dict.fromkeys(e.uid for e in entries if e.uid))
            kwargs["encodings"] = types.MappingProxyType(
                {e.uid: e.encoding for e in entries if e.encoding is not None}
            )
        if spec.echo != ECHO_LOCAL:
            echo_pool = pools.get(spec.echo)
            if echo_pool is None:
                self.fail(
                    "listeners.dicom.echo",
                    f'pool "{spec.echo}" does not exist; write "{ECHO_LOCAL}" to answer C-ECHO '
                    f"here, or one of {_names(pools)}",
                )
            elif any(b.dicom is None for b in echo_pool.backends):
                self.fail(
                    "listeners.dicom.echo",
                    f'pool "{spec.echo}" has backends without a dicom address; C-ECHO needs '
                    "dicom: AET@host:port on each",
                )
            kwargs["echo_pool"] = echo_pool
        return DicomListenerConfig(**kwargs)


def _names(names: Any) -> str:
    listed = ", ".join(names)
    return listed if listed else "(none defined; add a pool under pools)"
