"""Choosing the store's backend from a target: a path, a ``sqlite:///`` URL or a PostgreSQL DSN.

::

    open_store("iotsentry-out/iotsentry.db")            # SQLite file
    open_store("sqlite:///iotsentry-out/iotsentry.db")  # the same (relative path)
    open_store("sqlite:////var/lib/iotsentry/s.db")     # absolute path (four slashes)
    open_store("postgresql://iot:secret@db.example/iotsentry")

SQLite URLs follow SQLAlchemy's convention: three slashes then a relative path, four for an
absolute one; ``sqlite://`` and ``sqlite:///:memory:`` are an in-memory database. Whatever is
shown to the user (``Store.path``, error messages) is :func:`redact_dsn`'s, without password.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from iotsentry.errors import InputError
from iotsentry.store.base import StoreBase
from iotsentry.store.migrations import MIGRATIONS, Migration
from iotsentry.store.sqlite import Store

__all__ = ["is_postgres_dsn", "open_store", "redact_dsn", "sqlite_path"]

_PG_SCHEMES = ("postgresql://", "postgres://")
_PASSWORD_PARAM = re.compile(r"(^|&)((?:ssl)?password)=[^&#]*", re.I)


def is_postgres_dsn(target: str | Path) -> bool:
    """Whether ``target`` is a ``postgresql://`` (or ``postgres://``) DSN (a ``Path`` never is)."""
    return isinstance(target, str) and target.strip().lower().startswith(_PG_SCHEMES)


def sqlite_path(target: str | Path) -> str | None:
    """The SQLite database file ``target`` names (``":memory:"`` possible); ``None`` for a DSN.

    Raises
    ------
    InputError
        For a ``sqlite:`` URL that is not ``sqlite://``, ``sqlite:///PATH`` or ``sqlite:////PATH``.
    """
    if is_postgres_dsn(target):
        return None
    text = str(target)
    if not text.lower().startswith("sqlite:"):
        return text
    rest = text[len("sqlite:") :]
    if rest in ("//", "///", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///") or len(rest) == 3:
        raise InputError(text, "a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
    return rest[3:]


def redact_dsn(target: str | Path) -> str:
    """``target`` as text with any password replaced by ``***`` (paths are returned unchanged)."""
    text = str(target)
    if not is_postgres_dsn(text):
        return text
    scheme, _, rest = text.partition("://")
    head, q, query = rest.partition("?")
    if "@" in head:
        userinfo, _, hosts = head.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        head = f"{user}{':***' if colon else ''}@{hosts}"
    query = _PASSWORD_PARAM.sub(r"\1\2=***", query)
    return f"{scheme}://{head}{q}{query}"


def open_store(target: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> StoreBase:
    """Open (creating and migrating as needed) the store ``target`` names.

    Parameters
    ----------
    target
        A SQLite file path (``str`` or ``Path``), a ``sqlite:///`` URL, or a ``postgresql://``
        DSN (needs psycopg 3).
    migrations
        The schema steps to bring the database to (tests pass longer lists).

    Returns
    -------
    StoreBase
        A :class:`~iotsentry.store.sqlite.Store`, or a
        :class:`~iotsentry.store.postgres.PostgresStore` for a DSN.

    Raises
    ------
    InputError
        An unusable file or SQLite URL, a bad DSN or an unreachable server (one line, naming
        the target without its password).
    SchemaTooNew
        When the database was written by a newer iotsentry.
    """
    path = sqlite_path(target)
    if path is not None:
        return Store(path, migrations=migrations)
    from iotsentry.store.postgres import PostgresStore

    return PostgresStore(str(target).strip(), migrations=migrations)
