"""Changes to a snapshot's pools (pure), giving a new snapshot.

A removal through the admin API of a backend the file defines is applied to the file's
snapshot with these, and lasts until the next reload from the file; `with_pools` is also
how the providers' backends are merged into the file's pools (`providers.merge`).
"""

from __future__ import annotations

import dataclasses
import types

from dicomlb.snapshot import BackendConfig, PoolConfig, Snapshot


class ChangeError(ValueError):
    """The change cannot be made; the text says why and what to do."""


def with_pools(snapshot: Snapshot, pools: dict[str, PoolConfig]) -> Snapshot:
    """`snapshot` with `pools` replaced, and the routes (their mirrors too), HTTP routes and
    echo option pointing at them."""
    routes = tuple(
        dataclasses.replace(
            r, pool=pools[r.pool.name], mirror=tuple(pools[m.name] for m in r.mirror)
        )
        for r in snapshot.routes
    )
    http_routes = tuple(
        dataclasses.replace(r, pool=pools[r.pool.name]) for r in snapshot.http_routes
    )
    dicom = snapshot.dicom
    if dicom is not None and dicom.echo_pool is not None:
        dicom = dataclasses.replace(dicom, echo_pool=pools[dicom.echo_pool.name])
    return dataclasses.replace(
        snapshot,
        pools=types.MappingProxyType(pools),
        routes=routes,
        http_routes=http_routes,
        dicom=dicom,
    )


def find_backend(snapshot: Snapshot, name: str) -> tuple[PoolConfig, BackendConfig] | None:
    for pool in snapshot.pools.values():
        for backend in pool.backends:
            if backend.name == name:
                return pool, backend
    return None


def remove_backend(snapshot: Snapshot, name: str) -> Snapshot:
    """A snapshot without backend `name` (a pool may be left empty: providers fill pools)."""
    found = find_backend(snapshot, name)
    if found is None:
        raise ChangeError(f'backend "{name}" does not exist')
    pool, _ = found
    pools = dict(snapshot.pools)
    pools[pool.name] = dataclasses.replace(
        pool, backends=tuple(b for b in pool.backends if b.name != name)
    )
    return with_pools(snapshot, pools)
