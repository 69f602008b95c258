"""KeySet and CountTable against a plain set / dict under random interleaved updates and lookups."""

from __future__ import annotations

import numpy as np
import pytest

from iotsentry.baseline import keysets
from iotsentry.baseline.keysets import CountTable, KeySet


@pytest.fixture(autouse=True)
def _small_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    # merge the delta level into the main level often, so both paths run many times
    monkeypatch.setattr(keysets, "DELTA_MIN", 16)


@pytest.mark.parametrize("seed", range(5))
def test_keyset_matches_a_set(seed: int) -> None:
    rng = np.random.default_rng(seed)
    universe = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64)
    ks, ref = KeySet(universe[:50].tolist()), set(universe[:50].tolist())
    for _ in range(300):
        op = rng.random()
        keys = universe[rng.integers(0, len(universe), size=int(rng.integers(1, 40)))]
        if op < 0.55:
            assert ks.add(keys) == len(set(keys.tolist()) - ref)
            ref |= set(keys.tolist())
        elif op < 0.65:
            assert ks.discard(keys.tolist()) == len(set(keys.tolist()) & ref)
            ref -= set(keys.tolist())
        else:
            q = universe[rng.integers(0, len(universe), size=200)]
            assert ks.contains(q).tolist() == [k in ref for k in q.tolist()]
        assert len(ks) == len(ref)
    assert ks.array().tolist() == sorted(ref)
    assert ks.contains(np.zeros(0, np.uint64)).shape == (0,)


@pytest.mark.parametrize("seed", range(5))
def test_count_table_matches_a_dict(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    arr = rng.integers(0, 2**64 - 1, size=2000, dtype=np.uint64)
    universe = arr.tolist()
    t, ref = CountTable({k: 1 for k in universe[:30]}), {k: 1 for k in universe[:30]}
    for _ in range(400):
        op = rng.random()
        k = universe[int(rng.integers(0, len(universe)))]
        if op < 0.5:
            t[k] = t.get(k, 0) + 3
            ref[k] = ref.get(k, 0) + 3
        elif op < 0.6:
            assert t.pop(k, None) == ref.pop(k, None)
        elif op < 0.65 and k in ref:
            del t[k]
            del ref[k]
        else:
            q = arr[rng.integers(0, len(arr), size=150)]  # (a list of big ints would become floats)
            assert t.lookup(q).tolist() == [float(ref.get(x, 0)) for x in q.tolist()]
        assert len(t) == len(ref) and (k in t) == (k in ref)
    keys, counts = t.sorted_arrays()
    assert keys.tolist() == sorted(ref)
    assert counts.tolist() == [float(ref[x]) for x in sorted(ref)]
    assert t == ref and t == CountTable(ref)
