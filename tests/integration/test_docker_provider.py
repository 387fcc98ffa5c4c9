"""The Docker provider against a real engine (tests/dockerengine.py): containers running
DCMTK storescp and busybox httpd, labelled, join their pools after a passed check and leave
when stopped, while a sender keeps storing and a client keeps requesting; nothing is lost
or refused, and a container with a bad label is skipped with an error naming it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pynetdicom import AE

from tests.dicomdata import make_small
from tests.dockerengine import DockerEngine, docker_available
from tests.peers import DicomlbProcess, StoreSCP, dcmtk_tool, free_port, have_dcmtk

pytestmark = [
    pytest.mark.skipif(docker_available() is not None, reason=str(docker_available())),
    pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)"),
]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# PID 1 of a container: on `docker stop`'s SIGTERM the program gets 2 s more, as a server
# that finishes its work in flight would, and dicomlb sees the stop before it dies.
GRACEFUL = 'PROGRAM & pid=$!; trap "sleep 2; kill $pid" TERM; wait $pid; wait $pid'


def wait_until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        time.sleep(0.1)


def api(admin: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as response:
        return json.loads(response.read())


def backends(admin: int) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in api(admin, "/api/v1/backends")}


class Worker:
    """A container running storescp (its files in `out`) or httpd, stopped gracefully."""

    def __init__(self, engine: DockerEngine, name: str, program: list[str], labels: dict[str, str],
                 mounts: list[str], docker_args: Sequence[str] = ()) -> None:  # fmt: skip
        script = GRACEFUL.replace("PROGRAM", " ".join(program))
        mount_args = [arg for mount in mounts for arg in ("-v", mount)]
        engine.docker(
            "run", "-d", "--name", name, "--network", "host", "-v", "/:/host:ro", *mount_args,
            *docker_args,
            *[a for k, v in labels.items() for a in ("-l", f"{k}={v}")],
            engine.busybox_image(), "sh", "-c", script,
        )  # fmt: skip


def storescp_worker(
    engine: DockerEngine, name: str, out: Path, docker_args: Sequence[str] = (), **labels: str
) -> Worker:
    out.mkdir(parents=True)
    port = free_port()
    program = ["chroot", "/host", dcmtk_tool("storescp"), "--fork", "-aet", "WORKER", "-od",
               str(out), str(port)]  # fmt: skip
    return Worker(
        engine,
        name,
        program,
        {
            "dicomlb.enable": "true",
            "dicomlb.pool": "workers",
            "dicomlb.dicom.port": str(port),
            "dicomlb.dicom.aet": "WORKER",
            "dicomlb.max_associations": "8",
            **labels,
        },
        [f"{out}:/host{out}"],
        docker_args,
    )


def httpd_worker(engine: DockerEngine, name: str, www: Path) -> Worker:
    port = free_port()
    return Worker(
        engine,
        name,
        ["httpd", "-f", "-p", str(port), "-h", "/www"],
        {"dicomlb.enable": "true", "dicomlb.pool": "web", "dicomlb.http.port": str(port)},
        [f"{www}:/www:ro"],
    )


class Traffic:
    """A sender storing one instance per association and a client requesting, both until
    stopped; what each saw."""

    def __init__(self, dicom: int, http: int) -> None:
        self.dicom, self.http = dicom, http
        self.sent: list[str] = []  # SOP Instance UIDs acknowledged with Success
        self.failed: list[str] = []
        self.answers: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._store, daemon=True),
            threading.Thread(target=self._request, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _store(self) -> None:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CT_IMAGE)
        while not self._stop.is_set():
            (instance,) = make_small(1)
            assoc = ae.associate("127.0.0.1", self.dicom, ae_title="DICOMLB")
            if not assoc.is_established:
                self.failed.append(f"association {assoc}")
                time.sleep(0.05)
                continue
            status = assoc.send_c_store(instance)
            assoc.release()
            uid = str(instance.SOPInstanceUID)
            if status and status.Status == 0:
                self.sent.append(uid)
            else:
                self.failed.append(f"{uid}: {status}")

    def _request(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/", timeout=5) as r:
                    status = r.status
                    r.read()
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = 0
            self.answers[status] = self.answers.get(status, 0) + 1
            time.sleep(0.01)


def stored(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []


def test_containers_join_and_leave_while_traffic_flows_and_a_bad_label_skips_one(
    tmp_path: Path,
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("ok\n")
    dicom, http, admin = free_port(), free_port(), free_port()
    with DockerEngine() as engine:
        config = {
            "listeners": {
                "dicom": {"bind": f"127.0.0.1:{dicom}"},
                "http": {"bind": f"127.0.0.1:{http}"},
                "admin": {"bind": f"127.0.0.1:{admin}"},
            },
            "pools": {
                "workers": {"health": {"interval": "300ms", "timeout": "2s", "fall": 2}},
                "web": {"health": {"interval": "300ms", "timeout": "2s", "fall": 2}},
            },
            "routes": [{"name": "all", "pool": "workers"}],
            "http_routes": [{"name": "web", "pool": "web"}],
            "providers": {"docker": {"endpoint": engine.host}},
        }
        lb = DicomlbProcess(yaml.safe_dump(config), dicom, tmp_path / "lb").start()
        try:
            outs = {name: tmp_path / name for name in ("w1", "w2", "w3", "bad")}
            storescp_worker(engine, "w1", outs["w1"])
            storescp_worker(engine, "bad", outs["bad"], **{"dicomlb.weight": "heavy"})
            httpd_worker(engine, "h1", www)
            wait_until(
                lambda: {"w1", "h1"} <= {n for n, b in backends(admin).items() if b["up"]},
                "w1 and h1 up",
            )
            items = api(admin, "/api/v1/config")["backends"]
            (bad,) = [i for i in items if i["status"] != "ok"]
            assert (bad["name"], bad["provider"], bad["status"]) == ("bad", "docker", "error")
            assert bad["error"].startswith("container bad (")
            assert "dicomlb.weight" in bad["error"]
            assert {(i["name"], i["provider"]) for i in items if i["status"] == "ok"} == {
                ("w1", "docker"),
                ("h1", "docker"),
            }
            assert "bad" not in backends(admin)
            log = (tmp_path / "lb" / "dicomlb.log").read_text()
            assert "provider.error backend=bad pool=workers provider=docker" in log

            with Traffic(dicom, http) as traffic:
                wait_until(lambda: len(traffic.sent) >= 10, "10 instances sent")
                storescp_worker(engine, "w2", outs["w2"])
                storescp_worker(engine, "w3", outs["w3"])
                httpd_worker(engine, "h2", www)
                # New containers take work once their first check passed.
                wait_until(lambda: stored(outs["w2"]) and stored(outs["w3"]), "w2, w3 stored")
                wait_until(lambda: backends(admin).get("h2", {}).get("up"), "h2 up")
                engine.docker("stop", "w1")
                engine.docker("stop", "h1")
                wait_until(lambda: {"w1", "h1"}.isdisjoint(backends(admin)), "w1, h1 left", 5)
                count = len(traffic.sent)
                wait_until(lambda: len(traffic.sent) >= count + 20, "20 more after the stops")
            assert stored(outs["w1"]), "w1 stored before it left"
            assert traffic.failed == []
            assert set(traffic.answers) == {200}, traffic.answers
            assert not stored(outs["bad"])
            files = [name for out in outs.values() for name in stored(out)]
            uids = [name.partition(".")[2] for name in files]  # storescp: CT.<SOPInstanceUID>
            assert sorted(uids) == sorted(traffic.sent)  # every instance once, none lost
            assert (
                "docker.backend backend=w1 change=left"
                in (tmp_path / "lb" / "dicomlb.log").read_text()
            )
        finally:
            lb.stop()


def test_a_name_the_file_holds_and_a_failing_docker_health_check_fail_one_container_each(
    tmp_path: Path,
) -> None:
    dicom, admin = free_port(), free_port()
    fixed = StoreSCP("FIXED", tmp_path / "fixed").start()
    with DockerEngine() as engine:
        config = {
            "listeners": {
                "dicom": {"bind": f"127.0.0.1:{dicom}"},
                "admin": {"bind": f"127.0.0.1:{admin}"},
            },
            "pools": {
                "workers": {
                    "health": {"interval": "300ms", "timeout": "2s"},
                    "backends": [{"name": "fixed", "dicom": fixed.address}],
                }
            },
            "routes": [{"name": "all", "pool": "workers"}],
            "providers": {"docker": {"endpoint": engine.host}},
        }
        lb = DicomlbProcess(yaml.safe_dump(config), dicom, tmp_path / "lb").start()
        try:
            storescp_worker(engine, "dup", tmp_path / "dup", **{"dicomlb.name": "fixed"})
            storescp_worker(engine, "w1", tmp_path / "w1")
            healthy = ["--health-cmd", "true", "--health-interval", "1s"]
            failing = ["--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1"]
            storescp_worker(engine, "checked", tmp_path / "checked", docker_args=healthy)
            storescp_worker(engine, "sick", tmp_path / "sick", docker_args=failing)
            wait_until(
                lambda: {"w1", "checked"} <= {n for n, b in backends(admin).items() if b["up"]},
                "w1 and the healthy container up",
            )
            wait_until(
                lambda: engine.inspect("sick")["State"]["Health"]["Status"] == "unhealthy",
                "the failing health check",
            )
            items = {
                (i["name"], i["provider"], i["origin"].partition(" (")[0]): i
                for i in api(admin, "/api/v1/config")["backends"]
            }
            assert items[("fixed", "file", str(lb.config_path))]["status"] == "ok"
            conflict = items[("fixed", "docker", "container dup")]
            assert conflict["status"] == "conflict"
            assert 'backend "fixed" is already defined by file' in conflict["error"]
            assert items[("w1", "docker", "container w1")]["status"] == "ok"
            assert backends(admin)["fixed"]["provider"] == "file"
            assert "sick" not in backends(admin)  # an unhealthy container never joins
            log = (tmp_path / "lb" / "dicomlb.log").read_text()
            assert "provider.conflict backend=fixed pool=workers provider=docker" in log
        finally:
            lb.stop()
            fixed.close()
