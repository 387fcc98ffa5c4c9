"""What counts against a backend's health (DESIGN 14): one sender's bad message, a refused
presentation context or a rejection never take a backend down for everyone; a backend
taken down without active checks comes back after `fail_timeout`; the operator's `enable`
brings it back at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests.dicomdata import make_small, write_series
from tests.integration.conftest import Balancer
from tests.integration.test_leases import RawClient
from tests.peers import StoreSCP, free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

EXPLICIT = "1.2.840.10008.1.2.1"
# (0008,0016) with a VR storescp does not know and a length past the end: storescp reads
# the data set, fails (premature end of stream) and aborts the association.
MALFORMED = b"\x08\x00\x16\x00ZZ\x04\x001.2\x00" + bytes(range(256)) * 64


def pool_of(backend: str, **health: Any) -> dict[str, Any]:
    return {
        "pools": {"p": {"health": health, "backends": [{"name": "scp1", "dicom": backend}]}},
        "routes": [{"name": "all", "pool": "p"}],
    }


def test_a_malformed_data_set_fails_its_message_not_the_backend(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A real storescp aborts on one sender's malformed data sets: each fails with 0x0110,
    while another sender's 60 good stores all get through (before: the backend went down
    after `fall` aborts and 48 of 60 failed with 0xA700)."""
    with StoreSCP("PARSER", tmp_path / "scp", fork=True, bit_preserving=False) as scp:
        lb = balancer(pool_of(scp.address, interval="60s", fall=3))
        good = write_series(make_small(60), tmp_path / "good")
        broken = RawClient(lb.port, calling_ae="BROKEN")
        statuses: list[int] = []

        def send_malformed(count: int) -> None:
            for _ in range(count):
                broken.start_store(MALFORMED, last=True)
                statuses.append(broken.status())

        try:
            send_malformed(3)  # `fall` of them before the good sender starts
            more = threading.Thread(target=send_malformed, args=(3,), daemon=True)
            more.start()
            sent = storescu("127.0.0.1", lb.port, good, aec="DICOMLB", timeout=120)
            more.join(30)
        finally:
            broken.close()
        assert sent.returncode == 0, sent.stderr
        assert len(scp.wait_files(60)) == 60
        assert statuses == [0x0110] * 6
        assert lb.backend("scp1").health.up
        assert "backend.down" not in caplog.text


