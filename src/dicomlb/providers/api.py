"""The admin API provider: backends added through `POST /api/v1/pools/{pool}/backends`.

They belong to the API, not to the file: a reload from the file keeps them, and with a
`state_dir` they are written to `api-backends.json` there (a new file fsynced, then renamed
over the old one, then the directory fsynced: a crash leaves the old list or the new one,
never half of one), so a restart keeps them too. They leave only by `DELETE
/api/v1/backends/{name}`. Each entry is kept as it was posted and validated again when
the configuration is merged, so an entry that no longer fits (its pool gone from the file)
is reported and kept, and comes back with its pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomlb.config import ConfigError, build_backend
from dicomlb.providers.merge import Definition, Provider

__all__ = [
    "STATE_FILE",
    "ApiBackend",
    "ApiStateError",
    "decode",
    "definitions",
    "encode",
    "load",
    "save",
]

STATE_FILE = "api-backends.json"
_VERSION = 1


class ApiStateError(ValueError):
    """The state file cannot be read; the text names it and what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiBackend:
    """One backend added through the API: its pool and the mapping as posted."""

    pool: str
    data: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))


def definitions(entries: Iterable[ApiBackend]) -> list[Definition]:
    """The API provider's definitions, each entry validated as the file's backends are."""
    found = []
    for entry in entries:
        try:
            backend = build_backend(entry.data, f"pools.{entry.pool}.backends[+]", "api")
        except ConfigError as err:
            found.append(
                Definition(
                    provider=Provider.API,
                    name=entry.name,
                    pool=entry.pool,
                    origin="api",
                    error=str(err),
                )
            )
            continue
        found.append(
            Definition(
                provider=Provider.API,
                name=backend.name,
                pool=entry.pool,
                origin="api",
                backend=backend,
            )
        )
    return found


def encode(entries: Iterable[ApiBackend]) -> bytes:
    document = {
        "version": _VERSION,
        "backends": [{"pool": e.pool, "backend": dict(e.data)} for e in entries],
    }
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def decode(text: bytes, where: str) -> list[ApiBackend]:
    """The entries of a state file's bytes. Raises ApiStateError."""
    hint = f"; fix {where} or move it away (its backends are then forgotten)"
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiStateError(f"{where} is not JSON ({err}){hint}") from None
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ApiStateError(f"{where} is not a version {_VERSION} list of backends{hint}")
    listed = document.get("backends")
    if not isinstance(listed, list):
        raise ApiStateError(f"{where}: backends is not a list{hint}")
    entries = []
    for i, item in enumerate(listed):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("pool"), str)
            or not isinstance(item.get("backend"), dict)
        ):
            raise ApiStateError(f"{where}: backends[{i}] is not {{pool, backend}}{hint}")
        entries.append(ApiBackend(pool=item["pool"], data=item["backend"]))
    return entries


def load(state_dir: str | None) -> list[ApiBackend]:
    """The entries kept in `state_dir` (none without one, or before the first). Raises
    ApiStateError."""
    if state_dir is None:
        return []
    path = Path(state_dir) / STATE_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise ApiStateError(f"cannot read {path}: {err.strerror}") from None
    return decode(text, str(path))


def save(state_dir: str, entries: Iterable[ApiBackend]) -> None:
    """Write the entries atomically and durably. Raises OSError."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    temporary = directory / f".{STATE_FILE}.tmp"
    with temporary.open("wb") as file:
        file.write(encode(entries))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
