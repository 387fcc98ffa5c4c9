"""contrib/compose/seed-000.yaml: seed 000 (PostgreSQL, three Orthanc workers sharing it
through the PostgreSQL plugin) with dicomlb in front, the workers announced by Docker
provider labels, and its dicomlb configuration.

The compose file is validated against the Compose Specification's JSON schema (the copy
check-jsonschema vendors, so no network), and with `docker compose config` where the
compose plugin is installed (it is not on Debian 12's docker.io; the test says so when it
skips that part).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dicomlb import cli
from dicomlb.config import config_schema

COMPOSE = Path(__file__).resolve().parents[2] / "contrib" / "compose"
SEED = COMPOSE / "seed-000.yaml"
LB = COMPOSE / "seed-000-lb.yaml"
WORKERS = ("orthanc-1", "orthanc-2", "orthanc-3")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SEED.read_text())
    return loaded


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(vendored.read_text())
    return loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert list(validator.iter_errors(compose())) == []
    broken = copy.deepcopy(compose())
    broken["services"]["dicomlb"]["volume"] = []  # a misspelt key is caught
    assert list(validator.iter_errors(broken)) != []


def test_docker_compose_config_accepts_it() -> None:
    docker = shutil.which("docker")
    plugin = (
        docker is not None
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not plugin:
        pytest.skip("the docker compose plugin is not installed (Debian 12's docker.io)")
    assert docker is not None
    result = subprocess.run(
        [docker, "compose", "-f", str(SEED), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_seed_000_services_postgres_three_orthanc_workers_and_dicomlb() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "dicomlb", *WORKERS}
    for name in WORKERS:
        worker = services[name]
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        environment = worker["environment"]
        assert environment["ORTHANC__NAME"] == name
        postgres = json.loads(environment["ORTHANC__POSTGRESQL"])
        assert postgres["EnableIndex"] is True and postgres["EnableStorage"] is True
        assert postgres["Host"] == "postgres" and postgres["Lock"] is False
        assert environment["TCP_NODELAY"] == "1"


def test_the_workers_carry_the_docker_provider_labels() -> None:
    services = compose()["services"]
    for name in WORKERS:
        assert services[name]["labels"] == {
            "dicomlb.enable": "true",
            "dicomlb.pool": "workers",
            "dicomlb.http.port": "8042",
            "dicomlb.dicom.port": "4242",
            "dicomlb.dicom.aet": "ORTHANC",
            "dicomlb.store_via": "orthanc_rest",
            "dicomlb.weight": "1",
            "dicomlb.max_associations": "4",
        }
    assert not any(key.startswith("dicomlb.") for key in services["dicomlb"].get("labels", {}))


def test_dicomlb_gets_its_config_the_docker_socket_and_a_volume() -> None:
    document = compose()
    dicomlb = document["services"]["dicomlb"]
    volumes = dicomlb["volumes"]
    assert "./seed-000-lb.yaml:/etc/dicomlb/dicomlb.yaml:ro" in volumes
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in volumes
    assert "dicomlb-data:/var/lib/dicomlb" in volumes
    assert dicomlb["command"] == ["dicomlb", "run", "-c", "/etc/dicomlb/dicomlb.yaml"]
    config = yaml.safe_load(LB.read_text())
    assert config["providers"]["docker"]["network"] == document["networks"]["pacs"]["name"]
    assert set(config["pools"]) == {"workers"}  # the labels' pool


def test_the_dicomlb_configuration_passes_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(LB.read_text())
    if "providers" not in config_schema()["properties"]:
        # BEFORE THE DOCKER PROVIDER IS MERGED ONLY: this dicomlb has no `providers`
        # section, so it is left out and the backends the labels would make are written
        # in the pool; everything else of the file is checked as it is.
        del config["providers"]
        config["pools"]["workers"]["backends"] = [
            {
                "name": name,
                "dicom": f"ORTHANC@{name}:4242",
                "http": f"http://{name}:8042",
                "store_via": "orthanc_rest",
                "weight": 1,
                "max_associations": 4,
            }
            for name in WORKERS
        ]
    file = tmp_path / "dicomlb.yaml"
    file.write_text(yaml.safe_dump(config))
    assert cli.main(["check", "-c", str(file)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "reload on file change: yes" in out
