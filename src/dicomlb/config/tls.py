"""The `tls:` blocks of listeners (server side) and backends (client side): models, and the
SSL contexts built from them, with an issue naming the block when the PEM files fail."""

from __future__ import annotations

import ssl
from typing import Annotated

from pydantic import Field, StrictBool

from dicomlb.config.tools import ConfigIssue, Model
from dicomlb.snapshot import TlsConfig
from dicomlb.tls import certificate_expiry, client_context, server_context

__all__ = ["BackendTlsModel", "ListenerTlsModel", "backend_tls", "listener_tls"]


_Path = Annotated[str, Field(strict=True)]


class ListenerTlsModel(Model):
    """TLS on a listener (TLS 1.2 or later): clients speak TLS to dicomlb."""

    cert: _Path = Field(
        description="PEM certificate file the listener presents (read at load and on reload)."
    )
    key: _Path = Field(description="PEM private key file of `cert`.")
    ca: _Path | None = Field(
        default=None,
        description="PEM CA file: with it, clients must present a certificate this CA signed "
        "(mutual TLS, IHE ATNA); without it, none is asked for.",
    )


class BackendTlsModel(Model):
    """TLS toward a backend: DICOM TLS, or https for HTTP backends and the bridge."""

    ca: _Path | None = Field(
        default=None,
        description="PEM CA file to verify the backend's certificate with; default: the "
        "system's CAs.",
    )
    cert: _Path | None = Field(
        default=None,
        description="PEM client certificate dicomlb presents (as DCMTK and most PACS "
        "require); goes with `key`.",
    )
    key: _Path | None = Field(
        default=None, description="PEM private key of `cert`; goes with `cert`."
    )
    verify: StrictBool = Field(
        default=True, description="`false` skips verifying the backend's certificate."
    )
    server_name: _Path | None = Field(
        default=None,
        description="The name the certificate is checked against (and sent as SNI); default: "
        "the host of the backend's address.",
    )


def _tls_failure(path: str, err: Exception) -> ConfigIssue:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    filename = getattr(err, "filename", None)
    where = f" ({filename})" if filename else ""
    return ConfigIssue(
        path=path,
        message=f"cannot set up TLS: {reason}{where}; check the PEM files' paths and contents",
    )


def listener_tls(spec: ListenerTlsModel, path: str, issues: list[ConfigIssue]) -> TlsConfig | None:
    try:
        context = server_context(cert=spec.cert, key=spec.key, ca=spec.ca)
    except (OSError, ssl.SSLError) as err:
        issues.append(_tls_failure(path, err))
        return None
    return TlsConfig(
        cert=spec.cert,
        key=spec.key,
        ca=spec.ca,
        context=context,
        expires=certificate_expiry(spec.cert),
    )


def backend_tls(
    spec: BackendTlsModel | None, path: str, issues: list[ConfigIssue]
) -> TlsConfig | None:
    if spec is None:
        return None
    if (spec.cert is None) != (spec.key is None):
        issues.append(
            ConfigIssue(path=path, message="cert and key go together; give both or neither")
        )
        return None
    try:
        context = client_context(ca=spec.ca, cert=spec.cert, key=spec.key, verify=spec.verify)
    except (OSError, ssl.SSLError) as err:
        issues.append(_tls_failure(path, err))
        return None
    return TlsConfig(
        cert=spec.cert,
        key=spec.key,
        ca=spec.ca,
        verify=spec.verify,
        server_name=spec.server_name,
        context=context,
    )
