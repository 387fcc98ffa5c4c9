"""Capture real DCMTK wire bytes as hex fixtures for the pure unit tests (run once, by hand).

    cd /work/wt-unit && PYTHONPATH=src:. python3 tests/unit/data/capture_dcmtk.py

Writes, next to this script, one file per exchange; each non-comment line is one PDU as hex,
prefixed by who sent it (``C`` the DCMTK client, ``S`` the DCMTK server):

- ``echoscu.hex``: DCMTK ``echoscu`` against a tiny blocking acceptor here (A-ASSOCIATE-RQ,
  C-ECHO-RQ P-DATA, A-RELEASE-RQ).
- ``storescu.hex``: DCMTK ``storescu`` with user identity and one small CT file
  (A-ASSOCIATE-RQ with its default storage contexts, C-STORE-RQ command and data set P-DATA,
  A-RELEASE-RQ).
- ``getscu.hex``: DCMTK ``getscu`` (A-ASSOCIATE-RQ with SCP/SCU role selection items,
  C-GET-RQ P-DATA, A-RELEASE-RQ).
- ``storescp.hex``: a client here against DCMTK ``storescp`` (its A-ASSOCIATE-AC and
  A-RELEASE-RP), and ``storescp_refuse.hex`` (its A-ASSOCIATE-RJ with ``--refuse``).

The acceptor answers with dicomlb's own codec; only the DCMTK side's bytes are asserted on.
DCMTK tools are called by absolute path: pynetdicom's console scripts shadow them on PATH.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.dicomdata import make_small, write_series
from tests.peers import free_port

from dicomlb.dicom.dimse import Command, CommandReceived, MessageAssembler, response
from dicomlb.dicom.pdu import (
    AssociateAccept,
    AssociateRequest,
    ContextResult,
    PData,
    PduType,
    PresentationContextProposal,
    PresentationContextResult,
    PresentationDataValue,
    ReleaseReply,
    ReleaseRequest,
    UserInformation,
    decode_pdu,
    encode,
    split_header,
)

HERE = Path(__file__).parent
ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
GETSCU = "/usr/bin/getscu"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (header included), or b"" at EOF."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return b""
        header += chunk
    _, length = split_header(header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise EOFError("peer closed inside a PDU")
        body += chunk
    return header + body


def acceptor_session(sock: socket.socket) -> list[tuple[str, bytes]]:
    """Accept whatever is proposed, answer each DIMSE request with Success, release."""
    seen: list[tuple[str, bytes]] = []
    assembler = MessageAssembler()
    pending: tuple[int, Command] | None = None
    while True:
        wire = read_pdu(sock)
        if not wire:
            return seen
        seen.append(("C", wire))
        pdu_type, _ = split_header(wire)
        event = decode_pdu(pdu_type, memoryview(wire)[6:])
        if isinstance(event, AssociateRequest):
            accept = AssociateAccept(
                called_ae=event.called_ae,
                calling_ae=event.calling_ae,
                contexts=tuple(
                    PresentationContextResult(
                        context_id=ctx.context_id,
                        result=ContextResult.ACCEPTANCE,
                        transfer_syntax=ctx.transfer_syntaxes[0],
                    )
                    for ctx in event.contexts
                ),
                user_info=UserInformation(max_pdu=16384, implementation_class_uid="1.2.3.4"),
            )
            sock.sendall(encode(accept))
        elif isinstance(event, PData):
            for dimse in assembler.receive(event.pdvs):
                if isinstance(dimse, CommandReceived):
                    pending = (dimse.context_id, dimse.command)
                    done = not dimse.command.has_data_set
                else:
                    done = dimse.is_last
                if done and pending is not None:
                    context_id, command = pending
                    rsp = response(command, 0x0000).encode()
                    pdv = PresentationDataValue(
                        context_id=context_id, is_command=True, is_last=True, data=rsp
                    )
                    sock.sendall(encode(PData(pdvs=(pdv,))))
                    pending = None
        elif isinstance(event, ReleaseRequest):
            sock.sendall(encode(ReleaseReply()))
            return seen
        else:
            return seen


def run_client(tool_argv: list[str], files: list[str]) -> list[tuple[str, bytes]]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(20)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [*tool_argv, "127.0.0.1", str(port), *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        conn, _ = server.accept()
        with conn:
            conn.settimeout(20)
            seen = acceptor_session(conn)
        out, _ = proc.communicate(timeout=20)
        if proc.returncode != 0:
            sys.exit(f"{tool_argv[0]} failed:\n{out.decode(errors='replace')}")
        return seen


def run_against_storescp(*extra: str) -> list[tuple[str, bytes]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        proc = subprocess.Popen(
            [STORESCP, "-aet", "STORESCP", "-od", out_dir, *extra, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                sys.exit("storescp did not start")
            seen: list[tuple[str, bytes]] = []
            with sock:
                sock.settimeout(10)
                request = AssociateRequest(
                    called_ae="STORESCP",
                    calling_ae="DICOMLB",
                    contexts=(
                        PresentationContextProposal(
                            context_id=1,
                            abstract_syntax=CT_IMAGE_STORAGE,
                            transfer_syntaxes=(EXPLICIT_VR_LE, IMPLICIT_VR_LE),
                        ),
                        PresentationContextProposal(
                            context_id=3,
                            abstract_syntax=VERIFICATION,
                            transfer_syntaxes=(IMPLICIT_VR_LE,),
                        ),
                        PresentationContextProposal(
                            context_id=5,
                            abstract_syntax="1.2.840.10008.5.1.4.1.2.2.1",  # study root FIND
                            transfer_syntaxes=(IMPLICIT_VR_LE,),
                        ),
                    ),
                    user_info=UserInformation(
                        max_pdu=16384,
                        implementation_class_uid="2.25.176427393618462390785912406417381935103",
                        implementation_version_name="DICOMLB_010",
                    ),
                )
                sock.sendall(encode(request))
                reply = read_pdu(sock)
                seen.append(("S", reply))
                if reply[0] == PduType.ASSOCIATE_AC:
                    sock.sendall(encode(ReleaseRequest()))
                    seen.append(("S", read_pdu(sock)))
            return seen
        finally:
            proc.terminate()
            proc.wait(10)


def save(name: str, comment: str, seen: list[tuple[str, bytes]]) -> None:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{who} {wire.hex()}" for who, wire in seen]
    (HERE / name).write_text("\n".join(lines) + "\n")
    print(f"{name}: {len(seen)} PDUs")


def main() -> None:
    version = subprocess.run([ECHOSCU, "--version"], capture_output=True, text=True).stdout
    version = version.strip().splitlines()[0]
    save(
        "echoscu.hex",
        f"{version}\n{ECHOSCU} -aet ECHOSCU -aec ANY-SCP 127.0.0.1 <port>",
        run_client([ECHOSCU, "-aet", "ECHOSCU", "-aec", "ANY-SCP"], []),
    )
    with tempfile.TemporaryDirectory() as tmp:
        (ds,) = make_small(1, "CT", pixels=False)
        (path,) = write_series([ds], tmp)
        save(
            "storescu.hex",
            f"{version}\n{STORESCU} -aet STORESCU -aec ANY-SCP -usr alice -pwd secret "
            "127.0.0.1 <port> <one small CT file, no pixels, explicit VR LE>",
            run_client(
                [
                    STORESCU,
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "ANY-SCP",
                    "-usr",
                    "alice",
                    "-pwd",
                    "secret",
                ],
                [str(path)],
            ),
        )
    save(
        "getscu.hex",
        f"{version}\n{GETSCU} -aet GETSCU -aec ANY-SCP -S -k QueryRetrieveLevel=STUDY "
        "-k StudyInstanceUID=1.2.3 127.0.0.1 <port>",
        run_client(
            [
                GETSCU,
                *("-aet", "GETSCU", "-aec", "ANY-SCP", "-S"),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3"),
            ],
            [],
        ),
    )
    save(
        "storescp.hex",
        f"{version}\n{STORESCP} -aet STORESCP <port>: its A-ASSOCIATE-AC and A-RELEASE-RP",
        run_against_storescp(),
    )
    save(
        "storescp_refuse.hex",
        f"{version}\n{STORESCP} -aet STORESCP --refuse <port>: its A-ASSOCIATE-RJ",
        run_against_storescp("--refuse"),
    )


if __name__ == "__main__":
    main()
