"""Canary replay with the real profile detector trained on a real benign capture (IoT-23 Hue)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.alerts.policy import AlertPolicy
from iotsentry.detectors.profile import ProfileDetector
from iotsentry.features.device_context import DeviceIndex
from iotsentry.integrity.audit import AuditLog, read_records, verify
from iotsentry.integrity.canary import (
    CANARY_CLASSES,
    CANARY_IP_ID,
    CANARY_MARKER,
    CanaryCase,
    CanaryLeakError,
    DeviceIdentity,
    Verdict,
    canary_batch,
    canary_frames,
    canary_mask,
    canary_pcap_bytes,
    is_canary_alert,
    profile_detect_fn,
    run_canaries,
    state_digest,
)
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import Device, ip_to_str

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
HUE_MAC = "00:17:88:75:b3:82"


@dataclass
class Site:
    analyzer: Analyzer
    devices: list[Device]
    index: DeviceIndex
    detector: ProfileDetector
    identity: DeviceIdentity


def _site(paths: list[Path]) -> Site:
    an = Analyzer(paths, AnalysisConfig(learn_fraction=0.8))
    res = an.run()
    assert an.baseline is not None
    gw = next(d for d in res.devices if d.is_gateway)
    hue = next(d for d in res.devices if d.device_id == HUE_MAC)
    index = DeviceIndex([d.device_id for d in res.devices], gw.device_id)
    det = ProfileDetector(an.baseline, labels=[d.label for d in res.devices]).fit()
    return Site(an, res.devices, index, det, DeviceIdentity.from_device(hue, gw))


@pytest.fixture(scope="module")
def site() -> Site:
    return _site([data_path(*HUE)])


def test_canary_traffic_is_marked_and_decodes_as_the_device(site: Site) -> None:
    ident = site.identity
    assert ident.ip == "192.168.100.118" and ident.gateway_mac == "78:8a:20:43:93:d5"
    for cls in CANARY_CLASSES:
        b = canary_batch(cls, ident, 1_600_000_000.0)
        assert len(b) > 0 and canary_mask(b).all()
        src = {ip_to_str(h, lo) for h, lo in zip(b.src_ip_hi, b.src_ip_lo, strict=True)}
        dst = {ip_to_str(h, lo) for h, lo in zip(b.dst_ip_hi, b.dst_ip_lo, strict=True)}
        peers = (src | dst) - {ident.ip}
        assert ident.ip in src | dst and all(p.startswith("203.0.113.") for p in peers), (cls, peers)
        frames = canary_frames(cls, ident, 1_600_000_000.0)
        assert all(int.from_bytes(f[18:20], "big") == CANARY_IP_ID for _, f in frames)
        with_payload = [b.payload(i) for i in range(len(b)) if b.payload_len[i]]
        assert all(CANARY_MARKER in p for p in with_payload if len(p) >= 20 and cls != "dns-tunnel")
    pcap = canary_pcap_bytes(canary_frames("port-scan", ident, 1_600_000_000.0))
    assert pcap[:4] == b"\xd4\xc3\xb2\xa1"
    # the real capture holds no canary packet
    from iotsentry.capture.reader import read_all

    assert not canary_mask(read_all(data_path(*HUE))).any()


def test_real_profile_detector_detects_every_canary_class_without_learning(site: Site) -> None:
    base = site.analyzer.baseline
    assert base is not None and base.profiles[base.device_ids.index(HUE_MAC)].maturity().mature
    before = state_digest(base)
    det_before = state_digest(site.detector)
    detect = profile_detect_fn(site.detector, site.index, site.analyzer.tracker.ip_names)
    rep = run_canaries(
        detect, site.identity, start_ts=site.analyzer.last_ts + 120.0, guard=base, detector_name="profile"
    )
    cov = rep.as_dict()
    assert set(cov) == set(CANARY_CLASSES)
    for cls, v in cov.items():
        assert v["detected"] and v["score"] > v["threshold"] == 1.0, (cls, rep.coverage[cls])
    assert rep.coverage["port-scan"].category == "port-scan"
    assert rep.coverage["brute-force"].category == "brute-force"
    assert rep.coverage["flood"].category == "flood"
    assert rep.coverage["c2-beacon"].category == "c2"
    assert rep.missed == [] and rep.alerts == []
    # baseline and detector state are identical after the run
    assert state_digest(base) == before == rep.guard_digest
    assert state_digest(site.detector) == det_before
    # canary verdicts are marked and never look like real alerts
    assert len(rep.canary_alerts) == len(CANARY_CLASSES)
    assert all(is_canary_alert(a) and a.event_type == "canary" for a in rep.canary_alerts)
    assert all(
        a.to_eve()["event_type"] == "canary" and a.to_eve()["iotsentry"]["canary"] for a in rep.canary_alerts
    )
    real = AlertPolicy().make(
        ts=1.0,
        device_id=HUE_MAC,
        detector="profile",
        detector_version="1",
        score=3.0,
        threshold=1.0,
        category="scan",
        reason="r",
    )
    assert real is not None and not is_canary_alert(real)


def test_blind_detector_raises_detector_blind_integrity_alerts(site: Site, tmp_path: Path) -> None:
    detect = profile_detect_fn(
        site.detector, site.index, site.analyzer.tracker.ip_names, threshold=float("inf")
    )
    with AuditLog(tmp_path / "audit.jsonl") as log:
        rep = run_canaries(
            detect, site.identity, start_ts=site.analyzer.last_ts + 120.0, audit=log, detector_name="profile"
        )
    assert rep.missed == list(CANARY_CLASSES)
    assert [a.extra["canary_class"] for a in rep.alerts] == list(CANARY_CLASSES)
    for a in rep.alerts:
        eve = a.to_eve()
        assert eve["event_type"] == "integrity" and eve["alert"]["category"] == "detector-blind"
        assert eve["alert"]["severity"] == 1 and eve["device_id"] == HUE_MAC
        assert "profile missed" in eve["alert"]["reason"] and a.extra["detector_threshold"] == "inf"
        assert not is_canary_alert(a)
    assert rep.as_dict()["flood"]["threshold"] == "inf"
    recs = list(read_records(tmp_path / "audit.jsonl"))
    assert recs[-1].action == "canary.result" and recs[-1].details["missed"] == list(CANARY_CLASSES)
    assert verify(tmp_path / "audit.jsonl").ok


def _poisoned_capture(site: Site, out: Path) -> Path:
    """The Hue capture with every canary class replayed inside its learning period."""
    src = data_path(*HUE)
    with src.open("rb") as fh:
        rows = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    t0 = rows[0][0] + 300.0
    for k, cls in enumerate(CANARY_CLASSES):
        rows += canary_frames(cls, site.identity, t0 + 240.0 * k)
    rows.sort(key=lambda r: r[0])
    out.write_bytes(canary_pcap_bytes(rows))
    return out


def test_detector_trained_on_the_canaries_is_reported_blind(site: Site, tmp_path: Path) -> None:
    poisoned = _site([_poisoned_capture(site, tmp_path / "poisoned.pcap")])
    rep = run_canaries(
        profile_detect_fn(poisoned.detector, poisoned.index, poisoned.analyzer.tracker.ip_names),
        poisoned.identity,
        start_ts=poisoned.analyzer.last_ts + 120.0,
        guard=poisoned.analyzer.baseline,
    )
    # a baseline that learned the attacks no longer flags them: that is exactly what canaries
    # expose -- except the scan and brute-force shapes, whose limits are never learned past the
    # absolute per-minute floors (the profile detector's defence against baseline poisoning)
    assert set(rep.missed) == set(CANARY_CLASSES) - {"port-scan", "brute-force"}, rep.as_dict()
    assert {a.extra["canary_class"] for a in rep.alerts} == set(rep.missed)
    assert all(a.category == "detector-blind" for a in rep.alerts)


def test_a_detection_function_that_learns_from_the_canary_is_caught(site: Site) -> None:
    base = site.analyzer.baseline
    assert base is not None
    snapshot = state_digest(base)

    def leaky(case: CanaryCase) -> Verdict:
        base.profiles[0].discoveries.append(case.start_ts)  # "learns" the canary
        return Verdict(score=2.0, threshold=1.0)

    with pytest.raises(CanaryLeakError, match="changed the guarded state"):
        run_canaries(leaky, site.identity, start_ts=1.0, classes=["port-scan"], guard=base)
    base.profiles[0].discoveries.pop()
    assert state_digest(base) == snapshot


def test_background_traffic_is_mixed_in_time_order(site: Site) -> None:
    from iotsentry.capture.reader import read_all

    bg = read_all(data_path(*HUE)).take(np.arange(2000))
    seen: list[CanaryCase] = []

    def spy(case: CanaryCase) -> Verdict:
        seen.append(case)
        return Verdict(score=0.0, threshold=1.0, detected=True)

    t = float(bg.ts[500])
    rep = run_canaries(spy, site.identity, start_ts=t, classes=["port-scan"], background=bg)
    case = seen[0]
    assert len(case.batch) == 2000 + 300 and int(case.canary_rows.sum()) == 300
    assert np.all(np.diff(case.batch.ts) >= 0)
    assert np.array_equal(canary_mask(case.batch), case.canary_rows)
    assert rep.coverage["port-scan"].detected
