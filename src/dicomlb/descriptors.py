"""File descriptors: the process's limit, and the headroom the listeners leave free.

At start dicomlb raises its soft RLIMIT_NOFILE to the hard limit (as nginx's
`worker_rlimit_nofile` does): the default soft limit of 1024 is a few hundred associations,
each of which may hold a backend connection too.

The DICOM and HTTP listeners close a new client connection at once when its descriptor is
one of the top `HEADROOM` numbers below the limit. The kernel hands out the lowest free
number, so a client connection gets one of those only when every lower number is taken;
client connections therefore never hold the last `HEADROOM` descriptors, which stay for
the admin listener, health checks, backend connections and the spool's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource

HEADROOM = 64


def raise_limit() -> tuple[int | None, int | None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (soft, hard) after, None: unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # macOS refuses RLIM_INFINITY as the soft limit: the soft one stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _limit(soft), _limit(hard)


def soft_limit() -> int | None:
    """The soft RLIMIT_NOFILE now; None when unlimited."""
    return _limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _limit(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def in_headroom(fd: int, limit: int | None, headroom: int = HEADROOM) -> bool:
    """Whether descriptor number `fd` is one of the last `headroom` below `limit`."""
    return limit is not None and fd >= limit - headroom


def transport_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor number of a transport's socket; -1 when it has none."""
    sock = transport.get_extra_info("socket")
    return int(sock.fileno()) if sock is not None else -1
