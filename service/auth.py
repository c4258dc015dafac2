"""API keys: an admin key for changes (create, enroll, delete), a read key for queries.

Keys come from ``ADMIN_API_KEYS`` / ``READ_API_KEYS`` (comma-separated, so a key can be
rotated without downtime: add the new one, move clients, drop the old). A client sends
``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. An admin key may also read. With
no key configured at all the service is open, and says so loudly at start-up.
"""
from __future__ import annotations

import functools
import hmac
from typing import Callable, Literal, TypeVar

from flask import request

from recognizer.errors import AuthError, ForbiddenError

from .config import ServiceConfig
from .context import current_service

Role = Literal["read", "admin"]
F = TypeVar("F", bound=Callable)


def presented_key() -> str | None:
    """The key the client sent, if any (``X-API-Key`` wins over ``Authorization``)."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _matches(key: str, candidates: tuple[str, ...]) -> bool:
    # Compare against every candidate (no early exit) in constant time per comparison.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def valid_key(config: ServiceConfig, key: str) -> bool:
    """Whether ``key`` is one of the configured keys (admin or read)."""
    return _matches(key, config.admin_api_keys) | _matches(key, config.read_api_keys)


def check(config: ServiceConfig, role: Role) -> None:
    """Raise AuthError (401: no or unknown key) or ForbiddenError (403: read key, admin route)."""
    if config.open_mode:
        return
    key = presented_key()
    if key is None:
        raise AuthError("an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
    if _matches(key, config.admin_api_keys):
        return
    if _matches(key, config.read_api_keys):
        if role == "read":
            return
        raise ForbiddenError("this operation needs an admin API key; the key sent is a read-only key")
    raise AuthError("the API key is not valid")


def may_read(config: ServiceConfig) -> bool:
    """Whether this request may see read-only details (open mode, or a valid key sent)."""
    key = presented_key()
    return config.open_mode or (key is not None and valid_key(config, key))


def require(role: Role) -> Callable[[F], F]:
    """View decorator: the request must carry a key of ``role`` (or an admin key)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            check(current_service().config, role)
            return view(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]  # read by the OpenAPI test
        return wrapper  # type: ignore[return-value]

    return decorate


def startup_warnings(config: ServiceConfig) -> list[str]:
    """What an operator must hear about at start-up."""
    out = []
    if config.open_mode:
        out.append(
            "NO API KEYS CONFIGURED: every endpoint, including enroll and delete, is open to anyone "
            "who can reach this server. Set ADMIN_API_KEYS and READ_API_KEYS."
        )
    elif not config.admin_api_keys:
        out.append("READ_API_KEYS is set but ADMIN_API_KEYS is not: nobody can enroll or delete.")
    return out
