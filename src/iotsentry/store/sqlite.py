"""The SQLite store: runs, the device inventory, baselines and alerts.

The database runs in WAL mode (readers never block the writer nor each other), with foreign
keys on and a busy timeout. Every public method that writes is one transaction committed before
it returns, so a crash loses nothing a call already reported as stored. Only parameterised
queries are used; JSON columns hold ``json.dumps`` text. The operations themselves are
:class:`~iotsentry.store.base.StoreBase`'s, shared with the PostgreSQL backend.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from iotsentry.errors import InputError
from iotsentry.store.base import Executor, Params, StoreBase
from iotsentry.store.dialect import SQLITE
from iotsentry.store.migrations import MIGRATIONS, Migration, migrate, schema_version
from iotsentry.store.rows import Row, StoredAlert, merge_devices

__all__ = ["Store", "StoredAlert", "merge_devices"]


class Store(StoreBase):
    """The iotsentry SQLite database (the default store).

    Parameters
    ----------
    path
        A database file (created with its parent folders when missing) or ``":memory:"``.
    busy_timeout_s
        How long a write waits for another connection's write lock before failing.
    migrations
        The schema steps to bring the database to (tests pass longer lists).

    Raises
    ------
    InputError
        When ``path`` is not a SQLite database.
    SchemaTooNew
        When the database was written by a newer iotsentry.

    Notes
    -----
    :func:`iotsentry.store.open_store` opens this class for a path or a ``sqlite:///`` URL and
    :class:`~iotsentry.store.postgres.PostgresStore` (a subclass, so code typed for
    :class:`Store` accepts it) for a ``postgresql://`` DSN.
    """

    dialect = SQLITE

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        busy_timeout_s: float = 5.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self.journal_mode = str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            self._conn.execute("PRAGMA synchronous = FULL")
            self.version = migrate(self._conn, migrations)
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise InputError(self.path, f"cannot use as an iotsentry store: {err}") from err
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Executor]:
        """One write transaction, committed on success and rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Executor(self._conn, SQLITE)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock:
            rows: list[Row] = self._conn.execute(sql, params).fetchall()
            return rows

    def _schema_version(self) -> int:
        with self._lock:
            self._conn.execute("SELECT 1").fetchone()
            return schema_version(self._conn)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()
