"""C-STORE through dicomlb: DCMTK storescu -> dicomlb -> DCMTK storescp backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomlb.pools import rendezvous_order
from tests.dicomdata import make_series, make_studies, new_uid, write_series
from tests.integration.conftest import uids_across
from tests.peers import StoreSCP, dataset_bytes, echoscu, have_dcmtk, sop_instance_uid, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def two_pool_config(a: StoreSCP, b: StoreSCP, c: StoreSCP, **health: Any) -> dict[str, Any]:
    return {
        "pools": {
            "ct": {
                "strategy": "affinity",
                "key": "StudyInstanceUID",
                "health": {"interval": "0.3s", "timeout": "1s", "fall": 2, "rise": 2, **health},
                "backends": [
                    {"name": "pacs-a", "dicom": a.address, "max_associations": 4},
                    {"name": "pacs-b", "dicom": b.address, "max_associations": 4},
                ],
            },
            "general": {
                "strategy": "round_robin",
                "backends": [{"name": "store-1", "dicom": c.address}],
            },
        },
        "routes": [
            {
                "name": "ct-and-pet",
                "match": {"Modality": ["CT", "PT"], "calling_aet": {"regex": "^CT_"}},
                "pool": "ct",
            },
            {"name": "default", "pool": "general"},
        ],
    }


@pytest.fixture
def backends(tmp_path: Path) -> Any:
    scps = [
        StoreSCP(name, tmp_path / name, fork=True).start() for name in ("PACSA", "PACSB", "STORE1")
    ]
    yield scps
    for scp in scps:
        scp.close()


def test_instances_arrive_byte_identical_where_routes_and_affinity_say(
    tmp_path: Path, balancer: Any, backends: list[StoreSCP]
) -> None:
    a, b, c = backends
    lb = balancer(two_pool_config(a, b, c))
    pool = [lb.backend("pacs-a"), lb.backend("pacs-b")]
    uids = [*uids_across(pool, 6), new_uid(), new_uid()]  # the CT studies on both
    studies = make_studies([("CT", 4)] * 6 + [("PT", 3), ("MR", 3)], study_uids=uids)
    sent: dict[str, Path] = {}
    for uid, instances in studies.items():
        for path in write_series(instances, tmp_path / "out" / uid):
            sent[sop_instance_uid(path)] = path
    result = storescu("127.0.0.1", lb.port, tmp_path / "out", aet="CT_SCANNER_1", aec="DICOMLB")
    assert result.returncode == 0, result.stderr
    scp_of = {"pacs-a": a, "pacs-b": b}
    for uid, instances in studies.items():
        modality = instances[0].Modality
        expected = scp_of[rendezvous_order(uid, pool)[0].name] if modality in ("CT", "PT") else c
        received = expected.by_sop_instance_uid()
        for ds in instances:
            path = received.get(ds.SOPInstanceUID)
            assert path is not None, f"{modality} study {uid} not on {expected.ae_title}"
            assert dataset_bytes(path) == dataset_bytes(sent[ds.SOPInstanceUID])
    total = sum(len(s.files()) for s in backends)
    assert total == len(sent)
    assert a.files() and b.files()


def test_calling_aet_decides_the_route(
    tmp_path: Path, balancer: Any, backends: list[StoreSCP]
) -> None:
    a, b, c = backends
    lb = balancer(two_pool_config(a, b, c))
    files = write_series(make_series(3, rows=64, cols=64, modality="CT"), tmp_path / "out")
    assert storescu("127.0.0.1", lb.port, files, aet="WORKSTATION", aec="DICOMLB").returncode == 0
    assert len(c.files()) == 3 and not a.files() and not b.files()


def test_echoscu_is_answered(balancer: Any, backends: list[StoreSCP]) -> None:
    lb = balancer(two_pool_config(*backends))
    result = echoscu("127.0.0.1", lb.port, aec="DICOMLB")
    assert result.returncode == 0, result.stderr
