"""Damped incremental statistics against a per-packet, dict-based pure-Python reference."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.reader import read_all
from iotsentry.features.damped import DampedStats, damped_feature_names
from iotsentry.schema import PacketBatch, ip_from_str

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
MARK = 0xFFFF_FFFF_FFFF_FFFF
FLOOR = 1e-9


def _var(m2: float, mean: float) -> float:
    v = m2 - mean * mean
    return 0.0 if v <= FLOOR * m2 else v


class Inc:
    """One damped 1-D stream with its own clock (AfterImage's ``incStat``)."""

    def __init__(self, lam: float, t: float) -> None:
        self.lam, self.last, self.w, self.s1, self.s2 = lam, t, 0.0, 0.0, 0.0

    def decay(self, t: float) -> float:
        f = 1.0
        if t > self.last:
            f = 2.0 ** (-self.lam * (t - self.last))
            self.w, self.s1, self.s2, self.last = self.w * f, self.s1 * f, self.s2 * f, t
        return f

    def insert(self, v: float, t: float) -> None:
        self.decay(t)
        self.w, self.s1, self.s2 = self.w + 1.0, self.s1 + v, self.s2 + v * v

    def mean(self) -> float:
        return self.s1 / self.w if self.w > 0 else 0.0

    def var(self) -> float:
        return _var(self.s2 / self.w, self.mean()) if self.w > 0 else 0.0


class Cov:
    """Covariance of the two directions of a pair, with its own clock."""

    def __init__(self, lam: float, t: float) -> None:
        self.lam, self.last, self.s3, self.w3, self.res = lam, t, 0.0, 0.0, [0.0, 0.0]

    def update(self, d: int, v: float, t: float, streams: list[Inc]) -> tuple[float, ...]:
        streams[1 - d].decay(t)
        if t > self.last:
            f = 2.0 ** (-self.lam * (t - self.last))
            self.s3, self.w3, self.last = self.s3 * f, self.w3 * f, t
            self.res = [self.res[0] * f, self.res[1] * f]
        r = v - streams[d].mean()
        self.s3 += r * self.res[1 - d]
        self.w3 += 1.0
        self.res[d] = r
        a, b = streams[d], streams[1 - d]
        cov = self.s3 / self.w3
        sd = math.sqrt(a.var()) * math.sqrt(b.var())
        return (
            math.sqrt(a.mean() ** 2 + b.mean() ** 2),
            math.sqrt(a.var() ** 2 + b.var() ** 2),
            cov,
            cov / sd if sd > 0 else 0.0,
        )


def reference(b: PacketBatch, lams: tuple[float, ...], eps: float) -> np.ndarray:
    """Per packet, plain dicts, each stream decayed on its own clock (as AfterImage does)."""
    kmin = int(np.argmin(lams))
    one: dict[tuple[object, ...], list[Inc]] = {}
    pairs: dict[tuple[object, ...], dict[str, object]] = {}
    jit_last: dict[tuple[object, ...], float] = {}
    rows = []
    now = -math.inf  # expiry is judged at the latest timestamp seen

    def expired(streams: list[Inc], t: float) -> bool:
        s = streams[kmin]
        return s.w * 2.0 ** (-s.lam * max(now - s.last, 0.0)) < eps

    def stream1(key: tuple[object, ...], t: float) -> list[Inc]:
        if key not in one or expired(one[key], t):
            one[key] = [Inc(lam, t) for lam in lams]
        return one[key]

    def pair(key: tuple[object, ...], t: float) -> dict[str, object]:
        p = pairs.get(key)
        if p is not None:
            covs: list[Cov] = p["cov"]  # type: ignore[assignment]
            c = covs[kmin]
            if c.w3 * 2.0 ** (-c.lam * max(now - c.last, 0.0)) < eps:
                p = None
        if p is None:
            p = {
                "dir": [[Inc(lam, t) for lam in lams] for _ in range(2)],
                "jit": [[Inc(lam, t) for lam in lams] for _ in range(2)],
                "cov": [Cov(lam, t) for lam in lams],
            }
            pairs[key] = p
            for d in (0, 1):
                jit_last.pop((*key, d), None)
        return p

    for i in range(len(b)):
        t, v = float(b.ts[i]), float(b.wire_len[i])
        now = max(now, t)
        a = (int(b.src_ip_hi[i]), int(b.src_ip_lo[i]))
        z = (int(b.dst_ip_hi[i]), int(b.dst_ip_lo[i]))
        if a == (0, 0) and z == (0, 0):
            a, z = (MARK, int(b.src_mac[i])), (MARK, int(b.dst_mac[i]))
        row: list[float] = []
        for key in ((int(b.src_mac[i]), *a), a):
            ss = stream1(key, t)
            for s in ss:
                s.insert(v, t)
                row += [s.w, s.mean(), math.sqrt(s.var())]
        pa, pz = (*a, int(b.src_port[i])), (*z, int(b.dst_port[i]))
        ch_key, d = (a, z, "h"), 0
        if a > z:
            ch_key, d = (z, a, "h"), 1
        p = pair(ch_key, t)
        streams: list[list[Inc]] = p["dir"]  # type: ignore[assignment]
        covs: list[Cov] = p["cov"]  # type: ignore[assignment]
        for k in range(len(lams)):
            streams[d][k].insert(v, t)
            two = covs[k].update(d, v, t, [streams[0][k], streams[1][k]])
            s = streams[d][k]
            row += [s.w, s.mean(), math.sqrt(s.var()), *two]
        last = jit_last.get((*ch_key, d))
        jv = t - last if last is not None and t > last else 0.0
        if last is None or t > last:
            jit_last[(*ch_key, d)] = t
        jits: list[list[Inc]] = p["jit"]  # type: ignore[assignment]
        for s in jits[d]:
            s.insert(jv, t)
            row += [s.w, s.mean(), math.sqrt(s.var())]
        so_key, d = (pa, pz, int(b.proto[i])), 0
        if pa > pz:
            so_key, d = (pz, pa, int(b.proto[i])), 1
        p = pair(so_key, t)
        streams, covs = p["dir"], p["cov"]  # type: ignore[assignment]
        for k in range(len(lams)):
            streams[d][k].insert(v, t)
            two = covs[k].update(d, v, t, [streams[0][k], streams[1][k]])
            s = streams[d][k]
            row += [s.w, s.mean(), math.sqrt(s.var()), *two]
        rows.append(row)
    return np.array(rows)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # float32 output; pcc of nearly-constant streams is a ratio of tiny numbers, so compare with a
    # tolerance scaled to each column's magnitude
    scale = np.maximum(np.abs(want).max(axis=0), 1.0)
    err = np.abs(got.astype(np.float64) - want) / scale
    bad = np.argwhere(err > 1e-5)
    assert len(bad) == 0, f"{len(bad)} mismatches, first (row, col) {bad[:5].tolist()}"


def _toy() -> PacketBatch:
    """Two hosts talking both ways, a third one, a long gap (expiry) and an ARP frame."""
    h1, h2, h3 = ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2"), ip_from_str("10.0.0.3")
    rows = [
        (0.0, 100, h1, h2, 1000, 80, 6),
        (0.5, 60, h2, h1, 80, 1000, 6),
        (0.5, 1500, h1, h2, 1000, 80, 6),
        (1.25, 400, h1, h3, 5353, 53, 17),
        (2.0, 60, h2, h1, 80, 1000, 6),
        (5000.0, 200, h1, h2, 1000, 80, 6),  # long gap: every entry expired
        (5000.0, 42, (0, 0), (0, 0), 0, 0, 0),
        (4999.0, 60, h2, h1, 80, 1000, 6),  # out of order: no decay
        (1.0, 70, h1, h3, 5353, 53, 17),  # far out of order: judged expired at t=5000
    ]
    n = len(rows)
    return PacketBatch(
        {
            "ts": np.array([r[0] for r in rows]),
            "wire_len": np.array([r[1] for r in rows]),
            "src_mac": np.array([0xA0 + (r[2][1] & 0xFF) for r in rows], np.uint64),
            "dst_mac": np.array([0xA0 + (r[3][1] & 0xFF) for r in rows], np.uint64),
            "src_ip_hi": np.array([r[2][0] for r in rows], np.uint64),
            "src_ip_lo": np.array([r[2][1] for r in rows], np.uint64),
            "dst_ip_hi": np.array([r[3][0] for r in rows], np.uint64),
            "dst_ip_lo": np.array([r[3][1] for r in rows], np.uint64),
            "src_port": np.array([r[4] for r in rows]),
            "dst_port": np.array([r[5] for r in rows]),
            "proto": np.array([r[6] for r in rows]),
            "index": np.arange(n),
        }
    )


def test_names() -> None:
    names = damped_feature_names()
    assert len(names) == 115 == len(set(names))
    assert names[0] == "mac_ip_l5_weight" and names[-1] == "socket_l0.01_pcc"
    assert DampedStats(lambdas=(1.0, 0.1)).n_features == 46


def test_toy_against_reference_and_hand_values() -> None:
    b = _toy()
    lams = (5.0, 1.0, 0.01)
    got = DampedStats(lambdas=lams).transform(b)
    _close(got, reference(b, lams, 1e-3))
    one_by_one = DampedStats(lambdas=lams, initial_capacity=16)
    np.testing.assert_array_equal(np.vstack([one_by_one.transform(b.take([i])) for i in range(len(b))]), got)
    names = damped_feature_names(lams)
    col = {n: i for i, n in enumerate(names)}
    # packet 2: third frame of 10.0.0.1 -> 10.0.0.2 at t=0.5 (previous at t=0, 100 bytes)
    f = 2.0 ** (-1.0 * 0.5)
    assert got[2, col["channel_l1_weight"]] == pytest.approx(f + 1, rel=1e-6)
    assert got[2, col["channel_l1_mean"]] == pytest.approx((100 * f + 1500) / (f + 1), rel=1e-6)
    assert got[2, col["jitter_l1_mean"]] == pytest.approx(0.5 / (f + 1), rel=1e-6)
    # after the long gap the pair starts afresh: weight 1, jitter 0
    assert got[5, col["channel_l0.01_weight"]] == pytest.approx(1.0)
    assert got[5, col["jitter_l0.01_mean"]] == 0.0
    assert np.isfinite(got).all()


@pytest.mark.slow
def test_real_capture_against_reference() -> None:
    b = read_all(data_path(*HUE)).take(np.arange(3000))
    got = DampedStats().transform(b)
    _close(got, reference(b, (5.0, 3.0, 1.0, 0.1, 0.01), 1e-3))


@pytest.mark.slow
def test_batch_split_invariance_and_bounded_memory() -> None:
    b = read_all(data_path(*HUE))
    whole = DampedStats().transform(b)
    ds = DampedStats(initial_capacity=16)
    cuts = np.r_[0, np.sort(np.random.default_rng(0).choice(len(b), 40, replace=False)), len(b)]
    parts = [ds.transform(b.take(np.arange(lo, hi))) for lo, hi in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.vstack(parts), whole)
    # sweeping expired entries when a table fills up keeps it far below one slot per packet
    assert max(ds.capacity()) < len(b) / 4


def test_expired_entries_are_dropped_not_grown() -> None:
    """A stream of ever-new hosts, each seen once, far apart in time: tables stay small."""
    n = 5000
    b = PacketBatch(
        {
            "ts": np.arange(n, dtype=np.float64) * 2000.0,
            "wire_len": np.full(n, 60),
            "src_ip_lo": 0xFFFF_0000_0000 + np.arange(n, dtype=np.uint64),
            "dst_ip_lo": np.full(n, 0xFFFF_0A00_0001, np.uint64),
        }
    )
    ds = DampedStats(initial_capacity=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.transform(b)
    assert max(ds.capacity()) <= 16
    assert ds.evicted == 0
