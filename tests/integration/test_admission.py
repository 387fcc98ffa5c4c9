"""Who gets in, and for how long: ARTIM as a deadline, negotiating connections capped overall
and per address, TLS handshakes under ARTIM, allow-lists and the per-address association
limit, against a running dicomlb with DCMTK echoscu and pynetdicom peers."""

from __future__ import annotations

import logging
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pynetdicom import AE
from pynetdicom.association import Association as PynetdicomAssociation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomlb.dicom.pdu import (
    AssociateRequest,
    PresentationContextProposal,
    UserInformation,
    encode,
)
from tests.peers import (
    DicomlbProcess,
    echoscu,
    free_port,
    have_dcmtk,
    is_listening,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


def config(**dicom: Any) -> dict[str, Any]:
    return {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB", **dicom}
        },
        "pools": {
            "p": {
                "health": {"enabled": False},
                "backends": [{"name": "a", "dicom": f"PACS@127.0.0.1:{free_port()}"}],
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


def associate_rq() -> bytes:
    return encode(
        AssociateRequest(
            called_ae="DICOMLB",
            calling_ae="DRIPPER",
            contexts=(
                PresentationContextProposal(
                    context_id=1,
                    abstract_syntax="1.2.840.10008.1.1",
                    transfer_syntaxes=("1.2.840.10008.1.2",),
                ),
            ),
            user_info=UserInformation(max_pdu=16384, implementation_class_uid="1.2.3.4"),
        )
    )


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes `sock` within `seconds` (anything it sends first is read)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection to dicomlb from another loopback address (a host of its own)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@contextmanager
def connections(sources: list[str], port: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        yield [stack.enter_context(connect_from(source, port)) for source in sources]


def pynetdicom_associate(port: int, calling: str, source: str) -> PynetdicomAssociation:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="DICOMLB", bind_address=(source, 0))


def rejection(assoc: PynetdicomAssociation) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the association received."""
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    return primitive.result, primitive.result_source, primitive.diagnostic


def messages(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


# --- ARTIM, negotiating connections, TLS ----------------------------------------------------


def test_slow_associate_request_is_closed_at_the_artim_deadline(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomlb")
    lb = balancer(config(artim_timeout="1s"))
    wire = associate_rq()
    with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
        started = time.monotonic()
        closed = False
        for byte in wire[:40]:  # a byte every 0.1 s: 4 s if nothing stops it
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_within(sock, 0.1):
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "a dripping A-ASSOCIATE-RQ kept its connection past ARTIM"
    assert 0.9 <= elapsed < 2.0
    wait_for(lambda: lb.app.dicom.stats.negotiating == 0, "the connection is not counted")
    assert any("artim=1s" in line for line in messages(caplog, "association.artim_expired"))


def test_negotiating_connections_beyond_the_per_address_limit_are_closed_at_once(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(config(max_negotiating_per_ip=3, artim_timeout="20s"))
    with connections(["127.0.0.2"] * 3, lb.port) as held:
        wait_for(lambda: lb.app.dicom.stats.negotiating == 3, "three are negotiating")
        with connections(["127.0.0.2"] * 10, lb.port) as extra:
            assert all(closed_within(sock, 3) for sock in extra)
        assert not any(closed_within(sock, 0.05) for sock in held)
        # another host is not held back by this one
        result = echoscu("127.0.0.1", lb.port, aec="DICOMLB")
        assert result.returncode == 0, result.stdout + result.stderr
        assert lb.app.dicom.stats.refused == 10
    # ten refusals in a burst: one line (at most one a second)
    lines = messages(caplog, "listener.refused")
    assert 1 <= len(lines) <= 2, lines
    assert "limit=max_negotiating_per_ip" in lines[0]
    wait_for(lambda: lb.app.dicom.stats.negotiating == 0, "nothing is counted any more")


def test_negotiating_connections_overall_are_capped(balancer: Any) -> None:
    lb = balancer(config(max_negotiating=4, max_negotiating_per_ip=2, artim_timeout="20s"))
    with connections(["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"], lb.port) as held:
        wait_for(lambda: lb.app.dicom.stats.negotiating == 4, "four are negotiating")
        with connect_from("127.0.0.4", lb.port) as fifth:
            assert closed_within(fifth, 3)
        held[0].close()
        wait_for(lambda: lb.app.dicom.stats.negotiating == 3, "one left")
        result = echoscu("127.0.0.1", lb.port, aec="DICOMLB")
        assert result.returncode == 0, result.stdout + result.stderr


def tls_listener(pki: Path) -> dict[str, str]:
    return {
        "cert": str(pki / "dicomlb.crt"),
        "key": str(pki / "dicomlb.key"),
        "ca": str(pki / "ca.crt"),
    }


def modality_tls(pki: Path) -> list[str]:
    return [
        "+tls",
        str(pki / "modality.key"),
        str(pki / "modality.crt"),
        "+cf",
        str(pki / "ca.crt"),
    ]


def test_tls_client_that_never_says_hello_is_closed_at_artim(balancer: Any, pki: Path) -> None:
    lb = balancer(config(artim_timeout="1s", tls=tls_listener(pki)))
    with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
        started = time.monotonic()
        assert closed_within(sock, 5), "a silent TLS client was held past ARTIM"
        assert time.monotonic() - started < 2.0
    wait_for(lambda: lb.app.dicom.stats.negotiating == 0, "the connection is not counted")
    # a client that does its handshake is served, and one that fails it is let go
    result = echoscu("127.0.0.1", lb.port, aec="DICOMLB", extra_args=modality_tls(pki))
    assert result.returncode == 0, result.stdout + result.stderr
    assert echoscu("127.0.0.1", lb.port, aec="DICOMLB").returncode != 0
    wait_for(lambda: lb.app.dicom.stats.negotiating == 0, "the failed handshake is not counted")


def test_dicomlb_raises_its_descriptor_limit_and_serves_tls_on_uvloop(
    tmp_path: Path, pki: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard descriptor limit is {hard}: nothing to raise")
    port = free_port()
    listener = {"bind": f"127.0.0.1:{port}", "ae_title": "DICOMLB", "artim_timeout": "1s"}
    yaml_text = (
        f"listeners:\n  dicom: {listener | {'tls': tls_listener(pki)}}\n"
        f"pools:\n  p:\n    health: {{enabled: false}}\n"
        f"    backends: [{{name: a, dicom: 'PACS@127.0.0.1:{free_port()}'}}]\n"
        "routes: [{name: all, pool: p}]\n"
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # inherited by dicomlb
    try:
        process = DicomlbProcess(yaml_text, port, tmp_path).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        row = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits)
        assert row is not None and row.group(1) == row.group(2) != "512", limits
        shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        wait_for(
            lambda: f"dicomlb.descriptors limit={shown}" in process.log_path.read_text(),
            "the limit is logged",
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert closed_within(sock, 5), "a silent TLS client was held past ARTIM"
        for _ in range(10):  # uvloop reads the ClientHello before start_tls: it still gets it
            result = echoscu("127.0.0.1", port, aec="DICOMLB", extra_args=modality_tls(pki))
            assert result.returncode == 0, result.stdout + result.stderr
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "modality.crt"), str(pki / "modality.key"))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(associate_rq()[:10])  # then nothing: ARTIM ends it
            assert closed_within(tls, 5)
    finally:
        assert process.stop() == 0


# --- allow-lists and the per-address limit --------------------------------------------------


def test_allow_list_rejects_an_unlisted_calling_ae_and_admits_listed_ones(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    allow = [{"aet": "CT1"}, {"aet": "MR*", "cidr": "10.9.0.0/16"}, {"cidr": "127.0.0.2/32"}]
    lb = balancer(config(allow=allow))
    listed = echoscu("127.0.0.1", lb.port, aet="CT1", aec="DICOMLB")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for calling in ("INTRUDER", "MR_3T"):  # MR_3T: listed, but only from 10.9.0.0/16
        result = echoscu("127.0.0.1", lb.port, aet=calling, aec="DICOMLB")
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "Rejected Permanent" in output, output
        assert "Calling AE Title Not Recognized" in output, output
    # any AE title from the listed address; the same title from elsewhere is rejected
    assoc = pynetdicom_associate(lb.port, "ANYONE", "127.0.0.2")
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    refused = pynetdicom_associate(lb.port, "ANYONE", "127.0.0.3")
    assert rejection(refused) == (1, 1, 3)  # permanent, service user, calling AE not recognized
    lines = messages(caplog, "association.rejected")
    assert len(lines) == 3, lines
    assert "calling_aet=INTRUDER" in lines[0] and "listeners.dicom.allow" in lines[0]


def test_per_address_limit_holds_whatever_ae_titles_are_used(balancer: Any) -> None:
    lb = balancer(config(max_associations_per_ip=2, max_associations_per_calling_aet=2))
    first = pynetdicom_associate(lb.port, "A1", "127.0.0.2")
    second = pynetdicom_associate(lb.port, "A2", "127.0.0.2")
    try:
        assert first.is_established and second.is_established
        third = pynetdicom_associate(lb.port, "A3", "127.0.0.2")
        assert rejection(third) == (2, 3, 2)  # transient, presentation, local limit exceeded
        other = echoscu("127.0.0.1", lb.port, aet="A3", aec="DICOMLB")
        assert other.returncode == 0, other.stdout + other.stderr
        first.release()
        wait_for(lambda: lb.app.dicom.stats.by_ip["127.0.0.2"] == 1, "one was released")
        again = pynetdicom_associate(lb.port, "A3", "127.0.0.2")
        assert again.is_established
        again.release()
    finally:
        for assoc in (first, second):
            if assoc.is_established:
                assoc.release()


def test_client_connections_leave_the_last_descriptors_free(
    tmp_path: Path,
) -> None:
    dicom_port, http_port, admin_port = free_port(), free_port(), free_port()
    config_path = tmp_path / "dicomlb.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "listeners": {
                    "dicom": {
                        "bind": f"127.0.0.1:{dicom_port}",
                        "max_negotiating": 1000,
                        "max_negotiating_per_ip": 1000,
                        "artim_timeout": "60s",
                    },
                    "http": {"bind": f"127.0.0.1:{http_port}"},
                    "admin": {"bind": f"127.0.0.1:{admin_port}"},
                },
                "pools": {
                    "p": {
                        "health": {"enabled": False},
                        "backends": [
                            {
                                "name": "a",
                                "dicom": f"PACS@127.0.0.1:{free_port()}",
                                "http": f"http://127.0.0.1:{free_port()}",
                            }
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
                "http_routes": [{"name": "all", "pool": "p"}],
            }
        )
    )
    log_path = tmp_path / "dicomlb.log"

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomlb", "run", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=few_descriptors,
            start_new_session=True,
        )
    try:
        wait_listening(admin_port, process=process, what="dicomlb", log=log_path)
        with ExitStack() as stack:
            silent = [
                stack.enter_context(connect_from("127.0.0.2", dicom_port)) for _ in range(250)
            ]
            refused = sum(closed_within(sock, 0.02) for sock in silent)
            assert 64 <= refused < 250
            # the admin listener still answers, the HTTP listener refuses with a status
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as r:
                assert r.status == 200
            with socket.create_connection(("127.0.0.1", http_port), timeout=5) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                client.settimeout(5)
                assert client.recv(4096).startswith(b"HTTP/1.1 503")
        wait_for(lambda: is_listening(dicom_port), "dicomlb listens")
        result = echoscu("127.0.0.1", dicom_port, aec="DICOMLB")
        assert result.returncode == 0, result.stdout + result.stderr
        text = log_path.read_text()
        assert "limit=descriptors" in text
        assert "Too many open files" not in text
    finally:
        stop_process(process)
