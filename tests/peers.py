"""Real network peers for integration tests and benchmarks: DCMTK tools, Orthanc, PostgreSQL.

No mocks (DESIGN.md decision 12). Every peer runs on loopback on a free port, gets
``TCP_NODELAY=1`` in its environment (decision 5: Debian's DCMTK and Orthanc leave Nagle on
for DICOM otherwise, and each C-STORE then stalls about 40 ms), runs in its own process
group, and is stopped by ``stop()`` / the context manager, children included.

    with StoreSCP("BACKEND1") as scp:
        storescu("127.0.0.1", scp.port, series_dir, aec=scp.ae_title).check_returncode()
        assert len(scp.files()) == 300

    with Orthanc(modalities={"DICOMLB": "DICOMLB@127.0.0.1:11112"}) as orthanc:
        ...
        assert orthanc.calling_aet(orthanc.find_sop(uid)) == "DICOMLB"

    with Postgres(database="orthanc", user="orthanc") as pg:  # Orthancs sharing one index
        ...

The DCMTK tools are called by absolute path (``/usr/bin`` or ``$DICOMLB_DCMTK_BIN``):
pynetdicom installs console scripts named ``storescp``, ``storescu``, ``echoscu``... that
come first on PATH here and take different options.

DCMTK 3.6.7's storescp and Orthanc 1.10.1's DICOM server cannot bind one address: they
listen on every interface. Clients in this module always connect to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "LOOPBACK",
    "ORTHANC_BIN",
    "STORESCU_PROPOSE",
    "DicomlbProcess",
    "Orthanc",
    "PeerError",
    "PeerProcess",
    "Postgres",
    "StoreSCP",
    "dataset_bytes",
    "dcmtk_tool",
    "echoscu",
    "free_port",
    "have_dcmtk",
    "have_orthanc",
    "have_postgres",
    "is_listening",
    "orthanc_nodes",
    "parse_address",
    "peer_env",
    "run_dcmtk",
    "sop_instance_uid",
    "stop_process",
    "storescu",
    "wait_listening",
]

LOOPBACK = "127.0.0.1"
_T = TypeVar("_T")
DCMTK_BIN = Path(os.environ.get("DICOMLB_DCMTK_BIN", "/usr/bin"))
ORTHANC_BIN = os.environ.get("DICOMLB_ORTHANC_BIN", "/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
POSTGRES_BIN = Path(os.environ.get("DICOMLB_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))

PathLike = os.PathLike[str] | str


class PeerError(RuntimeError):
    """A peer did not start, did not answer, or answered with an error."""


# --------------------------------------------------------------------------- plumbing


def peer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a peer process: ours plus ``TCP_NODELAY=1`` (DESIGN.md #5)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


_GIVEN_PORTS: set[int] = set()  # ports free_port() returned in this process
_PICK = random.Random()  # its own generator: hypothesis seeds the global one per example


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; a default elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(part) for part in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _outside_ephemeral() -> range:
    low, high = _ephemeral_range()
    below = range(10000, min(low, 65536))
    above = range(max(high + 1, 10000), 65536)
    return below if len(below) >= len(above) else above


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    Ports come from outside the kernel's ephemeral range: a port the kernel picked for
    ``bind(0)`` is also one it hands to the next outgoing connection (a peer's, the
    balancer's), which then holds it when the peer we start tries to listen there. A random
    pick tested with a bind keeps two test processes apart. A port is never handed out twice
    in one test process: a peer not started yet must not get the balancer's port, or the
    balancer would relay to itself.
    """
    candidates = _outside_ephemeral()
    for _ in range(1000):
        port = _PICK.choice(candidates)
        if port in _GIVEN_PORTS or is_listening(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError("no loopback port left that was not handed out before")


def is_listening(port: int) -> bool:
    """True when some socket on this host is in LISTEN state on ``port`` (IPv4 or IPv6).

    Reads /proc/net/tcp{,6} so that probing never opens a connection to the peer (a bare
    connect makes DICOM servers log a failed association). Falls back to a connect where
    /proc is missing.
    """
    wanted = f":{port:04X}"
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            # fields: sl local_address rem_address st ...; st 0A is TCP_LISTEN
            if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(wanted):
                return True
    if found_table:
        return False
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def wait_listening(
    port: int,
    *,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    what: str = "peer",
    log: Path | None = None,
) -> None:
    """Wait until ``port`` is listening; raise PeerError on timeout or if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if process is not None and process.poll() is not None:
            raise PeerError(
                f"{what} exited with code {process.returncode} before listening on port "
                f"{port}{_log_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise PeerError(
                f"{what} is not listening on port {port} after {timeout}s{_log_tail(log)}"
            )
        time.sleep(0.01)


def stop_process(
    process: subprocess.Popen[bytes] | None, *, timeout: float = 5.0, graceful: bool = True
) -> None:
    """Stop a peer started with ``start_new_session=True``: SIGTERM its group, then SIGKILL.

    ``graceful=False`` sends SIGKILL at once. The process group holds the children of
    ``storescp --fork`` too. Only the group whose id is this process's pid is signalled.
    """
    if process is None:
        return
    signals = (signal.SIGTERM, signal.SIGKILL) if graceful else (signal.SIGKILL,)
    for sig in signals:
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    # children of a --fork server may outlive their parent; the group id is still valid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=timeout)


def _log_tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log tail ---\n" + "\n".join(tail) if tail else ""


def parse_address(address: str) -> tuple[str, str, int]:
    """Split ``"AET@host:port"`` into ``(aet, host, port)``."""
    aet, sep, hostport = address.partition("@")
    host, colon, port = hostport.rpartition(":")
    if not sep or not colon or not aet or not port.isdigit():
        raise ValueError(f"address {address!r} is not of the form AET@host:port")
    return aet, host, int(port)


# --------------------------------------------------------------------------- files


def dataset_bytes(path: PathLike) -> bytes:
    """Return the bytes of the data set in a Part-10 file, after its file meta group.

    The meta group is skipped by hand: its elements are explicit VR little endian (PS3.10
    7.1); the length comes from (0002,0000) when that is first, else the group is walked.
    A file without the ``DICM`` preamble (``storescp -F``) is returned whole. For deflated
    transfer syntaxes these are the deflated bytes, as stored.
    """
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM":
        return data
    offset = 132
    if data[offset : offset + 6] == b"\x02\x00\x00\x00UL":
        group_length = int.from_bytes(data[offset + 8 : offset + 12], "little")
        return data[offset + 12 + group_length :]
    while data[offset : offset + 2] == b"\x02\x00":
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(data[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return data[offset:]


def sop_instance_uid(path: PathLike) -> str:
    """Return the SOP Instance UID of a DICOM file (read without its pixel data)."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    uid = ds.get("SOPInstanceUID")
    if uid is None and "MediaStorageSOPInstanceUID" in getattr(ds, "file_meta", {}):
        uid = ds.file_meta.MediaStorageSOPInstanceUID
    if uid is None:
        raise ValueError(f"{path}: no SOP Instance UID")
    return str(uid)


# --------------------------------------------------------------------------- DCMTK clients


def dcmtk_tool(name: str) -> str:
    """Absolute path of a DCMTK tool; raises PeerError if it is not installed.

    Never resolved through PATH: pynetdicom's console scripts of the same names shadow DCMTK.
    """
    path = DCMTK_BIN / name
    if not os.access(path, os.X_OK):
        raise PeerError(
            f"DCMTK tool {path} not found; apt-get install dcmtk or set DICOMLB_DCMTK_BIN"
        )
    return str(path)


def have_dcmtk() -> bool:
    """True when DCMTK's storescp, storescu and echoscu are installed."""
    return all(os.access(DCMTK_BIN / tool, os.X_OK) for tool in ("storescp", "storescu", "echoscu"))


def have_orthanc() -> bool:
    """True when the Orthanc server binary is installed."""
    return os.access(ORTHANC_BIN, os.X_OK)


def run_dcmtk(
    tool: str, args: Sequence[str], *, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion with ``TCP_NODELAY=1``; output is captured as text.

    Raises subprocess.TimeoutExpired (after killing it) when it runs past ``timeout``.
    """
    return subprocess.run(
        [dcmtk_tool(tool), *args],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# storescu flags that make it propose a transfer syntax first, so a file in that syntax is
# sent as stored. Without them storescu converts implicit VR and deflated files to explicit
# VR little endian while sending (the accepting SCP prefers that).
STORESCU_PROPOSE: dict[str, tuple[str, ...]] = {
    "explicit": ("-xe",),
    "implicit": ("-xi",),
    "big": ("-xb",),
    "deflated": ("-xd",),
    "jpeg-lossless": ("-xs",),
    "jpeg8": ("-xy",),
    "jpeg12": ("-xx",),
    "j2k-lossless": ("-xv",),
    "j2k": ("-xw",),
    "rle": ("-xr",),
}


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def storescu(
    target_host: str,
    port: int,
    files_or_dir: PathLike | Iterable[PathLike],
    *,
    aet: str = "STORESCU",
    aec: str = "ANY-SCP",
    transfer_syntax: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or every file under directories, recursively) with DCMTK ``storescu``.

    One association for the whole call. ``transfer_syntax`` (a key of STORESCU_PROPOSE)
    makes storescu propose that syntax first; by default it proposes explicit VR and
    converts implicit VR and deflated files while sending, so the data set bytes change.
    A non-zero ``returncode`` means the association or a C-STORE failed (storescu halts on
    the first failure unless ``extra_args`` has ``-nh``).
    """
    paths = _as_paths(files_or_dir)
    scan = ["+sd", "+r"] if any(os.path.isdir(p) for p in paths) else []
    propose = STORESCU_PROPOSE[transfer_syntax] if transfer_syntax else ()
    args = ["-aet", aet, "-aec", aec, *scan, *propose, *extra_args]
    args += [target_host, str(port), *paths]
    return run_dcmtk("storescu", args, timeout=timeout)


def echoscu(
    target_host: str,
    port: int,
    *,
    aet: str = "ECHOSCU",
    aec: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with DCMTK ``echoscu``; ``returncode`` 0 means Success."""
    args = ["-aet", aet, "-aec", aec, *extra_args, target_host, str(port)]
    return run_dcmtk("echoscu", args, timeout=timeout)


# --------------------------------------------------------------------------- StoreSCP


def _at_least(
    read: Callable[[], list[_T]], count: int, *, timeout: float, every: float
) -> list[_T]:
    """`read()` again every `every` seconds until it has `count` items or `timeout` passed;
    its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(every)


class PeerProcess:
    """What every peer process shares: its log, and a context manager that starts it and
    always cleans up (`close()`), also when starting fails."""

    log_path: Path
    _process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the peer's process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def log(self) -> str:
        """The peer's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StoreSCP(PeerProcess):
    """DCMTK ``storescp`` as a storage backend, on a free port unless one is given.

    Accepts every transfer syntax DCMTK knows (``+xa``: implicit, explicit LE/BE, deflated,
    JPEG, JPEG-LS, JPEG 2000, RLE, MPEG...) and, by default, writes what it receives bit for
    bit (``+B``), so ``dataset_bytes(file)`` equals what the sender sent. ``ignore=True``
    discards data (a benchmark sink); ``fork=True`` serves associations in parallel.

    ``profile=(file, name)`` negotiates by that DCMTK association profile (``-xf``: only the
    SOP classes and transfer syntaxes it lists) instead of ``+xa``.

    ``stop()`` and ``start()`` may be called repeatedly: the port, AE title and output
    directory stay, so a test can take a backend down and bring it back. A temporary
    working directory (output and ``storescp.log``) is removed by ``close()`` / the
    context manager; an ``output_dir`` passed in is left alone.
    """

    host = LOOPBACK

    def __init__(
        self,
        ae_title: str = "STORESCP",
        output_dir: PathLike | None = None,
        *,
        port: int | None = None,
        fork: bool = False,
        ignore: bool = False,
        bit_preserving: bool = True,
        max_pdu: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        profile: tuple[PathLike, str] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.fork = fork
        self.ignore = ignore
        self.bit_preserving = bit_preserving
        self.max_pdu = max_pdu
        self.extra_args = list(extra_args)
        self.profile = profile
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"storescp-{ae_title}-"))
        self.output_dir = Path(output_dir) if output_dir is not None else self.workdir / "in"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "storescp.log"
        self._process = None

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:port``, the form dicomlb's config takes."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The storescp command line this peer runs."""
        negotiation = (
            ["+xa"] if self.profile is None else ["-xf", str(self.profile[0]), self.profile[1]]
        )
        cmd = [dcmtk_tool("storescp"), "-aet", self.ae_title, *negotiation, "-dhl"]
        if self.fork:
            cmd.append("--fork")
        if self.ignore:
            cmd.append("--ignore")
        elif self.bit_preserving:
            cmd.append("+B")
        if self.max_pdu is not None:
            cmd += ["-pdu", str(self.max_pdu)]
        cmd += [*self.extra_args, "-od", str(self.output_dir), str(self.port)]
        return cmd

    def start(self) -> Self:
        """Start storescp and wait until its port listens. No-op if already running."""
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=peer_env(),
                start_new_session=True,
            )
        try:
            wait_listening(
                self.port,
                timeout=self.start_timeout,
                process=self._process,
                what=f"storescp {self.ae_title}",
                log=self.log_path,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop storescp (and its forked children) and wait until the port is closed."""
        stop_process(self._process)
        self._process = None
        deadline = time.monotonic() + 5.0
        while is_listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Stop and remove the temporary working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def files(self) -> list[Path]:
        """Received files under the output directory, sorted by path."""
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    def clear(self) -> None:
        """Delete every received file (the output directory stays)."""
        for path in self.files():
            path.unlink(missing_ok=True)

    def by_sop_instance_uid(self) -> dict[str, Path]:
        """Received files keyed by their SOP Instance UID."""
        return {sop_instance_uid(p): p for p in self.files()}

    def wait_files(self, count: int, *, timeout: float = 10.0) -> list[Path]:
        """Wait until at least ``count`` files were received; return them."""
        return _at_least(self.files, count, timeout=timeout, every=0.02)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<StoreSCP {self.address} {state}>"


# --------------------------------------------------------------------------- Orthanc


Modality = str | Sequence[Any] | Mapping[str, Any]


def _modality_entry(value: Modality) -> list[Any] | dict[str, Any]:
    if isinstance(value, str):
        aet, host, port = parse_address(value)
        return [aet, host, port]
    if isinstance(value, Mapping):
        return dict(value)
    return list(value)


class Orthanc(PeerProcess):
    """A real Orthanc server (Debian package) on free HTTP and DICOM ports.

    Configuration goes to ``cfg.json`` in a temporary directory, with storage and index
    beside it; ``config`` entries override the defaults. ``modalities`` becomes
    ``DicomModalities``: a name maps to ``"AET@host:port"``, ``[aet, host, port]`` or
    Orthanc's object form. Echo and store are allowed from anyone; find/get/move only from
    listed modalities (Orthanc's default). Start takes about 0.1 s.

    ``stop()`` / ``start()`` keep ports and stored data; ``close()`` (and the context
    manager) also removes the directory.
    """

    host = LOOPBACK

    def __init__(
        self,
        aet: str = "ORTHANC",
        *,
        modalities: Mapping[str, Modality] | None = None,
        plugins: Sequence[PathLike] = (),
        config: Mapping[str, Any] | None = None,
        name: str = "dicomlb-test",
        http_port: int | None = None,
        dicom_port: int | None = None,
        verbose: bool = False,
        start_timeout: float = 20.0,
    ) -> None:
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.verbose = verbose
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"orthanc-{aet}-"))
        self.config_path = self.workdir / "cfg.json"
        self.log_path = self.workdir / "orthanc.log"
        storage = self.workdir / "storage"
        (self.workdir / "tmp").mkdir()
        self.config: dict[str, Any] = {
            "Name": name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            # Its temporary files (uploads, DICOMweb) go with the rest when the peer closes.
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {k: _modality_entry(v) for k, v in (modalities or {}).items()},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "Plugins": [os.fspath(p) for p in plugins],
            "SaveJobs": False,
        }
        self.config.update(config or {})
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._process = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        """Base URL of the REST API, ``http://127.0.0.1:port``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:dicom_port``, the form dicomlb's config takes."""
        return f"{self.aet}@{self.host}:{self.dicom_port}"

    def start(self) -> Self:
        """Write the config, start Orthanc, wait for ``/system`` and the DICOM port."""
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.config, indent=2))
        cmd = [ORTHANC_BIN, *(["--verbose"] if self.verbose else []), str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=peer_env(),
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise PeerError(
                    f"Orthanc exited with code {self._process.returncode} while starting"
                    f"{_log_tail(self.log_path)}"
                )
            try:
                with self._opener.open(f"{self.url}/system", timeout=1.0) as response:
                    if response.status == 200:
                        break
            except urllib.error.HTTPError as err:
                if err.code == 401:  # AuthenticationEnabled: it answers, so it is up
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise PeerError(f"Orthanc did not answer /system in {self.start_timeout}s")
            time.sleep(0.02)
        wait_listening(
            self.dicom_port,
            timeout=max(1.0, deadline - time.monotonic()),
            process=self._process,
            what="Orthanc DICOM server",
            log=self.log_path,
        )

    def stop(self, *, graceful: bool = True) -> None:
        """Stop Orthanc and wait for it; its ports are closed on return.

        Graceful: SIGTERM, SIGKILL after 10 s. Orthanc 1.10.1 takes about 3.5 s to stop so
        (2 s for its HTTP server, 1 s for the DICOM server). ``graceful=False`` kills it at
        once, as a crash would; the index may then lose the last writes.
        """
        stop_process(self._process, timeout=10.0, graceful=graceful)
        self._process = None

    def close(self) -> None:
        """Kill Orthanc and remove the working directory (config, storage, log).

        No graceful stop: everything it stored is deleted anyway, and it saves 3.5 s.
        """
        self.stop(graceful=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Orthanc {self.address} {self.url} {state}>"

    # ---- REST

    def request(
        self, method: str, path: str, body: bytes | str | None = None, *, timeout: float = 30.0
    ) -> bytes:
        """Send one REST request and return the body; raise PeerError on an HTTP error."""
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        try:
            with self._opener.open(req, timeout=timeout) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise PeerError(f"Orthanc {method} {path}: HTTP {err.code} {detail}") from err

    def get_json(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` (JSON-encoded unless bytes/str) to ``path``; decode the answer."""
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        answer = self.request("POST", path, raw)
        return json.loads(answer) if answer.strip() else None

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        ids: list[str] = self.get_json("/instances")
        return ids

    def instance_file(self, instance_id: str) -> bytes:
        """The stored Part-10 file, as Orthanc received it."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_dataset_bytes(self, instance_id: str) -> bytes:
        """The data set bytes of the stored file (after the file meta group)."""
        with tempfile.NamedTemporaryFile(dir=self.workdir, suffix=".dcm") as tmp:
            tmp.write(self.instance_file(instance_id))
            tmp.flush()
            return dataset_bytes(tmp.name)

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Tags by keyword (``/instances/{id}/simplified-tags``), e.g. ``["Modality"]``."""
        tags: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return tags

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """Orthanc's metadata for an instance: RemoteAET, CalledAET, RemoteIP, Origin..."""
        meta: dict[str, str] = self.get_json(f"/instances/{instance_id}/metadata?expand")
        return meta

    def calling_aet(self, instance_id: str) -> str:
        """The AE title that sent an instance, as Orthanc recorded it (metadata RemoteAET)."""
        return self.instance_metadata(instance_id)["RemoteAET"]

    def find_sop(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOP Instance UID, or None if not stored."""
        for hit in self.post_json("/tools/lookup", sop_instance_uid) or []:
            if hit.get("Type") == "Instance":
                found: str = hit["ID"]
                return found
        return None

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        answer = self.post_json("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in answer}

    def wait_instances(self, count: int, *, timeout: float = 10.0) -> list[str]:
        """Wait until at least ``count`` instances are stored; return their IDs."""
        return _at_least(self.instances, count, timeout=timeout, every=0.05)

    def clear(self) -> None:
        """Delete every stored patient (and so every instance)."""
        for patient in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{urllib.parse.quote(patient)}")


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: the ``postgres`` account when we are root (the
    server refuses to run as root), else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def have_postgres() -> bool:
    """True when the PostgreSQL server binaries are installed and can run here (as root,
    they need the ``postgres`` OS account)."""
    binaries = all(os.access(POSTGRES_BIN / tool, os.X_OK) for tool in ("initdb", "postgres"))
    return binaries and (os.geteuid() != 0 or _postgres_user() is not None)


@contextlib.contextmanager
def orthanc_nodes(names: Sequence[str], **options: Any) -> Iterator[list[Orthanc]]:
    """Orthanc nodes named `names` (AE title: the name in capitals, without dashes) with the
    same `options`, started one after the other (a shared database's schema is made once);
    every one started is closed after, also when a later one fails to start."""
    started: list[Orthanc] = []
    try:
        for name in names:
            node = Orthanc(name.upper().replace("-", ""), name=name, **options)
            started.append(node)
            node.start()
        yield started
    finally:
        for node in started:
            node.close()


class Postgres(PeerProcess):
    """A throwaway PostgreSQL server (Debian ``postgresql``) on a free loopback port.

    ``initdb`` into a temporary directory (trust authentication, superuser ``user``), the
    server on 127.0.0.1 only with its Unix socket in that directory (never the system's
    /var/run/postgresql), durability off (``fsync``, ``synchronous_commit``) for speed,
    then ``database`` is created. Run as root, initdb and the server run as the
    ``postgres`` OS account (``setpriv``), which owns the directory.

    ``close()`` / the context manager stops the server (fast shutdown: SIGINT, then SIGKILL
    of its process group) and removes the directory. Start takes about 1.5 s.

        with Postgres(database="orthanc") as pg:
            uri = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{pg.database}"
    """

    host = LOOPBACK

    def __init__(
        self,
        database: str = "test",
        *,
        user: str = "test",
        port: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.database = database
        self.user = user
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="postgres-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._owner = _postgres_user()
        if self._owner is not None:
            os.chown(self.workdir, *self._owner)
        self._process = None

    @property
    def uri(self) -> str:
        """``postgresql://user@127.0.0.1:port/database`` (no password: trust)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _as_owner(self, cmd: Sequence[str]) -> list[str]:
        if self._owner is None:
            return list(cmd)
        uid, gid = self._owner
        # setpriv execs (no intermediate process, unlike runuser): the server is our child
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *cmd]

    def _client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE"):
            env.pop(name, None)
        return env

    def start(self) -> Self:
        """initdb (first time only), start the server, wait until it accepts connections,
        create ``database`` (first time only)."""
        if self.running:
            return self
        fresh = not self.data_dir.exists()
        if fresh:
            initdb = self._as_owner(
                [
                    str(POSTGRES_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
            done = subprocess.run(
                initdb, cwd=self.workdir, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise PeerError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        server = self._as_owner(
            [
                str(POSTGRES_BIN / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.workdir),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        )
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                server,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._client_env(),
                start_new_session=True,
            )
        try:
            self._wait_ready()
            if fresh:
                self.psql(f'CREATE DATABASE "{self.database}"', database="postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        wait_listening(
            self.port,
            timeout=self.start_timeout,
            process=self._process,
            what="postgres",
            log=self.log_path,
        )
        while True:  # listening comes before "ready to accept connections"
            ready = subprocess.run(
                [
                    str(POSTGRES_BIN / "pg_isready"),
                    "-q",
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    "postgres",
                ],
                env=self._client_env(),
                check=False,
            )
            if ready.returncode == 0:
                return
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise PeerError(
                    f"postgres is not ready on port {self.port}{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run SQL with ``psql`` over TCP; return its unaligned, tuples-only output."""
        done = subprocess.run(
            [
                str(POSTGRES_BIN / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database or self.database,
                "-c",
                sql,
            ],
            env=self._client_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise PeerError(f"psql {sql!r} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, no waiting for them), SIGKILL
        of the process group after 10 s; the port is closed on return. Data stays."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10.0)
        stop_process(process, graceful=False)  # backends left over, if any
        self._process = None
        deadline = time.monotonic() + 5.0
        while is_listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server and remove the directory (data, socket, log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Postgres {self.uri} {state}>"


# --------------------------------------------------------------------------- dicomlb


class DicomlbProcess(PeerProcess):
    """``python -m dicomlb run -c CONFIG`` as a separate process, as an operator runs it.

    ``config`` is the YAML text; the log (stdout and stderr) goes to ``dicomlb.log`` in
    ``workdir``. ``env`` adds environment variables (``PYTHONPATH`` to run another tree);
    ``options`` go before ``run`` (``--log-level warning``); ``python`` runs it (default:
    this one).
    ``start()`` waits until ``port`` listens; ``stop()`` sends SIGTERM and returns the exit
    status; ``kill()`` is SIGKILL, for crash tests.
    """

    def __init__(
        self,
        config: str,
        port: int,
        workdir: PathLike,
        *,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
        start_timeout: float = 20.0,
        python: str = sys.executable,
    ) -> None:
        self.port = port
        self.python = python
        self.options = list(options)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "dicomlb.yaml"
        self.config_path.write_text(config)
        self.log_path = self.workdir / "dicomlb.log"
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        """Start dicomlb and wait until its DICOM port listens."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "dicomlb",
                    *self.options,
                    "run",
                    "-c",
                    str(self.config_path),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        wait_listening(
            self.port,
            timeout=self.start_timeout,
            process=self.process,
            what="dicomlb",
            log=self.log_path,
        )
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful stop) and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.process)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Stop dicomlb gracefully if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
