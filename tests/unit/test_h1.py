"""The HTTP/1.x sans-IO core: readers run whole, byte by byte and at every split; errors
carry their status hint; hypothesis round trips and garbage."""

from __future__ import annotations

from collections.abc import Iterable

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.http.h1 import (
    Data,
    EndOfMessage,
    Event,
    ReaderState,
    RemoteProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    Upgrade,
    can_discard,
    chunk,
    close_connection,
    forward_head,
    last_chunk,
    serialize_request,
    serialize_response,
)
from dicomlb.http.paths import EncodedSlashes, PathError, normalize_target


def feed_split(
    reader: RequestReader | ResponseReader, wire: bytes, cuts: Iterable[int]
) -> list[Event]:
    """Feed `wire` in pieces cut at `cuts`; return the events with adjacent Data merged."""
    points = sorted(min(max(c, 0), len(wire)) for c in cuts)
    events: list[Event] = []
    start = 0
    for point in [*points, len(wire)]:
        events += reader.receive_data(wire[start:point])
        start = point
    return merge(events)


def merge(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        elif isinstance(event, Data) and not event.data:
            continue
        else:
            out.append(event)
    return out


def every_split(wire: bytes) -> Iterable[list[int]]:
    yield []
    yield list(range(len(wire)))  # byte by byte
    for i in range(len(wire) + 1):
        yield [i]


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Case: MiXeD\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def test_pipelined_requests_at_every_split() -> None:
    whole = feed_split(RequestReader(), PIPELINE, [])
    kinds = [type(e).__name__ for e in whole]
    assert kinds == [
        "Request",
        "EndOfMessage",
        "Request",
        "Data",
        "EndOfMessage",
        "Request",
        "Data",
        "EndOfMessage",
    ]
    first, post, put = (e for e in whole if isinstance(e, Request))
    assert first.method == b"GET" and first.target == b"/a?x=1"
    assert first.headers == ((b"Host", b"h"), (b"X-Case", b"MiXeD"))  # case and order kept
    assert post.content_length == 5 and not post.chunked
    assert put.chunked
    assert whole[3] == Data(b"hello")
    assert whole[6] == Data(b"abcde")
    assert whole[7] == EndOfMessage(trailers=((b"X-Trailer", b"t"),))
    for cuts in every_split(PIPELINE):
        assert feed_split(RequestReader(), PIPELINE, cuts) == whole


def test_raw_head_kept_only_when_it_can_be_delimited_exactly() -> None:
    head = b"GET /a HTTP/1.1\r\nHost:  h \r\nX-Odd:v\r\n\r\n"
    [req, _] = RequestReader().receive_data(head)
    assert isinstance(req, Request) and req.raw == head
    post = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n"
    [req, *_] = RequestReader().receive_data(post + b"\r\n\r\nbody")
    assert isinstance(req, Request) and req.raw == post  # the body's CRLFs are not the end
    # Only the first head of a feed starts at byte 0; a split head or empty lines before the
    # request line leave `raw` unset (the head is then written from its fields).
    reqs = [e for e in RequestReader().receive_data(head + head) if isinstance(e, Request)]
    assert [r.raw for r in reqs] == [head, None]
    for cut in range(1, len(head)):
        reader = RequestReader()
        assert reader.receive_data(head[:cut]) == []
        [req, _] = reader.receive_data(head[cut:])
        assert isinstance(req, Request) and req.raw is None
    [req, _] = RequestReader().receive_data(b"\r\n" + head)
    assert isinstance(req, Request) and req.raw is None


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\n",
        b"GET / HTTP/1.1\r\nHost: h\n\n",
    ],
)
def test_bare_lf_line_ends_are_refused(wire: bytes) -> None:
    # `raw` relies on it: with CRLF lines only, the first CRLF CRLF ends the head.
    with pytest.raises(RemoteProtocolError) as err:
        RequestReader().receive_data(wire)
    assert err.value.status_hint == 400


def test_forward_head_is_the_clients_bytes_unless_rewritten() -> None:
    head = b"GET /a?q=1 HTTP/1.1\r\nHost:  h \r\nX-Odd:v\r\n\r\n"
    [req, _] = RequestReader().receive_data(head)
    assert isinstance(req, Request)
    assert forward_head(req, req.target, req.headers) == head
    assert forward_head(req, req.target, list(req.headers)) == head  # a copy, unchanged
    assert forward_head(req, b"/b?q=1", req.headers) == (
        b"GET /b?q=1 HTTP/1.1\r\nHost: h \r\nX-Odd: v\r\n\r\n"
    )
    added = [*req.headers, (b"X-Forwarded-For", b"10.0.0.9")]
    assert forward_head(req, req.target, added).endswith(b"X-Forwarded-For: 10.0.0.9\r\n\r\n")
    [split, _] = feed_split(RequestReader(), head, [5])
    assert isinstance(split, Request) and split.raw is None
    assert forward_head(split, split.target, split.headers) == serialize_request(
        b"GET", b"/a?q=1", split.headers
    )


