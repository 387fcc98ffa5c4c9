"""HTTP/1.x sans-IO core: httptools (llhttp) callbacks turned into events; no I/O, no clock.

One reader per direction and connection, the same surface as the DICOM cores::

    reader = RequestReader(max_head_size=65536)
    for event in reader.receive_data(data):   # Request, Data, EndOfMessage, Upgrade
        ...
    reader.receive_eof()

    responses = ResponseReader()
    responses.expect(b"GET", decode=False)    # before each request is sent
    responses.receive_data(data)              # Response (1xx first), Data, EndOfMessage

A malformed message raises `RemoteProtocolError` with `status_hint` (400, 413, 414, 431,
501, 505 for a request; 502 for a response) and leaves the reader in ERROR.

A request's target comes out normalised (`paths.normalize_target`: the one path routes,
middlewares, logs and the backend see); one that cannot be is refused with 400. RFC 9112 /
9110 rules a request must keep: HTTP/1.0 or 1.1 only (505), exactly one Host in HTTP/1.1
and at most one in 1.0 (400), fields named in Connection removed (never Host; naming
Content-Length or Transfer-Encoding there is refused); after a request that ends the
connection (`Connection: close`, HTTP/1.0 without keep-alive) the reader is CLOSED and what
the client sends behind it is ignored.

Bodies come out decoded (chunk framing removed, RFC 9112 7.1); `chunk()` / `last_chunk()`
frame them again for relaying. Heads come out as ordered (name, value) pairs with names in
their original case, and `serialize_request` / `serialize_response` write them back, so a
relayed head keeps its fields, order and case. A response read with `decode=False` has no
Data events: llhttp only frames it (no Python call per field or body piece), for a caller
that relays the bytes it fed; its fields are read from the head's bytes when asked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

from dicomlb.http.paths import EncodedSlashes, PathError, normalize_target, plain_target

__all__ = [
    "Data",
    "EndOfMessage",
    "Event",
    "Headers",
    "ReaderState",
    "RemoteProtocolError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "Upgrade",
    "can_discard",
    "chunk",
    "close_connection",
    "forward_head",
    "head_fields",
    "header",
    "last_chunk",
    "serialize_request",
    "serialize_response",
]

Headers = tuple[tuple[bytes, bytes], ...]

# RFC 9110 15: reason phrases for the statuses dicomlb writes itself.
REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class RemoteProtocolError(Exception):
    """The peer broke HTTP/1.1; `status_hint` is the status to answer a client with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class ReaderState(enum.Enum):
    IDLE = "idle"  # between messages
    HEAD = "head"  # inside a head
    BODY = "body"  # inside a body
    UPGRADED = "upgraded"  # the connection is a tunnel now; bytes are not HTTP
    CLOSED = "closed"  # the last request asked to close the connection; later bytes ignored
    ERROR = "error"


# The states as module globals for the per-message paths: an Enum member read from its class
# goes through EnumType.__getattr__ (~130 ns), a global costs ~15.
_IDLE = ReaderState.IDLE
_HEAD = ReaderState.HEAD
_BODY = ReaderState.BODY
_UPGRADED = ReaderState.UPGRADED
_CLOSED = ReaderState.CLOSED
_ERROR = ReaderState.ERROR


# Request and Response are not frozen, and the readers make them with positional arguments:
# one of each is made per proxied request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs 1.2 µs against 0.5, keyword arguments to a class
# 0.55 against 0.2. Nothing assigns to them after the reader made them.
@dataclass(slots=True)
class Request:
    """A request head. `raw` is the head exactly as the client sent it, when it came whole
    at the start of one read (None otherwise): forwarded as is when nothing rewrites the
    head (`forward_head`)."""

    method: bytes
    target: bytes  # normalised path (paths.normalize_target) and the query as it came
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers  # without the fields named in Connection
    keep_alive: bool  # the client allows another request on this connection
    chunked: bool
    content_length: int | None
    upgrade: bool  # Upgrade (or CONNECT): after the head the connection may become a tunnel
    expect_continue: bool
    raw: bytes | None = field(default=None, compare=False)


