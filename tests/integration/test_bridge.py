"""The DICOM -> HTTP bridge with real peers: storescu / pynetdicom -> dicomlb -> Orthanc over
its REST API (`store_via: orthanc_rest`) and over the DICOMweb plugin (`stow_rs`)."""

from __future__ import annotations

import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from tests.dicomdata import make_series, make_studies, write_series
from tests.httppeers import Nginx
from tests.integration.conftest import uids_across
from tests.peers import (
    Orthanc,
    StoreSCP,
    dataset_bytes,
    have_dcmtk,
    have_orthanc,
    sop_instance_uid,
    storescu,
)

DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_dcmtk() and have_orthanc()), reason="needs dcmtk and orthanc"),
    pytest.mark.skipif(not Path(DICOMWEB).exists(), reason="needs orthanc-dicomweb"),
]


class AuthOrthanc(Orthanc):
    """An Orthanc with AuthenticationEnabled; the test's own requests log in."""

    def __init__(self, aet: str, user: str, password: str, **options: Any) -> None:
        config = {"AuthenticationEnabled": True, "RegisteredUsers": {user: password}}
        super().__init__(aet, config=config, **options)
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, self.url, user, password)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPBasicAuthHandler(passwords)
        )


def _health() -> dict[str, Any]:
    return {"enabled": False}


def _rest(name: str, orthanc: Orthanc, **extra: Any) -> dict[str, Any]:
    return {"name": name, "http": orthanc.url, "store_via": "orthanc_rest", **extra}


def _stow(name: str, orthanc: Orthanc, **extra: Any) -> dict[str, Any]:
    return {"name": name, "http": orthanc.url, "store_via": "stow_rs", **extra}


def _files(tmp_path: Path, studies: dict[str, list[Any]]) -> dict[str, Path]:
    sent = {}
    for uid, instances in studies.items():
        for path in write_series(instances, tmp_path / "out" / uid):
            sent[sop_instance_uid(path)] = path
    return sent


def _check_identical(orthanc: Orthanc, sent: dict[str, Path]) -> set[str]:
    uids = set()
    for instance_id in orthanc.instances():
        uid = orthanc.instance_tags(instance_id)["SOPInstanceUID"]
        assert orthanc.instance_dataset_bytes(instance_id) == dataset_bytes(sent[uid])
        uids.add(uid)
    return uids


