"""Routing tags from the first bytes of a DICOM data set, as they arrive (DESIGN #4).

`HeaderScanner` walks the data set of a C-STORE (no preamble, no file meta: exactly what
P-DATA carries) with precompiled `struct` readers, keeps only the values of the wanted
elements, and stops once it is past the highest wanted tag: top-level elements are in
ascending tag order (PS3.5 7.1). Nothing is decoded unless wanted. Undefined-length
sequences are walked item by item; pydicom reads only what this walker does not understand,
and only once per data set: when it has ended or a cap (`max_bytes`, `FALLBACK_MAX_BYTES`) is
reached, never per fragment (re-reading a growing buffer is quadratic: a crafted megabyte in
4 KiB fragments took 25 s of CPU that way). So the work per data set is linear in its bytes.
`ScanBudget` bounds the bytes held for scanning by every association together.
Pure: no I/O, no logging, no asyncio.
"""

from __future__ import annotations

import difflib
import re
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Final

from pydicom.charset import convert_encodings, decode_bytes, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.filereader import data_element_generator

from dicomlb.dicom.uids import Encoding, encoding_of

__all__ = [
    "FALLBACK_MAX_BYTES",
    "MAX_BYTES",
    "SPECIFIC_CHARACTER_SET",
    "STUDY_INSTANCE_UID",
    "HeaderScanner",
    "ScanBudget",
    "ScanLease",
    "is_uid",
    "tag_from_name",
    "tag_name",
]

SPECIFIC_CHARACTER_SET: Final = 0x00080005
STUDY_INSTANCE_UID: Final = 0x0020000D  # routing, affinity, the spool and studies all read it
# Give up looking for wanted tags after this many data-set bytes (inflated, for deflate).
MAX_BYTES: Final = 1 << 20
# Made once, not per scanner (one per C-STORE): the element headers' and lengths' layouts
# by byte order, and the encodings, which Python 3.11's EnumType.__getattr__ makes slow to
# look up as `Encoding.X`.
_LAYOUTS = {
    endian: (
        struct.Struct(endian + "HH2sH"),
        struct.Struct(endian + "HHL"),
        struct.Struct(endian + "L"),
    )
    for endian in "<>"
}
_EXPLICIT_LITTLE = Encoding.EXPLICIT_LITTLE
_IMPLICIT_LITTLE = Encoding.IMPLICIT_LITTLE
_EXPLICIT_BIG = Encoding.EXPLICIT_BIG
_DEFLATED = Encoding.DEFLATED
# pydicom reads at most this much, from the element the walker could not follow on: it costs
# up to ~1.7 s of CPU per MiB of crafted items (bench/run_scan.py), so ~0.1 s per message.
FALLBACK_MAX_BYTES: Final = 64 * 1024

_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
# Inflate at most this much per step, so a deflated data set is inflated only as far as needed.
_INFLATE_STEP: Final = 64 * 1024

# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS: Final = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_KNOWN_VR_NAMES: Final = frozenset(vr.decode() for vr in _LONG_VRS | _SHORT_VRS)

# VRs whose text uses (0008,0005); the others are in the default repertoire (PS3.5 6.1.2.3).
_CHARSET_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
# Text VRs that are single-valued: a backslash there is text, not a separator (PS3.5 6.2).
_SINGLE_TEXT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
_TEXT_VRS: Final = _CHARSET_VRS | frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
)
# struct code and size of the binary numeric VRs.
_NUMBERS: Final = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("I", 4),
    "SL": ("i", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
    "SV": ("q", 8),
    "UV": ("Q", 8),
    "AT": ("HH", 4),
}
# pydicom's delimiters that reset ISO 2022 code extensions (PS3.5 6.1.2.5.3).
_TEXT_DELIMITERS: Final = {0x0D, 0x0A, 0x09, 0x0C}
_PN_DELIMITERS: Final = {0x5E}
_ESC: Final = 0x1B

# Walker frames for undefined-length structures below the top level.
_SEQ_EXPLICIT: Final = 0  # inside a sequence, its items are explicit VR (maybe)
_SEQ_IMPLICIT: Final = 1
_ITEM_EXPLICIT: Final = 2  # inside an item data set
_ITEM_IMPLICIT: Final = 3
_ITEM_UNCHECKED: Final = 4  # item of an explicit sequence, encoding not yet sniffed

_TAG_PAIR = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")
_TAG_HEX = re.compile(r"(?:0x)?([0-9A-Fa-f]{8})")


