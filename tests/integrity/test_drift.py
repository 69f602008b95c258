"""Drift monitors: PSI/KS on score distributions (seeded), hourly change rate, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from iotsentry.integrity.drift import ChangeRateMonitor, Reservoir, RingWindow, ScoreDriftMonitor, psi


def test_psi_hand_computed() -> None:
    assert psi([50, 50], [50, 50]) == pytest.approx(0.0)
    # (0.2-0.5)*ln(0.2/0.5) + (0.8-0.5)*ln(0.8/0.5)
    want = -0.3 * np.log(0.4) + 0.3 * np.log(1.6)
    assert psi([5, 5], [2, 8]) == pytest.approx(want)
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_reservoir_is_bounded_and_uniform() -> None:
    r = Reservoir(1000, seed=1)
    for chunk in np.array_split(np.arange(100_000, dtype=float), 37):
        r.add(chunk)
    v = r.values()
    assert len(v) == 1000 and r.seen == 100_000 and len(set(v.tolist())) == 1000
    assert abs(np.mean(v) - 50_000) < 3000  # a uniform sample of 0..99999
    w = RingWindow(5)
    w.add([1, 2, 3])
    w.add([4, 5, 6, 7])
    assert w.values().tolist() == [3, 4, 5, 6, 7]
    w.add(np.arange(100.0))
    assert w.values().tolist() == [95, 96, 97, 98, 99]


def _monitor(seed: int) -> ScoreDriftMonitor:
    rng = np.random.default_rng(seed)
    m = ScoreDriftMonitor("kitnet", "00:17:88:75:b3:82", reference_size=4000, window_size=2000, seed=seed)
    for _ in range(20):  # streaming reference: 20 000 scores through a 4000-slot reservoir
        m.add_reference(rng.gamma(2.0, 0.05, size=1000))
    return m.freeze()


def test_same_distribution_stays_quiet() -> None:
    for seed in range(5):
        m = _monitor(seed)
        rng = np.random.default_rng(100 + seed)
        for _ in range(10):
            m.update(rng.gamma(2.0, 0.05, size=500))
        res = m.check(ts=1_700_000_000.0)
        assert not res.drifted and res.alert is None, res.reason
        assert res.psi < 0.05 and res.n_current == 2000 and res.n_reference == 4000


def test_shifted_distribution_fires_a_drift_alert() -> None:
    m = _monitor(7)
    rng = np.random.default_rng(8)
    m.update(rng.gamma(2.0, 0.05, size=2000) * 1.6)  # scores inflated by 60 %
    res = m.check(ts=1_700_000_000.0)
    assert res.drifted and res.psi > 0.25 and res.ks_pvalue < 1e-6, res.reason
    a = res.alert
    assert a is not None
    eve = a.to_eve()
    assert eve["event_type"] == "integrity" and eve["alert"]["category"] == "score-drift"
    assert eve["device_id"] == "00:17:88:75:b3:82" and eve["alert"]["detector"] == "kitnet"
    assert "PSI" in eve["alert"]["reason"] and eve["iotsentry"]["integrity"]
    # a subtle location shift caught by KS alone
    m2 = _monitor(9)
    m2.update(np.random.default_rng(10).gamma(2.0, 0.05, size=2000) + 0.02)
    res2 = m2.check(ts=0.0)
    assert res2.drifted and res2.ks_stat >= 0.1


def test_too_few_recent_scores_give_no_verdict() -> None:
    m = _monitor(1)
    m.update(np.ones(50))
    res = m.check(ts=0.0)
    assert not res.drifted and "needed" in res.reason


def test_change_rate_fires_on_a_burst_of_new_peers_only() -> None:
    mon = ChangeRateMonitor(min_history=6)
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)
    rng = np.random.default_rng(0)
    alerts = []
    # 12 quiet hours: the same 5 peers and 2 services, one brand new peer now and then
    for h in range(12):
        for k in range(60):
            peer = f"198.51.100.{rng.integers(1, 6)}"
            alerts += mon.observe("cam", t0 + h * 3600 + k * 60, peer, 6, 443 if k % 2 else 123)
        if h % 4 == 3:
            alerts += mon.observe("cam", t0 + h * 3600 + 3599, f"198.51.100.{100 + h}", 6, 443)
    assert alerts == []
    # hour 12: 40 new peers on a new port (a scan); also a quiet second device
    for k in range(40):
        alerts += mon.observe("cam", t0 + 12 * 3600 + k * 10, f"203.0.113.{k}", 6, 23)
    alerts += mon.observe("plug", t0 + 12 * 3600 + 5, "198.51.100.9", 17, 123)
    alerts += mon.flush(t0 + 13 * 3600 + 1)
    assert len(alerts) == 1
    a = alerts[0]
    assert a.device_id == "cam" and a.category == "baseline-churn" and a.event_type == "integrity"
    assert a.extra["what"] == "peers" and a.extra["count"] == 40 and "40 new peers" in a.reason
    assert len(mon.history("cam")) == 13


def test_change_rate_memory_is_bounded() -> None:
    mon = ChangeRateMonitor(history_hours=24, max_keys=100, max_devices=3)
    for d in range(5):
        for k in range(500):
            mon.observe(f"d{d}", 3600.0 * k, f"10.0.{k // 250}.{k % 250}", 6, k)
    assert len(mon._devices) == 3
    st = mon._devices["d4"]
    assert len(st.peers) == 100 and len(st.services) == 100 and len(st.history) == 24
