"""The HTTP load balancer in front of two real Orthanc nodes (Debian `orthanc`,
`orthanc-dicomweb`): REST upload / download byte-identical, jobs followed to their node,
`sender-transfer-id` pinned, DICOMweb STOW / QIDO / WADO with dicomweb-client, HTTP health
checks on `/system`, a node killed while requests flow."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomlb.http.middlewares import hash_password
from tests.dicomdata import make_small
from tests.httppeers import HttpBalancer, raw_exchange
from tests.peers import ORTHANC_PLUGINS, Orthanc, have_orthanc, orthanc_nodes

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not have_orthanc(), reason="needs the Debian orthanc package"),
]

DICOMWEB = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[Orthanc]]:
    plugins = [DICOMWEB] if DICOMWEB.exists() else []
    with orthanc_nodes(("node-a", "node-b"), plugins=plugins) as started:
        yield started


@pytest.fixture(autouse=True)
def empty(nodes: list[Orthanc]) -> None:
    for node in nodes:
        if not node.running:
            node.start()
        node.clear()


def config(nodes: list[Orthanc], **pool: Any) -> dict[str, Any]:
    return {
        "pools": {
            "orthanc": {
                "orthanc": True,
                "health": {
                    "interval": "200ms",
                    "timeout": "1s",
                    "fall": 1,
                    "rise": 1,
                    "http": {"path": "/system", "status": 200},
                },
                "backends": [
                    {"name": n.config["Name"], "http": n.url, "dicom": n.address} for n in nodes
                ],
                **pool,
            }
        },
        "http_routes": [{"name": "orthanc", "pool": "orthanc"}],
    }


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def archive_job_followed(base: str, nodes: list[Orthanc], patient: str) -> str:
    """Start an asynchronous archive of `patient` through dicomlb at `base`, check that one
    node owns the job, poll it through dicomlb until it succeeds; the job ID."""
    status, answer = call(
        f"{base}/tools/create-archive",
        "POST",
        json.dumps({"Resources": [patient], "Asynchronous": True}).encode(),
    )
    assert status == 200, answer
    job = json.loads(answer)
    assert job["Path"] == f"/jobs/{job['ID']}"
    # only the node that created the job knows it, whatever they share
    owner = [n for n in nodes if job["ID"] in n.get_json("/jobs")]
    assert len(owner) == 1
    deadline = time.monotonic() + 20
    while True:  # round robin would send every other request to the wrong node
        status, answer = call(f"{base}/jobs/{job['ID']}")
        assert status == 200, answer
        if json.loads(answer)["State"] == "Success":
            return str(job["ID"])
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_rest_upload_download_byte_identical(nodes: list[Orthanc]) -> None:
    files = [part10(ds) for ds in make_small(3)]
    with HttpBalancer(config(nodes, strategy="affinity", http={"key": "client_ip"})) as lb:
        ids = []
        for data in files:
            status, answer = call(f"{lb.url}/instances", "POST", data)
            assert status == 200
            ids.append(json.loads(answer)["ID"])
        for instance_id, data in zip(ids, files, strict=True):
            status, back = call(f"{lb.url}/instances/{instance_id}/file")
            assert status == 200 and back == data
    holders = [n for n in nodes if n.instances()]
    assert len(holders) == 1 and len(holders[0].instances()) == 3


def test_job_followed_to_the_node_that_owns_it(nodes: list[Orthanc]) -> None:
    data = part10(make_small(1)[0])
    patient = None
    for node in nodes:  # the same data on both nodes; only one will own the job
        patient = json.loads(node.request("POST", "/instances", data))["ParentPatient"]
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        job = archive_job_followed(lb.url, nodes, patient)
        for _ in range(4):
            status, archive = call(f"{lb.url}/jobs/{job}/archive")
            assert status == 200
            assert zipfile.ZipFile(io.BytesIO(archive)).namelist()


def test_a_job_and_a_query_started_elsewhere_are_found_by_asking(
    nodes: list[Orthanc], caplog: pytest.LogCaptureFixture
) -> None:
    """What another instance (or a client talking to a node directly) started, this one
    has not seen: it asks the nodes, remembers the one answering 200, and follows it."""
    data = part10(make_small(1)[0])
    patient = json.loads(nodes[1].request("POST", "/instances", data))["ParentPatient"]
    job = nodes[1].post_json(
        "/tools/create-archive", {"Resources": [patient], "Asynchronous": True}
    )
    node = nodes[1]
    itself = {"AET": node.aet, "Host": node.host, "Port": node.dicom_port}
    node.request("PUT", "/modalities/itself", json.dumps(itself))  # a C-FIND to itself
    query = node.post_json(
        "/modalities/itself/query", {"Level": "Study", "Query": {"PatientID": "*"}}
    )
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        for _ in range(4):  # round robin: without the lookup every other one is a 404
            for path in (f"/jobs/{job['ID']}", f"/queries/{query['ID']}/answers"):
                status, answer = call(f"{lb.url}{path}")
                assert status == 200, (path, answer)
        status, _ = call(f"{lb.url}/jobs/no-such-job")
        assert status == 404  # nobody owns it: one node says so
    located = [r.getMessage() for r in caplog.records if r.getMessage().startswith("http.located")]
    assert len(located) == 2, located  # asked once each, then remembered
    assert all(f"backend={nodes[1].config['Name']}" in line for line in located)
    assert any(r.getMessage().startswith("http.not_located") for r in caplog.records)


def test_sender_transfer_id_sequence_stays_on_one_node(nodes: list[Orthanc]) -> None:
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        placed = {}
        for transfer in ("t-1", "t-2", "t-3", "t-4", "t-5", "t-6"):
            names = {
                json.loads(call(f"{lb.url}/system", headers={"sender-transfer-id": transfer})[1])[
                    "Name"
                ]
                for _ in range(5)
            }
            assert len(names) == 1
            placed[transfer] = names.pop()
        assert len(set(placed.values())) == 2  # idle nodes share new transfers


def test_dicomweb_stow_qido_wado(nodes: list[Orthanc]) -> None:
    if not DICOMWEB.exists():
        pytest.skip("needs orthanc-dicomweb")
    from dicomweb_client.api import DICOMwebClient

    series = make_small(2)
    with HttpBalancer(config(nodes, strategy="affinity", http={"key": "client_ip"})) as lb:
        client = DICOMwebClient(url=f"{lb.url}/dicom-web")
        client.store_instances(datasets=series)
        study = series[0].StudyInstanceUID
        found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert len(found) == 1
        instances = client.search_for_instances(study_instance_uid=study)
        assert len(instances) == 2
        first = series[0]
        meta = client.retrieve_instance_metadata(
            study, first.SeriesInstanceUID, first.SOPInstanceUID
        )
        assert meta["00080018"]["Value"] == [first.SOPInstanceUID]
        [frame] = client.retrieve_instance_frames(
            study,
            first.SeriesInstanceUID,
            first.SOPInstanceUID,
            frame_numbers=[1],
            media_types=("application/octet-stream",),
        )
        assert frame == first.PixelData


def test_node_killed_traffic_moves_nothing_hangs(nodes: list[Orthanc]) -> None:
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        errors: list[int] = []
        names: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                status, answer = call(f"{lb.url}/system")
                if status == 200:
                    names.append(json.loads(answer)["Name"])
                else:
                    errors.append(status)

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        nodes[0].stop(graceful=False)
        killed_at = len(names)
        time.sleep(1.5)
        stop.set()
        for w in workers:
            w.join(10)
            assert not w.is_alive()
        after = names[killed_at + 20 :]
        assert after and set(after) == {"node-b"}
        assert len(errors) <= 4  # at most the requests in flight on the killed node
        assert not lb.backend("node-a").available


def test_large_upload_streamed_to_orthanc(nodes: list[Orthanc], tmp_path: Path) -> None:
    ds = make_small(1)[0]
    ds.Rows = ds.Columns = 4096  # 32 MiB of pixels
    ds.PixelData = b"\x01\x02" * (4096 * 4096)
    data = part10(ds)
    with HttpBalancer(config(nodes, strategy="affinity", http={"key": "client_ip"})) as lb:
        status, answer = call(f"{lb.url}/instances", "POST", data)
        assert status == 200, answer
        instance = json.loads(answer)["ID"]
        status, back = call(f"{lb.url}/instances/{instance}/file")
        assert status == 200 and back == data


def readme_example(nodes: list[Orthanc]) -> dict[str, Any]:
    """The HTTP example of docs/guides/http.md (its Orthanc part): DICOMweb open, the REST API
    behind basic_auth."""
    users = {"alice": hash_password("s3cret", iterations=1000)}
    return {
        "pools": {
            "orthanc": {
                "strategy": "least_connections",
                "orthanc": True,
                "backends": [{"name": n.config["Name"], "http": n.url} for n in nodes],
            }
        },
        "middlewares": {"fwd": {"forwarded": {}}, "staff": {"basic_auth": {"users": users}}},
        "http_routes": [
            {
                "name": "dicomweb",
                "match": {"path_prefix": "/dicom-web/", "method": ["GET", "HEAD", "POST"]},
                "pool": "orthanc",
                "middlewares": ["fwd"],
            },
            {"name": "orthanc-rest", "pool": "orthanc", "middlewares": ["staff", "fwd"]},
        ],
    }


def raw_call(port: int, method: str, target: str, auth: bool = False) -> tuple[int, bytes]:
    """A request whose target is sent exactly as written (urllib and http.client keep it,
    but say nothing of it): status and body."""
    credentials = b"Authorization: Basic " + base64.b64encode(b"alice:s3cret") + b"\r\n"
    wire = (
        f"{method} {target} HTTP/1.1\r\nHost: pacs\r\nContent-Length: 0\r\n".encode()
        + (credentials if auth else b"")
        + b"Connection: close\r\n\r\n"
    )
    answer = raw_exchange(port, wire, timeout=30)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/dicom-web/../patients",
        "/dicom-web/%2e%2e/patients",
        "/dicom-web/.%2E/patients",
        "/dicom-web/..%2Fpatients",
        "/dicom-web//../patients",
    ],
)
def test_dot_segments_do_not_bypass_basic_auth(nodes: list[Orthanc], target: str) -> None:
    patient = json.loads(nodes[0].request("POST", "/instances", part10(make_small(1)[0])))[
        "ParentPatient"
    ]
    with HttpBalancer(readme_example(nodes)) as lb:
        status, body = raw_call(lb.port, "GET", target)
        assert status in (400, 401) and patient.encode() not in body
        status, body = raw_call(lb.port, "POST", target.replace("patients", "tools/reset"))
        assert status in (400, 401)
        if status == 401:  # the path is fine, the password was missing
            status, body = raw_call(lb.port, "GET", target, auth=True)
            assert status == 200 and patient in json.loads(body)
    assert nodes[0].get_json("/patients") == [patient]  # not reset


def test_orthanc_clients_double_slash_is_merged(nodes: list[Orthanc]) -> None:
    data = part10(make_small(1)[0])
    with HttpBalancer(readme_example(nodes[:1])) as lb:
        status, body = raw_call(lb.port, "GET", "//system", auth=True)
        assert status == 200 and json.loads(body)["Name"] == nodes[0].config["Name"]
        instance = json.loads(nodes[0].request("POST", "/instances", data))["ID"]
        status, body = raw_call(lb.port, "GET", f"//instances//{instance}/file", auth=True)
        assert status == 200 and body == data