def test_a_refused_context_is_refused_as_the_backend_would(
    balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that takes CT only refuses MR: asked before the client is answered, dicomlb
    refuses the MR context (result 3, abstract syntax not supported) where it used to answer
    the store 0xA700 "no healthy backend"; no `backend.unreachable` line, and the backend
    stays up (fall 1)."""
    port = free_port()
    scp = AE(ae_title="CTONLY")
    scp.add_supported_context(CTImageStorage, EXPLICIT)
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _: 0x0000)]
    )
    try:
        lb = balancer(pool_of(f"CTONLY@127.0.0.1:{port}", enabled=False, fall=1))
        client = AE(ae_title="MODALITY")
        client.add_requested_context(MRImageStorage, EXPLICIT)
        client.add_requested_context(CTImageStorage, EXPLICIT)
        assoc = client.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
        refused = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        ct = assoc.send_c_store(make_small(1)[0])
        assoc.release()
        assert refused == {MRImageStorage: 0x03}
        assert ct.Status == 0x0000
        assert "backend.unreachable" not in caplog.text
        assert lb.backend("scp1").health.up
    finally:
        server.shutdown()


def fails_then_backend_down(tmp_path: Path, lb: Balancer) -> None:
    """A store to the backend (not started yet) fails and, with fall 1, takes it down."""
    files = write_series(make_small(1), tmp_path / "first")
    assert storescu("127.0.0.1", lb.port, files, aec="DICOMLB", timeout=60).returncode != 0
    assert not lb.backend("scp1").health.up


def store_succeeds(tmp_path: Path, lb: Balancer, scp: StoreSCP) -> None:
    files = write_series(make_small(1), tmp_path / "second")
    sent = storescu("127.0.0.1", lb.port, files, aec="DICOMLB", timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert len(scp.wait_files(1)) == 1


def test_without_checks_down_expires_after_fail_timeout(tmp_path: Path, balancer: Any) -> None:
    scp = StoreSCP("LATE", tmp_path / "scp")  # not started: connections are refused
    try:
        lb = balancer(pool_of(scp.address, enabled=False, fall=1, fail_timeout="1s"))
        fails_then_backend_down(tmp_path, lb)
        down = time.monotonic()
        scp.start()
        while not lb.backend("scp1").health.up:
            assert time.monotonic() - down < 10, "down did not expire"
            time.sleep(0.05)
        assert time.monotonic() - down > 0.5
        store_succeeds(tmp_path, lb, scp)
    finally:
        scp.close()


def test_admin_enable_brings_a_passively_downed_backend_up(tmp_path: Path, balancer: Any) -> None:
    scp = StoreSCP("LATE", tmp_path / "scp")
    try:
        lb = balancer(pool_of(scp.address, enabled=False, fall=1), admin=True)
        fails_then_backend_down(tmp_path, lb)  # down for fail_timeout (10s by default)
        scp.start()
        status, body = lb.http("POST", "/api/v1/backends/scp1/enable")
        assert status == 200, body
        assert lb.backend("scp1").health.up
        store_succeeds(tmp_path, lb, scp)
    finally:
        scp.close()


def test_no_accept_while_dicomlb_holds_the_backends_association_is_not_a_failure(
    tmp_path: Path, balancer: Any
) -> None:
    """A storescp serving one association at a time answers no second A-ASSOCIATE-RQ while
    dicomlb's first (idle, pooled) association is open: that is dicomlb's own doing, so the
    backend stays up (fall 1), and dicomlb releases its idle association and tries again:
    the second sender's store gets through."""
    with StoreSCP("SERIAL", tmp_path / "scp") as scp:  # no --fork: one association at a time
        config = pool_of(scp.address, enabled=False, fall=1)
        config["pools"]["p"].update(connect_timeout="500ms", idle_timeout="60s")
        config["pools"]["p"]["backends"][0]["max_associations"] = 2
        lb = balancer(config)
        first = write_series(make_small(1), tmp_path / "first")
        sent = storescu("127.0.0.1", lb.port, first, aet="FIRST", aec="DICOMLB", timeout=60)
        assert sent.returncode == 0, sent.stderr  # its upstream association stays, idle
        second = write_series(make_small(1), tmp_path / "second")
        # Another calling AE: a second association, unanswered until the first is released.
        sent = storescu("127.0.0.1", lb.port, second, aet="SECOND", aec="DICOMLB", timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert len(scp.wait_files(2)) == 2
        assert lb.backend("scp1").health.up


def test_a_permanent_rejection_refuses_that_sender_only(balancer: Any) -> None:
    """A backend that does not know the calling AE title rejects the association
    (permanent): that sender's store gets 0x0124, the backend stays up (fall 1) and a
    sender it knows still gets through."""
    port = free_port()
    scp = AE(ae_title="PICKY")
    scp.require_calling_aet = ["KNOWN"]
    scp.add_supported_context(CTImageStorage, EXPLICIT)
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _: 0x0000)]
    )
    try:
        lb = balancer(pool_of(f"PICKY@127.0.0.1:{port}", enabled=False, fall=1))
        statuses = {}
        for calling in ("STRANGER", "KNOWN"):
            client = AE(ae_title=calling)
            client.add_requested_context(CTImageStorage, EXPLICIT)
            assoc = client.associate("127.0.0.1", lb.port, ae_title="DICOMLB")
            statuses[calling] = assoc.send_c_store(make_small(1)[0]).Status
            assoc.release()
        assert statuses == {"STRANGER": 0x0124, "KNOWN": 0x0000}
        assert lb.backend("scp1").health.up
    finally:
        server.shutdown()
