"""The bridge's pure parts (no loop, no socket): URLs, multipart framing, the Part-10 stream,
HTTP answer -> DIMSE status, and the config fields with their errors."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
from typing import Any

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomlb.bridge import core
from dicomlb.bridge.client import check_target
from dicomlb.config import ConfigError, build_snapshot
from dicomlb.dicom.part10 import dataset_offset, file_header
from dicomlb.snapshot import HttpAddress, HttpStoreConfig, StoreVia
from tests.dicomdata import make_small

REST = StoreVia.ORTHANC_REST
STOW = StoreVia.STOW_RS


def test_store_paths() -> None:
    address = HttpAddress(host="h", port=8042)
    assert core.store_path(address, HttpStoreConfig(via=REST)) == "/instances"
    assert core.store_path(address, HttpStoreConfig(via=STOW)) == "/dicom-web/studies"
    based = HttpAddress(host="h", port=443, scheme="https", path="/pacs")
    assert core.store_path(based, HttpStoreConfig(via=STOW, stow_path="/wado")) == (
        "/pacs/wado/studies"
    )
    assert str(based) == "https://h:443/pacs"
    assert str(address) == "http://h:8042"  # unchanged for plain addresses


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    body = b""
    for n, part in enumerate(parts):
        body += core.multipart_part(boundary, n == 0) + part
    return body + core.multipart_close(boundary)


@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    boundary=st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=8, max_size=40),
)
def test_multipart_framing_parses_back(parts: list[bytes], boundary: str) -> None:
    body = _multipart(boundary, parts)
    if any(f"--{boundary}".encode() in p for p in parts):
        return  # a random boundary never collides in practice (24 random base32 chars)
    head = f"Content-Type: {core.content_type(STOW, boundary)}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    got = [p.get_payload(decode=True) for p in message.iter_parts()]
    assert [p.get_content_type() for p in message.iter_parts()] == ["application/dicom"] * len(
        parts
    )
    assert got == parts


def test_part10_stream_reads_as_the_instance() -> None:
    ds = make_small(1)[0]
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    data = raw.getvalue()
    body = data[dataset_offset(data) :]
    stream = (
        file_header(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ds.file_meta.TransferSyntaxUID,
            source_ae="CT_1",
        )
        + body
    )
    back = pydicom.dcmread(io.BytesIO(stream))
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "CT_1"
    assert stream[dataset_offset(stream) :] == body


def _orthanc(status: str) -> bytes:
    return json.dumps({"ID": "x", "Path": "/instances/x", "Status": status}).encode()


def test_orthanc_rest_answers() -> None:
    for text in ("Success", "AlreadyStored"):
        assert core.map_answer(REST, 200, _orthanc(text), ["1"]) == [core.StoreOutcome(status=0)]
    (filtered,) = core.map_answer(REST, 200, _orthanc("FilteredOut"), ["1"])
    assert filtered.status == 0xC000 and filtered.comment == "Orthanc: FilteredOut"
    assert not filtered.stored and not filtered.backend_failed
    error = json.dumps(
        {"HttpError": "Bad Request", "HttpStatus": 400, "Message": "Bad file format"}
    ).encode()
    (bad,) = core.map_answer(REST, 400, error, ["1"])
    assert (bad.status, bad.comment) == (0xC000, "HTTP 400 Bad file format")


@pytest.mark.parametrize(
    ("status", "dimse", "backend_failed"),
    [
        (401, 0x0124, False),
        (403, 0x0124, False),
        (404, 0xC000, False),
        (409, 0xA900, False),
        (413, 0xA700, False),
        (429, 0xA700, True),
        (500, 0x0110, True),
        (502, 0x0110, True),
        (503, 0xA700, True),
        (302, 0x0110, False),
    ],
)
def test_http_failures(status: int, dimse: int, backend_failed: bool) -> None:
    (outcome,) = core.map_answer(REST, status, b"", ["1"])
    assert outcome.status == dimse and outcome.backend_failed is backend_failed
    assert outcome.comment.startswith(f"HTTP {status}")
    assert not outcome.stored


def test_comment_is_a_short_lo() -> None:
    (outcome,) = core.map_answer(REST, 500, ("x\\y\n" + "z" * 200).encode(), ["1"])
    assert (
        len(outcome.comment) <= 64 and "\\" not in outcome.comment and "\n" not in outcome.comment
    )
    failed = core.connection_failed("")
    assert failed.status == 0x0110 and failed.backend_failed and failed.comment


def _stow(failed: dict[str, int | None], referenced: dict[str, int | None]) -> bytes:
    def items(entries: dict[str, int | None], reason: str) -> list[dict[str, Any]]:
        out = []
        for uid, code in entries.items():
            item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
            if code is not None:
                item[reason] = {"vr": "US", "Value": [code]}
            out.append(item)
        return out

    data: dict[str, Any] = {}
    if failed:
        data["00081198"] = {"vr": "SQ", "Value": items(failed, "00081197")}
    if referenced:
        data["00081199"] = {"vr": "SQ", "Value": items(referenced, "00081196")}
    return json.dumps(data).encode()


def test_stow_answers_per_instance() -> None:
    assert core.map_answer(STOW, 200, _stow({}, {"1": None}), ["1"]) == [
        core.StoreOutcome(status=0)
    ]
    assert core.map_answer(STOW, 200, b"", ["1", "2"]) == [core.StoreOutcome(status=0)] * 2
    body = _stow({"2": 0xA700, "3": None}, {"1": None, "4": 0xB007})
    one, two, three, four, five = core.map_answer(STOW, 202, body, ["1", "2", "3", "4", "5"])
    assert one.status == 0 and one.stored
    assert two.status == 0xA700 and "0xA700" in two.comment and not two.stored
    assert three.status == 0xC000
    assert four.status == 0xB007 and four.stored
    assert five.status == 0x0110 and not five.stored  # not confirmed
    (conflict,) = core.map_answer(STOW, 409, _stow({"1": 0xA900}, {}), ["1"])
    assert conflict.status == 0xA900
    (plain_conflict,) = core.map_answer(STOW, 409, b"", ["1"])
    assert plain_conflict.status == 0xA900 and plain_conflict.comment == "HTTP 409 Conflict"


# ---------------------------------------------------------------- config


def config(backend: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "listeners": {"dicom": {"bind": "127.0.0.1:11112"}},
        "pools": {"pacs": {"backends": [{"name": "o", **backend}]}},
        "routes": [{"name": "all", "pool": "pacs", **route}],
    }


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_snapshot(data, source="lb.yaml")
    return str(info.value)


def test_store_via_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORTHANC_PASSWORD", "pw")
    snapshot = build_snapshot(
        config(
            {
                "http": "https://pacs.example:8443/orthanc/",
                "store_via": "stow_rs",
                "stow_path": "/dicom-web/",
                "stow_batch": 16,
                "auth": {"basic": {"user": "lb", "password_env": "ORTHANC_PASSWORD"}},
                "tls": {"verify": False},
            }
        ),
        source="<test>",
    )
    backend = snapshot.pools["pacs"].backends[0]
    assert backend.http == HttpAddress(
        host="pacs.example", port=8443, scheme="https", path="/orthanc"
    )
    store = backend.store
    assert store is not None and store.via is STOW and store.stow_batch == 16
    assert store.stow_path == "/dicom-web" and store.context is not None
    assert store.authorization == "Basic " + base64.b64encode(b"lb:pw").decode()
    assert "pw" not in repr(store)
    assert check_target(backend, None) == ("GET", "/orthanc/dicom-web/studies?limit=1", (200, 204))
    rest = (
        build_snapshot(
            config(
                {"http": "http://h:8042", "store_via": "orthanc_rest", "auth": {"bearer": "t0k"}}
            ),
            source="<test>",
        )
        .pools["pacs"]
        .backends[0]
    )
    assert rest.store is not None and rest.store.authorization == "Bearer t0k"
    assert rest.http is not None and rest.http.port == 8042
    assert check_target(rest, None) == ("GET", "/system", (200,))


def test_store_via_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PASSWORD", raising=False)
    text = errors(config({"http": "http://h:1", "store_via": "ftp"}))
    assert "pools.pacs.backends[0].store_via" in text
    text = errors(config({"dicom": "A@h:1", "store_via": "stow_rs"}))
    assert "pools.pacs.backends[0].store_via: store_via sends C-STOREs over HTTP" in text
    text = errors(
        config(
            {
                "http": "http://h:1",
                "store_via": "orthanc_rest",
                "auth": {"basic": {"user": "u", "password_env": "NOPE_PASSWORD"}},
            }
        )
    )
    assert "pools.pacs.backends[0].auth.basic.password_env: environment variable NOPE_PASSWORD" in (
        text
    )
    text = errors(config({"http": "http://h:1", "store_via": "stow_rs", "auth": {}}))
    assert "pools.pacs.backends[0].auth: give exactly one of" in text
    text = errors(config({"http": "http://h:1", "store_via": "orthanc_rest", "stow_batch": 4}))
    assert "pools.pacs.backends[0].stow_batch: stow_batch is used only with store_via: stow_rs" in (
        text
    )
    text = errors(config({"dicom": "A@h:1", "stow_path": "/x"}))
    assert "pools.pacs.backends[0].stow_path: stow_path is used only with store_via" in text
    # without store_via: paths stay refused (https is for the proxy too), a DICOM route
    # needs dicom addresses
    assert "pools.pacs.backends[0].http" not in errors(config({"http": "https://h:1"}))
    assert "has a path" in errors(config({"http": "http://h:1/x"}))
    text = errors(config({"http": "http://h:1"}))
    assert 'routes[0].pool: pool "pacs" has backends without a dicom address (o)' in text


def test_mixed_pools_and_spool_routes_are_valid(tmp_path: Any) -> None:
    data = config({"http": "http://h:1", "store_via": "orthanc_rest"}, ack="spool")
    data["pools"]["pacs"]["backends"].append({"name": "d", "dicom": "D@h:104"})
    data["pools"]["pacs"]["strategy"] = "affinity"
    data["spool"] = {"directory": str(tmp_path)}
    snapshot = build_snapshot(data, source="<test>")
    assert [b.store is not None for b in snapshot.pools["pacs"].backends] == [True, False]
