"""The dry run's decisions (`dicomlb route`): facts → route → pool → backends, pure."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from dicomlb import dryrun
from dicomlb.config import build_snapshot
from dicomlb.dicom.dimse import Status
from dicomlb.pools import BackendState, rendezvous_order
from dicomlb.snapshot import HealthConfig, MessageFacts, Snapshot
from tests.dicomdata import make_series, make_small

MODALITY = 0x00080060
STUDY_UID = 0x0020000D
PATIENT_ID = 0x00100020

CONFIG = """\
listeners:
  dicom: {bind: "127.0.0.1:11112", ae_title: DICOMLB}
  http: {bind: "127.0.0.1:8080"}
pools:
  ct:
    strategy: affinity
    key: StudyInstanceUID
    backends:
      - {name: pacs-a, dicom: "PACSA@10.0.0.5:4242"}
      - {name: pacs-b, dicom: "PACSB@10.0.0.6:4242", weight: 2}
      - {name: pacs-c, dicom: "PACSC@10.0.0.7:4242"}
  general:
    backends:
      - {name: web-store, http: "http://10.0.0.9:8042", store_via: orthanc_rest}
      - {name: store-1, dicom: "STORE1@10.0.0.8:104"}
  archive:
    backends:
      - {name: arch-1, dicom: "ARCH1@10.0.0.10:104"}
  app:
    strategy: affinity
    http: {key: "header:X-Tenant"}
    backends:
      - {name: app-1, http: "http://10.0.1.5:8080"}
      - {name: app-2, http: "http://10.0.1.6:8080"}
      - {name: app-3, http: "http://10.0.1.7:8080"}
middlewares:
  strip-app: {strip_prefix: {prefixes: [/app]}}
  to-v2: {replace_path: {regex: "^/v1/", replacement: "/v2/"}}
  staff: {basic_auth: {users: {alice: "pbkdf2_sha256$1$s$x"}}}
routes:
  - name: ct
    match: {Modality: [CT, PT], calling_aet: {regex: "^CT_"}}
    pool: ct
  - name: mr
    match: {Modality: MR}
    pool: general
  - name: us
    match: {Modality: US}
    pool: ct
    ack: spool
    mirror: [archive]
spool: {directory: /nonexistent/spool}
http_routes:
  - name: app
    match: {path_prefix: /app/}
    pool: app
    middlewares: [strip-app, to-v2, staff]
