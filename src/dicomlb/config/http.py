"""The HTTP parts of the config file: pydantic models for `listeners.http`, `http_routes`,
`middlewares`, `pools.<name>.http`, `pools.<name>.health.http` and backends' `http:`, and
the builder step that turns them into snapshot parts. `dicomlb.config.build` owns the file
and calls in here; errors are `ConfigIssue`s naming the field like everywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, ValidationError

from dicomlb.config.tls import ListenerTlsModel
from dicomlb.config.tools import Duration, Fail, Model, dotted, issue_from_pydantic, split_host_port
from dicomlb.http.middlewares import KINDS
from dicomlb.http.paths import EncodedSlashes
from dicomlb.http.routing import parse_http_match
from dicomlb.routing import MatchError
from dicomlb.snapshot import (
    HttpAddress,
    HttpCheckConfig,
    HttpKey,
    HttpListenerConfig,
    HttpPoolConfig,
    HttpRouteConfig,
    KeyKind,
    MiddlewareConfig,
    PoolConfig,
    TlsConfig,
)

__all__ = [
    "HttpCheckModel",
    "HttpListenerModel",
    "HttpPoolModel",
    "HttpRouteModel",
    "build_http",
    "http_check_config",
    "http_pool_config",
    "parse_http_address",
    "proxy_address_issue",
]


def _bind(value: Any) -> tuple[str, int]:
    form = "host:port, e.g. 0.0.0.0:8080 or [::]:8080"
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address to listen on; write {form}")
    return split_host_port(value.strip(), value.strip(), form)


def parse_http_address(value: Any) -> HttpAddress:
    """`http://host:port` (port 80 when omitted) or `https://host:port` (443); a base path
    is parsed too, but only backends with `store_via` may use one (config.dicom checks)."""
    form = "http://host:port"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an HTTP address; write {form}")
    text = value.strip()
    scheme = "https" if text.startswith("https://") else "http"
    if not text.startswith(f"{scheme}://"):
        raise ValueError(f'"{text}" does not start with http://; write {form}')
    rest = text[len(scheme) + 3 :].rstrip("/")
    rest, slash, path = rest.partition("/")
    if not rest.endswith("]") and ":" not in rest.rpartition("]")[2]:
        rest += ":443" if scheme == "https" else ":80"
    host, port = split_host_port(rest, text, form)
    return HttpAddress(host=host, port=port, scheme=scheme, path=f"/{path}" if slash else "")


def proxy_address_issue(address: HttpAddress) -> str | None:
    """Why an address cannot be used by the HTTP proxy / C-STORE-less backends, if it
    cannot (base paths are for `store_via` backends only; https is fine: the backend's
    `tls` block, or the system's CAs)."""
    form = "http://host:port or https://host:port"
    if address.path:
        return (
            f'"{address}" has a path; write {form} and rewrite paths with a middleware '
            "(add_prefix), or use store_via"
        )
    return None


def _key(value: Any) -> HttpKey:
    hint = 'write "header:NAME", "cookie:NAME" or "client_ip"'
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an HTTP key; {hint}")
    if value == "client_ip":
        return HttpKey(kind=KeyKind.CLIENT_IP)
    kind, colon, name = value.partition(":")
    if not colon or kind not in ("header", "cookie") or not name.strip():
        raise ValueError(f'"{value}" is not an HTTP key; {hint}')
    name = name.strip()
    return HttpKey(kind=KeyKind(kind), name=name.lower() if kind == "header" else name)


class HttpListenerModel(Model):
    bind: Annotated[tuple[str, int], BeforeValidator(_bind)] | None = None
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = None
    max_head_size: Annotated[StrictInt, Field(ge=1024)] | None = None
    head_timeout: Duration | None = None
    keepalive_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    tunnel_timeout: Duration | None = None
    discard_body_max: Annotated[StrictInt, Field(ge=0)] | None = None
    encoded_slashes: EncodedSlashes | None = None
    tls: ListenerTlsModel | None = None  # HTTPS; built like listeners.dicom.tls


class PassiveModel(Model):
    failures: Annotated[StrictInt, Field(ge=1)] = 5
    window: Duration = 10.0


class HttpPoolModel(Model):
    key: Annotated[HttpKey, BeforeValidator(_key)] | None = None
    sticky: StrictBool | None = None
    connect_timeout: Duration | None = None
    read_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    commit_timeout: Duration | None = None
    retries: Annotated[StrictInt, Field(ge=0)] | None = None
    retry_buffer: Annotated[StrictInt, Field(ge=0)] | None = None
    passive: StrictBool | PassiveModel | None = None
    slow_start: Duration | None = None
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = None
    acquire_timeout: Duration | None = None


def _status_list(value: Any) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values
    ):
        raise ValueError(f"{value!r} is not a status or list of statuses (100-599)")
    return tuple(values)


