"""HeaderScanner against pydicom: every bundled test file, generated data sets, any split."""

from __future__ import annotations

import importlib.util
import itertools
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from io import BytesIO
from pathlib import Path
from types import FrameType
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from dicomlb.dicom import uids
from dicomlb.dicom.tags import (
    FALLBACK_MAX_BYTES,
    SPECIFIC_CHARACTER_SET,
    HeaderScanner,
    ScanBudget,
    tag_from_name,
    tag_name,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WANTED_KEYWORDS = (
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "PatientID",
    "PatientName",
    "BodyPartExamined",
    "InstitutionName",
    "Rows",
    "AccessionNumber",
    "StudyDate",
)
WANTED = frozenset(tag_from_name(keyword) for keyword in WANTED_KEYWORDS)
# Asking for (0008,0005) too checks it is read and reported like any other element.
WANTED_WITH_CHARSET = WANTED | {SPECIFIC_CHARACTER_SET}

MODALITY = 0x00080060
INSTITUTION_NAME = 0x00080080
PATIENT_ID = 0x00100020
ROWS = 0x00280010
STUDY_INSTANCE_UID = 0x0020000D

# Bundled files that are not Part-10 (no "DICM" preamble, or no transfer syntax): a P-DATA
# data set cannot be cut from them. A new odd file makes test_every_file_is_accounted_for fail.
NOT_PART10 = {
    "ExplVR_BigEndNoMeta.dcm": "no preamble or file meta",
    "ExplVR_LitEndNoMeta.dcm": "no preamble or file meta",
    "no_meta.dcm": "no preamble or file meta",
    "rtstruct.dcm": "no preamble or file meta",
    "OT-PAL-8-face.dcm": "no preamble or file meta",
    "meta_missing_tsyntax.dcm": "file meta has no Transfer Syntax UID",
}
# Non-DICOM files in the test data directories (READMEs, JSON models, dumps, a colour profile).
NOT_DICOM_SUFFIXES = {".txt", ".json", ".icc", ".dump", ".gz"}


# -- test data ------------------------------------------------------------------------------


def _bundled_files() -> list[Path]:
    """pydicom's own test and charset files, plus pydicom-data's if installed (no download)."""
    data = Path(pydicom.__file__).parent / "data"
    files = [p for p in (data / "test_files").rglob("*") if p.is_file()]
    files += [p for p in (data / "charset_files").iterdir() if p.is_file()]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package
    if spec is not None and spec.origin is not None:
        store = Path(spec.origin).parent / "data"
        if store.is_dir():
            files += [p for p in store.iterdir() if p.is_file()]
    return sorted(files)


def _is_candidate(path: Path) -> bool:
    """Anything that may be DICOM: DICOMDIR trees hold files without an extension."""
    return path.suffix not in NOT_DICOM_SUFFIXES and path.name != "README"


BUNDLED = [p for p in _bundled_files() if _is_candidate(p)]
PART10 = [p for p in BUNDLED if p.name not in NOT_PART10]


def _file_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _data_set(path: Path) -> tuple[str, bytes]:
    """Transfer syntax and the data set bytes (after the file meta) of a Part-10 file."""
    with path.open("rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        start = fp.tell()
    return str(meta.TransferSyntaxUID), path.read_bytes()[start:]


def _clean(text: str, vr: str) -> str:
    """The scanner's padding rule, applied to pydicom's values."""
    text = text.rstrip("\0 ")
    if vr == "PN":
        return text.rstrip("=").lstrip(" ")
    return text if vr == "UI" else text.lstrip(" ")


def expected_values(dataset: Dataset, wanted: Iterable[int]) -> dict[int, str]:
    """What the scanner should report, from pydicom's reading of the same data set."""
    out: dict[int, str] = {}
    for tag in wanted:
        if tag not in dataset:
            continue
        element = dataset[tag]
        vr, value = element.VR, element.value
        if vr == "SQ" or value is None or (isinstance(value, str | bytes | list) and not value):
            out[tag] = ""
            continue
        items = list(value) if isinstance(value, MultiValue) else [value]
        if vr in {"US", "SS", "UL", "SL", "SV", "UV", "AT"}:
            out[tag] = "\\".join(str(int(item)) for item in items)
        elif vr in {"FL", "FD"}:
            out[tag] = "\\".join(str(float(item)) for item in items)
        elif isinstance(value, bytes):
            out[tag] = _clean(value.decode("latin-1"), vr)
        else:
            out[tag] = "\\".join(_clean(str(item), vr) for item in items)
    return out


def scan(ts: str, data: bytes, wanted: Iterable[int] = WANTED) -> HeaderScanner:
    scanner = HeaderScanner(ts, wanted)
    scanner.feed(data)
    scanner.finish()
    assert scanner.done
    return scanner


def feed_split(scanner: HeaderScanner, data: bytes, cuts: Iterable[int]) -> dict[int, str]:
    """Feed `data` cut at `cuts` (any ints: clamped, sorted), then finish."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    for start, stop in itertools.pairwise(points):
        if scanner.feed(data[start:stop]):
            break
    scanner.finish()
    return scanner.values


def feed_reused(scanner: HeaderScanner, data: bytes, size: int) -> dict[int, str]:
    """Feed through one reused buffer, scribbled over after each feed, as a PDU reader would."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        buffer[: len(piece)] = piece
        done = scanner.feed(view[: len(piece)])
        buffer[:] = b"\xa5" * size
        if done:
            break
    scanner.finish()
    return scanner.values


# -- every bundled file ---------------------------------------------------------------------


def test_every_file_is_accounted_for() -> None:
    for path in BUNDLED:
        with path.open("rb") as fp:
            fp.seek(128)
            part10 = fp.read(4) == b"DICM"
        if path.name in NOT_PART10:
            continue
        assert part10, f"{_file_id(path)} has no DICM prefix; add it to NOT_PART10 with a reason"
    assert len(PART10) >= 100


@pytest.mark.parametrize("path", PART10, ids=_file_id)
def test_bundled_file_agrees_with_pydicom(path: Path) -> None:
    ts, data = _data_set(path)
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    expected = expected_values(reference, WANTED_WITH_CHARSET)

    assert scan(ts, data, WANTED_WITH_CHARSET).values == expected
    # Split at fixed offsets (around the first headers) and in odd-sized chunks.
    cuts = [1, 4, 6, 8, 11, 12, 100, 257, 1000, 4096]
    assert feed_split(HeaderScanner(ts, WANTED_WITH_CHARSET), data, cuts) == expected
    assert feed_reused(HeaderScanner(ts, WANTED_WITH_CHARSET), data, 61) == expected
    assert feed_reused(HeaderScanner(ts, WANTED_WITH_CHARSET), data, 4000) == expected


BYTE_BY_BYTE = [
    "CT_small.dcm",  # explicit VR LE
    "MR_small_implicit.dcm",  # implicit VR LE
    "MR_small_bigendian.dcm",  # explicit VR BE
    "image_dfl.dcm",  # deflated: compressed bytes one at a time
    "JPEG2000.dcm",  # encapsulated
    "chrSQEncoding.dcm",  # undefined-length sequences before the wanted tags
    "chrX1.dcm",  # UTF-8
    "chrJapMulti.dcm",  # ISO 2022 escapes in PN
]


@pytest.mark.parametrize("name", BYTE_BY_BYTE)
def test_byte_by_byte(name: str) -> None:
    path = next(p for p in PART10 if p.name == name)
    ts, data = _data_set(path)
    expected = expected_values(pydicom.dcmread(path, stop_before_pixels=True), WANTED)
    assert feed_reused(HeaderScanner(ts, WANTED), data, 1) == expected


def test_stops_past_the_highest_wanted_tag() -> None:
    path = next(p for p in PART10 if p.name == "CT_small.dcm")
    ts, data = _data_set(path)
    scanner = HeaderScanner(ts, [MODALITY])
    fed = 0
    while not scanner.feed(data[fed : fed + 16]):
        fed += 16
    assert fed + 16 < 1000  # Modality sits in the first few hundred bytes
    assert scanner.values == {MODALITY: "CT"}
    assert scanner.bytes_needed_hint == 0
    assert scanner.feed(b"ignored after done")


# -- generated data sets --------------------------------------------------------------------

ENCODINGS = {
    uids.IMPLICIT_VR_LE: (True, True),
    uids.EXPLICIT_VR_LE: (False, True),
    uids.DEFLATED_EXPLICIT_VR_LE: (False, True),
    uids.EXPLICIT_VR_BE: (False, False),
    "1.2.840.10008.1.2.4.50": (False, True),  # JPEG baseline: header as explicit VR LE
}


def encode(dataset: Dataset, ts: str) -> bytes:
    """The data set as a C-STORE would carry it in `ts`."""
    implicit, little = ENCODINGS[ts]
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, dataset)
    data = fp.getvalue()
    if ts == uids.DEFLATED_EXPLICIT_VR_LE:
        deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return data


def decode(data: bytes, ts: str) -> Dataset:
    implicit, little = ENCODINGS[ts]
    if ts == uids.DEFLATED_EXPLICIT_VR_LE:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(BytesIO(data), implicit, little)


def _text(alphabet: str, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=max_size)


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ "
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\")
_UID = st.lists(st.integers(0, 10**12), min_size=1, max_size=8).map(
    lambda parts: ".".join(str(part) for part in parts)
)


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    """Small data sets with the routing tags present or not, empty or not, multi-valued."""
    ds = Dataset()
    if draw(st.booleans()):
        ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192", ""]))
    if draw(st.booleans()):
        ds.ImageType = draw(st.lists(_text(_UPPER, 16), max_size=4))
    if draw(st.booleans()):
        ds.SOPClassUID = draw(_UID)
    if draw(st.booleans()):
        ds.StudyDate = draw(st.sampled_from(["", "20240229", "19991231"]))
    if draw(st.booleans()):
        ds.Modality = draw(_text(_UPPER, 16))
    if draw(st.booleans()):
        ds.InstitutionName = draw(_text(_PRINTABLE, 64))
    if draw(st.booleans()):
        # A sequence before most wanted tags, maybe undefined length, maybe nested.
        items = []
        for _ in range(draw(st.integers(0, 3))):
            item = Dataset()
            item.ReferencedSOPInstanceUID = draw(_UID)
            if draw(st.booleans()):
                inner = Dataset()
                inner.CodeValue = draw(_text(_UPPER, 16))
                item.ConceptNameCodeSequence = DicomSequence([inner])
                item["ConceptNameCodeSequence"].is_undefined_length = draw(st.booleans())
            item.is_undefined_length_sequence_item = draw(st.booleans())
            items.append(item)
        ds.ReferencedImageSequence = DicomSequence(items)
        ds["ReferencedImageSequence"].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.PatientName = draw(_text(_PRINTABLE.replace("=", ""), 40))
    if draw(st.booleans()):
        ds.PatientID = draw(_text(_PRINTABLE, 64))
    if draw(st.booleans()):
        ds.StudyInstanceUID = draw(_UID)
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        ds.PixelSpacing = ["0.5", "0.5"]
    return ds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dataset=datasets(),
    ts=st.sampled_from(sorted(ENCODINGS)),
    cuts=st.lists(st.integers(0, 1 << 10), max_size=8),
)
def test_generated_data_set_agrees_with_pydicom_at_any_split(
    dataset: Dataset, ts: str, cuts: list[int]
) -> None:
    data = encode(dataset, ts)
    expected = expected_values(decode(data, ts), WANTED)
    assert feed_split(HeaderScanner(ts, WANTED), data, cuts) == expected


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "name", "person", "codec"),
    [
        ("ISO_IR 100", "Hôpital Universitaire de Genève", "Müller^Jürgen", "latin-1"),
        ("ISO_IR 192", "Klinikum Köln, 北京协和医院", "王^小明=ワン^シャオミン", "utf-8"),
        ("ISO_IR 144", "Городская больница", "Иванов^Иван", "iso8859-5"),
    ],
)
@pytest.mark.parametrize("ts", [uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE])
def test_text_is_decoded_with_specific_character_set(
    charset: str, name: str, person: str, codec: str, ts: str
) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.Modality = "CT"
    ds.InstitutionName = name
    ds.PatientName = person
    data = encode(ds, ts)
    # Really encoded in that character set.
    assert name.encode(codec) in data
    assert person.encode(codec) in data

    values = scan(ts, data).values
    assert values[INSTITUTION_NAME] == name
    assert values[tag_from_name("PatientName")] == person
    assert SPECIFIC_CHARACTER_SET not in values  # read, but not asked for
    assert scan(ts, data, WANTED_WITH_CHARSET).values[SPECIFIC_CHARACTER_SET] == charset


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in {b"OB", b"SQ", b"UN", b"UT"}:
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _delimiter(tag: int) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, 0)


