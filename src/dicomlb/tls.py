"""TLS contexts for listeners (DICOM, HTTP) and backends (PS3.15 B.1, BCP 195: TLS 1.2+)."""

from __future__ import annotations

import asyncio
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
