"""The HTTP parts of the config file: pydantic models for `listeners.http`, `http_routes`,
`middlewares`, `pools.<name>.http`, `pools.<name>.health.http` and backends' `http:`, and
the builder step that turns them into snapshot parts. `dicomlb.config.build` owns the file
and calls in here; errors are `ConfigIssue`s naming the field like everywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, ValidationError, WithJsonSchema

from dicomlb.config.tls import ListenerTlsModel
from dicomlb.config.tools import (
    BIND_SCHEMA,
    Duration,
    Fail,
    MatchSpec,
    Model,
    defaults,
    dotted,
    format_duration,
    host_port,
    issue_from_pydantic,
    split_host_port,
    unset,
)
from dicomlb.http.middlewares import KINDS
from dicomlb.http.paths import EncodedSlashes
from dicomlb.http.routing import parse_http_match
from dicomlb.routing import MatchError
from dicomlb.shadowing import Conjunction, shadowed
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
    "MIDDLEWARE_MODELS",
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


_LISTENER = defaults(HttpListenerConfig)
_POOL = defaults(HttpPoolConfig)
_CHECK = defaults(HttpCheckConfig)


class HttpListenerModel(Model):
    """`listeners.http`: where and how HTTP clients are accepted."""

    bind: Annotated[tuple[str, int], BeforeValidator(_bind), BIND_SCHEMA] | None = unset(
        "Address and port to listen on.", host_port(_LISTENER["host"], _LISTENER["port"])
    )
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = unset(
        "Open client connections (TLS handshakes and lingering closes included); beyond, 503 "
        "and close.",
        _LISTENER["max_connections"],
    )
    max_head_size: Annotated[StrictInt, Field(ge=1024)] | None = unset(
        "Bytes of request line and headers; beyond, 431 (414 for the target).",
        _LISTENER["max_head_size"],
    )
    head_timeout: Duration | None = unset(
        "A request head must be complete this long after its first byte (slowloris: 408).",
        format_duration(_LISTENER["head_timeout"]),
    )
    keepalive_timeout: Duration | None = unset(
        "An idle client connection between requests is closed after this.",
        format_duration(_LISTENER["keepalive_timeout"]),
    )
    idle_timeout: Duration | None = unset(
        "During a request, nothing may stand still longer (idle, not a whole-request deadline).",
        format_duration(_LISTENER["idle_timeout"]),
    )
    tunnel_timeout: Duration | None = unset(
        "An upgraded (websocket) connection silent this long is closed.",
        format_duration(_LISTENER["tunnel_timeout"]),
    )
    discard_body_max: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Bytes of a request body read and dropped after an early answer so the client keeps "
        "its connection; more gets `Connection: close` (0: never drains).",
        _LISTENER["discard_body_max"],
    )
    encoded_slashes: EncodedSlashes | None = unset(
        "`%2F` / `%5C` in a path: `reject` (400) or `pass` (kept encoded, never a separator).",
        _LISTENER["encoded_slashes"].value,
    )
    tls: ListenerTlsModel | None = Field(
        default=None, description="HTTPS: clients speak TLS 1.2 or later; none: plain HTTP."
    )


class PassiveModel(Model):
    """`passive: {failures, window}`: when 502/503/504 answers eject a backend."""

    failures: Annotated[StrictInt, Field(ge=1)] = Field(
        default=_POOL["passive_failures"],
        description="502/503/504 answers within `window` that eject a backend.",
    )
    window: Duration = Field(
        default=_POOL["passive_window"],
        description="The window `failures` are counted in, seconds.",
    )


class HttpPoolModel(Model):
    """`pools.<name>.http`: how HTTP requests are balanced and relayed to the pool."""

    key: (
        Annotated[
            HttpKey,
            BeforeValidator(_key),
            WithJsonSchema({"type": "string", "pattern": "^(client_ip|header:.+|cookie:.+)$"}),
        ]
        | None
    ) = unset(
        "`header:NAME`, `cookie:NAME` or `client_ip`: the affinity / sticky key.", "client_ip"
    )
    sticky: StrictBool | None = unset(
        "A key's first request goes to the least loaded backend and the key stays there "
        "(100 000 keys, LRU).",
        _POOL["sticky"],
    )
    connect_timeout: Duration | None = unset(
        "TCP connect to a backend.", format_duration(_POOL["connect_timeout"])
    )
    read_timeout: Duration | None = unset(
        "A backend silent this long while its response is due: 504.",
        format_duration(_POOL["read_timeout"]),
    )
    idle_timeout: Duration | None = unset(
        "A pooled keep-alive connection unused this long is closed (`800ms` with `orthanc: "
        "true`: Orthanc closes them after 1 s).",
        format_duration(_POOL["idle_timeout"]),
    )
    commit_timeout: Duration | None = unset(
        "Read timeout of Orthanc `/transfers/push/{id}/commit`.",
        format_duration(_POOL["commit_timeout"]),
    )
    retries: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Other backends tried after a safe failure.", _POOL["retries"]
    )
    retry_buffer: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Request bodies up to this many bytes are kept for a retry; larger ones are never "
        "replayed.",
        _POOL["retry_buffer"],
    )
    passive: StrictBool | PassiveModel | None = unset(
        "Passive ejection: connect errors and timeouts count toward `health.fall`; 502/503/504 "
        "answers eject when `failures` come within `window`; `false`: off.",
        _POOL["passive"],
    )
    slow_start: Duration | None = Field(
        default=None,
        description="After a backend comes back, its share of new requests grows from 5 % to "
        "100 % over this. Unset: off.",
    )
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description="HTTP connections open to each backend of the pool: proxied requests, "
        "the bridge's (`store_via`) and health checks' together; beyond, a request waits for "
        "a free one (`acquire_timeout`). A check goes first in line and an idle keep-alive "
        "connection is closed for it; none within its timeout: the check is skipped, no "
        "verdict. None: no cap.",
    )
    acquire_timeout: Duration | None = unset(
        "How long a request waits for a connection at a capped backend; then 503.",
        format_duration(_POOL["acquire_timeout"]),
    )


def _status_list(value: Any) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values
    ):
        raise ValueError(f"{value!r} is not a status or list of statuses (100-599)")
    return tuple(values)


class HttpCheckModel(Model):
    """`pools.<name>.health.http`: the active HTTP check of backends' HTTP addresses."""

    method: Annotated[str, Field(strict=True, pattern=r"^[A-Z]+$")] | None = unset(
        "The request method.", _CHECK["method"]
    )
    path: Annotated[str, Field(strict=True, pattern=r"^/")] | None = unset(
        "The request path (`/system` for `orthanc: true` pools).", _CHECK["path"]
    )
    status: (
        Annotated[
            tuple[int, ...],
            BeforeValidator(_status_list),
            WithJsonSchema(
                {
                    "anyOf": [
                        {"type": "integer", "minimum": 100, "maximum": 599},
                        {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 100, "maximum": 599},
                            "minItems": 1,
                        },
                    ]
                }
            ),
        ]
        | None
    ) = unset(
        "The status, or list of statuses, of a passed check (`orthanc: true` pools: 200 or 401).",
        list(_CHECK["status"]),
    )
    username: Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="Basic-auth user of the check."
    )
    password: Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="Basic-auth password of the check."
    )
    host: Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="The Host header of the check; default: the backend's host:port."
    )


