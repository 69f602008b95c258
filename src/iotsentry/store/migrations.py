"""Versioned schema migrations of the store, for SQLite and PostgreSQL.

The schema is an ordered list of :class:`Migration` steps; step ``i`` (0-based) brings the
database to version ``i + 1``. Both backends run the same steps (written for SQLite; the
PostgreSQL types come from :meth:`Dialect.ddl <iotsentry.store.dialect.Dialect.ddl>`) and track
the version their own way: SQLite in ``PRAGMA user_version`` (:func:`migrate`), PostgreSQL in a
one-row ``schema_version`` table (:func:`migrate_postgres`). Opening an older database applies
only the missing steps, each in its own transaction together with the version bump (a step is
either fully applied or not at all; PostgreSQL's DDL is transactional too). A database whose
version is newer than the code knows is refused with :class:`SchemaTooNew` rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iotsentry.errors import IotSentryError
from iotsentry.store.dialect import POSTGRES, SQLITE


class SchemaTooNew(IotSentryError):
    """The database was written by a newer iotsentry than this one."""

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(
            f"store schema version {found} is newer than this iotsentry supports ({known}); "
            "upgrade iotsentry or use another database file"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: a description and the SQL statements that perform it (in order)."""

    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "initial schema: runs, devices, baselines, alerts",
        (
            """
            CREATE TABLE runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                started REAL NOT NULL,
                finished REAL,
                command TEXT NOT NULL,
                inputs TEXT NOT NULL DEFAULT '[]',
                status TEXT NOT NULL DEFAULT 'running',
                stats TEXT NOT NULL DEFAULT '{}'
            )
            """,
            """
            CREATE TABLE devices (
                device_id TEXT PRIMARY KEY,
                mac TEXT,
                vendor TEXT,
                device_type TEXT,
                names TEXT NOT NULL DEFAULT '[]',
                ips TEXT NOT NULL DEFAULT '[]',
                dhcp TEXT NOT NULL DEFAULT '{}',
                first_seen REAL NOT NULL DEFAULT 0,
                last_seen REAL NOT NULL DEFAULT 0,
                packets INTEGER NOT NULL DEFAULT 0,
                bytes INTEGER NOT NULL DEFAULT 0,
                is_gateway INTEGER NOT NULL DEFAULT 0,
                extra TEXT NOT NULL DEFAULT '{}'
            )
            """,
            """
            CREATE TABLE baselines (
                device_id TEXT NOT NULL,
                run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
                profile TEXT NOT NULL DEFAULT '{}',
                maturity REAL NOT NULL DEFAULT 0,
                mature INTEGER NOT NULL DEFAULT 0,
                updated REAL NOT NULL,
                UNIQUE (device_id, run_id)
            )
            """,
            "CREATE INDEX baselines_device ON baselines (device_id, updated)",
            """
            CREATE TABLE alerts (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
                ts REAL NOT NULL,
                device_id TEXT NOT NULL,
                site_id TEXT NOT NULL,
                detector TEXT NOT NULL,
                detector_version TEXT NOT NULL DEFAULT '',
                category TEXT NOT NULL,
                severity INTEGER NOT NULL,
                score REAL NOT NULL,
                threshold REAL NOT NULL,
                src_ip TEXT NOT NULL DEFAULT '',
                src_port INTEGER NOT NULL DEFAULT 0,
                dest_ip TEXT NOT NULL DEFAULT '',
                dest_port INTEGER NOT NULL DEFAULT 0,
                proto TEXT NOT NULL DEFAULT '',
                flow_id INTEGER NOT NULL DEFAULT 0,
                reason TEXT NOT NULL DEFAULT '',
                eve TEXT NOT NULL,
                dedup_key TEXT NOT NULL UNIQUE,
                count INTEGER NOT NULL DEFAULT 1,
                first_ts REAL NOT NULL,
                last_ts REAL NOT NULL,
                acknowledged INTEGER NOT NULL DEFAULT 0,
                assignee TEXT
            )
            """,
            "CREATE INDEX alerts_device ON alerts (device_id, last_ts)",
            "CREATE INDEX alerts_last_ts ON alerts (last_ts)",
        ),
    ),
    Migration(
        "REST API: bearer tokens, alert acknowledgement/assignment audit columns and action log",
        (
            """
            CREATE TABLE api_tokens (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                token_hash TEXT NOT NULL UNIQUE,
                scope TEXT NOT NULL CHECK (scope IN ('read', 'admin')),
                created_at REAL NOT NULL,
                expires_at REAL,
                revoked_at REAL,
                last_used_at REAL
            )
            """,
            "CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL",
            "ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT",
            "ALTER TABLE alerts ADD COLUMN acknowledged_at REAL",
            "ALTER TABLE alerts ADD COLUMN assigned_by TEXT",
            "ALTER TABLE alerts ADD COLUMN assigned_at REAL",
            """
            CREATE TABLE alert_actions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
                action TEXT NOT NULL,
                actor TEXT NOT NULL,
                actor_token_id INTEGER,
                at REAL NOT NULL,
                value TEXT,
                note TEXT
            )
            """,
            "CREATE INDEX alert_actions_alert ON alert_actions (alert_id, at)",
            "CREATE INDEX alerts_severity ON alerts (severity, last_ts)",
            "CREATE INDEX alerts_assignee ON alerts (assignee, last_ts)",
        ),
    ),
    Migration(
        "monitor: source offsets committed with the alerts (exactly-once), canary coverage history",
        (
            """
            CREATE TABLE source_state (
                source TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                updated REAL NOT NULL
            )
            """,
            """
            CREATE TABLE canary_runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ts REAL NOT NULL,
                detector TEXT NOT NULL,
                class TEXT NOT NULL,
                detected INTEGER NOT NULL,
                score REAL,
                threshold REAL,
                device_id TEXT NOT NULL DEFAULT '',
                canary_run TEXT NOT NULL DEFAULT ''
            )
            """,
            "CREATE INDEX canary_runs_class ON canary_runs (class, ts)",
            "CREATE INDEX canary_runs_ts ON canary_runs (ts)",
        ),
    ),
    Migration(
        "monitor: outbox of alerts stored but not yet handed to every sink (at-least-once sinks)",
        (
            """
            CREATE TABLE alert_outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                queued REAL NOT NULL,
                alert TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        "incidents: alerts folded per (site, device, cause), their audit trail, notices apart from"
        " alerts, and baseline feedback requests from incidents marked expected",
        (
            """
            CREATE TABLE incidents (
                id TEXT PRIMARY KEY,
                site_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                cause TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'acknowledged', 'expected', 'resolved')),
                severity INTEGER NOT NULL,
                first_ts REAL NOT NULL,
                last_ts REAL NOT NULL,
                count INTEGER NOT NULL DEFAULT 0,
                categories TEXT NOT NULL DEFAULT '[]',
                evidence TEXT NOT NULL DEFAULT '[]',
                evidence_kinds TEXT NOT NULL DEFAULT '[]',
                assignee TEXT,
                previous_id TEXT,
                updated REAL NOT NULL
            )
            """,
            "CREATE INDEX incidents_key ON incidents (site_id, device_id, cause, last_ts)",
            "CREATE INDEX incidents_status ON incidents (status, last_ts)",
            "CREATE INDEX incidents_last_ts ON incidents (last_ts)",
            "CREATE INDEX incidents_device ON incidents (device_id, last_ts)",
            """
            CREATE TABLE incident_actions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                incident_id TEXT NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
                action TEXT NOT NULL,
                actor TEXT NOT NULL,
                actor_token_id INTEGER,
                at REAL NOT NULL,
                value TEXT,
                note TEXT
            )
            """,
            "CREATE INDEX incident_actions_incident ON incident_actions (incident_id, at)",
            """
            CREATE TABLE baseline_feedback (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                incident_id TEXT NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
                device_id TEXT NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('device', 'group')),
                action TEXT NOT NULL CHECK (action IN ('absorb', 'revert')),
                evidence TEXT NOT NULL DEFAULT '{}',
                created REAL NOT NULL,
                created_by TEXT NOT NULL,
                applied_at REAL,
                result TEXT
            )
            """,
            "CREATE INDEX baseline_feedback_pending ON baseline_feedback (applied_at, id)",
            "CREATE INDEX baseline_feedback_incident ON baseline_feedback (incident_id, id)",
            "ALTER TABLE alerts ADD COLUMN incident_id TEXT",
            "ALTER TABLE alerts ADD COLUMN event_type TEXT NOT NULL DEFAULT 'alert'",
            "CREATE INDEX alerts_incident ON alerts (incident_id)",
            "CREATE INDEX alerts_event_type ON alerts (event_type, last_ts)",
            # existing rows: the event type their EVE record names (written compactly by dumps_json,
            # so the top-level key reads exactly like this; a quote inside a string is escaped)
            "UPDATE alerts SET event_type = 'integrity' WHERE eve LIKE '%\"event_type\":\"integrity\"%'",
            "UPDATE alerts SET event_type = 'canary' WHERE eve LIKE '%\"event_type\":\"canary\"%'",
            "UPDATE alerts SET event_type = 'notice' WHERE category IN ('silence', 'offline')",
        ),
    ),
)
"""The schema steps of this version of iotsentry, oldest first. Append, never edit."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in ``PRAGMA user_version`` (0 for a new database)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the steps the database has not seen yet and return the resulting version.

    Parameters
    ----------
    conn
        A connection in autocommit mode (``isolation_level=None``); each step runs in its own
        ``BEGIN IMMEDIATE`` transaction, so concurrent openers do not apply a step twice.
    steps
        The ordered schema steps (tests may pass a longer list than :data:`MIGRATIONS`).

    Raises
    ------
    SchemaTooNew
        When the database records a version beyond ``len(steps)``.
    """
    known = len(steps)
    current = schema_version(conn)
    if current > known:
        raise SchemaTooNew(current, known)
    while current < known:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another connection may have migrated meanwhile.
            current = schema_version(conn)
            if current > known:
                raise SchemaTooNew(current, known)
            if current < known:
                for sql in steps[current].statements:
                    conn.execute(SQLITE.ddl(sql))
                current += 1
                conn.execute(f"PRAGMA user_version = {int(current)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return current


POSTGRES_LOCK_KEY = 0x696F7473656E7472  # "iotsentr": pg_advisory_xact_lock key of the store's writers
"""Every write transaction of a PostgreSQL store (migrations included) holds this advisory lock,
so writers are serialised as SQLite's ``BEGIN IMMEDIATE`` serialises them (read-merge-write
methods such as ``upsert_devices`` and ``add_alerts`` rely on it); readers are never blocked."""

_PG_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)


def postgres_schema_version(conn: Any) -> int:
    """The version in the ``schema_version`` table of a psycopg connection (0 when absent)."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT version FROM schema_version WHERE id = 1")
        row = cur.fetchone()
        return 0 if row is None else int(row[0])


def migrate_postgres(conn: Any, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the steps a PostgreSQL database has not seen yet; return the resulting version.

    Parameters
    ----------
    conn
        A psycopg 3 connection in autocommit mode; each step runs in its own transaction that
        holds :data:`POSTGRES_LOCK_KEY`, so concurrent openers do not apply a step twice.
    steps
        The ordered schema steps, as for :func:`migrate`.

    Raises
    ------
    SchemaTooNew
        When the database records a version beyond ``len(steps)``.
    """
    known = len(steps)
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_LOCK_KEY,))
            current = postgres_schema_version(conn)
            if current > known:
                raise SchemaTooNew(current, known)
            if current == known:
                return current
            conn.execute(_PG_VERSION_TABLE)
            for sql in steps[current].statements:
                conn.execute(POSTGRES.ddl(sql))
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (current + 1,),
            )
