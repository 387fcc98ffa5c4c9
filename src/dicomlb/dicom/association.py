"""The PS3.8 upper-layer association as a sans-IO state machine, for either role.

`Association` owns no socket and no clock: the shell feeds it bytes (`receive_data`), tells
it about EOF and timer expiry, and writes what `send` returns. One transition table, keyed by
(state, event type), serves both roles; a move not in it is a protocol error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dicomlb.dicom.errors import LocalProtocolError, RemoteProtocolError
from dicomlb.dicom.pdu import (
    PDU_HEADER_LEN,
    PDV_HEADER_LEN,
    Abort,
    AbortReason,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    PData,
    Pdu,
    PduType,
    PresentationContextResult,
    RejectReason,
    ReleaseReply,
    ReleaseRequest,
    decode_pdu,
    encode,
    pdata_header,
    pdv_header,
    reject,
    split_header,
)

# Non-P-DATA PDUs (an A-ASSOCIATE-RQ with 128 contexts and user identity is a few KB) are
# bounded separately from the negotiated P-DATA maximum.
MAX_CONTROL_PDU = 1 << 20
# With an unlimited peer maximum (0), data still goes out in PDUs of this size.
UNLIMITED_PDU_CHUNK = 1 << 20
# The least Maximum Length dicomlb accepts from a peer (0, unlimited, aside). PS3.8 allows
# any value from 7, and DCMTK sends whatever it is told; below this floor every KiB relayed
# would cost a PDU of its own, so the association is refused instead (A-ASSOCIATE-RJ from a
# client, A-ABORT toward a backend). Its own -pdu option starts at 4096; 1024 leaves room
# for old devices.
MIN_PEER_MAX_PDU = 1024
_PDU_TYPES = frozenset(int(t) for t in PduType)


class Role(enum.Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


class AssocState(enum.Enum):
    """PS3.8 9.2 states (Sta1..Sta13)."""

    STA1 = "idle"
    STA2 = "awaiting A-ASSOCIATE-RQ"
    STA3 = "awaiting local A-ASSOCIATE response"
    STA4 = "awaiting transport connection"
    STA5 = "awaiting A-ASSOCIATE-AC or -RJ"
    STA6 = "association established"
    STA7 = "awaiting A-RELEASE-RP"
    STA8 = "awaiting local A-RELEASE response"
    STA9 = "release collision, requestor: awaiting local A-RELEASE response"
    STA10 = "release collision, acceptor: awaiting A-RELEASE-RP"
    STA11 = "release collision, requestor: awaiting A-RELEASE-RP"
    STA12 = "release collision, acceptor: awaiting local A-RELEASE response"
    STA13 = "awaiting transport close"

    # By identity, in C: Enum's own __hash__ is a Python call, and the transition tables
    # are looked up with a state in the key for every PDU.
    __hash__ = object.__hash__


S = AssocState
# Python 3.11's EnumType.__getattr__ puts every `S.STAn` lookup through a Python-level hook
# (some twenty times a global's cost); the per-PDU paths read these instead.
_STA1, _STA3, _STA6, _STA7, _STA8, _STA13 = S.STA1, S.STA3, S.STA6, S.STA7, S.STA8, S.STA13
_P_DATA_TF = PduType.P_DATA_TF

# (state, event received) -> next state. PS3.8 Table 9-10 action names in comments.
_RECEIVE: dict[tuple[AssocState, type], AssocState] = {
    (S.STA2, AssociateRequest): S.STA3,  # AE-6: indicate A-ASSOCIATE
    (S.STA5, AssociateAccept): S.STA6,  # AE-3: confirm accept
    (S.STA5, AssociateReject): S.STA1,  # AE-4: confirm reject, close transport
    (S.STA6, PData): S.STA6,  # DT-2
    (S.STA7, PData): S.STA7,  # AR-7: data may cross our A-RELEASE-RQ
    (S.STA6, ReleaseRequest): S.STA8,  # AR-2
    (S.STA7, ReleaseReply): S.STA1,  # AR-3: confirm release, close transport
    (S.STA11, ReleaseReply): S.STA1,  # AR-3
    (S.STA10, ReleaseReply): S.STA12,  # AR-10
}
# (state, event sent) -> next state.
_SEND: dict[tuple[AssocState, type], AssocState] = {
    (S.STA4, AssociateRequest): S.STA5,  # AE-2
    (S.STA3, AssociateAccept): S.STA6,  # AE-7
    (S.STA3, AssociateReject): S.STA13,  # AE-8
    (S.STA6, PData): S.STA6,  # DT-1
    (S.STA8, PData): S.STA8,  # AR-7
    (S.STA6, ReleaseRequest): S.STA7,  # AR-1
    (S.STA8, ReleaseReply): S.STA13,  # AR-4
    (S.STA9, ReleaseReply): S.STA11,  # AR-9
    (S.STA12, ReleaseReply): S.STA13,  # AR-4
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The transport closed. `expected` is False when it was not the end of a release or abort."""

    expected: bool