class HttpRouteModel(Model):
    """One entry of `http_routes`: requests it matches go to its pool; file order, first
    match wins."""

    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = Field(
        description="The route's name, unique among HTTP routes."
    )
    match: MatchSpec = Field(
        default=None,
        description="Conditions that must all hold: `host` (exact or glob), `path`, "
        "`path_prefix`, `path_regex`, `method`, `headers: {Name: value}`, `query: {name: "
        "value}`; a value is a scalar, a list (any of) or one of `regex`, `glob`, `exists`. "
        "None: every request.",
    )
    pool: Annotated[str, Field(strict=True)] = Field(
        description="The pool requests matching the route go to."
    )
    middlewares: list[Annotated[str, Field(strict=True)]] = Field(
        default=[], description="Names of middlewares applied in order."
    )
    read_timeout: Duration | None = Field(
        default=None, description="Overrides the pool's `http.read_timeout` for this route."
    )


# --- middlewares ----------------------------------------------------------------------------


class StripPrefixModel(Model):
    """`strip_prefix`: removes the first matching path prefix."""

    prefixes: Annotated[list[Annotated[str, Field(pattern=r"^/")]], Field(min_length=1)] = Field(
        description="Path prefixes, tried in order; the first that matches is removed."
    )


class AddPrefixModel(Model):
    """`add_prefix`: puts a prefix before the path."""

    prefix: Annotated[str, Field(strict=True, pattern=r"^/")] = Field(
        description="The prefix put before the request path."
    )


class ReplacePathModel(Model):
    """`replace_path`: `re.sub` on the path."""

    regex: Annotated[str, Field(strict=True)] = Field(
        description="A Python regular expression searched in the path."
    )
    replacement: Annotated[str, Field(strict=True)] = Field(
        description="What each match is replaced with (`\\1` for groups)."
    )


