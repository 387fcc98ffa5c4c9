"""The admin API provider: backends added through the API survive a reload from the file
(SIGHUP and the API's) and a restart (a new process on the same state_dir), and leave only
by an API call; a name the file and the API both define fails only that definition."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dicomdata import make_small, write_series
from tests.peers import DicomlbProcess, StoreSCP, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def call(admin: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}",
        method=method,
        data=json.dumps(body if body is not None else {}).encode() if method != "GET" else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        time.sleep(0.05)


def served(admin: int) -> dict[str, str]:
    """backend → provider, as the API shows what runs."""
    return {b["name"]: b["provider"] for b in call(admin, "GET", "/api/v1/backends")[1]}


def test_api_backends_survive_reloads_and_restarts_and_a_conflict_fails_one_item(
    tmp_path: Path,
) -> None:
    a, b, c = (StoreSCP(n, tmp_path / n.lower()).start() for n in ("PACSA", "PACSB", "PACSC"))
    dicom, admin = free_port(), free_port()
    config: dict[str, Any] = {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{dicom}"},
            "admin": {"bind": f"127.0.0.1:{admin}"},
        },
        "pools": {"main": {"backends": [{"name": "pacs-a", "dicom": a.address}]}},
        "routes": [{"name": "all", "pool": "main"}],
        "state_dir": str(tmp_path / "state"),
    }
    lb = DicomlbProcess(yaml.safe_dump(config), dicom, tmp_path / "lb")
    lb.start()
    try:
        wait_until(lambda: served(admin), "the admin listener")
        for name, scp in (("pacs-b", b), ("pacs-c", c)):
            status, body = call(admin, "POST", "/api/v1/pools/main/backends",
                                {"name": name, "dicom": scp.address})  # fmt: skip
            assert (status, body["provider"]) == (201, "api"), body
        assert json.loads((tmp_path / "state" / "api-backends.json").read_text())["backends"]
        expected = {"pacs-a": "file", "pacs-b": "api", "pacs-c": "api"}
        assert served(admin) == expected

        # A reload from the file (SIGHUP, then the API's) keeps them.
        config["pools"]["main"]["backends"][0]["max_associations"] = 2
        lb.config_path.write_text(yaml.safe_dump(config))
        lb.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: "source=sighup" in lb.log_path.read_text(), "the SIGHUP reload")
        assert served(admin) == expected
        assert call(admin, "POST", "/api/v1/reload")[1]["result"] == "ok"
        assert served(admin) == expected

        # The file now defines pacs-c too: the file's wins, only the API's pacs-c fails,
        # and the rest of the reload (pacs-d, a new file backend) applies.
        config["pools"]["main"]["backends"] += [
            {"name": "pacs-c", "dicom": c.address},
            {"name": "pacs-d", "dicom": c.address.replace("PACSC", "PACSD")},
        ]
        lb.config_path.write_text(yaml.safe_dump(config))
        assert call(admin, "POST", "/api/v1/reload")[1]["result"] == "ok"
        assert served(admin) == {"pacs-a": "file", "pacs-b": "api", "pacs-c": "file",
                                 "pacs-d": "file"}  # fmt: skip
        items = call(admin, "GET", "/api/v1/config")[1]["backends"]
        failed = [(i["name"], i["provider"], i["status"]) for i in items if i["status"] != "ok"]
        assert failed == [("pacs-c", "api", "conflict")]
        assert "provider.conflict backend=pacs-c pool=main provider=api" in lb.log_path.read_text()
        # The file drops it again: the API's pacs-c is back, never lost.
        config["pools"]["main"]["backends"] = config["pools"]["main"]["backends"][:1]
        lb.config_path.write_text(yaml.safe_dump(config))
        assert call(admin, "POST", "/api/v1/reload")[1]["result"] == "ok"
        assert served(admin) == expected

        assert lb.stop() == 0
        lb.start()
        wait_until(lambda: served(admin), "the admin listener after the restart")
        assert served(admin) == expected  # a restart on the same state_dir keeps them

        files = write_series(make_small(6), tmp_path / "six")
        assert storescu("127.0.0.1", dicom, files, aec="DICOMLB").returncode == 0
        assert len(b.wait_files(2)) == 2 and len(c.wait_files(2)) == 2  # they take work

        assert call(admin, "DELETE", "/api/v1/backends/pacs-b")[0] == 200
        assert lb.stop() == 0
        lb.start()
        wait_until(lambda: served(admin), "the admin listener after the second restart")
        assert served(admin) == {"pacs-a": "file", "pacs-c": "api"}
    finally:
        lb.close()
        for scp in (a, b, c):
            scp.close()
