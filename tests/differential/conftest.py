"""The differential suite's site: real peers, dicomlb in front of them, and `differ`,
which runs one scenario against the peers directly, then through dicomlb, and compares.

Peers (started once per test module, and stopped after it: in-process dicomlb instances
running on would log into other tests' captured logs):

- `orthanc`: Orthanc ``ORTHANC`` with authentication off, DICOMweb, WebDAV, and the modalities
  the scenarios use (DEST at a DCMTK storescp, the committer directly and at dicomlb);
- `secure`: Orthanc ``ORTHANCAUTH`` with authentication on (user alice, password secret);
- `node_a`, `node_b`: two Orthanc nodes for jobs and queries, both able to query `orthanc`;
- `dest`: DCMTK storescp ``DEST`` (C-MOVE destination); `single`: storescp ``ONEATATIME``
  without ``--fork`` (one association at a time);
- `committer`: a pynetdicom storage commitment SCP ``COMMITTER`` that reports to ORTHANC;
  `requester`: a pynetdicom ``COMMITSCU`` listening for Orthanc's reports.

Three dicomlb instances (in-process, as the integration tests run them): `main` (DICOM and
HTTP in front of `orthanc`, the committer and `single`), `auth` (HTTP in front of `secure`),
`nodes` (HTTP in front of both nodes, round robin, Orthanc aware).

Between the two runs of a scenario every peer forgets what the first run stored, so both
runs start from the same state and may send the same data.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)

from tests.differential.clients import basic
from tests.differential.outcome import (
    Masker,
    Outcome,
    Row,
    difference,
    differing,
    write_table,
)
from tests.integration.conftest import Balancer, assert_descriptors_back, open_descriptors
from tests.peers import (
    LOOPBACK,
    ORTHANC_PLUGINS,
    Orthanc,
    StoreSCP,
    free_port,
)

DICOMWEB = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3: the well-known SOP instance
TABLE = Path(__file__).resolve().parents[2] / "docs" / "differential.md"
WRITE_TABLE = os.environ.get("DICOMLB_WRITE_DIFF_TABLE") == "1"
USER, PASSWORD = "alice", "secret"
# Callers Orthanc knows (DicomModalities); STRANGER is known to nobody.
# VIEWER's C-MOVEs go via_balancer (a route of its own), MOVESCU's passthrough.
CALLERS = ("FINDSCU", "MOVESCU", "GETSCU", "STORESCU", "VIEWER")
ORTHANC_MAX_PDU = 16384  # Orthanc's default MaximumPduLength
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a scenario's client connects: Orthanc itself, or dicomlb in front of it."""

    side: str  # "direct" or "through"
    dicom_port: int
    called_aet: str
    http: str  # Orthanc, authentication off
    http_auth: str  # Orthanc, authentication on
    http_nodes: str  # node A / the two nodes behind dicomlb
    committer: str  # ORTHANC's DicomModalities entry for the committer
    single_port: int  # the one-association storescp
    single_aet: str


@dataclass(slots=True)
class Committer:
    """A storage commitment SCP: Success to each N-ACTION, then an N-EVENT-REPORT to
    ORTHANC on a new association (PS3.4 J.3.3: as SCP of the service, by role selection) at
    `report_port`; instances whose UID ends in ``.404`` are reported failed (0x0112)."""

    port: int = field(default_factory=free_port)
    report_port: int = 0
    requests: list[str] = field(default_factory=list)
    server: Any = None

    @property
    def address(self) -> str:
        return f"COMMITTER@{LOOPBACK}:{self.port}"

    def start(self) -> None:
        ae = AE("COMMITTER")
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_ACTION, self.on_action)],
        )

    def on_action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        self.requests.append(str(event.assoc.requestor.ae_title))
        threading.Thread(target=self.report, args=(request,), daemon=True).start()
        return 0x0000, None

    def report(self, request: Dataset) -> None:
        time.sleep(0.2)  # after the N-ACTION response has gone
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        ok, failed = [], []
        for item in request.ReferencedSOPSequence:
            entry = Dataset()
            entry.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            entry.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if str(item.ReferencedSOPInstanceUID).endswith(".404"):
                entry.FailureReason = 0x0112  # no such object instance
                failed.append(entry)
            else:
                ok.append(entry)
        if ok:
            report.ReferencedSOPSequence = ok
        if failed:
            report.FailedSOPSequence = failed
        ae = AE("COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        assoc = ae.associate(LOOPBACK, self.report_port, ae_title="ORTHANC", ext_neg=[role])
        if assoc.is_established:
            assoc.send_n_event_report(
                report, 2 if failed else 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE
            )
            assoc.release()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass(slots=True)
class Requester:
    """A storage commitment SCU's listener, COMMITSCU: keeps every N-EVENT-REPORT."""

    port: int = field(default_factory=free_port)
    reports: list[tuple[int, Dataset]] = field(default_factory=list)
    server: Any = None

    def start(self) -> None:
        ae = AE("COMMITSCU")
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report)],
        )

    def on_report(self, event: Any) -> tuple[int, None]:
        self.reports.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def clear_secure(orthanc: Orthanc) -> None:
    """`Orthanc.clear` with the credentials an Orthanc with authentication on asks for."""
    auth = {"Authorization": basic(USER, PASSWORD)}

    def call(method: str, path: str) -> bytes:
        request = urllib.request.Request(f"{orthanc.url}{path}", method=method, headers=auth)
        with OPENER.open(request, timeout=30) as response:
            return bytes(response.read())

    for patient in json.loads(call("GET", "/patients")):
        call("DELETE", f"/patients/{patient}")


