"""part10.py: the file meta header written in front of a received data set."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomlb.dicom import uids
from dicomlb.dicom.part10 import dataset_offset, file_header, read_file_meta
from tests.unit.helpers import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE

INSTANCE = "1.2.826.0.1.3680043.8.498.1"  # odd length


@pytest.mark.parametrize(
    ("syntax", "source_ae"), [(EXPLICIT_VR_LE, "STORESCU"), (IMPLICIT_VR_LE, "")]
)
def test_pydicom_reads_header_plus_data_set(syntax: str, source_ae: str) -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.SOPInstanceUID = INSTANCE
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = syntax == IMPLICIT_VR_LE
    write_dataset(buffer, ds)
    body = buffer.getvalue()
    header = file_header(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=INSTANCE,
        transfer_syntax=syntax,
        source_ae=source_ae,
    )
    assert len(header) % 2 == 0
    assert dataset_offset(header + body) == len(header)
    read = dcmread(BytesIO(header + body))
    meta = read.file_meta
    assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == INSTANCE
    assert meta.TransferSyntaxUID == syntax
    assert meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == uids.IMPLEMENTATION_VERSION_NAME
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.get("SourceApplicationEntityTitle", "") == source_ae
    assert meta.FileMetaInformationGroupLength == len(header) - 132 - 12
    assert read.PatientName == "Doe^Jane"


def test_dataset_offset_rejects_non_part10() -> None:
    with pytest.raises(ValueError, match="no DICM prefix"):
        dataset_offset(bytes(200))


def test_file_meta_reads_back_what_the_header_carries() -> None:
    record = b'{"study":"1.2.3"}'  # odd length: padded
    header = file_header(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=INSTANCE,
        transfer_syntax=EXPLICIT_VR_LE,
        source_ae="CT1",
        receiving_ae="DICOMLB",
        private_information=record,
    )
    meta = read_file_meta(header + b"\x08\x00\x60\x00CS\x02\x00CT")
    assert meta.dataset_offset == len(header)
    assert meta.text(0x00020003) == INSTANCE
    assert (meta.text(0x00020016), meta.text(0x00020018)) == ("CT1", "DICOMLB")
    assert meta.private_information() == record
    read = dcmread(BytesIO(header + b"\x08\x00\x60\x00CS\x02\x00CT"))
    assert read.file_meta.ReceivingApplicationEntityTitle == "DICOMLB"
    assert read.file_meta.PrivateInformationCreatorUID == uids.IMPLEMENTATION_CLASS_UID
    assert read.Modality == "CT"


def test_file_meta_without_dicomlb_record_and_cut_short() -> None:
    header = file_header(
        sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid=INSTANCE, transfer_syntax=EXPLICIT_VR_LE
    )
    assert read_file_meta(header).private_information() is None
    with pytest.raises(ValueError, match="cut short"):
        read_file_meta(header[:-4])
