"""Install configuration: what a running process keeps until it restarts (pure).

Listener binds, which data listeners exist, the spool, `state_dir`, `providers` and `workers`
are fixed when the process starts (Traefik's static configuration); routes, pools, backends,
middlewares and listener limits are dynamic, and a reload applies them. `pin` gives the
snapshot a reload applies, the running install configuration kept in it, and names each install
key whose new value waits for a restart: a reload is never half-applied, and never silent.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from dicomlb.snapshot import DicomListenerConfig, HttpListenerConfig, Snapshot

Listener = TypeVar("Listener", DicomListenerConfig, HttpListenerConfig)


def pin(running: Snapshot, loaded: Snapshot) -> tuple[Snapshot, tuple[str, ...]]:
    """`loaded` with `running`'s install configuration, and the keys that need a restart."""
    waiting: list[str] = []
    dicom = _listener("listeners.dicom", running.dicom, loaded.dicom, waiting)
    http = _listener("listeners.http", running.http, loaded.http, waiting)
    if (running.spool is None) != (loaded.spool is None):
        waiting.append("spool")
    elif running.spool is not None and loaded.spool is not None:
        waiting += [
            f"spool.{f.name}"
            for f in dataclasses.fields(running.spool)
            if getattr(running.spool, f.name) != getattr(loaded.spool, f.name)
        ]
    if running.state_dir != loaded.state_dir:
        waiting.append("state_dir")
    if running.providers != loaded.providers:
        waiting.append("providers")
    if running.workers != loaded.workers:
        waiting.append("workers")
    applied = dataclasses.replace(
        loaded,
        dicom=dicom,
        http=http,
        spool=running.spool,
        state_dir=running.state_dir,
        providers=running.providers,
        workers=running.workers,
    )
    return applied, tuple(waiting)


def _listener(
    key: str, running: Listener | None, loaded: Listener | None, waiting: list[str]
) -> Listener | None:
    """The listener settings to apply: the loaded ones on the running bind, or the running
    ones when the listener would come or go."""
    if (running is None) != (loaded is None):
        waiting.append(key)
        return running
    if running is None or loaded is None:
        return None
    if (loaded.host, loaded.port) != (running.host, running.port):
        waiting.append(f"{key}.bind")
        return dataclasses.replace(loaded, host=running.host, port=running.port)
    return loaded
