"""A certificate's notAfter read from its PEM file (`tls.not_after`), for the expiry metric."""

from __future__ import annotations

import base64
import calendar
import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from dicomlb.tls import certificate_expiry, not_after


def make_certificate(tmp_path: Path, name: str, *args: str) -> Path:
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.crt", *args],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return tmp_path / f"{name}.crt"


def openssl_end_date(path: Path) -> float:
    out = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    text = out.strip().removeprefix("notAfter=")
    return float(calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y %Z")))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("rsa", ["-newkey", "rsa:2048", "-days", "2"]),  # UTCTime
        ("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-days", "9000"]),
        ("far", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-days", "30000"]),
    ],
)
def test_not_after_is_what_openssl_says(tmp_path: Path, name: str, args: list[str]) -> None:
    path = make_certificate(tmp_path, name, *args)
    assert certificate_expiry(str(path)) == openssl_end_date(path)


def test_the_first_certificate_of_a_chain_counts(tmp_path: Path) -> None:
    short = make_certificate(tmp_path, "short", "-newkey", "rsa:2048", "-days", "1")
    long = make_certificate(tmp_path, "long", "-newkey", "rsa:2048", "-days", "100")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"# a comment\n" + short.read_bytes() + long.read_bytes())
    assert certificate_expiry(str(chain)) == openssl_end_date(short)


def test_what_is_not_a_certificate_gives_none(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path, "c", "-newkey", "rsa:2048", "-days", "2")
    assert certificate_expiry(str(tmp_path / "c.key")) is None
    assert certificate_expiry(str(tmp_path / "missing.crt")) is None
    pem = cert.read_bytes()
    assert certificate_expiry(str(cert)) is not None
    body = pem.split(b"-----")[2]
    der = base64.b64decode(b"".join(body.split()))
    # every truncation and every single-byte change: a value or ValueError, nothing else
    for size in range(len(der)):
        wrapped = base64.encodebytes(der[:size])
        with pytest.raises(ValueError):
            not_after(b"-----BEGIN CERTIFICATE-----\n" + wrapped + b"-----END CERTIFICATE-----\n")
    for at in range(min(len(der), 400)):
        changed = der[:at] + bytes([der[at] ^ 0xFF]) + der[at + 1 :]
        wrapped = base64.encodebytes(changed)
        with contextlib.suppress(ValueError):
            not_after(b"-----BEGIN CERTIFICATE-----\n" + wrapped + b"-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError):
        not_after(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
