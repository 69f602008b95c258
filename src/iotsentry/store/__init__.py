"""store stage of iotsentry: the SQLite database of runs, devices, baselines and alerts."""

from __future__ import annotations

from iotsentry.store.migrations import MIGRATIONS, Migration, SchemaTooNew, migrate, schema_version
from iotsentry.store.records import (
    TOKEN_SCOPES,
    AlertAction,
    AlertQuery,
    ApiToken,
    DeviceQuery,
    DeviceSummary,
)
from iotsentry.store.sqlite import Store, StoredAlert, merge_devices

__all__ = [
    "MIGRATIONS",
    "TOKEN_SCOPES",
    "AlertAction",
    "AlertQuery",
    "ApiToken",
    "DeviceQuery",
    "DeviceSummary",
    "Migration",
    "SchemaTooNew",
    "Store",
    "StoredAlert",
    "merge_devices",
    "migrate",
    "schema_version",
]
