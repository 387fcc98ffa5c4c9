"""Mutations of captured sessions (pure: bytes and a seeded `random.Random` in, a plan out).

A captured DICOM session is the client's byte stream cut into PDUs; an HTTP session is the
client's byte stream. A `Plan` says what a hostile replay sends (the pieces, in order, with
pauses) and how it ends. Mutations are the kinds a fuzzer and a broken modality produce:
flipped bits, boundary values in bytes and length fields, truncation, duplicated, dropped,
reordered and foreign PDUs, a tiny Maximum Length, odd fragmentation, and an abrupt end.
"""

from __future__ import annotations

import enum
import random
import struct
from dataclasses import dataclass

# PS3.8 9.3.1: every PDU starts with type (1), reserved (1), length (4, big endian).
PDU_HEADER = 6
INTERESTING_U32 = (0, 1, 2, 5, 6, 7, 0x7F, 0x80, 0xFF, 0x1000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
INTERESTING_U16 = (0, 1, 2, 4, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF)
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x7F, 0x80, 0xFF, 0x0A, 0x0D)
# PS3.8 D.1: user information sub-item 0x51 (Maximum Length), 4-byte value.
MAX_LENGTH_ITEM = b"\x51\x00\x00\x04"


class End(enum.Enum):
    CLOSE = "close"  # FIN after the last piece, then read what comes
    RESET = "reset"  # RST (SO_LINGER 0) right after the last piece
    LINGER = "linger"  # stay connected, send nothing more, until the server acts


@dataclass(frozen=True, slots=True)
class Plan:
    """What one hostile session sends: pieces with the pause before each, and its end."""

    kind: str  # the seed's name, e.g. "storescu"
    mutation: str  # what was done, for the report
    pieces: tuple[bytes, ...]
    pauses: tuple[float, ...]
    end: End


def split_pdus(stream: bytes) -> list[bytes]:
    """A client's DICOM byte stream as PDUs; a trailing partial PDU stays one piece."""
    pdus: list[bytes] = []
    at = 0
    while at < len(stream):
        if len(stream) - at < PDU_HEADER:
            pdus.append(stream[at:])
            break
        (length,) = struct.unpack_from(">I", stream, at + 2)
        end = min(len(stream), at + PDU_HEADER + length)
        pdus.append(stream[at:end])
        at = end
    return pdus


