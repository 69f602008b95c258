"""Growing sets of 64-bit keys with vectorised membership tests.

The baseline's knowledge (which networks, domains, services a device or a group uses) changes
rarely after learning but is looked up for every packet. :class:`KeySet` keeps the keys in a
Python set for cheap additions and removals, and a sorted ``uint64`` array, rebuilt on the first
lookup after a change, for ``searchsorted`` membership tests over whole batches.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["KeySet"]


class KeySet:
    """A set of ``uint64`` keys (see module docstring)."""

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self._set: set[int] = {int(k) for k in keys}
        self._sorted: npt.NDArray[np.uint64] | None = None

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, k: object) -> bool:
        return k in self._set

    def add(self, keys: Iterable[int] | npt.NDArray[np.uint64]) -> int:
        """Add keys; returns how many were new."""
        before = len(self._set)
        self._set.update(int(k) for k in np.asarray(keys, dtype=np.uint64).ravel().tolist())
        added = len(self._set) - before
        if added:
            self._sorted = None
        return added

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
        """Remove keys; returns how many were present."""
        n = 0
        for k in keys:
            if int(k) in self._set:
                self._set.remove(int(k))
                n += 1
        if n:
            self._sorted = None
        return n

    def array(self) -> npt.NDArray[np.uint64]:
        """The keys, sorted."""
        if self._sorted is None:
            arr = np.fromiter(self._set, dtype=np.uint64, count=len(self._set))
            arr.sort()
            self._sorted = arr
        return self._sorted

    def contains(self, q: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Membership of every query key."""
        q = np.asarray(q, dtype=np.uint64)
        arr = self.array()
        if not len(arr) or not len(q):
            return np.zeros(len(q), dtype=bool)
        pos = np.minimum(np.searchsorted(arr, q), len(arr) - 1)
        out: npt.NDArray[np.bool_] = arr[pos] == q
        return out
