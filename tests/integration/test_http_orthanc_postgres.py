"""Issue 4's seed scenario: two Orthanc nodes sharing one PostgreSQL database
(Debian `orthanc-postgresql`, index and storage in the database) behind dicomlb's HTTP
listener as a REST head. What a user checks: an upload through dicomlb is visible from
both nodes and downloads byte-identical from either, a job is followed to the node that
owns it (jobs live in one node's memory, not in the database), and with one node killed
requests keep working through the other."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dicomdata import make_small
from tests.httppeers import HttpBalancer
from tests.integration.test_http_orthanc import archive_job_followed, call, config, part10
from tests.peers import (
    ORTHANC_PLUGINS,
    Orthanc,
    Postgres,
    have_orthanc,
    have_postgres,
    orthanc_nodes,
)

INDEX = ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"
STORAGE = ORTHANC_PLUGINS / "libOrthancPostgreSQLStorage.so"

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not have_orthanc(), reason="needs the Debian orthanc package"),
    pytest.mark.skipif(
        not (INDEX.exists() and STORAGE.exists()),
        reason="needs the Debian orthanc-postgresql package (PostgreSQL index/storage plugins)",
    ),
    pytest.mark.skipif(
        not have_postgres(),
        reason="needs the Debian postgresql package (server binaries in "
        "/usr/lib/postgresql/15/bin; as root, the postgres OS account)",
    ),
]

NAMES = ("node-a", "node-b")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with Postgres(database="orthanc", user="orthanc") as pg:
        yield pg


@pytest.fixture(scope="module")
def nodes(postgres: Postgres) -> Iterator[list[Orthanc]]:
    shared = {
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": True,
            "Host": postgres.host,
            "Port": postgres.port,
            "Database": postgres.database,
            "Username": postgres.user,
            "Password": "",
            "Lock": False,  # several Orthancs on one database
            "MaximumConnectionRetries": 2,
            "ConnectionRetryInterval": 1,
        }
    }
    with orthanc_nodes(NAMES, plugins=[INDEX, STORAGE], config=shared) as started:
        yield started


@pytest.fixture(autouse=True)
def empty(nodes: list[Orthanc]) -> None:
    for node in nodes:
        if not node.running:
            node.start()
    nodes[0].clear()  # one database: clearing one node clears both


def upload(lb: HttpBalancer, data: bytes) -> dict[str, Any]:
    status, answer = call(f"{lb.url}/instances", "POST", data)
    assert status == 200, answer
    result: dict[str, Any] = json.loads(answer)
    return result


def served_by(lb: HttpBalancer) -> list[str]:
    """Which node answered each of a few GET /system through dicomlb."""
    names = []
    for _ in range(4):
        status, answer = call(f"{lb.url}/system")
        assert status == 200, answer
        names.append(json.loads(answer)["Name"])
    return names


def test_upload_visible_from_both_nodes_download_identical_from_any(
    nodes: list[Orthanc],
) -> None:
    files = [part10(ds) for ds in make_small(4)]
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        assert set(served_by(lb)) == set(NAMES)  # round robin really spreads requests
        ids = [upload(lb, data)["ID"] for data in files]  # so uploads land on both nodes
        for node in nodes:  # the shared index: each node lists everything
            assert sorted(node.instances()) == sorted(ids)
            for instance_id, data in zip(ids, files, strict=True):
                assert node.instance_file(instance_id) == data  # shared storage too
        for instance_id, data in zip(ids, files, strict=True):
            for _ in range(2):  # round robin: one download from each node
                status, back = call(f"{lb.url}/instances/{instance_id}/file")
                assert status == 200 and back == data


def test_job_followed_to_the_node_that_owns_it(nodes: list[Orthanc]) -> None:
    data = part10(make_small(1)[0])
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        patient = upload(lb, data)["ParentPatient"]
        job = archive_job_followed(lb.url, nodes, patient)
        for _ in range(4):
            status, archive = call(f"{lb.url}/jobs/{job}/archive")
            assert status == 200, archive
            [member] = [
                name
                for name in zipfile.ZipFile(io.BytesIO(archive)).namelist()
                if not name.endswith("/")
            ]
            assert zipfile.ZipFile(io.BytesIO(archive)).read(member) == data


def test_node_killed_requests_keep_working_through_the_other(nodes: list[Orthanc]) -> None:
    first, second = (part10(ds) for ds in make_small(2))
    with HttpBalancer(config(nodes, strategy="round_robin")) as lb:
        before = upload(lb, first)["ID"]
        nodes[0].stop(graceful=False)
        deadline = time.monotonic() + 5
        while lb.backend("node-a").available:  # health checks every 200 ms, fall 1
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert set(served_by(lb)) == {"node-b"}
        after = upload(lb, second)["ID"]
        for instance_id, data in ((before, first), (after, second)):
            for _ in range(3):
                status, back = call(f"{lb.url}/instances/{instance_id}/file")
                assert status == 200 and back == data
        status, answer = call(f"{lb.url}/instances")
        assert status == 200 and sorted(json.loads(answer)) == sorted([before, after])
        # the node comes back and sees what was stored while it was down
        nodes[0].start()
        assert sorted(nodes[0].instances()) == sorted([before, after])
        assert nodes[0].instance_file(after) == second
