"""`dicomlb run` with `workers: N`: N worker processes, kept running (asyncio shell).

The supervisor holds no listener and no spool: each worker is a fresh `dicomlb run --worker
K/N` that binds the shared ports itself (SO_REUSEPORT). It passes SIGHUP on to every worker
(each reloads), turns SIGINT / SIGTERM into SIGTERM for every worker (each drains within
`graceful_timeout`) and exits with the worst status they ended with; a worker that ends on
its own is started again after a backoff. What to do is decided in `dicomlb.workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from dicomlb.workers import (
    STOP_MARGIN,
    Worker,
    describe_status,
    failures_after,
    restart_delay,
    worst_status,
)

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_command(config: str, log_level: str, log_format: str) -> Callable[[Worker], list[str]]:
    """The command line of each worker: this interpreter, this package, one worker."""

    def command(worker: Worker) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dicomlb",
            "--log-level",
            log_level,
            "--log-format",
            log_format,
            "run",
            "--config",
            config,
            "--worker",
            str(worker),
        ]

    return command


def ports_in_use(binds: Sequence[tuple[str, int]]) -> list[str]:
    """The binds another process listens on. Workers bind with SO_REUSEPORT, so a second
    `dicomlb run` on the same ports would silently take half their connections: the
    supervisor tries each bind without it first (and closes it at once: it holds none)."""
    taken = []
    for host, port in binds:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                taken.append(f"{host}:{port} ({err.strerror})")
    return taken


def _die_with_parent() -> None:
    """In the child between fork and exec: the kernel sends it SIGTERM (a graceful stop) when
    the supervisor ends, however it ends, so no worker outlives it holding the ports."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts `count` workers and keeps each running until it is asked to stop."""

    def __init__(
        self, command: Callable[[Worker], Sequence[str]], count: int, graceful_timeout: float
    ) -> None:
        self.command = command
        self.count = count
        self.graceful_timeout = graceful_timeout
        self.stopping = asyncio.Event()
        self.processes: dict[int, asyncio.subprocess.Process] = {}  # worker index -> running
        self.statuses: dict[int, int] = {}  # worker index -> its last returncode

    async def run(self) -> int:
        """Run the workers until SIGINT / SIGTERM (or `stop`); the worst exit status."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        log.info("supervisor.started workers=%d", self.count)
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(self.count):
                    group.create_task(self.keep(Worker(index=index, count=self.count)))
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        status = worst_status(self.statuses.values())
        log.info("supervisor.stopped code=%d", status)
        return status

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("supervisor.stopping workers=%d", len(self.processes))
        self.stopping.set()

    def reload(self) -> None:
        log.info("supervisor.reloading workers=%d", len(self.processes))
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)

    async def keep(self, worker: Worker) -> None:
        """Run one worker; start it again after a backoff whenever it ends on its own."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stopping.is_set():
            started = loop.time()
            process = await asyncio.create_subprocess_exec(
                *self.command(worker), preexec_fn=_die_with_parent
            )
            self.processes[worker.index] = process
            log.info("worker.started worker=%s pid=%d", worker, process.pid)
            try:
                returncode = await self._wait(worker, process)
            finally:
                del self.processes[worker.index]
                if process.returncode is None:  # cancelled: never leave a worker behind
                    process.kill()
                    await asyncio.shield(process.wait())
            self.statuses[worker.index] = returncode
            if self.stopping.is_set():
                log.info(
                    "worker.exited worker=%s pid=%d code=%s",
                    worker,
                    process.pid,
                    describe_status(returncode),
                )
                return
            failures = failures_after(failures, loop.time() - started)
            delay = restart_delay(failures)
            log.error(
                "worker.exited worker=%s pid=%d code=%s failures=%d restart_in=%.1fs",
                worker,
                process.pid,
                describe_status(returncode),
                failures,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _wait(self, worker: Worker, process: asyncio.subprocess.Process) -> int:
        """The worker's returncode: when it ends on its own, or once it has drained after a
        stop (SIGKILL past `graceful_timeout` + STOP_MARGIN)."""
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: `keep` kills the worker
            exited.cancel()
            raise
        finally:
            stopping.cancel()
        if exited.done():
            return exited.result()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(
                asyncio.shield(exited), self.graceful_timeout + STOP_MARGIN
            )
        except TimeoutError:
            log.error(
                "worker.killed worker=%s pid=%d waited=%gs",
                worker,
                process.pid,
                self.graceful_timeout + STOP_MARGIN,
            )
            process.kill()
            return await exited
