"""Drift-rate limits on learning (boiling-frog defence): ramping keys are refused, steady ones kept."""

from __future__ import annotations

import numpy as np
import pytest

from iotsentry.baseline.ramp_guard import BINS, RAMP_SLACK, RampGuard, capped_range

T0 = 1_700_000_000.0


def _feed(guard: RampGuard, key: int, times: np.ndarray, dev: int = 0, batch_s: float = 300.0) -> None:
    """Feed packets of one key in time-ordered batches (as the pipeline does)."""
    edges = np.arange(times.min(), times.max() + batch_s, batch_s)
    for a in edges:
        sel = (times >= a) & (times < a + batch_s)
        if sel.any():
            n = int(sel.sum())
            guard.add(np.full(n, key, np.uint64), np.full(n, dev, np.int64), times[sel])


def test_steady_key_is_kept_and_linear_ramp_is_refused() -> None:
    rng = np.random.default_rng(1)
    span = 4 * 3600.0
    g = RampGuard()
    steady = np.sort(T0 + rng.uniform(0, span, 2000))
    # a ramp from zero: density grows linearly (inverse-CDF sampling of t ~ sqrt(u))
    ramp = np.sort(T0 + span * np.sqrt(rng.uniform(0, 1, 400)))
    both = np.concatenate([steady, ramp])
    keys = np.concatenate([np.full(len(steady), 1, np.uint64), np.full(len(ramp), 2, np.uint64)])
    order = np.argsort(both)
    for chunk in np.array_split(order, 40):
        g.add(keys[chunk], np.zeros(len(chunk), np.int64), both[chunk])
    out = g.ramped()
    assert 2 in out and 1 not in out
    first, second = out[2]
    assert first + second == pytest.approx(400)
    assert second / first == pytest.approx(3.0, rel=0.25)  # linear ramp: 1/4 vs 3/4
    # the histograms stayed bounded while the span grew from one minute to four hours
    assert all(len(h) == BINS for h in g.hist.values())


def test_small_keys_and_short_spans_are_not_judged() -> None:
    g = RampGuard()
    # 25 packets, all in the second half: within the slack
    _feed(g, 7, np.concatenate([[T0], T0 + np.linspace(3000, 3500, 25)]))
    assert g.ramped() == {}
    # a step from nothing to many packets is refused once past the slack
    g2 = RampGuard()
    late = T0 + np.linspace(2000, 3500, int(RAMP_SLACK) + 20)
    _feed(g2, 8, np.concatenate([[T0], late]))
    assert 8 in g2.ramped()
    # a device seen for less than the minimum span is not judged at all
    g3 = RampGuard()
    _feed(g3, 9, T0 + np.linspace(100, 150, 500) ** 1.0)
    g3.add(np.array([9], np.uint64), np.array([0]), np.array([T0]))
    assert g3.ramped() == {}


def test_keys_of_different_devices_use_their_own_learning_span() -> None:
    g = RampGuard()
    # device 0 learns for 4 h, device 1 joins after 3 h and is steady over its own hour
    _feed(g, 1, T0 + np.linspace(0, 4 * 3600, 800), dev=0)
    _feed(g, 2, T0 + 3 * 3600 + np.linspace(0, 3600, 800), dev=1)
    assert g.ramped() == {}


def test_capped_range_refuses_a_rising_volume_but_not_a_burst() -> None:
    rng = np.random.default_rng(3)
    n = 240
    steady = rng.poisson(20, n).astype(float)
    ramp = steady + np.linspace(0, 400, n)  # an attacker's probes rising minute by minute
    burst = steady.copy()
    burst[200] = 900.0  # one firmware download
    X = np.stack([steady, ramp, burst], axis=1)
    learned, capped = capped_range(X, [0, 1, 2])
    assert capped == [1]
    assert learned[1] == pytest.approx(X[: n // 2, 1].max())
    assert learned[1] < 0.6 * X[:, 1].max()
    assert learned[2] == 900.0 and learned[0] == steady.max()
