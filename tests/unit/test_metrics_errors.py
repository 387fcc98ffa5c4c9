"""The recent-errors record the dashboard lists: what failed and why, fed by the Metrics
methods the data path already calls, bounded per kind, repeats counted in place."""

from __future__ import annotations

import itertools
import timeit

import pytest

from dicomlb.metrics import Metrics, RecentErrors

UID = "1.2.826.0.1.3680043.8.498.1"


def clock() -> itertools.count[float]:
    return itertools.count(1000.0)


def kinds(metrics: Metrics) -> list[str]:
    return [e.kind for e in metrics.errors.records()]


def test_a_failed_store_names_the_instance_backend_and_status() -> None:
    metrics = Metrics(clock=clock().__next__)
    metrics.store_finished(route="ct", pool="main", backend="pacs-a", status=0xA700, seconds=0.1)
    metrics.store_finished(
        route="ct", pool="main", backend="pacs-a", status=0xC000, seconds=0.1,
        sop_instance_uid=UID, reason="association aborted by the backend",
    )  # fmt: skip
    first, second = (e.as_dict() for e in metrics.errors.records())
    assert first["kind"] == "store.failed"
    assert first["text"] == "C-STORE failed (backend pacs-a): 0xA700 OUT_OF_RESOURCES"
    assert (first["backend"], first["route"], first["status"]) == ("pacs-a", "ct", "0xA700")
    assert "sop_instance_uid" not in first  # not given: not invented
    assert second["sop_instance_uid"] == UID
    assert second["text"].endswith("association aborted by the backend")


def test_successes_and_warnings_are_not_errors() -> None:
    metrics = Metrics(clock=clock().__next__)
    for status in (0x0000, 0xB000, 0x0001):
        metrics.store_finished(route="ct", pool="main", backend="a", status=status, seconds=0.0)
    metrics.http_request(route="r", pool="p", backend="b", status=404, seconds=0.0)
    metrics.backend_transition("a", up=True, cause="check")
    metrics.spool_delivery("a", "failed")  # retried later: not given up on
    assert metrics.errors.records() == []


def test_refusals_rejections_backends_down_and_5xx_each_have_their_kind() -> None:
    metrics = Metrics(clock=clock().__next__)
    metrics.store_finished(route="", pool="", status=0x0124, seconds=0.0, reason="no route")
    metrics.spool_refusal(route="ct", pool="main", status=0xA700)
    metrics.association_rejected(
        peer="10.0.0.9:4242", calling_aet="CT_1", called_aet="WRONG", why="called AE unknown"
    )
    metrics.backend_transition("pacs-a", up=False, cause="check", reason="connection refused")
    metrics.http_request(
        route="viewer", pool="web", backend="web-1", status=502, seconds=0.2,
        client="10.0.0.7", method=b"GET", target=b"/dicom-web/studies?PatientName=DOE^JOHN",
    )  # fmt: skip
    metrics.spool_delivery("pacs-a", "dead")
    metrics.reload_finished(ok=False, source="api", error="pools.main: missing")
    records = {e.kind: e.as_dict() for e in metrics.errors.records()}
    assert list(records) == [
        "store.refused",
        "association.rejected",
        "backend.down",
        "http.5xx",
        "spool.dead",
        "reload.failed",
    ]
    # a different refusal of the same kind is its own record
    assert len([e for e in metrics.errors.records() if e.kind == "store.refused"]) == 2
    assert records["store.refused"]["text"] == (
        "C-STORE refused (pool main): the spool refused it (0xA700 OUT_OF_RESOURCES): a limit, "
        "low disk or a write error"
    )
    assert records["association.rejected"]["peer"] == "10.0.0.9:4242"
    assert "called AE unknown" in records["association.rejected"]["text"]
    assert records["backend.down"]["text"] == "backend pacs-a down (check): connection refused"
    http = records["http.5xx"]
    assert http["text"] == "GET /dicom-web/studies answered 502 (backend web-1)"
    assert "DOE" not in repr(http)  # the query (a patient's name) is left out
    assert (http["peer"], http["backend"], http["status"]) == ("10.0.0.7", "web-1", "502")
    assert records["reload.failed"]["text"] == "reload (api): pools.main: missing"


def test_a_repeat_is_counted_in_its_record() -> None:
    metrics = Metrics(clock=clock().__next__)
    metrics.backend_transition("pacs-a", up=False, cause="passive", reason="reset")
    first_seen = metrics.errors.records()[0].time
    for _ in range(2):
        metrics.backend_transition("pacs-a", up=False, cause="passive", reason="reset")
    metrics.backend_transition("pacs-b", up=False, cause="passive", reason="reset")
    metrics.backend_transition("pacs-a", up=False, cause="passive", reason="reset")
    records = [(e.as_dict()["backend"], e.as_dict()["count"]) for e in metrics.errors.records()]
    assert records == [("pacs-a", 3), ("pacs-b", 1), ("pacs-a", 1)]
    assert metrics.errors.records()[0].time > first_seen  # the latest occurrence


def test_a_flood_of_one_kind_keeps_the_others() -> None:
    errors = RecentErrors(clock().__next__, per_kind=5)
    errors.add("backend.down", "backend a down (check)", backend="a")
    for n in range(1000):
        errors.add("http.5xx", f"GET /{n} answered 502", backend="b")
    assert len(errors) == 6
    assert [e.kind for e in errors.records(limit=100)].count("backend.down") == 1
    assert [e.text for e in errors.records(limit=2)] == [
        "GET /998 answered 502",
        "GET /999 answered 502",
    ]


@pytest.mark.timing  # a CPU budget: run without coverage's tracer (scripts/test.sh)
def test_recording_a_failure_is_cheap() -> None:
    # The hot path pays a dict lookup, a tuple and a deque append per failure: well under
    # 20 us even on a loaded 2-core box.
    metrics = Metrics()
    n = 20_000
    seconds = timeit.timeit(
        lambda: metrics.store_finished(
            route="ct", pool="main", backend="a", status=0xA700, seconds=0.0, sop_instance_uid=UID
        ),
        number=n,
    )
    assert seconds / n < 20e-6, seconds / n
    assert len(metrics.errors) == 1  # the same failure each time: one record, counted


def test_callers_that_know_the_instance_and_the_reason_give_them() -> None:
    metrics = Metrics(clock=clock().__next__)
    metrics.spool_refusal(
        route="ct", pool="main", status=0xA700, sop_instance_uid=UID, reason="spool.max_items 10"
    )
    metrics.spool_delivery("pacs-a", "dead", sop_instance_uid=UID, reason="max_attempts 3")
    refused, dead = (e.as_dict() for e in metrics.errors.records())
    assert refused["sop_instance_uid"] == dead["sop_instance_uid"] == UID
    assert refused["text"].endswith("(0xA700 OUT_OF_RESOURCES): spool.max_items 10")
    assert dead["text"] == "a spooled instance for backend pacs-a was given up on: max_attempts 3"
