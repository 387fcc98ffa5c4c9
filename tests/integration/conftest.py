"""dicomlb itself as a peer: the balancer runs in-process on its own event loop thread, on a
free loopback port, from a config dict a user would write; every test stops it.

At teardown the `balancer` fixture checks that nothing outlived the test (DESIGN 13): once
the test's own clients are gone and the linger deadlines have passed, no client association
or HTTP client connection is open, no backend slot or HTTP backend connection is leased, no
message is counted in flight, no spool ingest or delivery is half done, and once dicomlb has
stopped the process holds no more file descriptors than before it started.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
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

LINGER_MIN = 5.0  # seconds the check waits at least for what is still closing
LINGER_MAX = 15.0  # and at most, whatever deadlines a test configured
QUIET = 0.1  # seconds between two looks that must both find nothing held
FD_TOLERANCE = 2  # descriptors a first start may open for good (module caches)


def open_descriptors() -> list[str]:
    """What this process's descriptors point to (the balancer runs in-process)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the descriptor listdir itself used, closed since
            continue
    return out


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
            return self._held()

        return dict(self.call(look()))

    def _held(self) -> dict[str, tuple[int, int]]:
        """(on the balancer's loop) see `held`"""
        runtime = self.app.runtime
        slots = {name: upstream.held for name, upstream in runtime.upstreams.items()}
        if self.app.http is not None:
            for name, conns in self.app.http.http.connections.items():
                slots[name] = slots.get(name, 0) + conns.open - len(conns.idle)
        held = {name: (slots.get(name, 0), b.active) for name, b in runtime.backends.items()}
        return {name: counts for name, counts in held.items() if counts != (0, 0)}

    def leftovers(self) -> list[str]:
        """What is still held now, one phrase each: client associations and connections,
        backend slots and messages in flight, spool ingests and deliveries."""

        async def look() -> list[str]:
            app = self.app
            out = [
                f"backend {name}: {slots} slots or HTTP connections leased, {active} in flight"
                for name, (slots, active) in self._held().items()
            ]
            now = time.monotonic()
            if app.dicom is not None:
                for assoc in app.dicom.associations:
                    out.append(
                        f"client association from {assoc.peer[0]}:{assoc.peer[1]} "
                        f"calling_aet={assoc.calling_ae or '?'} state={assoc.assoc.state.name} "
                        f"messages={assoc.messages} open {now - assoc.started:.1f}s"
                    )
                stats = app.dicom.stats
                counts = {
                    "active": stats.active,
                    "negotiating": stats.negotiating,
                    "by_ip": sum(stats.by_ip.values()),
                    "by_calling_aet": sum(stats.by_calling_aet.values()),
                    "negotiating_by_ip": sum(stats.negotiating_by_ip.values()),
                }
                if any(counts.values()) and not app.dicom.associations:
                    out.append(f"DICOM listener counts without associations: {counts}")
            if app.http is not None:
                loop_now = asyncio.get_running_loop().time()
                for client in app.http.clients:
                    doing = "an exchange in progress" if client.exchange is not None else "idle"
                    out.append(
                        f"HTTP client connection from {client.peer[0]}:{client.peer[1]}, "
                        f"{doing}, last active {loop_now - client.last_activity:.1f}s ago"
                    )
            spool = app.spool
            if spool is not None:
                parts = sorted(p.name for p in spool.store.tmp.glob("*.part"))
                if parts:
                    out.append(f"spool: {len(parts)} instances half ingested: {parts[:5]}")
                for name, sender in spool.dispatcher.senders.items():
                    if sender.inflight:
                        out.append(f"spool: {sender.inflight} deliveries to {name} in flight")
            return out

        return list(self.call(look()))

    def linger(self) -> float:
        """How long what a test left may still take to close by itself: the listeners'
        deadlines for a peer that went quiet, within [LINGER_MIN, LINGER_MAX]."""
        deadlines = [LINGER_MIN]
        if self.snapshot.dicom is not None:
            deadlines.append(self.snapshot.dicom.artim_timeout + 1)
        return min(max(deadlines), LINGER_MAX)

    def assert_nothing_held(self, settle: float | None = None) -> None:
        """Nothing left held (see `leftovers`) once what is still closing has had `settle`
        seconds (the linger deadlines by default). Clean twice in a row, QUIET apart: what the
        test did last (a connection in the accept queue) has reached the loop by then."""
        deadline = time.monotonic() + (self.linger() if settle is None else settle)
        clean = 0
        while clean < 2:
            time.sleep(QUIET)
            left = self.leftovers()
            clean = 0 if left else clean + 1
            if left and time.monotonic() >= deadline:
                raise AssertionError("left held after the test:\n  " + "\n  ".join(left))


def assert_descriptors_back(before: list[str], settle: float = 2.0) -> None:
    """The process holds no more descriptors than `before` (within FD_TOLERANCE)."""
    deadline = time.monotonic() + settle
    while len(after := open_descriptors()) > len(before) + FD_TOLERANCE:
        if time.monotonic() >= deadline:
            extra = sorted((collections.Counter(after) - collections.Counter(before)).elements())
            raise AssertionError(
                f"{len(after) - len(before)} more descriptors than before dicomlb started "
                f"({len(before)} -> {len(after)}), new: {extra[:20]}"
            )
        time.sleep(0.05)


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so that teardown knows whether the test passed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def balancer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`balancer(config, admin=False, config_file=None)` starts dicomlb with `config` (with the
    admin listener on a free port; from a YAML file written there); all stop after the test,
    which then checks that nothing was left held (see the module's docstring)."""
    started: list[Balancer] = []
    descriptors_before = open_descriptors()

    def start(config: dict[str, Any], **options: Any) -> Balancer:
        lb = Balancer(config, **options).start()
        started.append(lb)
        return lb

    yield start
    call = request.node.stash.get(_REPORTS, {}).get("call")
    check = call is not None and call.passed  # a failed test's leftovers are its failure's
    try:
        if check:
            for lb in started:
                lb.assert_nothing_held()  # DESIGN 13: every lease given back, on every exit
    finally:
        for lb in started:
            lb.stop()
    if check and started:
        assert_descriptors_back(descriptors_before)


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