@dataclass(slots=True)
class Response:
    """A response head (1xx informational heads are Responses too, with no body events).

    `head` is the head as the backend sent it; its fields, reason and version are read from
    it when asked: a response relayed as it came needs none of them, and most are
    keep-alive, where llhttp's own framing already tells that the body is not
    close-delimited."""

    status: int
    head: bytes
    keep_alive: bool
    bodyless: bool  # no body whatever the head says: 1xx, 204, 304, an answer to HEAD
    close_delimited: bool  # the body ends when the backend closes (RFC 9112 6.3 item 8)
    upgrade: bool  # 101 Switching Protocols
    _headers: Headers | None = field(default=None, compare=False, repr=False)

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = head_fields(self.head)
        return headers

    @property
    def version(self) -> bytes:
        return self.head[5:8]  # llhttp accepted the status line: "HTTP/x.y NNN ..."

    @property
    def reason(self) -> bytes:
        return self.head[13 : self.head.index(b"\r\n")]

    @property
    def chunked(self) -> bool:
        """The body comes in chunks (relaying it decoded needs framing again)."""
        return not self.bodyless and _framing(self.headers)[0]

    @property
    def content_length(self) -> int | None:
        return _framing(self.headers)[1]


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a body, decoded (no chunk framing)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfMessage:
    """The end of a message's body; chunked trailers, if any."""

    trailers: Headers = ()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The head before this was the last HTTP on the connection: `data` (maybe empty) are the
    first tunnel bytes; every later byte belongs to the tunnel too."""

    data: bytes


Event = Request | Response | Data | EndOfMessage | Upgrade

_END = EndOfMessage()


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def head_fields(head: bytes) -> Headers:
    """The fields of a head llhttp accepted: its lines end in CRLF (bare LF and CR refused),
    none is folded (obs-fold refused), every one has a colon after a token name. A value
    comes without the whitespace before it, as llhttp gives it (whitespace after it is
    kept, so a head written again from the fields is the head that came)."""
    return tuple(
        (name, value.lstrip(b" \t"))
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:-2])
    )


def _framing(headers: Headers) -> tuple[bool, int | None, bool, bytes | None]:
    """(chunked, content length, has transfer-encoding, first Expect value) from `headers`,
    in one pass over the fields."""
    chunked = False
    length: int | None = None
    transfer = False
    expect: bytes | None = None
    for key, value in headers:
        size = len(key)  # compare lengths first: most fields are none of these
        if size == 14 and key.lower() == b"content-length":
            length = int(value)  # llhttp already refused non-digits and conflicting values
        elif size == 17 and key.lower() == b"transfer-encoding":
            transfer = True
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif size == 6 and expect is None and key.lower() == b"expect":
            expect = value
    return chunked, length, transfer, expect


def _request_fields(
    headers: Headers,
) -> tuple[bool, int | None, bool, bytes | None, int, bytes | None, bool]:
    """`_framing`'s facts for a request, and the number of Host fields, the Connection
    values (joined) and whether a Keep-Alive field is there, in one pass over the fields."""
    chunked = False
    length: int | None = None
    transfer = False
    expect: bytes | None = None
    hosts = 0
    connection: bytes | None = None
    keep_alive_field = False
    for key, value in headers:
        size = len(key)  # compare lengths first: most fields are none of these
        if size == 4 and key.lower() == b"host":
            hosts += 1
        elif size == 10:
            lower = key.lower()
            if lower == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif lower == b"keep-alive":
                keep_alive_field = True
        elif size == 14 and key.lower() == b"content-length":
            length = int(value)  # llhttp already refused non-digits and conflicting values
        elif size == 17 and key.lower() == b"transfer-encoding":
            transfer = True
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif size == 6 and expect is None and key.lower() == b"expect":
            expect = value
    return chunked, length, transfer, expect, hosts, connection, keep_alive_field


# Connection options that name no field to remove: `upgrade` keeps the Upgrade field a
# tunnel needs, Host is never removed (RFC 9110 7.6.1 lets a client name only hop-by-hop
# fields; Host is end to end).
_KEPT_OPTIONS = frozenset((b"close", b"upgrade", b"host", b"connection", b""))
# Removing these would change where the body ends for the backend but not for dicomlb.
_FRAMING_FIELDS = frozenset((b"content-length", b"transfer-encoding"))
_COMMON_CONNECTION = frozenset((b"keep-alive", b"close", b"upgrade"))


def _hop_by_hop(connection: bytes) -> frozenset[bytes]:
    """The field names (lower case) the Connection values name, to be removed before the
    request goes anywhere. Raises RemoteProtocolError when they name a framing field."""
    names = frozenset(option.strip().lower() for option in connection.split(b","))
    if names & _FRAMING_FIELDS:
        raise RemoteProtocolError("Connection names Content-Length or Transfer-Encoding")
    return names - _KEPT_OPTIONS


class _StrayResponse(Exception):
    """A response began after a response body in the same feed: nothing asked for it."""


class _LastRequest(Exception):
    """A request that ends the connection is complete: stop parsing what follows it."""


class _Reader:
    """What the request and response readers share: callbacks → events, head size bound."""

    def __init__(self, max_head_size: int) -> None:
        self.max_head_size = max_head_size
        self.state = _IDLE
        self._events: list[Event] = []
        # Fields llhttp reported through on_header: a request head's, then trailers.
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_fed = 0  # bytes fed while a head was incomplete

    # httptools callbacks (a reader's parser calls on_header / on_body only when its protocol
    # has them: these two are given that name where they are wanted) ----------------------

    def field_received(self, name: bytes, value: bytes) -> None:
        # Called once per field: keep it to an append. The head size is checked when the
        # head completes.
        self._headers.append((name, value))

    def body_received(self, body: bytes) -> None:
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if self._headers:
            self._events.append(EndOfMessage(trailers=tuple(self._headers)))
            self._headers = []
        else:
            self._events.append(_END)
        self.state = _IDLE

    # feeding -------------------------------------------------------------------------------

    # (The readers feed their parsers themselves, inline: a call level less per read. What
    # is not the common case is here.)

    def _unread(self, data: bytes) -> list[Event]:
        """A feed in a state where the parser is not fed: ERROR, UPGRADED or CLOSED."""
        state = self.state
        if state is _ERROR:
            raise RemoteProtocolError("the connection already failed", status_hint=400)
        if state is _UPGRADED:
            return [Upgrade(data)] if data else []
        return []  # CLOSED (RFC 9112 9.6: nothing after a request with close is read)

    def _stopped(self, err: Exception, data: bytes, events: list[Event]) -> list[Event]:
        """The parser stopped on `err` while fed `data`: the events before it, or raises."""
        if isinstance(err, httptools.HttpParserUpgrade):
            self.state = _UPGRADED
            events.append(Upgrade(data[err.args[0] :]))
            return events
        self.state = _ERROR
        if isinstance(err, RemoteProtocolError):
            raise err
        if isinstance(err, httptools.HttpParserCallbackError):
            cause = err.__context__
            if isinstance(cause, _StrayResponse):
                return events  # the responses before it are whole; the connection is not
            if isinstance(cause, _LastRequest):
                self.state = _CLOSED
                return events
            if isinstance(cause, RemoteProtocolError):
                raise cause from None
            raise RemoteProtocolError(f"malformed message ({cause or err})") from None
        if isinstance(err, httptools.HttpParserError):
            raise self._parse_error(err) from None
        raise err

    def _head_pending(self, data: bytes) -> None:
        """Part of a head is buffered inside llhttp after `data`: bound it by what was fed
        since the message began (a single huge header never reaches on_header until
        complete)."""
        self._head_fed += len(data)
        if self._head_fed > self.max_head_size:
            self.state = _ERROR
            raise self._too_large()

    def _parse_error(self, err: Exception) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed message ({err})")

    def _too_large(self) -> RemoteProtocolError:
        return RemoteProtocolError(f"head larger than {self.max_head_size} bytes", 431)


class RequestReader(_Reader):
    """The server side of a connection: client bytes in, request events out (pipelined
    requests come out one after another)."""

    # (Methods of their own rather than the base's aliased: a class compiled with mypyc does
    # not bind a method assigned as a class attribute.)
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def __init__(
        self, *, max_head_size: int = 65536, slashes: EncodedSlashes = EncodedSlashes.REJECT
    ) -> None:
        super().__init__(max_head_size)
        self.slashes = slashes
        self._url = b""
        self._last = False  # the request being read ends the connection
        self._parser = httptools.HttpRequestParser(self)
        self._fed: bytes | None = None  # this feed, while a message may begin at its start
        self._raw: bytes | None = None  # the bytes the message in progress began with
        self._check_size = False  # a head completed by this feed may exceed max_head_size

    def on_message_begin(self) -> None:
        # The base's fields set here, not through super(): one call less per request.
        self.state = _HEAD
        self._headers = []
        self._head_fed = 0
        self._url = b""
        # Only the first message begun in a feed that started between messages can start
        # at byte 0 of it (llhttp gives no offsets).
        self._raw = self._fed
        self._fed = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.max_head_size:
            raise RemoteProtocolError(
                f"request target longer than {self.max_head_size} bytes", status_hint=414
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        # The head's fields (later on_header calls are trailers).
        headers = tuple(self._headers)
        self._headers = []
        if self._check_size and (sum(len(n) + len(v) + 4 for n, v in headers) > self.max_head_size):
            raise RemoteProtocolError(
                f"request head larger than {self.max_head_size} bytes", status_hint=431
            )
        chunked, length, transfer, expect, hosts, connection, keep_alive_field = _request_fields(
            headers
        )
        method = parser.get_method()
        raw = self._raw
        if raw is not None:
            # The head, when the read the message began with holds it whole from its start
            # (llhttp skips empty lines before a request line, and gives no offsets). llhttp
            # refuses bare LF line ends (lenient parsing is opt-in through
            # `set_dangerous_leniencies`, never used here), so the head's lines all end in
            # CRLF and the first empty line ends it (RFC 9112 2.1).
            self._raw = None
            end = raw.find(b"\r\n\r\n") + 4
            if end < 4 or not raw.startswith(method):
                raw = None
            elif end != len(raw):
                raw = raw[:end]
        if raw is not None:  # the request line ends in "HTTP/x.y" (get_http_version formats)
            line = raw.find(b"\r\n")
            version = raw[line - 3 : line]
        else:
            version = parser.get_http_version().encode()
        if version != b"1.1" and version != b"1.0":
            # llhttp reads HTTP/0.9 and 2.0 request lines (other versions it refuses, 400);
            # relayed, they would leave the backend connection in another protocol.
            raise RemoteProtocolError(f"HTTP/{version.decode()} is not supported", 505)
        if hosts != 1 and (hosts or version == b"1.1"):
            # RFC 9112 3.2: no Host in HTTP/1.1, or more than one in any version
            raise RemoteProtocolError(f"{hosts} Host fields; write exactly one")
        if transfer and not chunked:
            # RFC 9112 6.3 item 4: a request with a non-chunked final coding has no length.
            raise RemoteProtocolError("transfer-encoding without chunked", status_hint=400)
        if connection is not None and (
            keep_alive_field
            or (connection != b"keep-alive" and connection.lower() not in _COMMON_CONNECTION)
        ):
            drop = _hop_by_hop(connection)
            if drop:
                kept = tuple(f for f in headers if f[0].lower() not in drop)
                if len(kept) != len(headers):
                    headers = kept
                    raw = None
        target = self._url
        if plain_target(target) is None:  # most targets need nothing done
            try:
                target = normalize_target(target, slashes=self.slashes)
            except PathError as err:
                raise RemoteProtocolError(str(err)) from None
            if target != self._url:
                raw = None
        keep_alive = parser.should_keep_alive()
        upgrade = parser.should_upgrade() or method == b"CONNECT"
        self._last = not keep_alive and not upgrade
        self.state = _BODY
        self._events.append(
            Request(
                method,
                target,
                version,
                headers,
                keep_alive,
                chunked,
                length,
                upgrade,
                expect is not None and expect.lower() == b"100-continue",
                raw,
            )
        )

    def on_message_complete(self) -> None:
        # The base's, written out: one call less per request.
        if self._headers:
            self._events.append(EndOfMessage(trailers=tuple(self._headers)))
            self._headers = []
        else:
            self._events.append(_END)
        self.state = _IDLE
        if self._last:
            raise _LastRequest  # stops llhttp, which would refuse the bytes behind it

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns the complete events they finish."""
        state = self.state
        if state is _IDLE:
            self._fed = data
        elif state is _HEAD or state is _BODY:
            self._fed = None
        else:
            return self._unread(data)
        # A head that completes in this feed is at most what was fed of it before plus
        # `data`: only when that could pass the limit are its fields counted.
        self._check_size = self._head_fed + len(data) > self.max_head_size
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except Exception as err:  # (sorted out there; none is caught for nothing)
            return self._stopped(err, data, events)
        if self.state is _HEAD:
            self._head_pending(data)
        return events

    def receive_eof(self) -> list[Event]:
        """The client closed its side. Mid-message that is an error; between messages it
        is the ordinary end of the connection."""
        if self.state is _HEAD or self.state is _BODY:
            self.state = _ERROR
            raise RemoteProtocolError("the client closed the connection mid-request")
        return []


