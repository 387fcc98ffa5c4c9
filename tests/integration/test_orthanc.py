"""An Orthanc backend (Debian package) behind dicomlb: instances arrive byte-identical and
Orthanc records the sender's calling AE title, not dicomlb's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_studies, write_series
from tests.integration.conftest import uids_across
from tests.peers import (
    Orthanc,
    StoreSCP,
    dataset_bytes,
    have_dcmtk,
    have_orthanc,
    sop_instance_uid,
    storescu,
)

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_dcmtk() and have_orthanc()), reason="needs dcmtk and orthanc"),
]


def test_orthanc_and_storescp_behind_one_pool(tmp_path: Path, balancer: Any) -> None:
    with Orthanc("ORTHANC") as orthanc, StoreSCP("PACSB", tmp_path / "b", fork=True) as scp:
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "strategy": "affinity",
                        "backends": [
                            # Orthanc takes 4 associations by default (DicomThreadsCount)
                            {"name": "orthanc", "dicom": orthanc.address, "max_associations": 4},
                            {"name": "storescp", "dicom": scp.address},
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        pool = [lb.backend("orthanc"), lb.backend("storescp")]
        studies = make_studies([("CT", 2)] * 12, study_uids=uids_across(pool, 12))
        sent = {}
        for uid, instances in studies.items():
            for path in write_series(instances, tmp_path / "out" / uid):
                sent[sop_instance_uid(path)] = path
        result = storescu("127.0.0.1", lb.port, tmp_path / "out", aet="CT_SCANNER", aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        in_orthanc = orthanc.sop_instance_uids()
        in_scp = set(scp.by_sop_instance_uid())
        assert in_orthanc | in_scp == set(sent) and not in_orthanc & in_scp
        assert in_orthanc, "some studies went to Orthanc"
        for instance_id in orthanc.instances():
            assert orthanc.calling_aet(instance_id) == "CT_SCANNER"
            uid = orthanc.instance_tags(instance_id)["SOPInstanceUID"]
            assert orthanc.instance_dataset_bytes(instance_id) == dataset_bytes(sent[uid])
        # studies never split: every study is wholly on one backend
        for instances in studies.values():
            uids = {ds.SOPInstanceUID for ds in instances}
            assert uids <= in_orthanc or uids <= in_scp


@pytest.mark.parametrize(
    ("mode", "expected"), [("backend", "ORTHANC"), ("passthrough", "ANY_NAME")]
)
def test_called_aet_toward_the_backend(
    tmp_path: Path, balancer: Any, mode: str, expected: str
) -> None:
    with Orthanc("ORTHANC") as orthanc:
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "called_aet": mode,
                        "backends": [{"name": "orthanc", "dicom": orthanc.address}],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        files = write_series(next(iter(make_studies([("CT", 1)]).values())), tmp_path / "s")
        result = storescu("127.0.0.1", lb.port, files, aet="CT_SCANNER", aec="ANY_NAME")
        assert result.returncode == 0, result.stderr
        (instance_id,) = orthanc.instances()
        assert orthanc.instance_metadata(instance_id)["CalledAET"] == expected
