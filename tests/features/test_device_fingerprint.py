"""Device fingerprints: known answers on a capture written here with dpkt, and real captures."""

from __future__ import annotations

import csv
import ipaddress
import math
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.reader import read_all
from iotsentry.features.device_fingerprint import PACKET_FEATURES, feature_names, fingerprint
from iotsentry.schema import mac_from_str

DEV = bytes.fromhex("5ccf7f07aefb")
GW = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000099")
BCAST = b"\xff" * 6


def _a(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def _ip(src: str, dst: str, p: int, data: bytes, opts: bytes = b"") -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=_a(src), dst=_a(dst), p=p, ttl=64, opts=opts, hl=5 + len(opts) // 4)
    ip.data = data
    ip.len = 20 + len(opts) + len(bytes(data))
    return ip


def _udp(sport: int, dport: int, payload: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=dport, data=payload, ulen=8 + len(payload))


def _dhcp(mac: bytes, hostname: bytes) -> bytes:
    d = dpkt.dhcp.DHCP(
        chaddr=mac,
        xid=0x1234,
        opts=[
            (dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([dpkt.dhcp.DHCPDISCOVER])),
            (dpkt.dhcp.DHCP_OPT_HOSTNAME, hostname),
            (dpkt.dhcp.DHCP_OPT_PARAM_REQ, bytes([1, 3, 6, 15])),
        ],
    )
    return bytes(d)


def _dns_query(name: str) -> bytes:
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    return bytes(q)


def _write(path: Path, dev: bytes, hostname: bytes) -> None:
    """Eight frames: seven to or from ``dev`` and one between two other hosts."""
    E = dpkt.ethernet
    frames = [
        # 0: EAPoL key frame sent by the device
        bytes(E.Ethernet(src=dev, dst=GW, type=0x888E, data=b"\x01\x03\x00\x5f" + b"\x00" * 95)),
        # 1: DHCP DISCOVER, broadcast
        bytes(
            E.Ethernet(
                src=dev,
                dst=BCAST,
                data=_ip("0.0.0.0", "255.255.255.255", 17, _udp(68, 67, _dhcp(dev, hostname))),
            )
        ),
        # 2: ARP request
        bytes(
            E.Ethernet(
                src=dev,
                dst=BCAST,
                type=E.ETH_TYPE_ARP,
                data=dpkt.arp.ARP(sha=dev, spa=_a("10.0.0.5"), tpa=_a("10.0.0.1"), op=1),
            )
        ),
        # 3: DNS query to the gateway
        bytes(
            E.Ethernet(
                src=dev, dst=GW, data=_ip("10.0.0.5", "10.0.0.1", 17, _udp(50000, 53, _dns_query("a.b")))
            )
        ),
        # 4: unrelated frame between two other hosts: must be ignored
        bytes(
            E.Ethernet(src=OTHER, dst=GW, data=_ip("10.0.0.9", "10.0.0.1", 17, _udp(40000, 53, b"x" * 20)))
        ),
        # 5: DNS answer received
        bytes(
            E.Ethernet(
                src=GW, dst=dev, data=_ip("10.0.0.1", "10.0.0.5", 17, _udp(53, 50000, _dns_query("a.b")))
            )
        ),
        # 6: TCP SYN to 443 on a third address
        bytes(
            E.Ethernet(
                src=dev,
                dst=GW,
                data=_ip(
                    "10.0.0.5", "52.1.2.3", 6, dpkt.tcp.TCP(sport=50001, dport=443, flags=dpkt.tcp.TH_SYN)
                ),
            )
        ),
        # 7: IGMP with the router-alert IP option
        bytes(
            E.Ethernet(
                src=dev,
                dst=bytes.fromhex("01005e0000fb"),
                data=_ip(
                    "10.0.0.5", "224.0.0.251", 2, b"\x16\x00\x00\x00\xe0\x00\x00\xfb", b"\x94\x04\x00\x00"
                ),
            )
        ),
    ]
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for k, f in enumerate(frames):
            w.writepkt(f, ts=1000.0 + 0.5 * k)


def _named(vec: np.ndarray, n_first: int = 12) -> dict[str, float]:
    return dict(zip(feature_names(n_first), vec.tolist(), strict=True))


def test_known_answer_features(tmp_path: Path) -> None:
    p = tmp_path / "setup.pcap"
    _write(p, DEV, b"ESP_07AEFB")
    batch = read_all(p, with_raw=True)
    f = _named(fingerprint(batch, int.from_bytes(DEV, "big")))
    # slot k = k-th packet of the device (the unrelated frame 4 is skipped)
    assert f["p0_eapol"] == 1 and f["p0_ip"] == 0 and f["p0_direction"] == 1
    assert f["p1_dhcp"] == 1 and f["p1_bootp"] == 1 and f["p1_udp"] == 1 and f["p1_ip"] == 1
    assert f["p1_src_port_class"] == 1 and f["p1_dst_port_class"] == 1  # 68 -> 67
    assert f["p2_arp"] == 1 and f["p2_ip"] == 0
    assert f["p3_dns"] == 1 and f["p3_src_port_class"] == 3 and f["p3_dst_port_class"] == 1
    assert f["p4_dns"] == 1 and f["p4_direction"] == 0  # the answer, received
    assert f["p5_https"] == 1 and f["p5_tcp"] == 1 and f["p5_raw_data"] == 0
    assert f["p6_ip_router_alert"] == 1 and f["p6_ip_padding"] == 0
    assert f["p3_raw_data"] == 1 and f["p3_size"] == 14 + 20 + 8 + len(_dns_query("a.b"))
    # destination IP counter: 255.255.255.255 first (1), then 10.0.0.1 (ARP target, 2), ...
    assert [f[f"p{k}_dst_ip_counter"] for k in (1, 2, 3, 4, 5, 6)] == [1, 2, 2, 3, 4, 5]
    assert f["p0_dst_ip_counter"] == 0  # no IP layer
    assert f["p7_present"] == 0 and all(f[f"p7_{n}"] == 0 for n in PACKET_FEATURES)
    assert f["log_packets"] == pytest.approx(math.log1p(7))
    assert f["share_sent_packets"] == pytest.approx(6 / 7)
    assert f["share_dns"] == pytest.approx(2 / 7)
    assert f["has_dhcp"] == 1 and f["has_eapol"] == 1 and f["has_mdns"] == 0
    assert f["log_arp_requests_sent"] == pytest.approx(math.log1p(1))
    assert f["log_tcp_syn_sent"] == pytest.approx(math.log1p(1))
    assert f["ttl_initial_sent"] == 64
    assert f["dhcp_prl_len"] == 4 and f["dhcp_has_hostname"] == 1
    assert f["size_q50"] > 0 and f["log_iat_ms_q50"] == pytest.approx(math.log1p(500.0))


def test_mac_and_serial_suffix_are_not_features(tmp_path: Path) -> None:
    """Same traffic from another unit (other MAC, MAC-derived host name): same fingerprint."""
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    other_unit = bytes.fromhex("5ccf7f06d902")
    _write(a, DEV, b"ESP_07AEFB")
    _write(b, other_unit, b"ESP_06D902")
    fa = fingerprint(read_all(a, with_raw=True), int.from_bytes(DEV, "big"))
    fb = fingerprint(read_all(b, with_raw=True), int.from_bytes(other_unit, "big"))
    np.testing.assert_array_equal(fa, fb)
    # but a model name in the host name is a type-level feature and does change it
    c = tmp_path / "c.pcap"
    _write(c, DEV, b"HS110(EU)")
    fc = fingerprint(read_all(c, with_raw=True), int.from_bytes(DEV, "big"))
    assert not np.array_equal(fa, fc)


def test_dedupe_collapses_repeated_packets(tmp_path: Path) -> None:
    p = tmp_path / "rep.pcap"
    frame = bytes(
        dpkt.ethernet.Ethernet(src=DEV, dst=GW, type=0x888E, data=b"\x01\x03\x00\x05" + b"\x00" * 5)
    )
    with open(p, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for k in range(3):
            w.writepkt(frame, ts=10.0 + k)
    batch = read_all(p, with_raw=True)
    f = _named(fingerprint(batch, int.from_bytes(DEV, "big"), dedupe=True))
    assert f["p0_present"] == 1 and f["p1_present"] == 0
    g = _named(fingerprint(batch, int.from_bytes(DEV, "big"), dedupe=False))
    assert g["p2_present"] == 1 and g["p3_present"] == 0


@pytest.mark.slow
def test_real_captures_shape_and_determinism() -> None:
    root = data_path("iot-sentinel")
    with open(root / "index.csv", newline="") as fh:
        rows = {r["device_dir"]: r for r in csv.DictReader(fh)}
    vecs = {}
    for folder in ("Aria", "HueBridge", "TP-LinkPlugHS110"):
        r = rows[folder]
        batch = read_all(root / folder / r["file"], with_raw=True)
        mac = mac_from_str(r["device_mac"])
        v = fingerprint(batch, mac)
        assert v.shape == (len(feature_names()),) and v.dtype == np.float64
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v, fingerprint(read_all(root / folder / r["file"], with_raw=True), mac))
        # every capture is filtered to the device: all of it is the device's traffic
        assert _named(v)["log_packets"] == pytest.approx(math.log1p(int(r["packets"])))
        vecs[folder] = v
    assert not np.array_equal(vecs["Aria"], vecs["HueBridge"])
    # without raw bytes the application block is zero but the vector keeps its shape
    r = rows["HueBridge"]
    plain = fingerprint(read_all(root / "HueBridge" / r["file"]), mac_from_str(r["device_mac"]))
    assert plain.shape == vecs["HueBridge"].shape
    assert _named(plain)["dhcp_prl_len"] == 0 and _named(vecs["HueBridge"])["log_names"] >= 0
