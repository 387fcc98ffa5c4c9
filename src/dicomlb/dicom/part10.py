"""PS3.10 files: the preamble and file meta group for a received data set (pure)."""

from __future__ import annotations

import struct

from dicomlb.dicom import uids


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sxxL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_header(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = ""
) -> bytes:
    """Preamble, "DICM" and file meta group for a data set whose bytes follow unchanged."""
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
    body = b"".join(elements)
    group_length = _element(0x00020000, b"UL", struct.pack("<L", len(body)))
    return bytes(128) + b"DICM" + group_length + body


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in a Part-10 file's bytes (after the file meta group)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no DICM prefix)")
    (group_length,) = struct.unpack_from("<L", data, 132 + 8)
    return 132 + 12 + group_length
