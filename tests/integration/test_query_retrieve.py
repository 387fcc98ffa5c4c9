"""Query/retrieve through dicomlb against two real Orthanc backends: C-FIND (one, fanout,
a backend down), C-MOVE (passthrough, via_balancer) to a DCMTK storescp, C-GET with a client
that accepts only explicit VR little endian; DCMTK findscu / movescu / getscu and pynetdicom."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.dicomdata import make_studies, write_series
from tests.integration.conftest import Balancer, uids_across
from tests.peers import (
    LOOPBACK,
    Orthanc,
    StoreSCP,
    free_port,
    have_dcmtk,
    have_orthanc,
    run_dcmtk,
    sop_instance_uid,
    storescu,
)

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_dcmtk() and have_orthanc()), reason="needs dcmtk and orthanc"),
]

CLIENTS = ("FINDSCU", "MOVESCU", "GETSCU", "PYNETDICOM")
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


class Site:
    """Two Orthancs holding studies A (on 1), B (on 2) and S (on both), a destination SCP and
    the dicomlb listener port they all know."""

    def __init__(self, tmp: Path) -> None:
        self.lb_port = free_port()
        self.dest = StoreSCP("DEST", tmp / "dest")
        self.modalities = {aet: f"{aet}@{LOOPBACK}:{free_port()}" for aet in CLIENTS}
        self.modalities["DEST"] = f"DEST@{LOOPBACK}:{self.dest.port}"
        self.modalities["DICOMLB"] = f"DICOMLB@{LOOPBACK}:{self.lb_port}"
        self.orthancs = [Orthanc(f"ORTHANC{i}", modalities=self.modalities) for i in (1, 2)]
        self.studies = make_studies([("CT", 2), ("CT", 3), ("CT", 2)])
        self.uids = list(self.studies)
        self.tmp = tmp

    def start(self) -> None:
        self.dest.start()
        for orthanc in self.orthancs:
            orthanc.start()
        a, b, s = self.uids
        for orthanc, uids in ((self.orthancs[0], (a, s)), (self.orthancs[1], (b, s))):
            paths = []
            for uid in uids:
                paths += write_series(self.studies[uid], self.tmp / orthanc.aet / uid)
            result = storescu(LOOPBACK, orthanc.dicom_port, paths, aec=orthanc.aet)
            assert result.returncode == 0, result.stderr

    def close(self) -> None:
        for orthanc in self.orthancs:
            orthanc.close()
        self.dest.close()

    def config(self, **pool: Any) -> dict[str, Any]:
        return {
            "listeners": {"dicom": {"bind": f"127.0.0.1:{self.lb_port}", "ae_title": "DICOMLB"}},
            "pools": {
                "pacs": {
                    "backends": [
                        {"name": f"orthanc{i}", "dicom": o.address}
                        for i, o in enumerate(self.orthancs, 1)
                    ],
                    "health": {"interval": "200ms", "timeout": "1s", "fall": 1, "rise": 1},
                    **pool,
                }
            },
            "routes": [{"name": "all", "pool": "pacs"}],
            "dicom_nodes": {"DEST": self.modalities["DEST"]},
        }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def pyn_find(
    port: int, query: Dataset, model: Any = StudyRootQueryRetrieveInformationModelFind
) -> tuple[list[Dataset], int, str]:
    """C-FIND with pynetdicom: identifiers, final status and its Error Comment."""
    ae = AE("PYNETDICOM")
    ae.add_requested_context(model)
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOMLB")
    assert assoc.is_established
    found: list[Dataset] = []
    final = (0xFFFF, "")
    try:
        for status, identifier in assoc.send_c_find(query, model):
            if status is None:
                break
            if status.Status in (0xFF00, 0xFF01):
                found.append(identifier)
            else:
                final = (int(status.Status), str(status.get("ErrorComment", "")))
    finally:
        assoc.release()
    return found, *final


def direct_studies(site: Site, index: int) -> set[str]:
    found, status, _ = pyn_find(site.orthancs[index].dicom_port, study_query())
    assert status == 0
    return {ds.StudyInstanceUID for ds in found}


def test_find_fanout_is_the_union_without_duplicates(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="fanout"))
    union = direct_studies(site, 0) | direct_studies(site, 1)
    assert union == set(site.uids)
    found, status, comment = pyn_find(lb.port, study_query())
    assert status == 0 and not comment
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted(union)  # S once, not twice


def test_find_one_equals_one_backend(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="one"))
    found, status, _ = pyn_find(lb.port, study_query())
    assert status == 0
    got = {ds.StudyInstanceUID for ds in found}
    assert got in (direct_studies(site, 0), direct_studies(site, 1))
    assert len(found) == len(got) == 2


def test_find_patient_root_fanout(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="fanout"))
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    query.PatientName = ""
    found, status, _ = pyn_find(lb.port, query, PatientRootQueryRetrieveInformationModelFind)
    direct: set[str] = set()
    for orthanc in site.orthancs:
        d, _, _ = pyn_find(orthanc.dicom_port, query, PatientRootQueryRetrieveInformationModelFind)
        direct |= {ds.PatientID for ds in d}
    assert status == 0
    assert sorted(ds.PatientID for ds in found) == sorted(direct)


def test_find_fanout_with_a_backend_down(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="fanout", health={"enabled": False}))
    site.orthancs[1].stop(graceful=False)
    found, status, comment = pyn_find(lb.port, study_query())
    a, _, s = site.uids
    assert {ds.StudyInstanceUID for ds in found} == {a, s}
    assert status == 0
    assert "orthanc2" in comment and comment.startswith("partial")


def test_findscu_through_dicomlb(site: Site, balancer: Any, tmp_path: Path) -> None:
    lb = balancer(site.config(query="fanout"))
    out = tmp_path / "rsp"
    out.mkdir()
    result = run_dcmtk(
        "findscu",
        [
            "-S",
            "-aet",
            "FINDSCU",
            "-aec",
            "DICOMLB",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-X",
            "-od",
            str(out),
            LOOPBACK,
            str(lb.port),
        ],
    )
    assert result.returncode == 0, result.stderr
    uids = {sop_uid_of(p) for p in out.iterdir()}
    assert uids == set(site.uids)


def movescu_study(port: int, study_uid: str) -> subprocess.CompletedProcess[str]:
    """DCMTK movescu: move a study through dicomlb (study root) to the DEST AE."""
    return run_dcmtk(
        "movescu",
        [
            *("-S", "-aet", "MOVESCU", "-aec", "DICOMLB", "-aem", "DEST"),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
            LOOPBACK,
            str(port),
        ],
    )


def sop_uid_of(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path).StudyInstanceUID)


@pytest.mark.parametrize("mode", ["passthrough", "via_balancer"])
def test_movescu_to_storescp(site: Site, balancer: Any, mode: str) -> None:
    lb = balancer(site.config(query="fanout", move_destination=mode))
    _, _, s = site.uids
    result = movescu_study(lb.port, s)
    assert result.returncode == 0, result.stderr + result.stdout
    expected = {ds.SOPInstanceUID for ds in site.studies[s]}
    deadline = time.monotonic() + 10
    while {sop_instance_uid(p) for p in site.dest.files()} != expected:
        assert time.monotonic() < deadline, site.dest.files()
        time.sleep(0.05)


def test_move_unknown_destination_via_balancer(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="fanout", move_destination="via_balancer"))
    ae = AE("MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, lb.port, ae_title="DICOMLB")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.uids[0]
    statuses = [
        int(status.Status)
        for status, _ in assoc.send_c_move(
            query, "NOWHERE", StudyRootQueryRetrieveInformationModelMove
        )
        if status is not None
    ]
    assoc.release()
    assert statuses[-1] == 0xA801


def test_get_explicit_vr_only(site: Site, balancer: Any) -> None:
    lb = balancer(site.config(query="fanout"))
    _, b, _ = site.uids
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        assert event.context.transfer_syntax == EXPLICIT_VR_LE
        received.append(event.dataset)
        return 0x0000

    ae = AE("GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LE])
    assoc = ae.associate(
        LOOPBACK,
        lb.port,
        ae_title="DICOMLB",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = b
    responses = [
        status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
    ]
    assoc.release()
    final = responses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(site.studies[b])
    assert {ds.SOPInstanceUID for ds in received} == {ds.SOPInstanceUID for ds in site.studies[b]}


def test_getscu_through_dicomlb(site: Site, balancer: Any, tmp_path: Path) -> None:
    lb = balancer(site.config(query="fanout"))
    _, _, s = site.uids
    out = tmp_path / "got"
    out.mkdir()
    result = run_dcmtk(
        "getscu",
        [
            "-S",
            "-aet",
            "GETSCU",
            "-aec",
            "DICOMLB",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={s}",
            "-od",
            str(out),
            LOOPBACK,
            str(lb.port),
        ],
    )
    assert result.returncode == 0, result.stderr + result.stdout
    # S is on both backends: each sends its copy; the client keeps one file per instance
    assert {sop_instance_uid(p) for p in out.iterdir()} == {
        ds.SOPInstanceUID for ds in site.studies[s]
    }


def test_moves_go_where_dicomlb_stored_the_study(
    site: Site, balancer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored through dicomlb (affinity), the study is recorded; a C-MOVE after a restart goes
    straight to its backend, without a C-FIND probe."""
    config = site.config(query="fanout", strategy="affinity", move_destination="via_balancer")
    config["state_dir"] = str(tmp_path / "state")
    first = Balancer(dict(config)).start()
    studies = make_studies([("CT", 2)])
    (uid,) = studies
    paths = write_series(studies[uid], tmp_path / "new")
    try:
        assert storescu(LOOPBACK, first.port, paths, aet="CT", aec="DICOMLB").returncode == 0
        holder = first.app.runtime.studies.locate(uid)
        assert len(holder) == 1
    finally:
        first.stop()
    lb = balancer(config)  # same listener port and state directory
    assert lb.app.runtime.studies.locate(uid) == holder
    caplog.clear()
    result = movescu_study(lb.port, uid)
    assert result.returncode == 0, result.stderr
    expected = {ds.SOPInstanceUID for ds in studies[uid]}
    deadline = time.monotonic() + 10
    while not expected <= {sop_instance_uid(p) for p in site.dest.files()}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "retrieve.probed" not in caplog.text
    assert f"backends={holder[0]} destination=DEST" in caplog.text


