"""TLS contexts for listeners (DICOM, HTTP) and backends (PS3.15 B.1, BCP 195: TLS 1.2+)."""

from __future__ import annotations

import functools
import ssl


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
