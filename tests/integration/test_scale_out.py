"""Several dicomlb instances behind HAProxy (Debian `haproxy`, TCP mode, round robin per
connection), in front of two real Orthanc nodes and two DCMTK storescp archives. Consecutive
requests land on different instances, which share nothing: studies are never split across
backends (rendezvous hashing), a `sender-transfer-id` stays on one node (hashed too), Orthanc
jobs and queries are followed to their owner (asked for), and a C-MOVE at an instance that
never saw the study finds it (C-FIND probe)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dicomdata import make_studies, write_series
from tests.integration.test_http_orthanc import part10
from tests.peers import (
    LOOPBACK,
    DicomlbProcess,
    Orthanc,
    StoreSCP,
    free_port,
    have_dcmtk,
    have_orthanc,
    run_dcmtk,
    sop_instance_uid,
    stop_process,
    storescu,
    wait_listening,
)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
INSTANCES = 2

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(
        not (have_dcmtk() and have_orthanc() and Path(HAPROXY).exists()),
        reason="needs dcmtk, orthanc and haproxy",
    ),
]

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Site:
    """Two Orthanc nodes, two storescp archives, a move destination, INSTANCES dicomlb
    processes with one configuration (`instances: 2`), HAProxy in front of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dest = StoreSCP("DEST", tmp / "dest")
        self.archives = [StoreSCP(f"ARCH{n}", tmp / f"arch{n}") for n in (1, 2)]
        modalities = {"DEST": self.dest.address, "MOVESCU": f"MOVESCU@{LOOPBACK}:{free_port()}"}
        self.nodes = [Orthanc(f"NODE{n}", name=f"node-{n}", modalities=modalities) for n in (1, 2)]
        self.dicom_port, self.http_port = free_port(), free_port()
        self.lbs: list[DicomlbProcess] = []
        self.haproxy: subprocess.Popen[bytes] | None = None

    def config(self, dicom: int, http: int) -> str:
        health = {"interval": "200ms", "timeout": "1s", "fall": 1, "rise": 1}
        return yaml.safe_dump(
            {
                "instances": INSTANCES,
                "listeners": {
                    "dicom": {"bind": f"127.0.0.1:{dicom}", "ae_title": "DICOMLB"},
                    "http": {"bind": f"127.0.0.1:{http}"},
                },
                "pools": {
                    "orthanc": {
                        "strategy": "affinity",
                        "query": "fanout",  # no shared index: a retrieve asks who holds it
                        "orthanc": True,
                        "http": {"key": "header:X-Viewer"},  # viewers spread, each on one node
                        "health": {**health, "http": {"path": "/system"}},
                        "backends": [
                            {"name": n.config["Name"], "dicom": n.address, "http": n.url}
                            for n in self.nodes
                        ],
                    },
                    "archive": {
                        "strategy": "affinity",
                        "health": health,
                        "backends": [
                            {"name": a.ae_title.lower(), "dicom": a.address} for a in self.archives
                        ],
                    },
                },
                "routes": [
                    {"name": "mr", "match": {"Modality": "MR"}, "pool": "archive"},
                    {"name": "rest", "pool": "orthanc"},
                ],
                "http_routes": [{"name": "orthanc", "pool": "orthanc"}],
            }
        )

    def start(self) -> None:
        for peer in (self.dest, *self.archives, *self.nodes):
            peer.start()
        for node in self.nodes:  # each node may C-FIND itself (an Orthanc query resource)
            itself = {"AET": node.aet, "Host": node.host, "Port": node.dicom_port}
            node.request("PUT", "/modalities/itself", json.dumps(itself))
        servers: dict[str, list[str]] = {"dicom": [], "http": []}
        for n in range(INSTANCES):
            dicom, http = free_port(), free_port()
            lb = DicomlbProcess(self.config(dicom, http), dicom, self.tmp / f"lb{n}")
            self.lbs.append(lb)
            lb.start()
            wait_listening(http, timeout=10)
            servers["dicom"].append(f"    server lb{n} 127.0.0.1:{dicom}")
            servers["http"].append(f"    server lb{n} 127.0.0.1:{http}")
        config = self.tmp / "haproxy.cfg"
        config.write_text(
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n"
            "    timeout server 60s\n"
            + "".join(
                f"frontend {side}\n    bind 127.0.0.1:{port}\n    default_backend lb_{side}\n"
                f"backend lb_{side}\n    balance roundrobin\n" + "\n".join(servers[side]) + "\n"
                for side, port in (("dicom", self.dicom_port), ("http", self.http_port))
            )
        )
        self.haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for port in (self.dicom_port, self.http_port):
            wait_listening(port, timeout=10, process=self.haproxy, what="haproxy")
        deadline = time.monotonic() + 15  # every instance sees both nodes up
        while any(self.get("/system")[0] != 200 for _ in range(2 * INSTANCES)):
            assert time.monotonic() < deadline
            time.sleep(0.2)

    def close(self) -> None:
        stop_process(self.haproxy)
        for lb in self.lbs:
            lb.close()
        for peer in (*self.nodes, *self.archives, self.dest):
            peer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(
        self, path: str, method: str = "GET", body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        """One request on a new connection (so the next goes to the next instance)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Connection": "close", **headers}
        )
        try:
            with OPENER.open(request, timeout=30) as answer:
                raw, status = answer.read(), answer.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def logs(self) -> list[str]:
        return [lb.log() for lb in self.lbs]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("scale"))
    try:
        s.start()
        yield s
    finally:
        s.close()


def test_studies_are_never_split_across_backends(site: Site) -> None:
    studies = make_studies([("CT", 6), ("CT", 6), ("MR", 6)])
    for uid, instances in studies.items():
        paths = write_series(instances, site.tmp / "studies" / uid)
        for part in (paths[0:2], paths[2:4], paths[4:6]):  # three associations, alternating
            assert storescu(LOOPBACK, site.dicom_port, part, aec="DICOMLB").returncode == 0
    ct_a, ct_b, mr = studies
    for uid in (ct_a, ct_b):
        found = {
            n.config["Name"]: json.loads(n.request("POST", "/tools/lookup", uid))
            for n in site.nodes
        }
        holders = {name: hits for name, hits in found.items() if hits}
        assert len(holders) == 1, (uid, found)
        ((hit,),) = holders.values()
        node = next(n for n in site.nodes if n.config["Name"] in holders)
        assert len(node.get_json(f"{hit['Path']}/instances")) == 6
    wanted = {ds.SOPInstanceUID for ds in studies[mr]}
    holders = [a for a in site.archives if {sop_instance_uid(p) for p in a.files()} & wanted]
    assert len(holders) == 1 and {sop_instance_uid(p) for p in holders[0].files()} == wanted
    for log in site.logs():  # each instance took part of every study
        assert log.count("association.accepted") >= 4


def test_a_transfer_stays_on_one_node_whichever_instance_it_reaches(site: Site) -> None:
    placed: dict[str, str] = {}
    for n in range(8):
        names = {
            site.get("/system", **{"sender-transfer-id": f"t-{n}"})[1]["Name"] for _ in range(4)
        }
        assert len(names) == 1, (n, names)  # four requests, both instances
        placed[f"t-{n}"] = names.pop()
    assert len(set(placed.values())) == 2  # transfers spread over the nodes


def test_jobs_and_queries_are_followed_to_their_owner(site: Site) -> None:
    data = part10(make_studies([("CT", 1)]).popitem()[1][0])
    for node in site.nodes:  # the same patient on both: only one will own the job
        patient = json.loads(node.request("POST", "/instances", data))["ParentPatient"]
    status, job = site.get(
        "/tools/create-archive",
        "POST",
        {"Resources": [patient], "Asynchronous": True},
        **{"X-Viewer": "creator"},
    )
    assert status == 200, job
    status, query = site.get(
        "/modalities/itself/query",
        "POST",
        {"Level": "Study", "Query": {"PatientID": "*"}},
        **{"X-Viewer": "creator"},
    )
    assert status == 200, query
    # Other viewers, alternating instances: one instance learned the owners from the
    # answers above, the other asks the nodes; a viewer's own node may not be the owner.
    for path in (f"/jobs/{job['ID']}", f"/queries/{query['ID']}/answers"):
        for n in range(6):  # consecutive requests: every other one at each instance
            assert site.get(path, **{"X-Viewer": f"viewer-{n}"})[0] == 200, (path, n)
    logs = "".join(site.logs())
    assert f"resource=/jobs/{job['ID']} backend=" in logs  # http.located
    assert f"resource=/queries/{query['ID']} backend=" in logs


def test_a_move_at_an_instance_that_never_saw_the_study_finds_it(site: Site) -> None:
    ((uid, instances),) = make_studies([("CT", 3)]).items()
    paths = write_series(instances, site.tmp / "moved")
    assert storescu(LOOPBACK, site.dicom_port, paths, aec="DICOMLB").returncode == 0  # one instance
    for _ in range(INSTANCES):  # consecutive moves: at least one reaches the other instance
        site.dest.clear()
        moved = run_dcmtk(
            "movescu",
            [
                *("-S", "-aet", "MOVESCU", "-aec", "DICOMLB", "-aem", "DEST"),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"),
                LOOPBACK,
                str(site.dicom_port),
            ],
        )
        assert moved.returncode == 0, moved.stderr + moved.stdout
        expected = {ds.SOPInstanceUID for ds in instances}
        deadline = time.monotonic() + 10
        while {sop_instance_uid(p) for p in site.dest.files()} != expected:
            assert time.monotonic() < deadline, site.dest.files()
            time.sleep(0.05)
    assert any("retrieve.probed" in log and "found=node-" in log for log in site.logs())
