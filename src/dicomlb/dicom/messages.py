"""A client's DIMSE request on its way through dicomlb: the command, and its data set as a
stream of fragments that the listener fills and one task empties (asyncio, no sockets).

The listener (`acceptor`) makes them; the services that relay, spool or bridge them read
them, or `discard` what they will not forward.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass

from dicomlb.dicom.dimse import Command, DataReceived


class ClientGone(Exception):
    """The client aborted or disconnected while a message was being relayed."""


class FragmentStream:
    """The data-set fragments of one message, from the protocol to the relay task."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        high_water: int,
        on_high: Callable[[], None],
        on_low: Callable[[], None],
    ) -> None:
        self._loop = loop  # asyncio.get_running_loop() costs a getpid() per call
        self._items: collections.deque[DataReceived] = collections.deque()
        self._bytes = 0
        self._high = high_water
        self._on_high = on_high
        self._on_low = on_low
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: str | None = None
        self.ended = False  # the last fragment was taken: nothing more to read or drop

    def put(self, fragment: DataReceived) -> None:
        self._items.append(fragment)
        self._bytes += len(fragment.data)
        if not self._paused and self._bytes > self._high:
            self._paused = True
            self._on_high()
        self._wake()

    def abort(self, reason: str) -> None:
        self._error = reason
        self._wake()

    async def get(self) -> DataReceived:
        """The next fragment; raises ClientGone if the client went away first."""
        while not self._items:
            if self._error is not None:
                raise ClientGone(self._error)
            self._waiter = self._loop.create_future()
            await self._waiter
        fragment = self._items.popleft()
        self.ended = fragment.is_last
        self._bytes -= len(fragment.data)
        if self._paused and self._bytes <= self._high // 2:
            self._paused = False
            self._on_low()
        return fragment

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None


@dataclass(slots=True, kw_only=True)
class InboundMessage:
    """A request from the client, its data set still arriving in `data`."""

    context_id: int
    command: Command
    abstract_syntax: str
    transfer_syntax: str
    data: FragmentStream | None


async def discard(message: InboundMessage) -> None:
    """Read and drop what is left of a message's data set (it will not be forwarded); safe
    to call whatever was read already."""
    stream = message.data
    if stream is None:
        return
    while not stream.ended:
        await stream.get()
