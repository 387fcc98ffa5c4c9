"""Hostile and broken PDUs from a raw socket: each gets its exact protocol answer and one log
line, never an ERROR or a traceback, and dicomlb stays healthy (a canary C-ECHO afterwards
succeeds, memory stays bounded)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomlb.dicom.dimse import NO_DATA_SET, Command, CommandField, Tag, echo_request
from dicomlb.dicom.pdu import (
    Abort,
    AbortSource,
    AssociateAccept,
    AssociateRequest,
    ContextResult,
    PData,
    PresentationContextProposal,
    PresentationContextResult,
    PresentationDataValue,
    ReleaseRequest,
    UserInformation,
    decode_pdu,
    encode,
)
from tests.dicomdata import make_small, write_series
from tests.peers import StoreSCP, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

IMPLICIT = "1.2.840.10008.1.2"
FIND = str(StudyRootQueryRetrieveInformationModelFind)
# PS3.8 9.3.8: A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value)
ABORT_INVALID_PARAMETER = bytes.fromhex("07000000000400000206")
# PS3.8 9.3.4: A-ASSOCIATE-RJ, permanent, source 1 (service user), reason 1 (no reason given)
REJECT_PERMANENT_NO_REASON = bytes.fromhex("03000000000400010101")
RELEASE_RP = bytes.fromhex("06000000000400000000")
DATA_SET = b"\x08\x00\x18\x00\x02\x00\x00\x001\x00"  # (0008,0018) "1", implicit VR LE
MIB = 1 << 20


def rss() -> int:
    """This process's resident memory in bytes (the balancer runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def request(
    *,
    max_pdu: int | None = 16384,
    contexts: tuple[tuple[int, str], ...] = ((1, CTImageStorage), (3, Verification)),
) -> AssociateRequest:
    return AssociateRequest(
        called_ae="DICOMLB",
        calling_ae="RAW",
        contexts=tuple(
            PresentationContextProposal(
                context_id=cid, abstract_syntax=abstract, transfer_syntaxes=(IMPLICIT,)
            )
            for cid, abstract in contexts
        ),
        user_info=UserInformation(max_pdu=max_pdu, implementation_class_uid="1.2.3.4"),
    )


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_pdu(sock: socket.socket) -> bytes:
    header = recv_exactly(sock, 6)
    return header + recv_exactly(sock, struct.unpack(">L", header[2:])[0])


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def connect(port: int, wire: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(wire)
    return sock


def associated(port: int) -> socket.socket:
    """A raw client with CT storage on context 1 and verification on 3 accepted."""
    sock = connect(port, encode(request()))
    answer = recv_pdu(sock)
    assert answer[0] == 0x02, f"A-ASSOCIATE-AC expected, got {answer[:10].hex()}"
    return sock


def pdv(context_id: int, data: bytes, *, command: bool) -> PresentationDataValue:
    return PresentationDataValue(context_id=context_id, is_command=command, is_last=True, data=data)


def message(context_id: int, command: Command, data: bytes | None = None) -> bytes:
    pdvs = [pdv(context_id, command.encode(), command=True)]
    if data is not None:
        pdvs.append(pdv(context_id, data, command=False))
    return encode(PData(pdvs=tuple(pdvs)))


def response_of(wire: bytes) -> tuple[int, Command]:
    """(context ID, command) of a P-DATA-TF carrying one whole command."""
    event = decode_pdu(wire[0], memoryview(wire)[6:])
    assert isinstance(event, PData), f"P-DATA-TF expected, got {wire[:10].hex()}"
    return event.pdvs[0].context_id, Command.decode(event.pdvs[0].data)


def canary(port: int) -> None:
    """A well-behaved client still gets its C-ECHO answered."""
    ae = AE(ae_title="CANARY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLB")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def assert_no_error(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text


@pytest.fixture
def lb(tmp_path: Path, balancer: Any) -> Iterator[Any]:
    """dicomlb in front of a DCMTK storescp; C-ECHO answered locally."""
    with StoreSCP("PACSA", tmp_path / "a") as scp:
        lb = balancer(
            {
                "pools": {"p": {"backends": [{"name": "a", "dicom": scp.address}]}},
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        lb.scp = scp
        yield lb


# ------------------------------------------------------------------ Maximum Length


@pytest.mark.parametrize("max_length", [1, 6])
def test_max_length_that_cannot_carry_a_pdv_is_aborted(
    lb: Any, max_length: int, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.8 D.1: 1..6 leave no room for a PDV. A C-ECHO on such an association used to
    start an endless send loop (RSS 86 MB -> 4.6 GB, every listener dead)."""
    before = rss()
    with connect(lb.port, encode(request(max_pdu=max_length))) as sock:
        assert recv_exactly(sock, 10) == ABORT_INVALID_PARAMETER
        assert closed(sock)
    canary(lb.port)
    assert rss() - before < 64 * MIB
    assert f"maximum length {max_length} cannot carry a PDV" in caplog.text
    assert_no_error(caplog)


def test_max_length_below_the_floor_is_rejected(lb: Any, caplog: pytest.LogCaptureFixture) -> None:
    with connect(lb.port, encode(request(max_pdu=512))) as sock:
        assert recv_exactly(sock, 10) == REJECT_PERMANENT_NO_REASON
        assert closed(sock)
    canary(lb.port)
    assert "maximum length 512 is below 1024" in caplog.text
    assert_no_error(caplog)


def test_unlimited_max_length_still_works(lb: Any, tmp_path: Path) -> None:
    with connect(lb.port, encode(request(max_pdu=0))) as sock:
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(message(3, echo_request(1)))
        context_id, answer = response_of(recv_pdu(sock))
        assert (context_id, answer.command_field, answer.status) == (3, 0x8030, 0)
        sock.sendall(encode(ReleaseRequest()))
        assert recv_exactly(sock, 10) == RELEASE_RP


class TinyBackend:
    """A backend that accepts every context but announces Maximum Length `max_length`, and
    records the first PDU dicomlb sends after its A-ASSOCIATE-AC."""

    def __init__(
        self, max_length: int, transfer_syntax: str | None = None, answer: bytes = b""
    ) -> None:
        self.max_length = max_length
        self.transfer_syntax = transfer_syntax  # accepted instead of the one proposed
        self.answer = answer  # sent back after that first PDU
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.after_accept: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(5)
                rq = decode_pdu(0x01, memoryview(recv_pdu(conn))[6:])
                assert isinstance(rq, AssociateRequest)
                ac = AssociateAccept(
                    called_ae=rq.called_ae,
                    calling_ae=rq.calling_ae,
                    contexts=tuple(
                        PresentationContextResult(
                            context_id=c.context_id,
                            result=ContextResult.ACCEPTANCE,
                            transfer_syntax=self.transfer_syntax or c.transfer_syntaxes[0],
                        )
                        for c in rq.contexts
                    ),
                    user_info=UserInformation(
                        max_pdu=self.max_length, implementation_class_uid="1.2.3.4"
                    ),
                )
                conn.sendall(encode(ac))
                try:
                    self.after_accept.append(recv_pdu(conn))
                    if self.answer:
                        conn.sendall(self.answer)
                        recv_pdu(conn)  # dicomlb's A-ABORT
                except (OSError, ConnectionError):
                    self.after_accept.append(b"")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def echo_pool(port: int) -> dict[str, Any]:
    """C-ECHO relayed to a pool of the one backend at `port`, health checks off."""
    return {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB", "echo": "p"}
        },
        "pools": {
            "p": {
                "backends": [{"name": "tiny", "dicom": f"TINY@127.0.0.1:{port}"}],
                "health": {"enabled": False},
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


def echo_status(port: int) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLB")
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


@pytest.mark.parametrize(
    ("max_length", "abort"),
    [
        (6, ABORT_INVALID_PARAMETER),
        # A legal value below the floor: refused by dicomlb as service user (source 0).
        (512, encode(Abort(source=AbortSource.SERVICE_USER))),
    ],
)
def test_tiny_max_length_from_a_backend_is_its_failure(
    balancer: Any, max_length: int, abort: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = TinyBackend(max_length)
    try:
        lb = balancer(echo_pool(tiny.port))
        before = rss()
        assert echo_status(lb.port) == 0xA700  # no backend could take it
        assert rss() - before < 64 * MIB
        assert tiny.after_accept and tiny.after_accept[0] == abort
        assert "upstream.protocol_error backend=tiny" in caplog.text
        assert f"maximum length {max_length}" in caplog.text
        assert_no_error(caplog)
    finally:
        tiny.close()


def test_a_backend_accepting_another_transfer_syntax_is_not_used(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.8 9.3.3.2: one transfer syntax proposed per context; an acceptance naming another
    used to be taken, and the message relayed in a syntax the backend did not agree to."""
    other = TinyBackend(16384, transfer_syntax="1.2.840.10008.1.2.2")
    try:
        lb = balancer(echo_pool(other.port))
        # the backend declined the context as proposed: the message's refusal, not "down"
        assert echo_status(lb.port) == 0x0122
        assert other.after_accept and other.after_accept[0][:1] != b"\x04"  # no P-DATA-TF
        assert "rejected abstract syntax 1.2.840.10008.1.1" in caplog.text
        assert_no_error(caplog)
    finally:
        other.close()


def test_a_malformed_answer_fails_the_message_not_the_backend(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A command set with an element outside group 0000, sent back on an established
    association: a hostile client's request can provoke such an answer, so the message
    fails and the backend stays in its pool (an active check catches a backend broken for
    every message)."""
    command = struct.pack("<HHI", 0x0008, 0x0000, 4) + b"\x00" * 4
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command  # context 1, command, last
    answer = struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
    tiny = TinyBackend(16384, answer=answer)
    try:
        lb = balancer(echo_pool(tiny.port))
        for _ in range(4):  # more than the default fall of 3
            assert echo_status(lb.port) == 0x0110
        assert lb.backend("tiny").health.up
        assert "backend.down" not in caplog.text
        assert_no_error(caplog)
    finally:
        tiny.close()


# ------------------------------------------------------------------ negotiation


def _contexts(*ids: int) -> tuple[tuple[int, str], ...]:
    return tuple((cid, str(Verification)) for cid in ids)


@pytest.mark.parametrize(
    ("contexts", "reason"),
    [
        (_contexts(2), "presentation context ID 2 is not odd"),
        (_contexts(1, 3, 1), "presentation context ID 1 appears twice"),
        # 129 contexts: PS3.8 9.3.2.2 allows 128 (odd IDs 1..255), so one ID repeats.
        (_contexts(*(i % 256 for i in range(1, 259, 2))), "appears twice"),
    ],
)
def test_bad_presentation_context_ids_are_aborted(
    lb: Any, contexts: tuple[tuple[int, str], ...], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(lb.port, encode(request(contexts=contexts))) as sock:
        assert recv_exactly(sock, 10) == ABORT_INVALID_PARAMETER
        assert closed(sock)
    canary(lb.port)
    assert reason in caplog.text
    assert_no_error(caplog)


def test_a_c_find_on_a_storage_context_is_refused_not_relayed(
    lb: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to be relayed to the backend on its CT storage context."""
    find = Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: FIND,
            Tag.COMMAND_FIELD: CommandField.C_FIND_RQ,
            Tag.MESSAGE_ID: 5,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: 0x0000,
        }
    )
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "  # (0008,0052) Query/Retrieve Level
    with associated(lb.port) as sock:
        sock.sendall(message(1, find, identifier))
        context_id, answer = response_of(recv_pdu(sock))
        assert context_id == 1
        assert answer.command_field == CommandField.C_FIND_RSP
        assert answer.responded_to == 5
        assert answer.status == 0x0122  # PS3.7 C.5: SOP class not supported
        sock.sendall(encode(ReleaseRequest()))
        assert recv_exactly(sock, 10) == RELEASE_RP
    assert "dimse.refused" in caplog.text and "status=0x0122" in caplog.text
    assert lb.scp.files() == []
    files = write_series(make_small(1), tmp_path / "ok")
    assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB").returncode == 0
    assert len(lb.scp.wait_files(1)) == 1
    assert_no_error(caplog)


# ------------------------------------------------------------------ no traceback from peer input


def test_associate_rq_and_abort_in_one_segment(lb: Any, caplog: pytest.LogCaptureFixture) -> None:
    abort = encode(Abort(source=AbortSource.SERVICE_USER))
    for _ in range(3):
        with connect(lb.port, encode(request()) + abort) as sock:
            # The request is answered, then the abort ends the association.
            assert recv_pdu(sock)[0] == 0x02
            assert closed(sock)
    canary(lb.port)
    assert "aborted by the client" in caplog.text
    assert_no_error(caplog)


def store_command(field: int, *, data_set_type: int) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: str(CTImageStorage),
            Tag.COMMAND_FIELD: field,
            Tag.MESSAGE_ID: 9,
            Tag.MESSAGE_ID_BEING_RESPONDED_TO: 9,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: data_set_type,
            Tag.STATUS: 0,
            Tag.AFFECTED_SOP_INSTANCE_UID: "1.2.3.4.5",
        }
    )


def echo_then_release(sock: socket.socket) -> None:
    """The association still serves: C-ECHO answered, release answered."""
    sock.sendall(message(3, echo_request(77)))
    context_id, answer = response_of(recv_pdu(sock))
    assert (context_id, answer.command_field, answer.responded_to) == (3, 0x8030, 77)
    assert answer.status == 0
    sock.sendall(encode(ReleaseRequest()))
    assert recv_exactly(sock, 10) == RELEASE_RP


def test_a_response_with_a_data_set_from_a_client_is_dropped(
    lb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with associated(lb.port) as sock:
        rsp = store_command(CommandField.C_STORE_RSP, data_set_type=0x0000)
        sock.sendall(message(1, rsp, DATA_SET))
        echo_then_release(sock)
    assert "association.unexpected_response" in caplog.text
    assert_no_error(caplog)


def test_a_c_store_without_a_data_set_is_answered(
    lb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Data Set Type 0x0101 on a C-STORE-RQ: no response and an unanswered release before."""
    with associated(lb.port) as sock:
        sock.sendall(message(1, store_command(CommandField.C_STORE_RQ, data_set_type=NO_DATA_SET)))
        context_id, answer = response_of(recv_pdu(sock))
        assert (context_id, answer.command_field, answer.responded_to) == (1, 0x8001, 9)
        assert answer.status == 0xC000
        echo_then_release(sock)
    assert "C-STORE without a data set" in caplog.text
    assert_no_error(caplog)


@pytest.mark.parametrize("field", [0x0042, 0x8042, 0x0FFF])
@pytest.mark.parametrize("data_set", [True, False])
def test_unknown_command_fields(
    lb: Any, field: int, data_set: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown request gets 0x0211; an unknown response, or a C-CANCEL with nothing to
    cancel, gets nothing (PS3.7 defines no answer); the association goes on either way."""
    command = store_command(field, data_set_type=0x0000 if data_set else NO_DATA_SET)
    with associated(lb.port) as sock:
        sock.sendall(message(1, command, DATA_SET if data_set else None))
        if field == 0x0042:
            context_id, answer = response_of(recv_pdu(sock))
            assert (context_id, answer.command_field, answer.status) == (1, 0x8042, 0x0211)
        echo_then_release(sock)
    assert_no_error(caplog)
