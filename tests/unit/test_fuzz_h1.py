"""h1.py fuzzed: a hypothesis state machine feeds a RequestReader pipelined requests (bodies
by Content-Length or chunked, Connection: close), garbage and EOF, cut anywhere, and checks the
events spell the requests that were written, or the documented RemoteProtocolError with a
client status; then work per byte, requests and responses."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

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
    chunk,
    last_chunk,
    serialize_request,
    serialize_response,
)
from dicomlb.http.paths import PathError, normalize_target
from tests.unit.fuzzing import assert_linear, machine_tests, small_pieces

MAX_HEAD = 2048
# Statuses a RequestReader may hint (h1.py's docstring); 413 and 501 are the shell's.
CLIENT_ERRORS = (400, 413, 414, 431, 501, 505)


def _normalisable(target: bytes) -> bool:
    try:
        normalize_target(target)
    except PathError:
        return False
    return True


targets = (
    st.text(alphabet="abz/._-~%2e", max_size=24)
    .map(lambda text: ("/" + text).encode())
    .filter(_normalisable)
)
field_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).filter(
    lambda name: (
        name
        not in ("content-length", "transfer-encoding", "connection", "host", "upgrade", "expect")
        and not name.startswith("keep-alive")
    )
)
field_values = st.text(alphabet="abc XYZ019/=;,", max_size=16).map(str.strip)


@dataclass
class _Message:
    """What the reader should give for one request: its head's facts and its body."""

    method: bytes
    target: bytes
    chunked: bool
    content_length: int | None
    keep_alive: bool
    body: bytes = b""
    ended: bool = False
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)


class RequestReaderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reader = RequestReader(max_head_size=MAX_HEAD)
        self.unread = b""  # written, not yet fed
        self.expected: list[_Message] = []  # what the written requests should give
        self.got: list[_Message] = []  # what the reader gave
        self.tainted = False  # garbage was written: events may stop matching from there
        self.closing = False  # a request that ends the connection was written
        self.failed = False
        self.hung_up = False  # EOF given: the shell feeds nothing more

    @rule(
        method=st.sampled_from([b"GET", b"POST", b"PUT", b"PROPFIND"]),
        path=targets,
        fields=st.lists(st.tuples(field_names, field_values), max_size=4),
        body=st.binary(max_size=300),
        framing=st.sampled_from(["length", "chunked", "none"]),
        chunk_size=st.integers(1, 64),
        close=st.booleans(),
    )
    def write_request(
        self,
        method: bytes,
        path: bytes,
        fields: list[tuple[str, str]],
        body: bytes,
        framing: str,
        chunk_size: int,
        close: bool,
    ) -> None:
        head_fields = [(b"Host", b"dicomlb.test")]
        head_fields += [(name.encode(), value.encode()) for name, value in fields]
        if framing == "none":
            body = b""
        elif framing == "length":
            head_fields.append((b"Content-Length", b"%d" % len(body)))
        else:
            head_fields.append((b"Transfer-Encoding", b"chunked"))
        if close:
            head_fields.append((b"Connection", b"close"))
        wire = serialize_request(method, path, head_fields)
        if framing == "chunked":
            for start in range(0, len(body), chunk_size):
                wire += b"".join(chunk(body[start : start + chunk_size]))
            wire += last_chunk()
        else:
            wire += body
        self.unread += wire
        if not (self.tainted or self.closing):
            self.expected.append(
                _Message(
                    method=method,
                    target=normalize_target(path),
                    chunked=framing == "chunked",
                    content_length=len(body) if framing == "length" else None,
                    keep_alive=not close,
                    body=body,
                    ended=True,
                    fields=head_fields,
                )
            )
        self.closing = self.closing or close

    @rule(garbage=st.binary(min_size=1, max_size=40))
    def write_garbage(self, garbage: bytes) -> None:
        self.unread += garbage
        self.tainted = True

    @rule(size=st.integers(0, 80))
    def feed(self, size: int) -> None:
        if self.hung_up:
            return
        piece, self.unread = self.unread[:size], self.unread[size:]
        try:
            events = self.reader.receive_data(piece)
        except RemoteProtocolError as err:
            self._failed(err)
            return
        assert not self.failed, "events after the reader failed"
        self._take(events)

    @rule()
    def hang_up(self) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        try:
            events = self.reader.receive_eof()
        except RemoteProtocolError as err:
            # Only mid-message, which the written bytes may leave it in: the client's fault
            # even when what it wrote so far was well formed.
            assert err.status_hint in CLIENT_ERRORS
            assert self.reader.state is ReaderState.ERROR
            self.failed = True
            return
        assert events == []
        assert self.reader.state is not ReaderState.HEAD
        assert self.reader.state is not ReaderState.BODY

    def _failed(self, err: RemoteProtocolError) -> None:
        assert err.status_hint in CLIENT_ERRORS
        assert self.reader.state is ReaderState.ERROR
        if not self.failed:
            # Only garbage (or a head over the limit) fails a reader of well-formed requests.
            assert self.tainted or self._head_too_large(), err
        self.failed = True

    def _head_too_large(self) -> bool:
        heads = [len(serialize_request(m.method, m.target, m.fields)) for m in self.expected]
        return any(size > MAX_HEAD for size in heads)

    def _take(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Request):
                assert not self.got or self.got[-1].ended, "a head inside a message"
                self.got.append(
                    _Message(
                        method=event.method,
                        target=event.target,
                        chunked=event.chunked,
                        content_length=event.content_length,
                        keep_alive=event.keep_alive,
                    )
                )
            elif isinstance(event, Data):
                assert self.got and not self.got[-1].ended, "a body outside a message"
                self.got[-1].body += event.data
            elif isinstance(event, Upgrade):
                assert self.tainted  # no written request asks for a tunnel
            else:
                assert isinstance(event, EndOfMessage), event
                assert self.got and not self.got[-1].ended, "an end outside a message"
                self.got[-1].ended = True

    @invariant()
    def events_spell_what_was_written(self) -> None:
        got = [(m.method, m.target, m.chunked, m.content_length, m.keep_alive) for m in self.got]
        want = [
            (m.method, m.target, m.chunked, m.content_length, m.keep_alive) for m in self.expected
        ]
        if self.tainted or self.failed:
            # Until the garbage, what came out is what was written (a prefix of it).
            common = min(len(got), len(want))
            assert got[:common] == want[:common]
        else:
            assert got == want[: len(got)]
        for got_message, want_message in zip(self.got, self.expected, strict=False):
            if got_message.ended:
                assert got_message.body == want_message.body
            else:
                assert want_message.body.startswith(got_message.body)

    @invariant()
    def closed_reads_nothing(self) -> None:
        if self.reader.state is ReaderState.CLOSED:
            assert self.reader.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []

    @invariant()
    def a_failed_reader_stays_failed(self) -> None:
        if self.failed:
            assert self.reader.state is ReaderState.ERROR
            with pytest.raises(RemoteProtocolError):
                self.reader.receive_data(b"GET / HTTP/1.1\r\n\r\n")


