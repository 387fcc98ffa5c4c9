"""`listeners.admin` of the config file: bind, auth (SHA-256 digests of tokens and
passwords) and allowed hosts, built into an `AdminListenerConfig`."""

from __future__ import annotations

import hashlib
import re
import types
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from dicomlb.config.tools import Fail, Model, host_port, is_loopback, parse_bind, show
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
    bearer_tokens_sha256: list[Sha256] | None = None
    basic: dict[str, Sha256] | None = None


class AdminListenerModel(Model):
    bind: Annotated[tuple[str, int], BeforeValidator(parse_bind)] | None = None
    auth: AdminAuthModel | None = None
    allowed_hosts: list[Annotated[str, Field(strict=True, min_length=1)]] | None = None


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
