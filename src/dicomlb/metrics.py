"""What the balancer counts: Prometheus metrics and the short recent history the dashboard shows.

`Metrics` is owned by the `App` and reachable from every runtime (`runtime.metrics`). The data
path calls one method at each fate point (`store_finished`, `association_closed`, ...); the
method updates prometheus-client objects in the App's own `CollectorRegistry` (never the
global one: several Apps may run in one process) and appends to small bounded rings.

Gauges that mirror live state (backend up, messages in flight, open associations) are not
updated on the data path at all: `StateCollector` reads them from the App when scraped. The
per-message and per-request families (`Counts`, `Durations`) are plain numbers in dicts,
turned into metric families when scraped: an update is a dict lookup and an addition, no
lock (only the loop thread writes them), which matters at tens of thousands per second.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dicomlb.dicom.dimse import Status
from dicomlb.dicom.status import Category, category
from dicomlb.http.routing import request_path

__all__ = ["CONTENT_TYPE", "ErrorRecord", "Metrics", "RecentErrors", "percentile", "status_class"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A float as Prometheus writes it (`le` labels); prometheus_client leaves it untyped.
go_float: Callable[[float], str] = floatToGoString

# Relay latency buckets: loopback C-STOREs take ~1 ms, a slow archive seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Spool group commits: an fsync of file, directory and index, ~1-20 ms on a local disk.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WINDOW = 60.0  # seconds of latency samples kept for the dashboard's p50 / p99
RECENT_ASSOCIATIONS = 200
RECENT_HTTP_REQUESTS = 50
HISTORY = 60  # health checks / transitions kept per backend
RECENT_ERRORS = 50  # kept per kind of error
SHOWN_ERRORS = 100  # the newest of all kinds the admin API lists


def status_class(status: int) -> str:
    """The PS3.7 C.4 category of a status, as the `status_class` label."""
    return category(status).value


def http_status_class(status: int) -> str:
    """`2xx`, `4xx`, ... of an HTTP status (499: the client went away, a 4xx)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


_new_tuple = tuple.__new__
_HTTP_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
_HTTP_OTHER = _HTTP_CLASSES.index("other")
_HTTP_BUCKETS = len(_HTTP_CLASSES)  # where an HTTP series' duration buckets begin
# Looked up once per HTTP request instead of formatted: the status class's place in a series.
_HTTP_CLASS_INDEX = {
    status: _HTTP_CLASSES.index(http_status_class(status)) for status in range(100, 600)
}


def association_outcome(text: str) -> str:
    """The outcome label of an association from the acceptor's outcome text."""
    if text == "released":
        return "released"
    if text.startswith("rejected"):
        return "rejected"
    if text.startswith("aborted by the client"):
        return "aborted_by_client"
    if text.startswith("aborted"):
        return "aborted"
    return "lost"


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of `values` by nearest rank, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class AssociationRecord:
    """One finished (or refused) client association, for the dashboard's recent list."""

    ended: float  # wall clock
    peer: str
    calling_aet: str
    called_aet: str
    seconds: float
    messages: int
    bytes: int
    outcome: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "ended": self.ended,
            "peer": self.peer,
            "calling_aet": self.calling_aet,
            "called_aet": self.called_aet,
            "seconds": round(self.seconds, 3),
            "messages": self.messages,
            "bytes": self.bytes,
            "outcome": self.outcome,
            "detail": self.detail,
        }


class HttpRequestRecord(NamedTuple):
    """One HTTP request answered by the HTTP listener, for the dashboard's recent list (a
    tuple: one is made per request, with the method and target as the client sent them,
    made text when shown)."""

    time: float  # wall clock, when answered
    client: str
    method: bytes
    target: bytes
    route: str
    backend: str
    status: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "client": self.client,
            "method": self.method.decode("latin-1"),
            "path": request_path(self.target.decode("latin-1")),
            "route": self.route,
            "backend": self.backend,
            "status": self.status,
            "ms": round(self.seconds * 1000, 1),
        }


def status_text(status: int) -> str:
    """A DIMSE status as `0xA700 OUT_OF_RESOURCES` (the hex alone when dicomlb has no name)."""
    try:
        return f"0x{status:04X} {Status(status).name}"
    except ValueError:
        return f"0x{status:04X}"


