"""The monitor over hourly files: the incidents of ``analyze``, a living baseline saved and
restored, and operators' verdicts (expected, taken back) applied to it and audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servekit import config_text

from iotsentry.alerts.incidents import fold_all, is_notice
from iotsentry.baseline.persist import load_baseline
from iotsentry.integrity.audit import read_records
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.serve.config import load_config
from iotsentry.serve.monitor import BASELINE_DIR, JsonLog, Monitor, build_monitor
from iotsentry.store import open_store
from lanhome import T0, Lan, write

HUB, CAM = "192.168.7.80", "192.168.7.81"
HUB_MAC, CAM_MAC = "02:00:00:00:00:80", "02:00:00:00:00:81"
H = 3600.0


def _home(hours: int) -> Lan:
    """Two devices naming their clouds; from hour 2 the hub keeps an IRC-style channel to a bare
    IP (every hour), and reaches a second service of its cloud every 20 minutes (absorbed)."""
    lan = Lan()
    lan.device(HUB, HUB_MAC)
    lan.device(CAM, CAM_MAC)
    t, n = 0.0, 0
    while t < hours * H:
        lan.dns(T0 + t, HUB, "hub.vendorcloud.com", "203.0.113.10", sport=40000 + n % 1000)
        lan.session(T0 + t + 0.5, HUB, "203.0.113.10", 443, 41000 + n % 1000)
        lan.dns(T0 + t + 1, CAM, "cam.camcloud.net", "198.51.100.20", sport=40000 + n % 1000)
        lan.session(T0 + t + 1.5, CAM, "198.51.100.20", 443, 42000 + n % 1000)
        if t >= 2 * H and n % 20 == 2:
            lan.session(T0 + t + 5.0, HUB, "203.0.113.10", 8883, 47000 + n % 1000)
        if t >= 2 * H and n % 60 == 30:
            lan.session(T0 + t + 9.0, HUB, "192.0.2.90", 6667, 45000 + n % 1000, turns=4, span=30.0)
        t, n = t + 60.0, n + 1
    return lan


def _hourly(lan: Lan, pcaps: Path, hours: range) -> None:
    pcaps.mkdir(parents=True, exist_ok=True)
    for h in hours:
        rows = [r for r in lan.rows if T0 + h * H <= r[0] < T0 + (h + 1) * H]
        if rows:
            write(pcaps / f"cap-{h:04d}.pcap", rows)


def _run(cfg: Path) -> Monitor:
    class Quiet:
        def write(self, s: str) -> None:
            pass

        def flush(self) -> None:
            pass

    mon = build_monitor(load_config(cfg), log=JsonLog(Quiet()))  # type: ignore[arg-type]
    try:
        mon.run(handle_signals=False, idle_exit_s=1.0)
    finally:
        mon.close()
    return mon


def _setup(root: Path) -> Path:
    cfg = root / "serve.toml"
    cfg.write_text(config_text(root, learn_s=H))
    return cfg


def _incidents(root: Path) -> list[tuple[str, str, float]]:
    with open_store(root / "store.db") as store:
        items, _ = store.query_incidents(limit=1000)
    return sorted((i.device_id, i.cause, round(i.first_ts, 6)) for i in items)


def _audit(root: Path, action: str) -> list[dict[str, Any]]:
    return [r.details for r in read_records(root / "audit.jsonl") if r.action == action]


def test_hourly_files_through_the_monitor_give_analyzes_incidents(tmp_path: Path) -> None:
    lan = _home(hours=6)
    res = Analyzer([write(tmp_path / "whole.pcap", lan.rows)], AnalysisConfig(learn_seconds=H)).run()
    want = sorted(
        (i.device_id, i.cause, round(i.first_ts, 6))
        for i in fold_all([a for a in res.alerts if not is_notice(a)]).incidents()
    )
    assert [(d, c) for d, c, _ in want] == [(HUB_MAC, "c2")]  # the channel; nothing else
    root = tmp_path / "mon"
    root.mkdir()
    cfg = _setup(root)
    _hourly(lan, root / "pcaps", range(6))
    _run(cfg)
    assert _incidents(root) == want
    # what the living baseline absorbed was audited, and the saved baseline holds it
    absorbed = _audit(root, "baseline.absorbed")
    assert any(d["item"] == "TCP/8883" and d["device_id"] == HUB_MAC for d in absorbed)
    saved = load_baseline(root / "state" / BASELINE_DIR)
    hub = saved.device_ids.index(HUB_MAC)
    assert saved.has_item(hub, "service", "TCP/8883")
    assert any(h["item"] == "TCP/8883" for h in saved.profiles[hub].history)


def test_an_incident_marked_expected_is_absorbed_then_taken_back(tmp_path: Path) -> None:
    lan = _home(hours=8)
    root = tmp_path / "mon"
    root.mkdir()
    cfg = _setup(root)
    _hourly(lan, root / "pcaps", range(4))
    _run(cfg)
    with open_store(root / "store.db") as store:
        items, _ = store.query_incidents(limit=100)
        c2 = next(i for i in items if i.cause == "c2")
        store.set_incident_status(c2.incident_id, "expected", "alice", scope="device")
    _hourly(lan, root / "pcaps", range(4, 6))
    _run(cfg)  # restart: restores the baseline, applies the verdict, reads two more hours
    applied = _audit(root, "baseline.expected")
    assert len(applied) == 1 and applied[0]["by"] == "alice" and applied[0]["incident"] == c2.incident_id
    assert any(r["item"] == "192.0.2.0/24" for r in applied[0]["records"])
    with open_store(root / "store.db") as store:
        alerts = store.get_alerts(since=T0 + 4 * H, limit=1000)
        assert not [r for r in alerts if r.alert.category == "c2"]  # the accepted channel goes on, quietly
        fb = store.baseline_feedback(c2.incident_id)
        assert fb[0].applied_at is not None and json.loads(fb[0].result or "{}")["records"]
        store.set_incident_status(c2.incident_id, "open", "alice")  # taken back
    _hourly(lan, root / "pcaps", range(6, 8))
    _run(cfg)
    reverted = _audit(root, "baseline.reverted")
    assert len(reverted) == 1 and reverted[0]["records"]
    saved = load_baseline(root / "state" / BASELINE_DIR)
    assert not saved.has_item(saved.device_ids.index(HUB_MAC), "network", "192.0.2.0/24")
    with open_store(root / "store.db") as store:
        later = store.get_alerts(since=T0 + 6 * H, limit=1000)
        assert [r for r in later if r.alert.category == "c2"]  # alerted again
