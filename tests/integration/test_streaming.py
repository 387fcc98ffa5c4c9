"""Data sets are streamed, not buffered whole: a 256 MB instance passes through a dicomlb
process whose peak memory stays far below the instance size."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.peers import DicomlbProcess, StoreSCP, dataset_bytes, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

SIZE = 256 * 1024 * 1024


def big_instance(path: Path) -> Path:
    """A secondary-capture-like multiframe of SIZE bytes of pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # multi-frame grayscale word SC
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = SIZE // (1024 * 1024 * 2)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (SIZE // 256)
    ds.save_as(path, enforce_file_format=True)
    return path


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_instance_streams_with_flat_memory(tmp_path: Path) -> None:
    source = big_instance(tmp_path / "big.dcm")
    with StoreSCP("PACSA", tmp_path / "in") as scp:
        port = free_port()
        config = (
            f"listeners:\n  dicom: {{bind: '127.0.0.1:{port}', ae_title: DICOMLB}}\n"
            f"pools:\n  p:\n    backends:\n      - {{name: a, dicom: '{scp.address}'}}\n"
            "routes:\n  - {name: all, match: {Modality: OT}, pool: p}\n"
        )
        with DicomlbProcess(config, port, tmp_path / "lb") as lb:
            result = storescu("127.0.0.1", port, [source], aec="DICOMLB", timeout=300)
            assert result.returncode == 0, result.stderr
            peak = peak_rss_kib(lb.pid)
        (received,) = scp.files()
        assert dataset_bytes(received) == dataset_bytes(source)
    # a buffered relay would hold at least the whole instance
    assert peak < 160 * 1024, (
        f"dicomlb peaked at {peak // 1024} MiB for a {SIZE >> 20} MiB instance"
    )
