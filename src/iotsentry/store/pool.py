"""A small thread-safe pool of database connections (for the PostgreSQL store).

No dependency: a list of idle connections under a condition variable, at most ``max_size``
open at once. A connection that comes back broken, closed or inside a transaction is discarded
(the next caller opens a fresh one), so a restarted server is reconnected to transparently.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["ConnectionPool", "PoolClosed", "PoolTimeout"]


class PooledConnection(Protocol):
    """What the pool needs of a connection (psycopg 3's ``Connection`` qualifies)."""

    @property
    def closed(self) -> bool: ...

    @property
    def broken(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=PooledConnection)


class PoolClosed(RuntimeError):
    """The pool (its store) was closed."""


class PoolTimeout(TimeoutError):
    """Every connection stayed in use for the whole wait."""


class ConnectionPool(Generic[C]):
    """Connections made by ``connect`` on demand, reused LIFO, at most ``max_size`` at once.

    Parameters
    ----------
    connect
        Opens a new connection (its errors propagate to :meth:`acquire`).
    max_size
        The most connections open at once; further :meth:`acquire` calls wait.
    timeout_s
        How long :meth:`acquire` waits for a connection to come back.
    reusable
        Whether a returned connection can serve again (e.g. not left inside a transaction).
    """

    def __init__(
        self,
        connect: Callable[[], C],
        *,
        max_size: int = 8,
        timeout_s: float = 30.0,
        reusable: Callable[[C], bool] = lambda _c: True,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._connect = connect
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._reusable = reusable
        self._idle: list[C] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Connections open now (idle or in use)."""
        with self._cond:
            return self._open

    def acquire(self) -> C:
        """A connection for the caller's exclusive use until :meth:`release`."""
        deadline = time.monotonic() + self._timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed("the store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max_size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout(f"no free database connection within {self._timeout_s:g} s")
                self._cond.wait(left)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def release(self, conn: C) -> None:
        """Give a connection back (discarded when closed, broken, not reusable or the pool closed)."""
        keep = not conn.closed and not conn.broken and self._reusable(conn)
        with self._cond:
            if keep and not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
            self._open -= 1
            self._cond.notify()
        conn.close()

    def close(self) -> None:
        """Close the idle connections now and the others when they come back (idempotent)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()
