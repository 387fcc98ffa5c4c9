"""Routes that can never match: decided only where it can be, never guessed."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from dicomlb import cli
from dicomlb.config import build_snapshot
from dicomlb.http.routing import parse_http_match
from dicomlb.routing import parse_match
from dicomlb.shadowing import shadowed

# (earlier match, later match, whether the earlier one covers the later one)
DICOM_CASES: list[tuple[Any, Any, bool]] = [
    (None, {"Modality": "CT"}, True),  # a catch-all
    ({}, {"calling_aet": "CT_1"}, True),
    ({"Modality": "CT"}, {"Modality": "CT"}, True),  # equal values
    ({"Modality": ["CT", "PT"]}, {"Modality": ["PT", "CT"]}, True),  # equal lists
    ({"Modality": ["CT", "PT"]}, {"Modality": "CT"}, True),  # a subset
    ({"Modality": "CT"}, {"Modality": ["CT", "PT"]}, False),  # PT gets through
    ({"Modality": "CT"}, {"Modality": "CT", "calling_aet": "ER_1"}, True),  # narrower
    ({"Modality": "CT", "calling_aet": "ER_1"}, {"Modality": "CT"}, False),
    ({"Modality": "CT"}, {"(0008,0060)": {"in": ["CT"]}}, True),  # the same tag, spelled out
    ({"Modality": "CT"}, {"BodyPartExamined": "CT"}, False),  # another key
    ({"calling_aet": "CT_1"}, {"calling_aet": {"equals": "CT_1 "}}, True),  # padding
    ({"command": "C-STORE"}, {"command": "c_store"}, True),
    ({"sop_class": "CTImageStorage"}, {"sop_class": "1.2.840.10008.5.1.4.1.1.2"}, True),
    ({"source": "10.0.0.0/8"}, {"source": ["10.1.0.0/16", "10.2.3.4"]}, True),
    ({"source": "10.1.0.0/16"}, {"source": "10.0.0.0/8"}, False),
    ({"source": "10.0.0.0/8"}, {"source": "fd00::/8"}, False),
    ({"Modality": {"exists": True}}, {"Modality": "CT"}, True),
    ({"Modality": {"exists": True}}, {"Modality": {"absent": True}}, False),
    ({"Modality": {"absent": True}}, {"Modality": {"exists": False}}, True),
    # Regular expressions and globs: only the very same pattern is judged.
    ({"calling_aet": {"regex": "^CT"}}, {"calling_aet": {"regex": "^CT"}}, True),
    ({"calling_aet": {"regex": "^CT"}}, {"calling_aet": "CT_1"}, False),
    ({"calling_aet": {"regex": "^C"}}, {"calling_aet": {"regex": "^CT"}}, False),
    ({"calling_aet": {"glob": "CT*"}}, {"calling_aet": "CT_1"}, False),
    # any / not: never taken to shadow; a later one with them is only narrower.
    ({"any": [{"Modality": "CT"}, {"Modality": "PT"}]}, {"Modality": "CT"}, False),
    ({"not": {"Modality": "CT"}}, {"Modality": "MR"}, False),
    ({"Modality": "CT"}, {"Modality": "CT", "not": {"calling_aet": "X"}}, True),
    ({"all": [{"Modality": "CT"}]}, {"all": [{"Modality": "CT"}, {"calling_aet": "A"}]}, True),
]

HTTP_CASES: list[tuple[Any, Any, bool]] = [
    (None, {"path_prefix": "/a/"}, True),
    ({"host": "pacs.example.org"}, {"host": "PACS.example.org", "path_prefix": "/app/"}, True),
    ({"host": "pacs.example.org"}, {"host": "other.example.org", "path": "/"}, False),
    ({"host": "pacs.example.org"}, {"path_prefix": "/app/"}, False),  # any host
    ({"path_prefix": "/dicom-web/"}, {"path_prefix": "/dicom-web/studies/"}, True),
    ({"path_prefix": "/dicom-web/"}, {"path": "/dicom-web/studies"}, True),
    ({"path_prefix": "/dicom-web/studies/"}, {"path_prefix": "/dicom-web/"}, False),
    ({"path": "/a"}, {"path_prefix": "/a"}, False),
    (
        {"path_prefix": "/a/", "method": "GET"},
        {"path_prefix": "/a/b/", "method": "GET"},
        True,
    ),
    ({"path_prefix": "/a/", "method": "GET"}, {"path_prefix": "/a/b/", "method": "POST"}, False),
    ({"method": ["get", "HEAD"]}, {"method": "GET"}, True),
    ({"path_prefix": "/a b/"}, {"path": "/a%20b/x"}, True),  # both normalised
    ({"headers": {"X-Tenant": "a"}}, {"headers": {"x-tenant": "a"}, "path": "/"}, True),
    ({"headers": {"X-Tenant": {"exists": True}}}, {"headers": {"X-Tenant": "a"}}, True),
    ({"query": {"Expand": "1"}}, {"query": {"expand": "1"}}, False),  # names keep case
    ({"host": "*.pacs.local"}, {"host": "a.pacs.local"}, False),  # a glob
    ({"host": "*.pacs.local"}, {"host": "*.pacs.local", "path": "/x"}, True),
    ({"path_regex": "^/a"}, {"path_prefix": "/a"}, False),
    ({"path_regex": "^/a"}, {"path_regex": "^/a", "method": "GET"}, True),
]


@pytest.mark.parametrize(("earlier", "later", "covered"), DICOM_CASES)
def test_dicom_route_shadowing(earlier: Any, later: Any, covered: bool) -> None:
    routes = [
        ("first", parse_match(earlier, "m").conjunction),
        ("second", parse_match(later, "m").conjunction),
    ]
    assert shadowed(routes) == ([("second", "first")] if covered else [])


@pytest.mark.parametrize(("earlier", "later", "covered"), HTTP_CASES)
def test_http_route_shadowing(earlier: Any, later: Any, covered: bool) -> None:
    routes = [
        ("first", parse_http_match(earlier, "m").conjunction),
        ("second", parse_http_match(later, "m").conjunction),
    ]
    assert shadowed(routes) == ([("second", "first")] if covered else [])


def test_the_first_route_that_covers_is_named() -> None:
    routes = [
        ("ct", parse_match({"Modality": "CT"}, "m").conjunction),
        ("ct-or-pt", parse_match({"Modality": ["CT", "PT"]}, "m").conjunction),
        ("ct-er", parse_match({"Modality": "CT", "calling_aet": "ER"}, "m").conjunction),
        ("pt", parse_match({"Modality": "PT"}, "m").conjunction),
    ]
    assert shadowed(routes) == [("ct-er", "ct"), ("pt", "ct-or-pt")]


CONFIG: dict[str, Any] = {
    "listeners": {"dicom": {"bind": "127.0.0.1:11112"}, "http": {"bind": "127.0.0.1:8080"}},
    "pools": {
        "p": {"backends": [{"name": "a", "dicom": "A@10.0.0.5:104", "http": "http://10.0.0.5"}]}
    },
    "routes": [
        {"name": "ct", "match": {"Modality": "CT"}, "pool": "p"},
        {"name": "ct-er", "match": {"Modality": "CT", "calling_aet": "ER_1"}, "pool": "p"},
        {"name": "default", "pool": "p"},
    ],
    "http_routes": [
        {"name": "pacs", "match": {"host": "pacs.example.org"}, "pool": "p"},
        {"name": "pacs-app", "match": {"host": "pacs.example.org", "path": "/app"}, "pool": "p"},
        {"name": "default", "pool": "p"},
    ],
}


def test_the_snapshot_carries_the_warnings() -> None:
    assert build_snapshot(CONFIG).warnings == (
        'route "ct-er" can never match: route "ct" before it matches everything it matches',
        'http route "pacs-app" can never match: http route "pacs" before it matches '
        "everything it matches",
    )


def test_dicomlb_check_prints_the_warnings_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        "pools:\n  p: {backends: [{name: a, dicom: 'A@10.0.0.5:104'}]}\n"
        "routes:\n"
        "  - {name: ct, match: {Modality: [CT, PT]}, pool: p}\n"
        "  - {name: pt, match: {Modality: PT}, pool: p}\n"
    )
    # Earlier tests' garbage goes now, not mid-command: a pending task's destructor logs, and
    # that line would land in this test's stderr.
    gc.collect()
    capsys.readouterr()
    assert cli.main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    assert err == (
        'warning: route "pt" can never match: route "ct" before it matches everything it matches\n'
    )
