"""The PostgreSQL store: the same operations and schema as the SQLite store, chosen by a DSN.

Open it with :func:`iotsentry.store.open_store` (``postgresql://user:pw@host:5432/db``). It
needs psycopg 3 (``pip install "psycopg[binary]"``), imported only when a DSN is opened.

- **Threads**: safe to share between the threads of one process. Each call borrows a
  connection from a small pool (:class:`~iotsentry.store.pool.ConnectionPool`, at most
  ``pool_size``) for its duration; connections run in autocommit mode, and a thread keeps the
  same connection across nested calls.
- **Transactions**: every write method is one transaction that first takes the advisory lock
  :data:`~iotsentry.store.migrations.POSTGRES_LOCK_KEY`, so writers (of every process using the
  database) are serialised as SQLite serialises them; reads are never blocked and see committed
  data only.
- **Errors**: a bad DSN or an unreachable server is a one-line :class:`StoreConnectionError`
  naming the DSN without its password; so is losing the server later on. Constraint violations
  surface as psycopg's errors, as SQLite's surface as ``sqlite3`` errors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from iotsentry.errors import InputError
from iotsentry.store.base import Executor, Params, StoreBase
from iotsentry.store.dialect import POSTGRES
from iotsentry.store.dsn import redact_dsn
from iotsentry.store.migrations import (
    MIGRATIONS,
    POSTGRES_LOCK_KEY,
    Migration,
    migrate_postgres,
    postgres_schema_version,
)
from iotsentry.store.pool import ConnectionPool, PoolClosed
from iotsentry.store.rows import Row

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore", "StoreConnectionError"]


class StoreConnectionError(InputError):
    """The PostgreSQL store cannot be reached (bad DSN, server down, connection lost)."""


class PostgresStore(StoreBase):
    """The iotsentry store in a PostgreSQL database.

    The same public methods and behaviour as the SQLite :class:`~iotsentry.store.sqlite.Store`
    (both are :class:`~iotsentry.store.base.StoreBase`); only the plumbing differs.

    Parameters
    ----------
    dsn
        ``postgresql://[user[:password]@][host][:port][/dbname][?param=value&...]``.
    migrations
        The schema steps to bring the database to (tests pass longer lists).
    pool_size
        The most connections open at once (calls from more threads wait for one).
    connect_timeout_s
        How long connecting may take, unless the DSN sets ``connect_timeout``.
    lock_timeout_s
        How long a write waits for another writer (``lock_timeout``; SQLite's busy timeout)
        before failing with psycopg's ``LockNotAvailable``.

    Raises
    ------
    StoreConnectionError
        A malformed DSN, psycopg missing, or no server / no access.
    InputError
        The database answers but a migration step fails.
    SchemaTooNew
        When the database was written by a newer iotsentry.
    """

    dialect = POSTGRES

    def __init__(
        self,
        dsn: str,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        pool_size: int = 8,
        connect_timeout_s: float = 10.0,
        lock_timeout_s: float = 30.0,
    ) -> None:
        self.path = redact_dsn(dsn)
        self.journal_mode = "wal"  # PostgreSQL always writes ahead
        self._dsn = dsn
        self._local = threading.local()
        self._lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StoreConnectionError(
                self.path, 'the PostgreSQL store needs psycopg 3: pip install "psycopg[binary]"'
            ) from None
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as err:
            raise StoreConnectionError(self.path, f"invalid PostgreSQL DSN: {self._clean(err)}") from None
        self._secrets = [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]
        self._connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = max(2, round(connect_timeout_s))
        if "application_name" not in params:
            self._connect_kwargs["application_name"] = "iotsentry"
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            self._connect,
            max_size=pool_size,
            reusable=lambda c: c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE,
        )
        try:
            with self._errors(), self._connection() as conn:
                self.version = migrate_postgres(conn, migrations)
        except psycopg.Error as err:
            self._pool.close()
            raise InputError(self.path, f"cannot use as an iotsentry store: {self._clean(err)}") from None
        except BaseException:
            self._pool.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    def _clean(self, err: BaseException) -> str:
        """The error as one line, without the password."""
        text = " ".join(str(err).split()) or type(err).__name__
        for secret in self._secrets if hasattr(self, "_secrets") else ():
            text = text.replace(secret, "***")
        raw = self._dsn.partition("://")[2].partition("?")[0].rpartition("@")[0].partition(":")[2]
        return text.replace(raw, "***") if raw else text

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        try:
            conn = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row, **self._connect_kwargs)
        except psycopg.Error as err:
            raise StoreConnectionError(
                self.path, f"cannot connect to PostgreSQL: {self._clean(err)}"
            ) from None
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self._lock_timeout_ms}ms",))
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a lost connection (or a closed store) into a one-line :class:`StoreConnectionError`."""
        import psycopg

        try:
            yield
        except PoolClosed:
            raise StoreConnectionError(self.path, "the store is closed") from None
        except psycopg.OperationalError as err:
            state = err.sqlstate
            if state is None or state.startswith(("08", "57P")):  # connection exception, shutdown
                raise StoreConnectionError(
                    self.path, f"PostgreSQL connection lost: {self._clean(err)}"
                ) from None
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """This thread's connection: borrowed from the pool by the outermost call."""
        held: psycopg.Connection[dict[str, Any]] | None = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        conn = self._pool.acquire()
        self._local.conn = conn
        try:
            yield conn
        finally:
            self._local.conn = None
            self._pool.release(conn)

    @contextmanager
    def _tx(self) -> Iterator[Executor]:
        """One write transaction under the writers' advisory lock; rolled back on any error."""
        with self._errors(), self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_LOCK_KEY,))
            yield Executor(conn, POSTGRES)

    def _query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._errors(), self._connection() as conn:
            return list(conn.execute(POSTGRES.sql(sql), params).fetchall())

    def _schema_version(self) -> int:
        with self._errors(), self._connection() as conn:
            return postgres_schema_version(conn)

    def close(self) -> None:
        """Close the pool's connections (idempotent; calls after it fail with a clear error)."""
        self._pool.close()