def test_binary_values_padding_and_sequences() -> None:
    data = b"".join(
        [
            _explicit(0x00080060, b"CS", b" MR "),
            _explicit(0x00080080, b"LO", b""),  # present but empty
            _explicit(0x00081140, b"SQ", b""),
            _explicit(0x00100020, b"LO", b"A\\ B \\C"),
            _explicit(0x0020000D, b"UI", b"1.2.3\0"),
            _explicit(0x00280010, b"US", struct.pack("<HH", 512, 7)),
            _explicit(0x00280030, b"FL", struct.pack("<f", 0.5)),
            _explicit(0x00280009, b"AT", struct.pack("<HH", 0x0018, 0x1063)),
            _explicit(0x00291010, b"OB", b"private text "),
        ]
    )
    wanted = {0x00080060, 0x00080080, 0x00081140, 0x00100020, 0x0020000D, 0x00280010}
    wanted |= {0x00280030, 0x00280009, 0x00291010, 0x00100010}
    assert scan(uids.EXPLICIT_VR_LE, data, wanted).values == {
        0x00080060: "MR",
        0x00080080: "",
        0x00081140: "",
        0x00100020: "A\\B\\C",
        0x0020000D: "1.2.3",
        0x00280010: "512\\7",
        0x00280030: "0.5",
        0x00280009: str(0x00181063),
        0x00291010: "private text",
    }