"""


def snapshot(text: str = CONFIG) -> Snapshot:
    return build_snapshot(yaml.safe_load(text))


def facts(calling_aet: str = "CT_1", **tags: str) -> MessageFacts:
    table = {"Modality": MODALITY, "StudyInstanceUID": STUDY_UID, "PatientID": PATIENT_ID}
    return MessageFacts(
        calling_aet=calling_aet,
        called_aet="DICOMLB",
        peer_ip="10.1.2.3",
        command="C-STORE",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        tags={table[k]: v for k, v in tags.items()},
    )


def expected_order(snap: Snapshot, pool: str, key: str, names: set[str] | None = None) -> list[str]:
    """The rendezvous order of `pool`'s backends (those in `names`) for `key`, computed
    on its own backend states."""
    config = snap.pools[pool]
    backends = [BackendState(b, HealthConfig()) for b in config.backends]
    return [b.name for b in rendezvous_order(key, backends) if names is None or b.name in names]


# --- DICOM ----------------------------------------------------------------------------------


def test_affinity_route_goes_to_the_first_backend_of_the_study_rendezvous_order() -> None:
    snap = snapshot()
    decision = dryrun.route_dicom(snap, facts(Modality="CT", StudyInstanceUID="1.2.3"))
    assert (decision.route, decision.status) == ("ct", None)
    (placement,) = decision.placements
    order = expected_order(snap, "ct", "1.2.3")
    assert placement.backend == order[0]
    assert list(placement.order) == order
    assert [c.name for c in placement.backends] == order
    assert (placement.key_name, placement.key) == ("StudyInstanceUID", "1.2.3")


def test_down_backends_are_passed_over_and_only_their_keys_move() -> None:
    snap = snapshot()
    studies = [f"1.2.{n}" for n in range(40)]
    before = {
        s: dryrun.route_dicom(snap, facts(Modality="CT", StudyInstanceUID=s)).placements[0].backend
        for s in studies
    }
    states = {
        "pacs-a": dryrun.BackendStatus(),
        "pacs-b": dryrun.BackendStatus(up=False),
        "pacs-c": dryrun.BackendStatus(),
    }
    for study in studies:
        decision = dryrun.route_dicom(
            snap, facts(Modality="CT", StudyInstanceUID=study), states=states
        )
        placement = decision.placements[0]
        if before[study] != "pacs-b":
            assert placement.backend == before[study]
        assert placement.backend != "pacs-b"
        assert "pacs-b" not in placement.order
        assert {c.name: c.state for c in placement.backends}["pacs-b"] == "down"


def test_the_first_matching_route_wins_and_its_facts_are_the_given_ones() -> None:
    snap = snapshot()
    not_ct_client = dryrun.route_dicom(snap, facts("MR_1", Modality="CT"))
    assert not_ct_client.route is None
    assert not_ct_client.status == Status.NOT_AUTHORIZED
    assert not_ct_client.reason == "no route matches this instance"
    assert dryrun.route_dicom(snap, facts("MR_1", Modality="MR")).route == "mr"


def test_round_robin_tries_each_backend_and_http_store_backends_take_c_stores() -> None:
    decision = dryrun.route_dicom(snapshot(), facts(Modality="MR"))
    (placement,) = decision.placements
    assert placement.backend == "web-store"
    assert placement.order == ("web-store", "store-1")
    assert "round_robin takes turns" in placement.notes[0]


def test_no_available_backend_is_a_refusal_with_out_of_resources() -> None:
    states = {"store-1": dryrun.BackendStatus(enabled=False, mode="disabled")}
    decision = dryrun.route_dicom(snapshot(), facts(Modality="MR"), states=states)
    assert decision.placements[0].backend is None
    assert decision.status == Status.OUT_OF_RESOURCES
    # web-store is not in the running instance's answer: it counts as absent
    assert {c.name: c.state for c in decision.placements[0].backends} == {
        "web-store": "absent",
        "store-1": "disabled",
    }


def test_scan_limit_refuses_like_the_relay() -> None:
    decision = dryrun.route_dicom(snapshot(), facts(Modality="CT"), limited=True)
    assert decision.status == Status.CANNOT_UNDERSTAND
    assert "StudyInstanceUID" in decision.reason


def test_spooled_route_places_the_pool_and_each_mirror() -> None:
    snap = snapshot()
    decision = dryrun.route_dicom(snap, facts(Modality="US", StudyInstanceUID="9.9"))
    assert decision.ack == "spool"
    main, mirror = decision.placements
    assert main.backend == expected_order(snap, "ct", "9.9")[0]
    assert mirror.pool == "archive" and mirror.backend == "arch-1"
    assert mirror.notes[0].startswith("mirror")


def test_spool_holds_for_the_rendezvous_first_when_every_backend_is_down() -> None:
    snap = snapshot()
    down = dryrun.BackendStatus(up=False)
    states = {name: down for name in ("pacs-a", "pacs-b", "pacs-c", "arch-1")}
    decision = dryrun.route_dicom(snap, facts(Modality="US", StudyInstanceUID="9.9"), states=states)
    assert decision.status is None  # the spool still takes it
    main = decision.placements[0]
    assert main.backend == expected_order(snap, "ct", "9.9")[0]
    assert any("held for" in note for note in main.notes)


def test_states_from_admin_reads_the_backends_list() -> None:
    data: list[dict[str, Any]] = [
        {"name": "a", "pool": "p", "up": False, "enabled": True, "mode": "enabled", "active": 3},
        {"name": "b", "pool": "p", "up": True, "enabled": False, "mode": "draining"},
    ]
    states = dryrun.states_from_admin(data)
    assert states["a"] == dryrun.BackendStatus(up=False, http_up=False, active=3)
    assert states["b"].mode == "draining" and not states["b"].enabled
    with pytest.raises(dryrun.DryRunError):
        dryrun.states_from_admin({"backends": []})
    with pytest.raises(dryrun.DryRunError):
        dryrun.states_from_admin([{"name": "a"}])


# --- Part-10 files --------------------------------------------------------------------------


def part10(**kwargs: Any) -> bytes:
    (ds,) = make_small(1, pixels=False, **kwargs)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit", "deflated", "big"])
@pytest.mark.parametrize("size", [7, 100, 1 << 20])
def test_scan_part10_reads_meta_and_routing_tags_in_any_chunking(
    transfer_syntax: str, size: int
) -> None:
    data = part10(patient_id="P7", transfer_syntax=transfer_syntax)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    scanned = dryrun.scan_part10(chunks, frozenset({MODALITY, PATIENT_ID}))
    assert scanned.tags == {MODALITY: "CT", PATIENT_ID: "P7"}
    assert scanned.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert not scanned.limited


def test_scan_part10_reads_only_what_it_needs() -> None:
    (ds,) = make_series(1)  # 512 x 512, about 0.5 MB
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    consumed = 0

    def chunks() -> Iterator[bytes]:
        nonlocal consumed
        for i in range(0, len(data), 1024):
            consumed += 1024
            yield data[i : i + 1024]

    scanned = dryrun.scan_part10(chunks(), frozenset({MODALITY}))
    assert scanned.tags == {MODALITY: "CT"}
    assert consumed < len(data) // 2


@pytest.mark.parametrize("data", [b"", b"x" * 200, bytes(128) + b"DICM" + b"\x02\x00"])
def test_scan_part10_refuses_what_is_not_a_part10_file(data: bytes) -> None:
    with pytest.raises(dryrun.DryRunError, match="not a DICOM Part-10 file"):
        dryrun.scan_part10([data], frozenset({MODALITY}))


# --- HTTP -----------------------------------------------------------------------------------


def test_http_route_applies_path_middlewares_and_names_the_others() -> None:
    snap = snapshot()
    decision = dryrun.route_http(
        snap, "get", "https://lb.example.org/app/v1/users?x=1", [("X-Tenant", "t1")]
    )
    assert (decision.route, decision.host) == ("app", "lb.example.org")
    assert decision.forwarded_target == "/v2/users?x=1"
    steps = {s.name: s for s in decision.middlewares}
    assert steps["strip-app"].applied and steps["to-v2"].applied
    assert steps["to-v2"].effect == "/v1/users?x=1 -> /v2/users?x=1"
    assert not steps["staff"].applied and "401" in steps["staff"].effect
    placement = decision.placement
    assert placement is not None
    assert (placement.key_name, placement.key) == ("header:x-tenant", "t1")
    assert placement.backend == expected_order(snap, "app", "t1")[0]
    assert list(placement.order) == expected_order(snap, "app", "t1")


def test_http_affinity_without_the_key_header_is_balanced() -> None:
    decision = dryrun.route_http(snapshot(), "GET", "/app/x")
    assert decision.placement is not None
    assert decision.placement.key_name == ""
    assert any("X-Tenant" in n or "x-tenant" in n for n in decision.placement.notes)


def test_http_answers_dicomlb_gives_itself() -> None:
    snap = snapshot()
    assert dryrun.route_http(snap, "GET", "/other").status == 404
    bad = dryrun.route_http(snap, "GET", "/app/a%2Fb")
    assert bad.status == 400 and bad.route is None
    down = dryrun.BackendStatus(up=False)
    states = {name: down for name in ("app-1", "app-2", "app-3")}
    unavailable = dryrun.route_http(snap, "GET", "/app/x", states=states)
    assert unavailable.status == 503 and unavailable.placement is not None
    with pytest.raises(dryrun.DryRunError):
        dryrun.route_http(snap, "GET", "app/x")


def test_a_rewrite_the_proxy_would_refuse_is_a_400() -> None:
    snap = snapshot(CONFIG.replace('replacement: "/v2/"', 'replacement: "/v%2F/"'))
    decision = dryrun.route_http(snap, "GET", "/app/v1/users")
    assert decision.status == 400 and decision.route == "app"
    assert [(s.name, s.effect) for s in decision.middlewares][-1] == ("to-v2", "refused")
    assert decision.placement is None


def test_orthanc_writer_takes_writes_first() -> None:
    text = CONFIG.replace(
        '    http: {key: "header:X-Tenant"}\n', "    orthanc: {writer: app-3}\n"
    ).replace("strategy: affinity\n    orthanc:", "strategy: round_robin\n    orthanc:")
    snap = snapshot(text)
    assert snap.pools["app"].orthanc_writer == "app-3"
    post = dryrun.route_http(snap, "POST", "/app/instances").placement
    get = dryrun.route_http(snap, "GET", "/app/instances").placement
    assert post is not None and get is not None
    assert post.backend == "app-3" and sorted(post.order) == ["app-1", "app-2", "app-3"]
    assert get.backend == "app-1"


def test_text_and_json_say_route_pool_and_backend() -> None:
    snap = snapshot()
    scanned = dryrun.ScannedFile(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4",
        transfer_syntax="1.2.840.10008.1.2.1",
        tags={MODALITY: "CT", STUDY_UID: "1.2.3"},
        limited=False,
    )
    decision = dryrun.route_dicom(snap, facts(Modality="CT", StudyInstanceUID="1.2.3"))
    text = dryrun.describe_dicom("a.dcm", scanned, decision)
    backend = expected_order(snap, "ct", "1.2.3")[0]
    assert "route      ct" in text and f"backend    {backend}" in text
    assert "rendezvous" in text and "StudyInstanceUID (0020,000D) = '1.2.3'" in text
    data = dryrun.dicom_json("a.dcm", scanned, decision)
    assert (data["route"], data["pool"], data["backend"]) == ("ct", "ct", backend)
    assert data["facts"]["tags"] == {"Modality": "CT", "StudyInstanceUID": "1.2.3"}
