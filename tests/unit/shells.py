"""A dicomlb DICOM front end on the in-memory network (`fakenet`), for the shell tests:
the listener with its relay, backends served by scripted SCPs, clients connected to it.

    front = Front(config(pool(backend("a"))))
    front.network.serve(*ADDRESSES["a"], FakeSCP)
    client = await front.associate()  # accepted, or the test fails
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.dicom.acceptor import DicomListener, InboundAssociation
from dicomlb.dicom.dimse import Command, CommandField, Tag
from dicomlb.dicom.pdu import AssociateAccept, AssociateRequest
from dicomlb.runtime import Runtime
from dicomlb.services.relay import Relay
from dicomlb.spool.spool import Spool
from tests.unit.fakenet import FakeClient, Network
from tests.unit.helpers import CT_IMAGE_STORAGE, make_request

BACKEND_HOSTS = {name: (f"10.0.1.{n}", 104) for n, name in enumerate("abcdef", start=1)}


def backend(name: str, **settings: Any) -> dict[str, Any]:
    """A DICOM backend named `name` at its `BACKEND_HOSTS` address, AE title its name."""
    host, port = BACKEND_HOSTS[name]
    return {"name": name, "dicom": f"{name.upper()}@{host}:{port}", **settings}


def config(
    *backends: dict[str, Any], listener: dict[str, Any] | None = None, **pool: Any
) -> dict[str, Any]:
    """One pool `p` of `backends` with short timeouts, one route to it, a DICOM listener."""
    return {
        "listeners": {
            "dicom": {
                "bind": "127.0.0.1:11112",
                "ae_title": "DICOMLB",
                "artim_timeout": "1s",
                "idle_timeout": "2s",
                **(listener or {}),
            }
        },
        "pools": {
            "p": {
                "backends": list(backends),
                "connect_timeout": "200ms",
                "acquire_timeout": "100ms",
                "response_timeout": "300ms",
                **pool,
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
    }


class Front:
    """A listener and its relay on a runtime that dials `network`."""

    def __init__(self, data: dict[str, Any], spool: Spool | None = None) -> None:
        self.network = Network()
        self.runtime = Runtime(build_snapshot(data), dial=self.network.dial)
        self.relay = Relay(spool)
        self.listener = DicomListener(self.runtime, self.relay)

    def connect(self, peer: tuple[str, int] = ("10.0.0.5", 50000)) -> FakeClient:
        return FakeClient.connect(InboundAssociation(self.listener), peer)

    async def associate(
        self, request: AssociateRequest | None = None, peer: tuple[str, int] = ("10.0.0.5", 50000)
    ) -> FakeClient:
        client = self.connect(peer)
        client.associate(request or make_request())
        answer = await client.next()
        assert isinstance(answer, AssociateAccept), answer
        return client

    async def close(self) -> None:
        for upstream in self.runtime.upstreams.values():
            await upstream.close()


def run(test: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run `test` on a new loop, failing it after `timeout` seconds."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


def store_request(
    message_id: int = 1, sop_class: str = CT_IMAGE_STORAGE, instance: str = "1.2.3.4.5"
) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: sop_class,
            Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: 0,
            Tag.AFFECTED_SOP_INSTANCE_UID: instance,
        }
    )


def element(group: int, elem: int, vr: str, value: str) -> bytes:
    """One explicit VR little endian element with a short (2-byte) length."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return (
        group.to_bytes(2, "little")
        + elem.to_bytes(2, "little")
        + vr.encode("ascii")
        + len(raw).to_bytes(2, "little")
        + raw
    )


def instance(
    study: str = "1.2.826.0.1.1", modality: str = "CT", instance_uid: str = "1.2.3.4.5"
) -> bytes:
    """A small CT data set in explicit VR little endian (no pixels)."""
    return (
        element(0x0008, 0x0016, "UI", CT_IMAGE_STORAGE)
        + element(0x0008, 0x0018, "UI", instance_uid)
        + element(0x0008, 0x0060, "CS", modality)
        + element(0x0020, 0x000D, "UI", study)
        + element(0x0020, 0x000E, "UI", study + ".1")
    )
