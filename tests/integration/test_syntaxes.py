"""pynetdicom SCUs with implicit, explicit, deflated and JPEG transfer syntaxes: the
negotiated syntax is kept end to end and the data set arrives byte-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from tests.dicomdata import make_small, write_series
from tests.peers import StoreSCP, dataset_bytes, have_dcmtk

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def sample(kind: str, tmp_path: Path) -> Path:
    if kind == "jpeg":
        path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
        assert path is not None
        return Path(path)
    return write_series(make_small(1, transfer_syntax=kind), tmp_path / kind)[0]


@pytest.mark.parametrize("kind", ["implicit", "explicit", "deflated", "big", "jpeg"])
def test_transfer_syntax_is_kept_and_bytes_identical(
    tmp_path: Path, balancer: Any, kind: str
) -> None:
    scp = StoreSCP("PACSA", tmp_path / "in").start()
    try:
        lb = balancer(
            {
                "pools": {"p": {"backends": [{"name": "pacs-a", "dicom": scp.address}]}},
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        path = sample(kind, tmp_path)
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = meta.file_meta.TransferSyntaxUID
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(meta.SOPClassUID, [syntax])
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        assert assoc.is_established
        assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        status = assoc.send_c_store(path)  # a path: pynetdicom sends the file's bytes as is
        assoc.release()
        assert status.Status == 0x0000
        (received,) = scp.wait_files(1)
        assert (
            pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        )
        assert dataset_bytes(received) == dataset_bytes(path)
    finally:
        scp.close()
