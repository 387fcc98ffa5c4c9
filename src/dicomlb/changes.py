"""Operator changes to a snapshot (pure): add or remove a backend, giving a new snapshot.

The admin API builds a new snapshot with these and hands it to `App.reload`, so a runtime
change goes through the same swap as a file reload. A later reload from the file replaces
them: write lasting changes to the file.
"""

from __future__ import annotations

import dataclasses
import types

from dicomlb.snapshot import BackendConfig, PoolConfig, Snapshot, per_instance


class ChangeError(ValueError):
    """The change cannot be made; the text says why and what to do."""


def _with_pools(snapshot: Snapshot, pools: dict[str, PoolConfig]) -> Snapshot:
    """`snapshot` with `pools` replaced, and the routes and echo option pointing at them."""
    routes = tuple(dataclasses.replace(r, pool=pools[r.pool.name]) for r in snapshot.routes)
    dicom = snapshot.dicom
    if dicom is not None and dicom.echo_pool is not None:
        dicom = dataclasses.replace(dicom, echo_pool=pools[dicom.echo_pool.name])
    return dataclasses.replace(
        snapshot, pools=types.MappingProxyType(pools), routes=routes, dicom=dicom
    )


def find_backend(snapshot: Snapshot, name: str) -> tuple[PoolConfig, BackendConfig] | None:
    for pool in snapshot.pools.values():
        for backend in pool.backends:
            if backend.name == name:
                return pool, backend
    return None


def add_backend(snapshot: Snapshot, pool_name: str, backend: BackendConfig) -> Snapshot:
    """A snapshot with `backend` appended to pool `pool_name`."""
    pool = snapshot.pools.get(pool_name)
    if pool is None:
        raise ChangeError(
            f'pool "{pool_name}" does not exist; use one of {", ".join(snapshot.pools)}'
        )
    found = find_backend(snapshot, backend.name)
    if found is not None:
        raise ChangeError(
            f'backend "{backend.name}" already exists in pool {found[0].name}; pick another name'
        )
    pools = dict(snapshot.pools)
    # Its limits are divided like those of the file's backends.
    added = per_instance(backend, pool.instances)
    pools[pool_name] = dataclasses.replace(pool, backends=(*pool.backends, added))
    return _with_pools(snapshot, pools)


def remove_backend(snapshot: Snapshot, name: str) -> Snapshot:
    """A snapshot without backend `name`; a pool keeps at least one backend."""
    found = find_backend(snapshot, name)
    if found is None:
        raise ChangeError(f'backend "{name}" does not exist')
    pool, _ = found
    if len(pool.backends) == 1:
        raise ChangeError(
            f'backend "{name}" is the last of pool {pool.name}; add another first, or drain it'
        )
    pools = dict(snapshot.pools)
    pools[pool.name] = dataclasses.replace(
        pool, backends=tuple(b for b in pool.backends if b.name != name)
    )
    return _with_pools(snapshot, pools)
