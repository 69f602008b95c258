"""store stage of iotsentry: runs, devices, baselines, alerts and incidents in SQLite or PostgreSQL.

:func:`open_store` picks the backend from its target: a path (or ``sqlite:///`` URL) opens the
SQLite :class:`Store`; a ``postgresql://`` DSN opens :class:`PostgresStore` (psycopg 3).
"""

from __future__ import annotations

from iotsentry.store.dsn import is_postgres_dsn, open_store, redact_dsn, sqlite_path
from iotsentry.store.migrations import MIGRATIONS, Migration, SchemaTooNew, migrate, schema_version
from iotsentry.store.postgres import PostgresStore, StoreConnectionError
from iotsentry.store.records import (
    FEEDBACK_SCOPES,
    TOKEN_SCOPES,
    AlertAction,
    AlertCommit,
    AlertQuery,
    ApiToken,
    BaselineFeedback,
    CanaryResult,
    DeviceQuery,
    DeviceSummary,
    IncidentAction,
    IncidentQuery,
)
from iotsentry.store.sqlite import Store, StoredAlert, merge_devices

__all__ = [
    "FEEDBACK_SCOPES",
    "MIGRATIONS",
    "TOKEN_SCOPES",
    "AlertAction",
    "AlertCommit",
    "AlertQuery",
    "ApiToken",
    "BaselineFeedback",
    "CanaryResult",
    "DeviceQuery",
    "DeviceSummary",
    "IncidentAction",
    "IncidentQuery",
    "Migration",
    "PostgresStore",
    "SchemaTooNew",
    "Store",
    "StoreConnectionError",
    "StoredAlert",
    "is_postgres_dsn",
    "merge_devices",
    "migrate",
    "open_store",
    "redact_dsn",
    "schema_version",
    "sqlite_path",
]
