"""HTTP clients for the differential scenarios, each reporting what it saw as plain data:
status, response fields in order (masked), body (masked JSON or text, else a digest)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httplib2
from pydicom.dataset import Dataset

from tests.differential.outcome import Masker, digest
from tests.peers import LOOPBACK

TEXTUAL = ("json", "xml", "text", "html")


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def body(data: bytes, content_type: str, mask: Masker) -> Any:
    """A response body as compared: decoded JSON, masked text, or a digest of the bytes."""
    if "json" in content_type and data.strip():
        try:
            return mask.json(json.loads(data))
        except ValueError:
            pass
    if any(kind in content_type for kind in TEXTUAL):
        return mask.text(data.decode("utf-8", errors="replace"))
    return digest(data) if data else ""


def exchange(
    mask: Masker,
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One request on its own connection (http.client): status, fields, body."""
    return request(mask, method, url, data, headers)[0]


def post(mask: Masker, url: str, data: bytes, *options: str) -> dict[str, Any]:
    """`curl` POSTing `data` (a DICOM file) to `url`, with more `options` before the URL."""
    return curl(mask, ["-X", "POST", "-H", "Content-Type: application/dicom", *options, url], data)


def request(
    mask: Masker,
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], bytes, dict[str, str]]:
    """`exchange`, and the body and fields as received (for the IDs and tokens a scenario
    goes on with)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=data, headers=dict(headers or {}))
        response = conn.getresponse()
        raw = response.read()
        fields = response.getheaders()
    finally:
        conn.close()
    content_type = response.headers.get("Content-Type", "")
    seen = {"status": response.status, "headers": mask.headers(fields)}
    if response.headers.get("Content-Encoding"):  # compressed: the bytes as they came
        seen["body"] = digest(raw)
    else:
        seen["body"] = body(raw, content_type, mask)
    return seen, raw, dict(fields)


def json_of(url: str) -> Any:
    """GET a JSON answer, unmasked."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    assert response.status == 200, f"GET {url}: {response.status} {raw[:300]!r}"
    return json.loads(raw)


def curl(mask: Masker, args: list[str], data: bytes | None = None) -> dict[str, Any]:
    """curl (HTTP/1.1) with `args` (method, fields, URL); `data` is sent from a file
    (``--data-binary @file``). Every response head it read, 1xx ones included, and the
    body."""
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        heads, out, upload = Path(tmp, "heads"), Path(tmp, "body"), Path(tmp, "upload")
        extra = []
        if data is not None:
            upload.write_bytes(data)
            extra = ["--data-binary", f"@{upload}"]
        command = ["curl", "-sS", "--http1.1", "--noproxy", "*", "-D", str(heads), "-o", str(out)]
        done = subprocess.run(
            [*command, *extra, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        blocks = [b for b in heads.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
        raw = out.read_bytes() if out.exists() else b""
    responses = []
    content_type = ""
    for block in blocks:
        status, *lines = block.split("\r\n")
        fields = [tuple(line.split(": ", 1)) for line in lines if ": " in line]
        responses.append({"status": status, "headers": mask.headers(fields)})  # type: ignore[arg-type]
        content_type = next((v for k, v in fields if k.lower() == "content-type"), "")
    return {
        "exit": done.returncode,
        "error": done.stderr.strip(),
        "responses": responses,
        "body": body(raw, content_type, mask),
    }


def httplib2_request(
    mask: Masker,
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    credentials: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """httplib2, which answers a 401 by resending with the credentials it was given."""
    client = httplib2.Http(timeout=30, proxy_info=None)
    if credentials is not None:
        client.add_credentials(*credentials)
    response, content = client.request(url, method, body=data, headers=dict(headers or {}))
    fields = sorted((k, v) for k, v in response.items() if k != "status")
    return {
        "status": response.status,
        "headers": mask.headers(fields),
        "body": body(content, response.get("content-type", ""), mask),
    }
