"""The bridge's pure parts: where a C-STORE goes over HTTP, how the body is framed, and what
the HTTP answer means as a DIMSE status. No I/O, no clock, no logging.

Status mapping (PS3.4 B.2.3, PS3.18 10.5.3):

| HTTP answer | DIMSE status |
|---|---|
| 2xx, Orthanc `Status` "Success" / "AlreadyStored" | 0x0000 Success |
| 2xx, Orthanc `Status` anything else (e.g. "FilteredOut") | 0xC000 with the status |
| STOW 200 / 202, instance in ReferencedSOPSequence | 0x0000 (or its WarningReason, 0xB000) |
| STOW 2xx / 409, instance in FailedSOPSequence | its FailureReason (default 0xC000) |
| STOW 202, instance in neither sequence | 0x0110 (not confirmed) |
| 401, 403 | 0x0124 Refused: not authorized |
| 409, 422 | 0xA900 Data set does not match SOP class |
| 408, 429 | 0xA700 Out of resources (backend failure: retried, passive health) |
| 413 | 0xA700 Out of resources |
| other 4xx | 0xC000 Cannot understand |
| 503, 507 | 0xA700 (backend failure) |
| other 5xx, connection error, timeout | 0x0110 Processing failure (backend failure) |

The Error Comment is "HTTP 401 Unauthorized" or the backend's own reason (Orthanc's
`Details` / `Message`, DICOMweb's FailureReason), at most 64 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from dicomlb.dicom.status import succeeded
from dicomlb.snapshot import HttpAddress, HttpStoreConfig, StoreVia

__all__ = [
    "SUCCESS",
    "StoreOutcome",
    "busy",
    "connection_failed",
    "content_type",
    "map_answer",
    "multipart_close",
    "multipart_part",
    "store_path",
]

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
WARNING_COERCION = 0xB000
COMMENT_MAX = 64  # Error Comment is LO

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_ORTHANC_STORED = frozenset({"Success", "AlreadyStored"})
_NOT_LO = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")  # LO: printable, no backslash


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreOutcome:
    """One instance's fate as a DIMSE status, with the Error Comment for the sender."""

    status: int
    comment: str = ""
    backend_failed: bool = False  # the backend, not the instance: passive health, breaker
    unreachable: bool = False  # no connection made: nothing was sent, another backend may try
    answered: bool = True  # False: the connection failed before an HTTP answer
    busy: bool = False  # no connection within dicomlb's budget: its own load, never counted

    @property
    def stored(self) -> bool:
        """Success or a warning (PS3.7 C.4): the instance is at the backend."""
        return succeeded(self.status)


def store_path(address: HttpAddress, store: HttpStoreConfig) -> str:
    """The request target of a C-STORE: `{base}/instances` or `{base}{stow_path}/studies`."""
    if store.via is StoreVia.ORTHANC_REST:
        return f"{address.path}/instances"
    return f"{address.path}{store.stow_path}/studies"


def content_type(via: StoreVia, boundary: str) -> str:
    """The request's Content-Type."""
    if via is StoreVia.ORTHANC_REST:
        return "application/dicom"
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart_part(boundary: str, first: bool) -> bytes:
    """What goes before one instance's Part-10 bytes in a STOW-RS body (RFC 2046 5.1.1: the
    CRLF before a delimiter belongs to the delimiter)."""
    lead = b"" if first else b"\r\n"
    return lead + b"--" + boundary.encode("ascii") + b"\r\nContent-Type: application/dicom\r\n\r\n"


def multipart_close(boundary: str) -> bytes:
    """The close delimiter after the last instance."""
    return b"\r\n--" + boundary.encode("ascii") + b"--\r\n"


def _comment(text: str) -> str:
    return _NOT_LO.sub(" ", text).strip()[:COMMENT_MAX]


def busy(reason: str) -> StoreOutcome:
    """No connection to the backend could be had within dicomlb's own limit: nothing was
    sent, another backend may try; not the backend's failure (PS3.4 C.4.2.1.4: A700)."""
    return StoreOutcome(
        status=OUT_OF_RESOURCES,
        comment=_comment(reason),
        backend_failed=True,
        unreachable=True,
        answered=False,
        busy=True,
    )


