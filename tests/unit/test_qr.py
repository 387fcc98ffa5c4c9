"""Query/retrieve cores with values and bytes, no loop: result keys and de-duplication,
sub-operation counts summed over backends, C-MOVE correlation, Q/R negotiation and the
role items proposed upstream, the Q/R config options, the study table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomlb.config import ConfigError, build_snapshot
from dicomlb.dicom.dimse import Command, CommandField, Tag
from dicomlb.dicom.negotiation import (
    Service,
    is_supported_abstract_syntax,
    negotiate,
    role_item,
    upstream_request,
)
from dicomlb.dicom.pdu import AssociateAccept, ContextResult, RoleSelection
from dicomlb.dicom.qr import (
    CANCELLED,
    STUDY_ROOT,
    SUBOPERATIONS_FAILED,
    CommitmentRegistry,
    Counts,
    FindMerger,
    MoveRegistry,
    RetrieveTally,
    commitment_holder,
    commitment_request,
    failed_instances,
    failed_list_identifier,
    find_model_of,
    identifier_values,
    instances_query,
    result_key,
    retrieve_response,
    unanswered_comment,
)
from dicomlb.snapshot import DicomListenerConfig, MoveDestination, QueryMode
from dicomlb.studies import StudyIndex
from tests.unit.helpers import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, make_request

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"  # not a query/retrieve model

QR_SERVICES = frozenset({Service.QUERY_RETRIEVE})


def identifier(implicit: bool = True, **values: str) -> bytes:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


# ------------------------------------------------------------------ C-FIND results


@pytest.mark.parametrize("implicit", [True, False])
def test_identifier_values_and_result_key_per_level(implicit: bool) -> None:
    ts = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
    study = identifier(
        implicit, QueryRetrieveLevel="STUDY", PatientID="P1", StudyInstanceUID="1.2.3"
    )
    values = identifier_values(study, ts)
    assert values[0x00080052] == "STUDY" and values[0x0020000D] == "1.2.3"
    assert result_key(values, study) == "STUDY:1.2.3"
    patient = identifier(implicit, QueryRetrieveLevel="PATIENT", PatientID="P1")
    assert result_key(identifier_values(patient, ts), patient) == "PATIENT:P1"
    image = identifier(implicit, QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3.4.5")
    assert result_key(identifier_values(image, ts), image) == "IMAGE:1.2.3.4.5"


def test_worklist_items_fall_back_to_their_bytes() -> None:
    first = identifier(AccessionNumber="A1", PatientID="P1")
    same = identifier(AccessionNumber="A1", PatientID="P1")
    other = identifier(AccessionNumber="A2", PatientID="P1")
    key = result_key(identifier_values(first, IMPLICIT_VR_LE), first)
    assert key.startswith("bytes:")
    assert key == result_key(identifier_values(same, IMPLICIT_VR_LE), same)
    assert key != result_key(identifier_values(other, IMPLICIT_VR_LE), other)


def test_merger_lets_each_result_through_once() -> None:
    merger = FindMerger()
    keys = ["STUDY:1", "STUDY:2", "STUDY:1", "STUDY:3", "STUDY:2"]
    assert [merger.first(k) for k in keys] == [True, True, False, True, False]
    assert (merger.unique, merger.duplicates) == (3, 2)


def test_models() -> None:
    assert find_model_of(STUDY_ROOT[1]) == STUDY_ROOT[0]
    assert find_model_of(STUDY_ROOT[2]) == STUDY_ROOT[0]
    assert find_model_of(MODALITY_WORKLIST_FIND) is None
    assert find_model_of(CT_IMAGE_STORAGE) is None


def test_unanswered_comment_fits_an_error_comment() -> None:
    assert unanswered_comment({}) is None
    assert (
        unanswered_comment({"pacs-b": "timed out"}) == "partial: no answer from pacs-b (timed out)"
    )


# ------------------------------------------------------------------ counts


def move_rsp(
    status: int, remaining: int, completed: int, failed: int = 0, warning: int = 0
) -> Command:
    return Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.C_MOVE_RSP,
            Tag.STATUS: status,
            Tag.NUMBER_OF_REMAINING_SUBOPERATIONS: remaining,
            Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS: completed,
            Tag.NUMBER_OF_FAILED_SUBOPERATIONS: failed,
            Tag.NUMBER_OF_WARNING_SUBOPERATIONS: warning,
        }
    )


def test_counts_are_summed_across_backends() -> None:
    tally = RetrieveTally(("a", "b"))
    assert tally.pending("a", Counts.of(move_rsp(0xFF00, 9, 1))) == Counts(9, 1, 0, 0)
    assert tally.pending("b", Counts.of(move_rsp(0xFF00, 4, 1))) == Counts(13, 2, 0, 0)
    assert tally.pending("a", Counts.of(move_rsp(0xFF00, 8, 2))) == Counts(12, 3, 0, 0)
    tally.final("a", 0x0000, Counts.of(move_rsp(0x0000, 0, 10)))
    tally.final("b", 0x0000, Counts.of(move_rsp(0x0000, 0, 5)))
    assert tally.total() == Counts(0, 15, 0, 0)
    assert tally.final_status() == 0x0000


def test_final_status_of_a_spread_retrieve() -> None:
    tally = RetrieveTally(("a", "b"))
    tally.final("a", 0x0000, Counts(0, 3, 0, 0))
    tally.final("b", 0xB000, Counts(0, 1, 2, 0))
    assert tally.final_status() == SUBOPERATIONS_FAILED
    assert tally.total() == Counts(0, 4, 2, 0)

    down = RetrieveTally(("a", "b"))
    down.pending("b", Counts(5, 1, 0, 0))
    down.final("a", 0x0000, Counts(0, 3, 0, 0))
    down.failed("b", "timed out")  # what it had announced and not done counts as failed
    assert down.total() == Counts(0, 4, 5, 0)
    assert down.final_status() == SUBOPERATIONS_FAILED
    assert down.problems == {"b": "timed out"}

    nothing = RetrieveTally(("a", "b"))
    nothing.final("a", 0xA801, Counts())
    nothing.failed("b", "unreachable", 0xA801)
    assert nothing.final_status() == 0xA801

    cancelled = RetrieveTally(("a",))
    cancelled.final("a", CANCELLED, Counts(0, 1, 0, 0))
    assert cancelled.final_status() == CANCELLED


def test_retrieve_response_elements() -> None:
    request = Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: STUDY_ROOT[1],
            Tag.COMMAND_FIELD: CommandField.C_MOVE_RQ,
            Tag.MESSAGE_ID: 7,
        }
    )
    pending = retrieve_response(request, 0xFF00, Counts(2, 1, 0, 0), final=False)
    assert pending.command_field == CommandField.C_MOVE_RSP
    assert pending.responded_to == 7
    assert pending.us(Tag.NUMBER_OF_REMAINING_SUBOPERATIONS) == 2
    final = retrieve_response(request, 0, Counts(0, 3, 0, 0), final=True, error_comment="x" * 80)
    assert final.us(Tag.NUMBER_OF_REMAINING_SUBOPERATIONS) is None
    assert final.us(Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS) == 3
    assert final.error_comment == "x" * 64
    assert Command.decode(final.encode()).encode() == final.encode()


def test_failed_instance_lists_are_merged_across_backends() -> None:
    tally = RetrieveTally(("a", "b"))
    tally.failed_instances(["1.2.3", "1.2.4"])
    tally.failed_instances(["1.2.4", "", "1.2.5"])
    assert tally.failed_uids == ["1.2.3", "1.2.4", "1.2.5"]


@pytest.mark.parametrize(
    "syntax", [IMPLICIT_VR_LE, EXPLICIT_VR_LE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]
)
def test_failed_list_identifier_reads_back(syntax: str) -> None:
    uids = ["1.2.840.1", "1.2.840.22", "1.2.3"]
    data = failed_list_identifier(uids, syntax)
    assert failed_instances(data, syntax) == uids
    if syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        implicit = syntax == IMPLICIT_VR_LE
        ds = read_dataset(DicomBytesIO(data), implicit, True)  # pydicom agrees
        assert list(ds.FailedSOPInstanceUIDList) == uids
        # A backend's own list, pydicom-encoded, reads the same.
        own = identifier(implicit, FailedSOPInstanceUIDList=uids)  # type: ignore[arg-type]
        assert failed_instances(own, syntax) == uids


@pytest.mark.parametrize("implicit", [True, False])
def test_instances_query_is_an_image_level_list_of_uids(implicit: bool) -> None:
    uids = ["1.2.840.1", "1.2.840.22", "1.2.3"]
    syntax = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
    ds = read_dataset(DicomBytesIO(instances_query(uids, syntax)), implicit, True)
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert list(ds.SOPInstanceUID) == uids  # pydicom reads the list of UIDs back


def test_failed_list_identifier_fits_a_two_byte_length() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{n:020d}" for n in range(3000)]
    data = failed_list_identifier(uids, EXPLICIT_VR_LE)
    assert len(data) <= 8 + 0xFFFE
    kept = failed_instances(data, EXPLICIT_VR_LE)
    assert kept == uids[: len(kept)] and len(kept) > 1000
    final = retrieve_response(
        Command.build({Tag.COMMAND_FIELD: CommandField.C_GET_RQ, Tag.MESSAGE_ID: 1}),
        SUBOPERATIONS_FAILED,
        Counts(0, 1, 3000, 0),
        final=True,
        identifier=True,
    )
    assert final.has_data_set


# ------------------------------------------------------------------ move correlation


def store_rq(originator: str | None, message_id: int | None) -> Command:
    values: dict[int, int | str | bytes] = {
        Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
        Tag.MESSAGE_ID: 3,
    }
    if originator is not None:
        values[Tag.MOVE_ORIGINATOR_AE_TITLE] = originator
    if message_id is not None:
        values[Tag.MOVE_ORIGINATOR_MESSAGE_ID] = message_id
    return Command.build(values)


def test_moves_are_correlated_by_originator_and_message_id() -> None:
    registry = MoveRegistry()
    first = registry.register(
        originator_ae="WS1", client_message_id=5, destination="DEST", backends=["ORTHANC1"]
    )
    second = registry.register(
        originator_ae="WS1", client_message_id=5, destination="DEST2", backends=["ORTHANC2"]
    )
    assert first.message_id != second.message_id  # unique whatever association carries them
    assert registry.match(store_rq("WS1", first.message_id), "ORTHANC1") == first
    assert registry.match(store_rq("WS1", second.message_id), "ORTHANC2") == second
    assert registry.match(store_rq("WS2", first.message_id), "ORTHANC1") is None
    assert registry.match(store_rq(None, None), "ORTHANC1") is None
    assert registry.match(store_rq("WS1", 999), "ORTHANC1") is None
    registry.done(first)
    assert registry.match(store_rq("WS1", first.message_id), "ORTHANC1") is None
    assert len(registry) == 1


# ------------------------------------------------------------------ negotiation


def test_query_retrieve_contexts_only_when_offered() -> None:
    request = make_request(
        contexts=[
            (1, STUDY_ROOT[0], (IMPLICIT_VR_LE,)),
            (3, MODALITY_WORKLIST_FIND, (IMPLICIT_VR_LE,)),
        ]
    )
    without = negotiate(request, DicomListenerConfig())
    with_qr = negotiate(request, DicomListenerConfig(), QR_SERVICES)
    assert isinstance(without, AssociateAccept) and isinstance(with_qr, AssociateAccept)
    assert [c.result for c in without.contexts] == [ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED] * 2
    assert [c.result for c in with_qr.contexts] == [ContextResult.ACCEPTANCE] * 2
    assert is_supported_abstract_syntax("1.2.840.10008.1.20.1", frozenset(Service)) is True
    assert is_supported_abstract_syntax("1.2.840.10008.1.20.1", QR_SERVICES) is False


def test_c_get_roles_are_mirrored_and_proposed_upstream() -> None:
    from dataclasses import replace

    request = make_request()
    roles = (RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=False, scp_role=True),)
    request = replace(request, user_info=replace(request.user_info, roles=roles))
    accept = negotiate(request, DicomListenerConfig(), QR_SERVICES)
    assert isinstance(accept, AssociateAccept)
    assert accept.user_info.roles == roles
    upstream = upstream_request(
        calling_ae="GETSCU",
        called_ae="ORTHANC",
        contexts=[(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)],
        max_pdu=16384,
        forwarded_items=((0x58, b"identity"), *(role_item(r) for r in roles)),
    )
    assert upstream.user_info.roles == roles
    assert upstream.user_info.raw_items == ((0x58, b"identity"),)


# ------------------------------------------------------------------ config


def config(**pool: object) -> dict[str, object]:
    return {
        "pools": {"p": {"backends": [{"name": "a", "dicom": "A@127.0.0.1:104"}], **pool}},
        "routes": [{"name": "all", "pool": "p", "query": "one"}],
        "dicom_nodes": {"WS1": "WS1@10.0.0.9:104"},
        "state_dir": "/var/lib/dicomlb",
    }


def test_query_retrieve_options_are_read() -> None:
    snap = build_snapshot(
        config(query="fanout", query_timeout="3s", move_destination="via_balancer")
    )
    pool = snap.pools["p"]
    assert (pool.query, pool.query_timeout, pool.move_destination) == (
        QueryMode.FANOUT,
        3.0,
        MoveDestination.VIA_BALANCER,
    )
    assert snap.routes[0].query is QueryMode.ONE
    assert str(snap.dicom_nodes["WS1"]) == "WS1@10.0.0.9:104"
    assert snap.state_dir == "/var/lib/dicomlb"
    assert 0x0020000D in snap.wanted_tags


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"query": "all"}, 'pools.p.query: "all" is not a query; use one of one or fanout'),
        (
            {"move_destination": "x"},
            'pools.p.move_destination: "x" is not a move_destination; use one of passthrough or '
            "via_balancer",
        ),
    ],
)
def test_bad_query_retrieve_options(change: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_snapshot(config(**change), "lb.yaml")
    assert str(caught.value) == f"lb.yaml: {expected}"


def test_bad_dicom_node() -> None:
    data = config()
    data["dicom_nodes"] = {"WS1": "WS1@nowhere"}
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    assert "dicom_nodes.WS1" in str(caught.value) and "has no port" in str(caught.value)


# ------------------------------------------------------------------ study table


def test_study_table_survives_a_restart(tmp_path: Path) -> None:
    index = StudyIndex(tmp_path / "state")
    index.record("1.2.3", "orthanc1")
    index.record("1.2.3", "orthanc1")
    index.record("1.2.3", "orthanc2")
    index.record("", "orthanc2")
    index.close()
    again = StudyIndex(tmp_path / "state")
    assert again.locate("1.2.3") == ["orthanc1", "orthanc2"]
    assert again.locate("9.9") == []
    assert len(again) == 1
    again.close()
    assert StudyIndex().locate("1.2.3") == []  # no state_dir: memory only


# ------------------------------------------------------------------ storage commitment


@pytest.mark.parametrize("implicit", [True, False])
def test_commitment_request_reads_transaction_and_instances(implicit: bool) -> None:
    items = []
    for uid in ("1.2.3.1", "1.2.3.2"):
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    data = identifier(implicit, TransactionUID="2.25.9", ReferencedSOPSequence=items)  # type: ignore[arg-type]
    wanted = commitment_request(data, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)
    assert wanted.transaction_uid == "2.25.9"
    assert wanted.instances == ("1.2.3.1", "1.2.3.2")
    with pytest.raises(ValueError, match=r"Transaction UID|unreadable"):
        commitment_request(b"\x08\x00\x95\x11\xff\xff\xff\x7f", IMPLICIT_VR_LE)


def test_commitment_goes_to_the_backend_holding_most() -> None:
    holders = {"i1": "b", "i2": "a", "i3": "a"}
    assert commitment_holder(["i1", "i2", "i3", "i4"], holders) == ("a", {"b": 1, "a": 2})
    assert commitment_holder(["i1", "i2"], holders) == ("b", {"b": 1, "a": 1})  # first seen
    assert commitment_holder(["i4"], holders) == (None, {})


def test_commitment_registry_is_taken_once_and_bounded() -> None:
    registry = CommitmentRegistry(limit=2)
    for n in range(3):
        registry.register(transaction_uid=f"t{n}", requester_ae="WS", backend="a")
    assert len(registry) == 2
    assert registry.take("t0") is None  # the oldest went beyond the limit
    pending = registry.take("t2")
    assert pending is not None and pending.requester_ae == "WS"
    assert registry.take("t2") is None


def test_study_table_remembers_recent_instances_in_memory(tmp_path: Path) -> None:
    index = StudyIndex(tmp_path)
    index.record("1.2.1", "a", "1.2.1.1")
    index.record("1.2.1", "b", "1.2.1.2")
    index.record("", "b", "1.2.9.9")
    assert index.holders(["1.2.1.1", "1.2.1.2", "1.2.9.9", "x"]) == {
        "1.2.1.1": "a",
        "1.2.1.2": "b",
        "1.2.9.9": "b",
    }
    assert index.locate("1.2.1") == ["a", "b"]
    index.close()


def test_recent_instances_survive_a_restart_up_to_the_limit(tmp_path: Path) -> None:
    index = StudyIndex(tmp_path, limit=4)
    for n in range(3):
        index.record("1.2.1", "a", f"1.2.1.{n}")
    index.save()
    for n in range(3, 8):
        index.record("1.2.1", "b", f"1.2.1.{n}")
    index.record("1.2.1", "c", "1.2.1.0")  # sent again, elsewhere: the newest place counts
    index.close()  # saves what the last save did not
    again = StudyIndex(tmp_path, limit=4)
    remembered = again.holders([f"1.2.1.{n}" for n in range(8)])
    assert remembered == {"1.2.1.5": "b", "1.2.1.6": "b", "1.2.1.7": "b", "1.2.1.0": "c"}
    again.close()
    with sqlite3.connect(tmp_path / "studies.sqlite3") as db:  # pruned on disk too
        assert db.execute("SELECT count(*) FROM instance_location").fetchone() == (4,)
    assert StudyIndex(tmp_path / "none").holders(["1.2.1.7"]) == {}
