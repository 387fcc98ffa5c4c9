"""A backend's association slot is a lease: a client that vanishes, aborts or falls silent in
the middle of a C-STORE costs only its own message, never the backend's slot (DESIGN 13).

Every test runs with `max_associations: 1`: one slot lost and the next store fails. The
fixture also checks at teardown that nothing is left held."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dicomlb.dicom.association import Association, Role
from dicomlb.dicom.dimse import (
    DATA_SET_PRESENT,
    Command,
    CommandField,
    CommandReceived,
    MessageAssembler,
    Tag,
)
from dicomlb.dicom.pdu import (
    Abort,
    AssociateAccept,
    AssociateRequest,
    PData,
    PresentationContextProposal,
    UserInformation,
)
from tests.dicomdata import make_series, make_small, write_series
from tests.integration.conftest import Balancer
from tests.peers import (
    StoreSCP,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    peer_env,
    sop_instance_uid,
    storescu,
)

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

EXPLICIT = "1.2.840.10008.1.2.1"


def one_slot(backend: str, *, idle_timeout: str | None = None) -> dict[str, Any]:
    """One backend that takes a single association; a store waits 2 s for it at most."""
    listener: dict[str, Any] = {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB"}
    if idle_timeout is not None:
        listener["idle_timeout"] = idle_timeout
    return {
        "listeners": {"dicom": listener},
        "pools": {
            "p": {
                "acquire_timeout": "2s",
                "backends": [{"name": "scp1", "dicom": backend, "max_associations": 1}],
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


def wait_held(lb: Balancer, timeout: float = 20.0) -> None:
    """Until dicomlb holds the backend's slot (a C-STORE is on its way there)."""
    deadline = time.monotonic() + timeout
    while "scp1" not in lb.held():
        assert time.monotonic() < deadline, "the store never reached the backend"
        time.sleep(0.005)


class StallingProxy:
    """A TCP relay to `target` that stops reading from dicomlb for `stall` seconds once
    `after` bytes went through: a backend that reads slowly, so dicomlb pauses reading
    from its client (paired back-pressure) and the client's bytes stop arriving."""

    def __init__(self, target: int, *, after: int, stall: float) -> None:
        self.target = target
        self.after = after
        self.stall = stall
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.sockets: list[socket.socket] = []
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:  # closed
                return
            outbound = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [inbound, outbound]
            for args in ((inbound, outbound, True), (outbound, inbound, False)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, stalls: bool) -> None:
        moved = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                moved += len(data)
                if stalls and moved > self.after and not self.stalled.is_set():
                    self.stalled.set()
                    time.sleep(self.stall)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:  # shutdown wakes a blocked accept / recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


@contextlib.contextmanager
def stalling(scp: StoreSCP, stall: float) -> Iterator[tuple[str, threading.Event]]:
    """`scp`'s address behind a StallingProxy that stalls once, after 1 MiB, and the event
    set when it does: a C-STORE larger than that is still on its way when a test cuts it
    off."""
    proxy = StallingProxy(scp.port, after=1 << 20, stall=stall)
    try:
        yield f"{scp.ae_title}@127.0.0.1:{proxy.port}", proxy.stalled
        assert proxy.stalled.is_set(), "no C-STORE went through the proxy"
    finally:
        proxy.close()


def assert_cut_off(caplog: pytest.LogCaptureFixture, uid: str) -> None:
    """The test did what it says: the instance did not reach the backend whole."""
    assert f"store.delivered sop_instance_uid={uid}" not in caplog.text
    assert f"store.failed sop_instance_uid={uid}" not in caplog.text  # nobody left to tell


def next_store_succeeds(tmp_path: Path, lb: Balancer, scp: StoreSCP) -> None:
    small = write_series(make_small(1), tmp_path / "small")
    sent = storescu("127.0.0.1", lb.port, small, aec="DICOMLB", timeout=60)
    assert sent.returncode == 0, sent.stderr  # before leases: 0xA700, all 1 associations busy
    assert sop_instance_uid(small[0]) in {sop_instance_uid(f) for f in scp.wait_files(1)}


