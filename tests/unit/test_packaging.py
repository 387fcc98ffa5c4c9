"""What ships beside the code: the Kubernetes manifests validate against the Kubernetes
schemas and carry configurations dicomlb accepts; the systemd unit passes
`systemd-analyze verify`; the Dockerfile says what the image promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dicomlb.config import build_snapshot

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "contrib" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append(
                    (f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
                )
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in manifests() if document["kind"] == kind]


@pytest.mark.parametrize(("where", "document"), manifests(), ids=[w for w, _ in manifests()])
def test_every_manifest_is_valid_kubernetes(where: str, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_wrong_field() -> None:
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = (
        "/"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("config_map", by_kind("ConfigMap"), ids=lambda c: c["metadata"]["name"])
def test_the_shipped_configurations_are_accepted(config_map: dict[str, Any]) -> None:
    snapshot = build_snapshot(yaml.safe_load(config_map["data"]["dicomlb.yaml"]), "configmap")
    assert snapshot.watch  # the ConfigMap is reloaded when the kubelet updates it
    assert snapshot.admin is not None and snapshot.admin.port == 8404


def test_workloads_probe_readiness_and_liveness_and_run_unprivileged() -> None:
    workloads = by_kind("Deployment") + by_kind("StatefulSet")
    assert len(workloads) == 2
    config_maps = {c["metadata"]["name"] for c in by_kind("ConfigMap")}
    for workload in workloads:
        pod = workload["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/dicomlb", "/var/lib/dicomlb"} <= mounts
        used = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v]
        assert used and set(used) <= config_maps
    (stateful,) = by_kind("StatefulSet")
    assert stateful["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    spool = yaml.safe_load(by_kind("ConfigMap")[1]["data"]["dicomlb.yaml"])
    assert spool["spool"]["directory"].startswith("/var/lib/dicomlb/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "contrib" / "systemd" / "dicomlb.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    for option in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "PrivateTmp=yes",
    ):
        assert option in unit
    # verify checks that ExecStart's program exists: point it at this checkout's.
    here = Path(sys.executable).parent / "dicomlb"
    local = tmp_path / "dicomlb.service"
    local.write_text(unit.replace("/opt/dicomlb/bin/dicomlb", str(here)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in done.stderr.splitlines()
        if "dicomlb.service" in line and "Documentation" not in line
    ]  # fmt: skip
    assert done.returncode == 0 and not problems, done.stderr


def test_the_dockerfile_promises_what_the_docs_say() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^EXPOSE 11112 8042 8404$", text, re.M)
    assert "/readyz" in text and re.search(r"^HEALTHCHECK ", text, re.M)
    assert 'VOLUME ["/var/lib/dicomlb"]' in text
