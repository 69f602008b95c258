"""Tests of the synthetic smart-home capture generator."""

from __future__ import annotations

import csv
import json
import socket
from collections import defaultdict
from pathlib import Path

import dpkt
import numpy as np
import pytest

from iotsentry.evaluation.synthetic_home import HomeTruth, generate_home, main
from iotsentry.inventory.oui import vendor_of
from iotsentry.schema import mac_from_str

PERIODS = {  # kind -> expected period (s) of contacts with its first cloud address
    "camera": 30.0,
    "plug": 60.0,
    "thermostat": 120.0,
    "hub": 60.0,
    "tv": 600.0,
    "sensor": 300.0,
    "sonos": 90.0,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[HomeTruth, list[tuple[float, bytes]]]:
    path = tmp_path_factory.mktemp("home") / "home.pcap"
    truth = generate_home(path, seed=7)
    with path.open("rb") as fh:
        frames = [(ts, buf) for ts, buf in dpkt.pcap.Reader(fh)]
    return truth, frames


def _ip(text: str) -> bytes:
    return socket.inet_aton(text)


def test_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    ta = generate_home(a, seed=3, duration_s=600.0)
    tb = generate_home(b, seed=3, duration_s=600.0)
    tc = generate_home(c, seed=4, duration_s=600.0)
    assert a.read_bytes() == b.read_bytes()
    assert np.array_equal(ta.labels, tb.labels)
    assert ta.to_dict() == {**tb.to_dict(), "path": str(a)}
    assert a.read_bytes() != c.read_bytes()
    assert [d.mac for d in ta.devices] != [d.mac for d in tc.devices]


def test_size_and_speed(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    truth, frames = home
    assert 50_000 <= len(frames) <= 200_000
    assert truth.n_packets == len(frames)
    ts = np.array([t for t, _ in frames])
    assert np.all(np.diff(ts) >= 0)
    assert ts[0] >= truth.start_ts and ts[-1] <= truth.start_ts + truth.duration_s
    assert np.allclose(ts, truth.ts, atol=1e-6)


def test_checksums_valid(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    _, frames = home
    checked = {6: 0, 17: 0}
    for _, buf in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            assert isinstance(ip, dpkt.arp.ARP)
            continue
        assert isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP))
        assert len(bytes(ip)) == ip.len
        fresh = dpkt.ip.IP(bytes(ip))
        fresh.sum = 0
        fresh.data.sum = 0
        again = dpkt.ip.IP(bytes(fresh))
        assert again.sum == ip.sum
        assert again.data.sum == ip.data.sum
        checked[ip.p] += 1
    assert checked[6] > 10_000 and checked[17] > 10_000


def test_devices_dhcp_and_vendors(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    truth, frames = home
    assert len(truth.devices) == 8 and len({d.kind for d in truth.devices}) == 8
    assert "NETGEAR" in (vendor_of(mac_from_str(truth.gateway["mac"])) or "")
    for d in truth.devices:
        assert vendor_of(mac_from_str(d.mac)) == d.vendor
    seen: dict[bytes, dict[int, bytes]] = defaultdict(dict)
    types: dict[bytes, set[int]] = defaultdict(set)
    for _, buf in frames[:2000]:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if (
            isinstance(ip, dpkt.ip.IP)
            and isinstance(ip.data, dpkt.udp.UDP)
            and {ip.data.sport, ip.data.dport} == {67, 68}
        ):
            msg = dpkt.dhcp.DHCP(ip.data.data)
            opts = dict(msg.opts)
            types[msg.chaddr[:6]].add(opts[53][0])
            if msg.op == dpkt.dhcp.DHCP_OP_REQUEST:
                seen[msg.chaddr[:6]].update(opts)
    for d in truth.devices:
        mac = bytes.fromhex(d.mac.replace(":", ""))
        assert types[mac] == {1, 2, 3, 5}  # Discover, Offer, Request, ACK
        assert seen[mac][12].decode() == d.hostname
        assert seen[mac][60].decode() == d.vendor_class
        assert 1 in seen[mac][55] and 6 in seen[mac][55]
        assert seen[mac][50] == _ip(d.ip)


def test_dns_answers_and_discovery(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    truth, frames = home
    answers: dict[str, set[str]] = defaultdict(set)
    mdns_senders, ssdp_senders = set(), set()
    for (_, buf), mal in zip(frames, truth.labels.tolist(), strict=True):
        if mal:  # the flood hits random ports
            continue
        ip = dpkt.ethernet.Ethernet(buf).data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
            continue
        udp = ip.data
        if udp.sport == 53 and ip.src == _ip(truth.gateway["ip"]):
            msg = dpkt.dns.DNS(udp.data)
            for rr in msg.an:
                answers[rr.name].add(socket.inet_ntoa(rr.ip))
        elif udp.dport == 5353:
            mdns_senders.add(socket.inet_ntoa(ip.src))
            assert dpkt.dns.DNS(udp.data).an
        elif udp.dport == 1900:
            ssdp_senders.add(socket.inet_ntoa(ip.src))
            assert udp.data.startswith(b"NOTIFY * HTTP/1.1\r\n")
    for d in truth.devices:
        for name, addr in zip(d.cloud_names, d.cloud_ips, strict=True):
            assert answers[name] == {addr}
    kinds = {d.ip: d.kind for d in truth.devices}
    assert {"hub", "speaker", "tv"} <= {kinds[a] for a in mdns_senders}
    assert {"hub", "speaker", "tv"} == {kinds[a] for a in ssdp_senders}


def test_tcp_sequence_numbers_consistent(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    _, frames = home
    nxt: dict[tuple[bytes, bytes, int, int], int] = {}
    n_conn = 0
    for _, buf in frames:
        ip = dpkt.ethernet.Ethernet(buf).data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        key = (ip.src, ip.dst, tcp.sport, tcp.dport)
        rev = (ip.dst, ip.src, tcp.dport, tcp.sport)
        syn, fin, ack = tcp.flags & dpkt.tcp.TH_SYN, tcp.flags & dpkt.tcp.TH_FIN, tcp.flags & dpkt.tcp.TH_ACK
        if syn and not ack:
            n_conn += 1
            nxt.pop(rev, None)
        elif syn and ack:
            assert tcp.ack == (nxt[rev]) & 0xFFFFFFFF
        elif not tcp.flags & dpkt.tcp.TH_RST:
            assert tcp.seq == nxt[key]
            if ack:  # never acknowledges bytes not sent yet
                assert (nxt[rev] - tcp.ack) % 2**32 < 2**31
        nxt[key] = (tcp.seq + len(tcp.data) + (1 if syn else 0) + (1 if fin else 0)) & 0xFFFFFFFF
    assert n_conn > 300


def test_infection(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    truth, frames = home
    assert truth.infection_ts == pytest.approx(truth.start_ts + 0.75 * 3600)
    mal = truth.labels
    ts = truth.ts
    assert mal.sum() > 1000 and (~mal).sum() > 20_000
    assert ts[mal].min() >= truth.infection_ts
    cam_ip, cam_mac = _ip(truth.infected_ip), bytes.fromhex(truth.infected_mac.replace(":", ""))
    cnc, victim = 0, 0
    scan_targets: set[bytes] = set()
    scan_ts: list[float] = []
    flood_ts: list[float] = []
    for (t, buf), m in zip(frames, mal.tolist(), strict=True):
        eth = dpkt.ethernet.Ethernet(buf)
        if not m:
            continue
        assert cam_mac in (eth.src, eth.dst)
        p = eth.data
        if isinstance(p, dpkt.arp.ARP):
            assert cam_ip in (p.spa, p.tpa)
            continue
        assert cam_ip in (p.src, p.dst)
        if _ip(truth.cnc_ip) in (p.src, p.dst):
            cnc += 1
            assert isinstance(p.data, dpkt.tcp.TCP) and truth.cnc_port in (p.data.sport, p.data.dport)
        elif p.dst == _ip(truth.flood_victim_ip):
            victim += 1
            flood_ts.append(t)
            assert isinstance(p.data, dpkt.udp.UDP)
        elif p.src == cam_ip and isinstance(p.data, dpkt.tcp.TCP) and p.data.flags == dpkt.tcp.TH_SYN:
            assert p.data.dport in (23, 2323)
            scan_targets.add(p.dst)
            scan_ts.append(t)
    assert cnc >= 4 * int((truth.start_ts + truth.duration_s - truth.infection_ts) / 15 * 0.8)
    assert len(scan_targets) >= 150
    assert max(scan_ts) - min(scan_ts) <= 60.0
    assert victim >= 20_000
    assert 19.0 <= max(flood_ts) - min(flood_ts) <= 21.0
    # the camera's ordinary cloud traffic continues after the infection and stays benign
    cloud = _ip(truth.devices[0].cloud_ips[0])
    after = [
        m
        for (t, buf), m in zip(frames, mal.tolist(), strict=True)
        if t > truth.infection_ts and cloud in buf[26:34]
    ]
    assert len(after) > 100 and not any(after)


def test_periodic_traffic_before_infection(home: tuple[HomeTruth, list[tuple[float, bytes]]]) -> None:
    truth, frames = home
    assert truth.infection_ts is not None
    for d in truth.devices:
        dev = _ip(d.ip)
        peer = _ip(d.cloud_ips[0])
        times = []
        for t, buf in frames:
            if t >= truth.infection_ts:
                break
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and {ip.src, ip.dst} == {dev, peer}:
                times.append(t)
        assert len(times) >= 4, d.kind
        if d.kind == "speaker":  # rotates over three cloud addresses every ~45 s
            continue
        arr = np.array(times)
        starts = arr[np.concatenate([[True], np.diff(arr) > 5.0])]
        gaps = np.diff(starts)
        assert len(gaps) >= 2, d.kind
        assert np.median(gaps) == pytest.approx(PERIODS[d.kind], rel=0.25), d.kind


def test_labels_csv_and_cli(tmp_path: Path) -> None:
    out, labels, truth_json = tmp_path / "h.pcap", tmp_path / "l.csv", tmp_path / "t.json"
    assert (
        main(
            [
                str(out),
                "--seed",
                "5",
                "--duration",
                "900",
                "--infect-at",
                "0.5",
                "--labels",
                str(labels),
                "--truth",
                str(truth_json),
            ]
        )
        == 0
    )
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    with out.open("rb") as fh:
        frames = list(dpkt.pcap.Reader(fh))
    assert len(rows) == len(frames)
    assert [int(r["index"]) for r in rows] == list(range(len(frames)))
    assert [float(r["ts"]) for r in rows] == pytest.approx([t for t, _ in frames], abs=1e-6)
    meta = json.loads(truth_json.read_text())
    assert meta["n_malicious"] == sum(int(r["label"]) for r in rows) > 0
    assert meta["infection_ts"] == pytest.approx(meta["start_ts"] + 450.0)
    assert min(float(r["ts"]) for r in rows if r["label"] == "1") >= meta["infection_ts"]


def test_no_infection_and_bad_args(tmp_path: Path) -> None:
    t = generate_home(tmp_path / "clean.pcap", seed=1, duration_s=300.0, infect_at=1.0)
    assert not t.labels.any() and t.infection_ts is None
    with pytest.raises(ValueError, match="infect_at"):
        generate_home(tmp_path / "x.pcap", infect_at=0.0)
    with pytest.raises(ValueError, match="duration_s"):
        generate_home(tmp_path / "x.pcap", duration_s=10.0)
