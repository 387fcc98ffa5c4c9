"""Synthetic DICOM test data, built with pydicom only (no network, no numpy).

Every function here returns complete Part-10 data sets (file meta included) that real peers
accept: DCMTK ``storescu``/``storescp``, Orthanc, pynetdicom. Pixel data is a fixed pattern
built once per shape and shared by every instance, so a 300-instance 512x512 CT series is
synthesised and written in about a second (DESIGN.md decision 12).

    series = make_ct_series(300)
    paths = write_series(series, tmp_path / "ct")
    studies = make_studies({"CT": 2, "MR": 1})  # {study_uid: [Dataset, ...]}
"""

from __future__ import annotations

import array
import datetime as _dt
import functools
import itertools
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

__all__ = [
    "MODALITY_SOP_CLASS",
    "SECONDARY_CAPTURE",
    "TRANSFER_SYNTAXES",
    "make_ct_series",
    "make_series",
    "make_small",
    "make_studies",
    "new_uid",
    "write_large_instance",
    "write_series",
]

# Storage SOP classes (PS3.4 B.5) for the modalities the tests use.
MODALITY_SOP_CLASS: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
SECONDARY_CAPTURE = MODALITY_SOP_CLASS["OT"]

# Short names for the uncompressed transfer syntaxes pydicom can write.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "big": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}

_UID_COUNTER = itertools.count(1)
_UID_ROOT = f"2.25.{uuid.uuid4().int}"[:40]  # one random root per process, then a counter


def new_uid() -> UID:
    """Return a fresh, process-unique UID (a 2.25 UUID root plus a counter, <= 64 chars)."""
    return UID(f"{_UID_ROOT}.{next(_UID_COUNTER)}")