class Site:
    """Every peer and the three dicomlb instances; `direct` and `through` are the targets."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lb_port = free_port()
        self.dest = StoreSCP("DEST", tmp / "dest")
        self.single = StoreSCP("ONEATATIME", tmp / "single")
        self.committer = Committer()
        self.requester = Requester()
        modalities: dict[str, Any] = {aet: f"{aet}@{LOOPBACK}:{free_port()}" for aet in CALLERS}
        modalities |= {
            "DEST": self.dest.address,
            "DICOMLB": f"DICOMLB@{LOOPBACK}:{self.lb_port}",
            "COMMITSCU": f"COMMITSCU@{LOOPBACK}:{self.requester.port}",
            "committer": self.committer.address,
            "committer-lb": f"COMMITTER@{LOOPBACK}:{self.lb_port}",
            "NODEA": f"NODEA@{LOOPBACK}:{free_port()}",
            "NODEB": f"NODEB@{LOOPBACK}:{free_port()}",
        }
        plugins = [DICOMWEB] if DICOMWEB.exists() else []
        self.orthanc = Orthanc(
            "ORTHANC",
            modalities=modalities,
            plugins=plugins,
            config={"WebDavEnabled": True, "WebDavUploadAllowed": True},
        )
        self.secure = Orthanc(
            "ORTHANCAUTH",
            config={"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}},
        )
        pacs = {"pacs": self.orthanc.address}
        self.node_a = Orthanc("NODEA", name="node-a", modalities=pacs)
        self.node_b = Orthanc("NODEB", name="node-b", modalities=pacs)
        self.orthancs = [self.orthanc, self.secure, self.node_a, self.node_b]
        self.balancers: list[Balancer] = []

    def start(self) -> None:
        for peer in (self.dest, self.single, *self.orthancs):
            peer.start()
        self.committer.start()
        self.requester.start()
        health = {"interval": "1s", "timeout": "1s"}
        main = {
            "listeners": {
                # as Orthanc's MaximumPduLength, so that clients are offered the same
                "dicom": {
                    "bind": f"{LOOPBACK}:{self.lb_port}",
                    "ae_title": "DICOMLB",
                    "max_pdu": ORTHANC_MAX_PDU,
                },
                "http": {"bind": f"{LOOPBACK}:{free_port()}"},
            },
            "pools": {
                "pacs": {
                    "orthanc": True,
                    "storage_commitment": "forward",
                    "health": health,
                    "backends": [
                        {"name": "orthanc", "dicom": self.orthanc.address, "http": self.orthanc.url}
                    ],
                },
                "committer": {
                    "storage_commitment": "forward",
                    "health": health,
                    "backends": [{"name": "committer", "dicom": self.committer.address}],
                },
                "single": {
                    "health": health,
                    # told its limit, dicomlb never waits to learn it (docs/operations/sizing.md)
                    "backends": [
                        {"name": "single", "dicom": self.single.address, "max_associations": 1}
                    ],
                },
            },
            "routes": [
                {"name": "committer", "match": {"called_aet": "COMMITTER"}, "pool": "committer"},
                {"name": "single", "match": {"called_aet": "ONEATATIME"}, "pool": "single"},
                {
                    "name": "viewer-moves",
                    "match": {"command": "C-MOVE", "calling_aet": "VIEWER"},
                    "pool": "pacs",
                    "move_destination": "via_balancer",
                },
                {"name": "all", "pool": "pacs"},
            ],
            "http_routes": [{"name": "orthanc", "pool": "pacs"}],
            # requesters whose reports dicomlb relays (docs/guides/query-retrieve.md)
            "dicom_nodes": {
                "COMMITSCU": f"COMMITSCU@{LOOPBACK}:{self.requester.port}",
                "ORTHANC": self.orthanc.address,
                "DEST": self.dest.address,  # C-MOVE destinations dicomlb relays to
            },
        }
        self.main = self._balancer(main)
        self.auth = self._balancer(self._http_only("secure", [self.secure]))
        self.nodes = self._balancer(self._http_only("nodes", [self.node_a, self.node_b]))
        self.direct = Target(
            side="direct",
            dicom_port=self.orthanc.dicom_port,
            called_aet=self.orthanc.aet,
            http=self.orthanc.url,
            http_auth=self.secure.url,
            http_nodes=self.node_a.url,
            committer="committer",
            single_port=self.single.port,
            single_aet=self.single.ae_title,
        )
        self.through = Target(
            side="through",
            dicom_port=self.lb_port,
            called_aet="DICOMLB",
            http=self._url(self.main),
            http_auth=self._url(self.auth),
            http_nodes=self._url(self.nodes),
            committer="committer-lb",
            single_port=self.lb_port,
            single_aet=self.single.ae_title,
        )

    def _balancer(self, config: dict[str, Any]) -> Balancer:
        lb = Balancer(config)
        self.balancers.append(lb)
        return lb.start()

    @staticmethod
    def _http_only(name: str, nodes: list[Orthanc]) -> dict[str, Any]:
        """HTTP in front of `nodes` (the integration tests' Balancer always has a DICOM
        listener too: it routes to the same nodes, unused here)."""
        backends = [{"name": n.aet.lower(), "http": n.url, "dicom": n.address} for n in nodes]
        return {
            "listeners": {"http": {"bind": f"{LOOPBACK}:{free_port()}"}},
            "pools": {name: {"orthanc": True, "health": {"interval": "1s"}, "backends": backends}},
            "routes": [{"name": name, "pool": name}],
            "http_routes": [{"name": name, "pool": name}],
        }

    @staticmethod
    def _url(lb: Balancer) -> str:
        assert lb.snapshot.http is not None
        return f"http://{LOOPBACK}:{lb.snapshot.http.port}"

    def reset(self, target: Target) -> None:
        """Forget everything the last run left, and point the peers that call back (Orthanc's
        report to COMMITSCU, the committer's to ORTHANC) at this run's side."""
        for orthanc in (self.orthanc, self.node_a, self.node_b):
            orthanc.clear()
        clear_secure(self.secure)
        self.dest.clear()
        self.single.clear()
        self.committer.requests.clear()
        self.requester.reports.clear()
        direct = target.side == "direct"
        self.committer.report_port = self.orthanc.dicom_port if direct else self.lb_port
        port = self.requester.port if direct else self.lb_port
        self.orthanc.request(
            "PUT",
            "/modalities/COMMITSCU",
            f'{{"AET": "COMMITSCU", "Host": "{LOOPBACK}", "Port": {port}}}',
        )

    def assert_nothing_held(self) -> None:
        for lb in self.balancers:
            lb.assert_nothing_held()

    def close(self) -> None:
        for lb in self.balancers:
            lb.stop()
        self.committer.stop()
        self.requester.stop()
        for peer in (*self.orthancs, self.dest, self.single):
            peer.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    descriptors = open_descriptors()
    s = Site(tmp_path_factory.mktemp("differential"))
    try:
        s.start()
        yield s
    finally:
        s.close()
    assert_descriptors_back(descriptors, settle=5.0)


@pytest.fixture(scope="session")
def table() -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    if WRITE_TABLE and rows:
        known = {row.scenario: row.known for row in rows if row.known}
        write_table(TABLE, rows, known)


Scenario = Callable[[Target, Masker], Outcome]


@pytest.fixture
def differ(site: Site, table: list[Row], request: pytest.FixtureRequest) -> Callable[..., None]:
    """`differ(name, scenario)` runs `scenario(target, masker)` direct, then through dicomlb,
    records the row, checks dicomlb left nothing held, and asserts both outcomes equal. A
    test marked xfail is a difference that stays: its reason goes into the table."""
    mark = request.node.get_closest_marker("xfail")
    known = str(mark.kwargs.get("reason", "")) if mark is not None else ""

    def run(name: str, scenario: Scenario) -> None:
        outcomes = []
        maskers = []
        for target in (site.direct, site.through):
            site.reset(target)
            urls = (target.http, target.http_auth, target.http_nodes)
            masker = Masker(url.removeprefix("http://") for url in urls)
            outcomes.append(scenario(target, masker))
            maskers.append(masker)
        direct, through = outcomes
        equal = direct == through
        table.append(Row(name, direct.summary, through.summary, equal, differing(*maskers), known))
        site.assert_nothing_held()
        if through != direct:
            pytest.fail("direct vs through dicomlb:\n" + difference(direct, through))

    return run