class ResponseReader(_Reader):
    """The client side of a backend connection: backend bytes in, response events out.

    Call `expect(method, decode=...)` before each request is sent: a response to HEAD has no
    body whatever its Content-Length says (RFC 9110 9.3.2), which llhttp cannot be told; with
    `decode=False` the body and trailers give no events (the caller relays what it fed).
    """

    def __init__(self, *, max_head_size: int = 65536) -> None:
        super().__init__(max_head_size)
        # One parser per way of reading, each used between messages only. This reader has
        # no on_header / on_body, so its own parser calls no Python per field or body
        # piece; the decoding one calls them through `_Decoding`.
        self._framer = httptools.HttpResponseParser(self)
        self._decoder = httptools.HttpResponseParser(_Decoding(self))
        self._decode = True
        self._parser = self._decoder
        self._head_request = False
        self._close_delimited = False
        self._pending = b""  # bytes after a HEAD response's head, for the next response
        # llhttp gives no offsets: a head is found in the bytes fed, from where it began.
        self._data = b""  # the bytes being fed
        self._begin: int | None = 0  # where in them the next response begins (None: unknown)
        self._head_start = 0  # where in them the head in progress began
        self._partial = b""  # that head's bytes from earlier feeds

    def expect(self, method: bytes, *, decode: bool = True) -> None:
        """The next response answers a request with `method`; `decode`: give its body as
        Data events and its trailers (else only Response and EndOfMessage)."""
        self._head_request = method == b"HEAD"
        if decode is not self._decode and self.state is _IDLE:
            self._decode = decode
            self._parser = self._decoder if decode else self._framer

    def _restart_parser(self) -> None:
        """A fresh parser for the way of reading in use (the one in use is mid-message)."""
        if self._decode:
            self._parser = self._decoder = httptools.HttpResponseParser(_Decoding(self))
        else:
            self._parser = self._framer = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        begin = self._begin
        if begin is None:
            raise _StrayResponse
        # The base's fields set here, not through super(): one call less per response.
        self.state = _HEAD
        self._head_fed = 0
        self._head_start = begin

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        # The head llhttp has just read whole, from the bytes fed; the next response (after
        # a bodyless one) begins right after it.
        data = self._data
        partial = self._partial
        if partial:
            self._partial = b""
            data = partial + data
            start = 0
        else:
            start = self._head_start
        if not data.startswith(b"HTTP/", start):
            while data[start] in b"\r\n":  # llhttp skips empty lines before a status line
                start += 1
        # llhttp refuses bare CR and LF: the head's first empty line ends it.
        end = data.find(b"\r\n\r\n", start) + 4
        if end - start > self.max_head_size:
            raise self._too_large()
        self._begin = end - len(partial)
        head = data[start:end] if start or end != len(data) else data
        if self._headers:  # (the decoder's on_header: the head's fields, read from `head`)
            self._headers = []
        bodyless = status < 200 or status == 204 or status == 304 or self._head_request
        keep_alive = parser.should_keep_alive()
        if keep_alive or bodyless:
            # llhttp keeps a connection alive only when the body does not need the EOF
            # (llhttp_message_needs_eof): no need to read the framing fields here.
            close_delimited = False
        else:
            chunked, length, _, _ = _framing(head_fields(head))
            close_delimited = not chunked and length is None
        if not bodyless:
            self._begin = None  # where the body ends is llhttp's business
        self._close_delimited = close_delimited
        self.state = _BODY
        self._events.append(
            Response(status, head, keep_alive, bodyless, close_delimited, status == 101)
        )

    def _feed(self, data: bytes) -> list[Event]:
        state = self.state
        if state is _IDLE:
            self._begin = 0
        elif state is _BODY:
            self._begin = None
        elif state is not _HEAD:
            return self._unread(data)
        self._data = data
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except Exception as err:  # (sorted out there; none is caught for nothing)
            events = self._stopped(err, data, events)
        else:
            if self.state is _HEAD:
                self._head_pending(data)
        if self.state is _HEAD:
            self._partial += data[self._head_start :]
            self._head_start = 0
        self._data = b""
        return events

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the backend; returns the complete events they finish."""
        if not self._head_request or self.state in (_UPGRADED, _ERROR):
            return self._feed(data)
        return self._receive_head_response(data)

    def _receive_head_response(self, data: bytes) -> list[Event]:
        # Feed llhttp only up to the end of each head, end the message ourselves, and start
        # a fresh parser: llhttp would otherwise read the Content-Length bytes as a body.
        buffer = self._pending + data
        self._pending = b""
        events: list[Event] = []
        while buffer and self._head_request:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_head_size:
                    self.state = _ERROR
                    raise RemoteProtocolError("response head too large", status_hint=502)
                self._pending = buffer
                return events
            head, buffer = buffer[: end + 4], buffer[end + 4 :]
            got = self._feed(head)
            events.extend(got)
            final = next((e for e in got if isinstance(e, Response) and e.status >= 200), None)
            if final is not None:
                if self.state is not _IDLE:  # llhttp waits for a body: end it
                    events.append(_END)
                    self.state = _IDLE
                    self._restart_parser()
                self._head_request = False
        if buffer:
            events.extend(self._feed(buffer))
        return events

    def receive_eof(self) -> list[Event]:
        """The backend closed. Ends a close-delimited body; mid-message it is an error."""
        if self.state is _BODY and self._close_delimited:
            self.state = _IDLE
            self._close_delimited = False
            return [_END]
        if self.state in (_HEAD, _BODY) or self._pending:
            self.state = _ERROR
            raise RemoteProtocolError("the backend closed the connection mid-response", 502)
        return []

    def _parse_error(self, err: Exception) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed response ({err})", status_hint=502)

    def _too_large(self) -> RemoteProtocolError:
        return RemoteProtocolError(f"response head larger than {self.max_head_size} bytes", 502)


class _Decoding:
    """The callbacks of a response parser that decodes: the reader's, and its field and
    body callbacks (fields after the head are trailers; the head's own are read from its
    bytes)."""

    __slots__ = (
        "on_body",
        "on_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
    )

    def __init__(self, reader: ResponseReader) -> None:
        self.on_message_begin = reader.on_message_begin
        self.on_headers_complete = reader.on_headers_complete
        self.on_message_complete = reader.on_message_complete
        self.on_header = reader.field_received
        self.on_body = reader.body_received


def can_discard(request: Request, received: int, limit: int) -> bool:
    """Whether, after an answer that came before the whole request body, the rest of the
    body may be read and dropped so that the connection carries the client's next request:
    the client allows that (keep-alive), the body's length is known and at most `limit`
    bytes of it remain, and the client has begun sending it. A client that asked for
    100-continue and got its final answer before sending anything may never send the body
    (RFC 9110 10.1.1), so the next bytes could be its next request or the body: such a
    connection, and one whose body has no known end, is closed instead (the answer says so,
    RFC 9112 9.6)."""
    length = request.content_length
    if not request.keep_alive or request.chunked or request.upgrade or length is None:
        return False
    if request.expect_continue and received == 0:
        return False
    return length - received <= limit


def close_connection(headers: list[tuple[bytes, bytes]]) -> None:
    """Edit a response's fields to say the connection closes after it (RFC 9112 9.6): the
    Connection and Keep-Alive fields replaced by `Connection: close`."""
    headers[:] = [f for f in headers if f[0].lower() not in _CONNECTION_FIELDS]
    headers.append((b"Connection", b"close"))


_CONNECTION_FIELDS = frozenset((b"connection", b"keep-alive"))


# --- writing --------------------------------------------------------------------------------


def serialize_request(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], version: bytes = b"1.1"
) -> bytes:
    """A request head: request line, fields in the given order and case, blank line."""
    lines = [method, b" ", target, b" HTTP/", version, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def forward_head(request: Request, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The head to send a backend for `request` with `target` and `headers` (as middlewares
    left them): the client's own bytes when both are unchanged and the reader kept them
    (DESIGN.md decision 9), else the head written from the fields."""
    raw = request.raw
    if (
        raw is not None
        and target == request.target
        and (headers is request.headers or tuple(headers) == request.headers)
    ):
        return raw
    return serialize_request(request.method, target, headers, request.version)


def serialize_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    reason: bytes | None = None,
    version: bytes = b"1.1",
) -> bytes:
    """A response head: status line, fields in the given order and case, blank line."""
    if reason is None:
        reason = REASONS.get(status, b"")
    lines = [b"HTTP/", version, b" %d " % status, reason, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> list[bytes]:
    """`data` framed as one chunk (RFC 9112 7.1), as pieces for `writelines`."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def last_chunk(trailers: Headers = ()) -> bytes:
    """The last chunk and trailer section that end a chunked body."""
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalResponse:
    """A response dicomlb writes itself (errors, refusals, 100 Continue)."""

    status: int
    body: bytes = b""
    headers: Headers = field(default=())
    close: bool = False

    def serialize(self) -> bytes:
        fields = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(self.body)),
            *self.headers,
        ]
        if self.close:
            fields.append((b"Connection", b"close"))
        return serialize_response(self.status, fields) + self.body
