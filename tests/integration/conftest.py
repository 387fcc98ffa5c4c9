"""dicomlb itself as a peer: the balancer runs in-process on its own event loop thread, on a
free loopback port, from a config dict a user would write; every test stops it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomlb.app import App
from dicomlb.config import build_snapshot, load_snapshot
from dicomlb.pools import BackendState, rendezvous_order
from tests.dicomdata import new_uid
from tests.peers import free_port


class Balancer:
    """A running dicomlb (App) on a background event loop."""

    def __init__(
        self, config: dict[str, Any], *, admin: bool = False, config_file: Path | None = None
    ) -> None:
        listeners = config.setdefault("listeners", {})
        listeners.setdefault("dicom", {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB"})
        if admin:
            listeners.setdefault("admin", {}).setdefault("bind", f"127.0.0.1:{free_port()}")
        if config_file is not None:  # a file, so that reload (API, SIGHUP, watch) can read it
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            self.snapshot = load_snapshot(config_file)
        else:
            self.snapshot = build_snapshot(config, source="<test>")
        assert self.snapshot.dicom is not None
        self.port = self.snapshot.dicom.port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app = App(self.snapshot, config_path=config_file)

    @property
    def admin_url(self) -> str:
        assert self.app.admin is not None, "start the balancer with admin=True"
        return self.app.admin.url.rstrip("/")

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """A request to the admin listener: (status, JSON body or text)."""
        data = None if body is None else json.dumps(body).encode()
        all_headers = dict(headers or {})
        if method != "GET":
            all_headers.setdefault("Content-Type", "application/json")
            data = data if data is not None else b"{}"
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.admin_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            status, raw, kind = err.code, err.read(), err.headers
        if "json" in kind.get("Content-Type", ""):
            return status, json.loads(raw)
        return status, raw.decode()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> Balancer:
        self.thread.start()
        self.call(self.app.start())
        return self

    def stop(self) -> None:
        self.call(self.app.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def backend(self, name: str) -> BackendState:
        return self.app.runtime.backends[name]

    def held(self) -> dict[str, tuple[int, int]]:
        """Backends with DICOM association slots leased out or HTTP connections in use, or
        messages counted in flight: name -> (slots and connections held, active)."""

        async def look() -> dict[str, tuple[int, int]]:
            runtime = self.app.runtime
            slots = {name: upstream.held for name, upstream in runtime.upstreams.items()}
            if self.app.http is not None:
                for name, conns in self.app.http.http.connections.items():
                    slots[name] = slots.get(name, 0) + conns.open - len(conns.idle)
            held = {name: (slots.get(name, 0), b.active) for name, b in runtime.backends.items()}
            return {name: counts for name, counts in held.items() if counts != (0, 0)}

        return dict(self.call(look()))

    def assert_nothing_held(self, settle: float = 5.0) -> None:
        """Every upstream slot given back and no message counted in flight, once the
        associations still closing have had `settle` seconds."""
        deadline = time.monotonic() + settle
        while (held := self.held()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not held, f"left held after the test (backend: (slots, active)): {held}"


@pytest.fixture
def balancer() -> Iterator[Any]:
    """`balancer(config, admin=False, config_file=None)` starts dicomlb with `config` (with the
    admin listener on a free port; from a YAML file written there); all stop after the test."""
    started: list[Balancer] = []

    def start(config: dict[str, Any], **options: Any) -> Balancer:
        lb = Balancer(config, **options).start()
        started.append(lb)
        return lb

    yield start
    try:
        for lb in started:
            lb.assert_nothing_held()  # DESIGN 13: every lease given back, on every exit path
    finally:
        for lb in started:
            lb.stop()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and certificates for dicomlb, the backend and the modality (loopback)."""
    root = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=root)  # fmt: skip
    ext = root / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("dicomlb", "backend", "modality"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=root)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", f"{name}.crt",
                cwd=root)  # fmt: skip
    return root


def uids_across(backends: Sequence[BackendState], count: int) -> list[str]:
    """`count` fresh Study Instance UIDs of which each of `backends` is the first choice of at
    least one (rendezvous order, as an `affinity` pool on the study places them): a test of
    spreading cannot then fail by chance, as random UIDs all on one backend would."""
    wanted = {b.name for b in backends}
    for _ in range(100):  # bounded; two backends and 4 UIDs fail a draw 1 time in 8
        uids = [new_uid() for _ in range(count)]
        if {rendezvous_order(uid, list(backends))[0].name for uid in uids} == wanted:
            return uids
    raise AssertionError(f"no {count} study UIDs spread over {sorted(wanted)}")