def test_http10_and_keep_alive_flags() -> None:
    [req, _] = RequestReader().receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(req, Request) and req.version == b"1.0" and not req.keep_alive
    [req, _] = RequestReader().receive_data(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert isinstance(req, Request) and not req.keep_alive


def test_expect_continue_flag() -> None:
    [req] = RequestReader().receive_data(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert isinstance(req, Request) and req.expect_continue


def head_of(wire: bytes) -> Request:
    request = RequestReader().receive_data(wire)[0]
    assert isinstance(request, Request)
    return request


@pytest.mark.parametrize(
    ("fields", "received", "discard"),
    [
        (b"Content-Length: 1000\r\n", 0, True),
        (b"Content-Length: 1000\r\n", 500, True),
        (b"Content-Length: 1101\r\n", 0, False),  # more than the limit left
        (b"Content-Length: 1101\r\n", 1, True),
        (b"Transfer-Encoding: chunked\r\n", 10, False),  # no known end
        (b"Content-Length: 100\r\nConnection: close\r\n", 10, False),
        (b"Content-Length: 100\r\nExpect: 100-continue\r\n", 0, False),  # may never come
        (b"Content-Length: 100\r\nExpect: 100-continue\r\n", 1, True),  # it is coming
    ],
)
def test_can_discard(fields: bytes, received: int, discard: bool) -> None:
    request = head_of(b"POST / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
    assert can_discard(request, received, 1100) is discard


def test_can_discard_http10_only_with_keep_alive() -> None:
    wire = b"POST / HTTP/1.0\r\nContent-Length: 10\r\n%s\r\n"
    assert not can_discard(head_of(wire % b""), 0, 100)
    assert can_discard(head_of(wire % b"Connection: keep-alive\r\n"), 0, 100)


def test_close_connection_replaces_the_connection_fields() -> None:
    fields = [
        (b"Content-Length", b"5"),
        (b"connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"WWW-Authenticate", b"Basic"),
    ]
    close_connection(fields)
    assert fields == [
        (b"Content-Length", b"5"),
        (b"WWW-Authenticate", b"Basic"),
        (b"Connection", b"close"),
    ]


def test_upgrade_request_hands_over_the_rest() -> None:
    wire = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW"
    reader = RequestReader()
    events = reader.receive_data(wire)
    assert isinstance(events[0], Request) and events[0].upgrade
    assert events[-1] == Upgrade(b"RAW")
    assert reader.state is ReaderState.UPGRADED
    assert reader.receive_data(b"more") == [Upgrade(b"more")]


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 9000 + b"\r\n", 431),
    ],
)
def test_malformed_requests_carry_a_status(wire: bytes, status: int) -> None:
    reader = RequestReader()
    with pytest.raises(RemoteProtocolError) as caught:
        for i in range(0, len(wire), 4096):
            reader.receive_data(wire[i : i + 4096])
    assert caught.value.status_hint == status
    assert reader.state is ReaderState.ERROR
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),  # RFC 9112 3.2: no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Transfer-Encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET /a/../../x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /%2Fsecret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_requests_rfc_9112_refuses(wire: bytes, status: int) -> None:
    for cuts in ([], list(range(len(wire)))):
        reader = RequestReader()
        with pytest.raises(RemoteProtocolError) as caught:
            feed_split(reader, wire, cuts)
        assert caught.value.status_hint == status
        assert reader.state is ReaderState.ERROR


def test_http10_without_host_is_fine() -> None:
    [req, _] = RequestReader().receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(req, Request) and req.version == b"1.0"


