"""A backend that refuses the caller, directly and through dicomlb: a real Orthanc that does
not list the caller in its DicomModalities.

Directly, Orthanc refuses the association (A-ASSOCIATE-RJ, when echo and store are not open
to everyone) or aborts it on the request (Orthanc's defaults). dicomlb has already accepted
the caller's association when it asks the backend, so it cannot do the same: each C-FIND,
C-MOVE and C-GET gets `0x0124` (refused: not authorized), never a "partial" answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.peers import LOOPBACK, Orthanc, free_port, have_orthanc

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not have_orthanc(), reason="needs orthanc"),
]

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
NOT_AUTHORIZED = 0x0124

# How Orthanc treats a caller it does not know: with echo and store closed to strangers it
# rejects the association; with them open (its defaults) it aborts on a C-FIND/MOVE/GET.
STRICT = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False}
OPEN = {"DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True}


@pytest.fixture(params=["rejects", "aborts"])
def orthanc(request: pytest.FixtureRequest) -> Iterator[tuple[str, Orthanc, int]]:
    """(how it refuses, the Orthanc, dicomlb's port): Orthanc knows dicomlb (its health
    checks pass) and the destination, not the caller."""
    lb_port = free_port()
    modalities = {"DICOMLB": f"DICOMLB@{LOOPBACK}:{lb_port}", "DEST": f"DEST@{LOOPBACK}:1"}
    config = STRICT if request.param == "rejects" else OPEN
    with Orthanc("ORTHANC", modalities=modalities, config=config) as node:
        node.start()
        yield request.param, node, lb_port


def query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    return ds


def ask(port: int, model: Any, caller: str = "STRANGER") -> tuple[str, int | None, str]:
    """One request as `caller`: ("rejected" | "aborted" | "answered", final status, its
    Error Comment)."""
    ae = AE(caller)
    ae.add_requested_context(model)
    roles = []
    if model is GET:
        ae.add_requested_context(CTImageStorage)
        roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(LOOPBACK, port, ae_title="ORTHANC", ext_neg=roles)
    if assoc.is_rejected:
        return "rejected", None, ""
    assert assoc.is_established
    if model is FIND:
        answers = list(assoc.send_c_find(query(), model))
    elif model is MOVE:
        answers = list(assoc.send_c_move(query(), "DEST", model))
    else:
        answers = list(assoc.send_c_get(query(), model))
    final = answers[-1][0]
    if assoc.is_aborted or final is None or "Status" not in final:
        return "aborted", None, ""
    assoc.release()
    return "answered", int(final.Status), str(final.get("ErrorComment", ""))


@pytest.mark.parametrize("model", [FIND, MOVE, GET], ids=["C-FIND", "C-MOVE", "C-GET"])
def test_a_caller_the_backend_refuses_is_told_so(
    orthanc: tuple[str, Orthanc, int], model: Any, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    how, node, lb_port = orthanc
    # Directly: the association is rejected, or aborted on the request.
    assert ask(node.dicom_port, model)[0] == ("rejected" if how == "rejects" else "aborted")
    lb = balancer(
        {
            "listeners": {"dicom": {"bind": f"127.0.0.1:{lb_port}", "ae_title": "DICOMLB"}},
            "pools": {
                "pacs": {
                    "backends": [{"name": "orthanc", "dicom": node.address}],
                    "health": {"interval": "200ms", "timeout": "1s", "fall": 1, "rise": 1},
                }
            },
            "routes": [{"name": "all", "pool": "pacs"}],
        }
    )
    # Through dicomlb: the association is accepted before any backend is asked, so the
    # refusal is the request's status; no backend answered, so nothing is "partial".
    outcome, status, comment = ask(lb.port, model)
    assert (outcome, status) == ("answered", NOT_AUTHORIZED), comment
    assert comment.startswith("orthanc") and "partial" not in comment, comment
    # A refusal is not the backend's failure: it stays up for everyone else.
    assert lb.backend("orthanc").available


def test_a_failure_status_is_relayed_without_partial(balancer: Any) -> None:
    """A known caller, a move destination Orthanc does not know: Orthanc answers 0xC000
    directly, and dicomlb relays exactly that (no "partial: no answer" comment)."""
    lb_port = free_port()
    modalities = {"DICOMLB": f"DICOMLB@{LOOPBACK}:{lb_port}", "MOVER": f"MOVER@{LOOPBACK}:1"}
    with Orthanc("ORTHANC", modalities=modalities) as node:
        node.start()
        ae = AE("MOVER")
        ae.add_requested_context(MOVE)
        direct = ae.associate(LOOPBACK, node.dicom_port, ae_title="ORTHANC")
        direct_final = list(direct.send_c_move(query(), "NOWHERE", MOVE))[-1][0]
        direct.release()
        lb = balancer(
            {
                "listeners": {"dicom": {"bind": f"127.0.0.1:{lb_port}", "ae_title": "DICOMLB"}},
                "pools": {"pacs": {"backends": [{"name": "orthanc", "dicom": node.address}]}},
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        relayed = ae.associate(LOOPBACK, lb.port, ae_title="ORTHANC")
        relayed_final = list(relayed.send_c_move(query(), "NOWHERE", MOVE))[-1][0]
        relayed.release()
    assert int(relayed_final.Status) == int(direct_final.Status) == 0xC000
    assert str(relayed_final.get("ErrorComment", "")) == str(direct_final.get("ErrorComment", ""))
