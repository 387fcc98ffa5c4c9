"""dicomlb itself as a peer: the balancer runs in-process on its own event loop thread, on a
free loopback port, from a config dict a user would write; every test stops it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from dicomlb.app import App
from dicomlb.config import build_snapshot
from dicomlb.pools import BackendState
from tests.peers import free_port


class Balancer:
    """A running dicomlb (App) on a background event loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        config.setdefault("listeners", {}).setdefault(
            "dicom", {"bind": f"127.0.0.1:{free_port()}", "ae_title": "DICOMLB"}
        )
        self.snapshot = build_snapshot(config, source="<test>")
        assert self.snapshot.dicom is not None
        self.port = self.snapshot.dicom.port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app = App(self.snapshot)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> Balancer:
        self.thread.start()
        self.call(self.app.start())
        return self

    def stop(self) -> None:
        self.call(self.app.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def backend(self, name: str) -> BackendState:
        return self.app.runtime.backends[name]


@pytest.fixture
def balancer() -> Iterator[Any]:
    """`balancer(config)` starts dicomlb with `config`; all are stopped after the test."""
    started: list[Balancer] = []

    def start(config: dict[str, Any]) -> Balancer:
        lb = Balancer(config).start()
        started.append(lb)
        return lb

    yield start
    for lb in started:
        lb.stop()