def test_fields_named_in_connection_are_removed_but_never_host() -> None:
    wire = (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Secret, host, Keep-Alive\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Other: 2\r\n\r\n"
    )
    for cuts in every_split(wire):
        [req, _] = feed_split(RequestReader(), wire, cuts)
        assert isinstance(req, Request) and req.raw is None  # the head is written again
        assert req.headers == (
            (b"Host", b"h"),
            (b"Connection", b"X-Secret, host, Keep-Alive"),
            (b"X-Other", b"2"),
        )
    # `Connection: keep-alive` names the Keep-Alive field too; `upgrade` keeps Upgrade
    [req, _] = RequestReader().receive_data(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n"
    )
    assert isinstance(req, Request) and [n for n, _ in req.headers] == [b"Host", b"Connection"]
    wire = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    [req, *_] = RequestReader().receive_data(wire)
    assert isinstance(req, Request) and req.raw == wire and len(req.headers) == 3


def test_the_pipeline_behind_connection_close_is_ignored() -> None:
    # RFC 9112 9.6: a request with close is the last the server reads on the connection.
    first = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    rest = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\nGARBAGE"
    for wire in (first + rest, b"GET /a HTTP/1.0\r\n\r\n" + rest):
        for cuts in every_split(wire):
            reader = RequestReader()
            events = feed_split(reader, wire, cuts)
            assert [type(e) for e in events] == [Request, EndOfMessage]
            assert isinstance(events[0], Request) and events[0].target == b"/a"
            assert reader.state is ReaderState.CLOSED
            assert reader.receive_data(b"GET /c HTTP/1.1\r\n\r\n") == []
            assert reader.receive_eof() == []
    # a body is read whole first
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
    events = RequestReader().receive_data(post + rest)
    assert [type(e) for e in events] == [Request, Data, EndOfMessage]