def _send(port: int, datasets: list[Any], aet: str = "MODALITY") -> list[tuple[int, str]]:
    """pynetdicom C-STOREs; (status, Error Comment) per data set."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLB")
    assert assoc.is_established
    out = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def test_rest_and_stow_backends_byte_identical(tmp_path: Path, balancer: Any) -> None:
    with (
        Orthanc("REST") as rest,
        Orthanc("WEB", plugins=[DICOMWEB]) as web,
    ):
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "strategy": "affinity",
                        "health": _health(),
                        "backends": [_rest("rest", rest), _stow("web", web)],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        # 512x512 CT: data sets larger than the header scan, so they are streamed (chunked)
        uids = uids_across([lb.backend("rest"), lb.backend("web")], 8)
        studies = make_studies([("CT", 3)] * 8, rows=512, cols=512, study_uids=uids)
        sent = _files(tmp_path, studies)
        result = storescu("127.0.0.1", lb.port, tmp_path / "out", aet="CT_SCANNER")
        assert result.returncode == 0, result.stderr
        in_rest = _check_identical(rest, sent)
        in_web = _check_identical(web, sent)
        assert in_rest | in_web == set(sent) and not in_rest & in_web
        assert in_rest and in_web
        for instances in studies.values():  # affinity: studies never split
            uids = {ds.SOPInstanceUID for ds in instances}
            assert uids <= in_rest or uids <= in_web
        # the sender's AE title travels in the file meta group (Source AE)
        assert rest.instance_metadata(rest.instances()[0]).get("RemoteAET") in (
            None,
            "",
            "CT_SCANNER",
        )


def test_small_instances_and_mixed_pool(tmp_path: Path, balancer: Any) -> None:
    with (
        Orthanc("REST") as rest,
        Orthanc("WEB", plugins=[DICOMWEB]) as web,
        StoreSCP("DIMSE", tmp_path / "scp", fork=True) as scp,
    ):
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "strategy": "round_robin",
                        "health": _health(),
                        "backends": [
                            _rest("rest", rest),
                            _stow("web", web),
                            {"name": "scp", "dicom": scp.address},
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        datasets = make_series(9, rows=64, cols=64)
        statuses = _send(lb.port, datasets)
        assert statuses == [(0, "")] * 9
        assert len(rest.instances()) == 3 and len(web.instances()) == 3
        assert len(scp.by_sop_instance_uid()) == 3


def test_backend_down_fails_the_store_in_pass_through(tmp_path: Path, balancer: Any) -> None:
    with Orthanc("REST") as rest:
        lb = balancer(
            {
                "pools": {"pacs": {"health": _health(), "backends": [_rest("rest", rest)]}},
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        rest.stop()
        ((status, comment),) = _send(lb.port, make_series(1, rows=64, cols=64))
        assert status == 0xA700  # no backend left to try, with the reasons
        assert "rest: cannot connect" in comment.lower()


@pytest.mark.parametrize("rows", [64, 512])  # whole small data sets and streamed large ones
def test_unreachable_backend_fails_over_to_the_next(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture, rows: int
) -> None:
    """A stopped REST backend: nothing was sent, so each instance goes to the next backend
    of the pool (like a DIMSE backend that refuses the association) and the dead one is
    marked down by passive health."""
    with Orthanc("DEAD") as dead, Orthanc("LIVE") as live:
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "strategy": "round_robin",
                        "health": {"enabled": False, "fall": 2},
                        "backends": [_rest("dead", dead), _rest("live", live)],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
            },
            admin=True,
        )
        dead.stop()
        datasets = make_series(6, rows=rows, cols=rows)
        with caplog.at_level(logging.INFO, logger="dicomlb"):
            assert _send(lb.port, datasets) == [(0, "")] * 6
        assert live.sop_instance_uids() == {ds.SOPInstanceUID for ds in datasets}
        assert "backend.unreachable backend=dead pool=pacs via=orthanc_rest" in caplog.text
        assert "backend.down backend=dead pool=pacs cause=passive" in caplog.text
        assert not lb.backend("dead").health.up and lb.backend("live").health.up
        _, status = lb.http("GET", "/api/v1/status")
        states = {b["name"]: b["up"] for b in status["backends"]}
        assert states == {"dead": False, "live": True}


def test_spool_delivers_after_recovery(tmp_path: Path, balancer: Any) -> None:
    with Orthanc("WEB", plugins=[DICOMWEB]) as web:
        lb = balancer(
            {
                "pools": {"pacs": {"health": _health(), "backends": [_stow("web", web)]}},
                "routes": [{"name": "all", "pool": "pacs", "ack": "spool"}],
                "spool": {
                    "directory": str(tmp_path / "spool"),
                    "min_free_disk": 0,
                    "retry": {"base": "0.1s", "cap": "0.3s", "max_attempts": 0},
                },
            }
        )
        web.stop()
        datasets = make_series(5, rows=256, cols=256)
        assert _send(lb.port, datasets) == [(0, "")] * 5  # acknowledged: durable in the spool
        time.sleep(1.0)
        web.start()
        uids = {ds.SOPInstanceUID for ds in datasets}
        deadline = time.monotonic() + 20
        while web.sop_instance_uids() != uids and time.monotonic() < deadline:
            time.sleep(0.2)
        assert web.sop_instance_uids() == uids


def test_spool_stow_batches(tmp_path: Path, balancer: Any) -> None:
    with Orthanc("WEB", plugins=[DICOMWEB]) as web:
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "health": _health(),
                        "backends": [_stow("web", web, stow_batch=8, max_associations=1)],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs", "ack": "spool"}],
                "spool": {"directory": str(tmp_path / "spool"), "min_free_disk": 0},
            }
        )
        datasets = make_series(40, rows=64, cols=64)
        assert _send(lb.port, datasets) == [(0, "")] * 40
        uids = {ds.SOPInstanceUID for ds in datasets}
        deadline = time.monotonic() + 20
        while web.sop_instance_uids() != uids and time.monotonic() < deadline:
            time.sleep(0.2)
        assert web.sop_instance_uids() == uids


@pytest.mark.parametrize("via", ["orthanc_rest", "stow_rs"])
def test_basic_auth(tmp_path: Path, balancer: Any, via: str, monkeypatch: Any) -> None:
    plugins = [DICOMWEB] if via == "stow_rs" else []
    monkeypatch.setenv("BRIDGE_TEST_PASSWORD", "s3cret")
    with AuthOrthanc("AUTH", "alice", "s3cret", plugins=plugins) as orthanc:
        good = {"name": "good", "http": orthanc.url, "store_via": via}
        good["auth"] = {"basic": {"user": "alice", "password_env": "BRIDGE_TEST_PASSWORD"}}
        lb = balancer(
            {
                "pools": {"pacs": {"health": _health(), "backends": [good]}},
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        assert _send(lb.port, make_series(2, rows=64, cols=64)) == [(0, "")] * 2
        bad = {"name": "bad", "http": orthanc.url, "store_via": via}
        bad["auth"] = {"basic": {"user": "alice", "password": "wrong"}}
        lb2 = balancer(
            {
                "pools": {"pacs": {"health": _health(), "backends": [bad]}},
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        ((status, comment),) = _send(lb2.port, make_series(1, rows=64, cols=64))
        assert status == 0x0124
        assert comment.startswith("HTTP 401")


def test_query_to_http_only_pool_is_refused(tmp_path: Path, balancer: Any) -> None:
    with Orthanc("REST") as rest:
        lb = balancer(
            {
                "pools": {"pacs": {"health": _health(), "backends": [_rest("rest", rest)]}},
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assoc.release()
        status = responses[-1][0]
        assert int(status.Status) == 0x0122
        assert "http only" in str(status.get("ErrorComment", ""))


def test_health_checks_with_credentials_steer_around_a_down_backend(
    tmp_path: Path, balancer: Any
) -> None:
    health = {"enabled": True, "interval": "0.2s", "timeout": "1s", "fall": 1, "rise": 1}
    with (
        AuthOrthanc("AUTH", "alice", "s3cret") as orthanc,
        StoreSCP("DIMSE", tmp_path / "scp", fork=True) as scp,
    ):
        rest = _rest("rest", orthanc, auth={"basic": {"user": "alice", "password": "s3cret"}})
        lb = balancer(
            {
                "pools": {
                    "pacs": {
                        "strategy": "round_robin",
                        "health": health,
                        "backends": [rest, {"name": "scp", "dicom": scp.address}],
                    }
                },
                "routes": [{"name": "all", "pool": "pacs"}],
            }
        )
        time.sleep(0.6)
        assert lb.backend("rest").health.up  # /system with the credentials answers 200
        assert _send(lb.port, make_series(4, rows=64, cols=64)) == [(0, "")] * 4
        assert len(orthanc.instances()) == 2
        orthanc.stop()
        deadline = time.monotonic() + 5
        while lb.backend("rest").health.up and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not lb.backend("rest").health.up
        assert _send(lb.port, make_series(4, rows=64, cols=64)) == [(0, "")] * 4
        assert len(scp.by_sop_instance_uid()) == 6


def test_https_backend_verified_against_the_ca(balancer: Any, pki: Path) -> None:
    # Debian's Orthanc 1.10.1 crashes with SslEnabled, so TLS is terminated by nginx in front
    # of it, as many sites deploy it.
    tls = f"ssl_certificate {pki / 'backend.crt'}; ssl_certificate_key {pki / 'backend.key'};"
    with Orthanc("SECURE") as orthanc:
        body = f"{tls} location / {{ proxy_pass {orthanc.url}; client_max_body_size 0; }}"
        with Nginx(body, listen_options="ssl") as nginx:
            secure_url = f"https://127.0.0.1:{nginx.port}"
            _https_checks(balancer, pki, orthanc, secure_url)


def _https_checks(balancer: Any, pki: Path, secure: Orthanc, url: str) -> None:
    """Through an https backend: trusted with the CA, refused with the reason without it."""
    lb = balancer(
        {
            "pools": {
                "p": {
                    "health": _health(),
                    "backends": [
                        {
                            "name": "secure",
                            "http": url,
                            "store_via": "orthanc_rest",
                            "tls": {"ca": str(pki / "ca.crt")},
                        }
                    ],
                }
            },
            "routes": [{"name": "all", "pool": "p"}],
        }
    )
    datasets = make_series(2, rows=64, cols=64)
    assert _send(lb.port, datasets) == [(0, ""), (0, "")]
    assert len(secure.instances()) == 2
    # without the CA the backend's certificate is not trusted: a failure, not a send
    untrusting = balancer(
        {
            "pools": {
                "p": {
                    "health": _health(),
                    "backends": [{"name": "secure2", "http": url, "store_via": "orthanc_rest"}],
                }
            },
            "routes": [{"name": "all", "pool": "p"}],
        }
    )
    statuses = _send(untrusting.port, make_series(1, rows=64, cols=64))
    assert statuses[0][0] != 0 and "certificate" in statuses[0][1].lower()
    assert len(secure.instances()) == 2
