"""Asking the backends which one owns an Orthanc job or query (asyncio; a probe beside the
data path): `GET /jobs/{id}` or `GET /queries/{id}` on every candidate at once, on fresh
connections, the first 200 wins and the other requests are cancelled; all bounded by one
deadline. How several dicomlb instances follow what another one started, without sharing
anything: the owner is asked for, then remembered (`orthanc.OwnerTable`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dicomlb.http.checks import HttpCheckError, http_check
from dicomlb.http.upstream import BackendConnections
from dicomlb.snapshot import HttpCheckConfig

__all__ = ["MAX_LOCATING", "locate"]

MAX_LOCATING = 64  # resources being looked up at once per listener; past it, not looked up


async def locate(
    candidates: Sequence[BackendConnections],
    resource: str,
    timeout: float,
    *,
    check: HttpCheckConfig,
    authorization: bytes | None = None,
) -> str | None:
    """The name of the first candidate answering `GET resource` with 200 within `timeout`,
    or None. `check` gives the Host header and the credentials of the pool's HTTP check;
    the client's `authorization`, when it sent one, is used instead."""
    probe = HttpCheckConfig(
        method="GET",
        path=resource,
        status=(200,),
        username=check.username,
        password=check.password,
        host=check.host,
    )

    async def ask(conns: BackendConnections) -> str:
        await http_check(
            conns.address,
            probe,
            timeout,
            tls=conns.ssl,
            server_name=conns.server_hostname,
            authorization=authorization,
        )
        return conns.backend.name

    tasks = [asyncio.ensure_future(ask(conns)) for conns in candidates]
    try:
        async with asyncio.timeout(timeout):
            for answered in asyncio.as_completed(tasks):
                try:
                    return await answered
                except HttpCheckError:
                    continue  # not there (404), or unreachable: the others may own it
    except TimeoutError:
        return None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return None
