"""Query/retrieve without I/O: information models, result de-duplication, sub-operation
counts summed over backends, and C-MOVE correlation (PS3.4 Annex C and K, PS3.7 9.1.2-4).

The shells (`services/query.py`, `services/retrieve.py`) feed these with values read from the wire
and send what they decide; nothing here touches a socket, a clock or a logger.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.filereader import read_dataset

from dicomlb.dicom.dimse import Command, CommandField, Status, Tag
from dicomlb.dicom.status import succeeded
from dicomlb.dicom.tags import STUDY_INSTANCE_UID, HeaderScanner
from dicomlb.dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

# PS3.4 C.6: the information models' SOP classes, FIND / MOVE / GET of each root.
PATIENT_ROOT = (
    "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.1.2",
    "1.2.840.10008.5.1.4.1.2.1.3",
)
STUDY_ROOT = (
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
)
PATIENT_STUDY_ONLY = (  # retired, still seen
    "1.2.840.10008.5.1.4.1.2.3.1",
    "1.2.840.10008.5.1.4.1.2.3.2",
    "1.2.840.10008.5.1.4.1.2.3.3",
)
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STUDY_ROOT_FIND = STUDY_ROOT[0]
_MODELS = (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)

# Identifier elements read to de-duplicate and to locate studies.
QUERY_RETRIEVE_LEVEL = 0x00080052
SOP_INSTANCE_UID = 0x00080018
ACCESSION_NUMBER = 0x00080050
PATIENT_ID = 0x00100020
SERIES_INSTANCE_UID = 0x0020000E
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058  # PS3.4 C.4.2.1.5: final C-MOVE / C-GET identifier
IDENTIFIER_TAGS = frozenset(
    {
        QUERY_RETRIEVE_LEVEL,
        SOP_INSTANCE_UID,
        ACCESSION_NUMBER,
        PATIENT_ID,
        STUDY_INSTANCE_UID,
        SERIES_INSTANCE_UID,
    }
)
# PS3.4 C.2.2.1: the unique key of each level.
LEVEL_KEYS = {
    "PATIENT": PATIENT_ID,
    "STUDY": STUDY_INSTANCE_UID,
    "SERIES": SERIES_INSTANCE_UID,
    "IMAGE": SOP_INSTANCE_UID,
}

# PS3.4 C.4.2.1.5 / C.4.3.1.4: move and get statuses dicomlb gives itself.
MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPERATIONS_FAILED = 0xB000  # warning: sub-operations complete, one or more failures
CANCELLED = 0xFE00
UNABLE_TO_PROCESS = 0xC000


def find_model_of(abstract_syntax: str) -> str | None:
    """The C-FIND SOP class of the information model a FIND / MOVE / GET class belongs to."""
    for model in _MODELS:
        if abstract_syntax in model:
            return model[0]
    return None


def identifier_values(data: bytes | memoryview, transfer_syntax: str) -> dict[int, str]:
    """The identifier's query level and unique keys (IDENTIFIER_TAGS), as text."""
    scanner = HeaderScanner(transfer_syntax, IDENTIFIER_TAGS)
    scanner.feed(data)
    scanner.finish()
    return dict(scanner.values)


def result_key(values: Mapping[int, str], data: bytes | memoryview) -> str:
    """What makes a C-FIND result unique: the UID (or Patient ID) of its query level.

    Worklist items and results without the level's key fall back to the identifier's bytes:
    backends sharing a database answer byte for byte alike.
    """
    level = values.get(QUERY_RETRIEVE_LEVEL, "").upper()
    tag = LEVEL_KEYS.get(level)
    if tag is not None and values.get(tag):
        return f"{level}:{values[tag]}"
    return "bytes:" + hashlib.blake2b(bytes(data), digest_size=16).hexdigest()