class HttpCheckModel(Model):
    method: Annotated[str, Field(strict=True, pattern=r"^[A-Z]+$")] | None = None
    path: Annotated[str, Field(strict=True, pattern=r"^/")] | None = None
    status: Annotated[tuple[int, ...], BeforeValidator(_status_list)] | None = None
    username: Annotated[str, Field(strict=True)] | None = None
    password: Annotated[str, Field(strict=True)] | None = None
    host: Annotated[str, Field(strict=True)] | None = None


class HttpRouteModel(Model):
    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    match: Any = None
    pool: Annotated[str, Field(strict=True)]
    middlewares: list[Annotated[str, Field(strict=True)]] = []
    read_timeout: Duration | None = None


# --- middlewares ----------------------------------------------------------------------------


class _StripPrefix(Model):
    prefixes: Annotated[list[Annotated[str, Field(pattern=r"^/")]], Field(min_length=1)]


class _AddPrefix(Model):
    prefix: Annotated[str, Field(strict=True, pattern=r"^/")]


class _ReplacePath(Model):
    regex: Annotated[str, Field(strict=True)]
    replacement: Annotated[str, Field(strict=True)]


class _HeaderEdits(Model):
    set: dict[str, str | int] = {}
    remove: list[str] = []


class _Headers(Model):
    request: _HeaderEdits = _HeaderEdits()
    response: _HeaderEdits = _HeaderEdits()


class _Forwarded(Model):
    x_forwarded: StrictBool = True
    forwarded: StrictBool = True


class _BasicAuth(Model):
    users: Annotated[
        dict[str, Annotated[str, Field(pattern=r"^pbkdf2_sha256\$")]], Field(min_length=1)
    ]
    realm: str = "dicomlb"
    remove: StrictBool = True


class _IpFilter(Model):
    allow: list[str] = []
    deny: list[str] = []


class _MaxBody(Model):
    limit: Annotated[StrictInt, Field(ge=0)]


class _RateLimit(Model):
    average: Annotated[float, Field(gt=0)]
    period: Duration = 1.0
    burst: Annotated[StrictInt, Field(ge=0)] = 0


_MIDDLEWARE_MODELS: dict[str, type[Model]] = {
    "strip_prefix": _StripPrefix,
    "add_prefix": _AddPrefix,
    "replace_path": _ReplacePath,
    "headers": _Headers,
    "forwarded": _Forwarded,
    "basic_auth": _BasicAuth,
    "ip_filter": _IpFilter,
    "max_body": _MaxBody,
    "rate_limit": _RateLimit,
}
assert set(_MIDDLEWARE_MODELS) == set(KINDS)


def _middleware(name: str, spec: Any, path: str, fail: Fail) -> MiddlewareConfig | None:
    kinds = ", ".join(_MIDDLEWARE_MODELS)
    if not isinstance(spec, dict) or len(spec) != 1:
        fail(
            path,
            f"write one kind with its options, e.g. {{strip_prefix: {{prefixes: [/a]}}}}; "
            f"kinds: {kinds}",
        )
        return None
    kind, options = next(iter(spec.items()))
    model = _MIDDLEWARE_MODELS.get(kind)
    if model is None:
        fail(f"{path}.{kind}", f'unknown middleware kind "{kind}"; use one of {kinds}')
        return None
    try:
        parsed = model.model_validate(options or {})
    except ValidationError as err:
        for e in err.errors():
            issue = issue_from_pydantic(e, model)
            where = dotted([f"{path}.{kind}", *e["loc"]])
            fail(where, issue.message)
        return None
    values: dict[str, Any] = parsed.model_dump()
    try:
        if kind == "replace_path":
            re.compile(values["regex"])
        if kind == "ip_filter":
            for net in [*values["allow"], *values["deny"]]:
                ipaddress.ip_network(net, strict=False)
    except (re.error, ValueError) as err:
        fail(f"{path}.{kind}", str(err))
        return None
    if kind == "headers":
        values = {"request": values["request"], "response": values["response"]}
    return MiddlewareConfig(name=name, kind=kind, options=values)


# --- building -------------------------------------------------------------------------------


