"""Bad input and failing backends: refusals carry the proper codes, nothing is silently
dropped, and other associations keep working."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomlb.dicom.pdu import (
    AssociateRequest,
    PresentationContextProposal,
    UserInformation,
    encode,
)
from tests.dicomdata import make_small, write_series
from tests.peers import StoreSCP, echoscu, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

EXPLICIT = "1.2.840.10008.1.2.1"


def one_pool(*backends: dict[str, Any], **pool: Any) -> dict[str, Any]:
    return {
        "pools": {"p": {"backends": list(backends), **pool}},
        "routes": [{"name": "all", "pool": "p"}],
    }


def bad_then_good(name: str, port: int, good: StoreSCP, **pool: Any) -> dict[str, Any]:
    """A round-robin pool of a failing backend `name` at `port`, then `good`."""
    return one_pool(
        {"name": name, "dicom": f"{name.upper()}@127.0.0.1:{port}"},
        {"name": "good", "dicom": good.address},
        strategy="round_robin",
        **pool,
    )


def raw_associate(port: int, calling: str = "RAW") -> socket.socket:
    """A raw client that completed an association proposing CT storage (explicit VR LE)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    request = AssociateRequest(
        called_ae="DICOMLB",
        calling_ae=calling,
        contexts=(
            PresentationContextProposal(
                context_id=1, abstract_syntax=CTImageStorage, transfer_syntaxes=(EXPLICIT,)
            ),
        ),
        user_info=UserInformation(max_pdu=16384, implementation_class_uid="1.2.3.4"),
    )
    sock.sendall(encode(request))
    header = recv_exactly(sock, 6)
    assert header[0] == 0x02, "A-ASSOCIATE-AC expected"
    recv_exactly(sock, struct.unpack(">L", header[2:])[0])
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def test_garbage_and_oversize_pdus_are_aborted_others_keep_working(
    tmp_path: Path, balancer: Any
) -> None:
    with StoreSCP("PACSA", tmp_path / "a") as scp:
        lb = balancer(one_pool({"name": "a", "dicom": scp.address}))
        # unknown PDU type -> A-ABORT reason 1 (unrecognized PDU)
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
            sock.sendall(b"\x42\x00\x00\x00\x00\x04junk")
            assert recv_exactly(sock, 10) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"
        # P-DATA larger than the listener's max PDU (65536) -> A-ABORT reason 6
        with raw_associate(lb.port) as sock:
            sock.sendall(b"\x04\x00" + struct.pack(">L", 1 << 20) + bytes(64))
            assert recv_exactly(sock, 10) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
        # P-DATA on a context that was never accepted -> A-ABORT reason 5
        with raw_associate(lb.port) as sock:
            pdv = struct.pack(">LBB", 4, 3, 0x03) + b"\x00\x00"
            sock.sendall(b"\x04\x00" + struct.pack(">L", len(pdv)) + pdv)
            assert recv_exactly(sock, 10) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x05"
        files = write_series(make_small(2), tmp_path / "ok")
        assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
        assert len(scp.files()) == 2


def test_association_limits_and_called_aet_refusals(tmp_path: Path, balancer: Any) -> None:
    with StoreSCP("PACSA", tmp_path / "a") as scp:
        config = one_pool({"name": "a", "dicom": scp.address})
        config["listeners"] = {
            "dicom": {
                "bind": f"127.0.0.1:{free_port()}",
                "ae_title": "DICOMLB",
                "check_called_aet": True,
                "max_associations_per_calling_aet": 1,
            }
        }
        lb = balancer(config)
        wrong = echoscu("127.0.0.1", lb.port, aec="SOMEONE_ELSE")
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        with raw_associate(lb.port, calling="BUSY_AE"):
            second = echoscu("127.0.0.1", lb.port, aet="BUSY_AE", aec="DICOMLB")
            assert second.returncode != 0
            text = second.stdout + second.stderr
            assert "Transient" in text and "Local Limit Exceeded" in text
            # another calling AE is not limited
            assert echoscu("127.0.0.1", lb.port, aet="OTHER", aec="DICOMLB").returncode == 0


