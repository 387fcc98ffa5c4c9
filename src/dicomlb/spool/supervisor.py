"""Keeps the spool's long-running tasks running.

Every loop of the spool (the group committer, the dispatcher's sweep, each backend's feeder
and workers) runs under a `Supervisor`: when one raises (a failed SQLite write on a full
disk, a bug), the failure is logged on one line with its cause, counted, and the loop is
started again after a backoff that doubles while it keeps failing (`state.restart_delay`).
A loop keeps its state on its owner's object, so a restarted loop carries on where the
failed one left off. Without this a dead task is silent: asyncio keeps its exception on
the Task object, and a task that is still referenced is never reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dicomlb.spool import state

log = logging.getLogger(__name__)

RESTART_BASE = 0.1  # seconds before the first restart of a failed task
RESTART_CAP = 5.0  # the longest wait between restarts of a task that keeps failing
HEALTHY_AFTER = 30.0  # a task running this long since its restart counts as recovered

Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True, kw_only=True)
class TaskState:
    """What the control plane shows of one supervised task."""

    name: str  # e.g. "worker/pacs-a/1": kind, backend, index
    kind: str  # committer | sweep | feeder | worker
    backend: str = ""
    running: bool = True  # False while it waits to be restarted
    restarts: int = 0
    failures: int = 0  # consecutive failures (reset once it ran HEALTHY_AFTER)
    last_error: str = ""
    failed_at: float | None = None  # wall clock of the last failure
    started_at: float = 0.0  # monotonic, of the last (re)start
    retry_at: float | None = None  # wall clock of the next restart while not running

    def troubled(self, now: float) -> bool:
        """Waiting to restart, or restarted less than HEALTHY_AFTER ago (monotonic `now`)."""
        return not self.running or (self.failures > 0 and now - self.started_at < HEALTHY_AFTER)


class Supervisor:
    """Runs named loops and restarts those that stop."""

    def __init__(self, on_restart: Callable[[TaskState], None] | None = None) -> None:
        self.tasks: dict[str, TaskState] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._on_restart = on_restart

    def spawn(self, loop: Loop, *, kind: str, backend: str = "", index: int | None = None) -> str:
        """Run `loop()` until stopped, restarting it whenever it raises or returns; its name."""
        parts = [kind, backend, "" if index is None else str(index)]
        name = "/".join(part for part in parts if part)
        task_state = TaskState(name=name, kind=kind, backend=backend)
        self.tasks[name] = task_state
        self._running[name] = asyncio.get_running_loop().create_task(
            self._keep(loop, task_state), name=f"spool {name}"
        )
        return name

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named tasks (default: all) and wait for them to end."""
        chosen = list(self._running) if names is None else [n for n in names if n in self._running]
        tasks = [self._running.pop(name) for name in chosen]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def troubled(self) -> list[TaskState]:
        """Tasks waiting to restart or recently restarted."""
        now = time.monotonic()
        return [t for t in self.tasks.values() if t.troubled(now)]

    async def _keep(self, loop: Loop, task: TaskState) -> None:
        while True:
            task.started_at = time.monotonic()
            try:
                await loop()
                cause = "the loop returned"
            except Exception as err:  # any failure of a loop is logged and restarted
                cause = _describe(err)
            if time.monotonic() - task.started_at >= HEALTHY_AFTER:
                task.failures = 0
            task.failures += 1
            task.restarts += 1
            task.last_error = cause
            delay = state.restart_delay(task.failures, base=RESTART_BASE, cap=RESTART_CAP)
            task.failed_at = time.time()
            task.retry_at = task.failed_at + delay
            task.running = False
            log.error(
                "spool.task_failed task=%s restarts=%d retry_in=%.1fs reason=%r",
                task.name,
                task.restarts,
                delay,
                cause,
            )
            if self._on_restart is not None:
                self._on_restart(task)
            await asyncio.sleep(delay)
            task.running, task.retry_at = True, None


def _describe(err: BaseException) -> str:
    """The cause on one line: type, message and where it was raised."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}: {err}{where}"