def test_the_target_comes_normalised() -> None:
    wire = b"GET /a/%2e%2e//b/./c%7e?x=/../%2e HTTP/1.1\r\nHost: h\r\n\r\n"
    for cuts in every_split(wire):
        [req, _] = feed_split(RequestReader(), wire, cuts)
        assert isinstance(req, Request) and req.target == b"/b/c~?x=/../%2e"
        assert req.raw is None  # the client's head would send the backend another path
        assert forward_head(req, req.target, req.headers).startswith(b"GET /b/c~?x=/../%2e ")
    slashes = RequestReader(slashes=EncodedSlashes.PASS)
    [req, _] = slashes.receive_data(b"GET /a%2fb HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(req, Request) and req.target == b"/a%2Fb"


def test_head_bound_applies_while_the_head_trickles_in() -> None:
    reader = RequestReader(max_head_size=1024)
    reader.receive_data(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(RemoteProtocolError) as caught:
        for _ in range(2000):
            reader.receive_data(b"a")
    assert caught.value.status_hint == 431


def test_eof_mid_request_is_an_error_between_requests_is_not() -> None:
    reader = RequestReader()
    reader.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert reader.receive_eof() == []
    reader = RequestReader()
    reader.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
    with pytest.raises(RemoteProtocolError):
        reader.receive_eof()


RESPONSES = (
    b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "x"\r\n\r\nabc'
)


def test_responses_at_every_split() -> None:
    whole = feed_split(ResponseReader(), RESPONSES, [])
    assert [type(e).__name__ for e in whole] == [
        "Response",
        "EndOfMessage",
        "Response",
        "Data",
        "EndOfMessage",
    ]
    assert isinstance(whole[0], Response) and whole[0].status == 100
    for cuts in every_split(RESPONSES):
        assert feed_split(ResponseReader(), RESPONSES, cuts) == whole


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(status: int) -> None:
    wire = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    events = ResponseReader().receive_data(wire)
    assert [type(e) for e in events] == [Response, EndOfMessage]


@pytest.mark.parametrize(
    ("method", "head", "facts"),
    [
        (b"GET", b"200 OK\r\nContent-Length: 3", (True, False, 3, False)),
        (b"GET", b"200 OK\r\nTransfer-Encoding: gzip, chunked", (True, True, None, False)),
        (b"GET", b"200 OK\r\nConnection: close\r\nContent-Length: 3", (False, False, 3, False)),
        (
            b"GET",
            b"200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked",
            (False, True, None, False),
        ),
        (b"GET", b"200 OK\r\nServer: x", (False, False, None, True)),
        (b"GET", b"304 Not Modified\r\nTransfer-Encoding: chunked", (True, False, None, False)),
        (b"HEAD", b"200 OK\r\nTransfer-Encoding: chunked", (True, False, None, False)),
    ],
)
def test_response_framing_facts(
    method: bytes, head: bytes, facts: tuple[bool, bool, int | None, bool]
) -> None:
    reader = ResponseReader()
    reader.expect(method)
    [response, *_] = reader.receive_data(b"HTTP/1.1 " + head + b"\r\n\r\n")
    assert isinstance(response, Response)
    got = (response.keep_alive, response.chunked, response.content_length)
    assert (*got, response.close_delimited) == facts


def test_head_response_has_no_body_whatever_its_length() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    for cuts in every_split(wire):
        reader = ResponseReader()
        reader.expect(b"HEAD")
        events = feed_split(reader, wire, cuts)
        assert [type(e) for e in events] == [Response, EndOfMessage]
        reader.expect(b"GET")  # the next response on the connection parses normally
        assert [
            type(e) for e in reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
        ] == [Response, Data, EndOfMessage]


KEEP_ALIVE_RESPONSES = (  # (method asked, response) in turn on one backend connection
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nAAAAA\r\n0\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\nT: 1\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
)


@pytest.mark.parametrize("index", range(len(KEEP_ALIVE_RESPONSES)))
def test_keep_alive_responses_at_every_two_splits(index: int) -> None:
    # Each response after the one before on the same reader, its bytes cut at every pair of
    # points: the same events, an end for each, and the reader ready for the next.
    def run(cuts: list[int]) -> list[Event]:
        reader = ResponseReader()
        for method, wire in KEEP_ALIVE_RESPONSES[:index]:
            reader.expect(method)
            reader.receive_data(wire)
        method, wire = KEEP_ALIVE_RESPONSES[index]
        reader.expect(method)
        events = feed_split(reader, wire, cuts)
        assert reader.state is ReaderState.IDLE
        return events

    whole = run([])
    assert isinstance(whole[0], Response) and isinstance(whole[-1], EndOfMessage)
    wire = KEEP_ALIVE_RESPONSES[index][1]
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            assert run([i, j]) == whole


def undecoded(events: list[Event]) -> list[Event]:
    """What a reader with decode=False gives for `events` read with decode=True."""
    return [
        EndOfMessage() if isinstance(e, EndOfMessage) else e
        for e in events
        if not isinstance(e, Data)
    ]


@pytest.mark.parametrize("index", range(len(KEEP_ALIVE_RESPONSES)))
def test_responses_read_without_decoding_give_heads_and_ends_only(index: int) -> None:
    # The same responses, one after another on one reader, each read with decode=False at
    # every split: the decoded reading's events without Data and trailers.
    def run(decode: bool, cuts: list[int]) -> list[Event]:
        reader = ResponseReader()
        events: list[Event] = []
        for i, (method, wire) in enumerate(KEEP_ALIVE_RESPONSES[: index + 1]):
            reader.expect(method, decode=decode)
            events = feed_split(reader, wire, cuts if i == index else [])
            assert reader.state is ReaderState.IDLE
        return events

    expected = undecoded(run(True, []))
    assert not any(isinstance(e, Data) for e in expected) and expected
    for cuts in every_split(KEEP_ALIVE_RESPONSES[index][1]):
        assert run(False, cuts) == expected
    reader = ResponseReader()
    reader.expect(b"GET", decode=False)
    assert feed_split(reader, RESPONSES, [30]) == undecoded(
        feed_split(ResponseReader(), RESPONSES, [])
    )


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.text(alphabet="abcXYZ-_!#$%&'*+.^`|~09", min_size=1, max_size=8),
            st.binary(max_size=12).map(
                lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128)
            ),
        ),
        max_size=6,
    ),
    reason=st.sampled_from([b"OK", b"", b"Very Fine \x80"]),
    cut=st.integers(0, 400),
)
def test_response_fields_read_from_the_head_are_those_llhttp_reports(
    fields: list[tuple[str, bytes]], reason: bytes, cut: int
) -> None:
    head = b"HTTP/1.1 200 " + reason + b"\r\n"
    head += b"".join(n.encode() + b":" + v + b"\r\n" for n, v in fields)
    head += b"Content-Length: 0\r\n\r\n"

    class Fields:
        def __init__(self) -> None:
            self.fields: list[tuple[bytes, bytes]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name, value))

    llhttp = Fields()
    httptools.HttpResponseParser(llhttp).feed_data(head)
    for decode in (True, False):
        reader = ResponseReader()
        reader.expect(b"GET", decode=decode)
        [response, end] = feed_split(reader, head, [cut])
        assert isinstance(response, Response) and response.head == head
        assert response.headers == tuple(llhttp.fields)
        assert (response.version, response.reason) == (b"1.1", reason)
        assert end == EndOfMessage()


