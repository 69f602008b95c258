"""API token secrets: creation, hashing and durations (no FastAPI import, for the CLI).

A token is ``iots_`` followed by 32 random bytes in URL-safe base64. The store keeps only its
SHA-256: for 256-bit random secrets a fast hash is adequate (no salt or slow hash needed).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from iotsentry.store.base import StoreBase as Store
from iotsentry.store.records import TOKEN_SCOPES, ApiToken

__all__ = ["TOKEN_PREFIX", "create_token", "has_scope", "hash_token", "new_token", "parse_duration"]

TOKEN_PREFIX = "iots_"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def new_token() -> str:
    """A fresh secret: ``iots_`` + 32 random bytes, URL-safe base64 (43 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def has_scope(granted: str, needed: str) -> bool:
    """Whether a token with scope ``granted`` may use a route needing ``needed`` (admin ⊇ read)."""
    return granted == "admin" or granted == needed


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``3600``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``.

    Raises
    ------
    ValueError
        Not a positive duration.
    """
    m = _DURATION.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"not a positive duration: {text!r} (e.g. 3600, 15m, 12h, 30d, 2w)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def create_token(
    store: Store, name: str, scope: str, *, expires_in_s: float | None = None, now: float | None = None
) -> tuple[str, ApiToken]:
    """Create and store a token; return the secret (shown once, never stored) and its record.

    Raises
    ------
    ValueError
        Unknown scope, bad name, or an active (non-revoked) token of that name exists.
    """
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(TOKEN_SCOPES)}")
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise ValueError("token name must be 1-100 printable characters")
    at = time.time() if now is None else float(now)
    expires = None if expires_in_s is None else at + float(expires_in_s)
    secret = new_token()
    record = store.create_api_token(name, scope, hash_token(secret), expires_at=expires, at=at)
    return secret, record
