"""Orthanc awareness: Orthanc nodes keep per-node state that later requests must reach.

- Jobs and queries: a response such as `{"ID": "4a2f…", "Path": "/jobs/4a2f…"}` (also
  `/queries/…`, `/transfers/push/…`) tells which node owns the resource; later requests
  whose path starts with that resource path go there (DESIGN.md decision 10).
- Transfers plugin push: every request with the same `sender-transfer-id` header goes to
  one node, chosen first by rendezvous hashing on the id over the available nodes, so
  several dicomlb instances behind one address pin a transfer to the same node.
- A job or query this instance has not seen (another dicomlb instance created it, or a
  client asked a node directly) is found by asking the nodes (`GET /jobs/{id}`,
  `GET /queries/{id}`: the one answering 200 owns it), then remembered (`is_locatable`).
- `/transfers/push/{id}/commit` may take long: the shell uses the pool's commit timeout.

Pure: the shell feeds response bodies it already has (small JSON only).
"""

from __future__ import annotations

import json
import re

from dicomlb.lru import BoundedLru

__all__ = [
    "LEARN_LIMIT",
    "OwnerTable",
    "is_commit",
    "is_learnable",
    "is_locatable",
    "resource_of",
]

LEARN_LIMIT = 65536  # JSON responses larger than this are not parsed for owners
TRANSFER_HEADER = b"sender-transfer-id"
_RESOURCE = re.compile(r"^/(jobs|queries|transfers/push)/([^/?]+)")
_COMMIT = re.compile(r"^/transfers/push/[^/]+/commit/?$")


def resource_of(path: str) -> str | None:
    """`/jobs/ID`, `/queries/ID` or `/transfers/push/ID` when `path` is inside one."""
    found = _RESOURCE.match(path)
    return found.group(0) if found else None


def is_locatable(resource: str) -> bool:
    """Whether a node answers `GET resource` with 200 exactly when it owns it: jobs and
    queries do; a transfer has no such path (its id is pinned by hashing instead)."""
    return resource.startswith(("/jobs/", "/queries/"))


def is_commit(path: str) -> bool:
    return _COMMIT.match(path) is not None


def is_learnable(content_type: bytes | None, length: int | None) -> bool:
    """A response worth reading for an owner: JSON, small, its length known or not."""
    if content_type is None or b"json" not in content_type.lower():
        return False
    return length is None or length <= LEARN_LIMIT


class OwnerTable:
    """Resource path / transfer id → backend name, most recently used last, bounded."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._owners: BoundedLru[str, str] = BoundedLru(capacity)

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, key: str) -> str | None:
        return self._owners.get(key)

    def remember(self, key: str, backend: str) -> None:
        self._owners.put(key, backend)

    def learn(self, body: bytes, backend: str) -> list[str]:
        """Read a JSON response of `backend`; remember the resources it created. Returns
        their paths."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return []
        items = doc if isinstance(doc, list) else [doc]
        learned = []
        for item in items:
            if not isinstance(item, dict):
                continue
            path = item.get("Path")
            if isinstance(path, str) and item.get("ID") and (found := resource_of(path)):
                self.remember(found, backend)
                learned.append(found)
        return learned
