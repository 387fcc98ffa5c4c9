"""routing.py: compiled match predicates and first-match-wins selection."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomlb.http.routing import parse_http_match
from dicomlb.routing import MatchError, Router, compile_match, parse_match, uid_name
from dicomlb.snapshot import (
    HealthConfig,
    MessageFacts,
    PoolConfig,
    RouteConfig,
    Strategy,
)

MODALITY = 0x00080060
IMAGE_TYPE = 0x00080008
PATIENT_ID = 0x00100020
STATION = 0x00081010
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def facts(
    *,
    calling_aet: str = "CT_SCANNER",
    called_aet: str = "DICOMLB",
    peer_ip: str = "10.1.2.3",
    command: str = "C-STORE",
    sop_class_uid: str = CT_STORAGE,
    **tags: str,
) -> MessageFacts:
    table = {
        "Modality": MODALITY,
        "ImageType": IMAGE_TYPE,
        "PatientID": PATIENT_ID,
        "StationName": STATION,
    }
    return MessageFacts(
        calling_aet=calling_aet,
        called_aet=called_aet,
        peer_ip=peer_ip,
        command=command,
        sop_class_uid=sop_class_uid,
        tags={table[k]: v for k, v in tags.items()},
    )


CT = facts(Modality="CT", ImageType="ORIGINAL\\PRIMARY\\AXIAL", PatientID="P1")
MR = facts(
    calling_aet="MR_1 ",
    peer_ip="192.168.5.9",
    sop_class_uid=MR_STORAGE,
    Modality="MR",
    PatientID="P2",
)
ECHO = facts(command="C-ECHO", sop_class_uid="1.2.840.10008.1.1", calling_aet="WS")
V6 = facts(peer_ip="fd00::42", Modality="CT")
MAPPED = facts(peer_ip="::ffff:10.9.8.7", Modality="US")
NAMES = {"CT": CT, "MR": MR, "ECHO": ECHO, "V6": V6, "MAPPED": MAPPED}

# (match, the facts (by name) it should hold for)
CASES: list[tuple[Any, set[str]]] = [
    # scalar, list, equals, in
    ({"Modality": "CT"}, {"CT", "V6"}),
    ({"Modality": ["CT", "MR"]}, {"CT", "MR", "V6"}),
    ({"Modality": {"equals": "MR"}}, {"MR"}),
    ({"Modality": {"in": ["US", "MR"]}}, {"MR", "MAPPED"}),
    ({"(0008,0060)": "CT"}, {"CT", "V6"}),
    ({"0008,0060": "US"}, {"MAPPED"}),
    ({"00080060": "MR"}, {"MR"}),
    # regex (search) and glob (whole value)
    ({"PatientID": {"regex": "^P[12]$"}}, {"CT", "MR"}),
    ({"PatientID": {"regex": "2"}}, {"MR"}),
    ({"calling_aet": {"regex": "^CT_"}}, {"CT", "V6", "MAPPED"}),
    ({"calling_aet": {"glob": "*_?"}}, {"MR"}),
    ({"Modality": {"glob": "?R"}}, {"MR"}),
    ({"Modality": {"glob": "C*"}}, {"CT", "V6"}),
    # exists / absent
    ({"PatientID": {"exists": True}}, {"CT", "MR"}),
    ({"PatientID": {"exists": False}}, {"ECHO", "V6", "MAPPED"}),
    ({"PatientID": {"absent": True}}, {"ECHO", "V6", "MAPPED"}),
    ({"PatientID": {"absent": False}}, {"CT", "MR"}),
    ({"Modality": {"absent": True}}, {"ECHO"}),
    # a missing tag: equals / in / regex / glob are false
    ({"StationName": "X"}, set()),
    ({"StationName": {"regex": ".*"}}, set()),
    ({"StationName": {"glob": "*"}}, set()),
    ({"StationName": {"in": ["A", "B"]}}, set()),
    # multi-valued tags: whole value or any one component
    ({"ImageType": "PRIMARY"}, {"CT"}),
    ({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, {"CT"}),
    ({"ImageType": {"regex": "^AX"}}, {"CT"}),
    ({"ImageType": {"regex": "PRIMARY\\\\AX"}}, {"CT"}),
    ({"ImageType": {"glob": "DERIVED"}}, set()),
    ({"ImageType": {"in": ["LOCALIZER", "ORIGINAL"]}}, {"CT"}),
    # AE titles: padding ignored
    ({"calling_aet": "MR_1"}, {"MR"}),
    ({"calling_aet": " CT_SCANNER "}, {"CT", "V6", "MAPPED"}),
    ({"called_aet": "DICOMLB"}, set(NAMES)),
    ({"called_aet": {"in": ["OTHER", "X"]}}, set()),
    # source: addresses and networks, IPv4 / IPv6, v4-mapped
    ({"source": "10.0.0.0/8"}, {"CT", "ECHO", "MAPPED"}),
    ({"source": "10.1.2.3"}, {"CT", "ECHO"}),
    ({"source": ["192.168.0.0/16", "fd00::/8"]}, {"MR", "V6"}),
    ({"source": "fd00::42"}, {"V6"}),
    ({"source": {"in": ["10.9.0.0/16"]}}, {"MAPPED"}),
    ({"source": {"equals": "192.168.5.9"}}, {"MR"}),
    # sop_class: UID or keyword
    ({"sop_class": "CTImageStorage"}, {"CT", "V6", "MAPPED"}),
    ({"sop_class": MR_STORAGE}, {"MR"}),
    ({"sop_class": ["Verification", "MRImageStorage"]}, {"MR", "ECHO"}),
    ({"sop_class": {"regex": r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\."}}, {"CT", "MR", "V6", "MAPPED"}),
    # command
    ({"command": "C-ECHO"}, {"ECHO"}),
    ({"command": ["c-store", "C_FIND"]}, {"CT", "MR", "V6", "MAPPED"}),
    # keys are ANDed; all / any / not
    ({"Modality": "CT", "source": "10.0.0.0/8"}, {"CT"}),
    ({"all": [{"Modality": "CT"}, {"PatientID": {"exists": True}}]}, {"CT"}),
    ({"any": [{"Modality": "MR"}, {"command": "C-ECHO"}]}, {"MR", "ECHO"}),
    ({"not": {"Modality": "CT"}}, {"MR", "ECHO", "MAPPED"}),
    ({"not": {"any": [{"Modality": "CT"}, {"Modality": "MR"}]}}, {"ECHO", "MAPPED"}),
    (
        {
            "any": [
                {"all": [{"Modality": "CT"}, {"not": {"source": "fd00::/8"}}]},
                {"not": {"Modality": {"exists": True}}},
            ]
        },
        {"CT", "ECHO"},
    ),
    ({"all": [{"any": [{"Modality": "CT"}]}], "not": {"PatientID": "P1"}}, {"V6"}),
    # empty: everything
    (None, set(NAMES)),
    ({}, set(NAMES)),
]


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[repr(c[0]) for c in CASES])
def test_match(spec: Any, expected: set[str]) -> None:
    predicate = compile_match(spec, "routes[0].match")
    assert {name for name, f in NAMES.items() if predicate(f)} == expected


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"Modality": ["CT", "PT"], "calling_aet": {"regex": "^CT_"}},
         "Modality in [CT, PT] and calling_aet ~ /^CT_/"),
        ({"Modality": "CT"}, "Modality = CT"),
        ({"Modality": ["CT"]}, "Modality = CT"),
        ({"(0010,0020)": {"glob": "P*"}}, "PatientID like P*"),
        ({"(0009,0010)": {"exists": True}}, "(0009,0010) exists"),
        ({"StationName": {"absent": True}}, "StationName absent"),
        ({"StationName": "CT 1"}, 'StationName = "CT 1"'),
        ({"source": ["10.0.0.0/8", "::1"]}, "source in [10.0.0.0/8, ::1]"),
        ({"sop_class": "CTImageStorage"}, "sop_class = CTImageStorage"),
        ({"sop_class": CT_STORAGE}, f"sop_class = {CT_STORAGE}"),
        ({"sop_class": ["MRImageStorage", CT_STORAGE]},
         f"sop_class in [MRImageStorage, {CT_STORAGE}]"),
        ({"command": "c-echo"}, "command = C-ECHO"),
        ({"any": [{"Modality": "CT"}, {"Modality": "MR"}], "command": "C-STORE"},
         "(Modality = CT or Modality = MR) and command = C-STORE"),
        ({"not": {"Modality": "CT", "command": "C-STORE"}},
         "not (Modality = CT and command = C-STORE)"),
        ({"not": {"Modality": "CT"}}, "not Modality = CT"),
        ({"any": [{"all": [{"Modality": "CT"}, {"command": "C-STORE"}]}, {"Modality": "MR"}]},
         "Modality = CT and command = C-STORE or Modality = MR"),
        (None, "everything"),
    ],
)  # fmt: skip
def test_match_text(spec: Any, text: str) -> None:
    assert parse_match(spec, "m").text == text


def test_match_reports_the_tags_it_reads() -> None:
    match = parse_match(
        {
            "Modality": "CT",
            "calling_aet": "X",
            "any": [{"not": {"(0010,0020)": {"exists": True}}}, {"ImageType": "A"}],
        },
        "m",
    )
    assert match.tags == frozenset({MODALITY, PATIENT_ID, IMAGE_TYPE})
    assert not match.matches_everything
    assert parse_match(None, "m").matches_everything


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            {"Modality": {"regex": "[CT"}},
            'm.Modality.regex: "[CT" is not a valid regular expression (unterminated character '
            "set at position 0); fix the pattern",
        ),
        (
            {"Modality": {"regex": 5}},
            "m.Modality.regex: 5 is not a regular expression; put it in quotes",
        ),
        (
            {"Modality": {"like": "C*"}},
            'm.Modality.like: "like" is not an operator; use one of equals, in, regex, glob, '
            "exists, absent",
        ),
        (
            {"Modality": {"equal": "CT"}},
            'm.Modality.equal: "equal" is not an operator; did you mean equals? use one of equals, '
            "in, regex, glob, exists, absent",
        ),
        (
            {"Modality": {}},
            "m.Modality: has 0 operators (); use exactly one of equals, in, regex, glob, exists, "
            "absent, and all: [...] to combine conditions",
        ),
        ({"Modality": {"in": []}}, "m.Modality.in: [] is not a non-empty list; write [A, B]"),
        ({"Modality": {"in": "CT"}}, 'm.Modality.in: "CT" is not a non-empty list; write [A, B]'),
        (
            {"Modality": {"exists": "yes"}},
            'm.Modality.exists: exists takes true or false, not "yes"',
        ),
        (
            {"Modality": True},
            "m.Modality: true is not text; put it in quotes so YAML keeps it as written",
        ),
        ({"Modality": ["CT", None]}, "m.Modality[1]: is empty; write a value"),
        (
            {"callingaet": "X"},
            'm.callingaet: "callingaet" is not a match key or DICOM keyword; did you mean '
            "calling_aet? use one of calling_aet, called_aet, source, sop_class, command, all, "
            "any, not, a DICOM keyword or (gggg,eeee)",
        ),
        (
            {"all": {"Modality": "CT"}},
            "m.all: all takes a non-empty list of matches; write all: [{Modality: CT}, ...]",
        ),
        (
            {"any": []},
            "m.any: any takes a non-empty list of matches; write any: [{Modality: CT}, ...]",
        ),
        (
            {"any": [{"Modality": "CT"}, "MR"]},
            'm.any[1]: "MR" is not a mapping of conditions; write e.g. {Modality: CT}',
        ),
        ({"not": {}}, "m.not: is empty; write at least one condition, e.g. {Modality: CT}"),
        (
            {"not": [{"Modality": "CT"}]},
            "m.not: [{'Modality': 'CT'}] is not a mapping of conditions; write e.g. {Modality: CT}",
        ),
        ("Modality", 'm: "Modality" is not a mapping of conditions; write e.g. {Modality: CT}'),
        (
            {"source": "10.0.0.300"},
            'm.source: "10.0.0.300" is not an IP address or network; write e.g. 10.0.0.5, '
            "10.0.0.0/8 or fd00::/8",
        ),
        (
            {"source": ["10.0.0.0/8", 10]},
            "m.source[1]: 10 is not an IP address or network; write e.g. 10.0.0.0/8 or ::1",
        ),
        (
            {"source": []},
            "m.source: is an empty list; write an address or network, e.g. 10.0.0.0/8",
        ),
        (
            {"sop_class": "CTImage"},
            'm.sop_class: "CTImage" is neither a UID nor a UID keyword; did you mean '
            "CTImageStorage? write a UID such as 1.2.840.10008.5.1.4.1.1.2 or a keyword such as "
            "CTImageStorage",
        ),
        (
            {"command": "STORE"},
            'm.command: "STORE" is not a DIMSE command; use one of C-STORE, C-ECHO, C-FIND, '
            "C-MOVE, C-GET, C-CANCEL, N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE",
        ),
        ({5: "x"}, "m.5: key 5 is not text; write a match key or DICOM keyword"),
    ],
)
def test_match_errors_name_the_field(spec: Any, error: str) -> None:
    with pytest.raises(MatchError) as caught:
        compile_match(spec, "m")
    assert str(caught.value) == error
    assert isinstance(caught.value, ValueError)


def test_a_regex_is_a_search() -> None:
    assert compile_match({"PatientID": {"regex": "3"}}, "m")(facts(PatientID="123"))
    assert not compile_match({"PatientID": {"glob": "3"}}, "m")(facts(PatientID="123"))


def test_tag_values_are_compared_without_padding() -> None:
    predicate = compile_match({"Modality": "CT"}, "m")
    assert predicate(facts(Modality="CT "))
    assert predicate(facts(Modality="CT\x00"))
    assert compile_match({"ImageType": "PRIMARY"}, "m")(facts(ImageType="ORIGINAL\\PRIMARY "))


def test_an_empty_tag_exists() -> None:
    assert compile_match({"PatientID": {"exists": True}}, "m")(facts(PatientID=""))
    assert not compile_match({"PatientID": {"absent": True}}, "m")(facts(PatientID=""))


def test_an_unparsable_peer_is_in_no_network() -> None:
    assert not compile_match({"source": "0.0.0.0/0"}, "m")(facts(peer_ip=""))
    assert not compile_match({"source": "::/0"}, "m")(facts(peer_ip="10.0.0.1"))


# --- Router ---------------------------------------------------------------------------------


def _route(name: str, spec: Any) -> RouteConfig:
    pool = PoolConfig(
        name=f"pool-{name}",
        strategy=Strategy.ROUND_ROBIN,
        key=None,
        key_name=None,
        health=HealthConfig(),
        backends=(),
    )
    match = parse_match(spec, name)
    return RouteConfig(
        name=name, match=match.predicate, pool=pool, match_text=match.text, partial=match.partial
    )


def test_first_match_wins_in_file_order() -> None:
    router = Router(
        [
            _route("ct-from-10", {"Modality": "CT", "source": "10.0.0.0/8"}),
            _route("ct", {"Modality": "CT"}),
            _route("echo", {"command": "C-ECHO"}),
            _route("default", None),
        ]
    )
    assert [r.name for r in router.routes] == ["ct-from-10", "ct", "echo", "default"]
    select = router.select
    assert select(CT).name == "ct-from-10"  # type: ignore[union-attr]
    assert select(V6).name == "ct"  # type: ignore[union-attr]
    assert select(ECHO).name == "echo"  # type: ignore[union-attr]
    assert select(MR).name == "default"  # type: ignore[union-attr]


def test_no_route_matches() -> None:
    router = Router([_route("ct", {"Modality": "CT"})])
    assert router.select(MR) is None
    assert Router([]).select(CT) is None


def test_candidates_are_the_routes_the_association_does_not_rule_out() -> None:
    router = Router(
        [
            _route("ct-room", {"calling_aet": "CT_ROOM"}),
            _route("by-tag", {"Modality": "MR"}),
            _route("lan", {"source": "10.0.0.0/8", "not": {"called_aet": "ARCHIVE"}}),
            _route("either", {"any": [{"calling_aet": "WS"}, {"command": "C-FIND"}]}),
            _route("rest", None),
            _route("never", {"calling_aet": "X"}),
        ]
    )

    def names(**association: str) -> list[str]:
        return [r.name for r in router.candidates(facts(**association))]

    # decided by the calling AE: the first route, the rest are never reached
    assert names(calling_aet="CT_ROOM") == ["ct-room"]
    # the tag route depends on the data set; the lan route is decided (and ends the list)
    assert names(calling_aet="WS") == ["by-tag", "lan"]
    assert names(calling_aet="WS", called_aet="ARCHIVE") == ["by-tag", "either"]
    assert names(peer_ip="192.168.1.1") == ["by-tag", "either", "rest"]


# --- properties -----------------------------------------------------------------------------

SPECS = [
    {"calling_aet": "CT_1"},
    {"calling_aet": {"glob": "CT_*"}, "Modality": "CT"},
    {"any": [{"source": "10.0.0.0/8"}, {"sop_class": CT_STORAGE}]},
    {"not": {"all": [{"called_aet": "DICOMLB"}, {"command": "C-STORE"}]}},
    {"not": {"any": [{"calling_aet": "MR_1"}, {"PatientID": {"exists": True}}]}},
]


@given(
    spec=st.sampled_from(SPECS),
    calling=st.sampled_from(["CT_1", "CT_2", "MR_1"]),
    called=st.sampled_from(["DICOMLB", "ARCHIVE"]),
    ip=st.sampled_from(["10.1.1.1", "192.168.0.1"]),
    command=st.sampled_from(["C-STORE", "C-FIND"]),
    sop_class=st.sampled_from([CT_STORAGE, MR_STORAGE]),
    modality=st.sampled_from(["CT", "MR", None]),
)
def test_a_decided_partial_match_agrees_with_every_message(
    spec: Any,
    calling: str,
    called: str,
    ip: str,
    command: str,
    sop_class: str,
    modality: str | None,
) -> None:
    match = parse_match(spec, "m")
    tags = {"Modality": modality, "PatientID": "P1"} if modality else {}
    message = facts(
        calling_aet=calling,
        called_aet=called,
        peer_ip=ip,
        command=command,
        sop_class_uid=sop_class,
        **tags,
    )
    association = facts(calling_aet=calling, called_aet=called, peer_ip=ip, command="")
    decided = match.partial(association)
    assert decided is None or decided == match.predicate(message)


_WORDS = st.text(alphabet="ABCT_12", min_size=0, max_size=6)
_GLOBS = st.text(alphabet="ABCT_12*?", min_size=0, max_size=6)


def _glob_as_regex(glob: str) -> str:
    return (
        "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob) + "$"
    )


@given(glob=_GLOBS, value=_WORDS)
def test_glob_agrees_with_the_equivalent_regex(glob: str, value: str) -> None:
    f = facts(StationName=value)
    by_glob = compile_match({"StationName": {"glob": glob}}, "m")(f)
    by_regex = compile_match({"StationName": {"regex": _glob_as_regex(glob)}}, "m")(f)
    assert by_glob == by_regex


@given(choices=st.lists(_WORDS.filter(bool), min_size=1, max_size=4), value=_WORDS)
def test_a_list_is_in_and_any_of_equals(choices: list[str], value: str) -> None:
    f = facts(StationName=value)
    as_list = compile_match({"StationName": choices}, "m")(f)
    as_in = compile_match({"StationName": {"in": choices}}, "m")(f)
    as_any = compile_match({"any": [{"StationName": c} for c in choices]}, "m")(f)
    assert as_list == as_in == as_any == (value in choices)


@given(value=_WORDS, expected=_WORDS)
def test_not_negates(value: str, expected: str) -> None:
    f = facts(StationName=value)
    spec = {"StationName": expected}
    assert compile_match({"not": spec}, "m")(f) is not compile_match(spec, "m")(f)
    assert compile_match({"not": {"not": spec}}, "m")(f) is compile_match(spec, "m")(f)


@given(parts=st.lists(_WORDS.filter(lambda w: w.strip() != ""), min_size=1, max_size=4))
def test_every_component_of_a_multi_valued_tag_matches(parts: list[str]) -> None:
    f = facts(ImageType="\\".join(parts))
    for part in parts:
        assert compile_match({"ImageType": part}, "m")(f)


def test_a_uid_has_its_ps36_name() -> None:
    assert uid_name(CT_STORAGE) == "CT Image Storage"
    assert uid_name("1.2.3.4") is None


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"path_prefix": "/dicom-web/"}, "path_prefix: /dicom-web/"),
        ({"path_prefix": ["/a/", "/b/"], "method": "GET"}, "path_prefix: [/a/, /b/], method: GET"),
        ({"headers": {"X-Tenant": "north"}}, "headers: {X-Tenant: north}"),
        ({"query": {"q": {"regex": "^a:b"}}}, 'query: {q: {regex: "^a:b"}}'),
        ({"host": "*.example.org"}, 'host: "*.example.org"'),
        ({"path_regex": "^/api/(v1|v2)/"}, 'path_regex: "^/api/(v1|v2)/"'),
        (None, "everything"),
    ],
)  # fmt: skip
def test_http_match_text_reads_as_written(spec: Any, text: str) -> None:
    assert parse_http_match(spec, "http_routes[0].match").text == text
