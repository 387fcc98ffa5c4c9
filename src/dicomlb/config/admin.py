"""`listeners.admin` of the config file: bind, auth (SHA-256 digests of tokens and
passwords) and allowed hosts, built into an `AdminListenerConfig`."""

from __future__ import annotations

import hashlib
import re
import types
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from dicomlb.config.tools import (
    BIND_SCHEMA,
    Fail,
    Model,
    defaults,
    host_port,
    is_loopback,
    parse_bind,
    show,
    unset,
)
from dicomlb.snapshot import AdminAuth, AdminListenerConfig

__all__ = ["AdminAuthModel", "AdminListenerModel", "build_admin", "hash_secret"]


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest of a password or bearer token, as the config file wants it."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HASH_HINT = "write the SHA-256 hex digest (64 characters), made with `dicomlb hash-password`"


def _check_sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256_HEX.fullmatch(text):
        raise ValueError(f"{show(value)} is not a SHA-256 hex digest; {_HASH_HINT}")
    return text


Sha256 = Annotated[str, Field(strict=True), AfterValidator(_check_sha256)]


class AdminAuthModel(Model):
    """`listeners.admin.auth`: who may use the API and dashboard (there is no default
    password)."""

    bearer_tokens_sha256: list[Sha256] | None = Field(
        default=None,
        description="SHA-256 hex digests of accepted bearer tokens (`dicomlb hash-password`).",
    )
    basic: dict[str, Sha256] | None = Field(
        default=None, description="`{user: SHA-256 hex digest of the password}` for basic auth."
    )


_ADMIN = defaults(AdminListenerConfig)


class AdminListenerModel(Model):
    """`listeners.admin`: dashboard, API, `/metrics` and probes; absent: none."""

    bind: Annotated[tuple[str, int], BeforeValidator(parse_bind), BIND_SCHEMA] | None = unset(
        "Address and port of the admin HTTP listener; one that is not loopback needs `auth`.",
        host_port(_ADMIN["host"], _ADMIN["port"]),
    )
    auth: AdminAuthModel | None = Field(
        default=None, description="Tokens and passwords; none: open, on a loopback bind only."
    )
    allowed_hosts: list[Annotated[str, Field(strict=True, min_length=1)]] | None = Field(
        default=None,
        description="Without `auth`, the Host names a request may carry besides localhost and "
        "IP literals (DNS-rebinding protection: others get 421).",
    )


def build_admin(spec: AdminListenerModel | None, fail: Fail) -> AdminListenerConfig | None:
    """The admin listener (None when not configured); a non-loopback bind without auth is an
    issue."""
    if spec is None:
        return None
    kwargs: dict[str, Any] = {}
    if spec.bind is not None:
        kwargs["host"], kwargs["port"] = spec.bind
    auth = AdminAuth()
    if spec.auth is not None:
        auth = AdminAuth(
            bearer_tokens_sha256=frozenset(spec.auth.bearer_tokens_sha256 or ()),
            basic=types.MappingProxyType(dict(spec.auth.basic or {})),
        )
    hosts = frozenset(h.lower().rstrip(".") for h in spec.allowed_hosts or ())
    config = AdminListenerConfig(auth=auth, allowed_hosts=hosts, **kwargs)
    if not auth.required and not is_loopback(config.host):
        fail(
            "listeners.admin.auth",
            f"the admin listener binds {host_port(config.host, config.port)}, which is not "
            "a loopback address, and has no auth; add auth: {bearer_tokens_sha256: [...]} "
            "or auth: {basic: {USER: SHA256}} (see `dicomlb hash-password`), or bind "
            "127.0.0.1",
        )
    return config