class FindMerger:
    """Results of one C-FIND fanned out over backends: each unique result passes once."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.duplicates = 0

    def first(self, key: str) -> bool:
        """True the first time `key` is offered; later offers count as duplicates."""
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        return True

    @property
    def unique(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class Counts:
    """Sub-operation counts of a C-MOVE / C-GET response (PS3.7 9.3.4.2 / 9.3.3.2)."""

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @classmethod
    def of(cls, command: Command) -> Counts:
        return cls(
            command.us(Tag.NUMBER_OF_REMAINING_SUBOPERATIONS) or 0,
            command.us(Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS) or 0,
            command.us(Tag.NUMBER_OF_FAILED_SUBOPERATIONS) or 0,
            command.us(Tag.NUMBER_OF_WARNING_SUBOPERATIONS) or 0,
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.remaining + other.remaining,
            self.completed + other.completed,
            self.failed + other.failed,
            self.warning + other.warning,
        )

    def elements(self, *, final: bool) -> dict[int, int]:
        """The command elements; a final response carries no Remaining (PS3.7 C.4.2.1.5)."""
        values: dict[int, int] = {
            Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS: _us(self.completed),
            Tag.NUMBER_OF_FAILED_SUBOPERATIONS: _us(self.failed),
            Tag.NUMBER_OF_WARNING_SUBOPERATIONS: _us(self.warning),
        }
        if not final:
            values[Tag.NUMBER_OF_REMAINING_SUBOPERATIONS] = _us(self.remaining)
        return values


def _us(value: int) -> int:
    return min(value, 0xFFFF)


@dataclass(slots=True)
class RetrieveTally:
    """A C-MOVE / C-GET sent to several backends: their latest counts and final statuses,
    summed into what the client sees."""

    backends: tuple[str, ...]
    counts: dict[str, Counts] = field(default_factory=dict)
    finals: dict[str, int] = field(default_factory=dict)  # backend -> final status
    problems: dict[str, str] = field(default_factory=dict)  # backend -> why it gave no answer
    comments: dict[str, str] = field(default_factory=dict)  # backend -> its final Error Comment
    failed_uids: list[str] = field(default_factory=list)  # backends' Failed SOP Instance UIDs

    def failed_instances(self, uids: Iterable[str]) -> None:
        """A backend's Failed SOP Instance UID List, merged (each UID once, in order)."""
        seen = set(self.failed_uids)
        for uid in uids:
            if uid and uid not in seen:
                seen.add(uid)
                self.failed_uids.append(uid)

    def pending(self, backend: str, counts: Counts) -> Counts:
        """A backend's pending response: the sum across backends to relay."""
        self.counts[backend] = counts
        return self.total()

    def final(self, backend: str, status: int, counts: Counts) -> None:
        self.finals[backend] = status
        self.counts[backend] = Counts(0, counts.completed, counts.failed, counts.warning)

    def failed(self, backend: str, reason: str, status: int = UNABLE_TO_PROCESS) -> None:
        """The backend could not be asked, or went away: its sub-operations count as failed
        (those it had announced and not done)."""
        before = self.counts.get(backend, Counts())
        self.counts[backend] = Counts(0, before.completed, before.failed + before.remaining, 0)
        self.finals[backend] = status
        self.problems[backend] = reason

    def total(self) -> Counts:
        total = Counts()
        for counts in self.counts.values():
            total += counts
        return total

    def final_status(self) -> int:
        """PS3.4 C.4.2.1.5: Success when every sub-operation succeeded, Cancel when a backend
        was cancelled, Warning B000 when some failed, else a backend's failure status."""
        statuses = [self.finals.get(b, UNABLE_TO_PROCESS) for b in self.backends]
        total = self.total()
        if any(status == CANCELLED for status in statuses):
            return CANCELLED
        failures = [s for s in statuses if not succeeded(s)]
        if failures and len(failures) == len(statuses) and total.completed == 0:
            return failures[0]
        if failures or total.failed or total.warning or any(s != Status.SUCCESS for s in statuses):
            return SUBOPERATIONS_FAILED
        return Status.SUCCESS


def retrieve_response(
    request: Command,
    status: int,
    counts: Counts,
    *,
    final: bool,
    error_comment: str | None = None,
    identifier: bool = False,
) -> Command:
    """The C-MOVE-RSP / C-GET-RSP dicomlb sends the client; with `identifier`, a data set
    (`failed_list_identifier`) follows."""
    values: dict[int, int | str | bytes] = {
        Tag.AFFECTED_SOP_CLASS_UID: request.sop_class_uid,
        Tag.COMMAND_FIELD: request.command_field | 0x8000,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        Tag.COMMAND_DATA_SET_TYPE: 0x0000 if identifier else 0x0101,
        Tag.STATUS: status,
        **counts.elements(final=final),
    }
    if error_comment:
        values[Tag.ERROR_COMMENT] = error_comment[:64]  # PS3.7 C.4: LO
    return Command.build(values)


def failed_instances(data: bytes | memoryview, transfer_syntax: str) -> list[str]:
    """The Failed SOP Instance UID List of a final C-MOVE / C-GET response's identifier."""
    scanner = HeaderScanner(transfer_syntax, frozenset({FAILED_SOP_INSTANCE_UID_LIST}))
    scanner.feed(data)
    scanner.finish()
    text = scanner.values.get(FAILED_SOP_INSTANCE_UID_LIST, "")
    return [uid.strip("\x00 ") for uid in text.split("\\") if uid.strip("\x00 ")]