def tag_from_name(name: str) -> int:
    """Return the tag ``(group << 16) | element`` for a keyword or a written tag.

    Accepts ``"Modality"``, ``"(0008,0060)"``, ``"0008,0060"`` and ``"00080060"``.
    Raises `ValueError` naming what was given, with the closest keyword when there is one.
    """
    text = name.strip()
    if match := _TAG_PAIR.fullmatch(text):
        return int(match[1], 16) << 16 | int(match[2], 16)
    if match := _TAG_HEX.fullmatch(text):
        return int(match[1], 16)
    tag = tag_for_keyword(text) if text.isidentifier() else None
    if tag is None:
        close = difflib.get_close_matches(text, keyword_dict, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f'"{name}" is not a DICOM keyword; {hint}write a keyword such as StudyInstanceUID '
            "or a tag such as (0020,000D)"
        )
    return tag


def tag_name(tag: int) -> str:
    """Return the keyword of `tag`, or ``"(gggg,eeee)"`` when it has none."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def is_uid(tag: int) -> bool:
    """Whether the attribute `tag` holds a UID (VR UI): such values may be logged, while
    names, IDs and accession numbers are patient data and are not."""
    return _dictionary_vr(tag) == "UI"


def _dictionary_vr(tag: int) -> str:
    """The VR to read an implicit (or UN) element with; "UN" when the dictionary lacks it."""
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1 and 0x0010 <= element <= 0x00FF:
        return "LO"  # private creator (PS3.5 7.8.1)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    # "US or SS", "OB or OW": pixel-dependent; the first reading is right for routing tags.
    return vr[:2]


def _clean(text: str, vr: str) -> str:
    """Strip padding from one value: trailing NUL/space, leading spaces except for UI."""
    text = text.rstrip("\0 ")
    if vr == "PN":
        # pydicom drops empty trailing component groups ("Doe^John==" is "Doe^John").
        return text.rstrip("=").lstrip(" ")
    return text if vr == "UI" else text.lstrip(" ")


class HeaderScanner:
    """Incremental scanner for the routing tags at the start of a data set.

    Feed the data set's fragments in order; `done` turns true once every wanted tag was
    seen or passed, or the scanner gave up (oddity, `max_bytes`). Call `finish` at the end
    of the data set. `values` maps each wanted tag present at the top level to its text;
    `limited` says the cap was reached before some of them could be found or ruled out.
    """

    bytes_needed_hint: int
    """Bytes the scanner needs before it can make progress (0 once done); a hint only."""

    def __init__(
        self,
        transfer_syntax_uid: str,
        wanted: Iterable[int],
        *,
        max_bytes: int = MAX_BYTES,
        encoding: Encoding | None = None,
    ) -> None:
        """Scan a data set in `transfer_syntax_uid` for the `wanted` tags.

        `encoding` says how that syntax encodes the data set (the listener's
        `DicomListenerConfig.encoding`); by default `uids.encoding_of`: any syntax not
        implicit VR, deflated or big endian is explicit VR little endian, as every
        encapsulated syntax is (PS3.5 A.4).
        """
        if encoding is None:
            encoding = encoding_of(transfer_syntax_uid) or _EXPLICIT_LITTLE
        self._asked = frozenset(map(int, wanted))
        # (0008,0005) is always read: the text of the other wanted elements depends on it.
        self._wanted = self._asked | {SPECIFIC_CHARACTER_SET}
        self._max_tag = max(self._wanted)
        self._max_bytes = max_bytes
        self._implicit = encoding is _IMPLICIT_LITTLE
        self._little = encoding is not _EXPLICIT_BIG
        endian = "<" if self._little else ">"
        self._endian = endian
        self._explicit_header, self._implicit_header, self._u32 = _LAYOUTS[endian]
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if encoding is _DEFLATED else None
        self._buf = bytearray()
        self._pos = 0  # next unread byte in _buf
        self._top_start = 0  # start in _buf of the top-level element being walked
        self._skip = 0  # bytes still to drop from the input: the rest of a skipped element
        self._stack: list[int] = []  # walker frames below the top level
        self._first = True  # the top-level encoding is sniffed on the first element
        self._fallback = False  # pydicom reads the rest
        self._total = 0
        self._done = False
        self._limited = False
        self._raw: dict[int, tuple[str | None, bytes]] = {}
        self._values: dict[int, str] | None = None
        self.bytes_needed_hint = 8

    @property
    def done(self) -> bool:
        """True once no more input can change `values`."""
        return self._done

    @property
    def limited(self) -> bool:
        """True when a cap (`max_bytes`, or `FALLBACK_MAX_BYTES` of what only pydicom reads)
        ended the scan while a wanted tag was neither found nor passed: `values` may lack tags
        that the data set has further on."""
        return self._limited

    @property
    def values(self) -> dict[int, str]:
        """Text of every wanted tag present at the top level (partial until `done`)."""
        if self._values is None:
            encodings = self._encodings()
            self._values = {
                tag: self._decode(tag, vr, raw, encodings)
                for tag, (vr, raw) in self._raw.items()
                if tag in self._asked
            }
        return dict(self._values)

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Add the next fragment of the data set; return `done`.

        `data` is not kept: what is needed is copied before returning.
        """
        if self._done or not data:
            return self._done
        if self._inflater is None:
            self._scan(data)
        else:
            self._inflate(data)
        return self._done

    def finish(self) -> None:
        """The data set ended: resolve with what has arrived."""
        if self._done:
            return
        if self._inflater is not None:
            try:
                tail = self._inflater.flush()
            except zlib.error:
                tail = b""
            if tail:
                self._scan(tail)
        if not self._done and self._fallback:
            self._read_with_pydicom(complete=True)
        self._set_done()

    # -- input -----------------------------------------------------------------------------

    def _inflate(self, data: bytes | bytearray | memoryview) -> None:
        """Inflate raw deflate (PS3.5 A.5) a step at a time, scanning each step."""
        inflater = self._inflater
        assert inflater is not None
        pending: bytes | bytearray | memoryview = data
        while not self._done:
            try:
                out = inflater.decompress(pending, _INFLATE_STEP)
            except zlib.error:
                self._set_done()  # corrupt stream: nothing more can be read
                return
            if out:
                self._scan(out)
            # unconsumed_tail is a copy, so nothing of `data` is kept.
            pending = inflater.unconsumed_tail
            if not pending:
                return

    def _scan(self, chunk: bytes | bytearray | memoryview) -> None:
        """Scan plain data-set bytes."""
        self._total += len(chunk)
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                self.bytes_needed_hint = self._skip + 8
                self._check_cap()
                return
            chunk = memoryview(chunk)[self._skip :]
            self._skip = 0
        if self._fallback:
            self._buf += chunk  # pydicom reads it all once, at the end or at the cap
            self._check_cap()
            return
        if self._buf:
            self._buf += chunk
            buf: bytes | bytearray | memoryview = self._buf
        else:
            # Common case: the header is in one fragment, so walk it where it lies.
            buf = chunk
            self._pos = self._top_start = 0
        try:
            pos = self._walk(buf, self._pos)
        except (struct.error, ValueError, IndexError):  # defence: a walker bug must not escape
            pos = self._pos
            self._set_done()
        if self._done:
            self._buf = bytearray()
            return
        # Keep only what a later step may need: from the current top-level element on.
        keep = self._top_start if (self._stack or self._fallback) else pos
        if keep > len(buf):  # in the middle of skipping a top-level element
            self._skip = keep - len(buf)
            self._buf = bytearray()
            self._pos = self._top_start = 0
            self.bytes_needed_hint = self._skip + 8
        else:
            if buf is self._buf:
                del self._buf[:keep]
            else:
                self._buf = bytearray(buf[keep:])
            self._pos = pos - keep
            self._top_start -= keep
        self._check_cap()

    def _check_cap(self) -> None:
        if self._done:
            return
        if self._total < self._max_bytes and not (
            self._fallback and len(self._buf) >= FALLBACK_MAX_BYTES
        ):
            return
        # Routing tags live in the first kilobytes; past the cap, report what was found.
        if self._fallback:
            self._read_with_pydicom(complete=False)
        else:
            self._limited = not self._asked <= self._raw.keys()
        self._set_done()

    def _set_done(self) -> None:
        self._done = True
        self._buf = bytearray()
        self._stack.clear()
        self._inflater = None
        self._values = None
        self.bytes_needed_hint = 0

    # -- the walker ------------------------------------------------------------------------

    def _walk(self, buf: bytes | bytearray | memoryview, pos: int) -> int:
        """Walk elements from `pos`; return where the next step starts."""
        end = len(buf)
        wanted = self._wanted
        max_tag = self._max_tag
        raw = self._raw
        explicit_header = self._explicit_header.unpack_from
        implicit_header = self._implicit_header.unpack_from
        u32 = self._u32.unpack_from
        while True:
            if self._stack:
                pos = self._walk_nested(buf, pos, end)
                if self._stack or self._fallback:
                    self.bytes_needed_hint = max(1, pos + 8 - end)
                    return pos
            if pos + 8 > end:
                self.bytes_needed_hint = pos + 8 - end
                return pos
            self._top_start = pos
            if self._first:
                self._first = False
                self._sniff_top_level(buf, pos)
            if self._implicit:
                group, element, length = implicit_header(buf, pos)
                tag = group << 16 | element
                if tag > max_tag:
                    self._set_done()
                    return pos
                vr: bytes | None = None
                header = 8
            else:
                group, element, vr, length = explicit_header(buf, pos)
                tag = group << 16 | element
                if tag > max_tag:
                    self._set_done()
                    return pos
                header = 8
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        self.bytes_needed_hint = pos + 12 - end
                        return pos
                    (length,) = u32(buf, pos + 8)
                    header = 12
                elif vr not in _SHORT_VRS and not b"AA" <= vr <= b"ZZ":
                    # Like pydicom: no VR here means a writer slipped into implicit VR.
                    group, element, length = implicit_header(buf, pos)
                    vr = None
            if length == _UNDEFINED:
                if tag in wanted:
                    raw[tag] = ("SQ", b"")  # present; sequences are not descended
                self._stack.append(_SEQ_IMPLICIT if self._implicit else _SEQ_EXPLICIT)
                pos += header
                continue
            # A stray (FFFE,xxxx) delimiter at the top sorts after every wanted tag: done above.
            if tag in wanted:
                stop = pos + header + length
                if stop > end:
                    self.bytes_needed_hint = stop - end
                    return pos
                raw[tag] = (
                    None if vr is None else vr.decode("latin-1"),
                    bytes(buf[pos + header : stop]),
                )
                self._values = None
            pos += header + length

    def _sniff_top_level(self, buf: bytes | bytearray | memoryview, pos: int) -> None:
        """Trust the bytes over the transfer syntax, as pydicom does (`_is_implicit_vr`)."""
        found_implicit = not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B)
        self._implicit = found_implicit

    def _walk_nested(self, buf: bytes | bytearray | memoryview, pos: int, end: int) -> int:
        """Skip undefined-length sequences and items (PS3.5 7.5) until back at the top."""
        stack = self._stack
        implicit_header = self._implicit_header.unpack_from
        explicit_header = self._explicit_header.unpack_from
        u32 = self._u32.unpack_from
        while stack:
            if pos + 8 > end:
                return pos
            frame = stack[-1]
            group, element, length = implicit_header(buf, pos)
            tag = group << 16 | element
            if frame <= _SEQ_IMPLICIT:
                # Item and delimiter headers have no VR in any transfer syntax (PS3.5 7.5).
                pos += 8
                if tag == _ITEM:
                    if length == _UNDEFINED:
                        stack.append(_ITEM_IMPLICIT if frame == _SEQ_IMPLICIT else _ITEM_UNCHECKED)
                    else:
                        pos += length
                elif tag == _SEQUENCE_DELIMITER:
                    stack.pop()
                else:
                    self._fallback = True  # not an item: let pydicom make sense of it
                    return pos - 8
                continue
            if tag == _ITEM_DELIMITER:
                stack.pop()
                pos += 8
                continue
            if frame == _ITEM_UNCHECKED:
                # pydicom sniffs each item of an explicit sequence: some writers use implicit.
                explicit = 0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B
                frame = stack[-1] = _ITEM_EXPLICIT if explicit else _ITEM_IMPLICIT
            header = 8
            vr = b""
            if frame == _ITEM_EXPLICIT and group != 0xFFFE:
                _, _, vr, length = explicit_header(buf, pos)
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        return pos
                    (length,) = u32(buf, pos + 8)
                    header = 12
                elif vr not in _SHORT_VRS and not b"AA" <= vr <= b"ZZ":
                    length = implicit_header(buf, pos)[2]
            if length == _UNDEFINED:
                stack.append(_SEQ_IMPLICIT if frame == _ITEM_IMPLICIT else _SEQ_EXPLICIT)
                pos += header
            else:
                pos += header + length
        return pos

    # -- pydicom for the odd cases ----------------------------------------------------------

    def _read_with_pydicom(self, *, complete: bool) -> None:
        """Read the buffer, from the current top-level element on, with pydicom; once.

        `complete`: the data set ended. Otherwise the cap was reached and the buffer may end
        in the middle of an element: what pydicom read before that counts.
        """
        max_tag = self._max_tag
        passed = False

        def stop_when(tag: int, vr: str | None, length: int) -> bool:
            nonlocal passed
            passed = tag > max_tag
            return passed

        wanted = self._wanted
        raw = self._raw
        elements = data_element_generator(
            BytesIO(self._buf), self._implicit, self._little, stop_when=stop_when
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for element in elements:
                    if element.tag not in wanted:
                        continue
                    value = element.value
                    if element.VR == "SQ" or not isinstance(value, bytes | None):
                        raw[element.tag] = ("SQ", b"")
                    else:
                        raw[element.tag] = (element.VR, value or b"")
        except Exception:  # pydicom on arbitrary bytes may raise anything; keep what it read
            pass
        if not (complete or passed):
            self._limited = not self._asked <= raw.keys()
        self._set_done()

    # -- values ----------------------------------------------------------------------------

    def _encodings(self) -> list[str]:
        """Python codecs for (0008,0005), as pydicom picks them."""
        entry = self._raw.get(SPECIFIC_CHARACTER_SET)
        if entry is None or not entry[1].strip(b"\0 "):
            return [default_encoding]
        terms = [term.strip(" \0") for term in entry[1].decode("latin-1").split("\\")]
        if len(terms) == 1 and terms[0] in python_encoding:
            return [python_encoding[terms[0]]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return convert_encodings(terms)
            except (LookupError, ValueError):  # garbage names, e.g. with NUL inside
                return [default_encoding]

    def _decode(self, tag: int, vr: str | None, raw: bytes, encodings: list[str]) -> str:
        """Text of one wanted value."""
        if vr is None or vr == "UN" or vr not in _KNOWN_VR_NAMES:
            # Implicit VR, or UN/unknown VR for a known tag: read as the dictionary says, as
            # pydicom does (config.replace_un_with_known_vr).
            known = _dictionary_vr(tag)
            if vr is None or known != "UN":
                vr = known
        if vr == "SQ" or not raw:
            return ""
        if vr in _TEXT_VRS:
            text = _decode_text(raw, vr, encodings if vr in _CHARSET_VRS else [default_encoding])
            if vr in _SINGLE_TEXT_VRS:
                return _clean(text, vr)
            return "\\".join(_clean(value, vr) for value in text.split("\\"))
        number = _NUMBERS.get(vr)
        if number is not None:
            code, size = number
            count = len(raw) // size
            numbers = struct.unpack(f"{self._endian}{code * count}", raw[: count * size])
            if vr == "AT":
                pairs = zip(numbers[::2], numbers[1::2], strict=True)
                return "\\".join(str(group << 16 | element) for group, element in pairs)
            return "\\".join(str(number) for number in numbers)
        # Binary (OB, OW, UN...): private tags often hold text, so give it as Latin-1.
        return _clean(raw.decode("latin-1"), vr)


class ScanBudget:
    """Bytes that messages hold while their routing tags are looked for, summed over every
    association of a listener and kept under one limit: `max_bytes` bounds what one message
    costs, this what all of them together may hold (`listeners.dicom.scan_budget`)."""

    def __init__(self) -> None:
        self.held = 0

    @contextmanager
    def lease(self, limit: int) -> Iterator[ScanLease]:
        """One message's share, under `limit` for the sum; all of it given back on exit."""
        lease = ScanLease(self, limit)
        try:
            yield lease
        finally:
            self.held -= lease.held
            lease.held = 0


class ScanLease:
    """What one message holds of a `ScanBudget` (made by `ScanBudget.lease`)."""

    def __init__(self, budget: ScanBudget, limit: int) -> None:
        self._budget = budget
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes; False, taking nothing, when the sum would pass the limit."""
        budget = self._budget
        if budget.held + size > self.limit:
            return False
        budget.held += size
        self.held += size
        return True


def _decode_text(raw: bytes, vr: str, encodings: list[str]) -> str:
    """Decode text like pydicom: one codec unless ISO 2022 escapes switch it."""
    if _ESC not in raw:
        try:
            return raw.decode(encodings[0])
        except (UnicodeError, LookupError):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if vr == "PN":
                # PS3.5 6.1.2.5.3: "=" separates the alphabetic/ideographic/phonetic groups.
                return "=".join(
                    decode_bytes(part, encodings, _PN_DELIMITERS) for part in raw.split(b"=")
                )
            return decode_bytes(raw, encodings, _TEXT_DELIMITERS)
        except (UnicodeError, LookupError):
            return raw.decode(default_encoding, errors="replace")
