"""A real Docker engine for tests: Debian's ``dockerd``, started by the test, stopped by its PID.

Each engine has its own data root, exec root, pid file and unix socket under one temporary
directory, no bridge network and no iptables rules, so several engines (two test files, a
second checkout) run side by side and leave nothing behind on the host. Images cannot be
pulled here: ``busybox_image()`` imports one from a tarball of a minimal root file system
(Debian's ``busybox-static``); containers run with ``--network host`` on free ports.

    with DockerEngine() as engine:
        image = engine.busybox_image()
        engine.docker("run", "-d", "--network", "host", image, "httpd", "-f", "-p", "8080")

A container that must run a host program (``storescp``, ``python3``) mounts the host's root
read-only and runs it through ``chroot`` (``host_command()``), so no image needs building.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from tests.peers import PeerError, PeerProcess

__all__ = ["DOCKERD", "DockerEngine", "docker_available"]

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "cat", "echo", "chroot", "ls", "wget", "true")


def docker_available() -> str | None:
    """None when an engine can be started here, else the reason it cannot."""
    if not os.path.exists(DOCKERD):
        return "dockerd is not installed (Debian docker.io)"
    if not os.path.exists(BUSYBOX):
        return "busybox is not installed (Debian busybox-static)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


class DockerEngine(PeerProcess):
    """A private ``dockerd`` and the ``docker`` CLI bound to it."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        # A unix socket path must stay under 108 bytes: keep the directory short.
        self.workdir = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
        self.socket = self.workdir / "docker.sock"
        self.log_path = self.workdir / "dockerd.log"
        self.start_timeout = start_timeout
        self._images: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The engine's address as ``DOCKER_HOST`` takes it."""
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """An environment whose ``docker`` commands reach this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self) -> Self:
        reason = docker_available()
        if reason is not None:
            raise PeerError(reason)
        command = [
            DOCKERD,
            "--data-root", str(self.workdir / "data"),
            "--exec-root", str(self.workdir / "exec"),
            "--pidfile", str(self.workdir / "dockerd.pid"),
            "-H", self.host,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise PeerError(f"dockerd exited at start:\n{self.log()[-3000:]}")
            if self.socket.exists() and self.api("GET", "/_ping") == b"OK":
                return self
            time.sleep(0.2)
        raise PeerError(f"dockerd did not answer in {self.start_timeout} s:\n{self.log()[-3000:]}")

    def api(self, method: str, path: str) -> bytes | None:
        """One raw Engine API request over the socket (readiness probe), None on failure."""
        result = subprocess.run(
            ["curl", "-s", "--max-time", "5", "--unix-socket", str(self.socket), "-X", method,
             f"http://docker{path}"],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return result.stdout if result.returncode == 0 else None

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        """Run the ``docker`` CLI against this engine; its standard output."""
        result = subprocess.run(
            ["docker", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise PeerError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def inspect(self, container: str) -> dict[str, Any]:
        """``docker inspect`` of one container."""
        found: list[dict[str, Any]] = json.loads(self.docker("inspect", container))
        return found[0]

    def busybox_image(self, tag: str = "dicomlb-test/busybox:1") -> str:
        """An image with busybox and its applets, imported from a tarball; its tag."""
        if tag in self._images:
            return tag
        root = self.workdir / "busybox-root"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "host").mkdir(exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            link = root / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        archive = self.workdir / "busybox.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        self.docker("import", str(archive), tag)
        self._images[tag] = tag
        return tag

    def host_command(self, argv: Sequence[str]) -> list[str]:
        """Arguments for ``docker run IMAGE …`` that run a host program inside the container
        (with ``-v /:/host:ro``, see ``run_host_program``)."""
        return ["chroot", "/host", *argv]

    def run_host_program(
        self,
        argv: Sequence[str],
        *,
        name: str,
        labels: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> str:
        """Start a detached container on the host network that runs a host program; its id."""
        image = self.busybox_image()
        label_args = [
            arg for key, value in (labels or {}).items() for arg in ("-l", f"{key}={value}")
        ]
        return self.docker(
            "run", "-d", "--name", name, "--network", "host", "-v", "/:/host:ro",
            *label_args, *extra, image, *self.host_command(argv),
        )  # fmt: skip

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # dockerd stops its containers first
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._process = None
        # Overlay mounts of stopped containers may outlive the daemon for a moment.
        subprocess.run(
            ["sh", "-c", f"grep -o ' {self.workdir}[^ ]*' /proc/mounts | xargs -r umount -l"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)
