"""Tests of baseline poisoning ("boiling frog"): injection into the learning period only,
ramping, well-formed output, malicious labels; one real-data run (slow)."""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.adversarial.boiling_frog import (
    evaluate_boiling_frog,
    poison_learning,
    ramp_times,
    real_attack_unchanged,
)
from iotsentry.adversarial.problem_checks import valid_capture
from iotsentry.adversarial.problem_core import US, AttackerSelector
from iotsentry.adversarial.problem_frames import Packets

T0 = 1_700_000_040.0
DEV, GW, TARGET = "10.0.0.5", "10.0.0.1", "10.0.0.9"
MAC_DEV, MAC_GW = b"\x02\x00\x00\x00\x00\x05", b"\x02\x00\x00\x00\x00\x01"
LEARN_S = 600.0


def _frame(src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(
        src=MAC_DEV if src == DEV else MAC_GW, dst=MAC_GW if src == DEV else MAC_DEV, data=ip
    )
    return bytes(eth)  # dpkt fills in the checksums


def _capture(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Ten minutes of the device's DNS every 5 s, then a 10 pps SYN scan with RST answers (60 s)."""
    frames: list[tuple[float, bytes, int]] = []
    for k in range(int((LEARN_S + 120) / 5)):
        udp = dpkt.udp.UDP(sport=40000 + k % 50, dport=53, data=b"\x12\x34" + b"\x00" * 20)
        udp.ulen = len(udp)
        frames.append((T0 + 5 * k, _frame(DEV, GW, udp, 17), 0))
    for k in range(600):
        t = T0 + LEARN_S + 1 + k / 10
        syn = dpkt.tcp.TCP(sport=51406, dport=k % 1000, seq=1000 + k, flags=dpkt.tcp.TH_SYN, off=5)
        rst = dpkt.tcp.TCP(
            sport=k % 1000, dport=51406, ack=1001 + k, flags=dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, off=5
        )
        frames.append((t, _frame(DEV, TARGET, syn, 6), 1))
        frames.append((t + 0.001, _frame(TARGET, DEV, rst, 6), 1))
    frames.sort(key=lambda x: x[0])
    path = tmp / "mix.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for t, buf, _ in frames:
            w.writepkt(buf, ts=t)
    label = np.array([x[2] for x in frames], np.int8)
    return path, label, label.astype(bool)


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[Packets, Packets, int, Path, int]:
    path, label, attack = _capture(tmp_path)
    pk = Packets.read(path, label, attack)
    end_us = round((T0 + LEARN_S) * US)
    new, cost, info = poison_learning(pk, AttackerSelector(DEV), end_us, 0.5)
    out = tmp_path / "poisoned.pcap"
    new.write(out)
    assert cost.packets_added == info.packets
    return pk, new, end_us, out, info.packets


def test_ramp_times_increase_and_stay_inside() -> None:
    t = ramp_times(0, 600 * US, 1000)
    assert len(t) == 1000 and (np.diff(t) >= 0).all() and t.min() > 0 and t.max() < 600 * US
    per_min = np.bincount(t // (60 * US), minlength=10)
    assert (np.diff(per_min) > 0).all()
    assert ramp_times(0, 600 * US, 0).size == 0


def test_injects_only_inside_learning(poisoned: tuple[Packets, Packets, int, Path, int]) -> None:
    pk, new, end_us, _, n = poisoned
    # attack 1200 frames over ~60 s -> ~20 pps; half of that at the end, ramp over 600 s
    assert 2500 < n < 3500
    added = new.origin < 0
    assert added.sum() == n
    assert new.ts_us[added].min() > pk.ts_us.min() and new.ts_us[added].max() < end_us
    assert real_attack_unchanged(pk, new)
    assert len(new) == len(pk) + n


def test_injection_ramps(poisoned: tuple[Packets, Packets, int, Path, int]) -> None:
    pk, new, _, _, _ = poisoned
    t = new.ts_us[new.origin < 0] - pk.ts_us.min()
    per_min = np.bincount(t // (60 * US), minlength=10)[:10]
    assert (np.diff(per_min) > 0).all()
    assert per_min[0] < 0.1 * per_min[-1]


def test_injected_are_malicious_copies(poisoned: tuple[Packets, Packets, int, Path, int]) -> None:
    pk, new, _, _, _ = poisoned
    added = np.flatnonzero(new.origin < 0)
    assert (new.label[added] == 1).all() and new.attack[added].all()
    originals = {pk.cap.frame(i) for i in np.flatnonzero(pk.label == 1).tolist()}
    assert all(new.cap.frame(int(i)) in originals for i in added[:200])
    # both probes from the device and answers to it, in the attack's order
    ips = {dpkt.ethernet.Ethernet(new.cap.frame(int(i))).data.src for i in added[:10]}
    assert ips == {socket.inet_aton(DEV), socket.inet_aton(TARGET)}


def test_capture_stays_valid(poisoned: tuple[Packets, Packets, int, Path, int]) -> None:
    _, new, _, out, _ = poisoned
    check = valid_capture(out)
    assert check.ok, check.problems[:3]
    assert check.checked["frames_dpkt"] == len(new) and check.checked["back_in_time"] == 0


def test_zero_fraction_adds_nothing(tmp_path: Path) -> None:
    path, label, attack = _capture(tmp_path)
    pk = Packets.read(path, label, attack)
    new, cost, info = poison_learning(pk, AttackerSelector(DEV), round((T0 + LEARN_S) * US), 0.0)
    assert new is pk and info.packets == 0 and cost.packets_added == 0


@pytest.mark.slow
def test_real_data_d3(tmp_path: Path) -> None:
    data_path("iot-sentinel", "D-LinkHomeHub", "Setup-C-1-STA.pcap")
    data = data_path()
    rows = evaluate_boiling_frog("D3", data, tmp_path, fractions=(0.3,))
    assert [(r["model"], r["r"]) for r in rows] == [
        ("profile", 0.0),
        ("kitnet", 0.0),
        ("profile", 0.3),
        ("kitnet", 0.3),
    ]
    prof0, _, prof, kit = rows
    assert prof["injected_packets"] > 0 and prof["injected_after_learning"] == 0
    assert prof["realisable"] and kit["realisable"]
    assert prof0["alert_fires"] and prof0["poisoned_detection_rate"] > 0.9
    # the profile detector's scan-shape limits are never learned past the absolute floors: the
    # replayed scan does not blind it; the unhardened stream detector loses detection
    assert prof["alert_fires"]
    assert prof["poisoned_detection_rate"] >= 0.85 * prof["clean_detection_rate"]
    assert kit["poisoned_detection_rate"] < kit["clean_detection_rate"]
