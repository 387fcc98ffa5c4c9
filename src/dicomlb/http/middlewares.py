"""Middlewares: named request / response adjustments attached to HTTP routes. Pure: the
shell passes the clock (`now`), nothing here does I/O.

Each middleware sees the request head (`RequestContext`) before a backend is chosen and may
rewrite its target or headers, or answer it itself (`LocalResponse`: 400, 401, 403, 413,
429). Response header edits are recorded on the context and applied to the backend's head.

The path they see is the normalised one routes matched (`paths.normalize_target`); a path
they rewrite is normalised again, so no rewrite sends the backend a `..` or `//` that the
routes and the middlewares after it did not see (400 when it cannot be).

Kinds (YAML `middlewares.<name>.<kind>`): `strip_prefix`, `add_prefix`, `replace_path`,
`headers`, `forwarded`, `basic_auth`, `ip_filter`, `max_body`, `rate_limit`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dicomlb.http.h1 import LocalResponse
from dicomlb.http.paths import EncodedSlashes, PathError, normalize_path
from dicomlb.lru import BoundedLru
from dicomlb.snapshot import MiddlewareConfig

__all__ = [
    "KINDS",
    "Middleware",
    "RequestContext",
    "build_middleware",
    "hash_password",
    "verify_password",
]

HeaderList = list[tuple[bytes, bytes]]


class RequestContext:
    """The request head as middlewares see and change it."""

    __slots__ = (
        "client_ip",
        "headers",
        "host",
        "max_body",
        "method",
        "response_edits",
        "scheme",
        "slashes",
        "target",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        headers: HeaderList,
        client_ip: str,
        host: bytes = b"",
        scheme: bytes = b"http",
        slashes: EncodedSlashes = EncodedSlashes.REJECT,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.client_ip = client_ip
        self.host = host
        self.scheme = scheme
        self.slashes = slashes  # the listener's `encoded_slashes`
        self.max_body: int | None = None  # enforced on the body by the shell
        self.response_edits: list[Callable[[HeaderList], None]] = []

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    def set_path(self, path: bytes) -> LocalResponse | None:
        """Rewrite the path (normalised again); a 400 to answer when it cannot be."""
        try:
            path = normalize_path(path, slashes=self.slashes)
        except PathError as err:
            return LocalResponse(status=400, body=f"rewritten path refused: {err}\n".encode())
        _, mark, query = self.target.partition(b"?")
        self.target = path + mark + query
        return None


class Middleware(Protocol):
    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None: ...


def _remove(headers: HeaderList, names: frozenset[bytes]) -> None:
    headers[:] = [(k, v) for k, v in headers if k.lower() not in names]


def _set(headers: HeaderList, values: Sequence[tuple[bytes, bytes]]) -> None:
    _remove(headers, frozenset(k.lower() for k, _ in values))
    headers.extend(values)


class StripPrefix:
    """Remove the first matching prefix from the path (`/orthanc/system` → `/system`)."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(p.rstrip("/").encode() for p in prefixes)

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        path = ctx.path
        for prefix in self.prefixes:
            if path == prefix or path.startswith(prefix + b"/"):
                return ctx.set_path(path[len(prefix) :] or b"/")
        return None


