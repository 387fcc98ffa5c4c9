"""The container image: the Dockerfile builds with a real Docker engine, and the image runs
`dicomlb check`, `dicomlb demo` and `dicomlb run` with its health check answering.

No image can be pulled here, so the base is made locally as a user without a registry would:
`debootstrap --variant=minbase` (python3, its venv and pip) imported with `docker import`.
The build reaches no index: the test builds a wheelhouse on the host (`pip wheel`) and the
Dockerfile's PIP_OPTIONS / INSTALL arguments install from it. The base and the wheels are
cached under $DICOMLB_TEST_CACHE (default /tmp/dicomlb-test-cache); a first run takes a few
minutes, later ones about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dockerengine import DockerEngine, docker_available
from tests.peers import free_port

ROOT = Path(__file__).parents[2]
CACHE = Path(os.environ.get("DICOMLB_TEST_CACHE", "/tmp/dicomlb-test-cache"))
MIRROR = "http://deb.debian.org/debian"
BASE = "dicomlb-base:bookworm"
IMAGE = "dicomlb:test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(docker_available() is not None, reason=str(docker_available())),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap not installed"),
]


def base_rootfs() -> Path:
    """A minimal Debian 12 with python3, venv and pip, made once and kept."""
    rootfs = CACHE / "bookworm-rootfs"
    done = CACHE / "bookworm-rootfs.done"
    if not done.exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip",
             "bookworm", str(rootfs), MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        done.touch()
    return rootfs


def build_context(tmp: Path) -> Path:
    """The repository's files the Dockerfile copies, and a wheelhouse of dicomlb and its
    dependencies (made on the host, which reaches the package index)."""
    context = tmp / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    wheels = CACHE / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(context)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    shutil.copytree(wheels, context / "wheels")
    return context


def test_the_image_builds_checks_runs_the_demo_and_reports_ready(tmp_path: Path) -> None:
    rootfs = base_rootfs()
    context = build_context(tmp_path)
    with DockerEngine() as engine:
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["docker", "import", "-", BASE],
                stdin=tar.stdout, env=engine.env(), capture_output=True, timeout=300,
            )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        started = time.monotonic()
        engine.docker(
            "build", "--network", "host", "-t", IMAGE,
            "--build-arg", f"BASE={BASE}",
            "--build-arg", "PIP_OPTIONS=--no-index --find-links /src/wheels",
            "--build-arg", "INSTALL=dicomlb",
            str(context), timeout=900,
        )  # fmt: skip
        build_seconds = time.monotonic() - started
        print(f"image built in {build_seconds:.0f} s")
        inspected = json.loads(engine.docker("image", "inspect", IMAGE))[0]["Config"]
        assert inspected["User"] == "10001:10001"
        assert set(inspected["ExposedPorts"]) == {"11112/tcp", "8042/tcp", "8404/tcp"}
        assert "/var/lib/dicomlb" in inspected["Volumes"]
        assert inspected["Healthcheck"]["Test"][0] == "CMD"

        dicom, admin = free_port(), free_port()
        config = tmp_path / "dicomlb.yaml"
        config.write_text(
            f"listeners:\n"
            f'  dicom: {{bind: "127.0.0.1:{dicom}", ae_title: DICOMLB}}\n'
            f'  admin: {{bind: "127.0.0.1:{admin}"}}\n'
            f"pools:\n  pacs:\n    health: {{enabled: false}}\n    backends:\n"
            f'      - {{name: pacs-a, dicom: "PACSA@127.0.0.1:{free_port()}"}}\n'
            f"routes:\n  - {{name: all, pool: pacs, ack: spool}}\n"
            f"spool: {{directory: /var/lib/dicomlb/spool, min_free_disk: 0}}\n"
            f"state_dir: /var/lib/dicomlb/state\n"
        )
        mount = ["-v", f"{config}:/etc/dicomlb/dicomlb.yaml:ro"]
        checked = engine.docker(
            "run", "--rm", "--network", "host", *mount, IMAGE,
            "dicomlb", "check", "-c", "/etc/dicomlb/dicomlb.yaml",
        )  # fmt: skip
        assert "DICOMLB" in checked and "pacs-a" in checked

        demo = engine.docker(
            "run", "--rm", "--network", "host", IMAGE, "dicomlb", "demo", "--once", timeout=300
        )
        assert "studies split across nodes: none" in demo

        engine.docker(
            "run", "-d", "--name", "lb", "--network", "host", *mount,
            "-e", f"DICOMLB_ADMIN_URL=http://127.0.0.1:{admin}", IMAGE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        health = ""
        while time.monotonic() < deadline:
            health = engine.inspect("lb")["State"].get("Health", {}).get("Status", "")
            if health == "healthy":
                break
            time.sleep(1)
        assert health == "healthy", engine.docker("logs", "lb", check=False)
        logs = subprocess.run(
            ["docker", "logs", "lb"], env=engine.env(), capture_output=True, text=True, timeout=30
        )
        assert "dicomlb.started" in logs.stdout + logs.stderr
        # The spool is owned by the unprivileged user on the volume.
        owner = engine.docker("exec", "lb", "stat", "-c", "%u", "/var/lib/dicomlb/spool")
        assert owner == "10001"
        engine.docker("stop", "-t", "20", "lb")