def test_malformed_sequence_falls_back_to_pydicom() -> None:
    # An item delimiter where an item should start: pydicom reads it as an empty item.
    sequence = (
        struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        + _delimiter(0xFFFEE00D)
        + _delimiter(0xFFFEE0DD)
    )
    data = b"".join(
        [
            _explicit(0x00080060, b"CS", b"CT"),
            sequence,
            _explicit(0x00100020, b"LO", b"PID1"),
            _explicit(0x0020000D, b"UI", b"1.2.3\0"),
            _explicit(0x00280010, b"US", b"\x00\x02"),
        ]
    )
    expected = expected_values(read_dataset(BytesIO(data), False, True), WANTED)
    assert expected[PATIENT_ID] == "PID1"
    assert scan(uids.EXPLICIT_VR_LE, data).values == expected
    for size in (1, 7, 30):
        assert feed_reused(HeaderScanner(uids.EXPLICIT_VR_LE, WANTED), data, size) == expected


def test_unreadable_sequence_keeps_what_came_before() -> None:
    sequence = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + b"\x01" * 40
    data = _explicit(0x00080060, b"CS", b"CT") + sequence
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED)
    assert not scanner.feed(data)
    scanner.finish()
    assert scanner.done
    assert scanner.values == {MODALITY: "CT"}


