"""A container's labels → a backend definition (pure): what the Docker provider decides.

    dicomlb.enable=true            opt in (needed when exposed_by_default is false)
    dicomlb.pool=workers           the pool (defined in the file) the backend joins
    dicomlb.dicom.port=4242        with dicomlb.dicom.aet=ORTHANC: the DICOM address
    dicomlb.http.port=8042         the HTTP address (http://ADDRESS:PORT)
    dicomlb.weight=2, dicomlb.max_associations=8, dicomlb.max_pdu=16384,
    dicomlb.store_via=orthanc_rest, dicomlb.name=NAME (default: the container's name),
    dicomlb.network=NET            which network's address, for a container on several

The address is the container's on its network (or `host_address` on the host network).
A container that is not running, is being stopped, or whose Docker health check is not
(yet) `healthy` gives no backend: it leaves its pool, or has not joined it yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dicomlb.config import ConfigError, build_backend
from dicomlb.providers.merge import Definition, Provider
from dicomlb.snapshot import DockerProviderConfig

__all__ = [
    "LABELS",
    "PREFIX",
    "STOP_SIGNALS",
    "Container",
    "container_of",
    "definition",
    "stop_signalled",
]

PREFIX = "dicomlb."
# label → what it sets, for errors and the documentation's table.
LABELS: Mapping[str, str] = {
    "dicomlb.enable": "`true` to make the container a backend (`false` to keep it out)",
    "dicomlb.pool": "the pool, defined in the file, the backend joins (required)",
    "dicomlb.name": "the backend's name (default: the container's name)",
    "dicomlb.dicom.port": "the port of the container's DICOM SCP",
    "dicomlb.dicom.aet": "the AE title of that SCP (required with `dicomlb.dicom.port`)",
    "dicomlb.http.port": "the port of the container's HTTP server (Orthanc REST, DICOMweb)",
    "dicomlb.weight": "share of the `weighted` strategy",
    "dicomlb.max_associations": "associations dicomlb opens to it at most",
    "dicomlb.max_pdu": "the largest P-DATA-TF dicomlb accepts from it, in bytes",
    "dicomlb.store_via": "`orthanc_rest` or `stow_rs`: C-STOREs over HTTP",
    "dicomlb.network": "the network whose address is used (overrides the provider's)",
}
_NUMBERS = ("dicomlb.weight", "dicomlb.max_associations", "dicomlb.max_pdu")
# A backend field's error → the label that set it.
_FIELD_LABEL = {
    "name": "dicomlb.name",
    "dicom": "dicomlb.dicom.aet",
    "http": "dicomlb.http.port",
    "weight": "dicomlb.weight",
    "max_associations": "dicomlb.max_associations",
    "max_pdu": "dicomlb.max_pdu",
    "store_via": "dicomlb.store_via",
}
_STOP_HEALTH = frozenset({"starting", "unhealthy"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """What the Engine API says about one container (its inspect document, in part)."""

    id: str
    name: str  # without Docker's leading "/"
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = True
    stopping: bool = False  # a stop signal was sent: it leaves before it dies
    health: str | None = None  # Docker health check: starting | healthy | unhealthy; None: none
    host_network: bool = False
    networks: Mapping[str, str] = field(default_factory=dict)  # network → IP address

    @property
    def origin(self) -> str:
        return f"container {self.name} ({self.id[:12]})"


class _LabelError(ValueError):
    def __init__(self, label: str, message: str) -> None:
        super().__init__(f"{label}: {message}")


def definition(container: Container, settings: DockerProviderConfig) -> Definition | None:
    """The backend `container`'s labels define, an error naming the label, or None when the
    container is not one of dicomlb's (not opted in) or not serving now."""
    labels = container.labels
    if not _exposed(labels, settings):
        return None
    if not container.running or container.stopping or container.health in _STOP_HEALTH:
        return None
    name = labels.get("dicomlb.name", container.name)
    pool = labels.get("dicomlb.pool", "")
    try:
        data = _backend_data(container, settings, name)
    except _LabelError as err:
        return Definition(
            provider=Provider.DOCKER,
            name=name,
            pool=pool,
            origin=container.origin,
            error=f"{container.origin}: {err}",
        )
    try:
        backend = build_backend(data, "labels")
    except ConfigError as err:
        found = err.issues[0] if err.issues else None
        field_name = found.path.removeprefix("labels.").partition(".")[0] if found else ""
        label = _FIELD_LABEL.get(field_name, "dicomlb.*")
        message = found.message if found else str(err)
        return Definition(
            provider=Provider.DOCKER,
            name=name,
            pool=pool,
            origin=container.origin,
            error=f"{container.origin}: {label}: {message}",
        )
    return Definition(
        provider=Provider.DOCKER, name=name, pool=pool, origin=container.origin, backend=backend
    )


