"""TLS: DCMTK storescu --(mutual TLS)--> dicomlb --(mutual TLS)--> DCMTK storescp."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot
from tests.dicomdata import make_small, write_series
from tests.peers import StoreSCP, dataset_bytes, free_port, have_dcmtk, sop_instance_uid, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def test_mutual_tls_both_sides(tmp_path: Path, balancer: Any, pki: Path) -> None:
    backend_tls = [
        "+tls",
        str(pki / "backend.key"),
        str(pki / "backend.crt"),
        "+cf",
        str(pki / "ca.crt"),
    ]
    with StoreSCP("PACSA", tmp_path / "in", extra_args=backend_tls) as scp:
        lb = balancer(
            {
                "listeners": {
                    "dicom": {
                        "bind": f"127.0.0.1:{free_port()}",
                        "ae_title": "DICOMLB",
                        "tls": {
                            "cert": str(pki / "dicomlb.crt"),
                            "key": str(pki / "dicomlb.key"),
                            "ca": str(pki / "ca.crt"),
                        },
                    }
                },
                "pools": {
                    "p": {
                        "backends": [
                            {
                                "name": "a",
                                "dicom": scp.address,
                                "tls": {
                                    "ca": str(pki / "ca.crt"),
                                    "cert": str(pki / "dicomlb.crt"),
                                    "key": str(pki / "dicomlb.key"),
                                },
                            }
                        ]
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        files = write_series(make_small(3), tmp_path / "out")
        client_tls = [
            "+tls",
            str(pki / "modality.key"),
            str(pki / "modality.crt"),
            "+cf",
            str(pki / "ca.crt"),
        ]
        result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB", extra_args=client_tls)
        assert result.returncode == 0, result.stderr
        received = scp.by_sop_instance_uid()
        for path in files:
            assert dataset_bytes(received[sop_instance_uid(path)]) == dataset_bytes(path)
        # a client without TLS, or without a certificate, does not get in
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode != 0
        assert len(scp.files()) == 3


def test_refused_handshakes_are_logged_once_each(
    tmp_path: Path, balancer: Any, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that speaks plain DICOM to a TLS listener, and one without the required
    certificate, are refused in the handshake: one `listener.tls_failed` line each, no
    traceback, and a good client still gets in."""
    with StoreSCP("PACSA", tmp_path / "in") as scp:
        lb = balancer(
            {
                "listeners": {
                    "dicom": {
                        "bind": f"127.0.0.1:{free_port()}",
                        "ae_title": "DICOMLB",
                        "tls": {
                            "cert": str(pki / "dicomlb.crt"),
                            "key": str(pki / "dicomlb.key"),
                            "ca": str(pki / "ca.crt"),
                        },
                    }
                },
                "pools": {"p": {"backends": [{"name": "a", "dicom": scp.address}]}},
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        files = write_series(make_small(1), tmp_path / "out")
        with caplog.at_level(logging.INFO, logger="dicomlb"):
            assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode != 0
            no_cert = ["+tla"]
            no_cert += ["+cf", str(pki / "ca.crt")]
            assert (
                storescu("127.0.0.1", lb.port, files, aec="DICOMLB", extra_args=no_cert).returncode
                != 0
            )
            good = ["+tls", str(pki / "modality.key"), str(pki / "modality.crt")]
            good += ["+cf", str(pki / "ca.crt")]
            assert (
                storescu("127.0.0.1", lb.port, files, aec="DICOMLB", extra_args=good).returncode
                == 0
            )
        refused = [
            r.getMessage() for r in caplog.records if "listener.tls_failed" in r.getMessage()
        ]
        assert len(refused) == 2, refused
        assert all("listener=dicom peer=127.0.0.1:" in line for line in refused)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_unreadable_certificate_names_the_field(tmp_path: Path) -> None:
    config = {
        "listeners": {
            "dicom": {
                "bind": "127.0.0.1:11112",
                "tls": {"cert": str(tmp_path / "nope.crt"), "key": "k"},
            }
        },
        "pools": {"p": {"backends": [{"name": "a", "dicom": "A@127.0.0.1:104"}]}},
        "routes": [{"name": "all", "pool": "p"}],
    }
    with pytest.raises(ConfigError) as err:
        build_snapshot(config, source="lb.yaml")
    assert "lb.yaml: listeners.dicom.tls: cannot set up TLS" in str(err.value)
