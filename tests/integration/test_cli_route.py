"""`dicomlb route` as a user runs it: where files and requests would go, nothing sent."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dicomlb.config import build_snapshot, hash_secret
from dicomlb.pools import BackendState, rendezvous_order
from dicomlb.snapshot import HealthConfig
from tests.dicomdata import make_series, make_small, write_series
from tests.peers import DicomlbProcess, free_port, wait_listening

TOKEN = "route-token"
# Nothing listens at the backends' ports: the dry run must not need them.
CONFIG = """\
listeners:
  dicom: {{bind: "127.0.0.1:{dicom}", ae_title: DICOMLB}}
  http: {{bind: "127.0.0.1:{http}"}}
  admin: {{bind: "127.0.0.1:{admin}", auth: {{bearer_tokens_sha256: [{digest}]}}}}
pools:
  ct:
    strategy: affinity
    key: StudyInstanceUID
    health: {{enabled: false}}
    backends:
      - {{name: pacs-a, dicom: "PACSA@127.0.0.1:{closed}"}}
      - {{name: pacs-b, dicom: "PACSB@127.0.0.1:{closed}"}}
      - {{name: pacs-c, dicom: "PACSC@127.0.0.1:{closed}"}}
  app:
    strategy: affinity
    health: {{enabled: false}}
    http: {{key: "header:X-Tenant"}}
    backends:
      - {{name: app-1, http: "http://127.0.0.1:{closed}"}}
      - {{name: app-2, http: "http://127.0.0.2:{closed}"}}
middlewares:
  strip-app: {{strip_prefix: {{prefixes: [/app]}}}}
  fwd: {{forwarded: {{}}}}
routes:
  - name: ct
    match: {{Modality: CT, calling_aet: {{regex: "^CT_"}}}}
    pool: ct
http_routes:
  - name: app
    match: {{path_prefix: /app/}}
    pool: app
    middlewares: [strip-app, fwd]
"""


def write_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"dicom": free_port(), "http": free_port(), "admin": free_port()}
    text = CONFIG.format(**ports, closed=free_port(), digest=hash_secret(TOKEN))
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return path, ports


def dicomlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomlb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rendezvous(config: Path, pool: str, key: str) -> list[str]:
    """The pool's backends in `key`'s rendezvous order, computed here on their own."""
    snapshot = build_snapshot(yaml.safe_load(config.read_text()))
    backends = [BackendState(b, HealthConfig()) for b in snapshot.pools[pool].backends]
    return [b.name for b in rendezvous_order(key, backends)]


def test_files_are_routed_by_their_scanned_tags(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    ct = write_series(make_series(2, rows=64, cols=64), tmp_path / "ct")
    mr = write_series(make_small(1, modality="MR", pixels=False), tmp_path / "mr")
    files = [str(p) for p in (*ct, *mr)]
    result = dicomlb("route", "-c", str(config), "--calling-aet", "CT_7", "--json", *files)
    assert result.returncode == 1, result.stderr  # the MR matches no route
    data = json.loads(result.stdout)
    assert data["states"] == "assumed: every backend up"
    first, second, other = data["files"]
    study = first["facts"]["tags"]["StudyInstanceUID"]
    assert first["facts"]["tags"]["Modality"] == "CT"
    assert first["facts"]["calling_aet"] == "CT_7" and first["facts"]["called_aet"] == "DICOMLB"
    order = rendezvous(config, "ct", study)
    assert (first["route"], first["pool"], first["backend"]) == ("ct", "ct", order[0])
    assert first["placements"][0]["order"] == order
    assert second["backend"] == order[0]  # same study, same backend
    assert other["route"] is None and other["status"] == 0x0124
    text = dicomlb("route", "-c", str(config), "--calling-aet", "CT_7", files[0])
    assert text.returncode == 0, text.stderr
    assert "route      ct (match: Modality = CT and calling_aet ~ /^CT_/" in text.stdout
    assert f"backend    {order[0]}" in text.stdout
    assert f"StudyInstanceUID (0020,000D) = '{study}'" in text.stdout


def test_http_request_shows_rewritten_target_and_backend(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    result = dicomlb(
        "route",
        "-c",
        str(config),
        "--http",
        "GET https://lb.example.org/app/rest/users?q=1",
        "-H",
        "X-Tenant: north",
        "--http",
        "/nowhere",
        "--json",
    )
    assert result.returncode == 1, result.stderr  # /nowhere: 404
    routed, missing = json.loads(result.stdout)["requests"]
    assert (routed["route"], routed["host"]) == ("app", "lb.example.org")
    assert routed["forwarded_target"] == "/rest/users?q=1"
    assert [m["applied"] for m in routed["middlewares"]] == [True, False]
    assert routed["backend"] == rendezvous(config, "app", "north")[0]
    assert routed["placement"]["key"] == "north"
    assert (missing["method"], missing["status"]) == ("GET", 404)


def test_backend_states_come_from_a_running_instance(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path)
    (ds,) = make_small(1, pixels=False)
    (path,) = write_series([ds], tmp_path / "ct")
    order = rendezvous(config, "ct", ds.StudyInstanceUID)
    admin = f"http://127.0.0.1:{ports['admin']}"
    with DicomlbProcess(config.read_text(), ports["dicom"], tmp_path / "lb") as lb:
        # the DICOM port listens first; the admin listener starts after it
        wait_listening(ports["admin"], process=lb.process, what="admin listener")
        disable = urllib.request.Request(
            f"{admin}/api/v1/backends/{order[0]}/disable",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(disable, timeout=10) as answer:
            assert answer.status == 200
        args = ["route", "-c", str(config), "--calling-aet", "CT_1", str(path), "--json"]
        result = dicomlb(*args, "--admin", admin, "--token", TOKEN)
        refused = dicomlb(*args, "--admin", admin, "--token", "wrong")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["states"] == admin
    (found,) = data["files"]
    assert found["backend"] == order[1]  # the study's next backend
    states = {b["name"]: b["state"] for b in found["placements"][0]["backends"]}
    assert states == {order[0]: "disabled", order[1]: "up", order[2]: "up"}
    assert refused.returncode == 2
    assert "admin API" in refused.stderr and "401" in refused.stderr


def test_bad_input_is_named_without_a_traceback(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    result = dicomlb("route", "-c", str(config), str(junk), str(tmp_path / "missing.dcm"))
    assert result.returncode == 2
    assert f"{junk}: not a DICOM Part-10 file" in result.stderr
    assert "missing.dcm" in result.stderr
    assert "Traceback" not in result.stderr
    nothing = dicomlb("route", "-c", str(config))
    assert nothing.returncode == 2 and "give DICOM files" in nothing.stderr
    header = dicomlb("route", "-c", str(config), "--http", "/app/x", "-H", "no colon")
    assert header.returncode == 2 and "is not 'Name: value'" in header.stderr