def http_pool_config(model: HttpPoolModel | None, orthanc: bool) -> HttpPoolConfig | None:
    """The pool's HTTP options (None when nothing is set: the defaults)."""
    values = (
        {}
        if model is None
        else {k: v for k in type(model).model_fields if (v := getattr(model, k)) is not None}
    )
    passive = values.get("passive")
    if isinstance(passive, PassiveModel):
        values.update(
            passive=True, passive_failures=passive.failures, passive_window=passive.window
        )
    if orthanc and "idle_timeout" not in values:
        values["idle_timeout"] = 0.8  # Orthanc closes idle keep-alive connections after 1 s
    return HttpPoolConfig(**values) if values else None


def http_check_config(model: HttpCheckModel | None) -> HttpCheckConfig | None:
    if model is None:
        return None
    return HttpCheckConfig(
        **{k: v for k in type(model).model_fields if (v := getattr(model, k)) is not None}
    )


def build_http(
    listener: HttpListenerModel | None,
    routes: list[HttpRouteModel],
    middlewares: Mapping[str, Any],
    pools: Mapping[str, PoolConfig],
    fail: Fail,
    tls: TlsConfig | None = None,
) -> tuple[HttpListenerConfig | None, tuple[HttpRouteConfig, ...]]:
    """The HTTP listener and routes; problems go to `fail(path, message)`. `tls`: the
    listener's `tls` block, built by `dicomlb.config.build` like the DICOM listener's."""
    built_mw: dict[str, MiddlewareConfig] = {}
    for name, spec in middlewares.items():
        m = _middleware(name, spec, f"middlewares.{name}", fail)
        if m is not None:
            built_mw[name] = m
    out: list[HttpRouteConfig] = []
    seen: dict[str, int] = {}
    catch_all: str | None = None
    for i, spec in enumerate(routes):
        path = f"http_routes[{i}]"
        if spec.name in seen:
            fail(
                f"{path}.name",
                f'route "{spec.name}" is already defined at '
                f"http_routes[{seen[spec.name]}]; give each route its own name",
            )
        seen.setdefault(spec.name, i)
        pool = pools.get(spec.pool)
        if pool is None:
            fail(
                f"{path}.pool",
                f'pool "{spec.pool}" does not exist; use one of {", ".join(pools) or "(none)"}',
            )
        else:
            missing = [b.name for b in pool.backends if b.http is None]
            proxied = [b for b in pool.backends if b.http is not None]
            for b in proxied:  # base paths: only the bridge (store_via) speaks them
                issue = proxy_address_issue(b.http) if b.http is not None else None
                if issue is not None:
                    fail(f"{path}.pool", f'pool "{pool.name}": backend {b.name}: {issue}')
            if missing:
                fail(
                    f"{path}.pool",
                    f'pool "{pool.name}" has backends without an http address '
                    f"({', '.join(missing)}); give each one http: http://host:port",
                )
        if catch_all is not None:
            fail(
                path,
                f'route "{spec.name}" is unreachable: route "{catch_all}" before it '
                f'matches everything; move "{catch_all}" last or give it a match',
            )
        try:
            match = parse_http_match(spec.match, f"{path}.match")
        except MatchError as err:
            fail(err.path, err.message)
            continue
        if match.matches_everything and catch_all is None:
            catch_all = spec.name
        chain = []
        for j, name in enumerate(spec.middlewares):
            if name not in built_mw:
                if name not in middlewares:
                    fail(
                        f"{path}.middlewares[{j}]",
                        f'middleware "{name}" does not exist; '
                        f"define it under middlewares or use one of "
                        f"{', '.join(middlewares) or '(none)'}",
                    )
                continue
            chain.append(built_mw[name])
        if pool is not None:
            out.append(
                HttpRouteConfig(
                    name=spec.name,
                    match=match.predicate,
                    pool=pool,
                    middlewares=tuple(chain),
                    match_text=match.text,
                    read_timeout=spec.read_timeout,
                )
            )
    config: HttpListenerConfig | None = None
    if listener is not None:
        kwargs: dict[str, Any] = {
            k: v
            for k in type(listener).model_fields
            if k not in ("bind", "tls") and (v := getattr(listener, k)) is not None
        }
        if tls is not None:
            kwargs["tls"] = tls
        if listener.bind is not None:
            kwargs["host"], kwargs["port"] = listener.bind
        config = HttpListenerConfig(**kwargs)
        if not routes:
            example = next(iter(pools), "POOL")
            fail(
                "http_routes",
                "there are no http_routes, so the http listener cannot forward "
                f"anything; add one, e.g. - {{name: default, pool: {example}}}",
            )
    return config, tuple(out)
