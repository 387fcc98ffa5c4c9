"""What a backend's refusal means to the sender (pure).

dicomlb has accepted the client's association before it asks a backend, so a backend that
refuses cannot be mirrored by refusing or aborting the client's association: the refusal
becomes the message's status, chosen here from the typed upstream error's `Cause`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicomlb.dicom.dimse import Status
from dicomlb.health import Cause


@dataclass(frozen=True, slots=True)
class Refusal:
    """The status a refused message gets, and a few words for its Error Comment."""

    status: int
    why: str


# PS3.7 C.4 general statuses, one per kind of refusal.
_REFUSALS = {
    # A-ASSOCIATE-RJ permanent: this calling AE (or called AE) is not accepted there.
    Cause.REJECTED_PERMANENT: Refusal(Status.NOT_AUTHORIZED, "association rejected"),
    # Orthanc with echo or store open to everyone takes the association, then aborts a
    # C-FIND / C-MOVE / C-GET from a caller that is not in its DicomModalities.
    Cause.ABORTED: Refusal(Status.NOT_AUTHORIZED, "request aborted"),
    Cause.ABORTED_WHILE_SENDING: Refusal(Status.NOT_AUTHORIZED, "request aborted"),
    Cause.CONTEXT_REJECTED: Refusal(Status.SOP_CLASS_NOT_SUPPORTED, "context rejected"),
    Cause.REJECTED_TRANSIENT: Refusal(Status.OUT_OF_RESOURCES, "busy"),
    Cause.BUSY: Refusal(Status.OUT_OF_RESOURCES, "busy"),
    Cause.NO_ACCEPT_WHILE_HOLDING: Refusal(Status.OUT_OF_RESOURCES, "busy"),
}


def refusal(cause: Cause) -> Refusal | None:
    """The backend refused the message before answering it: the status that says so. None
    when the cause is no refusal (unreachable, timed out, failed): the caller's own failure
    status applies."""
    return _REFUSALS.get(cause)


def common_refusal(refusals: Iterable[Refusal | None]) -> Refusal | None:
    """When no backend answered: the first backend's refusal, when every one of them refused
    with the same status (None stands for a backend that failed otherwise); else None."""
    found = list(refusals)
    if not found or found[0] is None:
        return None
    first = found[0]
    return first if all(r is not None and r.status == first.status for r in found) else None
