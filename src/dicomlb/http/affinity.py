"""Placing an HTTP request on a backend: affinity keys (header, cookie, client IP) and the
sticky table (a key's first request goes to the least loaded backend, or by rendezvous
hashing where several instances must agree; later ones follow it). Pure: no I/O, no clock.
"""

from __future__ import annotations

from dicomlb.http.h1 import Headers
from dicomlb.lru import BoundedLru
from dicomlb.pools import BackendState, Pool, rendezvous_score
from dicomlb.snapshot import HttpKey, KeyKind

__all__ = ["StickyTable", "least_loaded", "rendezvous_available", "request_key"]


def request_key(key: HttpKey, headers: Headers, client_ip: str) -> str | None:
    """The value of `key` for a request, or None when the request does not carry it."""
    if key.kind is KeyKind.CLIENT_IP:
        return client_ip
    if key.kind is KeyKind.HEADER:
        wanted = key.name.encode("latin-1")
        for name, value in headers:
            if name.lower() == wanted:
                return value.decode("latin-1")
        return None
    wanted = key.name.encode("latin-1")
    for name, value in headers:
        if name.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie, _, content = pair.strip().partition(b"=")
            if cookie == wanted:
                return content.decode("latin-1")
    return None


def least_loaded(
    pool: Pool, exclude: frozenset[str] = frozenset(), key: str = ""
) -> BackendState | None:
    """The available backend with the fewest requests in flight per unit of weight; ties
    go by `key`'s rendezvous order, so idle backends share new keys evenly."""
    candidates = [b for b in pool.backends if b.http_available and b.name not in exclude]
    if not candidates:
        return None
    return min(candidates, key=lambda b: (b.active / b.weight, -rendezvous_score(key, b)))


def rendezvous_available(
    pool: Pool, key: str, exclude: frozenset[str] = frozenset()
) -> BackendState | None:
    """The available backend first in `key`'s rendezvous order: every dicomlb instance with
    the same pool and the same view of its health computes the same one, without talking."""
    candidates = [b for b in pool.backends if b.http_available and b.name not in exclude]
    if not candidates:
        return None
    return max(candidates, key=lambda b: rendezvous_score(key, b))


class StickyTable:
    """Key → backend name, most recently used last, bounded."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._table: BoundedLru[str, str] = BoundedLru(capacity)

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str) -> str | None:
        return self._table.get(key)

    def put(self, key: str, backend: str) -> None:
        self._table.put(key, backend)

    def place(
        self,
        pool: Pool,
        key: str,
        exclude: frozenset[str] = frozenset(),
        *,
        computed: bool = False,
    ) -> BackendState | None:
        """The backend `key` is pinned to when it is available; else the least loaded one
        (with `computed`, the first available in the key's rendezvous order, which other
        instances choose too), which the key is then pinned to."""
        name = self.get(key)
        if name is not None and name not in exclude:
            for b in pool.backends:
                if b.name == name and b.http_available:
                    return b
        backend = (
            rendezvous_available(pool, key, exclude)
            if computed
            else least_loaded(pool, exclude, key)
        )
        if backend is not None:
            self.put(key, backend.name)
        return backend
