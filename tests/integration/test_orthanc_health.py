"""Health checks of Orthanc backends, against real Orthanc: `orthanc: true` pools check
`GET /system` by default (Orthanc answers `GET /` with a redirect), a 401 from an Orthanc with
authentication on counts as alive, and a backend with a DICOM and an HTTP address has a
health state per side: each side's traffic follows its own."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dicomdata import make_small, write_series
from tests.httppeers import HttpBalancer
from tests.peers import LOOPBACK, Orthanc, free_port, have_dcmtk, have_orthanc, storescu

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not (have_orthanc() and have_dcmtk()), reason="needs orthanc and dcmtk"),
]

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FAST = {"interval": "100ms", "timeout": "1s", "fall": 1, "rise": 1}


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def checked_a_while(lb: HttpBalancer) -> None:
    """Long enough for several checks (fall 1: one failure takes a backend down)."""
    time.sleep(0.6)


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    with Orthanc("ORTHANC") as node:
        node.start()
        yield node


def lb_config(backend: dict[str, Any], **listeners: Any) -> dict[str, Any]:
    return {
        "listeners": listeners,
        "pools": {"pacs": {"orthanc": True, "health": FAST, "backends": [backend]}},
        "routes": [{"name": "all", "pool": "pacs"}] if "dicom" in listeners else [],
        "http_routes": [{"name": "rest", "pool": "pacs"}],
    }


def test_an_http_only_orthanc_is_up_without_health_http(orthanc: Orthanc) -> None:
    # Orthanc's `GET /` is a redirect: a check of `/` would take every such backend down.
    assert status_of(orthanc.url + "/system") == 200
    with HttpBalancer(lb_config({"name": "orthanc", "http": orthanc.url})) as lb:
        checked_a_while(lb)
        assert lb.backend("orthanc").available
        assert status_of(lb.url + "/system") == 200


class AuthOrthanc(Orthanc):
    """Orthanc with authentication on (its default outside this suite); the fixture's own
    requests log in."""

    def __init__(self) -> None:
        super().__init__(
            "ORTHANC",
            config={"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "secret"}},
        )
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, self.url, "alice", "secret")
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPBasicAuthHandler(passwords)
        )


def test_an_orthanc_with_authentication_is_alive() -> None:
    with AuthOrthanc() as node:
        node.start()
        assert status_of(node.url + "/system") == 401
        auth = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
        with HttpBalancer(lb_config({"name": "orthanc", "http": node.url})) as lb:
            checked_a_while(lb)
            assert lb.backend("orthanc").available  # 401 without credentials: alive
            assert status_of(lb.url + "/system") == 401  # the client's challenge, relayed
            assert status_of(lb.url + "/system", auth) == 200


def store_one(port: int, tmp_path: Path) -> int:
    """storescu one instance through dicomlb; its exit code."""
    paths = write_series(make_small(1), tmp_path / "one")
    return storescu(LOOPBACK, port, paths, aec="DICOMLB").returncode


@pytest.mark.parametrize("down", ["dicom", "http"])
def test_each_side_follows_its_own_health(orthanc: Orthanc, tmp_path: Path, down: str) -> None:
    """One process cannot lose one side only: the side that is down points at a closed
    port, the other at the live Orthanc."""
    closed = free_port()
    addresses = {
        "dicom": f"ORTHANC@{LOOPBACK}:{closed}" if down == "dicom" else orthanc.address,
        "http": f"http://{LOOPBACK}:{closed}" if down == "http" else orthanc.url,
    }
    config = lb_config(
        {"name": "orthanc", **addresses},
        dicom={"bind": f"{LOOPBACK}:{free_port()}", "ae_title": "DICOMLB"},
    )
    with HttpBalancer(config) as lb:
        backend = lb.backend("orthanc")
        eventually(lambda: backend.health.up != backend.http_health.up, "one side down")
        assert lb.snapshot.dicom is not None
        stored = store_one(lb.snapshot.dicom.port, tmp_path)
        rest = status_of(lb.url + "/system")
        if down == "dicom":
            assert (backend.health.up, backend.http_health.up) == (False, True)
            assert rest == 200, "the REST side is alive: HTTP requests are served"
            assert stored != 0, "no DICOM side up: the store fails"
        else:
            assert (backend.health.up, backend.http_health.up) == (True, False)
            assert rest == 503, "the REST side is down: no HTTP backend"
            assert stored == 0, "the DICOM side is alive: stores go through"
            assert len(orthanc.instances()) == 1
