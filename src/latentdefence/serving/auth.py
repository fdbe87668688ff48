"""API keys: who may call which route. Keys are compared in constant time (`hmac.compare_digest`).

A request carries its key as ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or HTTP Basic with the
key as the password (what a browser sends for the review console). Health probes stay open; the audit
log, the review console and the metrics take the admin key (the API key when no admin key is set); every
other route takes the API key or the admin key.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .v2 import error_json

OPEN_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready")
ADMIN_PREFIXES = ("/metrics", "/review", "/v1/audit")


@dataclass(frozen=True)
class AccessConfig:
    """Keys of the service; None leaves those routes open (only safe on loopback)."""

    api_key: str | None = None             # prediction, model card, /v2, OpenAPI docs
    admin_key: str | None = None           # /metrics, /review, /v1/audit*; defaults to api_key

    def required(self, path: str) -> list[str]:
        """The keys any one of which opens `path` (empty: open)."""
        if path in OPEN_PATHS:
            return []
        admin = self.admin_key or self.api_key
        if path.startswith(ADMIN_PREFIXES):
            return [admin] if admin else []
        return [key for key in (self.api_key, self.admin_key) if key] if self.api_key else []


def check_binding(host: str, access: AccessConfig, insecure: bool) -> None:
    """Refuse to listen beyond loopback without an API key unless `insecure` says so."""
    if access.api_key or insecure or _loopback(host):
        return
    raise ValueError(f"refusing to serve on {host!r} without an API key: anyone who reaches it could query the "
                     "model and read the audit log; set --api-key (or LATENTDEFENCE_API_KEY), or pass --insecure")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries (Bearer, X-API-Key or Basic password), else None."""
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):   # binascii.Error, and non-ASCII in the header: no key, a 401
            return None
    return None


def matches(key: str | None, allowed: list[str]) -> bool:
    """Whether `key` is one of `allowed`, compared in constant time (every key is compared)."""
    given = (key or "").encode()
    return key is not None and sum(hmac.compare_digest(given, a.encode()) for a in allowed) > 0


class RequireKey:
    """ASGI middleware: 401 without a key, 403 with a wrong one, on every route `access` guards."""

    def __init__(self, app: Callable[..., Awaitable[None]], access: AccessConfig) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        allowed = self.access.required(scope["path"]) if scope["type"] == "http" else []
        if allowed:
            key = presented_key(dict(scope["headers"]))
            if not matches(key, allowed):
                status, detail = (401, "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)") \
                    if key is None else (403, "wrong API key for this route")
                response = error_json(scope["path"], detail, status,
                                      {"WWW-Authenticate": 'Basic realm="latentdefence"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
