"""The lock-free metric families read the same as prometheus-client's own when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dicomlb.metrics import LATENCY_BUCKETS, Counts, Durations, HttpRequests, Metrics

BOUNDS = (0.001, 0.01, 0.1)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_durations_scrape_like_a_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    durations = Durations("lat_seconds", "Latency.", ["backend"], BOUNDS, ours)
    histogram = Histogram("lat_seconds", "Latency.", ["backend"], buckets=BOUNDS, registry=theirs)
    # On a bound, between bounds, past the last one, for two label values.
    for backend, seconds in [("a", 0.001), ("a", 0.005), ("a", 0.5), ("b", 0.0001), ("a", 0.1)]:
        durations.observe((backend,), seconds)
        histogram.labels(backend).observe(seconds)
    assert samples(ours) == samples(theirs)
    assert samples(ours)[("lat_seconds_bucket", (("backend", "a"), ("le", "0.01")))] == 2


def test_http_requests_scrape_like_a_prometheus_counter_and_histogram() -> None:
    # One series per (route, pool, backend) read as prometheus-client's two families; a
    # request no backend answered (backend "") is counted, not timed.
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    requests = HttpRequests(ours)
    labels = ["route", "pool", "backend"]
    counter = Counter("dicomlb_http_requests", "x", [*labels, "status_class"], registry=theirs)
    histogram = Histogram(
        HttpRequests.DURATIONS, "x", labels, buckets=LATENCY_BUCKETS, registry=theirs
    )
    answered = [("r", "p", "a", 200, 0.001), ("r", "p", "a", 503, 0.3), ("r", "p", "b", 304, 9.0)]
    for route, pool, backend, status, seconds in [*answered, ("r", "p", "", 404, 0.0)]:
        requests.observe((route, pool, backend), status, seconds, now=100.0)
        counter.labels(route, pool, backend, f"{status // 100}xx").inc()
        if backend:
            histogram.labels(route, pool, backend).observe(seconds)
    assert samples(ours) == samples(theirs)
    assert requests.recent("a", since=99.0) == [0.001, 0.3]
    assert requests.recent("a", since=101.0) == []


def test_counts_scrape_as_counters_with_their_labels() -> None:
    registry = CollectorRegistry()
    counts = Counts("hits", "Hits.", ["route", "status_class"], registry)
    counts.inc(("ct", "2xx"))
    counts.inc(("ct", "2xx"))
    counts.inc(("mr", "5xx"), 3)
    assert samples(registry) == {
        ("hits_total", (("route", "ct"), ("status_class", "2xx"))): 2,
        ("hits_total", (("route", "mr"), ("status_class", "5xx"))): 3,
    }


def test_the_admin_api_reads_counts_by_label_name() -> None:
    metrics = Metrics()
    metrics.http_request(route="web", pool="p", backend="b1", status=200, seconds=0.01)
    metrics.http_request(route="web", pool="p", backend="b1", status=502, seconds=0.02)
    assert sorted(
        (labels["status_class"], value)
        for labels, value in metrics.counter_values(metrics.http_requests)
    ) == [("2xx", 1), ("5xx", 1)]
    assert metrics.recent_http[-1].as_dict()["status"] == 502