class ErrorRecord(NamedTuple):
    """Something that failed, for the dashboard's recent errors: `kind` (`store.failed`,
    `store.refused`, `backend.down`, `http.5xx`, `association.rejected`, ...), a sentence,
    identifiers as (name, value) pairs (a SOP instance UID, a backend, a peer; never a
    patient's attributes), and how many times it happened in a row."""

    time: float  # wall clock, of the latest occurrence
    kind: str
    text: str
    fields: tuple[tuple[str, str], ...]
    times: int = 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.fields)
        out.update(time=self.time, kind=self.kind, text=self.text, count=self.times)
        return out


class RecentErrors:
    """The last errors of each kind, bounded per kind so that a flood of one (every request
    answered 502) does not push out a rare one (a backend going down). The same error again
    right after itself is counted in its record, not appended. Only the loop thread writes."""

    def __init__(self, clock: Callable[[], float], per_kind: int = RECENT_ERRORS) -> None:
        self._clock = clock
        self._per_kind = per_kind
        self._rings: dict[str, collections.deque[ErrorRecord]] = {}

    def add(self, kind: str, text: str, **fields: str) -> None:
        ring = self._rings.get(kind)
        if ring is None:
            ring = self._rings[kind] = collections.deque(maxlen=self._per_kind)
        pairs = tuple((name, value) for name, value in fields.items() if value)
        if ring:
            last = ring[-1]
            if last.text == text and last.fields == pairs:
                ring[-1] = ErrorRecord(self._clock(), kind, text, pairs, last.times + 1)
                return
        ring.append(ErrorRecord(self._clock(), kind, text, pairs))

    def records(self, limit: int = SHOWN_ERRORS) -> list[ErrorRecord]:
        """The newest `limit` records of all kinds, oldest first."""
        merged = sorted((r for ring in list(self._rings.values()) for r in ring), key=_when)
        return merged[-limit:] if limit else []

    def __len__(self) -> int:
        return sum(len(ring) for ring in self._rings.values())


def _when(record: ErrorRecord) -> float:
    return record.time


def _stem(command: str) -> str:
    """`store` of C-STORE, `n_action` of N-ACTION: an error kind's first part."""
    return command.lower().removeprefix("c-").replace("-", "_")


class _Family(Collector):
    """A metric family of this module's own, registered in `registry` when made."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        registry.register(self)


class Counts(_Family):
    """A counter family kept as one number per tuple of label values."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.values: dict[tuple[str, ...], float] = {}
        super().__init__(name, documentation, labelnames, registry)

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, value in list(self.values.items()):
            family.add_metric(key, value)
        yield family


class Durations(_Family):
    """A histogram family kept as bucket counts and a sum per tuple of label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(buckets)
        # Per key: the count of each bucket (not cumulative), then +Inf's, then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, key: tuple[str, ...], seconds: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, seconds)] += 1  # first bound >= seconds
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = _edges(self.bounds)
        for key, series in list(self.series.items()):
            family.add_metric(key, _cumulative(edges, series[:-1]), series[-1])
        yield family


def _edges(bounds: Sequence[float]) -> list[str]:
    """The `le` labels of a histogram's buckets."""
    return [go_float(b) for b in bounds] + ["+Inf"]


def _cumulative(edges: list[str], buckets: Sequence[float]) -> list[tuple[str, float]]:
    """(le, cumulative count) of a histogram's buckets, each counted on its own."""
    return list(zip(edges, itertools.accumulate(buckets), strict=True))


class _HttpSeries:
    """The numbers of one (route, pool, backend): requests per status class, then the
    durations' buckets (each on its own), +Inf's and their sum; recent (time, seconds)."""

    __slots__ = ("counts", "recent")

    def __init__(self, buckets: int) -> None:
        self.counts: list[float] = [0] * (_HTTP_BUCKETS + buckets + 2)
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)