class AddPrefix:
    """Put a prefix before the path (`/system` → `/orthanc/system`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/").encode()

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        return ctx.set_path(self.prefix + ctx.path)


class ReplacePath:
    """Rewrite the path with a regular expression (`re.sub`, `\\1` groups)."""

    def __init__(self, regex: str, replacement: str) -> None:
        self.pattern = re.compile(regex.encode())
        self.replacement = replacement.encode()

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        return ctx.set_path(self.pattern.sub(self.replacement, ctx.path))


class Headers:
    """Set / remove request and response header fields."""

    def __init__(self, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        self.req_set = [(k.encode(), str(v).encode()) for k, v in request.get("set", {}).items()]
        self.req_remove = frozenset(k.lower().encode() for k in request.get("remove", []))
        self.rsp_set = [(k.encode(), str(v).encode()) for k, v in response.get("set", {}).items()]
        self.rsp_remove = frozenset(k.lower().encode() for k in response.get("remove", []))

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        if self.req_remove:
            _remove(ctx.headers, self.req_remove)
        if self.req_set:
            _set(ctx.headers, self.req_set)
        if self.rsp_remove or self.rsp_set:
            ctx.response_edits.append(self._edit_response)
        return None

    def _edit_response(self, headers: HeaderList) -> None:
        if self.rsp_remove:
            _remove(headers, self.rsp_remove)
        if self.rsp_set:
            _set(headers, self.rsp_set)


class Forwarded:
    """X-Forwarded-For (appended), -Host, -Proto and RFC 7239 Forwarded."""

    def __init__(self, x_forwarded: bool = True, forwarded: bool = True) -> None:
        self.x_forwarded = x_forwarded
        self.forwarded = forwarded

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        ip = ctx.client_ip.encode()
        headers = ctx.headers
        if self.x_forwarded:
            previous = b", ".join(v for k, v in headers if k.lower() == b"x-forwarded-for")
            _set(
                headers,
                [
                    (b"X-Forwarded-For", previous + b", " + ip if previous else ip),
                    (b"X-Forwarded-Host", ctx.host),
                    (b"X-Forwarded-Proto", ctx.scheme),
                ],
            )
        if self.forwarded:
            node = b'"[' + ip + b']"' if b":" in ip else ip
            element = b"for=" + node + b";host=" + _quoted(ctx.host) + b";proto=" + ctx.scheme
            previous = b", ".join(v for k, v in headers if k.lower() == b"forwarded")
            _set(headers, [(b"Forwarded", previous + b", " + element if previous else element)])
        return None


def _quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# --- basic auth -----------------------------------------------------------------------------

_PBKDF2 = "pbkdf2_sha256"


def hash_password(password: str, *, iterations: int = 200_000, salt: str | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`, the form `basic_auth` users take."""
    salt = salt or base64.b64encode(os.urandom(12)).decode()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{_PBKDF2}${iterations}${salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when `password` matches `hashed` (from `hash_password`)."""
    try:
        scheme, iterations, salt, expected = hashed.split("$")
    except ValueError:
        return False
    if scheme != _PBKDF2:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(base64.b64encode(digest).decode(), expected)


class BasicAuth:
    """RFC 7617 Basic authentication against hashed passwords; 401 with a challenge.

    Verified `Authorization` values are cached (a bounded LRU) so PBKDF2 runs once per
    credential, not once per request.
    """

    def __init__(self, users: Mapping[str, str], realm: str = "dicomlb", remove: bool = True):
        self.users = dict(users)
        self.remove = remove
        self.challenge = LocalResponse(
            status=401,
            body=b"authentication required\n",
            headers=((b"WWW-Authenticate", f'Basic realm="{realm}"'.encode()),),
        )
        self._good: BoundedLru[bytes, bool] = BoundedLru(1024)

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        value = next((v for k, v in ctx.headers if k.lower() == b"authorization"), None)
        if value is None or not self._valid(value):
            return self.challenge
        if self.remove:
            _remove(ctx.headers, frozenset((b"authorization",)))
        return None

    def _valid(self, value: bytes) -> bool:
        if self._good.get(value):
            return True
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = (
                base64.b64decode(token.strip(), validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None or not verify_password(password, hashed):
            return False
        self._good.put(value, True)
        return True


# --- client limits --------------------------------------------------------------------------


class IpFilter:
    """Allow / deny lists of addresses or networks; deny wins; 403."""

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.deny = [ipaddress.ip_network(d, strict=False) for d in deny]
        self.refusal = LocalResponse(status=403, body=b"forbidden: address not allowed\n")

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        try:
            ip = ipaddress.ip_address(ctx.client_ip)
        except ValueError:
            return self.refusal
        if any(ip in net for net in self.deny):
            return self.refusal
        if self.allow and not any(ip in net for net in self.allow):
            return self.refusal
        return None


class MaxBody:
    """Refuse bodies larger than `bytes`: 413 from Content-Length, or the connection is
    closed when a chunked body grows past it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refusal = LocalResponse(
            status=413, body=f"request body larger than {limit} bytes\n".encode(), close=True
        )

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        length = next((v for k, v in ctx.headers if k.lower() == b"content-length"), None)
        if length is not None and int(length) > self.limit:
            return self.refusal
        ctx.max_body = self.limit if ctx.max_body is None else min(ctx.max_body, self.limit)
        return None


class RateLimit:
    """Token bucket per client address: `average` requests per `period`, bursts of `burst`;
    429 with Retry-After."""

    def __init__(self, average: float, period: float = 1.0, burst: int = 0) -> None:
        self.rate = average / period  # tokens per second
        self.burst = float(burst or max(1, int(average)))
        self._buckets: BoundedLru[str, tuple[float, float]] = BoundedLru(100_000)

    def request(self, ctx: RequestContext, now: float) -> LocalResponse | None:
        tokens, last = self._buckets.pop(ctx.client_ip) or (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets.put(ctx.client_ip, (tokens, now))
        if allowed:
            return None
        wait = max(1, int((1.0 - tokens) / self.rate + 0.999))
        return LocalResponse(
            status=429,
            body=b"too many requests from this address\n",
            headers=((b"Retry-After", b"%d" % wait),),
        )


KINDS: dict[str, Callable[..., Middleware]] = {
    "strip_prefix": StripPrefix,
    "add_prefix": AddPrefix,
    "replace_path": ReplacePath,
    "headers": Headers,
    "forwarded": Forwarded,
    "basic_auth": BasicAuth,
    "ip_filter": IpFilter,
    "max_body": MaxBody,
    "rate_limit": RateLimit,
}


def build_middleware(config: MiddlewareConfig) -> Middleware:
    """A running middleware from its validated config."""
    return KINDS[config.kind](**config.options)