@pytest.mark.parametrize("decode", [True, False])
def test_bytes_after_a_response_leave_the_reader_unusable(decode: bool) -> None:
    # One request, one response: a second response in the same read (or a second head
    # after a body) is nothing that was asked for. The first still comes out whole.
    reader = ResponseReader()
    reader.expect(b"GET", decode=decode)
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    events = reader.receive_data(wire + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in events] == [Response, *([Data] if decode else []), EndOfMessage]
    assert reader.state is ReaderState.ERROR
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(wire)


def test_close_delimited_body_ends_at_eof_truncated_one_is_an_error() -> None:
    reader = ResponseReader()
    events = reader.receive_data(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert isinstance(events[0], Response) and events[0].close_delimited
    assert not events[0].keep_alive
    assert reader.receive_eof() == [EndOfMessage()]
    reader = ResponseReader()
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsome")
    with pytest.raises(RemoteProtocolError) as caught:
        reader.receive_eof()
    assert caught.value.status_hint == 502


def test_switching_protocols_then_tunnel() -> None:
    reader = ResponseReader()
    events = reader.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x05hello"
    )
    assert isinstance(events[0], Response) and events[0].upgrade
    assert events[-1] == Upgrade(b"\x81\x05hello")


def test_garbage_response_is_502() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        ResponseReader().receive_data(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert caught.value.status_hint == 502


# --- hypothesis -----------------------------------------------------------------------------


def normalizable(target: bytes) -> bool:
    try:
        normalize_target(target)
    except PathError:
        return False
    return True


tokens = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12
)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
requests = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PROPFIND", b"OPTIONS"]),
    st.text(alphabet="abc/-_.~%20", max_size=30)
    .map(lambda p: ("/" + p).encode())
    .filter(normalizable),
    st.lists(
        st.tuples(tokens, values).filter(
            lambda kv: (
                kv[0].lower()
                not in (
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "upgrade",
                    "expect",
                    "host",
                )
            )
        ),
        max_size=6,
    ),
    st.binary(max_size=200),
    st.booleans(),
)


def wire_of(
    method: bytes, target: bytes, headers: list[tuple[str, str]], body: bytes, chunked: bool
) -> bytes:
    fields = [(b"Host", b"h"), *((k.encode(), v.encode()) for k, v in headers)]
    if chunked:
        fields.append((b"Transfer-Encoding", b"chunked"))
        framed = b"".join(b"".join(chunk(body[i : i + 7])) for i in range(0, len(body), 7))
        return serialize_request(method, target, fields) + framed + last_chunk()
    fields.append((b"Content-Length", b"%d" % len(body)))
    return serialize_request(method, target, fields) + body


@settings(max_examples=300, deadline=None)
@given(
    reqs=st.lists(requests, min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_any_pipeline_survives_any_split(reqs: list, cuts: list[int]) -> None:
    wire = b"".join(wire_of(*r) for r in reqs)
    events = feed_split(RequestReader(), wire, cuts)
    heads = [e for e in events if isinstance(e, Request)]
    assert [(h.method, h.target) for h in heads] == [(r[0], normalize_target(r[1])) for r in reqs]
    bodies = []
    current = b""
    for e in events:
        if isinstance(e, Data):
            current += e.data
        elif isinstance(e, EndOfMessage):
            bodies.append(current)
            current = b""
    assert bodies == [r[3] for r in reqs]
    # The head written back from the event is the head that came in.
    for head, r in zip(heads, reqs, strict=True):
        written = serialize_request(head.method, head.target, head.headers)
        assert written == wire_of(r[0], head.target, *r[2:])[: len(written)]


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_garbage_gives_only_events_or_remote_protocol_error(
    garbage: bytes, cuts: list[int]
) -> None:
    for reader in (RequestReader(max_head_size=1024), ResponseReader(max_head_size=1024)):
        try:
            events = feed_split(reader, garbage, cuts)
        except RemoteProtocolError as err:
            assert err.status_hint in (400, 414, 431, 502)
        else:
            assert all(
                isinstance(e, Request | Response | Data | EndOfMessage | Upgrade) for e in events
            )


def test_serialize_response_round_trip() -> None:
    wire = serialize_response(404, [(b"X-A", b"1")]) + b""
    [response, _] = ResponseReader().receive_data(
        serialize_response(404, [(b"X-A", b"1"), (b"Content-Length", b"0")])
    )
    assert isinstance(response, Response) and response.status == 404
    assert wire.startswith(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n")