class HeaderEditsModel(Model):
    """Header fields set and removed, on the request or the response."""

    set: dict[str, str | int] = Field(
        default={}, description="Fields set, replacing any of that name."
    )
    remove: list[str] = Field(default=[], description="Names of fields removed.")


class HeadersModel(Model):
    """`headers`: sets and removes header fields."""

    request: HeaderEditsModel = Field(
        default_factory=HeaderEditsModel, description="Edits of the request sent to the backend."
    )
    response: HeaderEditsModel = Field(
        default_factory=HeaderEditsModel, description="Edits of the response sent to the client."
    )


class ForwardedModel(Model):
    """`forwarded`: tells the backend who the client is."""

    x_forwarded: StrictBool = Field(
        default=True,
        description="Append X-Forwarded-For and set X-Forwarded-Host / X-Forwarded-Proto.",
    )
    forwarded: StrictBool = Field(default=True, description="Append an RFC 7239 Forwarded field.")


class BasicAuthMiddlewareModel(Model):
    """`basic_auth`: 401 with a challenge unless the credentials match."""

    users: Annotated[
        dict[str, Annotated[str, Field(pattern=r"^pbkdf2_sha256\$")]], Field(min_length=1)
    ] = Field(
        description="User name to PBKDF2-SHA256 hash (`dicomlb.http.middlewares.hash_password`)."
    )
    realm: str = Field(default="dicomlb", description="The realm of the challenge.")
    remove: StrictBool = Field(
        default=True, description="Remove the Authorization field before the request goes on."
    )


class IpFilterModel(Model):
    """`ip_filter`: 403 for clients not allowed; deny wins."""

    allow: list[str] = Field(
        default=[], description="Client addresses or CIDR networks allowed (empty: all)."
    )
    deny: list[str] = Field(default=[], description="Client addresses or CIDR networks refused.")


class MaxBodyModel(Model):
    """`max_body`: 413 for larger request bodies."""

    limit: Annotated[StrictInt, Field(ge=0)] = Field(
        description="Bytes of request body at most: 413 from Content-Length; a chunked body "
        "growing past it is cut off."
    )


class RateLimitModel(Model):
    """`rate_limit`: a token bucket per client IP; 429 with Retry-After beyond it."""

    average: Annotated[float, Field(gt=0)] = Field(
        description="Requests allowed per `period`, on average."
    )
    period: Duration = Field(default=1.0, description="The period `average` is counted over.")
    burst: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="Requests allowed above the average in a burst."
    )


MIDDLEWARE_MODELS: dict[str, type[Model]] = {
    "strip_prefix": StripPrefixModel,
    "add_prefix": AddPrefixModel,
    "replace_path": ReplacePathModel,
    "headers": HeadersModel,
    "forwarded": ForwardedModel,
    "basic_auth": BasicAuthMiddlewareModel,
    "ip_filter": IpFilterModel,
    "max_body": MaxBodyModel,
    "rate_limit": RateLimitModel,
}
assert set(MIDDLEWARE_MODELS) == set(KINDS)


def _middleware(name: str, spec: Any, path: str, fail: Fail) -> MiddlewareConfig | None:
    kinds = ", ".join(MIDDLEWARE_MODELS)
    if not isinstance(spec, dict) or len(spec) != 1:
        fail(
            path,
            f"write one kind with its options, e.g. {{strip_prefix: {{prefixes: [/a]}}}}; "
            f"kinds: {kinds}",
        )
        return None
    kind, options = next(iter(spec.items()))
    model = MIDDLEWARE_MODELS.get(kind)
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
    warn: Callable[[str], None],
    tls: TlsConfig | None = None,
) -> tuple[HttpListenerConfig | None, tuple[HttpRouteConfig, ...]]:
    """The HTTP listener and routes; problems go to `fail(path, message)`, routes that can
    never match to `warn(message)`. `tls`: the listener's `tls` block, built by
    `dicomlb.config.build` like the DICOM listener's."""
    built_mw: dict[str, MiddlewareConfig] = {}
    for name, spec in middlewares.items():
        m = _middleware(name, spec, f"middlewares.{name}", fail)
        if m is not None:
            built_mw[name] = m
    out: list[HttpRouteConfig] = []
    matches: list[tuple[str, Conjunction]] = []
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
        matches.append((spec.name, match.conjunction))
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
    for name, earlier in shadowed(matches):
        warn(
            f'http route "{name}" can never match: http route "{earlier}" before it matches '
            "everything it matches"
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
