"""Install configuration: what a running process keeps until it restarts (pure).

Listener binds, which data listeners exist, the spool and `state_dir` are fixed when the
process starts (Traefik's static configuration); routes, pools, backends, middlewares and
listener limits are dynamic, and a reload applies them. `pin` gives the snapshot a reload
applies, the running install configuration kept in it, and names each install key whose
new value waits for a restart: a reload is never half-applied, and never silent about it.
"""

from __future__ import annotations

import dataclasses

from dicomlb.snapshot import Snapshot


def pin(running: Snapshot, loaded: Snapshot) -> tuple[Snapshot, tuple[str, ...]]:
    """`loaded` with `running`'s install configuration, and the keys that need a restart."""
    waiting: list[str] = []
    dicom = loaded.dicom
    if (running.dicom is None) != (loaded.dicom is None):
        waiting.append("listeners.dicom")
        dicom = running.dicom
    elif running.dicom is not None and loaded.dicom is not None:
        bind = (running.dicom.host, running.dicom.port)
        if (loaded.dicom.host, loaded.dicom.port) != bind:
            waiting.append("listeners.dicom.bind")
            dicom = dataclasses.replace(loaded.dicom, host=bind[0], port=bind[1])
    http = loaded.http
    if (running.http is None) != (loaded.http is None):
        waiting.append("listeners.http")
        http = running.http
    elif running.http is not None and loaded.http is not None:
        bind = (running.http.host, running.http.port)
        if (loaded.http.host, loaded.http.port) != bind:
            waiting.append("listeners.http.bind")
            http = dataclasses.replace(loaded.http, host=bind[0], port=bind[1])
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
    applied = dataclasses.replace(
        loaded, dicom=dicom, http=http, spool=running.spool, state_dir=running.state_dir
    )
    return applied, tuple(waiting)
