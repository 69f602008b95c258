"""column_quantile gives np.quantile's floats (method linear) on the shapes baselines use."""

from __future__ import annotations

import numpy as np
import pytest

from iotsentry.baseline.quantiles import column_quantile


@pytest.mark.parametrize("seed", range(4))
def test_column_quantile_is_bit_for_bit_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for it in range(600):
        n, m = int(rng.integers(1, 300)), int(rng.integers(1, 18))
        kind = it % 3
        if kind == 0:
            X = rng.random((n, m)) * 10.0 ** int(rng.integers(0, 6))
        elif kind == 1:
            X = rng.integers(0, 4, (n, m)).astype(np.float64)  # many ties, as window counts have
        else:
            X = np.round(rng.exponential(3.0, (n, m)), 2)
        for q in (0.0, 0.25, 0.5, 0.9, 0.95, 1.0, float(rng.random())):
            got = column_quantile(X, q)
            assert np.array_equal(got, np.quantile(X, q, axis=0)), (n, m, q)
            assert got.shape == (m,)
