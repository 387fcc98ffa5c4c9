"""Where a DICOM instance or an HTTP request would go, decided without sending anything: the
`dicomlb route` dry run. Pure: no I/O, no clock.

The decisions are the running balancer's own: routes are chosen by `routing.Router` and
`http.routing.HttpRouter`, backends by `pools.Pool.pick` over fresh `BackendState`s (each
decision starts from a freshly started balancer), spooled instances by the spool's
`first_choice`, and paths are rewritten by the path middlewares themselves. Backends are
assumed up, or take the states a running instance reports (`states_from_admin`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dicomlb.dicom.dimse import Status
from dicomlb.dicom.part10 import read_file_meta
from dicomlb.dicom.tags import STUDY_INSTANCE_UID, HeaderScanner, tag_name
from dicomlb.http import orthanc
from dicomlb.http.affinity import StickyTable, request_key
from dicomlb.http.h1 import header
from dicomlb.http.middlewares import RequestContext, build_middleware
from dicomlb.http.paths import EncodedSlashes, PathError, normalize_target
from dicomlb.http.proxy import WRITES
from dicomlb.http.routing import HttpRouter
from dicomlb.pools import BackendState, Pool, Protocol, rendezvous_order
from dicomlb.routing import Router
from dicomlb.snapshot import (
    Ack,
    HttpKey,
    HttpPoolConfig,
    KeyKind,
    MessageFacts,
    RequestFacts,
    ScanLimit,
    Snapshot,
    Strategy,
)
from dicomlb.spool.spool import first_choice, placement_key

__all__ = [
    "PATH_MIDDLEWARES",
    "BackendStatus",
    "DicomDecision",
    "DryRunError",
    "HttpDecision",
    "Placement",
    "ScannedFile",
    "describe_dicom",
    "describe_http",
    "dicom_json",
    "http_json",
    "route_dicom",
    "route_http",
    "scan_part10",
    "states_from_admin",
]

# Middlewares that only rewrite the target: applied by the dry run. The others depend on
# the client, its credentials or the clock, and are only named.
PATH_MIDDLEWARES = frozenset(("strip_prefix", "add_prefix", "replace_path"))
_WOULD = {
    "headers": "sets / removes header fields",
    "forwarded": "adds X-Forwarded-* / Forwarded",
    "basic_auth": "asks for credentials (401 without valid ones)",
    "ip_filter": "checks the client address (403 when refused)",
    "max_body": "limits the body size (413 when larger)",
    "rate_limit": "limits requests per client (429 when exceeded)",
}
_TURNS = {
    Strategy.ROUND_ROBIN: "round_robin takes turns: the backend depends on the messages before; "
    "shown from a fresh start",
    Strategy.WEIGHTED: "weighted takes turns by weight: the backend depends on the messages "
    "before; shown from a fresh start",
    Strategy.LEAST_CONNECTIONS: "least_connections: the fewest messages in flight per weight "
    "at the time",
}
_CLIENT_IP_KEY = HttpKey(kind=KeyKind.CLIENT_IP)
_HEAD = 64 * 1024  # a Part-10 file meta group is far smaller than this


class DryRunError(ValueError):
    """Input the dry run cannot use: a file that is not Part-10, a URL that is not one, admin
    API data of an unexpected shape."""


# --- backend states -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStatus:
    """A backend's state as a running instance reports it."""

    up: bool = True  # its DICOM side (or only side) passes health checks
    http_up: bool = True  # its HTTP side does
    enabled: bool = True
    mode: str = "enabled"  # enabled | draining | disabled
    active: int = 0  # messages in flight


