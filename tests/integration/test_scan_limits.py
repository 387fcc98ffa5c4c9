"""Routing-tag scan limits against real peers: a crafted C-STORE costs its sender, never the
other associations, and a data set whose routing tags lie past the cap is refused with a
reason unless its route says to route on what was found."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomlb.dicom.tags import MAX_BYTES
from tests.dicomdata import make_small, new_uid
from tests.peers import StoreSCP, free_port, have_dcmtk

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

EXPLICIT = "1.2.840.10008.1.2.1"
# An undefined-length sequence that starts with an item delimiter instead of an item (the
# walker hands such data sets to pydicom), then 8-byte elements for as long as it goes.
_ODD_START = (
    struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
)
_TINY = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 0)


def part10(path: Path, data_set: bytes) -> Path:
    """A Part-10 file around `data_set` bytes, as they are (pynetdicom sends them so)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = new_uid()
    meta.TransferSyntaxUID = EXPLICIT
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + data_set)
    return path


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    value += b"\0" * (len(value) % 2)  # PS3.5 7.1.1: even lengths
    if vr in {b"OB", b"SQ", b"UN", b"UT"}:
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def late_study_uid(path: Path, study: str) -> Path:
    """A well-formed data set whose Study Instance UID follows 1.5 MiB of private data."""
    blob = b"\x5a" * (MAX_BYTES * 3 // 2)
    data = b"".join(
        [
            _explicit(0x0008, 0x0016, b"UI", CTImageStorage.encode()),
            _explicit(0x0008, 0x0018, b"UI", new_uid().encode()),
            _explicit(0x0008, 0x0060, b"CS", b"CT"),
            _explicit(0x0009, 0x0010, b"LO", b"CRAFTED "),
            _explicit(0x0009, 0x1010, b"OB", blob),
            _explicit(0x0020, 0x000D, b"UI", study.encode()),
        ]
    )
    return part10(path, data)


def lb_config(scp: StoreSCP, **route: Any) -> dict[str, Any]:
    return {
        # 4 KiB P-DATA from clients: the crafted C-STORE arrives in 256 fragments per MiB.
        "listeners": {"dicom": {"bind": f"127.0.0.1:{free_port()}", "max_pdu": 4096}},
        "pools": {
            "p": {
                "strategy": "affinity",
                "key": "StudyInstanceUID",
                "backends": [{"name": "a", "dicom": scp.address}],
            }
        },
        "routes": [{"name": "ct", "match": {"Modality": "CT"}, "pool": "p", **route}],
    }


@pytest.fixture(autouse=True)
def send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's data set bytes without decoding them (they cannot be)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_crafted_store_does_not_stall_other_associations(tmp_path: Path, balancer: Any) -> None:
    crafted = part10(tmp_path / "crafted.dcm", _ODD_START + _TINY * (MAX_BYTES // 8))
    with StoreSCP("PACSA", tmp_path / "in") as scp:
        lb = balancer(lb_config(scp))
        attack: list[Any] = []

        def send_crafted() -> None:
            ae = AE(ae_title="ATTACKER")
            ae.add_requested_context(CTImageStorage, EXPLICIT)
            assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
            try:
                for _ in range(4):
                    attack.append(assoc.send_c_store(crafted))
            finally:
                assoc.release()

        attacker = threading.Thread(target=send_crafted)
        attacker.start()
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, EXPLICIT)
        ae.acse_timeout = ae.dimse_timeout = 10
        slowest = 0.0
        try:
            time.sleep(0.2)  # the crafted data sets are on their way
            for ds in make_small(5):
                started = time.monotonic()
                assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
                assert assoc.is_established
                assert assoc.send_c_echo().Status == 0x0000
                assert assoc.send_c_store(ds).Status == 0x0000
                assoc.release()
                slowest = max(slowest, time.monotonic() - started)
        finally:
            attacker.join(120)
        assert slowest < 1.0, f"an association took {slowest:.2f}s while the crafted stores ran"
        assert [status.Status for status in attack] == [0xC000] * 4
        assert "routing tags not found" in attack[0].ErrorComment
        assert len(scp.wait_files(5)) == 5


@pytest.mark.parametrize("on_scan_limit", [None, "route"])
def test_routing_tags_past_the_cap(
    tmp_path: Path, balancer: Any, on_scan_limit: str | None
) -> None:
    path = late_study_uid(tmp_path / "late.dcm", "1.2.826.0.1.3680043.2.1143.4242")
    with StoreSCP("PACSA", tmp_path / "in") as scp:
        route = {"on_scan_limit": on_scan_limit} if on_scan_limit else {}
        lb = balancer(lb_config(scp, **route))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, EXPLICIT)
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        status = assoc.send_c_store(path)
        assoc.release()
        if on_scan_limit == "route":  # routed on Modality; no study for the affinity key
            assert status.Status == 0x0000
            assert len(scp.wait_files(1)) == 1
        else:
            assert status.Status == 0xC000
            assert status.ErrorComment == (
                "routing tags not found within the scan limit: StudyInstanceUID"
            )
            assert scp.files() == []
