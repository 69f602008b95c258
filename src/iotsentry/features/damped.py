"""Damped incremental packet statistics (AfterImage-style, as in Kitsune), per packet.

For each decay rate ``lambda`` (default 5, 3, 1, 0.1, 0.01 per second) a stream keeps a
weight ``w``, a linear sum and a squared sum of its values; when a packet arrives ``dt`` seconds
after the stream was last touched, all three decay by ``2**(-lambda * dt)``, then the value
is added with weight 1. Mean = sum / w, std = sqrt(squares / w - mean**2) (population; a
variance below 1e-9 of the mean square is rounding noise and reported as 0).

Streams and features (value = ``wire_len``, frame bytes, unless stated), per ``lambda``:

========== ============================================== ==================================
group      stream key                                     features
========== ============================================== ==================================
mac_ip     source MAC + source IP                         weight, mean, std
host       source IP                                      weight, mean, std
channel    source IP -> destination IP (its reverse is    weight, mean, std (this direction);
           the other direction of the same pair)          magnitude, radius, covariance, pcc
jitter     source IP -> destination IP, value = time      weight, mean, std
           since the previous packet of that direction
socket     (IP, port) -> (IP, port) + IP protocol         as ``channel``
========== ============================================== ==================================

2-D statistics of a pair with directions ``a`` (this packet's) and ``b``, as in AfterImage:
magnitude ``sqrt(mean_a**2 + mean_b**2)``, radius ``sqrt(var_a**2 + var_b**2)``, covariance
``s3 / w3`` where ``s3`` sums the product of each packet's residual (value minus its direction's
mean) with the last residual of the other direction and ``w3`` counts the pair's packets (both
decay), pcc = covariance / (std_a * std_b) (0 when either std is 0). Unlike AfterImage, the
stored residual of the other direction decays with the pair (AfterImage decays only the
residual it is about to overwrite). The first packet of a direction has jitter 0.

That gives 23 features per ``lambda``, 115 for the default five, ordered by group, then
``lambda``, then statistic (:func:`damped_feature_names`). Frames without IP addresses
(neither IP nor ARP) use their MAC addresses as addresses, ports are ICMP type/code for ICMP
and 0 when absent.

State lives in four open-addressing hash tables inside compiled kernels
(:mod:`._damped_kernels`), carried across :meth:`DampedStats.transform` calls, so a capture
fed in batches gives exactly the features of one call over all packets. An entry whose
weight at the slowest rate fell below ``eps`` is reset when touched again, and dropped when
its table needs room (memory is bounded by the live entries, at most ``max_entries`` per
table; beyond that the least recently seen quarter is evicted with a ``RuntimeWarning``).
Timestamps are expected in order; an older packet counts with ``dt = 0`` (expiry is judged at
the latest timestamp seen, so results stay independent of batching even then).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.features import _damped_kernels as _k
from iotsentry.schema import PacketBatch

__all__ = ["DEFAULT_LAMBDAS", "DampedStats", "damped_feature_names"]

Table = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8], npt.NDArray[np.float64]]
_process: Any = _k.process
_alive: Any = _k.alive
_rebuild: Any = _k.rebuild

DEFAULT_LAMBDAS: tuple[float, ...] = (5.0, 3.0, 1.0, 0.1, 0.01)

_ONE_D = ("weight", "mean", "std")
_TWO_D = ("weight", "mean", "std", "magnitude", "radius", "covariance", "pcc")
_GROUPS = (("mac_ip", _ONE_D), ("host", _ONE_D), ("channel", _TWO_D), ("jitter", _ONE_D), ("socket", _TWO_D))
_KEY_WORDS = (3, 2, 4, 5)  # mac_ip, host, channel, socket


def _lam_text(lam: float) -> str:
    return f"{lam:g}"


def damped_feature_names(lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> list[str]:
    """Feature names in column order, e.g. ``channel_l0.1_pcc`` (23 per decay rate)."""
    return [f"{g}_l{_lam_text(lam)}_{s}" for g, stats in _GROUPS for lam in lambdas for s in stats]


class DampedStats:
    """Damped per-packet statistics with state carried across batches (module docstring).

    Parameters
    ----------
    lambdas
        Decay rates per second; weights decay as ``2**(-lambda * dt)``.
    max_entries
        Bound on the live entries of each of the four tables.
    eps
        Weight (at the slowest rate) below which an entry counts as expired.
    initial_capacity
        Initial slots per table (a power of two; tables double when half full).
    """

    def __init__(
        self,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        max_entries: int = 1_000_000,
        eps: float = 1e-3,
        initial_capacity: int = 1024,
    ) -> None:
        lams = np.asarray(lambdas, dtype=np.float64)
        if lams.ndim != 1 or len(lams) == 0 or not (lams > 0).all():
            raise ValueError("lambdas must be a non-empty list of positive rates")
        if not 0.0 < eps < 1.0:
            raise ValueError("eps must lie in (0, 1)")
        self.lambdas = tuple(float(x) for x in lams)
        self.max_entries = int(max_entries)
        self.eps = float(eps)
        self._lams = lams
        self._kmin = int(np.argmin(lams))
        self._cap0 = max(16, 1 << (int(initial_capacity) - 1).bit_length())
        self._cap_max = max(self._cap0, 1 << (2 * self.max_entries - 1).bit_length())
        self.feature_names = damped_feature_names(self.lambdas)
        self.evicted = 0
        self.reset()

    @property
    def n_features(self) -> int:
        """Columns of :meth:`transform` output (23 per decay rate)."""
        return len(self.feature_names)

    def reset(self) -> None:
        """Forget all state (start a new stream)."""
        nl = len(self.lambdas)
        widths = (1 + 3 * nl, 1 + 3 * nl, 3 + 16 * nl, 1 + 10 * nl)
        self._tables: list[Table] = [
            (
                np.zeros((self._cap0, kw), np.uint64),
                np.zeros(self._cap0, np.uint8),
                np.zeros((self._cap0, w), np.float64),
            )
            for kw, w in zip(_KEY_WORDS, widths, strict=True)
        ]
        km = self._kmin
        self._wcols = (1 + 3 * km, 1 + 3 * km, 3 + 16 * km + 13, 1 + 10 * km + 7)
        self._counts = np.zeros(4, np.int64)
        self._clock = np.full(1, -np.inf)

    def entries(self) -> tuple[int, ...]:
        """Entries held per table (mac_ip, host, channel, socket), expired ones included."""
        return tuple(int(c) for c in self._counts)

    def capacity(self) -> tuple[int, ...]:
        """Slots allocated per table."""
        return tuple(len(t[1]) for t in self._tables)

    def transform(self, batch: PacketBatch) -> npt.NDArray[np.float32]:
        """Features of every packet of ``batch`` (in row order), updating the state."""
        n = len(batch)
        out = np.empty((n, self.n_features), np.float32)
        if n == 0:
            return out
        cols = (
            np.ascontiguousarray(batch.ts, np.float64),
            np.ascontiguousarray(batch.wire_len, np.uint32),
            np.ascontiguousarray(batch.src_mac, np.uint64),
            np.ascontiguousarray(batch.dst_mac, np.uint64),
            np.ascontiguousarray(batch.src_ip_hi, np.uint64),
            np.ascontiguousarray(batch.src_ip_lo, np.uint64),
            np.ascontiguousarray(batch.dst_ip_hi, np.uint64),
            np.ascontiguousarray(batch.dst_ip_lo, np.uint64),
            np.ascontiguousarray(batch.src_port, np.uint16),
            np.ascontiguousarray(batch.dst_port, np.uint16),
            np.ascontiguousarray(batch.proto, np.uint8),
        )
        i = 0
        while i < n:
            t = self._tables
            i = _process(
                i,
                *cols,
                self._lams,
                self._kmin,
                self.eps,
                *t[0],
                *t[1],
                *t[2],
                *t[3],
                self._counts,
                self._clock,
                out,
            )
            if i < n:
                self._make_room()
        return out

    def _make_room(self) -> None:
        """Sweep expired entries of full tables; grow or evict when the live ones need it."""
        clock = float(self._clock[0])
        lam_min = float(self._lams[self._kmin])
        for j, (keys, occ, st) in enumerate(self._tables):
            cap = len(occ)
            if 2 * (self._counts[j] + 1) <= cap:
                continue
            keep = _alive(occ, st, clock, lam_min, self._wcols[j], self.eps)
            live = int(keep.sum())
            new_cap = cap
            while 4 * (live + 1) > new_cap and new_cap < self._cap_max:
                new_cap *= 2
            if 2 * (live + 1) > new_cap or live > self.max_entries:
                idx = np.flatnonzero(keep)
                drop = max(live // 4, live - self.max_entries, 1)
                oldest = idx[np.argsort(st[idx, 0], kind="stable")[:drop]]
                keep[oldest] = False
                self.evicted += drop
                warnings.warn(
                    f"damped statistics: table {j} full ({live} live entries); "
                    f"evicted the {drop} least recently seen",
                    RuntimeWarning,
                    stacklevel=3,
                )
            k2, o2, s2, count = _rebuild(keys, st, keep, new_cap)
            self._tables[j] = (k2, o2, s2)
            self._counts[j] = count
