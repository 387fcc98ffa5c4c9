"""Per-backend association caps: more clients than a backend accepts wait, they do not fail,
and the backend never sees more associations than its `max_associations`."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.dicomdata import make_small, write_series
from tests.peers import free_port, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")


class CountingBackend:
    """A pynetdicom storage SCP that records its peak number of open associations."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.stored = 0
        ae = AE(ae_title="COUNTING")
        ae.add_supported_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.add_supported_context(Verification)
        ae.maximum_associations = 20
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_ESTABLISHED, self.on_open),
                (evt.EVT_RELEASED, self.on_close),
                (evt.EVT_ABORTED, self.on_close),
                (evt.EVT_C_STORE, self.on_store),
            ],
        )

    def on_open(self, event: Any) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def on_close(self, event: Any) -> None:
        with self.lock:
            self.open -= 1

    def on_store(self, event: Any) -> int:
        with self.lock:
            self.stored += 1
        return 0x0000


def test_saturated_backend_makes_clients_wait_not_fail(tmp_path: Path, balancer: Any) -> None:
    backend = CountingBackend()
    try:
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "health": {"enabled": False},
                        "backends": [
                            {
                                "name": "counting",
                                "dicom": f"COUNTING@127.0.0.1:{backend.port}",
                                "max_associations": 2,
                            }
                        ],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        batches = [write_series(make_small(10), tmp_path / f"c{i}") for i in range(6)]
        with ThreadPoolExecutor(6) as executor:
            results = list(
                executor.map(
                    lambda files: storescu("127.0.0.1", lb.port, files, aec="DICOMLB"), batches
                )
            )
        assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
        assert backend.stored == 60
        assert backend.peak <= 2
    finally:
        backend.server.shutdown()