@functools.lru_cache(maxsize=16)
def _pixels(rows: int, cols: int, bits_allocated: int, big_endian: bool) -> bytes:
    """A deterministic pixel pattern: a 12-bit ramp (16-bit) or byte ramp (8-bit), cached."""
    count = rows * cols
    if bits_allocated == 8:
        return bytes(range(256)) * (count // 256) + bytes(range(count % 256))
    line = array.array("H", [(i * 37) & 0x0FFF for i in range(4096)])
    if big_endian != (sys.byteorder == "big"):
        line.byteswap()
    raw = line.tobytes()
    return (raw * (count // 4096 + 1))[: count * 2]


def _resolve_ts(transfer_syntax: str) -> UID:
    if transfer_syntax in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[transfer_syntax]
    return UID(transfer_syntax)


def make_series(
    n: int,
    *,
    modality: str = "CT",
    rows: int = 512,
    cols: int = 512,
    pixels: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "DLB0001",
    patient_name: str = "TEST^DICOMLB",
    accession_number: str = "ACC0001",
    institution: str = "Loopback Hospital",
    station_name: str = "SYNTH01",
    series_number: int = 1,
    series_description: str | None = None,
    transfer_syntax: str = "explicit",
    character_set: str = "ISO_IR 100",
    extra: Mapping[str, object] | None = None,
) -> list[Dataset]:
    """Build ``n`` instances of one series of ``modality`` with valid Part-10 file meta.

    Instances share study, series, patient and frame of reference; each has its own SOP
    Instance UID and InstanceNumber 1..n. ``pixels=False`` gives header-only instances (a
    few hundred bytes). US uses 8-bit pixels, everything else 16-bit (12 stored).
    ``transfer_syntax`` is a key of TRANSFER_SYNTAXES or a UID. ``extra`` sets further
    attributes by keyword on every instance (``{"BodyPartExamined": "HEAD"}``).
    """
    if modality not in MODALITY_SOP_CLASS:
        raise ValueError(f"modality {modality!r} unknown; use one of {sorted(MODALITY_SOP_CLASS)}")
    ts = _resolve_ts(transfer_syntax)
    sop_class = UID(MODALITY_SOP_CLASS[modality])
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    frame_uid = new_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    bits = 8 if modality == "US" else 16
    pixel_data = _pixels(rows, cols, bits, ts == ExplicitVRBigEndian) if pixels else b""

    out: list[Dataset] = []
    for index in range(1, n + 1):
        sop_uid = new_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ts
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "DICOMLB_TEST"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = character_set
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = accession_number
        ds.Modality = modality
        ds.Manufacturer = "dicomlb"
        ds.InstitutionName = institution
        ds.ReferringPhysicianName = "REF^PHYSICIAN"
        ds.StationName = station_name
        ds.StudyDescription = f"Synthetic {modality} study"
        ds.SeriesDescription = series_description or f"Synthetic {modality} series"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = index
        if modality in ("CT", "MR", "PT"):
            ds.SliceThickness = "1.0"
            ds.ImagePositionPatient = [0, 0, index]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = frame_uid
            ds.SliceLocation = index
        if modality == "CT":
            ds.KVP = "120"
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
        if pixels:
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = rows
            ds.Columns = cols
            ds.PixelSpacing = [0.5, 0.5]
            ds.BitsAllocated = bits
            ds.BitsStored = 8 if bits == 8 else 12
            ds.HighBit = ds.BitsStored - 1
            ds.PixelRepresentation = 0
            ds.PixelData = pixel_data
            ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def make_ct_series(
    n: int,
    rows: int = 512,
    cols: int = 512,
    study_uid: str | None = None,
    patient_id: str = "DLB0001",
    modality: str = "CT",
    institution: str = "Loopback Hospital",
    **kwargs: object,
) -> list[Dataset]:
    """Build a CT series of ``n`` instances, ``rows`` x ``cols`` 16-bit (≈ 0.5 MB at 512²).

    Keyword arguments not named here are passed to make_series (``transfer_syntax``,
    ``series_uid``, ``accession_number``, ``extra``...).
    """
    return make_series(
        n,
        rows=rows,
        cols=cols,
        study_uid=study_uid,
        patient_id=patient_id,
        modality=modality,
        institution=institution,
        **kwargs,  # type: ignore[arg-type]
    )


def make_small(
    n: int, modality: str = "CT", *, pixels: bool = True, **kwargs: object
) -> list[Dataset]:
    """Build ``n`` small instances: 64x64 pixels (≈ 9 KB) or, with ``pixels=False``, none.

    ``modality="OT"`` gives Secondary Capture. Other keywords go to make_series.
    """
    return make_series(n, modality=modality, rows=64, cols=64, pixels=pixels, **kwargs)  # type: ignore[arg-type]


def make_studies(
    spec: Mapping[str, int] | Iterable[tuple[str, int]],
    *,
    series_per_study: int = 1,
    rows: int = 64,
    cols: int = 64,
    study_uids: Sequence[str] = (),
    **kwargs: object,
) -> dict[str, list[Dataset]]:
    """Build several studies and return ``{StudyInstanceUID: [instances]}`` in spec order.

    ``spec`` maps a modality to a number of instances per study, or is a sequence of
    ``(modality, instances)`` pairs, one study each, so the same modality can repeat:
    ``make_studies([("CT", 5), ("CT", 5), ("MR", 3)])``. Each study gets its own patient
    (``PAT0001``, ``PAT0002``...) and accession number unless given in ``kwargs``, and
    ``series_per_study`` series. Images default to 64x64 to keep this fast. ``study_uids``
    (one per study) replaces the fresh UIDs (e.g. `tests.integration.conftest.uids_across`).
    """
    pairs = list(spec.items()) if isinstance(spec, Mapping) else list(spec)
    studies: dict[str, list[Dataset]] = {}
    for number, (modality, count) in enumerate(pairs, start=1):
        study_uid = study_uids[number - 1] if study_uids else new_uid()
        options: dict[str, object] = {
            "patient_id": f"PAT{number:04d}",
            "patient_name": f"TEST^PATIENT{number}",
            "accession_number": f"ACC{number:04d}",
            **kwargs,
        }
        instances: list[Dataset] = []
        for series_number in range(1, series_per_study + 1):
            instances += make_series(
                count,
                modality=modality,
                rows=rows,
                cols=cols,
                study_uid=study_uid,
                series_number=series_number,
                **options,  # type: ignore[arg-type]
            )
        studies[study_uid] = instances
    return studies


def write_series(
    datasets: Sequence[Dataset] | Iterable[Dataset], directory: os.PathLike[str] | str
) -> list[Path]:
    """Write data sets as Part-10 files named ``<SOPInstanceUID>.dcm`` into ``directory``.

    The directory is created if needed. The encoding follows each file meta's transfer
    syntax. Returns the paths in input order.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in datasets:
        path = target / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


LARGE_FRAME = 1000 * 1000 * 2  # bytes of one 1000x1000 16-bit frame of `write_large_instance`


def write_large_instance(path: os.PathLike[str] | str, frames: int) -> Path:
    """Write a multi-frame secondary capture of ``frames`` 1000x1000 16-bit frames (2 MB
    each: 1000 frames are 2 GB of pixel data) to ``path``, holding one frame in memory.

    pydicom writes the file meta and every element before Pixel Data; the Pixel Data
    element (explicit VR little endian, OW, 32-bit length) is then appended frame by
    frame, so the size is bounded by the disk, not by memory. Returns ``path``.
    """
    nbytes = frames * LARGE_FRAME
    if not 0 < nbytes < 0xFFFFFFFF:
        raise ValueError(f"{frames} frames do not fit one Pixel Data element")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LARGE", "Large^Instance", "OT"
    ds.Rows = ds.Columns = 1000
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    target = Path(path)
    ds.save_as(target, enforce_file_format=True)
    frame = bytes(range(256)) * (LARGE_FRAME // 256) + bytes(range(LARGE_FRAME % 256))
    with open(target, "ab") as out:
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + nbytes.to_bytes(4, "little"))
        for _ in range(frames):
            out.write(frame)
    return target
