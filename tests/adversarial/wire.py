"""A wire-level mutation fuzzer with a canary: hostile sessions against a running dicomlb.

`FuzzTarget` starts dicomlb as an operator runs it (a separate process, its log in a file)
in front of real backends: a DCMTK storescp for storage and a real Orthanc for query /
retrieve and HTTP. `capture_seeds` records what real clients send (echoscu, storescu,
findscu, getscu, movescu, HTTP GETs and uploads) through a recording relay; `campaign`
replays mutations of those sessions (`tests.adversarial.mutate`), many at a time, while a
canary stores a valid instance and GETs a page every half second. `Report.failures` says
what the issue's pass criteria say: no traceback or ERROR line, nothing left held once the
deadlines have passed, RSS growth bounded, no canary failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.adversarial.mutate import End, Plan, mutate_dicom, mutate_http, split_pdus
from tests.dicomdata import make_small, new_uid, write_series
from tests.peers import DicomlbProcess, Orthanc, StoreSCP, free_port, run_dcmtk

LOOPBACK = "127.0.0.1"
# Deadlines of the fuzzed dicomlb, short so that a run can check nothing outlives them.
ARTIM = 2.0
IDLE = 4.0
HTTP_IDLE = 4.0
SETTLE = max(ARTIM, IDLE, HTTP_IDLE) + 3.0  # then every hostile session must be gone
RSS_GROWTH_LIMIT = 10 * 1024 * 1024


# --------------------------------------------------------------------------- capture


class Recorder:
    """A TCP relay on a free loopback port that records, per connection, what the client
    sent. The client's answers come from the real target, so each session is complete."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.sessions: list[bytes] = []
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=30)
        sent = bytearray()

        def back() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        answer = threading.Thread(target=back, daemon=True)
        answer.start()
        with contextlib.suppress(OSError):
            client.settimeout(30)
            while data := client.recv(65536):
                sent += data
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        answer.join(30)
        client.close()
        upstream.close()
        with self._lock:
            self.sessions.append(bytes(sent))

    def take(self, timeout: float = 30.0) -> bytes:
        """The last finished session (waits for the relay threads to end)."""
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        with self._lock:
            assert self.sessions, "the client did not connect"
            return self.sessions.pop()

    def close(self) -> None:
        self._listener.close()


@dataclass
class Seeds:
    dicom: dict[str, list[bytes]] = field(default_factory=dict)  # name -> PDUs
    http: dict[str, bytes] = field(default_factory=dict)  # name -> client byte stream


# --------------------------------------------------------------------------- the target


def _config(target: FuzzTarget) -> str:
    store = target.storescp
    orthanc = target.orthanc
    config: dict[str, Any] = {
        "listeners": {
            "dicom": {
                "bind": f"{LOOPBACK}:{target.dicom_port}",
                "ae_title": "DICOMLB",
                "artim_timeout": ARTIM,
                "idle_timeout": IDLE,
                # the fuzzer's sessions come from 8 addresses; let them reach the parsers
                "max_negotiating_per_ip": 64,
            },
            "http": {
                "bind": f"{LOOPBACK}:{target.http_port}",
                "idle_timeout": HTTP_IDLE,
                "keepalive_timeout": HTTP_IDLE,
                "head_timeout": HTTP_IDLE,
            },
            "admin": {"bind": f"{LOOPBACK}:{target.admin_port}"},
        },
        "pools": {
            "store": {
                "health": {"interval": "1s", "timeout": "1s"},
                "idle_timeout": "1s",
                "response_timeout": "10s",
                "backends": [{"name": "scp", "dicom": store.address, "max_associations": 32}],
            },
            "archive": {
                "orthanc": True,  # its HTTP side is checked with GET /system
                "health": {"interval": "1s", "timeout": "1s"},
                "idle_timeout": "1s",
                "response_timeout": "10s",
                "backends": [
                    {
                        "name": "orthanc",
                        "dicom": orthanc.address,
                        "http": orthanc.url,
                        "max_associations": 4,
                    }
                ],
            },
        },
        "routes": [
            {
                "name": "qr",
                "match": {"command": ["C-FIND", "C-MOVE", "C-GET"]},
                "pool": "archive",
            },
            {"name": "default", "pool": "store"},
        ],
        "http_routes": [{"name": "orthanc", "pool": "archive"}],
    }
    for name, settings in target.listeners.items():
        config["listeners"][name].update(settings)
    return json.dumps(config)  # JSON is YAML


