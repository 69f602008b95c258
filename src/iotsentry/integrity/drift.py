"""Drift monitors: has the detector's score distribution, or a device's rate of change, shifted?

* :class:`ScoreDriftMonitor` compares the recent scores (a fixed-size ring window) with a
  reference sample (a fixed-size, seeded reservoir of the scores seen while the reference was
  collected) by the population stability index over reference-quantile bins and the two-sample
  Kolmogorov-Smirnov test (scipy). Memory is bounded by ``reference_size + window_size``.
* :class:`ChangeRateMonitor` counts, per device and per clock hour, the peers and the
  (protocol, port) services it had never used before, and compares each closed hour with the
  device's own history of hourly counts (bounded: at most ``history_hours`` counts,
  ``max_keys`` remembered peers/services per device and ``max_devices`` devices, least recently
  active forgotten first).

Both emit integrity alerts through :func:`iotsentry.alerts.policy.integrity_alert` (categories
``score-drift`` and ``baseline-churn``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from iotsentry.alerts.policy import integrity_alert
from iotsentry.features.device_context import PacketContext
from iotsentry.schema import Alert, PacketBatch, ip_to_str

__all__ = [
    "ChangeRateMonitor",
    "DriftResult",
    "Reservoir",
    "RingWindow",
    "ScoreDriftMonitor",
    "psi",
]

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
"""Usual reading of the PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift."""


def psi(reference: npt.ArrayLike, current: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index of two histograms (counts over the same bins).

    ``sum((c - r) * ln(c / r))`` over bin proportions, each floored at ``eps``.
    """
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if r.shape != c.shape or r.sum() <= 0 or c.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    r = np.maximum(r / r.sum(), eps)
    c = np.maximum(c / c.sum(), eps)
    return float(np.sum((c - r) * np.log(c / r)))


class Reservoir:
    """A uniform sample of at most ``capacity`` of all values added (Vitter's algorithm R)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.seen = 0
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def add(self, values: npt.ArrayLike) -> None:
        """Offer values (non-finite ones are ignored)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        fill = min(len(v), max(0, self.capacity - self.seen))
        self._buf[self.seen : self.seen + fill] = v[:fill]
        self.seen += fill
        rest = v[fill:]
        if len(rest):
            idx = self.seen + np.arange(1, len(rest) + 1)  # 1-based positions in the stream
            slot = (self._rng.random(len(rest)) * idx).astype(np.int64)
            keep = slot < self.capacity
            for s, x in zip(slot[keep].tolist(), rest[keep].tolist(), strict=True):
                self._buf[s] = x
            self.seen += len(rest)

    def values(self) -> npt.NDArray[np.float64]:
        """The current sample (a copy)."""
        return self._buf[: min(self.seen, self.capacity)].copy()


class RingWindow:
    """The most recent ``capacity`` values."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._pos = 0
        self.seen = 0

    def add(self, values: npt.ArrayLike) -> None:
        """Append values (non-finite ones are ignored); older ones fall out."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)][-self.capacity :]
        n = len(v)
        end = self._pos + n
        if end <= self.capacity:
            self._buf[self._pos : end] = v
        else:
            k = self.capacity - self._pos
            self._buf[self._pos :] = v[:k]
            self._buf[: n - k] = v[k:]
        self._pos = end % self.capacity
        self.seen += n

    def values(self) -> npt.NDArray[np.float64]:
        """The window's values, oldest first."""
        if self.seen < self.capacity:
            return self._buf[: self.seen].copy()
        return np.concatenate([self._buf[self._pos :], self._buf[: self._pos]])

    def clear(self) -> None:
        """Forget every value."""
        self._pos = 0
        self.seen = 0