Event = Pdu | ConnectionClosed


def _unexpected(what: str) -> RemoteProtocolError:
    # PS3.8 9.3.8: reason 2 = unexpected PDU
    return RemoteProtocolError(
        what, reply=Abort(source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNEXPECTED_PDU)
    )


class Association:
    """One association's upper-layer protocol state, without I/O.

    `max_pdu` is the largest P-DATA-TF body this side accepts (0: no limit); the peer's
    maximum is learnt from its A-ASSOCIATE and used by `send_data` to fragment. A peer
    maximum below `min_peer_max_pdu` refuses the association.

    After an A-ASSOCIATE-RQ, bytes that follow it stay buffered until it has been answered
    (h11's PAUSED): the acceptor's answer must find the state the request left, even when an
    A-ABORT came in the same read. `receive_data(b"")` after `send` gives what they hold.
    """

    def __init__(
        self, role: Role, *, max_pdu: int, min_peer_max_pdu: int = MIN_PEER_MAX_PDU
    ) -> None:
        self.role = role
        self.max_pdu = max_pdu
        self.min_peer_max_pdu = min_peer_max_pdu
        self.state = S.STA2 if role is Role.ACCEPTOR else S.STA4
        self.peer_max_pdu = 0
        self.request: AssociateRequest | None = None
        self.accepted: dict[int, PresentationContextResult] = {}
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._need = PDU_HEADER_LEN

    # ------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; returns the complete PDUs they finish.

        P-DATA values are memoryviews into `data` (or into a joined buffer), never copied.
        """
        if self._ended():
            return []
        if self._pending:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need or self.state is _STA3:
                self._check_held()
                return []
            data = b"".join(self._pending)
            self._pending.clear()
        view = memoryview(data)
        end = len(data)
        pos = 0
        events: list[Event] = []
        need = PDU_HEADER_LEN
        while end - pos >= PDU_HEADER_LEN and self.state is not _STA3 and not self._ended():
            pdu_type, length = split_header(view[pos : pos + PDU_HEADER_LEN])
            self._check_header(pdu_type, length)
            need = PDU_HEADER_LEN + length
            if end - pos < need:
                break
            body = view[pos + PDU_HEADER_LEN : pos + need]
            pos += need
            need = PDU_HEADER_LEN
            try:
                pdu = decode_pdu(pdu_type, body)
            except RemoteProtocolError:
                self.state = _STA13  # AA-8: the reply is an A-ABORT, then the close
                raise
            event = self._received(pdu)
            if event is not None:
                events.append(event)
        if pos < end and not self._ended():
            rest = data[pos:]
            self._pending = [rest]
            self._pending_len = len(rest)
            self._need = need
            self._check_held()
        else:
            self._pending_len = 0
        return events

    def receive_eof(self) -> list[Event]:
        """The transport closed (the shell's `connection_lost`)."""
        expected = self.state in (S.STA1, S.STA13)
        self.state = S.STA1
        return [ConnectionClosed(expected=expected)]

    def artim_expired(self) -> Abort | None:
        """The ARTIM timer ran out: what to send before closing the transport, if anything."""
        previous, self.state = self.state, S.STA1
        if previous in (S.STA2, S.STA13, S.STA1):
            return None  # AA-2: just close
        return Abort(source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.NOT_SPECIFIED)

    def _ended(self) -> bool:
        # Sta1 after a start in Sta2 / Sta4: the association is over (abort, release,
        # rejection, EOF, ARTIM) and the transport closing; nothing after its last PDU is read.
        return self.state is _STA1

    def _check_held(self) -> None:
        # PS3.8 9.2: until its A-ASSOCIATE-RQ is answered (Sta3) the peer may send only an
        # A-ABORT. What it sends is held unread, up to one control PDU's worth, not more.
        if self.state is S.STA3 and self._pending_len > PDU_HEADER_LEN + MAX_CONTROL_PDU:
            self.state = S.STA13
            raise _unexpected(
                f"{self._pending_len} bytes sent before the A-ASSOCIATE-RQ was answered"
            )

    def _check_header(self, pdu_type: int, length: int) -> None:
        if pdu_type not in _PDU_TYPES:
            self.state = _STA13
            raise RemoteProtocolError(
                f"unrecognized PDU type 0x{pdu_type:02X}",
                reply=Abort(
                    source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.UNRECOGNIZED_PDU
                ),
            )
        limit = self.max_pdu if pdu_type == _P_DATA_TF else MAX_CONTROL_PDU
        if limit and length > limit:
            self.state = _STA13
            raise RemoteProtocolError(
                f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the maximum {limit}",
                reply=Abort(
                    source=AbortSource.SERVICE_PROVIDER, reason=AbortReason.INVALID_PDU_PARAMETER
                ),
            )

    def _received(self, event: Pdu) -> Event | None:
        if self.state is _STA13:
            return None  # AA-6 / AA-7: ignore everything while closing
        if isinstance(event, Abort):
            self.state = _STA1  # AA-3
            return event
        kind = type(event)
        if (self.state, kind) == (_STA7, ReleaseRequest):
            # AR-8: release collision
            self.state = S.STA9 if self.role is Role.REQUESTOR else S.STA10
            return event
        nxt = _RECEIVE.get((self.state, kind))
        if nxt is None:
            error = _unexpected(
                f"unexpected {kind.__name__} in {self.state.name} ({self.state.value})"
            )
            self.state = _STA13
            raise error
        if isinstance(event, PData):
            for pdv in event.pdvs:
                if pdv.context_id not in self.accepted:
                    self.state = _STA13
                    raise RemoteProtocolError(
                        f"P-DATA on presentation context {pdv.context_id}, which was not accepted",
                        reply=Abort(
                            source=AbortSource.SERVICE_PROVIDER,
                            reason=AbortReason.UNEXPECTED_PDU_PARAMETER,
                        ),
                    )
        elif isinstance(event, AssociateRequest):
            self.request = event
            self.peer_max_pdu = event.user_info.max_pdu or 0
            if 0 < self.peer_max_pdu < self.min_peer_max_pdu:
                self.state = nxt  # Sta3: the reply is this side's A-ASSOCIATE-RJ (AE-8)
                raise RemoteProtocolError(
                    f"maximum length {self.peer_max_pdu} is below {self.min_peer_max_pdu}, "
                    "the least dicomlb accepts",
                    reply=reject(RejectReason.NO_REASON),
                )
        elif isinstance(event, AssociateAccept):
            self.peer_max_pdu = event.user_info.max_pdu or 0
            if 0 < self.peer_max_pdu < self.min_peer_max_pdu:
                self.state = _STA13
                raise RemoteProtocolError(
                    f"maximum length {self.peer_max_pdu} is below {self.min_peer_max_pdu}, "
                    "the least dicomlb accepts",
                    # PS3.8 9.3.8: the source is the service user, who refuses the value.
                    reply=Abort(source=AbortSource.SERVICE_USER),
                )
            self._record_accepted(event)
        self.state = nxt
        return event

    # ------------------------------------------------------------ sending

    def send(self, event: Pdu) -> bytes:
        """The bytes for `event`, after checking the current state allows it."""
        if isinstance(event, Abort):
            self.state = S.STA13
            return encode(event)
        nxt = _SEND.get((self.state, type(event)))
        if nxt is None:
            raise LocalProtocolError(
                f"cannot send {type(event).__name__} in {self.state.name} ({self.state.value})"
            )
        if isinstance(event, AssociateAccept):
            self._record_accepted(event)
        elif isinstance(event, AssociateRequest):
            self.request = event
        self.state = nxt
        return encode(event)

    def send_data(
        self, context_id: int, data: bytes | memoryview, *, is_command: bool, is_last: bool
    ) -> list[bytes | memoryview]:
        """Buffers for `transport.writelines`: `data` as PDVs cut to the peer's maximum PDU.

        Only the final piece carries `is_last`, so a message can be streamed in any cuts.
        """
        if self.state not in (_STA6, _STA8):
            raise LocalProtocolError(
                f"cannot send P-DATA in {self.state.name} ({self.state.value}); "
                "wait for the association to be established"
            )
        # The peer's maximum is 0 or at least min_peer_max_pdu (its A-ASSOCIATE said so, or
        # it was refused), so every piece carries data and the loop ends.
        chunk = (self.peer_max_pdu - PDV_HEADER_LEN) if self.peer_max_pdu else UNLIMITED_PDU_CHUNK
        if chunk < 1:
            raise LocalProtocolError(f"peer maximum length {self.peer_max_pdu} cannot carry data")
        view = memoryview(data)
        total = len(view)
        out: list[bytes | memoryview] = []
        pos = 0
        while True:
            piece = view[pos : pos + chunk]
            pos += len(piece)
            last = is_last and pos >= total
            out.append(pdata_header(len(piece) + PDV_HEADER_LEN))
            out.append(pdv_header(context_id, len(piece), is_command=is_command, is_last=last))
            out.append(piece)
            if pos >= total:
                return out

    def _record_accepted(self, event: AssociateAccept) -> None:
        self.accepted = {
            ctx.context_id: ctx for ctx in event.contexts if ctx.result is ContextResult.ACCEPTANCE
        }
