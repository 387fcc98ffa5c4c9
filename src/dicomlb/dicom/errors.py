"""Protocol errors, split by blame (as h11 does)."""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """A DICOM upper-layer or DIMSE protocol violation."""


class LocalProtocolError(ProtocolError):
    """dicomlb tried something the protocol does not allow in the current state: a bug."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. `reply` is the event to send back (usually an A-ABORT)."""

    def __init__(self, message: str, *, reply: Any) -> None:
        super().__init__(message)
        self.reply = reply
