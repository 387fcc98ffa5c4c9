"""The bridge's part of a backend in the config file: `store_via`, `stow_path`,
`stow_batch`, `auth`; built into a `HttpStoreConfig`. Errors name the field."""

from __future__ import annotations

import base64
import os
import ssl
from typing import Annotated

from pydantic import Field

from dicomlb.config.tools import Fail, Model
from dicomlb.snapshot import HttpAddress, HttpStoreConfig, StoreVia, TlsConfig
from dicomlb.tls import client_context

__all__ = ["BackendAuthModel", "BasicAuthModel", "build_store"]

_Text = Annotated[str, Field(strict=True, min_length=1)]
_EnvName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class BasicAuthModel(Model):
    """`basic: {user, password | password_env}`: HTTP basic auth toward the backend."""

    user: _Text = Field(description="The user name.")
    password: Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="The password, as written; give this or `password_env`."
    )
    password_env: _EnvName | None = Field(
        default=None,
        description="An environment variable holding the password, read when the "
        "configuration is loaded; unset or empty is an error.",
    )


class BackendAuthModel(Model):
    """`auth: {basic: {user, password | password_env}}` or `{bearer: TOKEN}` /
    `{bearer_env: NAME}`: credentials dicomlb presents to an HTTP backend."""

    basic: BasicAuthModel | None = Field(default=None, description="HTTP basic auth.")
    bearer: _Text | None = Field(
        default=None, description="A bearer token, sent as `Authorization: Bearer TOKEN`."
    )
    bearer_env: _EnvName | None = Field(
        default=None,
        description="An environment variable holding the bearer token, read when the "
        "configuration is loaded; unset or empty is an error.",
    )


def _from_env(name: str, path: str, fail: Fail) -> str | None:
    value = os.environ.get(name)
    if not value:
        fail(path, f"environment variable {name} is not set (or empty); export it before starting")
        return None
    return value


def _authorization(auth: BackendAuthModel, path: str, fail: Fail) -> tuple[str | None, str]:
    """The Authorization header value and a description without the secret."""
    given = [k for k in ("basic", "bearer", "bearer_env") if getattr(auth, k) is not None]
    if len(given) != 1:
        fail(path, "give exactly one of basic: {user, password}, bearer: TOKEN, bearer_env: NAME")
        return None, ""
    if auth.basic is not None:
        basic = auth.basic
        if (basic.password is None) == (basic.password_env is None):
            fail(f"{path}.basic", "give exactly one of password and password_env")
            return None, ""
        password = basic.password
        if basic.password_env is not None:
            password = _from_env(basic.password_env, f"{path}.basic.password_env", fail)
        if password is None:
            return None, ""
        token = base64.b64encode(f"{basic.user}:{password}".encode()).decode("ascii")
        return f"Basic {token}", f"basic user={basic.user}"
    bearer = auth.bearer
    if auth.bearer_env is not None:
        bearer = _from_env(auth.bearer_env, f"{path}.bearer_env", fail)
    return (f"Bearer {bearer}", "bearer") if bearer else (None, "")


def build_store(
    *,
    path: str,
    http: HttpAddress | None,
    store_via: StoreVia | None,
    stow_path: str | None,
    stow_batch: int | None,
    auth: BackendAuthModel | None,
    tls: TlsConfig | None,
    fail: Fail,
) -> HttpStoreConfig | None:
    """The backend's `HttpStoreConfig` (None without `store_via`); issues go to `fail`."""
    if store_via is None:
        for key, value in (("stow_path", stow_path), ("stow_batch", stow_batch), ("auth", auth)):
            if value is not None:
                fail(f"{path}.{key}", f"{key} is used only with store_via; add store_via: stow_rs")
        return None
    if http is None:
        fail(
            f"{path}.store_via",
            "store_via sends C-STOREs over HTTP, so the backend needs http: http://host:port",
        )
        return None
    if store_via is not StoreVia.STOW_RS:
        for key, value in (("stow_path", stow_path), ("stow_batch", stow_batch)):
            if value is not None:
                fail(f"{path}.{key}", f"{key} is used only with store_via: stow_rs")
    authorization, auth_text = (
        _authorization(auth, f"{path}.auth", fail) if auth is not None else (None, "")
    )
    context: ssl.SSLContext | None = None
    if http.scheme == "https":
        if tls is not None:
            context = tls.context
        else:
            try:
                context = client_context(ca=None, cert=None, key=None, verify=True)
            except (OSError, ssl.SSLError) as err:  # pragma: no cover - the system's CAs
                fail(f"{path}.tls", f"cannot set up TLS: {err}")
    extra: dict[str, object] = {}
    if stow_path is not None:
        extra["stow_path"] = stow_path.rstrip("/")
    if stow_batch is not None:
        extra["stow_batch"] = stow_batch
    return HttpStoreConfig(
        via=store_via,
        authorization=authorization,
        auth_text=auth_text,
        context=context,
        **extra,  # type: ignore[arg-type]
    )
