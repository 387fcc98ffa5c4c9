"""The test harness's Docker engine: it starts here, runs a host program in a container on
the host network, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.dockerengine import DockerEngine, docker_available
from tests.peers import dcmtk_tool, free_port

pytestmark = pytest.mark.skipif(docker_available() is not None, reason=str(docker_available()))


def test_a_container_serves_dicom_on_the_host_network() -> None:
    with DockerEngine() as engine:
        workdir = engine.workdir
        port = free_port()
        engine.run_host_program(
            [dcmtk_tool("storescp"), "-aet", "INBOX", "--ignore", str(port)],
            name="scp",
            labels={"dicomlb.pool": "workers"},
        )
        for _ in range(50):
            echo = subprocess.run(
                [dcmtk_tool("echoscu"), "-aec", "INBOX", "127.0.0.1", str(port)],
                capture_output=True,
                check=False,
            )
            if echo.returncode == 0:
                break
            time.sleep(0.2)
        assert echo.returncode == 0, echo.stderr
        assert engine.inspect("scp")["Config"]["Labels"] == {"dicomlb.pool": "workers"}
    assert not Path(workdir).exists()
    with open("/proc/mounts") as mounts:
        assert str(workdir) not in mounts.read()
