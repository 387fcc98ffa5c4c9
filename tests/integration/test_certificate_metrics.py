"""The listeners' certificate expiry on /metrics, for the alert rules."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dicomlb.tls import certificate_expiry
from tests.integration.test_admin import sample
from tests.peers import free_port


def test_each_tls_listener_exports_its_certificate_expiry(
    tmp_path: Path, balancer: Any, pki: Path
) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "40",
         "-subj", "/CN=web", "-keyout", "web.key", "-out", "web.crt"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    dicom_tls = {"cert": str(pki / "dicomlb.crt"), "key": str(pki / "dicomlb.key")}
    http_tls = {"cert": str(tmp_path / "web.crt"), "key": str(tmp_path / "web.key")}
    pacs = {"backends": [{"name": "a", "dicom": f"A@127.0.0.1:{free_port()}"}]}
    web = {"backends": [{"name": "w", "http": f"http://127.0.0.1:{free_port()}"}]}
    config = {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{free_port()}", "tls": dicom_tls},
            "http": {"bind": f"127.0.0.1:{free_port()}", "tls": http_tls},
        },
        "pools": {
            "p": {"health": {"enabled": False}, **pacs},
            "web": {"health": {"enabled": False}, **web},
        },
        "routes": [{"name": "all", "pool": "p"}],
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    lb = balancer(config, admin=True)
    status, text = lb.http("GET", "/metrics")
    assert status == 200
    dicom = sample(text, "dicomlb_tls_certificate_expiry_seconds", listener="dicom")
    http = sample(text, "dicomlb_tls_certificate_expiry_seconds", listener="http")
    assert dicom == certificate_expiry(str(pki / "dicomlb.crt"))  # the pki's: 2 days
    assert http == certificate_expiry(str(tmp_path / "web.crt"))  # 40 days
    assert http - dicom > 30 * 86400


def test_no_tls_no_certificate_metric(balancer: Any) -> None:
    pool = {"backends": [{"name": "a", "dicom": f"A@127.0.0.1:{free_port()}"}]}
    lb = balancer(
        {
            "listeners": {"dicom": {"bind": f"127.0.0.1:{free_port()}"}},
            "pools": {"p": {"health": {"enabled": False}, **pool}},
            "routes": [{"name": "all", "pool": "p"}],
        },
        admin=True,
    )
    _, text = lb.http("GET", "/metrics")
    assert "dicomlb_tls_certificate_expiry_seconds" not in text
