"""The detection engine over hours of traffic: per-device clocks, living baselines, the c2 rule,
notices, operator feedback, and the same alerts however the stream is cut into files."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotsentry.alerts.incidents import fold_all, is_notice
from iotsentry.capture.appfields import keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.engine import DetectionEngine
from iotsentry.pipeline import AnalysisConfig, AnalysisResult, Analyzer
from iotsentry.schema import Alert
from lanhome import SYN, T0, Lan, write

HUB, CAM, LATE, SENSOR = "192.168.7.70", "192.168.7.71", "192.168.7.72", "192.168.7.73"
HUB_MAC, CAM_MAC, LATE_MAC, SENSOR_MAC = (f"02:00:00:00:00:{x}" for x in ("70", "71", "72", "73"))
H = 3600.0
LEARN_S = H


def _home(hours: float = 6.0) -> Lan:
    """Devices that name their clouds; a camera that joins after 2 h; a LAN-only sensor."""
    lan = Lan()
    for ip, mac in ((HUB, HUB_MAC), (CAM, CAM_MAC), (LATE, LATE_MAC), (SENSOR, SENSOR_MAC)):
        lan.device(ip, mac)
    t, n = 0.0, 0
    while t < hours * H:
        lan.dns(T0 + t, HUB, "hub.vendorcloud.com", "203.0.113.10", sport=40000 + n % 1000)
        lan.session(T0 + t + 0.5, HUB, "203.0.113.10", 443, 41000 + n % 1000)
        lan.dns(T0 + t + 1, CAM, "cam.camcloud.net", "198.51.100.20", sport=40000 + n % 1000)
        lan.session(T0 + t + 1.5, CAM, "198.51.100.20", 443, 42000 + n % 1000)
        lan.udp(T0 + t + 2, SENSOR, HUB, 5683, 5683)  # LAN only
        if t >= 2 * H:
            lan.dns(T0 + t + 3, LATE, "late.camcloud.net", "198.51.100.30", sport=40000 + n % 1000)
            lan.session(T0 + t + 3.5, LATE, "198.51.100.30", 443, 43000 + n % 1000)
        t, n = t + 60.0, n + 1
    return lan


def _analyse(lan: Lan, tmp_path: Path, name: str = "home.pcap") -> AnalysisResult:
    return Analyzer([write(tmp_path / name, lan.rows)], AnalysisConfig(learn_seconds=LEARN_S)).run()


def _security(res: AnalysisResult) -> list[Alert]:
    return [a for a in res.alerts if not is_notice(a)]


def test_a_quiet_home_over_hours_raises_nothing(tmp_path: Path) -> None:
    res = _analyse(_home(), tmp_path)
    assert _security(res) == []


def test_a_device_that_joins_later_learns_on_its_own_clock(tmp_path: Path) -> None:
    lan = _home()
    # the late camera opens a session to a new bare IP 10 minutes after it appears: still learning
    lan.session(T0 + 2 * H + 600.0, LATE, "192.0.2.55", 8443, 44000, turns=5, span=30.0)
    res = _analyse(lan, tmp_path)
    late = res.baselines[LATE_MAC]
    assert late["learn_start"] >= T0 + 2 * H and late["learn_end"] == pytest.approx(
        (late["learn_start"] + LEARN_S) // 60 * 60
    )
    assert late["learn_start"] > res.stats["learn_end"]  # after the first devices' learning end
    assert {p["ip"] for p in late["peers"]} >= {"198.51.100.30", "192.0.2.55"}
    assert _security(res) == []


def test_the_c2_rule_needs_a_sustained_answered_channel(tmp_path: Path) -> None:
    lan = _home()
    t = T0 + 3 * H
    lan.session(t, HUB, "192.0.2.80", 80, 45000)  # one request, one answer: a connectivity check
    lan.session(t + 600.0, HUB, "192.0.2.90", 6667, 45001, turns=4, span=30.0)  # an IRC-style channel
    res = _analyse(lan, tmp_path)
    c2 = [a for a in _security(res) if a.category == "c2"]
    assert [(a.device_id, a.dest_ip, a.dest_port) for a in c2] == [(HUB_MAC, "192.0.2.90", 6667)]
    assert "by bare IP, no DNS name" in c2[0].reason


def test_an_unanswered_scan_is_a_scan_not_a_command_channel(tmp_path: Path) -> None:
    lan = _home()
    t = T0 + 3 * H
    for i in range(120):
        lan.tcp(t + i * 0.2, CAM, f"192.0.2.{i + 1}", 50000 + i, 23, SYN)
        lan.tcp(t + i * 0.2 + 3.0, CAM, f"192.0.2.{i + 1}", 50000 + i, 23, SYN)  # retransmission
    res = _analyse(lan, tmp_path)
    cats = {a.category for a in _security(res) if a.device_id == CAM_MAC}
    assert "scan" in cats and "c2" not in cats


def test_a_device_without_remote_peers_is_still_learning_them(tmp_path: Path) -> None:
    """The sensor talks only on the LAN while it learns; when it starts using a cloud it is not
    alerted: what its baseline never held is absorbed (and said so in its history)."""
    lan = _home()
    t = 3 * H
    while t < 6 * H:
        lan.dns(T0 + t, SENSOR, "s.sensorcloud.org", "203.0.113.150", sport=46000)
        lan.session(T0 + t + 0.5, SENSOR, "203.0.113.150", 8883, 46001)
        t += 600.0
    res = _analyse(lan, tmp_path)
    assert [a for a in _security(res) if a.device_id == SENSOR_MAC] == []
    hist = res.baselines[SENSOR_MAC]["history"]
    assert any(h["kind"] == "network" and h["item"] == "203.0.113.0/24" for h in hist)
    assert all("still learning them" in h["reason"] for h in hist if h["kind"] == "network")


def test_new_behaviour_that_persists_unalerted_is_absorbed(tmp_path: Path) -> None:
    """From hour 2 the hub also reaches a second service of its own cloud's network every 20
    minutes: one new service is below every limit; after 3 separate hours it is learned."""
    lan = _home(hours=7.0)
    t = 2 * H + 120.0
    while t < 7 * H:
        lan.session(T0 + t, HUB, "203.0.113.10", 8883, 47000 + int(t) % 1000)
        t += 1200.0
    res = _analyse(lan, tmp_path)
    assert _security(res) == []
    absorbed = [r for r in res.absorbed if r["device_id"] == HUB_MAC and r["item"] == "TCP/8883"]
    assert absorbed and absorbed[0]["source"] == "auto" and absorbed[0]["ts"] >= T0 + 4 * H
    assert "TCP/8883" in {s["service"] for s in res.baselines[HUB_MAC]["services"]}


def test_a_silent_device_gets_one_offline_notice_not_an_incident(tmp_path: Path) -> None:
    lan = _home()
    lan.rows = [r for r in lan.rows if not (r[0] > T0 + 3 * H and _from(r[1], CAM))]
    res = _analyse(lan, tmp_path)
    notes = [a for a in res.alerts if a.device_id == CAM_MAC and is_notice(a)]
    assert len(notes) == 1 and notes[0].category == "offline" and notes[0].event_type == "notice"
    assert notes[0].severity == 4 and "sent nothing for" in notes[0].reason
    assert fold_all(res.alerts).incidents() == []


def _from(frame: bytes, ip: str) -> bool:
    return frame[26:30] == bytes(int(x) for x in ip.split(".")) or frame[30:34] == bytes(
        int(x) for x in ip.split(".")
    )


def _engine_alerts(files: list[Path]) -> list[Alert]:
    eng = DetectionEngine(LEARN_S)
    out: list[Alert] = []
    for f in files:
        for b in read_packets(f, batch_size=1_000, with_raw=keep_raw_for_app_fields):
            out += eng.ingest(b).alerts
    return out + eng.flush().alerts


def _key(a: Alert) -> tuple[object, ...]:
    return (round(a.timestamp, 6), a.device_id, a.category, a.dest_ip, a.dest_port, a.reason)


def test_hourly_files_give_the_alerts_of_one_file(tmp_path: Path) -> None:
    lan = _home(hours=7.0)
    t = 2 * H + 120.0
    while t < 7 * H:  # absorbed at an hour tick: the tick must not depend on the cut
        lan.session(T0 + t, HUB, "203.0.113.10", 8883, 47000 + int(t) % 1000)
        t += 1200.0
    lan.session(T0 + 5 * H + 30.0, HUB, "192.0.2.90", 6667, 45001, turns=4, span=30.0)
    whole = write(tmp_path / "whole.pcap", lan.rows)
    files = []
    for h in range(8):
        rows = [r for r in lan.rows if T0 + h * H <= r[0] < T0 + (h + 1) * H]
        if rows:
            files.append(write(tmp_path / f"hour-{h}.pcap", rows))
    batch = Analyzer([whole], AnalysisConfig(learn_seconds=LEARN_S)).run()
    streamed = _engine_alerts(files)
    assert sorted(map(_key, streamed)) == sorted(map(_key, batch.alerts))
    assert any(a.category == "c2" for a in streamed)
    assert sorted((i.device_id, i.cause, i.first_ts) for i in fold_all(streamed).incidents()) == sorted(
        (i.device_id, i.cause, i.first_ts) for i in fold_all(batch.alerts).incidents()
    )


def test_operator_feedback_absorbs_an_incidents_behaviour_and_takes_it_back(tmp_path: Path) -> None:
    lan = _home(hours=7.0)
    for k in range(5):  # the same channel comes back every hour
        lan.session(T0 + (2 + k) * H + 30.0, HUB, "192.0.2.90", 6667, 45001 + k, turns=4, span=30.0)
    eng = DetectionEngine(LEARN_S)
    path = write(tmp_path / "fb.pcap", lan.rows)
    batches = list(read_packets(path, batch_size=2_000, with_raw=keep_raw_for_app_fields))
    alerts: list[Alert] = []
    cut = next(i for i, b in enumerate(batches) if b.ts[-1] > T0 + 3 * H)
    for b in batches[: cut + 1]:
        alerts += eng.ingest(b).alerts
    inc = [i for i in fold_all(alerts).incidents() if i.cause == "c2"]
    assert inc and inc[0].device_id == HUB_MAC
    evidence = {"evidence": inc[0].evidence, "categories": inc[0].categories}
    recs = eng.apply_feedback(
        "absorb", HUB_MAC, "device", evidence, who="alice", ts=eng.last_ts, reason="expected"
    )
    assert any(r["kind"] == "network" and r["item"] == "192.0.2.0/24" for r in recs)
    assert eng.baseline.has_item(eng.baseline.device_ids.index(HUB_MAC), "network", "192.0.2.0/24")
    later: list[Alert] = []
    for b in batches[cut + 1 :]:
        later += eng.ingest(b).alerts
    assert not [a for a in later if a.category == "c2"]  # accepted: no longer alerted
    back = eng.apply_feedback(
        "revert", HUB_MAC, "device", evidence, who="alice", ts=eng.last_ts, reason="no", undo=recs
    )
    assert back and not eng.baseline.has_item(
        eng.baseline.device_ids.index(HUB_MAC), "network", "192.0.2.0/24"
    )
    with pytest.raises(ValueError, match="scope"):
        eng.apply_feedback("absorb", HUB_MAC, "everyone", evidence, who="x", ts=0.0, reason="x")


def test_baselines_are_summarised_when_read_not_for_the_whole_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine.baselines() names the learned devices; a summary is built only for the device read
    (the monitor saves the changed devices' profiles without summarising every device)."""
    path = write(tmp_path / "home.pcap", _home().rows)
    eng = DetectionEngine(LEARN_S)
    for b in read_packets(path, batch_size=2_000, with_raw=keep_raw_for_app_fields):
        eng.ingest(b)
    eng.flush()
    made: list[int] = []
    real = eng.summary
    monkeypatch.setattr(eng, "summary", lambda i: made.append(i) or real(i))
    base = eng.baselines()
    assert set(base) == {HUB_MAC, CAM_MAC, LATE_MAC, SENSOR_MAC} and made == []
    hub = base[HUB_MAC]
    assert len(made) == 1 and hub["device_id"] == HUB_MAC and "TCP/443" in str(hub["services"])
    assert dict(base)[HUB_MAC] == hub  # the same profile however often it is read