class HttpRequests(_Family):
    """dicomlb_http_requests_total (by status class) and
    dicomlb_http_request_duration_seconds (requests a backend answered) kept as one series
    per (route, pool, backend): one lookup per request."""

    DURATIONS = "dicomlb_http_request_duration_seconds"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bounds = LATENCY_BUCKETS
        self.series: dict[tuple[str, str, str], _HttpSeries] = {}
        super().__init__(
            "dicomlb_http_requests",
            "HTTP requests answered, by route, pool, backend (empty when not reached) and "
            "status class (2xx, 4xx, 5xx, ...).",
            ["route", "pool", "backend", "status_class"],
            registry,
        )

    def observe(self, key: tuple[str, str, str], status: int, seconds: float, now: float) -> None:
        """A request of `key` answered with `status` after `seconds`, at `now`."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _HttpSeries(len(self.bounds))
        counts = series.counts
        counts[_HTTP_CLASS_INDEX.get(status, _HTTP_OTHER)] += 1
        if key[2]:  # a backend answered: how long it took
            # (the first bound >= it)
            counts[_HTTP_BUCKETS + bisect.bisect_left(self.bounds, seconds)] += 1
            counts[-1] += seconds
            series.recent.append((now, seconds))

    def recent(self, backend: str, since: float) -> list[float]:
        """Durations of `backend`'s requests answered since `since`."""
        return [
            seconds
            for key, series in list(self.series.items())
            if key[2] == backend
            for at, seconds in series.recent
            if at >= since
        ]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        durations = HistogramMetricFamily(
            self.DURATIONS,
            "Time from a request's head to the last byte of its response.",
            labels=self.labelnames[:3],
        )
        edges = _edges(self.bounds)
        for key, series in list(self.series.items()):
            counts = series.counts
            for name, count in zip(_HTTP_CLASSES, counts, strict=False):
                if count:
                    requests.add_metric([*key, name], count)
            if key[2]:
                durations.add_metric(key, _cumulative(edges, counts[_HTTP_BUCKETS:-1]), counts[-1])
        yield requests
        yield durations


