"""Slow scan / slow discovery: distinct new targets over a sliding horizon (profile detector)."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from iotsentry.detectors.profile import SLOW_FLOOR_MATURE, SlowScanState
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import Alert, PacketBatch

DEV_MAC = bytes.fromhex("020000000010")
GW_MAC = bytes.fromhex("020000000001")
DEV_IP = "192.168.1.10"
GW_IP = "192.168.1.1"
CLOUD_IP = "93.184.216.34"
TARGET_IP = "198.51.100.7"
T0 = 1_700_000_000.0
LEARN_S = 7200.0


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def _frame(src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    out_mac = src == DEV_IP
    eth = dpkt.ethernet.Ethernet(
        src=DEV_MAC if out_mac else GW_MAC, dst=GW_MAC if out_mac else DEV_MAC, type=0x0800, data=ip
    )
    return bytes(eth)


def _tcp(src: str, dst: str, sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return _frame(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, data=data), 6)


def _udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    return _frame(src, dst, u, 17)


def _session(rows: list[tuple[float, bytes]], t: float, peer: str, port: int, sport: int) -> None:
    """A short TCP exchange of the device with ``peer:port``."""
    syn, ack, psh = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    rows += [
        (t, _tcp(DEV_IP, peer, sport, port, syn)),
        (t + 0.02, _tcp(peer, DEV_IP, port, sport, syn | ack)),
        (t + 0.03, _tcp(DEV_IP, peer, sport, port, ack)),
        (t + 0.04, _tcp(DEV_IP, peer, sport, port, psh, b"x" * 120)),
        (t + 0.08, _tcp(peer, DEV_IP, port, sport, psh, b"y" * 300)),
    ]


def _write(path: Path, rows: list[tuple[float, bytes]]) -> Path:
    rows.sort(key=lambda r: r[0])
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, buf in rows:
            w.writepkt(buf, ts=ts)
    return path


def _home(extra: str, duration_s: float = LEARN_S + 3900.0) -> list[tuple[float, bytes]]:
    """A quiet device (DNS + one cloud service every 30 s); after learning, ``extra`` traffic:
    ``scan`` probes one new port of a bare-IP host per minute, ``service`` starts using one new
    service (MQTT/TLS on the known cloud host) every 30 s."""
    rows: list[tuple[float, bytes]] = []
    n = 0
    t = 0.0
    while t < duration_s:
        sport = 50000 + n % 10000
        rows.append((T0 + t, _udp(DEV_IP, GW_IP, sport, 53, b"q" * 30)))
        rows.append((T0 + t + 0.01, _udp(GW_IP, DEV_IP, 53, sport, b"r" * 60)))
        _session(rows, T0 + t + 0.1, CLOUD_IP, 443, 40000 + n % 10000)
        if t >= LEARN_S + 60.0 and extra == "service":
            _session(rows, T0 + t + 5.0, CLOUD_IP, 8883, 30000 + n % 10000)
        n += 1
        t += 30.0
    if extra == "scan":
        for i in range(60):
            ts = T0 + LEARN_S + 60.0 * (i + 1) + 7.0
            rows.append((ts, _tcp(DEV_IP, TARGET_IP, 33333, 1000 + i, dpkt.tcp.TH_SYN)))
            rows.append(
                (ts + 0.05, _tcp(TARGET_IP, DEV_IP, 1000 + i, 33333, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK))
            )
    return rows


def _slow(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.category == "slow-scan"]


@pytest.fixture(scope="module")
def scan_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("slow") / "scan.pcap", _home("scan"))


def test_one_new_port_per_minute_raises_one_slow_scan_alert_at_the_crossing(scan_capture: Path) -> None:
    res = Analyzer([scan_capture], AnalysisConfig(learn_seconds=LEARN_S)).run()
    dev = next(d for d in res.devices if DEV_IP in d.ips)
    assert res.baselines[dev.device_id]["mature"]
    slow = _slow(res.alerts)
    assert len(slow) == 1
    a = slow[0]
    assert a.device_id == dev.device_id
    # the limit is the mature floor (the quiet baseline found nothing new): crossed by probe 21
    crossing = int(SLOW_FLOOR_MATURE) + 1
    assert a.timestamp == pytest.approx(T0 + LEARN_S + 60.0 * crossing + 7.0, abs=1e-3)
    assert a.dest_ip == TARGET_IP
    assert f"reached {crossing} new (peer, port) targets in 20 min" in a.reason
    assert "its baseline reached at most 0 new peers/services in any hour" in a.reason
    assert a.extra["values"]["new_targets"] == crossing
    # another batch cut: the same alert, at the same time
    small = Analyzer([scan_capture], AnalysisConfig(learn_seconds=LEARN_S, batch_size=97)).run()
    assert [x.to_eve() for x in _slow(small.alerts)] == [x.to_eve() for x in slow]


def test_probes_past_the_limit_score_above_the_benign_packets(scan_capture: Path) -> None:
    import numpy as np

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def sink(batch: PacketBatch, device: np.ndarray, scores: np.ndarray) -> None:
        parts.append((batch.ts.copy(), batch.dst_port.copy(), scores.copy()))

    Analyzer([scan_capture], AnalysisConfig(learn_seconds=LEARN_S)).run(score_sink=sink)
    ts = np.concatenate([p[0] for p in parts])
    port = np.concatenate([p[1] for p in parts])
    s = np.concatenate([p[2] for p in parts])
    probe_ports = np.arange(1000, 1060)
    late = np.isin(port, probe_ports[int(SLOW_FLOOR_MATURE) + 1 :])
    benign = ~np.isin(port, probe_ports) & (ts >= T0 + LEARN_S)
    assert s[late].min() > s[benign].max()


def test_a_device_that_starts_using_one_new_service_raises_no_slow_scan(tmp_path: Path) -> None:
    path = _write(tmp_path / "service.pcap", _home("service"))
    res = Analyzer([path], AnalysisConfig(learn_seconds=LEARN_S)).run()
    assert _slow(res.alerts) == []


def test_memory_is_bounded_by_the_cap() -> None:
    st = SlowScanState(limit=1e9, learned=0.0, horizon_s=3600.0, cap=64)
    counts = [st.add(k, 1000.0 + k * 0.01, 1, k, 6, k % 65536) for k in range(5000)]
    assert len(st.seen) <= 64 and len(st.recent) <= 64
    assert sum(st.per_peer.values()) == len(st.recent) == sum(st.per_port.values())
    assert max(counts) == 64
    # targets leave the horizon: the count falls back
    assert st.add(10**6, 1000.0 + 50.0 + 3600.0, 2, 0, 6, 1) == 1
    assert len(st.per_peer) == 1


SSH_IP = "203.0.113.22"
C2_IP = "203.0.113.66"


def test_paced_brute_force_on_a_new_target_raises_one_brute_force_alert(tmp_path: Path) -> None:
    """One SSH login attempt every 90 s: far below any per-minute limit, 40 in an hour."""
    from iotsentry.detectors.profile import BRUTE_FLOOR_MATURE

    rows = _home("")
    for i in range(40):
        _session(rows, T0 + LEARN_S + 90.0 * (i + 1) + 3.0, SSH_IP, 22, 20000 + i)
    res = Analyzer([_write(tmp_path / "ssh.pcap", rows)], AnalysisConfig(learn_seconds=LEARN_S)).run()
    dev = next(d for d in res.devices if DEV_IP in d.ips)
    brute = [a for a in res.alerts if a.category == "brute-force"]
    assert len(brute) == 1 and brute[0].device_id == dev.device_id
    crossing = int(BRUTE_FLOOR_MATURE) + 1
    assert brute[0].timestamp == pytest.approx(T0 + LEARN_S + 90.0 * crossing + 3.0, abs=1e-3)
    assert (brute[0].dest_ip, brute[0].dest_port) == (SSH_IP, 22)
    assert f"opened {crossing} connections to {SSH_IP} port 22/tcp" in brute[0].reason
    # the same device's steady cloud sessions (every 30 s, 240 an hour) are learned: no alert
    assert not [
        a for a in res.alerts if a.category in ("brute-force", "repeated-attempts") and a.dest_ip == CLOUD_IP
    ]


def _ramped_c2(duration_s: float = LEARN_S + 1800.0) -> list[tuple[float, bytes]]:
    """The quiet device, plus C&C sessions to a bare IP ramping up linearly while it learns
    (boiling frog: 0 at the start, one a minute at the end), then one a minute after learning."""
    rows = _home("", duration_s)
    t, i = 600.0, 0
    while t < duration_s:
        _session(rows, T0 + t + 11.0, C2_IP, 6667, 25000 + i % 5000)
        rate = min(t / LEARN_S, 1.0) / 60.0  # sessions per second
        t += 1.0 / rate
        i += 1
    return rows


def test_drift_guard_refuses_a_ramping_bare_ip_peer(tmp_path: Path) -> None:
    path = _write(tmp_path / "frog.pcap", _ramped_c2())
    plain = Analyzer([path], AnalysisConfig(learn_seconds=LEARN_S)).run()
    guarded = Analyzer([path], AnalysisConfig(learn_seconds=LEARN_S, drift_guard=True)).run()

    def on_c2(alerts: list[Alert]) -> list[Alert]:
        return [a for a in alerts if a.dest_ip == C2_IP and a.category != "baseline-drift"]

    # learned while it ramped: the plain baseline is blind to it
    assert on_c2(plain.alerts) == []
    # the guard refused it: it is new after learning, and the ramp itself is reported
    assert on_c2(guarded.alerts)
    drift = [a for a in guarded.alerts if a.category == "baseline-drift"]
    assert len(drift) == 1 and C2_IP in drift[0].reason
    dev = next(d for d in guarded.devices if DEV_IP in d.ips)
    q = guarded.baselines[dev.device_id]["quarantined"]
    assert [e["key"] for e in q] == [C2_IP]
    assert q[0]["second_half"] > 2 * q[0]["first_half"]
    # the steady peers stay learned
    assert CLOUD_IP not in [e["key"] for e in q]
