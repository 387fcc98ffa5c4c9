"""The spool's supervisor: a loop that raises is logged on one line, counted, restarted."""

from __future__ import annotations

import asyncio

import pytest

from dicomlb.spool import supervisor as supervision
from dicomlb.spool.state import restart_delay
from dicomlb.spool.supervisor import Supervisor, TaskState


def test_restart_delay_doubles_up_to_its_cap() -> None:
    assert [restart_delay(n, base=0.1, cap=1.0) for n in (1, 2, 3, 4, 5, 100)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )


def test_a_loop_that_raises_is_logged_counted_and_restarted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "RESTART_BASE", 0.01)
    restarted: list[TaskState] = []
    runs = 0

    async def step() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"failure {runs}\nsecond line")
        await asyncio.Event().wait()  # runs until stopped

    async def main() -> Supervisor:
        tasks = Supervisor(on_restart=restarted.append)
        name = tasks.spawn(step, kind="feeder", backend="pacs-a")
        assert name == "feeder/pacs-a"
        for _ in range(200):  # bounded: two restarts take ~30 ms
            if runs == 3:
                break
            await asyncio.sleep(0.01)
        state = tasks.tasks[name]
        assert state.running and state.restarts == 2
        assert [t.troubled(state.started_at) for t in tasks.troubled()] == [True]
        await tasks.stop()
        return tasks

    tasks = asyncio.run(main())
    assert runs == 3
    assert [t.name for t in restarted] == ["feeder/pacs-a", "feeder/pacs-a"]
    lines = [r for r in caplog.records if r.getMessage().startswith("spool.task_failed")]
    assert len(lines) == 2
    first = lines[0].getMessage()
    assert first.startswith("spool.task_failed task=feeder/pacs-a restarts=1 retry_in=0.0s")
    assert "ValueError: failure 1" in first and "test_spool_supervisor.py:" in first
    assert "\n" not in first, "one line: a newline in the cause is escaped"
    assert all(r.exc_info is None for r in lines)
    assert tasks.tasks["feeder/pacs-a"].last_error.startswith("ValueError: failure 2")


def test_a_task_running_long_enough_again_counts_as_recovered() -> None:
    state = TaskState(name="sweep", kind="sweep", failures=1, started_at=100.0)
    assert state.troubled(100.0 + supervision.HEALTHY_AFTER - 1)
    assert not state.troubled(100.0 + supervision.HEALTHY_AFTER)
    assert TaskState(name="sweep", kind="sweep", running=False).troubled(0.0)
