"""Log lines against real peers: a peer's AE title or path cannot forge a line, and no line
carries a patient's name or ID."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomlb.logs import PlainFormatter
from tests.dicomdata import make_small, write_series
from tests.peers import StoreSCP, echoscu, have_dcmtk, storescu

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

FORGED_AE = "X\nadmin.reload"  # 13 bytes: fits an AE title


class Lines(logging.Handler):
    """Each record of the dicomlb loggers as dicomlb's own formatter renders it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(PlainFormatter())
        self.rendered: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.rendered.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("dicomlb")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def config(scp: StoreSCP, **pool: Any) -> dict[str, Any]:
    return {
        "pools": {
            "p": {
                "health": {"enabled": False},
                "backends": [{"name": "scp", "dicom": scp.address}],
                **pool,
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


def test_an_ae_title_with_a_newline_stays_in_its_line(
    tmp_path: Path, balancer: Any, lines: Lines
) -> None:
    with StoreSCP("SCP", tmp_path / "scp", fork=True) as scp:
        lb = balancer(config(scp), admin=True)
        result = echoscu("127.0.0.1", lb.port, aet=FORGED_AE, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        # The admin listener: a path with an encoded line break and a fake event
        path = "/api/v1/backends/a%0A2026-01-01T00:00:00%20INFO%20admin.reload%20result=ok/drain"
        with socket.create_connection(("127.0.0.1", lb.app.admin.port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 404")
    mentioning = [line for line in lines.rendered if "admin.reload" in line]
    assert any("calling_aet='X\\nadmin.reload'" in line for line in mentioning), lines.rendered
    assert any("path='/api/v1/backends/a\\n2026" in line for line in mentioning), lines.rendered
    for line in lines.rendered:
        assert "\n" not in line and line.isprintable(), line


def test_an_affinity_key_that_is_not_a_uid_is_not_logged(
    tmp_path: Path, balancer: Any, lines: Lines
) -> None:
    with StoreSCP("SCP", tmp_path / "scp", fork=True) as scp:
        lb = balancer(config(scp, strategy="affinity", key="PatientID"))
        files = write_series(
            make_small(2, patient_id="PID-4711", patient_name="DOE^JANE"), tmp_path / "out"
        )
        result = storescu("127.0.0.1", lb.port, files, aec="DICOMLB")
        assert result.returncode == 0, result.stderr
        assert len(scp.wait_files(2)) == 2
    routed = [line for line in lines.rendered if "store.routed" in line]
    assert len(routed) == 2 and all(line.endswith(" key=-") for line in routed), routed
    text = "\n".join(lines.rendered)
    assert "PID-4711" not in text and "DOE" not in text