def states_from_admin(data: Any) -> dict[str, BackendStatus]:
    """Backend states from the admin API's `GET /api/v1/backends` answer (a list of
    backends); DryRunError when it is not one."""
    if not isinstance(data, list):
        raise DryRunError("the admin API answered something other than a list of backends")
    states: dict[str, BackendStatus] = {}
    for entry in data:
        try:
            up = bool(entry["up"])
            states[str(entry["name"])] = BackendStatus(
                up=up,
                http_up=bool(entry.get("http_up", up)),
                enabled=bool(entry["enabled"]),
                mode=str(entry.get("mode", "enabled")),
                active=int(entry.get("active", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DryRunError(f"a backend in the admin API's answer lacks {err}") from None
    return states


def _pools(snapshot: Snapshot, states: Mapping[str, BackendStatus] | None) -> dict[str, Pool]:
    """Fresh pools of the snapshot, one state per backend name (as `Runtime` builds them),
    set to `states` (None: every backend up; a backend not in `states` counts as disabled)."""
    backends: dict[str, BackendState] = {}
    pools: dict[str, Pool] = {}
    for pool_config in snapshot.pools.values():
        members = []
        for config in pool_config.backends:
            backend = backends.get(config.name)
            if backend is None:
                backend = backends[config.name] = BackendState(config, pool_config.health)
                if states is not None:
                    _set_state(backend, states.get(config.name))
            members.append(backend)
        pools[pool_config.name] = Pool(pool_config, members)
    return pools


def _set_state(backend: BackendState, status: BackendStatus | None) -> None:
    if status is None:  # removed from the running instance, or not in it
        backend.enabled, backend.mode = False, "absent"
        return
    backend.enabled, backend.mode, backend.active = status.enabled, status.mode, status.active
    if not status.up:
        backend.health.eject(0.0)
    if not status.http_up:
        backend.http_health.eject(0.0)


def _state_word(backend: BackendState, protocol: Protocol) -> str:
    if backend.mode != "enabled":
        return backend.mode
    if not backend.enabled:
        return "disabled"
    return "up" if backend.health_of(protocol).up else "down"


# --- placement ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One backend of a pool, as the placement saw it."""

    name: str
    state: str  # up | down | draining | disabled | absent (not in the running instance)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """The pool a message goes to and its backends: `order` is the order they would be
    tried in (each next one when the one before cannot take it), `backend` the first."""

    pool: str
    strategy: str
    key_name: str = ""  # the affinity key as configured ("" without one)
    key: str = ""  # its value for this message
    backend: str | None = None  # None: no backend can take it
    order: tuple[str, ...] = ()
    backends: tuple[Candidate, ...] = ()  # every backend; affinity: in the key's rendezvous order
    notes: tuple[str, ...] = ()


def _tried(pick: Callable[[frozenset[str]], BackendState | None]) -> list[BackendState]:
    """The backends `pick` gives one after another, each tried one excluded."""
    order: list[BackendState] = []
    while True:
        backend = pick(frozenset(b.name for b in order))
        if backend is None:
            return order
        order.append(backend)


def _candidates(pool: Pool, key: str | None, protocol: Protocol) -> tuple[Candidate, ...]:
    backends = (
        rendezvous_order(key, pool.backends)
        if key is not None and pool.config.strategy is Strategy.AFFINITY
        else pool.backends
    )
    return tuple(Candidate(name=b.name, state=_state_word(b, protocol)) for b in backends)


def _relay_placement(pool: Pool, tags: Mapping[int, str]) -> Placement:
    """A C-STORE relayed now (`ack: backend`): the relay's picks in order (every backend of
    a DICOM route's pool has a DICOM address or takes C-STOREs over HTTP: config.py)."""
    config = pool.config
    key = tags.get(config.key, "") if config.key is not None else ""
    order = _tried(lambda tried: pool.pick(key, exclude=tried))
    notes = [_TURNS[config.strategy]] if config.strategy in _TURNS else []
    if config.key is not None and not key:
        notes.append(f"{config.key_name} absent: every such instance hashes the empty key")
    return Placement(
        pool=pool.name,
        strategy=config.strategy.value,
        key_name=config.key_name or "",
        key=key,
        backend=order[0].name if order else None,
        order=tuple(b.name for b in order),
        backends=_candidates(pool, key if config.key is not None else None, Protocol.DICOM),
        notes=tuple(notes),
    )


def _spool_placement(pool: Pool, tags: Mapping[int, str], mirror: bool) -> Placement:
    """A spooled C-STORE (`ack: spool`): the spool's own choice for a study it has not
    placed yet; the dispatcher delivers it there (retrying), failing over only when
    `spool.failover_after` says so."""
    config = pool.config
    key = placement_key(config, tags)
    study = tags.get(STUDY_INSTANCE_UID, "")
    backend = first_choice(pool, key, study)
    notes = [
        "a study the spool placed before keeps its backend",
        *([_TURNS[config.strategy]] if config.strategy in _TURNS else []),
    ]
    if not backend.available:
        notes.append(f"no backend available: held for {backend.name} until it is")
    if mirror:
        notes.insert(0, "mirror: an independent spooled copy")
    return Placement(
        pool=pool.name,
        strategy=config.strategy.value,
        key_name=config.key_name or ("StudyInstanceUID" if key else ""),
        key=key,
        backend=backend.name,
        order=(backend.name,),
        backends=_candidates(pool, key or study, Protocol.DICOM),
        notes=tuple(notes),
    )


# --- DICOM ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ScannedFile:
    """What a Part-10 file gives routing: its meta group's UIDs and the scanned tags."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    tags: dict[int, str]
    limited: bool  # the scan cap ended the search before every wanted tag was ruled out


def scan_part10(chunks: Iterable[bytes], wanted: frozenset[int]) -> ScannedFile:
    """Read a Part-10 file's meta group and scan its data set for `wanted` with the relay's
    scanner, as the relay scans a C-STORE's data set; only as much of `chunks` as needed is
    consumed. DryRunError when it is not a Part-10 file."""
    source = iter(chunks)
    head = bytearray()
    for chunk in source:
        head += chunk
        if len(head) >= _HEAD:
            break
    try:
        meta = read_file_meta(bytes(head))
    except (ValueError, struct.error) as err:
        raise DryRunError(f"not a DICOM Part-10 file: {err}") from None
    transfer_syntax = meta.text(0x00020010)
    tags: dict[int, str] = {}
    limited = False
    if wanted:
        scanner = HeaderScanner(transfer_syntax, wanted)
        done = scanner.feed(head[meta.dataset_offset :])
        for chunk in source:
            if done:
                break
            done = scanner.feed(chunk)
        if not done:
            scanner.finish()
        tags, limited = scanner.values, scanner.limited
    return ScannedFile(
        sop_class_uid=meta.text(0x00020002),
        sop_instance_uid=meta.text(0x00020003),
        transfer_syntax=transfer_syntax,
        tags=tags,
        limited=limited,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomDecision:
    """Where one C-STORE would go."""

    facts: MessageFacts
    route: str | None = None
    match: str = ""
    ack: str = ""
    status: int | None = None  # the failure status the sender would get; None: it is sent
    reason: str = ""  # why it would be refused
    placements: tuple[Placement, ...] = ()  # the route's pool, then its mirrors (spooled)


def route_dicom(
    snapshot: Snapshot,
    facts: MessageFacts,
    *,
    limited: bool = False,
    states: Mapping[str, BackendStatus] | None = None,
) -> DicomDecision:
    """The route, pools and backends a C-STORE with `facts` would get, as the relay decides
    (`limited`: the scan cap ended the tag search)."""
    route = Router(snapshot.routes).select(facts)
    if limited and (route is None or route.on_scan_limit is ScanLimit.REFUSE):
        missing = ", ".join(tag_name(t) for t in sorted(snapshot.wanted_tags - facts.tags.keys()))
        return DicomDecision(
            facts=facts,
            route=route.name if route else None,
            status=Status.CANNOT_UNDERSTAND,
            reason=f"routing tags not found within the scan limit: {missing}",
        )
    if route is None:
        return DicomDecision(
            facts=facts, status=Status.NOT_AUTHORIZED, reason="no route matches this instance"
        )
    pools = _pools(snapshot, states)
    spooled = route.ack is Ack.SPOOL and snapshot.spool is not None
    if spooled:
        placements = tuple(
            _spool_placement(pools[p.name], facts.tags, mirror=n > 0)
            for n, p in enumerate((route.pool, *route.mirror))
        )
    else:
        placements = (_relay_placement(pools[route.pool.name], facts.tags),)
    status, reason = None, ""
    if placements[0].backend is None:
        status = Status.OUT_OF_RESOURCES
        reason = f"no healthy backend in pool {route.pool.name}"
    return DicomDecision(
        facts=facts,
        route=route.name,
        match=route.match_text or "everything",
        ack=route.ack.value if spooled else Ack.BACKEND.value,
        status=status,
        reason=reason,
        placements=placements,
    )


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MiddlewareStep:
    name: str
    kind: str
    applied: bool  # a path middleware the dry run ran
    effect: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpDecision:
    """Where one HTTP request would go."""

    method: str
    target: str  # normalised, as routes see it
    host: str
    route: str | None = None
    match: str = ""
    middlewares: tuple[MiddlewareStep, ...] = ()
    forwarded_target: str = ""  # what the backend would be asked for
    status: int | None = None  # the answer dicomlb itself would give; None: forwarded
    reason: str = ""
    placement: Placement | None = None


def route_http(
    snapshot: Snapshot,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    client_ip: str = "",
    states: Mapping[str, BackendStatus] | None = None,
) -> HttpDecision:
    """The route, middlewares, rewritten target, pool and backends of a request for `url`
    (absolute, `https://host/path?q`, or a path), as the proxy decides."""
    method = method.upper()
    parts = urlsplit(url)
    if not url.startswith("/") and not (parts.scheme and parts.netloc):
        raise DryRunError(f'"{url}" is neither an absolute URL nor a path starting with "/"')
    raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        fields = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    except UnicodeEncodeError as err:
        raise DryRunError(f"a header field is not Latin-1 text: {err}") from None
    if parts.netloc and header(fields, b"host") is None:
        fields = ((b"Host", parts.netloc.encode("latin-1")), *fields)
    host = (header(fields, b"host") or b"").decode("latin-1")
    listener = snapshot.http
    slashes = listener.encoded_slashes if listener is not None else EncodedSlashes.REJECT
    try:
        target = normalize_target(raw.encode("latin-1"), slashes=slashes)
    except (PathError, UnicodeEncodeError) as err:
        return HttpDecision(
            target=raw,
            status=400,
            reason=f"bad request target: {err}",
            method=method,
            host=host,
        )
    text = target.decode("latin-1")
    facts = RequestFacts(method=method, target=text, headers=fields, client_ip=client_ip)
    route = HttpRouter(snapshot.http_routes).select(facts)
    if route is None:
        return HttpDecision(
            target=text,
            status=404,
            reason="no route matches this request",
            method=method,
            host=host,
        )
    ctx = RequestContext(
        method=method.encode("latin-1"),
        target=target,
        headers=list(fields),
        client_ip=client_ip,
        host=host.encode("latin-1"),
        scheme=b"https" if parts.scheme == "https" else b"http",
        slashes=slashes,
    )
    steps = []
    for config in route.middlewares:
        if config.kind not in PATH_MIDDLEWARES:
            steps.append(
                MiddlewareStep(
                    name=config.name,
                    kind=config.kind,
                    applied=False,
                    effect="would run: " + _WOULD.get(config.kind, config.kind),
                )
            )
            continue
        before = ctx.target
        answer = build_middleware(config).request(ctx, 0.0)
        if answer is not None:
            steps.append(
                MiddlewareStep(name=config.name, kind=config.kind, applied=True, effect="refused")
            )
            return HttpDecision(
                target=text,
                route=route.name,
                match=route.match_text,
                middlewares=tuple(steps),
                status=answer.status,
                reason=answer.body.decode("latin-1").strip(),
                method=method,
                host=host,
            )
        effect = (
            f"{before.decode('latin-1')} -> {ctx.target.decode('latin-1')}"
            if ctx.target != before
            else "no change"
        )
        steps.append(
            MiddlewareStep(name=config.name, kind=config.kind, applied=True, effect=effect)
        )
    pool = _pools(snapshot, states)[route.pool.name]
    placement = _http_placement(pool, route.pool.http or HttpPoolConfig(), facts)
    return HttpDecision(
        target=text,
        route=route.name,
        match=route.match_text,
        middlewares=tuple(steps),
        forwarded_target=ctx.target.decode("latin-1"),
        status=503 if placement.backend is None else None,
        reason="no backend available" if placement.backend is None else "",
        placement=placement,
        method=method,
        host=host,
    )


def _http_placement(pool: Pool, options: HttpPoolConfig, facts: RequestFacts) -> Placement:
    """The proxy's picks in order: an Orthanc pool's writer for writes, then by the sticky
    or affinity key (the client address when none is set), else by the pool's strategy."""
    config = pool.config
    notes: list[str] = []
    if config.orthanc:
        resource = orthanc.resource_of(facts.path)
        if resource is not None:
            notes.append(f"{resource} goes to the backend that created it, when dicomlb saw that")
        if header(facts.headers, orthanc.TRANSFER_HEADER) is not None:
            notes.append("sender-transfer-id: the backend the transfer was first placed on")
    if options.slow_start > 0:
        notes.append("slow_start: a recovering backend gets a ramping share")
    first: list[BackendState] = []
    writer = config.orthanc_writer
    if writer is not None and facts.method.encode("latin-1") in WRITES:
        found = [b for b in pool.backends if b.name == writer and b.http_available]
        first = found
        notes.append(f"writes go to {writer} while it is available")
    key: str | None = None
    pick: Callable[[frozenset[str]], BackendState | None]
    if options.sticky or config.strategy is Strategy.AFFINITY:
        key_spec = options.key or _CLIENT_IP_KEY
        key = request_key(key_spec, facts.headers, facts.client_ip)
        if key is None:
            notes.append(f"the request has no {key_spec}: balanced by the pool's strategy")
    if key is not None and options.sticky:
        sticky_key, table = key, StickyTable()
        notes.append("sticky: a key placed before stays where it was; new keys by least load")

        def pick(tried: frozenset[str]) -> BackendState | None:
            return table.place(pool, sticky_key, tried)
    elif key is not None:
        affinity_key = key

        def pick(tried: frozenset[str]) -> BackendState | None:
            return pool.pick(affinity_key, tried, Protocol.HTTP)
    else:
        if config.strategy in _TURNS:
            notes.append(_TURNS[config.strategy])

        def pick(tried: frozenset[str]) -> BackendState | None:
            return pool.pick("", tried, Protocol.HTTP)

    placed = {b.name for b in first}
    order = first + _tried(lambda tried: pick(tried | placed))
    key_name = str(options.key or _CLIENT_IP_KEY) if key is not None else ""
    return Placement(
        pool=pool.name,
        strategy=config.strategy.value + (" (sticky)" if options.sticky else ""),
        key_name=key_name,
        key=key or "",
        backend=order[0].name if order else None,
        order=tuple(b.name for b in order),
        backends=_candidates(pool, key, Protocol.HTTP),
        notes=tuple(notes),
    )


# --- text and JSON --------------------------------------------------------------------------


def _tag_label(tag: int) -> str:
    return f"{tag_name(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _placement_lines(placement: Placement) -> list[str]:
    key = f", key {placement.key_name}={placement.key!r}" if placement.key_name else ""
    lines = [f"  pool       {placement.pool} ({placement.strategy}{key})"]
    lines.append(f"  backend    {placement.backend or '(none available)'}")
    if len(placement.order) > 1:
        lines.append(f"  then       {', '.join(placement.order[1:])}")
    listed = ", ".join(f"{c.name} [{c.state}]" for c in placement.backends)
    word = "rendezvous" if placement.strategy == Strategy.AFFINITY.value else "backends"
    lines.append(f"  {word:<10} {listed}")
    lines.extend(f"  note       {note}" for note in placement.notes)
    return lines


def describe_dicom(name: str, scanned: ScannedFile, decision: DicomDecision) -> str:
    """Readable lines for one file's decision."""
    facts = decision.facts
    lines = [
        f"{name}",
        f"  instance   {scanned.sop_instance_uid} ({scanned.transfer_syntax})",
        f"  facts      C-STORE calling_aet={facts.calling_aet or '-'} "
        f"called_aet={facts.called_aet or '-'} source={facts.peer_ip or '-'} "
        f"sop_class={facts.sop_class_uid}",
    ]
    lines.extend(f"             {_tag_label(t)} = {v!r}" for t, v in sorted(facts.tags.items()))
    if scanned.limited:
        lines.append("             (the scan cap was reached before every routing tag was found)")
    if decision.route is not None:
        lines.append(
            f"  route      {decision.route} (match: {decision.match}; ack: {decision.ack})"
        )
    for n, placement in enumerate(decision.placements):
        if n:
            lines.append("  mirror:")
        lines.extend(_placement_lines(placement))
    if decision.status is not None:
        lines.append(f"  refused    0x{decision.status:04X}: {decision.reason}")
    return "\n".join(lines)


def describe_http(decision: HttpDecision) -> str:
    """Readable lines for one request's decision."""
    lines = [f"{decision.method} {decision.target} (Host: {decision.host or '-'})"]
    if decision.route is not None:
        lines.append(f"  route      {decision.route} (match: {decision.match})")
    for step in decision.middlewares:
        lines.append(f"  middleware {step.name} ({step.kind}): {step.effect}")
    if decision.forwarded_target:
        lines.append(f"  target     {decision.forwarded_target}")
    if decision.placement is not None:
        lines.extend(_placement_lines(decision.placement))
    if decision.status is not None:
        lines.append(f"  answered   {decision.status} by dicomlb: {decision.reason}")
    return "\n".join(lines)


def _placement_json(placement: Placement) -> dict[str, Any]:
    return {
        "pool": placement.pool,
        "strategy": placement.strategy,
        "key_name": placement.key_name or None,
        "key": placement.key if placement.key_name else None,
        "backend": placement.backend,
        "order": list(placement.order),
        "backends": [{"name": c.name, "state": c.state} for c in placement.backends],
        "notes": list(placement.notes),
    }


def dicom_json(name: str, scanned: ScannedFile, decision: DicomDecision) -> dict[str, Any]:
    """One file's decision as JSON data."""
    facts = decision.facts
    return {
        "file": name,
        "sop_instance_uid": scanned.sop_instance_uid,
        "transfer_syntax": scanned.transfer_syntax,
        "facts": {
            "command": facts.command,
            "calling_aet": facts.calling_aet,
            "called_aet": facts.called_aet,
            "source": facts.peer_ip,
            "sop_class": facts.sop_class_uid,
            "tags": {tag_name(t): v for t, v in sorted(facts.tags.items())},
            "scan_limited": scanned.limited,
        },
        "route": decision.route,
        "ack": decision.ack or None,
        "pool": decision.placements[0].pool if decision.placements else None,
        "backend": decision.placements[0].backend if decision.placements else None,
        "placements": [_placement_json(p) for p in decision.placements],
        "status": decision.status,
        "reason": decision.reason or None,
    }


def http_json(decision: HttpDecision) -> dict[str, Any]:
    """One request's decision as JSON data."""
    placement = decision.placement
    return {
        "method": decision.method,
        "target": decision.target,
        "host": decision.host,
        "route": decision.route,
        "middlewares": [
            {"name": s.name, "kind": s.kind, "applied": s.applied, "effect": s.effect}
            for s in decision.middlewares
        ],
        "forwarded_target": decision.forwarded_target or None,
        "pool": placement.pool if placement else None,
        "backend": placement.backend if placement else None,
        "placement": _placement_json(placement) if placement else None,
        "status": decision.status,
        "reason": decision.reason or None,
    }