def _uid_list(uids: Iterable[str]) -> bytes:
    """A multi-valued UI value, cut at 65534 bytes (explicit VR keeps a 2-byte length)."""
    value = b""
    for uid in uids:
        more = (b"\\" if value else b"") + uid.encode("ascii")
        if len(value) + len(more) > 0xFFFE:
            break
        value += more
    return value


def _identifier(elements: Iterable[tuple[int, bytes, bytes]], transfer_syntax: str) -> bytes:
    """Data elements `(tag, VR, value)`, in ascending tag order, encoded in
    `transfer_syntax`; values are padded to even length (PS3.5 6.2: UI with NUL, text with
    a space)."""
    encoded = b""
    for tag, vr, value in elements:
        if len(value) % 2:
            value += b"\x00" if vr == b"UI" else b" "
        group, element = tag >> 16, tag & 0xFFFF
        if transfer_syntax == IMPLICIT_VR_LE:
            encoded += struct.pack("<HHI", group, element, len(value)) + value
        elif transfer_syntax == EXPLICIT_VR_BE:
            encoded += struct.pack(">HH2sH", group, element, vr, len(value)) + value
        else:
            encoded += struct.pack("<HH2sH", group, element, vr, len(value)) + value
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:  # PS3.5 A.5: raw deflate, no zlib header
        deflater = zlib.compressobj(wbits=-15)
        return deflater.compress(encoded) + deflater.flush()
    return encoded


def failed_list_identifier(uids: Iterable[str], transfer_syntax: str) -> bytes:
    """The identifier of a final C-MOVE / C-GET response: (0008,0058) Failed SOP Instance UID
    List, UI, multi-valued (PS3.4 C.4.2.1.5). The list is cut at 65534 bytes; the counts
    still say how many failed."""
    return _identifier([(FAILED_SOP_INSTANCE_UID_LIST, b"UI", _uid_list(uids))], transfer_syntax)


def instances_query(uids: Iterable[str], transfer_syntax: str) -> bytes:
    """A Study Root C-FIND identifier at IMAGE level matching any of the SOP Instance UIDs
    (PS3.4 C.2.2.2.2, list of UID matching): each backend answers one pending response per
    instance it holds. How an instance that did not relay the C-STOREs finds their backend.
    A list past 65534 bytes is cut: the first instances tell where the rest went."""
    return _identifier(
        [
            (SOP_INSTANCE_UID, b"UI", _uid_list(uids)),
            (QUERY_RETRIEVE_LEVEL, b"CS", b"IMAGE"),
        ],
        transfer_syntax,
    )


def find_final(request: Command, status: int, error_comment: str | None = None) -> Command:
    """The final C-FIND-RSP; a warning about backends that did not answer goes in its Error
    Comment (LO, 64 characters)."""
    values: dict[int, int | str | bytes] = {
        Tag.AFFECTED_SOP_CLASS_UID: request.sop_class_uid,
        Tag.COMMAND_FIELD: CommandField.C_FIND_RSP,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        Tag.COMMAND_DATA_SET_TYPE: 0x0101,
        Tag.STATUS: status,
    }
    if error_comment:
        values[Tag.ERROR_COMMENT] = error_comment[:64]
    return Command.build(values)


def unanswered_comment(problems: Mapping[str, str], *, partial: bool = True) -> str | None:
    """ "partial: no answer from pacs-b (timed out)", short enough for an Error Comment;
    when no backend answered at all (`partial` false), "pacs-b: association rejected"."""
    if not problems:
        return None
    if not partial:
        return "; ".join(f"{name}: {why}" for name, why in problems.items())
    names = ", ".join(f"{name} ({why})" for name, why in problems.items())
    return f"partial: no answer from {names}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingMove:
    """A C-MOVE whose destination dicomlb rewrote to itself (via_balancer): where its
    sub-operations go and what the destination must see."""

    message_id: int  # the Message ID dicomlb used toward the backends
    originator_ae: str  # the client's calling AE (also dicomlb's calling AE upstream)
    client_message_id: int  # the client's own Message ID, restored for the destination
    destination: str  # the AE title the client asked for
    backends: frozenset[str]  # AE titles of the backends asked


