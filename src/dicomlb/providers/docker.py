"""The Docker provider's shell: watches one Engine API and publishes the backends its
containers' labels define (`labels.py` decides).

One list of the running containers, then the event stream (never polling); every
container event inspects that container again, so an event seen twice changes nothing.
The stream is opened from the engine's own clock before the list, so nothing happening in
between is missed. When the connection drops it reconnects with exponential backoff and
lists again (a resync); meanwhile the last backends published stay (the containers did not
stop because dicomlb lost sight of them). Owned by `async with`: leaving it ends the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Self

import aiodocker
import aiohttp

from dicomlb.providers.labels import Container, container_of, definition, stop_signalled
from dicomlb.providers.merge import Definition
from dicomlb.snapshot import DockerProviderConfig

__all__ = ["DockerProvider"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
Publish = Callable[[tuple[Definition, ...]], Awaitable[None]]


def client_url(endpoint: str, tls: bool) -> str:
    """aiohttp's URL for an endpoint as Docker writes it (`tcp://` is http or https)."""
    if endpoint.startswith("tcp://"):
        return ("https://" if tls else "http://") + endpoint.removeprefix("tcp://")
    return endpoint


def events_since(system_time: str) -> str:
    """The engine's clock (`/info` SystemTime, RFC 3339 with nanoseconds) as the Unix time
    `GET /events?since=` takes; "" (from now) when it cannot be read."""
    whole, _, rest = system_time.partition(".")
    fraction = "".join(itertools.takewhile(str.isdigit, rest))
    zone = rest[len(fraction) :] if rest else whole[19:]
    whole = whole[:19]
    try:
        moment = datetime.datetime.fromisoformat(whole + ("+00:00" if zone in ("", "Z") else zone))
    except ValueError:
        return ""
    return f"{int(moment.timestamp())}.{fraction or '0'}"


class DockerProvider:
    """Watches the engine at `config.endpoint`; `publish` gets the definitions each time
    they change (the App merges them)."""

    def __init__(self, config: DockerProviderConfig, publish: Publish) -> None:
        self.config = config
        self.publish = publish
        self.connected = False
        self.last_error: str | None = None
        self.containers: dict[str, Container] = {}
        self._stopping: set[str] = set()
        self._published: tuple[Definition, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        endpoint = self.config.endpoint
        tls = self.config.tls
        while True:
            try:
                async with aiodocker.Docker(
                    url=client_url(endpoint, tls is not None),
                    ssl_context=tls.context if tls is not None else None,
                ) as docker:
                    try:
                        await self._watch(docker)
                    finally:
                        # The event task's own failure is this one's: already handled.
                        with contextlib.suppress(Exception):
                            await docker.events.stop()  # type: ignore[no-untyped-call]
                reason = "the event stream ended"
                delay = BACKOFF_FIRST  # it was connected: start over
            except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as err:
                reason = str(err) or type(err).__name__
            self.connected = False
            self.last_error = reason
            log.warning(
                "docker.disconnected endpoint=%s error=%r retry_in=%.1fs", endpoint, reason, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _watch(self, docker: aiodocker.Docker) -> None:
        info = await docker.system.info()
        subscriber = docker.events.subscribe(  # type: ignore[no-untyped-call]
            since=events_since(str(info.get("SystemTime") or "")),
            filters=json.dumps({"type": ["container"]}),
        )
        listed = await docker.containers.list()
        found: dict[str, Container] = {}
        for summary in listed:
            container = await self._inspect(docker, summary.id)
            if container is not None:
                found[container.id] = container
        self.containers = found
        self._stopping &= set(found)
        self.connected = True
        self.last_error = None
        log.info("docker.connected endpoint=%s containers=%d", self.config.endpoint, len(found))
        await self._publish()
        while True:
            event = await subscriber.get()
            if event is None:  # the stream ended (the engine stopped, the connection broke)
                task = docker.events.task
                if task is not None and task.done() and not task.cancelled():
                    error = task.exception()
                    if error is not None:
                        raise error
                return
            await self._on_event(docker, event)

    async def _on_event(self, docker: aiodocker.Docker, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        container_id = str(event.get("id") or actor.get("ID") or "")
        action = str(event.get("Action") or "")
        if not container_id or action.startswith("exec_"):  # health checks run as execs
            return
        if stop_signalled(event):
            self._stopping.add(container_id)
        elif action == "start":
            self._stopping.discard(container_id)
        container = None if action == "destroy" else await self._inspect(docker, container_id)
        if container is None or not container.running:
            self.containers.pop(container_id, None)
            if action in ("die", "destroy"):
                self._stopping.discard(container_id)
        else:
            self.containers[container_id] = container
        await self._publish()

    async def _inspect(self, docker: aiodocker.Docker, container_id: str) -> Container | None:
        try:
            document = await docker.containers.container(container_id).show()
        except aiodocker.DockerError as err:
            if err.status == 404:  # gone between the event and now
                return None
            raise
        return container_of(document, stopping=container_id in self._stopping)

    async def _publish(self) -> None:
        definitions = tuple(
            found
            for container in sorted(self.containers.values(), key=lambda c: c.name)
            if (found := definition(container, self.config)) is not None
        )
        if definitions != self._published:
            self._published = definitions
            await self.publish(definitions)
