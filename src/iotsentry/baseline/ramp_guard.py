"""Drift-rate limits on learning: a baseline refuses behaviour that ramps up while it learns.

A "boiling frog" attacker present during learning raises its activity slowly, so that the
baseline learns the attack (its peers, services and volumes) and the real attack later stays
inside the learned limits. A device's settled behaviour is roughly stationary over its learning
period; an attacker's ramp is not. The guard compares, per learned key (a device's peer or
service), the packets of the second half of the device's learning span with those of the first
half: a key whose second half exceeds ``RAMP_RATIO`` x its first half plus ``RAMP_SLACK`` packets
grew faster than the baseline may drift, and is quarantined -- never learned, so after learning
it is as new as on the first day. The same test applied to the per-window volume and shape
features (upper quartile and mean both rising ``RAMP_RATIO`` x between the halves) caps that
feature's learned range at the first half's.

Memory stays bounded: per key a ``BINS``-bin histogram of packet times over the device's
learning span, whose bin width doubles (adjacent bins merged) as the span grows, so the halves
are known to 1/``BINS`` of the span whatever its length.

A linear ramp from zero has three times as many packets in its second half as in its first, so
``RAMP_RATIO = 2`` flags it; an attacker who ramps more slowly than that, or who is present at a
constant rate from the first packet the baseline sees, is indistinguishable from the device here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BINS = 16
"""Histogram bins per key over its device's learning span."""
FIRST_WIDTH_S = 60.0
"""Initial bin width (doubled as the span grows)."""
RAMP_RATIO = 2.0
"""Largest allowed growth of a key's packets from the first to the second half of learning."""
RAMP_SLACK = 30.0
"""Packets a key may add in the second half beyond ``RAMP_RATIO`` x the first (small keys are noise)."""
MIN_SPAN_BINS = 4
"""The guard judges a device only once its learning span covers this many initial bins."""


@dataclass
class _DeviceClock:
    t0: float
    t_last: float
    width: float = FIRST_WIDTH_S


@dataclass
class RampGuard:
    """Per-key packet-time histograms of a learning period, and the keys that ramped."""

    clocks: dict[int, _DeviceClock] = field(default_factory=dict)
    hist: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)
    width: dict[int, float] = field(default_factory=dict)
    device: dict[int, int] = field(default_factory=dict)

    def _clock(self, dev: int, t_first: float, t_last: float) -> _DeviceClock:
        c = self.clocks.get(dev)
        if c is None:
            c = self.clocks[dev] = _DeviceClock(t_first, t_last)
        c.t_last = max(c.t_last, t_last)
        while t_last - c.t0 >= BINS * c.width:
            c.width *= 2.0
        return c

    def _hist_of(self, key: int, dev: int, width: float) -> npt.NDArray[np.float64]:
        h = self.hist.get(key)
        if h is None:
            self.device[key] = dev
            self.width[key] = width
            h = self.hist[key] = np.zeros(BINS)
            return h
        while self.width[key] < width:  # coarsen: merge adjacent bins
            h = np.concatenate([h.reshape(-1, 2).sum(axis=1), np.zeros(BINS // 2)])
            self.width[key] *= 2.0
        self.hist[key] = h
        return h

    def add(
        self,
        keys: npt.NDArray[np.uint64],
        devices: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
    ) -> None:
        """Count packets (one per element) of the given keys at the given times."""
        if not len(keys):
            return
        for d in np.unique(devices).tolist():
            sel = devices == d
            t = ts[sel]
            c = self._clock(int(d), float(t.min()), float(t.max()))
            b = np.minimum(((t - c.t0) // c.width).astype(np.int64), BINS - 1)
            uk, inv = np.unique(keys[sel], return_inverse=True)
            code = inv.ravel().astype(np.int64) * BINS + b
            codes, counts = np.unique(code, return_counts=True)
            for k_i in np.unique(codes // BINS).tolist():
                h = self._hist_of(int(uk[k_i]), int(d), c.width)
                m = (codes // BINS) == k_i
                np.add.at(h, codes[m] % BINS, counts[m])

    def ramped(self) -> dict[int, tuple[float, float]]:
        """Keys that grew faster than the allowed drift: key -> (first-half, second-half) packets."""
        out: dict[int, tuple[float, float]] = {}
        for key, h in self.hist.items():
            c = self.clocks[self.device[key]]
            span = c.t_last - c.t0
            if span < MIN_SPAN_BINS * FIRST_WIDTH_S:
                continue
            mid = span / 2.0 / self.width[key]
            i = int(mid)
            first = float(h[:i].sum()) + ((mid - i) * float(h[i]) if i < BINS else 0.0)
            second = float(h.sum()) - first
            if second > RAMP_RATIO * first + RAMP_SLACK:
                out[key] = (first, second)
        return out


def capped_range(X: npt.NDArray[np.float64], cols: list[int]) -> tuple[npt.NDArray[np.float64], list[int]]:
    """Per-feature learned maximum of time-ordered window rows, refusing a ramp.

    For each column in ``cols`` whose upper quartile and mean both grew more than
    ``RAMP_RATIO`` x from the first half of the rows to the second (and by more than one unit),
    the maximum of the first half is returned instead of the overall maximum. Returns the
    maxima and the columns that were capped.
    """
    learned = X.max(axis=0) if len(X) else np.zeros(X.shape[1])
    capped: list[int] = []
    if len(X) < 2 * MIN_SPAN_BINS:
        return learned, capped
    half = len(X) // 2
    a, b = X[:half], X[half:]
    for j in cols:
        q1, q2 = float(np.quantile(a[:, j], 0.75)), float(np.quantile(b[:, j], 0.75))
        mean1, mean2 = float(a[:, j].mean()), float(b[:, j].mean())
        if q2 > RAMP_RATIO * q1 + 1.0 and mean2 > RAMP_RATIO * mean1 + 1.0:
            learned[j] = float(a[:, j].max())
            capped.append(j)
    return learned, capped
