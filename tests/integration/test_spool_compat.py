"""A spool directory left by an earlier dicomlb (`data/spool_v1`, see its `make_spool_v1.py`)
is taken over as is: its queued and sending items, mirror copies included, reach real DCMTK
storescp backends byte for byte; its dead letter stays dead, listed by the admin API and
`dicomlb spool ls`, until an operator retries it; its delivered item stays delivered."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_spool import _cli, index_states, spool_config, wait_until
from tests.peers import StoreSCP, dataset_bytes, have_dcmtk

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

FIXTURE = Path(__file__).resolve().parent / "data" / "spool_v1"


def fixture_items() -> dict[int, tuple[str, str, str, str]]:
    """id -> (state, backend, file, sop_instance_uid), as the fixture holds them."""
    with contextlib.closing(
        sqlite3.connect(f"file:{FIXTURE / 'index.sqlite3'}?mode=ro", uri=True)
    ) as db:
        rows = db.execute("SELECT id, state, backend, file, sop_instance_uid FROM items")
        return {row[0]: row[1:] for row in rows}


def test_a_spool_written_by_the_earlier_version_is_delivered_and_its_dead_stay_dead(
    tmp_path: Path, balancer: Any
) -> None:
    items = fixture_items()
    assert sorted(state for state, *_ in items.values()) == [
        "dead",
        "delivered",
        "queued",
        "queued",
        "sending",
        "sending",
    ]
    expected: dict[str, dict[str, Path]] = {"pacsa": {}, "mirrorb": {}}
    for state, backend, name, uid in items.values():
        if state in ("queued", "sending"):
            expected[backend][uid] = FIXTURE / "data" / name
    (dead_id,) = [n for n, (state, *_) in items.items() if state == "dead"]
    _, _, dead_file, dead_uid = items[dead_id]
    spool = tmp_path / "spool"
    shutil.copytree(FIXTURE, spool)
    (spool / "tmp").mkdir(exist_ok=True)  # git keeps no empty directory
    with (
        StoreSCP("PACSA", tmp_path / "a", fork=True) as a,
        StoreSCP("MIRRORB", tmp_path / "m", fork=True) as m,
    ):
        # The fixture's items are months old: no max_age, or the sweep would kill them.
        config = spool_config(spool, [a], mirrors=[m], retry={"max_age": 0})
        lb = balancer(config, admin=True)
        assert wait_until(lambda: index_states(spool) == {"delivered": 5, "dead": 1}), index_states(
            spool
        )
        for scp, backend in ((a, "pacsa"), (m, "mirrorb")):
            received = scp.by_sop_instance_uid()
            assert set(received) == set(expected[backend])
            for uid, path in received.items():
                assert dataset_bytes(path) == dataset_bytes(expected[backend][uid])

        status, dead = lb.http("GET", "/api/v1/spool/items?state=dead")
        assert status == 200
        assert [(i["id"], i["sop_instance_uid"], i["on_disk"]) for i in dead] == [
            (dead_id, dead_uid, True)
        ]
        assert dead[0]["attempts"] == 3 and "max_attempts 3" in dead[0]["last_error"]
        config_file = tmp_path / "lb.yaml"
        config_file.write_text(yaml.safe_dump(config))
        listed = _cli("spool", "ls", "-c", str(config_file), "--state", "dead")
        assert listed.returncode == 0, listed.stderr
        assert "1 dead" in listed.stdout and "5 delivered" in listed.stdout
        assert dead_uid in listed.stdout

        # The operator retries it: it goes where its row says, byte for byte.
        assert lb.http("POST", f"/api/v1/spool/items/{dead_id}/retry") == (200, {"queued": 1})
        assert wait_until(lambda: dead_uid in a.by_sop_instance_uid())
        assert dataset_bytes(a.by_sop_instance_uid()[dead_uid]) == dataset_bytes(
            FIXTURE / "data" / dead_file
        )
        assert wait_until(lambda: index_states(spool) == {"delivered": 6})
        assert m.by_sop_instance_uid().keys() == expected["mirrorb"].keys()
