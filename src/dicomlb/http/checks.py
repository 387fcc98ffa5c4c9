"""Active HTTP health checks (asyncio streams: a probe, not the data path): one request on
a fresh connection, the status compared with the expected ones."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl

from dicomlb.snapshot import HttpAddress, HttpCheckConfig

__all__ = ["DEFAULT_CHECK", "HttpCheckError", "http_check"]

DEFAULT_CHECK = HttpCheckConfig()


class HttpCheckError(Exception):
    """The check failed; the text says why."""


async def http_check(
    address: HttpAddress,
    check: HttpCheckConfig,
    timeout: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    authorization: bytes | None = None,
) -> int:
    """Run one check (over TLS with `tls`, for https backends); returns the status, raises
    HttpCheckError when it is not expected. `authorization` is sent as the Authorization
    header, in place of the check's own credentials."""
    host = check.host or f"{address.host}:{address.port}"
    lines = [
        f"{check.method} {check.path} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: dicomlb-health",
        "Connection: close",
    ]
    if authorization is not None:
        lines.append("Authorization: " + authorization.decode("latin-1"))
    elif check.username is not None:
        token = base64.b64encode(f"{check.username}:{check.password or ''}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                address.host, address.port, ssl=tls, server_hostname=server_name
            )
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status_line = await reader.readline()
    except TimeoutError:
        raise HttpCheckError(f"no answer within {timeout:g}s") from None
    except OSError as err:
        raise HttpCheckError(str(err) or type(err).__name__) from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise HttpCheckError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    if status not in check.status:
        raise HttpCheckError(
            f"{check.method} {check.path} answered {status}, expected "
            f"{' or '.join(map(str, check.status))}"
        )
    return status
