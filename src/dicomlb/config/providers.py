"""`providers` of the config file: where backends come from beside the file itself (the
admin API is always one), built into a `ProvidersConfig`. Install configuration: a change
waits for a restart."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from dicomlb.config.tls import BackendTlsModel, backend_tls
from dicomlb.config.tools import ConfigIssue, Fail, Model, defaults, unset, written
from dicomlb.snapshot import DockerProviderConfig, ProvidersConfig

__all__ = ["ProvidersModel", "build_providers"]

_DOCKER = defaults(DockerProviderConfig)
_Text = Annotated[str, Field(strict=True, min_length=1)]


class DockerProviderModel(Model):
    """`providers.docker`: running containers whose labels (`dicomlb.pool`, …) make them
    backends of pools the file defines; watched through the Engine API's event stream."""

    endpoint: _Text | None = unset(
        "The Docker Engine API: `unix:///path/to/docker.sock` or `tcp://host:port` (with "
        "`tls` for a TLS-protected daemon).",
        _DOCKER["endpoint"],
    )
    tls: BackendTlsModel | None = Field(
        default=None,
        description="TLS toward a `tcp://` endpoint: `ca` to verify the daemon, `cert` and "
        "`key` of the client (as `DOCKER_CERT_PATH`'s ca.pem, cert.pem, key.pem).",
    )
    exposed_by_default: StrictBool | None = unset(
        "`false`: only containers labelled `dicomlb.enable=true` become backends (Traefik's "
        "exposedByDefault); `true`: every container with a `dicomlb.pool` label, unless "
        "labelled `dicomlb.enable=false`.",
        _DOCKER["exposed_by_default"],
    )
    network: _Text | None = Field(
        default=None,
        description="For containers on several networks: the network whose address "
        "dicomlb uses (a container's `dicomlb.network` label overrides it).",
    )
    host_address: _Text | None = unset(
        "The address of containers on the host network (`network_mode: host`).",
        _DOCKER["host_address"],
    )


class ProvidersModel(Model):
    """`providers`: backends beside the file's. The file provider is implied, and so is the
    admin API's; pools, routes and middlewares come from the file only."""

    docker: DockerProviderModel | None = Field(
        default=None, description="Backends from Docker containers' labels."
    )


def build_providers(spec: ProvidersModel | None, fail: Fail) -> ProvidersConfig:
    if spec is None or spec.docker is None:
        return ProvidersConfig()
    docker = spec.docker
    issues: list[ConfigIssue] = []
    tls = backend_tls(docker.tls, "providers.docker.tls", issues)
    for issue in issues:
        fail(issue.path, issue.message)
    endpoint = docker.endpoint or _DOCKER["endpoint"]
    scheme = endpoint.partition("://")[0]
    if scheme not in ("unix", "tcp", "http", "https"):
        fail(
            "providers.docker.endpoint",
            f'"{endpoint}" is not a Docker endpoint; write unix:///var/run/docker.sock or '
            "tcp://host:2376",
        )
    if tls is not None and scheme == "unix":
        fail("providers.docker.tls", "tls goes with a tcp:// endpoint, not a unix socket")
    return ProvidersConfig(
        docker=DockerProviderConfig(tls=tls, **written(docker, "tls")),
    )
