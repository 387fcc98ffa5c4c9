"""HTTP scenarios against Orthanc, direct and through dicomlb: the REST API with
authentication off and on, httplib2 and curl (`Expect: 100-continue`, chunked uploads),
WebDAV, ZIP and DICOMweb STOW uploads, jobs and queries on two nodes."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from typing import Any

import pytest

from tests.dicomdata import make_small
from tests.differential.clients import (
    basic,
    exchange,
    httplib2_request,
    json_of,
    part10,
    post,
    request,
)
from tests.differential.conftest import DICOMWEB, PASSWORD, USER, Site, Target
from tests.differential.outcome import Masker, Outcome, digest
from tests.peers import have_dcmtk, have_orthanc

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_dcmtk() and have_orthanc()), reason="needs DCMTK and Orthanc"),
]

DICOM = {"Content-Type": "application/dicom"}


def summary(*exchanges: dict[str, Any]) -> str:
    return " → ".join(str(e["status"]) for e in exchanges)


def test_rest_system_authentication_off(differ: Any) -> None:
    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = exchange(mask, "GET", f"{target.http}/system")
        return Outcome(summary(answer), answer)

    differ("REST GET /system, authentication off", scenario)


def test_rest_authentication_on(differ: Any) -> None:
    """No credentials, wrong ones, right ones: 401 with its challenge, then 200."""

    def scenario(target: Target, mask: Masker) -> Outcome:
        url = f"{target.http_auth}/system"
        answers = [
            exchange(mask, "GET", url),
            exchange(mask, "GET", url, headers={"Authorization": basic(USER, "wrong")}),
            exchange(mask, "GET", url, headers={"Authorization": basic(USER, PASSWORD)}),
        ]
        return Outcome(summary(*answers), answers)

    differ("REST GET /system, authentication on (none, wrong, right)", scenario)


def test_rest_upload_and_download(differ: Any) -> None:
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        stored = exchange(mask, "POST", f"{target.http}/instances", data, DICOM)
        instance = stored["body"]["ID"]
        back = exchange(mask, "GET", f"{target.http}/instances/{instance}/file")
        head = exchange(mask, "HEAD", f"{target.http}/instances/{instance}/file")
        tags = exchange(mask, "GET", f"{target.http}/instances/{instance}/simplified-tags")
        answers = [stored, back, head, tags]
        same = back["body"] == digest(data)
        return Outcome(f"{summary(*answers)}, file identical: {same}", answers)

    differ("REST POST /instances, GET file / HEAD / tags", scenario)


def test_rest_compressed_answers(differ: Any) -> None:
    """Content-Encoding passes untouched: Orthanc's gzip and deflate answers byte for byte."""
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        # an answer without generated values, so that the compressed bytes are the same
        stored = exchange(mask, "POST", f"{target.http}/instances", data, DICOM)
        tags = f"{target.http}/instances/{stored['body']['ID']}/tags"
        answers = [
            exchange(mask, "GET", tags, headers={"Accept-Encoding": coding})
            for coding in ("gzip", "deflate", "identity")
        ]
        codings = [dict(a["headers"]).get("Content-Encoding", "none") for a in answers]
        return Outcome(f"{summary(*answers)}, encodings {codings}", answers)

    differ("REST answers with Accept-Encoding gzip / deflate / identity", scenario)


def test_httplib2_resends_with_credentials(differ: Any) -> None:
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        stored = httplib2_request(
            mask, "POST", f"{target.http_auth}/instances", data, DICOM, (USER, PASSWORD)
        )
        listed = httplib2_request(
            mask, "GET", f"{target.http_auth}/instances", credentials=(USER, PASSWORD)
        )
        return Outcome(summary(stored, listed), [stored, listed])

    differ("httplib2 POST /instances after a 401, authentication on", scenario)


def test_curl_expect_100_continue(differ: Any) -> None:
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = post(mask, f"{target.http}/instances", data, "-H", "Expect: 100-continue")
        return Outcome(" → ".join(r["status"] for r in answer["responses"]), answer)

    differ("curl POST /instances, Expect: 100-continue", scenario)


def test_curl_chunked_upload(differ: Any) -> None:
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = post(mask, f"{target.http}/instances", data, "-H", "Transfer-Encoding: chunked")
        return Outcome(" → ".join(r["status"] for r in answer["responses"]), answer)

    differ("curl POST /instances, chunked", scenario)


def test_curl_anyauth_expect_100_continue(differ: Any) -> None:
    """curl asks without credentials first; Orthanc's 401 comes instead of 100 Continue,
    the body is never sent, then curl resends with them."""
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = post(
            mask,
            f"{target.http_auth}/instances",
            data,
            *("--anyauth", "-u", f"{USER}:{PASSWORD}", "-H", "Expect: 100-continue"),
        )
        return Outcome(" → ".join(r["status"] for r in answer["responses"]), answer)

    differ("curl --anyauth POST /instances, Expect: 100-continue, authentication on", scenario)


def test_curl_chunked_unauthorised(differ: Any) -> None:
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = post(
            mask, f"{target.http_auth}/instances", data, "-H", "Transfer-Encoding: chunked"
        )
        return Outcome(" → ".join(r["status"] for r in answer["responses"]), answer)

    differ("curl POST /instances chunked without credentials, authentication on", scenario)


LOCK_BODY = b"""<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>differential</D:owner></D:lockinfo>"""