def test_truncated_data_set_resolves_at_finish() -> None:
    data = _explicit(0x00080060, b"CS", b"CT") + _explicit(0x00100020, b"LO", b"PID1")
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED)
    assert not scanner.feed(data[:-2])
    assert scanner.bytes_needed_hint == 2
    scanner.finish()
    assert scanner.values == {MODALITY: "CT"}


def test_gives_up_after_max_bytes() -> None:
    blob = _explicit(0x00091010, b"OB", bytes(5000))
    data = _explicit(0x00080060, b"CS", b"CT") + blob + _explicit(0x00100020, b"LO", b"X")
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED, max_bytes=4096)
    for start in range(0, 4100, 100):
        if scanner.feed(data[start : start + 100]):
            break
    assert scanner.done
    assert start == 4000  # gave up at the budget, before the end of the data set
    assert scanner.values == {MODALITY: "CT"}
    assert scanner.limited  # Patient ID and the rest may lie further on
    # Within budget a big element is skipped (not buffered) and the scan goes on.
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED)
    assert feed_reused(scanner, data, 100) == {MODALITY: "CT", PATIENT_ID: "X"}
    # Everything that came in one fragment is scanned whatever the budget.
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED, max_bytes=4096)
    assert scanner.feed(data)
    assert scanner.values == {MODALITY: "CT", PATIENT_ID: "X"}


# -- work per byte and the caps ------------------------------------------------------------

_SQ_UNDEFINED = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
_ITEM_UNDEFINED = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
_EMPTY_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
# An item delimiter where an item must start: the walker hands the rest to pydicom.
_ODD_SEQUENCE = _SQ_UNDEFINED + _delimiter(0xFFFEE00D)
_TINY = _explicit(0x00080100, b"SH", b"")  # 8 bytes: the most elements per byte

