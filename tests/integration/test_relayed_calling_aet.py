"""Relayed associations keep the original calling AE title, in both directions: compared
with the same exchange done directly against a real Orthanc.

Storage commitment with a backend as the requester: Orthanc asks a committer to commit
instances (`POST /modalities/{m}/storage-commitment`); the committer (pynetdicom) answers
the N-ACTION, then reports on a new association to the address it knows for Orthanc's AE
title: Orthanc itself (directly), or dicomlb. Orthanc accepts the report only from the AE it
asked, so dicomlb must relay it with the committer's own calling AE title. Either way the
transaction must end `Success`.

C-MOVE via the balancer: the backend's sub-operations reach the destination with the
backend's calling AE title, as they do directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.dicomdata import make_studies, write_series
from tests.peers import LOOPBACK, Orthanc, free_port, have_dcmtk, have_orthanc, storescu

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_dcmtk() and have_orthanc()), reason="needs dcmtk and orthanc"),
]

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5


class Committer:
    """A storage commitment SCP that commits everything asked of it and reports, on a new
    association, to `report_to` (port) with the requester's AE title as called AE."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.report_to: int | None = None
        self.reports: list[tuple[int, str]] = []  # (N-EVENT-REPORT-RSP status, calling AE)
        self._threads: list[threading.Thread] = []
        ae = AE("COMMITTER")
        ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(
            (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_N_ACTION, self._on_action)]
        )

    def _on_action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        requester = event.assoc.requestor.ae_title
        thread = threading.Thread(target=self._report, args=(request, requester))
        self._threads.append(thread)
        thread.start()
        return 0x0000, None

    def _report(self, request: Dataset, requester: str) -> None:
        time.sleep(0.2)  # after the N-ACTION-RSP, as committers do
        result = Dataset()
        result.TransactionUID = request.TransactionUID
        result.ReferencedSOPSequence = request.ReferencedSOPSequence
        ae = AE("COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assert self.report_to is not None
        assoc = ae.associate(LOOPBACK, self.report_to, ae_title=requester)
        if not assoc.is_established:
            self.reports.append((-1, "not associated"))
            return
        try:
            status, _ = assoc.send_n_event_report(
                result, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
            )
            self.reports.append((int(status.Status) if "Status" in status else -1, requester))
        finally:
            assoc.release()

    def close(self) -> None:
        for thread in self._threads:
            thread.join(10)
        self.server.shutdown()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Orthanc, Committer, int, list[dict[str, str]]]]:
    """(Orthanc holding 2 instances, the committer it knows directly, dicomlb's port, the
    instances as Orthanc's REST API names them)."""
    lb_port = free_port()
    committer = Committer(free_port())
    # Orthanc knows the committer only: a report calling as DICOMLB would be refused.
    node = Orthanc("ORTHANC", modalities={"committer": f"COMMITTER@{LOOPBACK}:{committer.port}"})
    try:
        node.start()
        (study,) = make_studies([("CT", 2)]).values()
        result = storescu(LOOPBACK, node.dicom_port, write_series(study, tmp_path / "s"))
        assert result.returncode == 0, result.stderr
        instances = [
            {"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)}
            for ds in study
        ]
        yield node, committer, lb_port, instances
    finally:
        committer.close()
        node.close()


def commit(node: Orthanc, instances: list[dict[str, str]]) -> Callable[[], str]:
    """Orthanc asks the committer; a function giving the transaction's status."""
    job = node.post_json("/modalities/committer/storage-commitment", {"DicomInstances": instances})
    path = job["Path"]
    return lambda: str(node.get_json(path)["Status"])


def settled(status: Callable[[], str], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (now := status()) == "Pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


@pytest.mark.parametrize("nodes", [False, True], ids=["by-backend-aet", "by-dicom-nodes"])
def test_a_backend_requester_gets_its_report_through_dicomlb(
    site: tuple[Orthanc, Committer, int, list[dict[str, str]]], balancer: Any, nodes: bool
) -> None:
    node, committer, lb_port, instances = site
    # Directly: the committer reports to Orthanc itself.
    committer.report_to = node.dicom_port
    assert settled(commit(node, instances)) == "Success"
    assert committer.reports == [(0x0000, "ORTHANC")]
    # Through dicomlb: the committer knows ORTHANC at dicomlb's address.
    config: dict[str, Any] = {
        "listeners": {"dicom": {"bind": f"127.0.0.1:{lb_port}", "ae_title": "DICOMLB"}},
        "pools": {
            "pacs": {
                "storage_commitment": "forward",  # both ways: the context is accepted
                "backends": [{"name": "orthanc", "dicom": node.address}],
            }
        },
        "routes": [{"name": "all", "pool": "pacs"}],
    }
    if nodes:  # the report's destination named explicitly
        config["dicom_nodes"] = {"ORTHANC": node.address}
    lb = balancer(config)
    committer.report_to = lb.port
    assert settled(commit(node, instances)) == "Success"
    assert committer.reports[1] == (0x0000, "ORTHANC")


def test_move_suboperations_keep_the_backend_calling_aet(tmp_path: Path, balancer: Any) -> None:
    lb_port = free_port()
    dest_port = free_port()
    callers: list[str] = []

    def on_store(event: Any) -> int:
        callers.append(event.assoc.requestor.ae_title)
        return 0x0000

    dest = AE("DEST")
    dest.add_supported_context(CTImageStorage)
    server = dest.start_server(
        (LOOPBACK, dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    modalities = {
        "MOVER": f"MOVER@{LOOPBACK}:1",
        "DEST": f"DEST@{LOOPBACK}:{dest_port}",
        "DICOMLB": f"DICOMLB@{LOOPBACK}:{lb_port}",  # via_balancer: dicomlb is the destination
    }
    try:
        with Orthanc("ORTHANC", modalities=modalities) as node:
            node.start()
            ((uid, study),) = make_studies([("CT", 1)]).items()
            result = storescu(LOOPBACK, node.dicom_port, write_series(study, tmp_path / "s"))
            assert result.returncode == 0, result.stderr

            def move(port: int) -> int:
                ae = AE("MOVER")
                ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
                assoc = ae.associate(LOOPBACK, port, ae_title="ORTHANC")
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.StudyInstanceUID = uid
                answers = list(
                    assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)
                )
                assoc.release()
                return int(answers[-1][0].Status)

            assert move(node.dicom_port) == 0x0000
            lb = balancer(
                {
                    "listeners": {"dicom": {"bind": f"127.0.0.1:{lb_port}", "ae_title": "DICOMLB"}},
                    "pools": {
                        "pacs": {
                            "move_destination": "via_balancer",
                            "backends": [{"name": "orthanc", "dicom": node.address}],
                        }
                    },
                    "routes": [{"name": "all", "pool": "pacs"}],
                    "dicom_nodes": {"DEST": f"DEST@{LOOPBACK}:{dest_port}"},
                }
            )
            assert move(lb.port) == 0x0000
    finally:
        server.shutdown()
    assert callers == ["ORTHANC", "ORTHANC"]  # directly, then through dicomlb