def test_webdav(differ: Any) -> None:
    """PROPFIND of the root and of a study folder, PUT into uploads, LOCK and UNLOCK."""
    instance = make_small(1)[0]
    data = part10(instance)

    def scenario(target: Target, mask: Masker) -> Outcome:
        dav = f"{target.http}/webdav"
        study = instance.StudyInstanceUID
        request(mask, "POST", f"{target.http}/instances", data)
        depth = {"Depth": "1"}
        answers = [
            exchange(mask, "PROPFIND", f"{dav}/", headers=depth),
            exchange(mask, "PROPFIND", f"{dav}/by-uids/", headers=depth),
            exchange(mask, "PROPFIND", f"{dav}/by-uids/{study}/", headers=depth),
            exchange(mask, "OPTIONS", f"{dav}/"),
        ]
        name = f"{dav}/uploads/differential.dcm"
        put = exchange(mask, "PUT", name, data, DICOM)
        lock_fields = {"Content-Type": "application/xml", "Timeout": "Second-60"}
        lock, _, fields = request(mask, "LOCK", name, LOCK_BODY, lock_fields)
        token = fields.get("Lock-Token", "")
        unlock = exchange(mask, "UNLOCK", name, headers={"Lock-Token": token})
        answers += [put, lock, unlock]
        return Outcome(summary(*answers), answers)

    differ("WebDAV PROPFIND, OPTIONS, PUT, LOCK, UNLOCK", scenario)


def test_zip_upload(differ: Any) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, ds in enumerate(make_small(3)):
            archive.writestr(f"dir/{n}.dcm", part10(ds))
        archive.writestr("readme.txt", "not DICOM")
    data = buffer.getvalue()

    def scenario(target: Target, mask: Masker) -> Outcome:
        answer = exchange(
            mask, "POST", f"{target.http}/instances", data, {"Content-Type": "application/zip"}
        )
        return Outcome(f"{answer['status']}, {len(answer['body'])} results", answer)

    differ("REST POST /instances with a ZIP", scenario)


@pytest.mark.skipif(not DICOMWEB.exists(), reason="needs the orthanc-dicomweb plugin")
def test_stow_multipart(differ: Any) -> None:
    boundary = uuid.uuid4().hex
    parts = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part10(ds)
        + b"\r\n"
        for ds in make_small(2, modality="MR")
    )  # fmt: skip
    data = parts + b"--" + boundary.encode() + b"--\r\n"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def scenario(target: Target, mask: Masker) -> Outcome:
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        stow = exchange(mask, "POST", f"{target.http}/dicom-web/studies", data, headers)
        accept = {"Accept": "application/json"}
        qido = exchange(mask, "GET", f"{target.http}/dicom-web/instances", headers=accept)
        return Outcome(summary(stow, qido), [stow, qido])

    differ("DICOMweb STOW multipart, then QIDO", scenario)


def upload_to_both(site: Site, data: bytes) -> str:
    """The same instance on node A and node B (directly); its patient's Orthanc ID."""
    patient = ""
    for node in (site.node_a, site.node_b):
        patient = json.loads(node.request("POST", "/instances", data))["ParentPatient"]
    return patient


def test_jobs_on_two_nodes(differ: Any, site: Site) -> None:
    """An asynchronous archive job, followed to the node that owns it, and its archive."""
    data = part10(make_small(1)[0])

    def scenario(target: Target, mask: Masker) -> Outcome:
        patient = upload_to_both(site, data)
        body = json.dumps({"Resources": [patient], "Asynchronous": True}).encode()
        created, raw, _ = request(mask, "POST", f"{target.http_nodes}/tools/create-archive", body)
        job_id = json.loads(raw)["ID"]
        deadline = time.monotonic() + 20
        while (job := json_of(f"{target.http_nodes}/jobs/{job_id}"))["State"] != "Success":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        job["EffectiveRuntime"] = mask.value("timestamp", job["EffectiveRuntime"])
        answers: list[Any] = [created, mask.json(job)]
        archive, raw, _ = request(mask, "GET", f"{target.http_nodes}/jobs/{job_id}/archive")
        # entries compared by name and content: the ZIP's own bytes carry the entries' times
        with zipfile.ZipFile(io.BytesIO(raw)) as zipped:
            archive["body"] = {name: digest(zipped.read(name)) for name in zipped.namelist()}
        answers.append(archive)
        return Outcome(f"{created['status']}, job {job['State']}, {archive['status']}", answers)

    differ("Orthanc job (create-archive) on two nodes", scenario)


def test_queries_on_two_nodes(differ: Any, site: Site) -> None:
    """A query to a modality (`/queries/{id}`), followed to the node that owns it."""
    instance = make_small(1)[0]
    data = part10(instance)

    def scenario(target: Target, mask: Masker) -> Outcome:
        site.orthanc.request("POST", "/instances", data)
        body = json.dumps({"Level": "Study", "Query": {"PatientID": instance.PatientID}}).encode()
        created, raw, _ = request(mask, "POST", f"{target.http_nodes}/modalities/pacs/query", body)
        query = json.loads(raw)["ID"]
        base = f"{target.http_nodes}/queries/{query}"
        answers = [
            created,
            exchange(mask, "GET", f"{base}/answers"),
            exchange(mask, "GET", f"{base}/answers/0/content?simplify"),
            exchange(mask, "GET", f"{base}/level"),
            exchange(mask, "GET", f"{base}/modality"),
            exchange(
                mask,
                "POST",
                f"{target.http_nodes}/tools/find",
                json.dumps({"Level": "Study", "Query": {}, "Expand": True}).encode(),
            ),
        ]
        return Outcome(summary(*answers), answers)

    differ("Orthanc query (/modalities/pacs/query, /queries/{id}) on two nodes", scenario)