TestRequestReaderMachine, TestRequestReaderMachineSlow = machine_tests(RequestReaderMachine)


# ------------------------------------------------------------------ work per byte


def _requests(size: int, *, chunked: bool) -> bytes:
    """Pipelined requests with small bodies, `size` bytes in all."""
    out = bytearray()
    while len(out) < size:
        body = bytes(len(out) % 50)
        if chunked:
            out += serialize_request(
                b"POST", b"/studies", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
            )
            out += (b"".join(chunk(body)) if body else b"") + last_chunk()
        else:
            out += serialize_request(
                b"POST", b"/studies", [(b"Host", b"h"), (b"Content-Length", b"%d" % len(body))]
            )
            out += body
    return bytes(out)


def _one_body(size: int, *, chunked: bool) -> bytes:
    """One request whose body is `size` bytes, in chunks of 1..16 bytes when chunked."""
    if not chunked:
        head = [(b"Host", b"h"), (b"Content-Length", b"%d" % size)]
        return serialize_request(b"PUT", b"/x", head) + bytes(size)
    head = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    body = b"".join(b"".join(chunk(p)) for p in small_pieces(bytes(size), seed=size))
    return serialize_request(b"PUT", b"/x", head) + body + last_chunk()


def _many_fields(size: int) -> bytes:
    """One head of `size` bytes of short fields (under the reader's limit)."""
    return serialize_request(b"GET", b"/", [(b"Host", b"h")] + [(b"X-A", b"b")] * (size // 8))


SHAPES = {
    "pipelined, Content-Length": lambda n: _requests(n, chunked=False),
    "pipelined, chunked": lambda n: _requests(n, chunked=True),
    "one body, Content-Length": lambda n: _one_body(n, chunked=False),
    "one body, small chunks": lambda n: _one_body(n, chunked=True),
    "one head, many fields": _many_fields,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_request_work_grows_linearly_with_the_bytes(shape: str) -> None:
    def run(n: int) -> None:
        reader = RequestReader(max_head_size=1 << 20)
        for piece in small_pieces(SHAPES[shape](n), seed=n):
            reader.receive_data(piece)
        assert reader.state is ReaderState.IDLE

    assert_linear(run, 16 * 1024)


def _responses(size: int, *, chunked: bool) -> list[bytes]:
    """Responses with small bodies, `size` bytes in all."""
    out = []
    total = 0
    while total < size:
        body = bytes(total % 50)
        if chunked:
            wire = serialize_response(200, [(b"Transfer-Encoding", b"chunked")])
            wire += (b"".join(chunk(body)) if body else b"") + last_chunk()
        else:
            wire = serialize_response(200, [(b"Content-Length", b"%d" % len(body))]) + body
        out.append(wire)
        total += len(wire)
    return out


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("chunked", [True, False])
def test_response_work_grows_linearly_with_the_bytes(chunked: bool, decode: bool) -> None:
    def run(n: int) -> None:
        # One request at a time on a backend connection: expect() before each response.
        reader = ResponseReader()
        for response in _responses(n, chunked=chunked):
            reader.expect(b"GET", decode=decode)
            events = []
            for piece in small_pieces(response, seed=len(response)):
                events += reader.receive_data(piece)
            assert isinstance(events[0], Response) and isinstance(events[-1], EndOfMessage)

    assert_linear(run, 16 * 1024)