def test_storescu_killed_mid_store_gives_the_slot_back(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    big = write_series(make_series(1, rows=4096, cols=4096), tmp_path / "big")  # 32 MiB
    with StoreSCP("SCP1", tmp_path / "scp") as scp, stalling(scp, 2.0) as (backend, stalled):
        lb = balancer(one_slot(backend))
        sender = subprocess.Popen(
            [dcmtk_tool("storescu"), "-aec", "DICOMLB", "127.0.0.1", str(lb.port), str(big[0])],
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_held(lb)
            time.sleep(0.05)
            stalled.wait(20)  # killed in the middle of the data set, not before it
        finally:
            sender.kill()  # SIGKILL: no A-ABORT, no FIN from storescu itself
            sender.wait(10)
        assert_cut_off(caplog, sop_instance_uid(big[0]))
        next_store_succeeds(tmp_path, lb, scp)


# pynetdicom's own thread objects to the data set it still had queued after the abort.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_pynetdicom_abort_mid_data_set_gives_the_slot_back(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    big = make_series(1, rows=4096, cols=4096)[0]
    with StoreSCP("SCP1", tmp_path / "scp") as scp, stalling(scp, 2.0) as (backend, stalled):
        lb = balancer(one_slot(backend))
        ae = AE(ae_title="ABORTER")
        ae.dimse_timeout = 2  # send_c_store waits that long for the response it will not get
        ae.add_requested_context(CTImageStorage, EXPLICIT)
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        assert assoc.is_established

        def send() -> None:
            with contextlib.suppress(Exception):  # pynetdicom objects to sending after abort
                assoc.send_c_store(big)

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        wait_held(lb)
        assert stalled.wait(20), "the data set never got 1 MiB through"
        assoc.abort()  # A-ABORT while the data set is still going out
        sending.join(10)
        assert not sending.is_alive()
        assert_cut_off(caplog, big.SOPInstanceUID)
        next_store_succeeds(tmp_path, lb, scp)


class RawClient:
    """A storage SCU on a plain socket, driven by dicomlb's association core: it can stop
    anywhere in a message, which no real SCU library lets a test do."""

    def __init__(self, port: int, calling_ae: str = "SILENT") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.assoc = Association(Role.REQUESTOR, max_pdu=16384)
        self.assembler = MessageAssembler()
        self.message_id = 0
        request = AssociateRequest(
            called_ae="DICOMLB",
            calling_ae=calling_ae,
            contexts=(
                PresentationContextProposal(
                    context_id=1, abstract_syntax=CTImageStorage, transfer_syntaxes=(EXPLICIT,)
                ),
            ),
            user_info=UserInformation(max_pdu=16384, implementation_class_uid="1.2.3.4"),
        )
        self.sock.sendall(self.assoc.send(request))
        assert any(isinstance(e, AssociateAccept) for e in self.events(1))

    def events(self, count: int) -> list[object]:
        """At least `count` events from dicomlb (raises TimeoutError after the socket's)."""
        events: list[object] = []
        while len(events) < count:
            data = self.sock.recv(65536)
            events += self.assoc.receive_data(data) if data else self.assoc.receive_eof()
            if not data:
                break
        return events

    def start_store(self, data: bytes, *, last: bool) -> None:
        """A C-STORE-RQ's command set and the first `data` of its data set."""
        self.message_id += 1
        command = Command.build(
            {
                Tag.AFFECTED_SOP_CLASS_UID: CTImageStorage,
                Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
                Tag.MESSAGE_ID: self.message_id,
                Tag.PRIORITY: 0,
                Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
                Tag.AFFECTED_SOP_INSTANCE_UID: "1.2.826.0.1.3680043.8.498.1",
            }
        )
        buffers = self.assoc.send_data(1, command.encode(), is_command=True, is_last=True)
        buffers += self.assoc.send_data(1, data, is_command=False, is_last=last)
        self.sock.sendall(b"".join(buffers))

    def status(self) -> int:
        """The status of the next response dicomlb sends."""
        while True:
            for event in self.events(1):
                if not isinstance(event, PData):
                    raise AssertionError(f"{event} instead of a response")
                for dimse in self.assembler.receive(event.pdvs):
                    if isinstance(dimse, CommandReceived):
                        return dimse.command.status or 0

    def close(self) -> None:
        self.sock.close()


def test_a_client_silent_mid_message_is_aborted_and_frees_the_slot(
    tmp_path: Path, balancer: Any
) -> None:
    with StoreSCP("SCP1", tmp_path / "scp") as scp:
        lb = balancer(one_slot(scp.address, idle_timeout="1s"))
        client = RawClient(lb.port)
        try:
            # The routing tags are in the first bytes: dicomlb forwards them, then waits.
            header = bytes.fromhex("08001600") + b"UI" + (26).to_bytes(2, "little")
            client.start_store(header + CTImageStorage.encode().ljust(26, b"\0"), last=False)
            wait_held(lb)
            started = time.monotonic()
            events = client.events(1)  # then nothing: dicomlb must give up after idle_timeout
            waited = time.monotonic() - started
        finally:
            client.close()
        assert any(isinstance(e, Abort) for e in events), events
        assert 0.5 < waited < 5, waited
        next_store_succeeds(tmp_path, lb, scp)


def test_a_client_waiting_on_a_slow_backend_is_not_idle(tmp_path: Path, balancer: Any) -> None:
    """The silence timed is the client's: a backend answering after 2.5 s (idle_timeout 1s)
    while the client waits for that answer does not cost the client its association."""

    def slow_store(event: Any) -> int:
        time.sleep(2.5)
        return 0x0000

    port = free_port()
    ae = AE(ae_title="SLOW")
    ae.add_supported_context(CTImageStorage, EXPLICIT)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)]
    )
    try:
        lb = balancer(one_slot(f"SLOW@127.0.0.1:{port}", idle_timeout="1s"))
        client = AE(ae_title="PATIENT")
        client.add_requested_context(CTImageStorage, EXPLICIT)
        assoc = client.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        statuses = [assoc.send_c_store(ds).Status for ds in make_small(1)]
        assoc.release()
        assert statuses == [0]
    finally:
        server.shutdown()


def test_a_client_paused_by_dicomlb_is_not_silent(tmp_path: Path, balancer: Any) -> None:
    """dicomlb stops reading a client while the backend is slow to read: the client's
    bytes stop because of dicomlb, which must not time that silence (idle_timeout 1s, the
    backend stalls 3 s in the middle of a 16 MiB instance)."""
    big = write_series(make_series(1, rows=4096, cols=2048), tmp_path / "big")
    with StoreSCP("SCP1", tmp_path / "scp") as scp, stalling(scp, 3.0) as (backend, _):
        lb = balancer(one_slot(backend, idle_timeout="1s"))
        sent = storescu("127.0.0.1", lb.port, big, aec="DICOMLB", timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert len(scp.wait_files(1, timeout=30)) == 1