def test_storage_commitment_forwarded_or_refused(site: Site, balancer: Any) -> None:
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    a, _, _ = site.uids
    request = Dataset()
    request.TransactionUID = "1.2.826.0.1.3680043.8.498.77"
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = site.studies[a][0].SOPInstanceUID
    request.ReferencedSOPSequence = [item]

    def commit(port: int) -> int | None:
        ae = AE("PYNETDICOM")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOOPBACK, port, ae_title="DICOMLB")
        if not assoc.is_established:
            return None
        try:
            status, _ = assoc.send_n_action(
                request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
            )
            return None if status is None or "Status" not in status else int(status.Status)
        finally:
            assoc.release()

    refused = Balancer(site.config()).start()
    try:
        assert commit(refused.port) is None  # the context is refused at negotiation
    finally:
        refused.stop()
    forwarded = balancer(site.config(storage_commitment="forward"))
    assert commit(forwarded.port) == 0x0000


def test_c_cancel_reaches_the_backend(balancer: Any) -> None:
    """A slow pynetdicom backend answers a C-FIND; the client's C-CANCEL stops it."""
    saw_cancel: list[bool] = []

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(50):
            if event.is_cancelled:
                saw_cancel.append(True)
                yield 0xFE00, None
                return
            result = Dataset()
            result.QueryRetrieveLevel = "STUDY"
            result.StudyInstanceUID = f"1.2.3.{n}"
            yield 0xFF00, result
            time.sleep(0.05)
        yield 0x0000, None

    backend_ae = AE("SLOWPACS")
    backend_ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    backend_ae.add_supported_context("1.2.840.10008.1.1")
    port = free_port()
    server = backend_ae.start_server(
        (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    try:
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "query": "fanout",
                        "health": {"enabled": False},
                        "backends": [{"name": "slow", "dicom": f"SLOWPACS@{LOOPBACK}:{port}"}],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        ae = AE("PYNETDICOM")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(LOOPBACK, lb.port, ae_title="DICOMLB")
        context_id = assoc.accepted_contexts[0].context_id
        statuses = []
        for status, _ in assoc.send_c_find(
            study_query(), StudyRootQueryRetrieveInformationModelFind, msg_id=9
        ):
            statuses.append(int(status.Status))
            if len(statuses) == 2:
                assoc.send_c_cancel(9, context_id)
        assoc.release()
    finally:
        server.shutdown()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 20
    assert saw_cancel == [True]


def test_storage_commitment_goes_to_the_holder_and_the_report_comes_back(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A pynetdicom requester asks dicomlb to commit instances it stored through dicomlb on
    two Orthancs: each N-ACTION goes to the Orthanc holding the instances; Orthanc reports
    to the requester's AE title, which it knows at dicomlb's address; dicomlb relays the
    N-EVENT-REPORT to the requester's own listener (SCU role) and its response back."""
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    requester_port = free_port()
    lb_port = free_port()
    modalities = {"COMMITSCU": f"COMMITSCU@{LOOPBACK}:{lb_port}"}  # reports go to dicomlb
    orthancs = [Orthanc(f"ORTHANC{i}", modalities=modalities) for i in (1, 2)]
    reports: dict[str, tuple[int, list[str], list[str]]] = {}

    def on_report(event: Any) -> tuple[int, None]:
        ds = event.event_information
        ok = [item.ReferencedSOPInstanceUID for item in ds.get("ReferencedSOPSequence", [])]
        failed = [item.ReferencedSOPInstanceUID for item in ds.get("FailedSOPSequence", [])]
        reports[str(ds.TransactionUID)] = (int(event.request.EventTypeID), ok, failed)
        return 0x0000, None

    listener = AE("COMMITSCU")
    # dicomlb proposes to be SCP only (PS3.4 J.3.3): accept that, so this AE is the SCU.
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(
        (LOOPBACK, requester_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        for orthanc in orthancs:
            orthanc.start()
        lb = balancer(
            {
                "listeners": {"dicom": {"bind": f"127.0.0.1:{lb_port}", "ae_title": "DICOMLB"}},
                "pools": {
                    "pacs": {
                        "strategy": "affinity",
                        "key": "StudyInstanceUID",
                        "storage_commitment": "forward",
                        "backends": [
                            {"name": f"orthanc{i}", "dicom": o.address}
                            for i, o in enumerate(orthancs, 1)
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
                "dicom_nodes": {"COMMITSCU": f"COMMITSCU@{LOOPBACK}:{requester_port}"},
            }
        )
        pool = [lb.backend("orthanc1"), lb.backend("orthanc2")]
        studies = make_studies([("CT", 2)] * 6, study_uids=uids_across(pool, 6))
        paths = []
        for uid, instances in studies.items():
            paths += write_series(instances, tmp_path / uid)
        result = storescu(LOOPBACK, lb.port, paths, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        table = lb.app.runtime.studies
        on: dict[str, str] = {}  # backend -> a study it holds
        for uid in studies:
            on.setdefault(table.locate(uid)[0], uid)
        assert len(on) == 2, "affinity put every study on one backend"
        one, two = on.values()

        def commit(transaction: str, instances: list[Dataset]) -> int:
            request = Dataset()
            request.TransactionUID = transaction
            request.ReferencedSOPSequence = []
            for ds in instances:
                item = Dataset()
                item.ReferencedSOPClassUID = ds.SOPClassUID
                item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
                request.ReferencedSOPSequence.append(item)
            ae = AE("COMMITSCU")
            ae.add_requested_context(StorageCommitmentPushModel)
            assoc = ae.associate(LOOPBACK, lb.port, ae_title="DICOMLB")
            assert assoc.is_established
            try:
                status, _ = assoc.send_n_action(
                    request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
                )
                return int(status.Status)
            finally:
                assoc.release()

        t1, t2, t3 = (f"2.25.{n}{int(time.time())}" for n in (1, 2, 3))
        assert commit(t1, studies[one]) == 0x0000
        assert commit(t2, studies[two]) == 0x0000
        mixed = studies[one] + studies[two][:1]
        assert commit(t3, mixed) == 0x0000
        deadline = time.monotonic() + 15
        while len(reports) < 3:
            assert time.monotonic() < deadline, f"reports: {reports}\n{caplog.text[-3000:]}"
            time.sleep(0.05)
    finally:
        server.shutdown()
        for orthanc in orthancs:
            orthanc.close()
    # Each transaction went where its instances are: every instance committed.
    assert reports[t1] == (1, [ds.SOPInstanceUID for ds in studies[one]], [])
    assert reports[t2] == (1, [ds.SOPInstanceUID for ds in studies[two]], [])
    # Spread: the backend holding most commits its own and reports the other as failed.
    assert reports[t3] == (
        2,
        [ds.SOPInstanceUID for ds in studies[one]],
        [studies[two][0].SOPInstanceUID],
    )
    assert "commitment.spread" in caplog.text
    assert caplog.text.count("commitment.reported") == 3
    assert len(lb.app.runtime.commitments) == 0


def test_fanout_timeout_leaves_the_slow_backend_out_but_up(balancer: Any) -> None:
    """A backend that does not finish a fan-out C-FIND within query_timeout is left out of
    the results; a slow query is not a backend failure (DESIGN 14): it stays up."""

    def handler(delay: float, uid: str) -> Any:
        def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            time.sleep(delay)
            result = Dataset()
            result.QueryRetrieveLevel = "STUDY"
            result.StudyInstanceUID = uid
            yield 0xFF00, result
            yield 0x0000, None

        return on_find

    servers = []
    ports = {}
    for name, delay in (("fast", 0.0), ("slow", 2.0)):
        ae = AE(name.upper())
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ports[name] = free_port()
        servers.append(
            ae.start_server(
                (LOOPBACK, ports[name]),
                block=False,
                evt_handlers=[(evt.EVT_C_FIND, handler(delay, f"1.2.3.{len(servers)}"))],
            )
        )
    try:
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "query": "fanout",
                        "query_timeout": "300ms",
                        "health": {"enabled": False, "fall": 1},
                        "backends": [
                            {"name": name, "dicom": f"{name.upper()}@{LOOPBACK}:{port}"}
                            for name, port in ports.items()
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        results, status, comment = pyn_find(lb.port, study_query())
        assert [ds.StudyInstanceUID for ds in results] == ["1.2.3.0"]
        assert status == 0x0000 and comment == "partial: no answer from slow (timed out)"
        assert lb.backend("fast").health.up
        assert lb.backend("slow").health.up  # fall 1, yet a query timeout never counts
    finally:
        for server in servers:
            server.shutdown()


def test_failed_instances_of_a_spread_move_reach_the_client(balancer: Any) -> None:
    """Two pynetdicom backends hold parts of a study and move it (passthrough) to a
    destination that refuses one instance of each: the client's final C-MOVE-RSP lists both
    in its Failed SOP Instance UID List, with the counts summed."""
    study = "1.2.826.0.1.3680043.8.498.555"
    refused = {"1.2.826.0.1.3680043.8.498.555.1.2", "1.2.826.0.1.3680043.8.498.555.2.1"}
    dest_port = free_port()

    def on_store(event: Any) -> int:
        return 0xA700 if event.request.AffectedSOPInstanceUID in refused else 0x0000

    dest = AE("DEST")
    dest.add_supported_context(CTImageStorage)
    dest_server = dest.start_server(
        (LOOPBACK, dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )

    def mover(part: int) -> Any:
        def on_move(event: Any) -> Iterator[Any]:
            yield LOOPBACK, dest_port
            instances = []
            for n in (1, 2):
                ds = make_studies([("CT", 1)])
                instance = next(iter(ds.values()))[0]
                instance.SOPInstanceUID = f"{study}.{part}.{n}"
                instance.file_meta.MediaStorageSOPInstanceUID = instance.SOPInstanceUID
                instance.StudyInstanceUID = study
                instances.append(instance)
            yield len(instances)
            for instance in instances:
                yield 0xFF00, instance

        return on_move

    servers = [dest_server]
    backends = []
    for part in (1, 2):
        ae = AE(f"MOVEPACS{part}")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(CTImageStorage)
        port = free_port()
        servers.append(
            ae.start_server(
                (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_MOVE, mover(part))]
            )
        )
        backends.append({"name": f"pacs{part}", "dicom": f"MOVEPACS{part}@{LOOPBACK}:{port}"})
    try:
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "query": "fanout",
                        "health": {"enabled": False},
                        "backends": backends,
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        lb.app.runtime.studies.record_many(study, ["pacs1", "pacs2"])
        ae = AE("MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(LOOPBACK, lb.port, ae_title="DICOMLB")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        responses = list(
            assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)
        )
        assoc.release()
    finally:
        for server in servers:
            server.shutdown()
    status, identifier = responses[-1]
    assert int(status.Status) == 0xB000
    assert status.NumberOfCompletedSuboperations == 2
    assert status.NumberOfFailedSuboperations == 2
    assert identifier is not None
    assert set(identifier.FailedSOPInstanceUIDList) == refused