def connection_failed(reason: str, *, unreachable: bool = False) -> StoreOutcome:
    """The request failed before an answer: connect error, reset, timeout. `unreachable`:
    no connection could be made (refused, TLS failure, connect timeout), nothing was sent."""
    return StoreOutcome(
        status=PROCESSING_FAILURE,
        comment=_comment(reason or "connection failed"),
        backend_failed=True,
        unreachable=unreachable,
        answered=False,
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _reason(status: int, body: bytes) -> str:
    """Why the backend refused: Orthanc's error JSON, else the first line of the body, else
    the status phrase."""
    data = _json(body)
    if isinstance(data, dict):
        for key in ("Details", "Message", "OrthancError", "HttpError", "error", "message"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    text = body[:200].decode("utf-8", "replace").strip().splitlines()
    if text and not text[0].lstrip().startswith(("<", "{")):
        return text[0]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _http_failure(status: int, body: bytes) -> StoreOutcome:
    comment = _comment(f"HTTP {status} {_reason(status, body)}")
    if status in (401, 403):
        return StoreOutcome(status=NOT_AUTHORIZED, comment=comment)
    if status in (409, 422):
        return StoreOutcome(status=DOES_NOT_MATCH, comment=comment)
    if status in (408, 429):
        return StoreOutcome(status=OUT_OF_RESOURCES, comment=comment, backend_failed=True)
    if status == 413:
        return StoreOutcome(status=OUT_OF_RESOURCES, comment=comment)
    if 400 <= status < 500:
        return StoreOutcome(status=CANNOT_UNDERSTAND, comment=comment)
    if status in (503, 507):
        return StoreOutcome(status=OUT_OF_RESOURCES, comment=comment, backend_failed=True)
    if status >= 500:
        return StoreOutcome(status=PROCESSING_FAILURE, comment=comment, backend_failed=True)
    return StoreOutcome(status=PROCESSING_FAILURE, comment=comment)  # 1xx / 3xx: unexpected


def _values(item: Mapping[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return values if isinstance(values, list) else []


def _stow_items(data: Any) -> tuple[dict[str, int], dict[str, int]] | None:
    """{uid: FailureReason} and {uid: WarningReason or 0} from a DICOM JSON STOW response."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return None
    failed: dict[str, int] = {}
    referenced: dict[str, int] = {}
    for target, tag, reason_tag, default in (
        (failed, _FAILED_SOP_SEQUENCE, _FAILURE_REASON, CANNOT_UNDERSTAND),
        (referenced, _REFERENCED_SOP_SEQUENCE, _WARNING_REASON, SUCCESS),
    ):
        for item in _values(data, tag):
            if not isinstance(item, dict):
                continue
            uids = _values(item, _REFERENCED_SOP_INSTANCE_UID)
            reasons = _values(item, reason_tag)
            reason = reasons[0] if reasons and isinstance(reasons[0], int) else default
            for uid in uids:
                if isinstance(uid, str):
                    target[uid] = reason
    return failed, referenced


def _stow_outcomes(status: int, body: bytes, uids: Sequence[str]) -> list[StoreOutcome] | None:
    items = _stow_items(_json(body))
    if items is None:
        return None
    failed, referenced = items
    outcomes = []
    for uid in uids:
        if uid in failed:
            code = failed[uid] or CANNOT_UNDERSTAND
            outcomes.append(
                StoreOutcome(status=code, comment=_comment(f"STOW-RS failure 0x{code:04X}"))
            )
        elif uid in referenced:
            code = referenced[uid]
            if code and (code & 0xF000) != 0xB000:
                code = WARNING_COERCION
            comment = _comment(f"STOW-RS warning 0x{code:04X}") if code else ""
            outcomes.append(StoreOutcome(status=code, comment=comment))
        elif status == 200:
            outcomes.append(StoreOutcome(status=SUCCESS))
        else:
            outcomes.append(
                StoreOutcome(
                    status=PROCESSING_FAILURE,
                    comment=_comment(f"HTTP {status}: instance not in the STOW-RS response"),
                )
            )
    return outcomes


def map_answer(
    via: StoreVia, status: int, body: bytes, sop_instance_uids: Sequence[str]
) -> list[StoreOutcome]:
    """One outcome per instance sent (in order) from the HTTP answer's status and body."""
    count = len(sop_instance_uids)
    if via is StoreVia.STOW_RS and (200 <= status < 300 or status == 409):
        outcomes = _stow_outcomes(status, body, sop_instance_uids)
        if outcomes is not None:
            return outcomes
    if 200 <= status < 300:
        if via is StoreVia.ORTHANC_REST:
            data = _json(body)
            answers = data if isinstance(data, list) else [data]
            outcomes = []
            for answer in (answers + [None] * count)[:count]:
                text = answer.get("Status") if isinstance(answer, dict) else None
                if isinstance(text, str) and text not in _ORTHANC_STORED:
                    outcomes.append(
                        StoreOutcome(status=CANNOT_UNDERSTAND, comment=_comment(f"Orthanc: {text}"))
                    )
                else:
                    outcomes.append(StoreOutcome(status=SUCCESS))
            return outcomes
        if status == 200 or status == 204:
            return [StoreOutcome(status=SUCCESS)] * count
        comment = _comment(f"HTTP {status}: stored status not confirmed")
        return [StoreOutcome(status=PROCESSING_FAILURE, comment=comment)] * count
    return [_http_failure(status, body)] * count
