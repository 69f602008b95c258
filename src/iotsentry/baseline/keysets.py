"""Growing sets and count tables of 64-bit keys with vectorised lookups.

The baseline's knowledge (which peers, networks, domains, services a device or a group uses)
changes all the time somewhere in a large fleet -- some device is always learning, some alert
is always blocking behaviour -- but is looked up for every packet. Both structures keep the
keys in a Python set / dict for cheap single updates, and two sorted ``uint64`` levels for
``searchsorted`` lookups over whole batches: a large *main* level and a small *delta* level.
Keys changed since the last lookup are merged into the delta (cost: the change and a copy of
the delta); the delta is merged into the main level only when it outgrows a quarter of it. So
a lookup after a small change costs what the change costs, not what the fleet's baseline
holds, and the total rebuild work stays proportional to the number of changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["CountTable", "KeySet"]

_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]
DELTA_MIN = 4096
"""The delta level is merged into the main level once it holds more than this many keys ..."""
DELTA_SHARE = 4
"""... and more than 1 / DELTA_SHARE of the main level's keys."""


def _find(keys: _U64, q: _U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Positions of ``q`` in the sorted ``keys`` and whether each was found."""
    if not len(keys):
        return np.zeros(len(q), np.intp), np.zeros(len(q), dtype=bool)
    pos = np.searchsorted(keys, q)
    hit: npt.NDArray[np.bool_] = keys[np.minimum(pos, len(keys) - 1)] == q
    return pos, hit


def _merge(ak: _U64, ac: _F64, bk: _U64, bc: _F64) -> tuple[_U64, _F64]:
    """Sorted level ``a`` updated with the sorted, distinct keys ``b`` (``b``'s counts win)."""
    if not len(bk):
        return ak, ac
    pos, hit = _find(ak, bk)
    ac = ac.copy()
    ac[pos[hit]] = bc[hit]
    new = ~hit
    return np.insert(ak, pos[new], bk[new]), np.insert(ac, pos[new], bc[new])


class KeySet:
    """A set of ``uint64`` keys (see module docstring)."""

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self._set: set[int] = {int(k) for k in keys}
        self._main: _U64 = np.zeros(0, np.uint64)
        self._delta: _U64 = np.zeros(0, np.uint64)
        self._pending: list[int] = list(self._set)
        self._rebuild = False

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, k: object) -> bool:
        return k in self._set

    def add(self, keys: Iterable[int] | npt.NDArray[np.uint64]) -> int:
        """Add keys; returns how many were new."""
        new = self.new_of(keys)
        self._set.update(new)
        self._pending += new
        return len(new)

    def new_of(self, keys: Iterable[int] | npt.NDArray[np.uint64]) -> list[int]:
        """The distinct keys of ``keys`` not in the set (in first-appearance order)."""
        seen: set[int] = set()
        out = []
        for k in np.asarray(keys, dtype=np.uint64).ravel().tolist():
            if k not in self._set and k not in seen:
                seen.add(k)
                out.append(int(k))
        return out

    def discard(self, keys: Iterable[int]) -> int:
        """Remove keys; returns how many were present (rare: the levels are rebuilt)."""
        n = 0
        for k in keys:
            if int(k) in self._set:
                self._set.remove(int(k))
                n += 1
        if n:
            self._rebuild = True
        return n

    def _sync(self, full: bool = False) -> None:
        if self._rebuild:
            self._main = np.sort(np.fromiter(self._set, dtype=np.uint64, count=len(self._set)))
            self._delta = np.zeros(0, np.uint64)
            self._pending, self._rebuild = [], False
            return
        if self._pending:
            p = np.sort(np.array(self._pending, dtype=np.uint64))
            self._pending = []
            self._delta = np.insert(self._delta, np.searchsorted(self._delta, p), p)
        if len(self._delta) and (full or len(self._delta) > max(DELTA_MIN, len(self._main) // DELTA_SHARE)):
            self._main = np.insert(self._main, np.searchsorted(self._main, self._delta), self._delta)
            self._delta = np.zeros(0, np.uint64)

    def array(self) -> npt.NDArray[np.uint64]:
        """The keys, sorted."""
        self._sync(full=True)
        return self._main

    def contains(self, q: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Membership of every query key."""
        q = np.asarray(q, dtype=np.uint64)
        self._sync()
        out = _find(self._main, q)[1]
        if len(self._delta):
            out |= _find(self._delta, q)[1]
        return out


class CountTable:
    """``uint64`` key -> count (a window count: 0 means absent), with the mapping operations the
    baseline uses and a vectorised :meth:`lookup` (see module docstring)."""

    def __init__(self, items: Mapping[int, int] | None = None) -> None:
        self._d: dict[int, int] = dict(items or {})
        self._pending: set[int] = set(self._d)
        self._main: tuple[_U64, _F64] = (np.zeros(0, np.uint64), np.zeros(0))
        self._delta: tuple[_U64, _F64] = (np.zeros(0, np.uint64), np.zeros(0))

    # -- mapping --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, k: object) -> bool:
        return k in self._d

    def __iter__(self) -> Iterator[int]:
        return iter(self._d)

    def __getitem__(self, k: int) -> int:
        return self._d[k]

    def __setitem__(self, k: int, v: int) -> None:
        self._d[k] = v
        self._pending.add(k)

    def __delitem__(self, k: int) -> None:
        del self._d[k]
        self._pending.add(k)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CountTable):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def get(self, k: int, default: int = 0) -> int:
        return self._d.get(k, default)

    def pop(self, k: int, default: int | None = None) -> int | None:
        if k in self._d:
            self._pending.add(k)
        return self._d.pop(k, default)

    def items(self) -> Iterable[tuple[int, int]]:
        return self._d.items()

    def keys(self) -> Iterable[int]:
        return self._d.keys()

    def values(self) -> Iterable[int]:
        return self._d.values()

    # -- lookups ---------------------------------------------------------------------------------
    def _sync(self, full: bool = False) -> None:
        if self._pending:
            pk = np.sort(np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending)))
            pc = np.array([self._d.get(k, 0) for k in pk.tolist()], dtype=np.float64)
            self._pending = set()
            self._delta = _merge(*self._delta, pk, pc)
        dk, dc = self._delta
        if len(dk) and (full or len(dk) > max(DELTA_MIN, len(self._main[0]) // DELTA_SHARE)):
            mk, mc = _merge(*self._main, dk, dc)
            keep = mc != 0  # removed keys
            self._main = (mk[keep], mc[keep])
            self._delta = (np.zeros(0, np.uint64), np.zeros(0))

    def lookup(self, q: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
        """The count of every query key (0 for keys not in the table)."""
        q = np.asarray(q, dtype=np.uint64)
        self._sync()
        out = np.zeros(len(q))
        for keys, counts in (self._main, self._delta):
            if len(keys) and len(q):
                pos, hit = _find(keys, q)
                out[hit] = counts[pos[hit]]
        return out

    def sorted_arrays(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
        """(keys sorted, their counts) of the whole table."""
        self._sync(full=True)
        return self._main