def _exposed(labels: Mapping[str, str], settings: DockerProviderConfig) -> bool:
    enable = labels.get("dicomlb.enable")
    if enable is not None and enable.strip().lower() in ("false", "0", "no"):
        return False
    if settings.exposed_by_default:
        return "dicomlb.pool" in labels or enable is not None
    return enable is not None


def _backend_data(
    container: Container, settings: DockerProviderConfig, name: str
) -> dict[str, object]:
    """The backend mapping (as the file's) the labels describe. Raises _LabelError."""
    labels = container.labels
    for label in labels:
        if label.startswith(PREFIX) and label not in LABELS:
            raise _LabelError(label, f"unknown label; dicomlb's are {', '.join(LABELS)}")
    enable = labels.get("dicomlb.enable")
    if enable is not None and enable.strip().lower() not in ("true", "1", "yes"):
        raise _LabelError("dicomlb.enable", f'"{enable}" is not true or false')
    if not labels.get("dicomlb.pool"):
        raise _LabelError("dicomlb.pool", "missing; name the pool (defined in the file) to join")
    address = _address(container, settings)
    data: dict[str, object] = {"name": name}
    dicom_port = _port(labels, "dicomlb.dicom.port")
    aet = labels.get("dicomlb.dicom.aet")
    if dicom_port is not None:
        if not aet:
            raise _LabelError(
                "dicomlb.dicom.aet", "missing; give the AE title the container's SCP answers to"
            )
        data["dicom"] = f"{aet}@{_host(address)}:{dicom_port}"
    elif aet is not None:
        raise _LabelError("dicomlb.dicom.port", "missing; dicomlb.dicom.aet needs the port")
    http_port = _port(labels, "dicomlb.http.port")
    if http_port is not None:
        data["http"] = f"http://{_host(address)}:{http_port}"
    if dicom_port is None and http_port is None:
        raise _LabelError(
            "dicomlb.dicom.port",
            "the container has no address for dicomlb; label dicomlb.dicom.port (with "
            "dicomlb.dicom.aet) and / or dicomlb.http.port",
        )
    for label in _NUMBERS:
        if label in labels:
            data[label.removeprefix(PREFIX)] = _number(labels[label], label)
    if "dicomlb.store_via" in labels:
        data["store_via"] = labels["dicomlb.store_via"]
    return data


def _address(container: Container, settings: DockerProviderConfig) -> str:
    if container.host_network:
        return settings.host_address
    wanted = container.labels.get("dicomlb.network") or settings.network
    addresses = {net: ip for net, ip in container.networks.items() if ip}
    if wanted is not None:
        if wanted not in addresses:
            label = "dicomlb.network" if "dicomlb.network" in container.labels else "network"
            on = ", ".join(sorted(addresses)) or "none with an address"
            raise _LabelError(
                label if label == "dicomlb.network" else "providers.docker.network",
                f'the container is not on network "{wanted}" (its networks: {on})',
            )
        return addresses[wanted]
    if len(addresses) == 1:
        return next(iter(addresses.values()))
    if not addresses:
        raise _LabelError(
            "dicomlb.network", "the container has no network address; attach it to a network"
        )
    raise _LabelError(
        "dicomlb.network",
        f"the container is on several networks ({', '.join(sorted(addresses))}); label "
        "dicomlb.network or set providers.docker.network",
    )


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _port(labels: Mapping[str, str], label: str) -> int | None:
    text = labels.get(label)
    if text is None:
        return None
    port = _number(text, label)
    if not 1 <= port <= 65535:
        raise _LabelError(label, f"{port} is not a port; write 1 to 65535")
    return port


def _number(text: str, label: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit():
        raise _LabelError(label, f'"{text}" is not a whole number')
    return int(stripped)


def container_of(document: Mapping[str, Any], *, stopping: bool = False) -> Container:
    """A container from its inspect document (`GET /containers/{id}/json`)."""
    config = document.get("Config") or {}
    state = document.get("State") or {}
    health = state.get("Health") or {}
    host_config = document.get("HostConfig") or {}
    networks = (document.get("NetworkSettings") or {}).get("Networks") or {}
    return Container(
        id=str(document.get("Id", "")),
        name=str(document.get("Name", "")).lstrip("/"),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        running=bool(state.get("Running")) and not state.get("Paused"),
        stopping=stopping,
        health=health.get("Status") or None,
        host_network=host_config.get("NetworkMode") == "host",
        networks={
            str(name): str((net or {}).get("IPAddress") or "") for name, net in networks.items()
        },
    )


# What `docker stop` (and compose's scale-down) sends first: the container leaves its pool
# then, while its process still finishes the work in flight.
STOP_SIGNALS = frozenset({"15", "SIGTERM", "TERM", "2", "SIGINT", "3", "SIGQUIT", "9", "SIGKILL"})


def stop_signalled(event: Mapping[str, Any]) -> bool:
    """Whether a container event is a stop signal sent to it (`kill` with a stop signal)."""
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    return event.get("Action") == "kill" and str(attributes.get("signal", "")) in STOP_SIGNALS
