"""Storage commitment without `state_dir`: the instance -> backend map is kept in memory, so
an N-ACTION for instances just stored through dicomlb reaches the backend holding them even
when nothing else makes dicomlb read the study (a round-robin pool, no spool, no state)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from tests.dicomdata import make_small, write_series
from tests.peers import LOOPBACK, Orthanc, free_port, have_dcmtk, have_orthanc, storescu

pytestmark = pytest.mark.skipif(
    not (have_dcmtk() and have_orthanc()), reason="needs DCMTK and Orthanc"
)


def commit(port: int, transaction: str, instances: list[Dataset]) -> int:
    """An N-ACTION (Request Storage Commitment) from COMMITSCU through dicomlb; its status."""
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
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOMLB")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        return int(status.Status)
    finally:
        assoc.release()


def test_commitment_without_state_dir_reaches_the_holder(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    requester_port = free_port()
    lb_port = free_port()
    modalities = {"COMMITSCU": f"COMMITSCU@{LOOPBACK}:{lb_port}"}  # reports go to dicomlb
    orthancs = [Orthanc(f"ORTHANC{i}", modalities=modalities) for i in (1, 2)]
    reports: dict[str, tuple[list[str], list[str]]] = {}

    def on_report(event: Any) -> tuple[int, None]:
        ds = event.event_information
        ok = [item.ReferencedSOPInstanceUID for item in ds.get("ReferencedSOPSequence", [])]
        failed = [item.ReferencedSOPInstanceUID for item in ds.get("FailedSOPSequence", [])]
        reports[str(ds.TransactionUID)] = (ok, failed)
        return 0x0000, None

    listener = AE("COMMITSCU")
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
                        "strategy": "round_robin",  # no routing tag: the study is never read
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
        assert lb.snapshot.state_dir is None
        instances = make_small(4)
        files = write_series(instances, tmp_path / "in")
        result = storescu(LOOPBACK, lb.port, files, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        held = [orthanc.sop_instance_uids() for orthanc in orthancs]
        assert all(held), f"round robin left a backend empty: {held}"
        transactions = []
        for n, uids in enumerate(held):
            transaction = f"2.25.{n + 1}{int(time.time())}"
            transactions.append(transaction)
            mine = [ds for ds in instances if ds.SOPInstanceUID in uids]
            assert commit(lb.port, transaction, mine) == 0x0000
        deadline = time.monotonic() + 15
        while len(reports) < len(transactions):
            assert time.monotonic() < deadline, f"reports: {reports}\n{caplog.text[-3000:]}"
            time.sleep(0.05)
    finally:
        server.shutdown()
        for orthanc in orthancs:
            orthanc.close()
    # Each N-ACTION went to the Orthanc holding its instances: every one committed.
    for transaction, uids in zip(transactions, held, strict=True):
        ok, failed = reports[transaction]
        assert (sorted(ok), failed) == (sorted(uids), [])
    assert "commitment.unlocated" not in caplog.text


def test_commitment_at_an_instance_that_did_not_relay_the_stores_finds_the_holders(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two dicomlb instances: the C-STOREs go through one, the N-ACTIONs through the other,
    which never saw them. It asks the backends (C-FIND at IMAGE level for the instances)
    and sends each request to the Orthanc holding its instances: every one committed."""
    requester_port = free_port()
    storing_port, committing_port = free_port(), free_port()
    modalities = {"COMMITSCU": f"COMMITSCU@{LOOPBACK}:{committing_port}"}
    orthancs = [Orthanc(f"ORTHANC{i}", modalities=modalities) for i in (1, 2)]
    reports: dict[str, tuple[list[str], list[str]]] = {}

    def on_report(event: Any) -> tuple[int, None]:
        ds = event.event_information
        ok = [item.ReferencedSOPInstanceUID for item in ds.get("ReferencedSOPSequence", [])]
        failed = [item.ReferencedSOPInstanceUID for item in ds.get("FailedSOPSequence", [])]
        reports[str(ds.TransactionUID)] = (ok, failed)
        return 0x0000, None

    def config(port: int) -> dict[str, Any]:
        return {
            "listeners": {"dicom": {"bind": f"127.0.0.1:{port}", "ae_title": "DICOMLB"}},
            "pools": {
                "pacs": {
                    "strategy": "round_robin",
                    "storage_commitment": "forward",
                    "backends": [
                        {"name": f"orthanc{i}", "dicom": o.address}
                        for i, o in enumerate(orthancs, 1)
                    ],
                }
            },
            "routes": [{"name": "all", "pool": "pacs"}],
            "dicom_nodes": {"COMMITSCU": f"COMMITSCU@{LOOPBACK}:{requester_port}"},
            "instances": 2,
        }

    listener = AE("COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(
        (LOOPBACK, requester_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        for orthanc in orthancs:
            orthanc.start()
        storing = balancer(config(storing_port))
        committing = balancer(config(committing_port))
        instances = make_small(6)
        files = write_series(instances, tmp_path / "in")
        result = storescu(LOOPBACK, storing.port, files, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        held = [orthanc.sop_instance_uids() for orthanc in orthancs]
        assert all(held), f"round robin left a backend empty: {held}"
        transactions = []
        for n, uids in enumerate(held):
            transaction = f"2.25.{n + 7}{int(time.time())}"
            transactions.append(transaction)
            mine = [ds for ds in instances if ds.SOPInstanceUID in uids]
            assert commit(committing.port, transaction, mine) == 0x0000
        deadline = time.monotonic() + 15
        while len(reports) < len(transactions):
            assert time.monotonic() < deadline, f"reports: {reports}\n{caplog.text[-3000:]}"
            time.sleep(0.05)
    finally:
        server.shutdown()
        for orthanc in orthancs:
            orthanc.close()
    for transaction, uids in zip(transactions, held, strict=True):
        ok, failed = reports[transaction]
        assert (sorted(ok), failed) == (sorted(uids), [])  # not the other backend's failures
    probed = [r.getMessage() for r in caplog.records if "commitment.probed" in r.getMessage()]
    assert len(probed) == 2 and all("found=orthanc" in line for line in probed), probed