# Crafted data sets (no wanted tag follows, so nothing ends the scan early) of `size` bytes.
CRAFTED: dict[str, Callable[[int], bytes]] = {
    "pydicom, elements": lambda size: _repeat(_ODD_SEQUENCE + _ITEM_UNDEFINED, _TINY, size),
    "pydicom, items": lambda size: _repeat(_ODD_SEQUENCE, _EMPTY_ITEM, size),
    "walker, elements": lambda size: _repeat(_SQ_UNDEFINED + _ITEM_UNDEFINED, _TINY, size),
    "walker, items": lambda size: _repeat(_SQ_UNDEFINED, _EMPTY_ITEM, size),
    "walker, long wanted value": lambda size: _repeat(
        struct.pack("<HH2sHL", 0x0008, 0x0060, b"UN", 0, size), b"CT", size
    ),
}


def _repeat(prefix: bytes, unit: bytes, size: int) -> bytes:
    return (prefix + unit * (size // len(unit) + 1))[:size]


def _calls(work: Callable[[], Any]) -> int:
    """Python and C function calls made by `work`: CPU work counted, not timed."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("fragment", [512, 2048])
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_work_grows_linearly_with_the_data_set(kind: str, fragment: int) -> None:
    # 4x the bytes may cost 4x the work (plus slack), not 16x: a scanner that re-reads what
    # it has buffered on every fragment is quadratic.
    size = 8 * 1024
    work = []
    for n in (size, 4 * size):
        data, cuts = CRAFTED[kind](n), range(0, n, fragment)
        scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED)
        work.append(_calls(lambda: feed_split(scanner, data, cuts)))  # noqa: B023 (called here)
    assert work[1] < 6 * work[0], f"{work[0]} calls for {size} bytes, {work[1]} for 4x that"


def test_pydicom_reads_once_within_its_own_cap() -> None:
    data = CRAFTED["pydicom, elements"](4 * FALLBACK_MAX_BYTES)
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED)
    fed = 0
    while not scanner.feed(data[fed : fed + 4096]):
        fed += 4096
    assert fed < FALLBACK_MAX_BYTES + 4096
    assert scanner.limited
    assert scanner.values == {}


def test_limited_only_when_a_wanted_tag_may_still_come() -> None:
    blob = _explicit(0x00091010, b"OB", bytes(5000))
    modality = _explicit(0x00080060, b"CS", b"CT")
    # Everything wanted found before the cap.
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, [MODALITY], max_bytes=4096)
    feed_reused(scanner, modality + blob, 100)
    assert scanner.values == {MODALITY: "CT"}
    assert not scanner.limited
    # The data set ended before the cap: what is missing is not there.
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, WANTED, max_bytes=1 << 20)
    feed_reused(scanner, modality + blob, 100)
    assert not scanner.limited
    # Passed every wanted tag before the cap.
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, [MODALITY], max_bytes=4096)
    feed_reused(scanner, blob + _explicit(0x00100020, b"LO", b"X") + bytes(8000), 100)
    assert scanner.values == {}
    assert not scanner.limited


def test_pydicom_at_the_cap_keeps_what_it_read() -> None:
    # A malformed sequence, then the wanted tags, then a cut at the cap mid-element: what
    # pydicom read before the cut counts.
    data = (
        _ODD_SEQUENCE
        + _delimiter(0xFFFEE0DD)
        + _explicit(0x00100020, b"LO", b"PID1")
        + _explicit(0x0020000D, b"UI", b"1.2.3\0")
        + _explicit(0x00280010, b"US", b"\x00\x02")
        + _explicit(0x00291010, b"OB", bytes(8000))
    )
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, [PATIENT_ID, STUDY_INSTANCE_UID], max_bytes=4096)
    feed_reused(scanner, data, 512)
    assert scanner.values == {PATIENT_ID: "PID1", STUDY_INSTANCE_UID: "1.2.3"}
    assert not scanner.limited
    scanner = HeaderScanner(uids.EXPLICIT_VR_LE, [PATIENT_ID, ROWS, 0x00300010], max_bytes=4096)
    feed_reused(scanner, data, 512)
    assert scanner.values == {PATIENT_ID: "PID1", ROWS: "512"}
    assert scanner.limited  # (0030,0010) may come after the OB that the cap cut


def test_scan_budget_lease() -> None:
    budget = ScanBudget()
    with budget.lease(100) as first:
        assert first.take(60)
        with budget.lease(100) as second:
            assert not second.take(41)  # the sum would pass the limit: nothing taken
            assert second.take(40)
            assert budget.held == 100
        assert budget.held == 60
    assert budget.held == 0
    with pytest.raises(RuntimeError), budget.lease(100) as lease:
        assert lease.take(10)
        raise RuntimeError("the client went away")
    assert budget.held == 0  # given back on every exit


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("Modality", 0x00080060),
        ("StudyInstanceUID", 0x0020000D),
        ("(0008,0060)", 0x00080060),
        ("0008,0060", 0x00080060),
        ("00080060", 0x00080060),
        ("(0029,10ff)", 0x002910FF),
        (" BodyPartExamined ", 0x00180015),
    ],
)
def test_tag_from_name(name: str, tag: int) -> None:
    assert tag_from_name(name) == tag


@pytest.mark.parametrize("name", ["Modalty", "", "0008-0060", "(0008,006)", "12345", "Rows!"])
def test_tag_from_name_rejects_unknown(name: str) -> None:
    with pytest.raises(ValueError, match="is not a DICOM keyword"):
        tag_from_name(name)


def test_tag_name() -> None:
    assert tag_name(0x00080060) == "Modality"
    assert tag_name(0x00291010) == "(0029,1010)"
    assert tag_from_name(tag_name(0x0020000D)) == 0x0020000D


# -- garbage --------------------------------------------------------------------------------


def _check_garbage(ts: str, data: bytes, cuts: Sequence[int]) -> None:
    scanner = HeaderScanner(ts, WANTED)
    values = feed_split(scanner, data, cuts)
    assert scanner.done
    assert all(isinstance(value, str) for value in values.values())
    assert set(values) <= WANTED


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=600),
    ts=st.sampled_from(sorted(ENCODINGS)),
    cuts=st.lists(st.integers(0, 600), max_size=6),
)
@example(data=b"\x08\x00\x05\x00CS\x04\x00\x1b$B\x00", ts=uids.EXPLICIT_VR_LE, cuts=[])
def test_garbage_never_raises(data: bytes, ts: str, cuts: list[int]) -> None:
    _check_garbage(ts, data, cuts)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.integers(0, 400),
    noise=st.binary(min_size=1, max_size=64),
    at=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 600), max_size=4),
)
def test_corrupted_real_header_never_raises(
    prefix: int, noise: bytes, at: int, cuts: list[int]
) -> None:
    # Random bytes alone rarely look like elements; damage a real header instead.
    ts, data = CT_SMALL
    damaged = data[:at] + noise + data[at + len(noise) : at + len(noise) + prefix + 600]
    _check_garbage(ts, damaged, cuts)


CT_SMALL = _data_set(next(p for p in PART10 if p.name == "CT_small.dcm"))


@pytest.mark.parametrize(
    ("encoding", "like"),
    [
        (uids.Encoding.IMPLICIT_LITTLE, uids.IMPLICIT_VR_LE),
        (uids.Encoding.EXPLICIT_BIG, uids.EXPLICIT_VR_BE),
        (uids.Encoding.DEFLATED, uids.DEFLATED_EXPLICIT_VR_LE),
        (uids.Encoding.ENCAPSULATED, "1.2.840.10008.1.2.4.50"),
    ],
)
def test_a_declared_encoding_reads_a_private_syntax(encoding: uids.Encoding, like: str) -> None:
    """A private transfer syntax UID declared in the config (`encoding`) is read as declared;
    undeclared, any UID that is not a standard one is read as encapsulated."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.Modality = "CT"
    dataset.StudyInstanceUID = "1.2.3.4"
    data = encode(dataset, like)
    private = "1.2.826.0.1.3680043.9.9999.7"
    scanner = HeaderScanner(private, WANTED, encoding=encoding)
    scanner.feed(data)
    scanner.finish()
    assert scanner.values[0x00080060] == "CT"
    assert scanner.values[0x0020000D] == "1.2.3.4"
    undeclared = scan(private, encode(dataset, "1.2.840.10008.1.2.4.50"))
    assert undeclared.values[0x00080060] == "CT"
