"""TLS contexts for listeners (DICOM, HTTP) and backends (PS3.15 B.1, BCP 195: TLS 1.2+)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import functools
import ssl
import typing


def server_context(*, cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    """A listener's context. With `ca`, clients must present a certificate it signed
    (mutual TLS, as IHE ATNA nodes do); without, any client may connect."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *, ca: str | None, cert: str | None, key: str | None, verify: bool
) -> ssl.SSLContext:
    """A context toward a backend: its certificate checked against `ca` (or the system's
    CAs), and dicomlb's own certificate presented when the backend asks for one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca is not None:
            context.load_verify_locations(ca)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_SEQUENCE, _UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x30, 0x17, 0x18, 0xA0


def certificate_expiry(path: str) -> float | None:
    """When the first certificate of a PEM file expires (its notAfter, Unix time); None when
    the file holds no certificate this reads (ssl, which loaded it, is the judge of it)."""
    try:
        with open(path, "rb") as file:
            return not_after(file.read())
    except (OSError, ValueError):
        return None


def not_after(pem: bytes) -> float:
    """The notAfter of the first certificate in `pem` (RFC 5280 4.1.2.5), Unix time; ValueError
    when there is none or it does not parse. Python's ssl module gives no way to read a
    certificate file, and the walk to the field is short: Certificate → tbsCertificate →
    [version], serialNumber, signature, issuer, validity → notAfter."""
    begin = pem.find(_BEGIN)
    end = pem.find(_END, begin)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(pem[begin + len(_BEGIN) : end].split()), validate=True)
    except binascii.Error as err:
        raise ValueError(f"bad base64: {err}") from None
    tag, certificate, _ = _tlv(der, 0, len(der))
    if tag != _SEQUENCE:
        raise ValueError("the certificate is not a SEQUENCE")
    tag, (at, tbs_end), _ = _tlv(der, *certificate)
    if tag != _SEQUENCE:
        raise ValueError("tbsCertificate is not a SEQUENCE")
    tag, field, after = _tlv(der, at, tbs_end)
    if tag == _VERSION:
        tag, field, after = _tlv(der, after, tbs_end)
    for _ in range(3):  # after serialNumber: signature, issuer, validity
        tag, field, after = _tlv(der, after, tbs_end)
    if tag != _SEQUENCE:
        raise ValueError("validity is not a SEQUENCE")
    _, _, next_time = _tlv(der, field[0], field[1])  # notBefore
    tag, value, _ = _tlv(der, next_time, field[1])
    return _asn1_time(tag, der[value[0] : value[1]])


def _tlv(der: bytes, at: int, end: int) -> tuple[int, tuple[int, int], int]:
    """The DER element at `at` (before `end`): its tag, its value's (start, end) and where
    the next element starts."""
    if at + 2 > end:
        raise ValueError("element cut short")
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if size == 0 or size > 4 or at + size > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[at : at + size], "big")
        at += size
    if at + length > end:
        raise ValueError("element longer than its container")
    return tag, (at, at + length), at + length


def _asn1_time(tag: int, raw: bytes) -> float:
    """UTCTime (YYMMDDHHMMSSZ, years 50 to 99 in the 1900s) or GeneralizedTime
    (YYYYMMDDHHMMSSZ), as RFC 5280 4.1.2.5 allows them, in Unix time."""
    text = raw.decode("ascii", "replace")
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2]) if text[:2].isdigit() else -1
        text = f"{19 if year >= 50 else 20}{text}"
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError("notAfter is not a UTCTime or GeneralizedTime")
    if not (text.endswith("Z") and text[:-1].isdigit()):
        raise ValueError(f"notAfter {text!r} is not YYYYMMDDHHMMSSZ")
    fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]))
    clock = (int(text[8:10]), int(text[10:12]), int(text[12:14]))
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= 31 and clock < (24, 60, 61)):
        raise ValueError(f"notAfter {text!r} is not a date")
    return float(calendar.timegm((*fields, *clock, 0, 0, 0)))


@functools.cache
def default_client_context() -> ssl.SSLContext:
    """Toward an https backend without a `tls` block: the system's CAs, names checked."""
    return client_context(ca=None, cert=None, key=None, verify=True)


class ServerHandshake(asyncio.Protocol):
    """The server side of a listener's TLS handshake, run on an accepted plain connection
    with `loop.start_tls`, so that a refused handshake reaches the listener (a server made
    with `create_server(ssl=...)` reports those only in asyncio's debug mode).

    Made in the listener protocol's `connection_made`, it is the connection's protocol until
    `hand_over`: it keeps the client's first bytes until `start_tls` takes the connection
    (uvloop starts reading after `connection_made` even when reading was paused), then the
    first decrypted ones until the listener protocol takes over."""

    def __init__(self, raw: asyncio.Transport) -> None:
        self.raw = raw
        self.chunks: list[bytes] = []
        self.lost: tuple[Exception | None] | None = None
        raw.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    async def run(self, context: ssl.SSLContext, timeout: float) -> asyncio.Transport:
        """The TLS transport once the handshake is done (within `timeout`); raises what made
        it fail, the connection closed."""
        loop = asyncio.get_running_loop()
        starting = loop.create_task(
            loop.start_tls(self.raw, self, context, server_side=True, ssl_handshake_timeout=timeout)
        )
        tls: asyncio.Transport | None = None
        try:
            # One step later start_tls has put its TLS protocol on the transport and queued
            # its connection_made: the bytes read before go to it right after that.
            await asyncio.sleep(0)
            chunks, self.chunks = self.chunks, []
            loop.call_soon(_feed, self.raw.get_protocol(), chunks)
            tls = await starting
            if tls is None:
                raise ConnectionError("the connection closed during the TLS handshake")
        finally:
            if tls is None:
                starting.cancel()
                # Before a completed handshake the TLS protocol does not report the loss.
                self.raw.close()
        return tls

    def hand_over(self, tls: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        """`protocol` reads from `tls` from now on: what was decrypted before, then the rest
        (and the connection's loss, if it came already)."""
        tls.set_protocol(protocol)
        chunks, self.chunks = self.chunks, []
        for data in chunks:
            protocol.data_received(data)
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])


def _feed(protocol: asyncio.BaseProtocol, chunks: list[bytes]) -> None:
    """Give bytes read before it was in place to the TLS protocol (a buffered protocol in
    asyncio and uvloop alike)."""
    buffered = typing.cast(asyncio.BufferedProtocol, protocol)
    for data in chunks:
        view = memoryview(data)
        while view:
            buffer = memoryview(buffered.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            buffered.buffer_updated(size)
            view = view[size:]
