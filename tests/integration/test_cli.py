"""The `dicomlb` command as a user runs it: check, run with a graceful stop, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.dicomdata import make_series, write_series
from tests.peers import DicomlbProcess, StoreSCP, free_port, have_dcmtk, storescu
from tests.unit.test_config import EXAMPLE
from tests.unit.test_config_limits import billion_laughs


def dicomlb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomlb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_prints_the_resolved_config(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(EXAMPLE)
    result = dicomlb("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    for expected in ("ct-and-pet", "pacs-a", "PACSB@10.0.0.6:4242", "affinity", "StudyInstanceUID"):
        assert expected in result.stdout


def test_check_warns_about_a_route_that_can_never_match(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        "pools:\n  p: {backends: [{name: a, dicom: 'A@10.0.0.5:104'}]}\n"
        "routes:\n"
        "  - {name: ct, match: {Modality: CT}, pool: p}\n"
        "  - {name: ct-er, match: {Modality: CT, calling_aet: ER_1}, pool: p}\n"
    )
    result = dicomlb("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        'warning: route "ct-er" can never match: route "ct" before it matches everything it '
        "matches\n"
    )


def test_schema_prints_json_schema_and_reference() -> None:
    schema = dicomlb("schema")
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout)["properties"]["pools"]["description"]
    reference = dicomlb("schema", "--markdown")
    assert reference.returncode == 0, reference.stderr
    assert reference.stdout.startswith("# Configuration reference\n")


def test_check_names_file_field_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(EXAMPLE.replace("PACSB@10.0.0.6:4242", "PACSB@10.0.0.6"))
    result = dicomlb("check", "-c", str(config))
    assert result.returncode == 2
    assert "lb.yaml: pools.ct.backends[1].dicom:" in result.stderr
    assert "has no port" in result.stderr


@pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")
def test_run_serves_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    with StoreSCP("PACSA", tmp_path / "a", fork=True) as scp:
        port = free_port()
        config = (
            f"listeners:\n  dicom: {{bind: '127.0.0.1:{port}', ae_title: DICOMLB}}\n"
            f"pools:\n  p:\n    backends:\n      - {{name: a, dicom: '{scp.address}'}}\n"
            "routes:\n  - {name: all, pool: p}\n"
        )
        lb = DicomlbProcess(config, port, tmp_path / "lb").start()
        files = write_series(make_series(40, rows=256, cols=256), tmp_path / "out")
        results: list[subprocess.CompletedProcess[str]] = []
        # SIGTERM while the send is under way: the association in flight finishes
        sender = threading.Thread(
            target=lambda: results.append(
                storescu("127.0.0.1", port, files, aec="DICOMLB", extra_args=["--repeat", "5"])
            )
        )
        sender.start()
        scp.wait_files(1, timeout=20)
        assert lb.stop() == 0
        sender.join(60)
        assert results and results[0].returncode == 0, results[0].stderr if results else ""
        assert len(scp.files()) == 40
        text = lb.log()
        assert "dicomlb.stopping" in text and "dicomlb.stopped" in text


def test_demo_sends_studies_and_reports_where_they_went() -> None:
    result = dicomlb("demo", "--once", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nowhere" not in result.stdout
    assert "studies split across nodes: none" in result.stdout
    assert "node-c" in result.stdout  # CR and US take the default route
    assert "node-a" in result.stdout or "node-b" in result.stdout


def test_check_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    os.mkfifo(config)
    result = dicomlb("check", "-c", str(config), timeout=20)
    assert result.returncode == 2
    assert f"{config}: is a FIFO, not a regular file" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_refuses_an_alias_bomb_at_once(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(billion_laughs())
    result = dicomlb("check", "-c", str(config), timeout=20)
    assert result.returncode == 2
    assert "aliases repeat more than" in result.stderr
    assert "Traceback" not in result.stderr
