"""`dicomlb run` as an operator runs it: SIGHUP reloads the file; a broken file is refused
and the old config keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import dicomlb
from tests.peers import StoreSCP, echoscu, free_port, have_dcmtk, wait_listening

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def backends(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/api/v1/backends", timeout=5) as response:
        return [b["name"] for b in json.loads(response.read())]


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    a = StoreSCP("PACSA", tmp_path / "a").start()
    b = StoreSCP("PACSB", tmp_path / "b").start()
    dicom_port, admin_port = free_port(), free_port()
    config: dict[str, Any] = {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{dicom_port}"},
            "admin": {"bind": f"127.0.0.1:{admin_port}"},
        },
        "pools": {"main": {"backends": [{"name": "pacs-a", "dicom": a.address}]}},
        "routes": [{"name": "all", "pool": "main"}],
    }
    file = tmp_path / "lb.yaml"
    file.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(Path(dicomlb.__file__).parents[1]))
    log = tmp_path / "dicomlb.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomlb", "run", "-c", str(file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{admin_port}"
    try:
        wait_listening(admin_port, timeout=15, process=process, what="dicomlb", log=log)
        assert backends(url) == ["pacs-a"]

        file.write_text("pools: {main: {backends: [{name: x}]}}\n")  # broken: no address
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "admin.reload result=error source=sighup" in log.read_text())
        assert backends(url) == ["pacs-a"]
        assert echoscu("127.0.0.1", dicom_port, aec="DICOMLB").returncode == 0

        config["pools"]["main"]["backends"].append({"name": "pacs-b", "dicom": b.address})
        file.write_text(yaml.safe_dump(config))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: backends(url) == ["pacs-a", "pacs-b"])
        assert "admin.reload result=ok source=sighup" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        a.close()
        b.close()
