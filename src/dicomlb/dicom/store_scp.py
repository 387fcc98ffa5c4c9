"""A small storage SCP on dicomlb's own cores: writes each received instance as a Part-10
file. It backs `dicomlb demo` and serves as a quick sink; it answers C-ECHO too."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import cast

from dicomlb.dicom.association import Association, Role
from dicomlb.dicom.dimse import (
    CommandField,
    CommandReceived,
    MessageAssembler,
    Status,
    response,
)
from dicomlb.dicom.errors import RemoteProtocolError
from dicomlb.dicom.negotiation import negotiate
from dicomlb.dicom.part10 import file_header
from dicomlb.dicom.pdu import AssociateRequest, PData, ReleaseReply, ReleaseRequest
from dicomlb.dicom.upstream import set_nodelay
from dicomlb.snapshot import DicomListenerConfig

log = logging.getLogger(__name__)


class StoreSCP:
    """Accepts storage associations and writes instances to `directory`."""

    def __init__(self, ae_title: str, directory: Path) -> None:
        self.ae_title = ae_title
        self.directory = directory
        self.config = DicomListenerConfig(ae_title=ae_title, max_pdu=65536)
        self.received = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port."""
        self.directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _StoreProtocol(self), host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _StoreProtocol(asyncio.Protocol):
    def __init__(self, scp: StoreSCP) -> None:
        self.scp = scp
        self.assoc = Association(Role.ACCEPTOR, max_pdu=scp.config.max_pdu)
        self.assembler = MessageAssembler()
        self.transport: asyncio.Transport | None = None
        self.command: CommandReceived | None = None
        self.parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            for event in self.assoc.receive_data(data):
                if isinstance(event, AssociateRequest):
                    self.transport.write(self.assoc.send(negotiate(event, self.scp.config)))
                elif isinstance(event, PData):
                    for dimse in self.assembler.receive(event.pdvs):
                        self._on_dimse(dimse)
                elif isinstance(event, ReleaseRequest):
                    self.transport.write(self.assoc.send(ReleaseReply()))
                    self.transport.close()
        except RemoteProtocolError as err:
            self.transport.write(self.assoc.send(err.reply))
            self.transport.close()

    def _on_dimse(self, dimse: object) -> None:
        if isinstance(dimse, CommandReceived):
            if dimse.command.command_field == CommandField.C_ECHO_RQ:
                self._reply(dimse, Status.SUCCESS)
            elif dimse.command.command_field == CommandField.C_STORE_RQ:
                self.command = dimse
                self.parts = []
            else:
                self._reply(dimse, Status.UNRECOGNIZED_OPERATION)
            return
        assert self.command is not None
        self.parts.append(bytes(dimse.data))  # type: ignore[attr-defined]
        if dimse.is_last:  # type: ignore[attr-defined]
            command = self.command
            self.command = None
            self._write(command)
            self._reply(command, Status.SUCCESS)

    def _write(self, received: CommandReceived) -> None:
        command = received.command
        syntax = self.assoc.accepted[received.context_id].transfer_syntax
        request = self.assoc.request
        header = file_header(
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=syntax,
            source_ae=request.calling_ae if request else "",
        )
        path = self.scp.directory / f"{command.sop_instance_uid}.dcm"
        with open(path, "wb") as out:
            out.write(header)
            out.writelines(self.parts)
        self.parts = []
        self.scp.received += 1
        log.debug(
            "scp.stored ae_title=%s path=%s size=%d", self.scp.ae_title, path, os.path.getsize(path)
        )

    def _reply(self, received: CommandReceived, status: int) -> None:
        assert self.transport is not None
        self.transport.writelines(
            self.assoc.send_data(
                received.context_id,
                response(received.command, status).encode(),
                is_command=True,
                is_last=True,
            )
        )
