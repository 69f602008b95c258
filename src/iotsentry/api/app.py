"""The iotsentry REST API application.

:func:`create_app` wires the routers (one module per resource), the bearer-token middleware,
the JSON error handlers and a token-protected OpenAPI schema and docs page::

    from iotsentry.api import create_app
    app = create_app("iotsentry-out/iotsentry.db", model_dirs=["models/"], trusted_keys="keys/")
    # uvicorn.run(app, host="127.0.0.1", port=8080)  -- or: iotsentry api --store ...

The web dashboard is served by the same app under ``/ui/`` (:mod:`iotsentry.api.ui_static`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from iotsentry.api import (
    alerts,
    baselines,
    devices,
    health,
    incidents,
    integrity,
    meta,
    models,
    runs,
    ui_static,
)
from iotsentry.api.auth import Authenticator, BearerAuthMiddleware
from iotsentry.api.errors import install_error_handlers
from iotsentry.store import open_store
from iotsentry.store.base import StoreBase

__all__ = ["API_VERSION", "AuditHook", "create_app"]

AuditHook = Callable[..., Any]
"""``audit(action, subject, details, *, actor)``: records a change made through the API."""

API_VERSION = "1.0"


def create_app(
    store_path_or_store: str | Path | StoreBase,
    *,
    model_dirs: Sequence[str | Path] = (),
    trusted_keys: Any = None,
    authenticator: Authenticator | None = None,
    audit: AuditHook | None = None,
) -> FastAPI:
    """Build the REST API over a store.

    Parameters
    ----------
    store_path_or_store
        A store (:class:`~iotsentry.store.base.StoreBase`, SQLite or PostgreSQL; left open when
        the app stops) or the path of a store database, or a ``postgresql://`` DSN (opened now with
        :func:`~iotsentry.store.open_store`, migrated to the current schema, closed when the app
        stops).
    model_dirs
        Model directories, or folders of model directories, listed by ``/models``.
    trusted_keys
        What :func:`iotsentry.integrity.signing.verify_model_dir` accepts as ``keyring`` (a key
        directory with ``trusted_keys.json`` -- re-read on every request, so rotations and
        revocations apply at once -- a ``Keyring`` or a list of public keys). ``None``: model
        signatures are reported as ``not_checked``.
    authenticator
        Checks tokens (default: against the store's ``api_tokens``; tests pass one with a fake
        clock).
    audit
        Called as ``audit(action, subject, details, actor=token name)`` after every change made
        through the API (alerts: acknowledge, re-open, assign; incidents: acknowledge, assign,
        expected, resolve, reopen): e.g. the ``append`` of the monitor's hash-chained audit log
        (:class:`iotsentry.integrity.audit.AuditLog`).

    Returns
    -------
    FastAPI
        The application; every route (the schema and docs too) needs a bearer token, except
        the dashboard's static shell (``GET`` of exactly :data:`~iotsentry.api.ui_static.SHELL_PATHS`,
        under ``/ui/``; it holds no data -- see :mod:`iotsentry.api.ui_static`).
    """
    owned = not isinstance(store_path_or_store, StoreBase)
    store = (
        store_path_or_store if isinstance(store_path_or_store, StoreBase) else open_store(store_path_or_store)
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            store.close()

    app = FastAPI(
        title="iotsentry API",
        version=API_VERSION,
        description=(
            "REST API of the iotsentry monitor: devices, baselines, incidents, alerts, models, runs. "
            "Every route needs `Authorization: Bearer <token>` (`iotsentry token create`); "
            "every change (acknowledging, assigning, marking expected, resolving) needs the `admin` "
            "scope. Times are epoch seconds (UTC)."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        swagger_ui_oauth2_redirect_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.model_dirs = [Path(p) for p in model_dirs]
    app.state.trusted_keys = trusted_keys
    app.state.audit = audit
    install_error_handlers(app)
    app.add_middleware(
        BearerAuthMiddleware,
        authenticator=authenticator or Authenticator(store),
        public_paths=ui_static.SHELL_PATHS,  # the dashboard's static shell only (no data)
    )
    for module in (devices, baselines, incidents, alerts, models, runs, health, meta, integrity):
        app.include_router(module.router)
    app.include_router(ui_static.whoami_router)
    app.include_router(ui_static.router)
    return app
