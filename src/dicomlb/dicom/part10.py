"""PS3.10 files: the preamble and file meta group for a received data set (pure)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicomlb.dicom import uids

# VRs whose explicit-VR element header has a 4-byte length after two reserved bytes (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
PRIVATE_INFORMATION_CREATOR = 0x00020100
PRIVATE_INFORMATION = 0x00020102


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sxxL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    source_ae: str = "",
    receiving_ae: str = "",
    private_information: bytes = b"",
) -> bytes:
    """Preamble, "DICM" and file meta group for a data set whose bytes follow unchanged;
    `private_information` is kept under dicomlb's implementation class UID as creator."""
    elements = [
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x00020003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x00020010, b"UI", _padded(transfer_syntax, b"\x00")),
        _element(0x00020012, b"UI", _padded(uids.IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x00020013, b"SH", _padded(uids.IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    if source_ae:
        elements.append(_element(0x00020016, b"AE", _padded(source_ae, b" ")))
    if receiving_ae:
        elements.append(_element(0x00020018, b"AE", _padded(receiving_ae, b" ")))
    if private_information:
        creator = _padded(uids.IMPLEMENTATION_CLASS_UID, b"\x00")
        elements.append(_element(PRIVATE_INFORMATION_CREATOR, b"UI", creator))
        value = private_information + (b"\x00" if len(private_information) % 2 else b"")
        elements.append(_element(PRIVATE_INFORMATION, b"OB", value))
    body = b"".join(elements)
    group_length = _element(0x00020000, b"UL", struct.pack("<L", len(body)))
    return bytes(128) + b"DICM" + group_length + body


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in a Part-10 file's bytes (after the file meta group)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no DICM prefix)")
    group_length: int = struct.unpack_from("<L", data, 132 + 8)[0]
    return 132 + 12 + group_length


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A Part-10 file's meta group: raw element values by tag, and where the data set starts."""

    values: dict[int, bytes]
    dataset_offset: int

    def text(self, tag: int) -> str:
        """A string element without its padding ('' when absent)."""
        return self.values.get(tag, b"").decode("ascii", "replace").rstrip("\x00 ")

    def private_information(self) -> bytes | None:
        """(0002,0102) when dicomlb wrote it (its creator UID is dicomlb's), else None."""
        if self.text(PRIVATE_INFORMATION_CREATOR) != uids.IMPLEMENTATION_CLASS_UID:
            return None
        return self.values.get(PRIVATE_INFORMATION, b"").rstrip(b"\x00")


def read_file_meta(data: bytes) -> FileMeta:
    """Parse the file meta group at the start of a Part-10 file's bytes (explicit VR little
    endian, PS3.10 7.1); ValueError when it is not one or is cut short."""
    offset = dataset_offset(data)
    if len(data) < offset:
        raise ValueError("file meta group cut short")
    values: dict[int, bytes] = {}
    position = 132 + 12  # past "DICM" and the group length element
    while position < offset:
        group, element, vr = struct.unpack_from("<HH2s", data, position)
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, position + 8)
            position += 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            position += 8
        if group != 0x0002 or position + length > offset:
            raise ValueError(f"bad file meta element ({group:04X},{element:04X})")
        values[group << 16 | element] = data[position : position + length]
        position += length
    return FileMeta(values, offset)
