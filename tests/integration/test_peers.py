"""The test peers work together with nothing in between: the library's own tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.dicomdata import make_ct_series, make_small, make_studies, write_series
from tests.peers import (
    Orthanc,
    StoreSCP,
    dataset_bytes,
    echoscu,
    free_port,
    have_dcmtk,
    have_orthanc,
    is_listening,
    sop_instance_uid,
    storescu,
)

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="needs the orthanc package")


def test_synthesis_is_fast_and_valid(tmp_path: Path) -> None:
    started = time.perf_counter()
    paths = write_series(make_ct_series(300), tmp_path)
    elapsed = time.perf_counter() - started
    assert len({p.name for p in paths}) == 300
    assert 500_000 < paths[0].stat().st_size < 600_000
    assert elapsed < 10  # about 1 s here; generous for a loaded machine
    studies = make_studies({"CT": 2, "MR": 2, "PT": 1, "CR": 1, "US": 1})
    assert len(studies) == 5
    assert [s[0].Modality for s in studies.values()] == ["CT", "MR", "PT", "CR", "US"]


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big", "deflated"])
def test_storescu_to_storescp_is_byte_identical(tmp_path: Path, syntax: str) -> None:
    sent = write_series(make_small(3, transfer_syntax=syntax), tmp_path / "out")
    with StoreSCP("BACKEND1", tmp_path / "in") as scp:
        result = storescu(
            scp.host, scp.port, tmp_path / "out", aec=scp.ae_title, transfer_syntax=syntax
        )
        assert result.returncode == 0, result.stderr
        received = scp.by_sop_instance_uid()
    assert sorted(received) == sorted(sop_instance_uid(p) for p in sent)
    for path in sent:
        assert dataset_bytes(received[sop_instance_uid(path)]) == dataset_bytes(path)


def test_storescp_stop_and_restart_on_same_port(tmp_path: Path) -> None:
    with StoreSCP("BACKEND1", fork=True) as scp:
        assert echoscu(scp.host, scp.port, aec=scp.ae_title).returncode == 0
        scp.stop()
        assert not is_listening(scp.port)
        assert echoscu(scp.host, scp.port, aec=scp.ae_title, timeout=10).returncode != 0
        scp.start()
        assert echoscu(scp.host, scp.port, aec=scp.ae_title).returncode == 0
        sent = write_series(make_ct_series(2, rows=128, cols=128), tmp_path)
        assert storescu(scp.host, scp.port, sent, aec=scp.ae_title).returncode == 0
        assert len(scp.wait_files(2)) == 2
    assert not is_listening(scp.port)


def test_echoscu_against_nothing_fails_fast() -> None:
    result = echoscu("127.0.0.1", free_port(), timeout=10)
    assert result.returncode != 0


@pytest.mark.orthanc
@needs_orthanc
def test_storescu_to_orthanc_records_calling_aet(tmp_path: Path) -> None:
    sent = write_series(make_ct_series(3, rows=256, cols=256), tmp_path)
    with Orthanc("PACS1", modalities={"SENDER": "SENDER@127.0.0.1:4242"}) as orthanc:
        assert echoscu(orthanc.host, orthanc.dicom_port, aec=orthanc.aet).returncode == 0
        result = storescu(orthanc.host, orthanc.dicom_port, sent, aet="SENDER", aec="PACS1")
        assert result.returncode == 0, result.stderr
        assert len(orthanc.instances()) == 3
        for path in sent:
            instance = orthanc.find_sop(sop_instance_uid(path))
            assert instance is not None
            assert orthanc.calling_aet(instance) == "SENDER"
            assert orthanc.instance_metadata(instance)["CalledAET"] == "PACS1"
            assert orthanc.instance_tags(instance)["Modality"] == "CT"
            assert orthanc.instance_dataset_bytes(instance) == dataset_bytes(path)
        assert orthanc.find_sop("1.2.3.4.5") is None
        orthanc.clear()
        assert orthanc.instances() == []


@pytest.mark.orthanc
@needs_orthanc
def test_orthanc_stop_and_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    sent = write_series(make_small(2), tmp_path)
    with Orthanc("PACS1") as orthanc:
        assert storescu(orthanc.host, orthanc.dicom_port, sent, aec="PACS1").returncode == 0
        orthanc.stop(graceful=False)  # a crash; graceful stop works too but takes 3.5 s
        assert echoscu(orthanc.host, orthanc.dicom_port, aec="PACS1").returncode != 0
        orthanc.start()
        assert echoscu(orthanc.host, orthanc.dicom_port, aec="PACS1").returncode == 0
        assert len(orthanc.instances()) == 2