def _flip_bits(data: bytearray, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    return "flip"


def _set_byte(data: bytearray, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
    return "byte"


def _set_u16(data: bytearray, rng: random.Random) -> str:
    if len(data) < 2:
        return _set_byte(data, rng)
    at = rng.randrange(len(data) - 1)
    struct.pack_into(">H", data, at, rng.choice(INTERESTING_U16))
    return "u16"


def _set_u32(data: bytearray, rng: random.Random) -> str:
    if len(data) < 4:
        return _set_byte(data, rng)
    at = rng.randrange(len(data) - 3)
    fmt = rng.choice((">I", "<I"))
    struct.pack_into(fmt, data, at, rng.choice(INTERESTING_U32))
    return "u32"


_BYTE_MUTATIONS = (_flip_bits, _set_byte, _set_u16, _set_u32)


def _mutate_pdu(pdu: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(pdu)
    if not data:
        return b"\x00", "empty"
    roll = rng.random()
    if roll < 0.25 and len(data) >= PDU_HEADER:
        struct.pack_into(">I", data, 2, rng.choice(INTERESTING_U32))
        return bytes(data), "pdu-length"
    if roll < 0.35:
        data[0] = rng.choice((0x00, 0x08, 0x09, 0xFF, rng.randrange(1, 8)))
        return bytes(data), "pdu-type"
    return bytes(data), rng.choice(_BYTE_MUTATIONS)(data, rng)


def _tiny_max_length(pdus: list[bytes], rng: random.Random) -> str | None:
    """Set the A-ASSOCIATE-RQ's Maximum Length to a tiny value (0..16)."""
    for index, pdu in enumerate(pdus):
        if pdu[:1] == b"\x01":
            at = pdu.find(MAX_LENGTH_ITEM)
            if at < 0 or at + 8 > len(pdu):
                return None
            data = bytearray(pdu)
            struct.pack_into(">I", data, at + 4, rng.randrange(0, 17))
            pdus[index] = bytes(data)
            return "max-length"
    return None


def mutate_dicom(kind: str, pdus: list[bytes], rng: random.Random) -> Plan:
    """A hostile replay of a captured DICOM session."""
    pdus = list(pdus)
    steps: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.40 and pdus:
            index = rng.randrange(len(pdus))
            pdus[index], what = _mutate_pdu(pdus[index], rng)
            steps.append(f"{what}@{index}")
        elif roll < 0.50 and pdus:
            index = rng.randrange(len(pdus))
            pdus.insert(index, pdus[index])
            steps.append(f"dup@{index}")
        elif roll < 0.58 and len(pdus) > 1:
            index = rng.randrange(len(pdus))
            del pdus[index]
            steps.append(f"drop@{index}")
        elif roll < 0.66 and len(pdus) > 1:
            a, b = rng.sample(range(len(pdus)), 2)
            pdus[a], pdus[b] = pdus[b], pdus[a]
            steps.append(f"swap@{a},{b}")
        elif roll < 0.76 and pdus:
            index = rng.randrange(len(pdus))
            pdu = pdus[index]
            pdus[index] = pdu[: rng.randrange(len(pdu) + 1)]
            del pdus[index + 1 :]
            steps.append(f"truncate@{index}")
        elif roll < 0.84:
            what = _tiny_max_length(pdus, rng)
            steps.append(what or "noop")
        elif roll < 0.92:
            index = rng.randrange(len(pdus) + 1)
            foreign = rng.choice(
                (
                    b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # A-RELEASE-RQ
                    b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # A-ABORT
                    b"\x02\x00\x00\x00\x00\x00",  # an A-ASSOCIATE-AC from a client
                    b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",  # tiny P-DATA-TF
                    bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
                )
            )
            pdus.insert(index, foreign)
            steps.append(f"insert@{index}")
        else:
            steps.append("split")
    return _plan(kind, "+".join(steps), b"".join(pdus), rng)


def mutate_http(kind: str, stream: bytes, rng: random.Random) -> Plan:
    """A hostile replay of a captured HTTP session."""
    data = bytearray(stream)
    steps: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.30 and data:
            steps.append(rng.choice(_BYTE_MUTATIONS)(data, rng))
        elif roll < 0.45:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.choice(
                (b"\r\n", b"\n", b"\r", b"\x00", b" ", b"%", b"%2e%2e/", b"//", b"\\", b"%00")
            )
            steps.append("insert")
        elif roll < 0.60:
            data = bytearray(_edit_header(bytes(data), rng))
            steps.append("header")
        elif roll < 0.75 and data:
            data = data[: rng.randrange(len(data) + 1)]
            steps.append("truncate")
        elif roll < 0.85:
            data = data + data
            steps.append("pipeline")
        else:
            steps.append("split")
    return _plan(kind, "+".join(steps), bytes(data), rng)


_HEADER_EDITS = (
    (b"Content-Length: ", (b"-1", b"99999999999", b"1, 2", b"0x10", b"", b"+5")),
    (b"Transfer-Encoding: ", (b"chunked, identity", b"gzip", b"chunked\r\nTransfer-Encoding: x")),
    (b"Host: ", (b"", b"a\r\nHost: b", b"\x00")),
    (b"Connection: ", (b"close, content-length", b"upgrade", b"keep-alive, host")),
    (b"Expect: ", (b"100-continue",)),
)


def _edit_header(data: bytes, rng: random.Random) -> bytes:
    name, values = rng.choice(_HEADER_EDITS)
    value = rng.choice(values)
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return data
    at = data.find(name, 0, head_end)
    if at < 0:
        return data[:head_end] + b"\r\n" + name + value + data[head_end:]
    line_end = data.find(b"\r\n", at)
    return data[: at + len(name)] + value + data[line_end:]


def _plan(kind: str, mutation: str, stream: bytes, rng: random.Random) -> Plan:
    """Cut `stream` into pieces (PDU-sized, tiny or random), with short pauses, and an end."""
    pieces: list[bytes] = []
    at = 0
    style = rng.random()
    while at < len(stream):
        if style < 0.5:
            size = len(stream) - at  # whole: as the client sent it
        elif style < 0.7:
            size = rng.randint(1, 8)
        else:
            size = rng.randint(1, 4096)
        pieces.append(stream[at : at + size])
        at += size
    if len(pieces) > 200:  # bounded work per session: merge the tail
        pieces = [*pieces[:199], b"".join(pieces[199:])]
    pauses = tuple(0.0 if rng.random() < 0.9 else rng.uniform(0.0, 0.05) for _ in pieces)
    end = rng.choices((End.CLOSE, End.RESET, End.LINGER), weights=(6, 3, 1))[0]
    return Plan(kind, mutation or "none", tuple(pieces), pauses, end)
