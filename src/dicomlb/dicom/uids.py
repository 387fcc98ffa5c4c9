"""UIDs dicomlb needs by name (PS3.6 Annex A), and how a transfer syntax encodes a data set."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

# dicomlb's own identity in A-ASSOCIATE (PS3.7 D.3.3.2); the root is a UUID-derived UID (2.25).
IMPLEMENTATION_CLASS_UID = "2.25.176427393618462390785912406417381935103"
IMPLEMENTATION_VERSION_NAME = "DICOMLB_010"


class Encoding(enum.StrEnum):
    """How a transfer syntax encodes the data set around the pixel data (PS3.5 A)."""

    IMPLICIT_LITTLE = "implicit_little"
    EXPLICIT_LITTLE = "explicit_little"
    EXPLICIT_BIG = "explicit_big"
    DEFLATED = "deflated"  # explicit VR little endian, deflated as a whole (PS3.5 A.5)
    ENCAPSULATED = "encapsulated"  # explicit VR little endian, pixel data in fragments (A.4)


# Transfer syntaxes whose data set is not plain explicit VR little endian with encapsulated
# (or no) pixel data; every other UID is taken as encapsulated, as every JPEG, JPEG-LS,
# JPEG 2000, HTJ2K, JPEG XL, RLE, MPEG, H.264 and HEVC syntax is.
STANDARD_ENCODINGS: Mapping[str, Encoding] = {
    IMPLICIT_VR_LE: Encoding.IMPLICIT_LITTLE,
    EXPLICIT_VR_LE: Encoding.EXPLICIT_LITTLE,
    DEFLATED_EXPLICIT_VR_LE: Encoding.DEFLATED,
    EXPLICIT_VR_BE: Encoding.EXPLICIT_BIG,
    "1.2.840.10008.1.2.4.95": Encoding.DEFLATED,  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.205": Encoding.DEFLATED,  # JPIP HTJ2K Referenced Deflate
    "1.2.840.10008.1.2.4.94": Encoding.EXPLICIT_LITTLE,  # JPIP Referenced (no pixel data)
    "1.2.840.10008.1.2.4.204": Encoding.EXPLICIT_LITTLE,  # JPIP HTJ2K Referenced
    "1.2.840.113619.5.2": Encoding.IMPLICIT_LITTLE,  # GE private: big endian pixels only
}

# PS3.5 9.1: components of digits without leading zeros, dot-separated, at most 64 bytes.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
MAX_UID_LENGTH = 64


def is_valid_uid(text: str) -> bool:
    """Whether `text` is a UID as PS3.5 9.1 writes one."""
    return len(text) <= MAX_UID_LENGTH and _UID.fullmatch(text) is not None


def encoding_of(uid: str, declared: Mapping[str, Encoding] | None = None) -> Encoding | None:
    """How data sets in transfer syntax `uid` are encoded: as `declared` (the config's
    entries), by PS3.5 for the syntaxes above, else encapsulated; None when `uid` is no UID."""
    found = (declared or {}).get(uid) or STANDARD_ENCODINGS.get(uid)
    if found is not None:
        return found
    return Encoding.ENCAPSULATED if is_valid_uid(uid) else None
