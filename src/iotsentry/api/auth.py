"""Bearer-token authentication and scopes of the REST API.

Tokens are ``iots_`` followed by 32 random bytes in URL-safe base64 (:func:`new_token`); the
store keeps only their SHA-256 (adequate for 256-bit random secrets: no salt or slow hash is
needed) and compares digests with :func:`hmac.compare_digest`. A token has a name (recorded as
the actor of every acknowledgement/assignment it makes), a scope, a creation time, an optional
expiry and can be revoked.

Scopes: ``read`` (every ``GET``) and ``admin`` (implies ``read``; needed by every mutating
route). Enforcement has two layers so that no route can be left open by mistake:

1. :class:`BearerAuthMiddleware` runs before routing: every HTTP request (existing route or
   not, OpenAPI schema and docs included) without a valid token gets **401**, and every request
   with a method other than ``GET``/``HEAD``/``OPTIONS`` needs the ``admin`` scope (**403**).
   The only exception is an explicit allow-list of exact paths served to ``GET`` without a
   token (``public_paths``: the dashboard's static shell, which holds no data; see
   :mod:`iotsentry.api.ui_static`).
2. Route dependencies (:func:`require_read`, :func:`require_admin`) check the scope again and
   declare the bearer scheme in the OpenAPI schema.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from iotsentry.api.errors import ApiError
from iotsentry.api.tokens import TOKEN_PREFIX, create_token, has_scope, hash_token, new_token, parse_duration
from iotsentry.store.base import StoreBase as Store
from iotsentry.store.records import TOKEN_SCOPES

__all__ = [
    "SAFE_METHODS",
    "TOKEN_PREFIX",
    "Authenticator",
    "BearerAuthMiddleware",
    "Principal",
    "create_token",
    "has_scope",
    "hash_token",
    "new_token",
    "parse_duration",
    "require_admin",
    "require_read",
    "require_scope",
]

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOUCH_EVERY_S = 60.0
_MAX_TOKEN_LEN = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, name (the actor recorded in audit trails) and scope."""

    token_id: int
    name: str
    scope: str


class Authenticator:
    """Checks bearer tokens against the store.

    Parameters
    ----------
    store
        Where the token hashes live.
    clock
        Returns the current time (tests pass a fake).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def authenticate(self, authorization: str | None) -> Principal | str:
        """The caller for an ``Authorization`` header value, or why it is refused (a message)."""
        if not authorization:
            return "missing bearer token"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "expected 'Authorization: Bearer <token>'"
        if len(token) > _MAX_TOKEN_LEN:
            return "invalid token"
        digest = hash_token(token)
        record = self.store.get_api_token_by_hash(digest)
        if record is None or not hmac.compare_digest(record.token_hash, digest):
            return "invalid token"
        now = self.clock()
        if record.revoked_at is not None:
            return "token revoked"
        if record.expires_at is not None and now >= record.expires_at:
            return "token expired"
        if record.last_used_at is None or now - record.last_used_at >= _TOUCH_EVERY_S:
            try:
                self.store.touch_api_token(record.id, now)
            except Exception:  # a busy database must not refuse a valid caller
                log.debug("could not record the use of token %s", record.id, exc_info=True)
        return Principal(record.id, record.name, record.scope)


class BearerAuthMiddleware:
    """ASGI middleware: 401 without a valid token, 403 for a non-admin on a non-safe method.

    The authenticated :class:`Principal` is put in ``scope["state"]["principal"]`` (read by the
    route dependencies as ``request.state.principal``). WebSocket connections are closed.
    A ``GET`` of a path exactly in ``public_paths`` passes without a token (and without a
    principal, so a route there cannot use :func:`require_read`).
    """

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, public_paths: Collection[str] = frozenset()
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        result = await run_in_threadpool(self.authenticator.authenticate, headers.get("authorization"))
        if isinstance(result, str):
            await _send_error(
                send, 401, "unauthorized", result, {"www-authenticate": 'Bearer realm="iotsentry"'}
            )
            return
        if scope["method"] not in SAFE_METHODS and not has_scope(result.scope, "admin"):
            await _send_error(
                send,
                403,
                "forbidden",
                "this token has scope 'read'; the 'admin' scope is needed",
                {"www-authenticate": 'Bearer realm="iotsentry", error="insufficient_scope", scope="admin"'},
            )
            return
        state = scope.setdefault("state", {})
        state["principal"] = result
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, error: str, detail: str, extra: dict[str, str]) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_bearer = HTTPBearer(auto_error=False, description="An iotsentry API token (`iotsentry token create`).")


def require_scope(needed: str) -> Callable[..., Awaitable[Principal]]:
    """A route dependency that returns the caller and refuses a token lacking ``needed``."""
    if needed not in TOKEN_SCOPES:
        raise ValueError(f"unknown scope {needed!r}")

    async def dependency(
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Principal:
        principal: Any = getattr(request.state, "principal", None)
        if not isinstance(principal, Principal):  # the middleware is missing: fail closed
            raise ApiError(
                401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if not has_scope(principal.scope, needed):
            raise ApiError(
                403, "forbidden", f"this token has scope {principal.scope!r}; {needed!r} is needed"
            )
        return principal

    dependency.__name__ = f"require_{needed}"
    return dependency


require_read = require_scope("read")
"""Route dependency: any valid token."""
require_admin = require_scope("admin")
"""Route dependency: a valid token with the ``admin`` scope."""