class FuzzTarget:
    """dicomlb (a process) in front of storescp and Orthanc, on free loopback ports.

    `listeners` overrides settings of the `dicom`, `http` and `admin` listeners (limits and
    deadlines for the flood tests)."""

    def __init__(
        self, workdir: Path, listeners: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.workdir = workdir
        self.listeners = {name: dict(settings) for name, settings in (listeners or {}).items()}
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.admin_port = free_port()
        self.storescp = StoreSCP("FUZZSCP", fork=True, ignore=True)
        self.orthanc = Orthanc(
            "FUZZORTHANC",
            modalities={
                "lb": f"DICOMLB@{LOOPBACK}:{self.dicom_port}",
                "fuzz": f"FUZZ@{LOOPBACK}:{self.dicom_port}",
            },
            config={"DicomScpTimeout": 5},
        )
        self.dicomlb: DicomlbProcess | None = None
        self.journal = workdir / "plans.log"

    def __enter__(self) -> FuzzTarget:
        self.storescp.start()
        self.orthanc.start()
        self.dicomlb = DicomlbProcess(
            _config(self), self.dicom_port, self.workdir / "dicomlb", start_timeout=30
        )
        self.dicomlb.start()
        # one instance in the archive, so that queries and retrieves have answers
        self.study_uid = new_uid()
        files = write_series(
            make_small(2, "MR", study_uid=self.study_uid), self.workdir / "archive"
        )
        for path in files:
            self.orthanc.request("POST", "/instances", path.read_bytes())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dicomlb is not None:
            self.dicomlb.close()
        self.orthanc.close()
        self.storescp.close()

    @property
    def pid(self) -> int:
        assert self.dicomlb is not None
        return self.dicomlb.pid

    def alive(self) -> bool:
        assert self.dicomlb is not None and self.dicomlb.process is not None
        return self.dicomlb.process.poll() is None

    def log(self) -> str:
        assert self.dicomlb is not None
        return self.dicomlb.log_path.read_text(errors="replace")

    def log_lines(self, since: int = 0, event: str = "") -> list[str]:
        """Log lines after character `since` of the log (`len(log())` earlier); with `event`,
        only that event's lines (`listener.refused`, `association.rejected` ...)."""
        lines = self.log()[since:].splitlines()
        return [line for line in lines if not event or f" {event} " in f"{line} "]

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/fd").iterdir()))

    def admin(self, path: str) -> Any:
        url = f"http://{LOOPBACK}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def held(self) -> list[str]:
        """What is still held: client associations and connections, backend slots in use."""
        out: list[str] = []
        for listener in self.admin("/api/v1/listeners"):
            if listener["name"] in ("dicom", "http") and listener.get("active"):
                out.append(f"listener {listener['name']}: {listener['active']} open")
            if listener.get("negotiating"):
                out.append(f"listener {listener['name']}: {listener['negotiating']} negotiating")
        for backend in self.admin("/api/v1/backends"):
            name = backend["name"]
            if backend["active"]:
                out.append(f"backend {name}: {backend['active']} messages in flight")
            leased = backend["upstream_open"] - backend["upstream_idle"]
            if leased:
                out.append(f"backend {name}: {leased} association slots held")
            http_open = backend.get("http_open_connections")
            http_idle = backend.get("http_idle_connections")
            if http_open is not None and http_idle is not None and http_open - http_idle:
                out.append(f"backend {name}: {http_open - http_idle} HTTP connections held")
        return out

    # ---- seeds

    def capture_seeds(self) -> Seeds:
        """Real clients' sessions, recorded on their way to dicomlb."""
        seeds = Seeds()
        files = write_series(make_small(2, "CT"), self.workdir / "seed-store")
        host = LOOPBACK
        aets = ["-aet", "FUZZ", "-aec", "DICOMLB"]
        study = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={self.study_uid}"]
        # tool, options, then the operands that follow host and port
        dicom_runs: dict[str, tuple[str, list[str], list[str]]] = {
            "echoscu": ("echoscu", aets, []),
            "storescu": ("storescu", aets, [str(path) for path in files]),
            "storescu-deflated": ("storescu", [*aets, "-xd"], [str(files[0])]),
            "findscu": ("findscu", [*aets, *study, "-k", "PatientName"], []),
            "getscu": ("getscu", [*aets, *study, "-od", str(self.workdir)], []),
            "movescu": ("movescu", [*aets, *study, "-aem", "NOWHERE"], []),
        }
        recorder = Recorder(self.dicom_port)
        try:
            for name, (tool, options, operands) in dicom_runs.items():
                run_dcmtk(tool, [*options, host, str(recorder.port), *operands], timeout=60)
                seeds.dicom[name] = split_pdus(recorder.take())
        finally:
            recorder.close()
        recorder = Recorder(self.http_port)
        try:
            body = files[0].read_bytes()
            requests: dict[str, list[tuple[str, str, bytes | None, dict[str, str]]]] = {
                "http-get": [("GET", "/system", None, {})],
                "http-keepalive": [
                    ("GET", "/patients", None, {}),
                    ("HEAD", "/system", None, {}),
                    ("GET", "/statistics", None, {}),
                ],
                "http-upload": [
                    ("POST", "/instances", body, {"Content-Type": "application/dicom"})
                ],
                "http-chunked": [
                    ("POST", "/tools/find", b'{"Level":"Study","Query":{}}', {"chunked": "1"})
                ],
            }
            for name, calls in requests.items():
                connection = http.client.HTTPConnection(host, recorder.port, timeout=30)
                for method, path, data, headers in calls:
                    chunked = headers.pop("chunked", None) is not None
                    if chunked:
                        connection.putrequest(method, path)
                        connection.putheader("Transfer-Encoding", "chunked")
                        connection.endheaders()
                        assert data is not None
                        connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
                    else:
                        connection.request(method, path, body=data, headers=headers)
                    connection.getresponse().read()
                connection.close()
                seeds.http[name] = recorder.take()
        finally:
            recorder.close()
        return seeds


# --------------------------------------------------------------------------- replay


async def replay(port: int, plan: Plan, *, source: str = LOOPBACK, read_for: float = 0.5) -> None:
    """Send a plan's pieces to `port`, read whatever comes back for a moment, end as told.

    Every wait is bounded: a hostile session lasts at most a few seconds here, whatever
    the server does (a LINGER session waits for the server to act, up to SETTLE).
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0)), 5
        )
    except (OSError, TimeoutError):
        return
    try:
        for pause, piece in zip(plan.pauses, plan.pieces, strict=True):
            if pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.drain(), 2)
        if plan.end is End.RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if plan.end is End.CLOSE and writer.can_write_eof():
            writer.write_eof()
        deadline = read_for if plan.end is End.CLOSE else SETTLE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while await reader.read(65536):
                    pass
    except (OSError, ConnectionError):
        pass
    finally:
        writer.transport.abort()


# --------------------------------------------------------------------------- canary


class Canary:
    """Stores a valid instance through dicomlb and GETs a page every half second."""

    def __init__(self, target: FuzzTarget) -> None:
        self.target = target
        self.stores = 0
        self.store_failures: list[str] = []
        self.gets = 0
        self.get_failures: list[str] = []
        self._stop = threading.Event()
        # Held around each attempt; `paused` takes them, so no attempt runs meanwhile.
        self._store_turn = threading.Lock()
        self._get_turn = threading.Lock()
        self._threads = [
            threading.Thread(target=self._store_loop, daemon=True),
            threading.Thread(target=self._get_loop, daemon=True),
        ]
        self._instance: Dataset = make_small(1, "MR", pixels=False)[0]

    def __enter__(self) -> Canary:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @contextlib.contextmanager
    def paused(self, *, store: bool = True, get: bool = True) -> Iterator[None]:
        """No canary store (get) runs in this block: it waits for the attempt under way, if
        any. For a test that fills an overall limit on purpose: the canary would be refused
        there by design, which the test checks with its own clients."""
        with contextlib.ExitStack() as stack:
            if store:
                stack.enter_context(self._store_turn)
            if get:
                stack.enter_context(self._get_turn)
            yield

    def _store_loop(self) -> None:
        ae = AE(ae_title="CANARY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(self._instance.SOPClassUID, "1.2.840.10008.1.2.1")
        while not self._stop.wait(0.5):
            with self._store_turn:
                self._store_once(ae)

    def _store_once(self, ae: AE) -> None:
        self._instance.SOPInstanceUID = new_uid()
        self._instance.file_meta.MediaStorageSOPInstanceUID = self._instance.SOPInstanceUID
        assoc = ae.associate(LOOPBACK, self.target.dicom_port, ae_title="DICOMLB")
        if not assoc.is_established:
            self.store_failures.append("association not established")
            return
        try:
            status = assoc.send_c_store(self._instance)
            code = getattr(status, "Status", None)
            if code != 0:
                self.store_failures.append(f"status {code!r}")
            else:
                self.stores += 1
        finally:
            assoc.release()

    def _get_loop(self) -> None:
        url = f"http://{LOOPBACK}:{self.target.http_port}/system"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.wait(0.5):
            with self._get_turn:
                try:
                    with opener.open(url, timeout=10) as response:
                        response.read()
                        self.gets += 1
                except Exception as err:  # the canary reports every failure, whatever its kind
                    self.get_failures.append(repr(err))


# --------------------------------------------------------------------------- a campaign


@dataclass
class Report:
    sessions: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    rss_before: int = 0
    rss_after: int = 0
    fds_before: int = 0
    fds_after: int = 0
    tracebacks: int = 0
    errors: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    canary_stores: int = 0
    canary_gets: int = 0
    canary_failures: list[str] = field(default_factory=list)
    alive: bool = True

    @property
    def per_second(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    def failures(self) -> list[str]:
        out: list[str] = []
        if not self.alive:
            out.append("dicomlb died")
        if self.tracebacks:
            out.append(f"{self.tracebacks} tracebacks in the log")
        out += [f"ERROR line: {line}" for line in self.errors[:10]]
        out += [f"held after {SETTLE:g}s: {what}" for what in self.held]
        growth = self.rss_after - self.rss_before
        if growth > RSS_GROWTH_LIMIT:
            out.append(f"RSS grew {growth / 2**20:.1f} MiB (limit {RSS_GROWTH_LIMIT >> 20})")
        out += [f"canary: {failure}" for failure in self.canary_failures[:10]]
        return out

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions in {self.seconds:.0f}s ({self.per_second:.0f}/s), "
            f"tracebacks {self.tracebacks}, RSS {self.rss_before / 2**20:.1f} -> "
            f"{self.rss_after / 2**20:.1f} MiB, fds {self.fds_before} -> {self.fds_after}, "
            f"canary {self.canary_stores} stores / {self.canary_gets} GETs, "
            f"{len(self.canary_failures)} failures"
        )


def plans(seeds: Seeds, rng: random.Random) -> Iterator[Plan]:
    """Endless hostile plans, DICOM and HTTP seeds in turn."""
    dicom = sorted(seeds.dicom.items())
    web = sorted(seeds.http.items())
    while True:
        if rng.random() < 0.7:
            name, pdus = rng.choice(dicom)
            yield mutate_dicom(name, pdus, rng)
        else:
            name, stream = rng.choice(web)
            yield mutate_http(name, stream, rng)


async def _run(
    target: FuzzTarget, seeds: Seeds, *, sessions: int, seconds: float, seed: int, parallel: int
) -> tuple[int, dict[str, int]]:
    rng = random.Random(seed)
    source = plans(seeds, rng)
    done = 0
    kinds: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    lock = asyncio.Lock()
    started = time.monotonic()
    journal = target.journal.open("a")  # what was sent when, to find a failure's cause

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with lock:
                if done >= sessions:
                    return
                done += 1
                plan = next(source)
            kinds[plan.kind] = kinds.get(plan.kind, 0) + 1
            journal.write(
                f"{time.monotonic() - started:.3f} {plan.kind} {plan.mutation} {plan.end.value}\n"
            )
            port = target.dicom_port if not plan.kind.startswith("http") else target.http_port
            # hostile peers come from addresses of their own; the canary from 127.0.0.1
            await replay(port, plan, source=f"127.0.0.{2 + done % 8}")

    try:
        await asyncio.gather(*(worker() for _ in range(parallel)))
    finally:
        journal.close()
    return done, kinds


def campaign(
    target: FuzzTarget,
    seeds: Seeds,
    *,
    sessions: int,
    seconds: float,
    seed: int = 0,
    parallel: int = 16,
) -> Report:
    """Replay up to `sessions` mutated sessions for at most `seconds`, canary running; then
    wait past the deadlines and read what the pass criteria need."""
    report = Report()
    log_start = len(target.log())
    report.rss_before, report.fds_before = target.rss(), target.fds()
    started = time.monotonic()
    with Canary(target) as canary:
        report.sessions, report.by_kind = asyncio.run(
            _run(target, seeds, sessions=sessions, seconds=seconds, seed=seed, parallel=parallel)
        )
        report.seconds = time.monotonic() - started
        time.sleep(SETTLE)
    report.alive = target.alive()
    if report.alive:
        try:
            report.held = target.held()
        except OSError as err:  # a frozen event loop: the admin API does not answer
            report.held = [f"the admin API did not answer: {err!r}"]
        report.rss_after, report.fds_after = target.rss(), target.fds()
    log = target.log()[log_start:]
    report.tracebacks = log.count("Traceback (most recent call last)")
    report.errors = [line for line in log.splitlines() if " ERROR " in line]
    report.canary_stores, report.canary_gets = canary.stores, canary.gets
    report.canary_failures = canary.store_failures + canary.get_failures
    return report