def test_no_matching_route_is_refused_with_a_reason(tmp_path: Path, balancer: Any) -> None:
    with StoreSCP("PACSA", tmp_path / "a") as scp:
        lb = balancer(
            {
                "pools": {"p": {"backends": [{"name": "a", "dicom": scp.address}]}},
                "routes": [{"name": "mr-only", "match": {"Modality": "MR"}, "pool": "p"}],
            }
        )
        ae = AE(ae_title="CT_SCANNER")
        ae.add_requested_context(CTImageStorage, EXPLICIT)
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        status = assoc.send_c_store(make_small(1)[0])
        assoc.release()
        assert status.Status == 0x0124
        assert "no route" in status.ErrorComment
        assert scp.files() == []


class DyingBackend:
    """A pynetdicom storage SCP that dies on a C-STORE: its connection closes before any
    answer (no A-ABORT), as when the process crashes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stores = 0
        self.lock = threading.Lock()
        ae = AE(ae_title="DYING")
        ae.add_supported_context(CTImageStorage, EXPLICIT)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store)],
        )

    def on_store(self, event: Any) -> int:
        with self.lock:
            self.stores += 1
        event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        return 0xC000

    def close(self) -> None:
        self.server.shutdown()


def test_backend_dying_mid_message_fails_that_message_then_traffic_moves(
    tmp_path: Path, balancer: Any
) -> None:
    dying = DyingBackend()
    try:
        with StoreSCP("GOOD", tmp_path / "good") as good:
            health = {"interval": "60s", "fall": 1, "rise": 1}
            lb = balancer(bad_then_good("dying", dying.port, good, health=health))
            ae = AE(ae_title="CT_SCANNER")
            ae.add_requested_context(CTImageStorage, EXPLICIT)
            assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
            statuses = [assoc.send_c_store(ds) for ds in make_small(4)]
            assoc.release()
            codes = [s.Status for s in statuses]
            failed = [s for s in statuses if s.Status != 0]
            assert len(failed) == 1, codes
            assert failed[0].Status == 0x0110
            assert "dying" in failed[0].ErrorComment
            assert len(good.files()) == 3
            assert not lb.backend("dying").health.up
    finally:
        dying.close()


def test_echo_forwarded_to_a_pool_reports_the_backend(tmp_path: Path, balancer: Any) -> None:
    with StoreSCP("PACSA", tmp_path / "a") as scp:
        config = one_pool({"name": "a", "dicom": scp.address}, health={"enabled": False})
        config["listeners"] = {
            "dicom": {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB", "echo": "p"}
        }
        lb = balancer(config)
        assert echoscu("127.0.0.1", lb.port, aec="DICOMLB").returncode == 0
        scp.stop()
        # echoscu exits 0 whatever the status: ask with pynetdicom, which shows it
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0xA700
        assert "no healthy backend in pool p" in status.ErrorComment


class SilentBackend:
    """A hung PACS: it accepts TCP connections and reads, but never answers a PDU."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()


def test_a_backend_that_never_answers_the_association_is_left_for_the_next(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    silent = SilentBackend()
    try:
        with StoreSCP("GOOD", tmp_path / "good") as good:
            lb = balancer(
                bad_then_good(
                    "hung", silent.port, good, connect_timeout="0.5s", health={"enabled": False}
                )
            )
            files = write_series(make_small(4), tmp_path / "out")
            sent = storescu("127.0.0.1", lb.port, files, aec="DICOMLB", timeout=60)
            assert sent.returncode == 0, sent.stderr
            assert len(good.wait_files(4)) == 4  # every instance, none lost to the hung node
            assert silent.accepted, "dicomlb never tried the hung backend"
            assert not lb.backend("hung").health.up
            assert (
                "backend=hung pool=p cause=no_accept reason='cannot associate with HUNG@127.0.0.1:"
                in caplog.text
            )
            assert "no A-ASSOCIATE-AC within connect_timeout 0.5s" in caplog.text
    finally:
        silent.close()