@dataclass
class DriftResult:
    """One drift check: statistics, the verdict, and the alert when it drifted."""

    psi: float
    ks_stat: float
    ks_pvalue: float
    n_reference: int
    n_current: int
    drifted: bool
    reason: str
    alert: Alert | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the alert)."""
        return {
            k: getattr(self, k)
            for k in ("psi", "ks_stat", "ks_pvalue", "n_reference", "n_current", "drifted", "reason")
        }


class ScoreDriftMonitor:
    """Score-distribution drift of one detector (optionally one device) against a reference.

    Parameters
    ----------
    detector, device_id, site_id
        Written into the alert.
    reference_size, window_size
        Reservoir size of the reference and length of the recent window.
    bins
        PSI bins (reference quantiles; fewer when the reference has ties).
    psi_threshold
        PSI at or above which the distribution has drifted.
    ks_alpha, ks_min_stat
        KS drift also needs p < ``ks_alpha`` and a statistic of at least ``ks_min_stat`` (large
        windows make tiny, harmless differences significant).
    min_samples
        No verdict before the window holds this many scores.
    seed
        Seed of the reservoir.
    """

    def __init__(
        self,
        detector: str = "detector",
        device_id: str = "",
        *,
        reference_size: int = 4096,
        window_size: int = 2048,
        bins: int = 10,
        psi_threshold: float = PSI_MAJOR,
        ks_alpha: float = 0.01,
        ks_min_stat: float = 0.1,
        min_samples: int = 200,
        site_id: str = "default",
        seed: int = 0,
    ) -> None:
        if bins < 2:
            raise ValueError("bins must be >= 2")
        self.detector = detector
        self.device_id = device_id
        self.site_id = site_id
        self.bins = bins
        self.psi_threshold = psi_threshold
        self.ks_alpha = ks_alpha
        self.ks_min_stat = ks_min_stat
        self.min_samples = min_samples
        self.reference = Reservoir(reference_size, seed)
        self.window = RingWindow(window_size)
        self.edges_: npt.NDArray[np.float64] | None = None
        self._ref_counts: npt.NDArray[np.float64] | None = None
        self._ref_sample: npt.NDArray[np.float64] | None = None

    def add_reference(self, scores: npt.ArrayLike) -> None:
        """Add scores to the reference (before :meth:`freeze`)."""
        if self.edges_ is not None:
            raise RuntimeError("the reference is frozen")
        self.reference.add(scores)

    def freeze(self) -> ScoreDriftMonitor:
        """Fix the reference: its bins and histogram."""
        ref = self.reference.values()
        if len(ref) < 2:
            raise ValueError("the reference needs at least 2 finite scores")
        qs = np.quantile(ref, np.linspace(0.0, 1.0, self.bins + 1)[1:-1])
        self.edges_ = np.unique(qs)
        self._ref_counts = self._hist(ref)
        self._ref_sample = np.sort(ref)
        return self

    def _hist(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        assert self.edges_ is not None
        idx = np.searchsorted(self.edges_, x, side="right")
        return np.bincount(idx, minlength=len(self.edges_) + 1).astype(np.float64)

    def update(self, scores: npt.ArrayLike) -> None:
        """Add recent scores (the window keeps the last ``window_size``)."""
        self.window.add(scores)

    def check(self, ts: float) -> DriftResult:
        """Compare the window with the reference; the result carries an alert when it drifted."""
        if self.edges_ is None:
            self.freeze()
        assert self._ref_counts is not None and self._ref_sample is not None
        cur = self.window.values()
        n_ref, n_cur = len(self._ref_sample), len(cur)
        if n_cur < self.min_samples:
            why = f"{n_cur} recent scores of the {self.min_samples} needed"
            return DriftResult(math.nan, math.nan, math.nan, n_ref, n_cur, False, why)
        p = psi(self._ref_counts, self._hist(cur))
        ks = stats.ks_2samp(self._ref_sample, cur)
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        by_psi = p >= self.psi_threshold
        by_ks = ks_p < self.ks_alpha and ks_stat >= self.ks_min_stat
        drifted = by_psi or by_ks
        ref_med, cur_med = float(np.median(self._ref_sample)), float(np.median(cur))
        who = f"{self.detector}" + (f" on {self.device_id}" if self.device_id else "")
        reason = (
            f"score distribution of {who} {'drifted' if drifted else 'stable'}: PSI {p:.3f} "
            f"(limit {self.psi_threshold:g}), KS {ks_stat:.3f} p={ks_p:.2g}; median {cur_med:.4g} over the "
            f"last {n_cur} scores vs {ref_med:.4g} in the reference ({n_ref} sampled)"
        )
        res = DriftResult(p, ks_stat, ks_p, n_ref, n_cur, drifted, reason)
        if drifted:
            res.alert = integrity_alert(
                "score-drift",
                reason,
                ts=ts,
                device_id=self.device_id,
                detector=self.detector,
                score=p,
                threshold=self.psi_threshold,
                site_id=self.site_id,
                extra={"drift": res.to_dict()},
            )
        return res


# -- baseline change rate ------------------------------------------------------------------------------
@dataclass
class _DeviceChurn:
    peers: OrderedDict[str, None] = field(default_factory=OrderedDict)
    services: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)
    hour: int | None = None
    new_peers: int = 0
    new_services: int = 0
    history: deque[tuple[int, int]] = field(default_factory=deque)


class ChangeRateMonitor:
    """New peers / services per device per hour against the device's own hourly history.

    Parameters
    ----------
    history_hours
        Closed hours kept per device (empty hours count as 0).
    min_history
        Closed hours needed before a device can be alerted.
    k
        Limit = max(``min_new``, mean + ``k`` x standard deviation of the history).
    min_new
        Never alert for fewer new peers (services) in an hour.
    max_keys, max_devices
        Memory bounds (least recently used forgotten first).
    """

    def __init__(
        self,
        *,
        history_hours: int = 168,
        min_history: int = 6,
        k: float = 4.0,
        min_new: int = 5,
        max_keys: int = 4096,
        max_devices: int = 4096,
        site_id: str = "default",
        detector: str = "baseline-churn",
    ) -> None:
        self.history_hours = history_hours
        self.min_history = min_history
        self.k = k
        self.min_new = min_new
        self.max_keys = max_keys
        self.max_devices = max_devices
        self.site_id = site_id
        self.detector = detector
        self._devices: OrderedDict[str, _DeviceChurn] = OrderedDict()

    def _state(self, device_id: str) -> _DeviceChurn:
        st = self._devices.get(device_id)
        if st is None:
            st = self._devices[device_id] = _DeviceChurn(history=deque(maxlen=self.history_hours))
            while len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device_id)
        return st

    @staticmethod
    def _remember(store: OrderedDict[Any, None], key: Any, cap: int) -> bool:
        """Whether ``key`` is new; remember it (LRU, at most ``cap``)."""
        if key in store:
            store.move_to_end(key)
            return False
        store[key] = None
        if len(store) > cap:
            store.popitem(last=False)
        return True

    def observe(self, device_id: str, ts: float, peer: str, proto: int, port: int) -> list[Alert]:
        """One (device, peer, service) sighting at ``ts``; returns alerts of hours it closed."""
        st = self._state(device_id)
        hour = math.floor(ts / 3600.0)
        alerts = self._advance(device_id, st, hour) if st.hour is not None and hour > st.hour else []
        if st.hour is None:
            st.hour = hour
        st.new_peers += self._remember(st.peers, peer, self.max_keys)
        st.new_services += self._remember(st.services, (int(proto), int(port)), self.max_keys)
        return alerts

    def observe_many(self, rows: Iterable[tuple[str, float, str, int, int]]) -> list[Alert]:
        """Many (device_id, ts, peer, proto, port) sightings in time order."""
        out: list[Alert] = []
        for row in rows:
            out += self.observe(*row)
        return out

    def observe_packets(
        self, batch: PacketBatch, ctx: PacketContext, device_ids: Sequence[str]
    ) -> list[Alert]:
        """Every device packet of a batch (the first of each distinct device/peer/service/hour)."""
        sel = np.flatnonzero((ctx.device >= 0) & (batch.ip_version > 0))
        if not len(sel):
            return []
        hour = np.floor(batch.ts[sel] / 3600.0).astype(np.int64)
        keys = np.stack(
            [
                hour.astype(np.uint64),
                ctx.device[sel].astype(np.uint64),
                ctx.peer_hi[sel],
                ctx.peer_lo[sel],
                ctx.proto[sel].astype(np.uint64),
                ctx.service[sel].astype(np.uint64),
            ],
            axis=1,
        )
        _, first = np.unique(keys, axis=0, return_index=True)
        rows = sel[np.sort(first)]
        return self.observe_many(
            (
                device_ids[int(ctx.device[r])],
                float(batch.ts[r]),
                ip_to_str(ctx.peer_hi[r], ctx.peer_lo[r]),
                int(ctx.proto[r]),
                int(ctx.service[r]),
            )
            for r in rows.tolist()
        )

    def flush(self, now: float) -> list[Alert]:
        """Close every device's hours that ended before ``now``."""
        hour = math.floor(now / 3600.0)
        out: list[Alert] = []
        for dev, st in list(self._devices.items()):
            if st.hour is not None and hour > st.hour:
                out += self._advance(dev, st, hour)
        return out

    def history(self, device_id: str) -> list[tuple[int, int]]:
        """Closed hours of a device as (new peers, new services)."""
        st = self._devices.get(device_id)
        return list(st.history) if st is not None else []

    def _advance(self, device_id: str, st: _DeviceChurn, hour: int) -> list[Alert]:
        assert st.hour is not None
        alerts = self._close(device_id, st)
        gap = min(hour - st.hour - 1, self.history_hours)
        st.history.extend([(0, 0)] * max(gap, 0))
        st.hour, st.new_peers, st.new_services = hour, 0, 0
        return alerts

    def _close(self, device_id: str, st: _DeviceChurn) -> list[Alert]:
        assert st.hour is not None
        cur = (st.new_peers, st.new_services)
        out: list[Alert] = []
        if len(st.history) >= self.min_history:
            hist = np.asarray(st.history, dtype=np.float64)
            for j, what in enumerate(("peers", "services")):
                mean, sd = float(hist[:, j].mean()), float(hist[:, j].std())
                limit = max(float(self.min_new), mean + self.k * sd)
                if cur[j] > limit:
                    start = st.hour * 3600.0
                    reason = (
                        f"{device_id} met {cur[j]} new {what} in the hour from {_hhmm(start)} UTC, "
                        f"vs {mean:.1f} ± {sd:.1f} per hour over its last {len(hist)} hours "
                        f"(limit {limit:.1f}): its baseline is changing fast"
                    )
                    out.append(
                        integrity_alert(
                            "baseline-churn",
                            reason,
                            ts=start + 3600.0,
                            device_id=device_id,
                            detector=self.detector,
                            score=float(cur[j]),
                            threshold=limit,
                            site_id=self.site_id,
                            extra={
                                "what": what,
                                "count": cur[j],
                                "history_mean": mean,
                                "history_std": sd,
                                "hours": len(hist),
                            },
                        )
                    )
        st.history.append(cur)
        return out


def _hhmm(ts: float) -> str:
    import time as _t

    return _t.strftime("%Y-%m-%d %H:%M", _t.gmtime(ts))
