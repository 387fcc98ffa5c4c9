"""The providers' backends merged into the file's pools: one snapshot, and each item's fate
(pure).

Each provider gives definitions: a backend for a pool, or an error (a container's bad
label, an API backend that no longer validates). The merge serves every definition it
can and fails only what it cannot:

- a name defined by two providers: the file's definition wins over the admin API's, the
  API's over Docker's; the losing one is a conflict (not served, shown with the winner);
- a name defined twice by one provider (two containers with one `dicomlb.name`): every
  definition of that name is a conflict — neither is more right;
- a pool the file does not define, or a backend a DICOM route of its pool cannot use:
  an error for that definition.

Nothing a provider gives makes the merge fail as a whole, so one provider's mistake never
holds up the others' updates.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from dicomlb.changes import with_pools
from dicomlb.snapshot import BackendConfig, PoolConfig, Snapshot, per_instance

__all__ = ["Definition", "Item", "ItemStatus", "Merged", "Provider", "file_definitions", "merge"]


class Provider(enum.StrEnum):
    FILE = "file"
    API = "api"
    DOCKER = "docker"


# Who wins a name two providers define: the file (what the operator wrote), then the API
# (what the operator asked for), then discovery.
PRECEDENCE = (Provider.FILE, Provider.API, Provider.DOCKER)


class ItemStatus(enum.StrEnum):
    OK = "ok"  # served
    CONFLICT = "conflict"  # its name is defined elsewhere too
    ERROR = "error"  # it cannot be built or placed


@dataclass(frozen=True, slots=True, kw_only=True)
class Definition:
    """A backend one provider defines for one pool, or the reason it could not."""

    provider: Provider
    name: str  # the backend's name (when it could not be built: what it would be called)
    pool: str
    origin: str  # where it comes from: the file's path, "api", "container NAME (ID)"
    backend: BackendConfig | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One definition's fate in the merged configuration."""

    name: str
    pool: str
    provider: Provider
    origin: str
    status: ItemStatus
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the definition across merges (a log line once per new failure)."""
        return (self.provider.value, self.origin, self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    snapshot: Snapshot
    items: tuple[Item, ...]

    def provider_of(self, backend: str) -> Provider | None:
        """The provider whose definition of `backend` is served."""
        for item in self.items:
            if item.name == backend and item.status is ItemStatus.OK:
                return item.provider
        return None

    @property
    def failed(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if i.status is not ItemStatus.OK)


def file_definitions(snapshot: Snapshot) -> list[Definition]:
    """The backends the file defines (the config checked their names are unique)."""
    return [
        Definition(
            provider=Provider.FILE,
            name=backend.name,
            pool=pool.name,
            origin=snapshot.source,
            backend=backend,
        )
        for pool in snapshot.pools.values()
        for backend in pool.backends
    ]


def merge(file: Snapshot, definitions: Iterable[Definition]) -> Merged:
    """`file` with the definitions' backends added to its pools (file order first, then in
    the order given), and every definition's fate, the file's own included."""
    given = [d for d in definitions if d.provider is not Provider.FILE]
    items: list[Item] = []
    candidates: list[Definition] = []
    for definition in given:
        error = definition.error or _placement_error(file, definition)
        if error is not None:
            items.append(_item(definition, ItemStatus.ERROR, error))
        else:
            candidates.append(definition)
    by_name: dict[str, list[Definition]] = {}
    for definition in [*file_definitions(file), *candidates]:
        by_name.setdefault(definition.name, []).append(definition)
    added: dict[str, list[BackendConfig]] = {}
    for name, found in by_name.items():
        found.sort(key=lambda d: PRECEDENCE.index(d.provider))
        first = found[0]
        rivals = [d for d in found if d.provider is first.provider]
        if len(rivals) > 1:
            where = ", ".join(d.origin for d in rivals)
            for definition in found:
                items.append(
                    _item(
                        definition,
                        ItemStatus.CONFLICT,
                        f'backend "{name}" is defined {len(rivals)} times by '
                        f"{first.provider} ({where}); give each its own name",
                    )
                )
            continue
        items.append(_item(first, ItemStatus.OK))
        if first.provider is not Provider.FILE:
            assert first.backend is not None  # definitions without an error have one
            added.setdefault(first.pool, []).append(first.backend)
        for loser in found[1:]:
            items.append(
                _item(
                    loser,
                    ItemStatus.CONFLICT,
                    f'backend "{name}" is already defined by {first.provider} '
                    f"({first.origin}, pool {first.pool}); the {first.provider}'s definition "
                    f"is served and this one is not: rename one of them",
                )
            )
    # The providers' backends' limits are divided among instances as the file's are.
    pools: dict[str, PoolConfig] = {
        name: dataclasses.replace(
            pool,
            backends=(
                *pool.backends,
                *(per_instance(backend, pool.instances) for backend in added[name]),
            ),
        )
        if name in added
        else pool
        for name, pool in file.pools.items()
    }
    snapshot = with_pools(file, pools) if added else file
    items.sort(key=lambda i: (i.pool, i.name, PRECEDENCE.index(i.provider), i.origin))
    return Merged(snapshot=snapshot, items=tuple(items))


def _placement_error(file: Snapshot, definition: Definition) -> str | None:
    """Why a provider's backend cannot join its pool, or None."""
    pool = file.pools.get(definition.pool)
    if pool is None:
        known = ", ".join(file.pools) or "none"
        return (
            f'pool "{definition.pool}" is not defined in the file (pools: {known}); pools come '
            "from the file, providers add backends to them"
        )
    backend = definition.backend
    if backend is None:
        return "no backend"
    if backend.dicom is None and backend.store is None:
        users = [r.name for r in file.routes if r.pool.name == pool.name]
        if users:
            return (
                f'pool "{pool.name}" takes DICOM (route {users[0]}), and backend '
                f'"{backend.name}" has no DICOM address; give it a DICOM port and AE title '
                "(or store_via)"
            )
    return None


def _item(definition: Definition, status: ItemStatus, error: str | None = None) -> Item:
    return Item(
        name=definition.name,
        pool=definition.pool,
        provider=definition.provider,
        origin=definition.origin,
        status=status,
        error=error,
    )