class MoveRegistry:
    """C-MOVEs in flight via the balancer, correlated by Move Originator AE title and Move
    Originator Message ID (PS3.7 9.3.1.1). Message IDs toward backends come from here, so
    they are unique among the moves in flight whatever association carries them."""

    def __init__(self) -> None:
        self._moves: dict[tuple[str, int], PendingMove] = {}
        self._next = 0

    def register(
        self,
        *,
        originator_ae: str,
        client_message_id: int,
        destination: str,
        backends: Iterable[str],
    ) -> PendingMove:
        for _ in range(0xFFFF):
            self._next = self._next % 0xFFFF + 1
            if (originator_ae, self._next) not in self._moves:
                break
        else:
            raise RuntimeError("65535 C-MOVEs in flight from one AE title")
        move = PendingMove(
            message_id=self._next,
            originator_ae=originator_ae,
            client_message_id=client_message_id,
            destination=destination,
            backends=frozenset(backends),
        )
        self._moves[(originator_ae, self._next)] = move
        return move

    def done(self, move: PendingMove) -> None:
        self._moves.pop((move.originator_ae, move.message_id), None)

    def match(self, command: Command, calling_ae: str) -> PendingMove | None:
        """The move a C-STORE from `calling_ae` is a sub-operation of, if any."""
        message_id = command.us(Tag.MOVE_ORIGINATOR_MESSAGE_ID)
        originator = command.text(Tag.MOVE_ORIGINATOR_AE_TITLE)
        if message_id is None or originator is None:
            return None
        move = self._moves.get((originator, message_id))
        if move is None or (move.backends and calling_ae not in move.backends):
            return None
        return move

    def __len__(self) -> int:
        return len(self._moves)


# ------------------------------------------------------------------ storage commitment


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentRequest:
    """What dicomlb reads of an N-ACTION-RQ's Action Information (PS3.4 J.3.2.1)."""

    transaction_uid: str
    instances: tuple[str, ...]  # Referenced SOP Sequence > Referenced SOP Instance UID


def commitment_request(data: bytes | memoryview, transfer_syntax: str) -> CommitmentRequest:
    """The Transaction UID and referenced instances of a storage commitment data set (an
    N-ACTION's Action Information or an N-EVENT-REPORT's Event Information); raises
    ValueError when it cannot be read."""
    raw = bytes(data)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        raw = zlib.decompress(raw, -15)
    try:
        ds = read_dataset(
            BytesIO(raw),
            transfer_syntax == IMPLICIT_VR_LE,
            transfer_syntax != EXPLICIT_VR_BE,
        )
        transaction = str(ds.get("TransactionUID", "") or "")
        instances = tuple(
            str(item.get("ReferencedSOPInstanceUID", "") or "")
            for item in ds.get("ReferencedSOPSequence", None) or ()
        )
    except Exception as err:  # pydicom raises many kinds on garbage
        raise ValueError(f"unreadable storage commitment data set: {err}") from None
    if not transaction:  # PS3.4 J.3.2.1: Transaction UID is required (1/1)
        raise ValueError("storage commitment data set without Transaction UID")
    return CommitmentRequest(transaction_uid=transaction, instances=instances)


def commitment_holder(
    instances: Iterable[str], holders: Mapping[str, str]
) -> tuple[str | None, dict[str, int]]:
    """The backend to send a storage commitment request to: the one that received most of
    its instances (first seen wins a tie), and how many each backend holds. `holders` maps
    the instances dicomlb knows of to their backend. None when no instance is known.

    The request is not split: one Transaction UID must get one N-EVENT-REPORT (PS3.4
    J.3.3), and the chosen backend reports the instances it lacks in the Failed SOP
    Sequence, so the requester learns they are not committed and can retry.
    """
    counts: dict[str, int] = {}
    for uid in instances:
        backend = holders.get(uid)
        if backend is not None:
            counts[backend] = counts.get(backend, 0) + 1
    if not counts:
        return None, counts
    return max(counts, key=lambda b: counts[b]), counts


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingCommitment:
    """A storage commitment request forwarded to a backend, awaiting its N-EVENT-REPORT."""

    transaction_uid: str
    requester_ae: str  # the client's calling AE: where the report goes (dicom_nodes)
    backend: str


class CommitmentRegistry:
    """Storage commitment transactions forwarded, by Transaction UID, until the backend's
    N-EVENT-REPORT comes back through dicomlb. A report may come long after, on another
    association (PS3.4 J.3.3), so entries do not expire by time; the oldest go beyond `limit`."""

    def __init__(self, limit: int = 10_000) -> None:
        self._pending: dict[str, PendingCommitment] = {}
        self.limit = limit

    def register(self, *, transaction_uid: str, requester_ae: str, backend: str) -> None:
        self._pending.pop(transaction_uid, None)
        self._pending[transaction_uid] = PendingCommitment(
            transaction_uid=transaction_uid, requester_ae=requester_ae, backend=backend
        )
        while len(self._pending) > self.limit:
            del self._pending[next(iter(self._pending))]

    def take(self, transaction_uid: str) -> PendingCommitment | None:
        """The transaction a report is about, forgotten once taken."""
        return self._pending.pop(transaction_uid, None)

    def __len__(self) -> int:
        return len(self._pending)
