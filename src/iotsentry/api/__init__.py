"""The REST API of the iotsentry monitor (FastAPI): devices, baselines, incidents, alerts, models,
runs.

Every route needs a bearer token (see :mod:`iotsentry.api.auth`); :func:`create_app` builds the
application, :mod:`iotsentry.api.api_cli` adds the ``iotsentry token`` and ``iotsentry api``
commands and :mod:`iotsentry.api.incidents_cli` the ``iotsentry incidents`` command. Names are
imported on first use (PEP 562), so the CLI can register its commands without importing FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "API_VERSION",
    "Authenticator",
    "Principal",
    "create_app",
    "create_token",
    "hash_token",
    "new_token",
]

_LAZY = {
    "API_VERSION": "iotsentry.api.app",
    "create_app": "iotsentry.api.app",
    "Authenticator": "iotsentry.api.auth",
    "Principal": "iotsentry.api.auth",
    "create_token": "iotsentry.api.tokens",
    "hash_token": "iotsentry.api.tokens",
    "new_token": "iotsentry.api.tokens",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'iotsentry.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
