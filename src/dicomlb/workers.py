"""Worker processes: what `dicomlb run` with `workers: N` decides, without processes (pure).

N workers are N instances of the scale-out model (docs/operations/scaling-out.md): each
binds the DICOM and HTTP listeners with SO_REUSEPORT (the kernel spreads connections), divides
the backends' limits by instances x workers, and keeps to itself what an instance keeps — its
admin listener (the written port + K), its spool directory and its `state_dir`
(`<directory>/worker-K`). The supervisor that starts them holds no listener; it restarts a
worker that dies with a backoff and exits with the worst code its workers ended with.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dicomlb.snapshot import Snapshot

# Restart backoff: the first restart after BASE seconds, doubled per failure in a row up to
# CAP; a worker that ran STABLE seconds starts the count again.
RESTART_BASE = 0.5
RESTART_CAP = 30.0
STABLE = 60.0
# How long the supervisor waits past `graceful_timeout` for a stopping worker before SIGKILL.
STOP_MARGIN = 10.0

_WORKER = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Worker:
    """Worker `index` (from 0) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_worker(text: str) -> Worker:
    """`K/N` (`--worker`): worker K of N, 0 <= K < N. Raises ValueError."""
    found = _WORKER.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"--worker {text!r} is not K/N, e.g. 0/2")
    index, count = int(found[1]), int(found[2])
    if not 0 <= index < count:
        raise ValueError(f"--worker {text}: K must be from 0 to {count - 1}")
    return Worker(index=index, count=count)


def worker_directory(directory: str, index: int) -> str:
    """Worker `index`'s part of a spool directory or `state_dir`."""
    return posixpath.join(directory, f"worker-{index}")


def admin_port(port: int, index: int) -> int:
    """Worker `index`'s admin port: the written one + index."""
    return port + index


def for_worker(snapshot: Snapshot, worker: Worker) -> Snapshot:
    """`snapshot` as worker `worker` runs it: listeners shared through SO_REUSEPORT, its own
    admin port, spool directory and state directory. One worker runs the snapshot as it is."""
    if worker.count <= 1:
        return snapshot
    k = worker.index
    return dataclasses.replace(
        snapshot,
        dicom=None
        if snapshot.dicom is None
        else dataclasses.replace(snapshot.dicom, reuse_port=True),
        http=None if snapshot.http is None else dataclasses.replace(snapshot.http, reuse_port=True),
        admin=None
        if snapshot.admin is None
        else dataclasses.replace(snapshot.admin, port=admin_port(snapshot.admin.port, k)),
        spool=None
        if snapshot.spool is None
        else dataclasses.replace(
            snapshot.spool, directory=worker_directory(snapshot.spool.directory, k)
        ),
        state_dir=None if snapshot.state_dir is None else worker_directory(snapshot.state_dir, k),
    )


def spool_parts(workers: int) -> frozenset[str]:
    """The parts of a spool directory that `workers` workers own: the directory itself ("")
    for one, `worker-K` for each of several."""
    if workers <= 1:
        return frozenset({""})
    return frozenset(f"worker-{k}" for k in range(workers))


def stranded(holding: Mapping[str, int], workers: int) -> list[str]:
    """The parts of a spool directory ("" the directory itself, or `worker-K`) holding items
    (queued, sending or dead) that no worker of `workers` would own: their items would wait
    forever, unseen by the dispatchers and the admin listeners."""
    owned = spool_parts(workers)
    return sorted(part for part, items in holding.items() if items and part not in owned)


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that has died `failures` times in a row (>= 1)."""
    return min(RESTART_CAP, RESTART_BASE * float(1 << min(max(0, failures - 1), 16)))


def failures_after(failures: int, ran_for: float) -> int:
    """The count of failures in a row once a worker that ran `ran_for` seconds has died."""
    return 1 if ran_for >= STABLE else failures + 1


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell shows it: killed by signal S is 128 + S."""
    return 128 - returncode if returncode < 0 else returncode


def worst_status(returncodes: Iterable[int]) -> int:
    """The supervisor's exit status: the worst (highest) of its workers' last ones."""
    return max((exit_status(code) for code in returncodes), default=0)


def describe_status(returncode: int) -> str:
    """`0`, `2`, or `SIGKILL` for a process a signal ended, for the log."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return str(returncode)


def stranded_message(directory: str, parts: Sequence[str], workers: int) -> str:
    """Why `dicomlb run` refuses to start with `workers` workers on a spool whose `parts`
    hold items no worker would own, and what to do."""
    names = [posixpath.join(directory, part) if part else directory for part in parts]
    needed = max((int(part.removeprefix("worker-")) + 1 for part in parts if part), default=1)
    if "" in parts:
        todo = (
            "start with workers: 1 until they are delivered (`dicomlb spool ls`), then raise "
            "workers"
        )
    else:
        todo = (
            f"start with workers: {needed} (or more) until they are delivered (`dicomlb spool "
            "ls --worker K`), then lower workers"
        )
    return (
        f"spool items in {', '.join(names)} would never be delivered with workers: {workers} "
        f"(no worker owns them); {todo}"
    )