class Metrics:
    """Prometheus metrics of one App, and the recent history the admin API shows."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.associations = Counter(
            "dicomlb_associations",
            "Client DICOM associations by how they ended: released, rejected, aborted, "
            "aborted_by_client, lost.",
            ["outcome"],
            registry=r,
        )
        self.associations_accepted = Counter(
            "dicomlb_associations_accepted", "Client DICOM associations accepted.", registry=r
        )
        self.messages = Counts(
            "dicomlb_messages",
            "DIMSE requests answered, by command, status class, route, pool and backend.",
            ["command", "status_class", "route", "pool", "backend"],
            registry=r,
        )
        self.route_hits = Counts(
            "dicomlb_route_hits", "Messages that matched each route.", ["route"], registry=r
        )
        self.relay_duration = Durations(
            "dicomlb_relay_duration_seconds",
            "Time from a request's command to the backend's response relayed to the client.",
            ["command", "pool", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_transitions = Counter(
            "dicomlb_backend_transitions",
            "Backend health changes, by the state entered (up, down) and the cause (check, "
            "passive, fail_timeout, admin).",
            ["backend", "state", "cause"],
            registry=r,
        )
        self.health_checks = Counter(
            "dicomlb_health_checks",
            "Active health checks by result (ok, failed).",
            ["backend", "result"],
            registry=r,
        )
        self.reloads = Counter(
            "dicomlb_config_reloads",
            "Configuration reloads by result (ok, error) and source (api, sighup, watch).",
            ["result", "source"],
            registry=r,
        )
        self.last_reload_ok = Gauge(
            "dicomlb_config_last_reload_successful",
            "1 when the last reload attempt succeeded (or none was made), else 0.",
            registry=r,
        )
        self.last_reload_ok.set(1)
        self.last_reload_time = Gauge(
            "dicomlb_config_last_reload_timestamp_seconds",
            "When the running configuration was loaded (Unix time).",
            registry=r,
        )
        self.last_reload_time.set(clock())
        self.admin_actions = Counter(
            "dicomlb_admin_actions",
            "Operator actions through the admin API (draining, disabled, enabled, add, remove).",
            ["action"],
            registry=r,
        )
        self.http_requests = HttpRequests(r)
        self.spool_deliveries = Counter(
            "dicomlb_spool_deliveries",
            "Attempts to deliver spooled items, by backend and result (delivered, failed, dead).",
            ["backend", "result"],
            registry=r,
        )
        self.spool_spooled = Counter(
            "dicomlb_spool_spooled",
            "Items made durable in the spool (one per pool: mirror copies count), by route "
            "and pool.",
            ["route", "pool"],
            registry=r,
        )
        self.spool_refused = Counter(
            "dicomlb_spool_refused",
            "C-STOREs on spooled routes answered 0xA700 (spool limit, low disk, write error).",
            ["route"],
            registry=r,
        )
        self.spool_commit = Histogram(
            "dicomlb_spool_commit_seconds",
            "Time to make an instance durable once received (file, directory and index fsync, "
            "group commit).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.spool_task_restarts = Counter(
            "dicomlb_spool_task_restarts",
            "Spool tasks (committer, sweep, a backend's feeder or worker) that failed and were "
            "restarted, by task kind and backend.",
            ["task", "backend"],
            registry=r,
        )
        self.spool_operations = Counter(
            "dicomlb_spool_operations",
            "Operator actions on spooled items through the admin API, by action and items.",
            ["action"],
            registry=r,
        )
        # The spool's summary as last read by the admin listener (None: no spool); scrapes
        # refresh it first (admin/spool.py), so its gauges are read at scrape time.
        self.spool_state: dict[str, Any] | None = None
        self._closed_bytes = 0
        # Dashboard history: bounded rings, read by the admin API.
        self.recent_associations: collections.deque[AssociationRecord] = collections.deque(
            maxlen=RECENT_ASSOCIATIONS
        )
        self.recent_http: collections.deque[HttpRequestRecord] = collections.deque(
            maxlen=RECENT_HTTP_REQUESTS
        )
        self._latencies: dict[str, collections.deque[tuple[float, float]]] = {}
        self.checks: dict[str, collections.deque[tuple[float, bool]]] = {}
        self.transitions: dict[str, collections.deque[tuple[float, str, str]]] = {}
        self.errors = RecentErrors(clock)

    # -------------------------------------------------------- data path hooks

    def store_finished(
        self,
        *,
        route: str = "",
        pool: str = "",
        backend: str = "",
        status: int,
        seconds: float,
        command: str = "C-STORE",
        sop_instance_uid: str = "",
        reason: str = "",
    ) -> None:
        """One request answered: its fate (status), where it went and how long it took. A
        failure is also a recent error: `store.failed` when a backend was reached,
        `store.refused` when none was (no route, no backend available); `reason` says why
        when the caller knows more than the status."""
        cls = category(status)
        self.messages.inc((command, cls.value, route, pool, backend))
        if cls is Category.FAILURE:
            self._message_failed(command, status, route, pool, backend, sop_instance_uid, reason)
        if route:
            self.route_hits.inc((route,))
        if backend:
            self.relay_duration.observe((command, pool, backend), seconds)
            ring = self._latencies.get(backend)
            if ring is None:
                ring = self._latencies[backend] = collections.deque(maxlen=4096)
            ring.append((time.monotonic(), seconds))

    def _message_failed(
        self,
        command: str,
        status: int,
        route: str,
        pool: str,
        backend: str,
        sop_instance_uid: str,
        reason: str,
    ) -> None:
        where = f"backend {backend}" if backend else f"pool {pool}" if pool else "no route"
        verdict = "failed" if backend else "refused"
        self.errors.add(
            f"{_stem(command)}.{verdict}",
            f"{command} {verdict} ({where}): {reason or status_text(status)}",
            sop_instance_uid=sop_instance_uid,
            route=route,
            pool=pool,
            backend=backend,
            status=f"0x{status:04X}",
        )

    def http_request(
        self,
        route: str,
        pool: str,
        backend: str,
        status: int,
        seconds: float,
        client: str = "",
        method: bytes = b"",
        target: bytes = b"",
    ) -> None:
        """One HTTP request answered (or given up: 499) by the HTTP listener."""
        now = self.clock()
        # tuple.__new__: a NamedTuple's own __new__ is a Python function, one frame more.
        self.recent_http.append(
            _new_tuple(
                HttpRequestRecord, (now, client, method, target, route, backend, status, seconds)
            )
        )
        self.http_requests.observe((route, pool, backend), status, seconds, now)
        if status >= 500:
            self._http_failed(route, backend, status, client, method, target)

    def _http_failed(
        self, route: str, backend: str, status: int, client: str, method: bytes, target: bytes
    ) -> None:
        # The path without its query: a QIDO query may name a patient.
        path = request_path(target.decode("latin-1"))
        where = f"backend {backend}" if backend else "dicomlb"
        self.errors.add(
            "http.5xx",
            f"{method.decode('latin-1')} {path} answered {status} ({where})",
            route=route,
            backend=backend,
            peer=client,
            status=str(status),
        )

    def spool_delivery(
        self, backend: str, result: str, *, sop_instance_uid: str = "", reason: str = ""
    ) -> None:
        """A spooled item's attempt ended: `delivered`, `failed` (retried later) or `dead`
        (a recent error, with the instance and why it was given up on when given)."""
        self.spool_deliveries.labels(backend, result).inc()
        if result == "dead":
            self.errors.add(
                "spool.dead",
                f"a spooled instance for backend {backend} was given up on: "
                + (reason or "a dead letter (the spool panel lists them with their reason)"),
                sop_instance_uid=sop_instance_uid,
                backend=backend,
            )

    def spool_stored(self, *, route: str, pools: list[str], seconds: float) -> None:
        """An instance is durable in the spool for `pools` (the route's first) after `seconds`
        of commit, and Success was sent: a message answered (no backend reached yet)."""
        for pool in pools:
            self.spool_spooled.labels(route, pool).inc()
        self.spool_commit.observe(seconds)
        self.store_finished(route=route, pool=pools[0] if pools else "", status=0, seconds=0.0)

    def spool_task_restart(self, task: str, backend: str) -> None:
        """A spool task failed; the supervisor restarts it."""
        self.spool_task_restarts.labels(task, backend).inc()

    def spool_refusal(
        self, *, route: str, pool: str, status: int, sop_instance_uid: str = "", reason: str = ""
    ) -> None:
        """A C-STORE on a spooled route refused (spool limit, low disk, write error)."""
        self.spool_refused.labels(route).inc()
        self.store_finished(
            route=route,
            pool=pool,
            status=status,
            seconds=0.0,
            sop_instance_uid=sop_instance_uid,
            reason=f"the spool refused it ({status_text(status)}): "
            + (reason or "a limit, low disk or a write error"),
        )

    def association_rejected(
        self, *, peer: str, calling_aet: str, called_aet: str, why: str
    ) -> None:
        self.associations.labels("rejected").inc()
        self.recent_associations.append(
            AssociationRecord(
                self.clock(), peer, calling_aet, called_aet, 0.0, 0, 0, "rejected", why
            )
        )
        self.errors.add(
            "association.rejected",
            f"association {calling_aet} -> {called_aet} from {peer} rejected: {why}",
            peer=peer,
            calling_aet=calling_aet,
            called_aet=called_aet,
        )

    def association_accepted(self) -> None:
        self.associations_accepted.inc()

    def association_closed(
        self,
        *,
        peer: str,
        calling_aet: str,
        called_aet: str,
        seconds: float,
        messages: int,
        bytes_in: int,
        outcome: str,
    ) -> None:
        label = association_outcome(outcome)
        self.associations.labels(label).inc()
        self._closed_bytes += bytes_in
        self.recent_associations.append(
            AssociationRecord(
                self.clock(),
                peer,
                calling_aet,
                called_aet,
                seconds,
                messages,
                bytes_in,
                label,
                outcome,
            )
        )

    def backend_transition(self, backend: str, *, up: bool, cause: str, reason: str = "") -> None:
        """A backend's health changed; `cause` is check, passive, fail_timeout or admin and
        `reason` the error that took it down."""
        state = "up" if up else "down"
        self.backend_transitions.labels(backend, state, cause).inc()
        ring = self.transitions.setdefault(backend, collections.deque(maxlen=HISTORY))
        ring.append((self.clock(), state, cause))
        if not up:
            self.errors.add(
                "backend.down",
                f"backend {backend} down ({cause})" + (f": {reason}" if reason else ""),
                backend=backend,
                cause=cause,
            )

    def health_check(self, backend: str, ok: bool) -> None:
        self.health_checks.labels(backend, "ok" if ok else "failed").inc()
        ring = self.checks.setdefault(backend, collections.deque(maxlen=HISTORY))
        ring.append((self.clock(), ok))

    def reload_finished(self, *, ok: bool, source: str, error: str = "") -> None:
        self.reloads.labels("ok" if ok else "error", source).inc()
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_time.set(self.clock())
        else:
            self.errors.add("reload.failed", f"reload ({source}): {error}", source=source)

    # -------------------------------------------------------- reading

    @property
    def closed_bytes(self) -> int:
        """Bytes received on client associations that have closed."""
        return self._closed_bytes

    def latency(self, backend: str, window: float = WINDOW) -> dict[str, float | int | None]:
        """p50 / p99 (seconds) and count of `backend`'s relays in the last `window` seconds."""
        ring = self._latencies.get(backend)
        if not ring:
            return {"p50": None, "p99": None, "count": 0}
        since = time.monotonic() - window
        values = [s for t, s in ring if t >= since]
        return {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "count": len(values),
        }

    def latency_of(self, backends: list[str], window: float = WINDOW) -> dict[str, Any]:
        """The same over several backends (a pool)."""
        since = time.monotonic() - window
        values = [s for b in backends for t, s in self._latencies.get(b, ()) if t >= since]
        return {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "count": len(values),
        }

    def http_latency(self, backend: str, window: float = WINDOW) -> dict[str, Any]:
        """p50 / p99 (seconds) and count of `backend`'s HTTP requests in the last `window`."""
        values = self.http_requests.recent(backend, self.clock() - window)
        return {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "count": len(values),
        }

    def counter_values(self, counter: Collector) -> Iterator[tuple[dict[str, str], float]]:
        """(labels, value) of each `_total` sample of `counter`."""
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    yield sample.labels, sample.value

    def exposition(self) -> bytes:
        """The Prometheus text exposition of everything registered."""
        return generate_latest(self.registry)

    def add_state_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class StateCollector(Collector):
    """Gauges read from the running App at scrape time (nothing to update on the data path).

    `read` returns the current state as plain data, so this module needs no App import.
    """

    def __init__(self, read: Callable[[], dict[str, Any]], metrics: Metrics) -> None:
        self.read = read
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected on demand; nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        state = self.read()
        up = GaugeMetricFamily(
            "dicomlb_backend_up",
            "1 when the backend passes its health checks.",
            labels=["pool", "backend"],
        )
        enabled = GaugeMetricFamily(
            "dicomlb_backend_enabled",
            "1 when the backend takes new work (0: drained or disabled by an operator).",
            labels=["pool", "backend"],
        )
        active = GaugeMetricFamily(
            "dicomlb_backend_active", "Messages in flight to the backend.", labels=["backend"]
        )
        upstream = GaugeMetricFamily(
            "dicomlb_backend_associations",
            "Upstream associations open to the backend (in use and idle).",
            labels=["backend", "state"],
        )
        http_conns = GaugeMetricFamily(
            "dicomlb_backend_http_connections",
            "HTTP connections open to the backend, proxy, bridge and health checks together "
            "(its connection budget's slots in use).",
            labels=["backend"],
        )
        http_limit = GaugeMetricFamily(
            "dicomlb_backend_http_connection_limit",
            "The backend's connection budget (`http.max_connections` of its pool); absent "
            "when uncapped.",
            labels=["backend"],
        )
        for b in state["backends"]:
            if b.get("http_connections") is not None:
                http_conns.add_metric([b["name"]], b["http_connections"])
            if b.get("http_connection_limit") is not None:
                http_limit.add_metric([b["name"]], b["http_connection_limit"])
            up.add_metric([b["pool"], b["name"]], 1 if b["up"] else 0)
            enabled.add_metric([b["pool"], b["name"]], 1 if b["enabled"] else 0)
            active.add_metric([b["name"]], b["active"])
            upstream.add_metric([b["name"], "open"], b["upstream_open"])
            upstream.add_metric([b["name"], "idle"], b["upstream_idle"])
        pool_available = GaugeMetricFamily(
            "dicomlb_pool_available_backends",
            "Backends of the pool that are up and enabled.",
            labels=["pool"],
        )
        for name, count in state["pools"].items():
            pool_available.add_metric([name], count)
        assoc = GaugeMetricFamily(
            "dicomlb_associations_active", "Client DICOM associations open now."
        )
        assoc.add_metric([], state["associations_active"])
        received = CounterMetricFamily(
            "dicomlb_received_bytes",
            "Bytes received from DICOM clients (PDUs, data sets included).",
            labels=["listener"],
        )
        received.add_metric(["dicom"], self.metrics.closed_bytes + state["open_bytes"])
        ready = GaugeMetricFamily(
            "dicomlb_ready",
            "1 when this instance can take traffic: its listeners accept, and every route has "
            "an available backend or spools with room.",
        )
        ready.add_metric([], 1 if state["ready"] else 0)
        unavailable = GaugeMetricFamily(
            "dicomlb_pools_unavailable",
            "Pools in use (by a route or the C-ECHO option) without an available backend.",
        )
        unavailable.add_metric([], state["pools_unavailable"])
        yield from (up, enabled, active, upstream, http_conns, http_limit, pool_available)
        yield from (assoc, received, ready, unavailable)
        if state.get("http_connections") is not None:
            http = GaugeMetricFamily(
                "dicomlb_http_active_connections", "Client connections open on the HTTP listener."
            )
            http.add_metric([], state["http_connections"])
            yield http
        certificates = state.get("certificates")
        if certificates:
            expiry = GaugeMetricFamily(
                "dicomlb_tls_certificate_expiry_seconds",
                "When the listener's TLS certificate expires (its notAfter, Unix time).",
                labels=["listener"],
            )
            for listener, expires in certificates.items():
                expiry.add_metric([listener], expires)
            yield expiry
        if self.metrics.spool_state is not None:
            yield from spool_gauges(self.metrics.spool_state)


SPOOL_STATES = ("queued", "sending", "delivered", "dead")


def spool_gauges(spool: dict[str, Any]) -> Iterator[Metric]:
    """The spool's gauges from its summary (`admin/spool.py` reads the index when scraped)."""
    items = GaugeMetricFamily(
        "dicomlb_spool_items", "Items in the spool index by state.", labels=["state"]
    )
    for name in SPOOL_STATES:
        items.add_metric([name], spool["by_state"].get(name, 0))
    by_backend = GaugeMetricFamily(
        "dicomlb_spool_backend_items",
        "Items in the spool index by the backend they are for, and state.",
        labels=["backend", "state"],
    )
    breaker = GaugeMetricFamily(
        "dicomlb_spool_breaker_open",
        "1 while the spool's circuit breaker toward the backend is open or half open.",
        labels=["backend"],
    )
    for name, backend in spool["backends"].items():
        for item_state in SPOOL_STATES:
            by_backend.add_metric([name, item_state], backend.get(item_state, 0))
        breaker.add_metric([name], 0 if backend.get("breaker", "closed") == "closed" else 1)
    yield from (items, by_backend, breaker)
    for name, text, value in (
        ("dicomlb_spool_bytes", "Bytes of spooled files on disk.", spool["bytes"]),
        (
            "dicomlb_spool_oldest_age_seconds",
            "Age of the oldest item not yet delivered (queued or sending); 0 when none.",
            spool["oldest_age_seconds"] or 0,
        ),
        ("dicomlb_spool_dead_items", "Dead letters: items given up on.", spool["dead"]),
        (
            "dicomlb_spool_dispatcher_up",
            "1 while every spool task runs (committer, sweep, senders); 0 while one waits to "
            "be restarted or failed within the last 30 s.",
            1 if spool["dispatcher"]["up"] else 0,
        ),
        (
            "dicomlb_spool_accepting",
            "1 while the spool takes new instances (0: a limit or low disk refuses them).",
            1 if spool["accepting"] else 0,
        ),
        (
            "dicomlb_spool_free_disk_bytes",
            "Free bytes on the spool's file system.",
            spool["free_disk"],
        ),
        ("dicomlb_spool_max_items", "spool.max_items (0: none).", spool["limits"]["max_items"]),
        ("dicomlb_spool_max_bytes", "spool.max_bytes (0: none).", spool["limits"]["max_bytes"]),
    ):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge
