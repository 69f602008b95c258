"""Tests of the pcap / pcapng readers and the numba frame decoder."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest
from pcapgen import (
    MAC_A,
    MAC_B,
    arp,
    epb,
    eth,
    icmp,
    idb,
    ipv4,
    ipv6,
    mac_int,
    other_block,
    pcap_bytes,
    shb,
    sll,
    sll2,
    spb,
    tcp,
    udp,
)

from conftest import DATA, data_path
from iotsentry.capture.pcap import read_pcap
from iotsentry.capture.pcapng import read_pcapng
from iotsentry.capture.reader import capture_format, count_packets, read_all, read_packets
from iotsentry.errors import CaptureDamaged, InputError
from iotsentry.schema import PacketBatch, ip_from_str, ip_to_str

TRUNCATED_42_1 = "iot23/pcap/CTU-IoT-Malware-Capture-42-1/2019-01-10-14-34-38-192.168.1.197.pcap"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_quiet(path: Path, **kw: Any) -> tuple[PacketBatch, list[CaptureDamaged]]:
    """read_all plus the CaptureDamaged warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(read_packets(path, **kw))
    damaged = [w.message for w in caught if isinstance(w.message, CaptureDamaged)]
    return PacketBatch.concat(batches), damaged


def ip(b: PacketBatch, i: int, side: str = "src") -> str:
    return ip_to_str(b.columns[f"{side}_ip_hi"][i], b.columns[f"{side}_ip_lo"][i])


def sample_frames() -> list[bytes]:
    return [
        eth(ipv4(tcp(1234, 80, 0x02), 6, src="192.168.1.10", dst="8.8.8.8", ttl=63)),
        eth(ipv4(udp(5353, 53, b"abcd"), 17, src="10.1.2.3", dst="10.3.2.1")),
        eth(ipv6(tcp(443, 50000, 0x12, b"hello"), 6, src="fe80::1", dst="2001:db8::7", hlim=255), 0x86DD),
        eth(arp(1, "192.168.1.1", "192.168.1.77"), 0x0806),
    ]


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, big: bool, nano: bool) -> None:
    frames = sample_frames()
    frac = [123456789, 5, 999999999, 0] if nano else [123456, 5, 999999, 0]
    recs = [(1_600_000_000 + k, frac[k], f) for k, f in enumerate(frames)]
    p = write(tmp_path, "x.pcap", pcap_bytes(recs, big_endian=big, nano=nano))
    b = read_all(p)
    div = 1e9 if nano else 1e6
    assert len(b) == 4
    np.testing.assert_allclose(b.ts, [s + f / div for s, f, _ in recs], rtol=0, atol=1e-6)
    if nano:
        assert abs(b.ts[0] - 1_600_000_000.123456789) < 5e-7
    assert b.index.tolist() == [0, 1, 2, 3]
    assert b.cap_len.tolist() == [len(f) for f in frames]
    assert b.wire_len.tolist() == [len(f) for f in frames]
    assert b.src_mac.tolist() == [mac_int(MAC_A)] * 4
    assert b.dst_mac.tolist() == [mac_int(MAC_B)] * 4
    assert b.ethertype.tolist() == [0x0800, 0x0800, 0x86DD, 0x0806]
    assert b.ip_version.tolist() == [4, 4, 6, 0]
    assert [ip(b, i) for i in range(4)] == ["192.168.1.10", "10.1.2.3", "fe80::1", "192.168.1.1"]
    assert [ip(b, i, "dst") for i in range(4)] == ["8.8.8.8", "10.3.2.1", "2001:db8::7", "192.168.1.77"]
    assert b.proto.tolist() == [6, 17, 6, 0]
    assert b.src_port.tolist() == [1234, 5353, 443, 0]
    assert b.dst_port.tolist() == [80, 53, 50000, 0]
    assert b.tcp_flags.tolist() == [0x02, 0, 0x12, 0]
    assert b.ttl.tolist() == [63, 64, 255, 0]
    assert b.payload_len.tolist() == [0, 4, 5, 0]
    assert b.payload_off.tolist() == [0, 14 + 20 + 8, 14 + 40 + 20, 0]
    assert b.arp_op.tolist() == [0, 0, 0, 1]
    assert capture_format(p) == "pcap"


def test_ip_columns_follow_schema_encoding(tmp_path: Path) -> None:
    p = write(tmp_path, "x.pcap", pcap_bytes([(1, 0, f) for f in sample_frames()]))
    b = read_all(p)
    assert (int(b.src_ip_hi[0]), int(b.src_ip_lo[0])) == ip_from_str("192.168.1.10")
    assert int(b.src_ip_hi[0]) == 0 and int(b.src_ip_lo[0]) >> 32 == 0xFFFF
    assert (int(b.dst_ip_hi[2]), int(b.dst_ip_lo[2])) == ip_from_str("2001:db8::7")


def pcapng_two_interfaces(big: bool) -> bytes:
    f0 = eth(ipv4(udp(1000, 2000, b"xyz"), 17, src="10.0.0.5", dst="10.0.0.6"))
    f1 = ipv6(icmp(128, 0, b"ping"), 58, src="2001:db8::a", dst="2001:db8::b")  # raw IP link
    return b"".join(
        [
            shb(big),
            idb(1, big=big),  # Ethernet, default microseconds
            idb(101, tsresol=9, tsoffset=100, big=big),  # raw IP, nanoseconds, offset 100 s
            other_block(4, b"\x00" * 4, big=big),  # NRB (empty record list)
            epb(0, 1_500_000_000_250_000, f0, big=big),
            epb(1, 1_500_000_001_000_000_500, f1, big=big),
            other_block(5, b"\x00" * 12, big=big),  # ISB
            spb(f0, big=big),  # interface 0, no timestamp
            other_block(0x40000BAD, b"\x00" * 8, big=big),  # custom block
            epb(0, 1_500_000_002_000_001, f0[:20], wire_len=len(f0), big=big),
        ]
    )


@pytest.mark.parametrize("big", [False, True])
def test_pcapng_two_interfaces_different_link_types(tmp_path: Path, big: bool) -> None:
    p = write(tmp_path, "x.pcapng", pcapng_two_interfaces(big))
    assert capture_format(p) == "pcapng"
    b, damaged = read_quiet(p)
    assert damaged == []
    assert len(b) == 4
    assert b.iface.tolist() == [0, 1, 0, 0]
    # the SPB has no timestamp: it takes the previous packet's
    np.testing.assert_allclose(
        b.ts,
        [1_500_000_000.25, 1_500_000_101.0000005, 1_500_000_101.0000005, 1_500_000_002.000001],
        rtol=0,
        atol=1e-6,
    )
    assert b.ethertype.tolist() == [0x0800, 0x86DD, 0x0800, 0x0800]
    assert b.src_mac.tolist() == [mac_int(MAC_A), 0, mac_int(MAC_A), mac_int(MAC_A)]
    assert ip(b, 0) == "10.0.0.5" and ip(b, 1, "dst") == "2001:db8::b"
    assert b.proto.tolist() == [17, 58, 17, 4 * 0]  # last frame cut inside the IP header
    assert b.ip_version.tolist() == [4, 6, 4, 4]
    assert b.src_port.tolist() == [1000, 128, 1000, 0]
    assert b.payload_len.tolist() == [3, 4, 3, 0]
    assert b.cap_len.tolist()[3] == 20 and b.wire_len.tolist()[3] > 20
    assert count_packets(p) == 4


def test_pcapng_multiple_sections_mixed_byte_order(tmp_path: Path) -> None:
    f_sll = sll(ipv4(tcp(22, 4000, 0x10), 6, src="172.16.0.1", dst="172.16.0.2"))
    f_eth = eth(ipv4(udp(1, 2), 17))
    data = (
        shb(False)
        + idb(1)
        + epb(0, 10_000_000, f_eth)
        + shb(True)
        + idb(113, big=True)
        + idb(1, big=True)
        + epb(0, 20_000_000, f_sll, big=True)
        + epb(1, 30_000_000, f_eth, big=True)
    )
    b = read_all(write(tmp_path, "x.pcapng", data))
    assert b.iface.tolist() == [0, 1, 2]  # interfaces numbered over the whole file
    assert b.ts.tolist() == [10.0, 20.0, 30.0]
    assert b.proto.tolist() == [17, 6, 17]
    assert ip(b, 1) == "172.16.0.1" and b.src_port[1] == 22 and b.tcp_flags[1] == 0x10


def test_pcapng_minimal_idb_binary_resolution_and_many_spbs(tmp_path: Path) -> None:
    minimal_idb = struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20)  # no options at all
    data = shb() + minimal_idb + idb(1, tsresol=0x80 | 10) + epb(1, 3 * 1024 + 512, eth(b"", 0x88B5))
    data += b"".join(spb(b"") for _ in range(1000))  # 16-byte blocks: the smallest packets
    b = read_all(write(tmp_path, "m.pcapng", data))
    assert len(b) == 1001
    assert b.ts[0] == 3.5 and (b.ts[1:] == 3.5).all()  # 2^-10 s ticks; SPBs reuse the timestamp
    assert b.iface.tolist() == [1] + [0] * 1000
    assert (b.cap_len[1:] == 0).all() and b.ethertype[0] == 0x88B5
    assert [len(x) for x in read_packets(write(tmp_path, "m.pcapng", data))] == [1001]


def test_pcapng_bad_byte_order_magic_is_input_error(tmp_path: Path) -> None:
    p = write(tmp_path, "x.pcapng", b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x01\x02\x03\x04" * 5)
    with pytest.raises(InputError, match="byte-order magic"):
        read_all(p)


# --------------------------------------------------------------------------- link layers


def test_vlan_and_qinq(tmp_path: Path) -> None:
    inner = ipv4(udp(10, 20, b"q"), 17)
    frames = [
        eth(inner, vlans=[(0x8100, 100)]),
        eth(inner, vlans=[(0x88A8, 10), (0x8100, 20)]),
        eth(inner, vlans=[(0x9100, 0x0FFF | 0xE000), (0x8100, 7)]),  # priority bits are masked
        eth(arp(2, "10.0.0.9", "10.0.0.1"), 0x0806, vlans=[(0x8100, 5)]),
    ]
    b = read_all(write(tmp_path, "x.pcap", pcap_bytes([(0, 0, f) for f in frames])))
    assert b.vlan.tolist() == [100, 10, 0x0FFF, 5]
    assert b.ethertype.tolist() == [0x0800, 0x0800, 0x0800, 0x0806]
    assert b.src_port.tolist() == [10, 10, 10, 0]
    assert b.payload_off.tolist() == [14 + 4 + 28, 14 + 8 + 28, 14 + 8 + 28, 0]
    assert b.arp_op[3] == 2 and ip(b, 3) == "10.0.0.9"


def test_sll_and_sll2(tmp_path: Path) -> None:
    f1 = sll(ipv4(udp(67, 68), 17, src="10.9.9.9"))
    f2 = sll2(ipv6(tcp(1, 2, 0x01), 6), 0x86DD)
    b1 = read_all(write(tmp_path, "a.pcap", pcap_bytes([(0, 0, f1)], linktype=113)))
    b2 = read_all(write(tmp_path, "b.pcap", pcap_bytes([(0, 0, f2)], linktype=276)))
    assert b1.src_mac[0] == mac_int(MAC_A) and b1.dst_mac[0] == 0
    assert b1.ethertype[0] == 0x0800 and ip(b1, 0) == "10.9.9.9" and b1.dst_port[0] == 68
    assert b2.src_mac[0] == mac_int(MAC_A) and b2.ethertype[0] == 0x86DD
    assert b2.proto[0] == 6 and b2.tcp_flags[0] == 0x01 and b2.payload_off[0] == 0


@pytest.mark.parametrize("linktype", [101, 12, 228, 229])
def test_raw_ip_link_types(tmp_path: Path, linktype: int) -> None:
    f = ipv6(udp(9, 10, b"zz"), 17) if linktype == 229 else ipv4(udp(9, 10, b"zz"), 17)
    b = read_all(write(tmp_path, "r.pcap", pcap_bytes([(0, 0, f)], linktype=linktype)))
    assert b.ethertype[0] == (0x86DD if linktype == 229 else 0x0800)
    assert b.src_mac[0] == 0 and b.dst_port[0] == 10 and b.payload_len[0] == 2
    assert b.payload_off[0] == len(f) - 2


def test_null_loopback_both_host_orders(tmp_path: Path) -> None:
    frames = [struct.pack("<I", 2) + ipv4(udp(1, 2), 17), struct.pack(">I", 30) + ipv6(udp(3, 4), 17)]
    b = read_all(write(tmp_path, "n.pcap", pcap_bytes([(0, 0, f) for f in frames], linktype=0)))
    assert b.ethertype.tolist() == [0x0800, 0x86DD]
    assert b.src_port.tolist() == [1, 3]


def test_8023_llc_snap(tmp_path: Path) -> None:
    llc = bytes([0xAA, 0xAA, 0x03, 0, 0, 0]) + struct.pack(">H", 0x0800) + ipv4(udp(7, 8), 17)
    stp = bytes([0x42, 0x42, 0x03]) + b"\x00" * 35
    frames = [MAC_B + MAC_A + struct.pack(">H", len(llc)) + llc, MAC_B + MAC_A + struct.pack(">H", 38) + stp]
    b = read_all(write(tmp_path, "l.pcap", pcap_bytes([(0, 0, f) for f in frames])))
    assert b.ethertype.tolist() == [0x0800, 0]
    assert b.dst_port.tolist() == [8, 0]
    assert b.src_mac.tolist() == [mac_int(MAC_A)] * 2


# --------------------------------------------------------------------------- IP layers


def test_ipv6_extension_headers(tmp_path: Path) -> None:
    frag_first = struct.pack(">HI", 0 | 1, 77)  # offset 0, more fragments
    frag_later = struct.pack(">HI", (64 << 3) | 0, 77)  # offset 512 bytes, last
    body = tcp(8080, 9090, 0x18, b"0123456789")
    frames = [
        ipv6(
            body, 6, ext=[(0, b"\x01\x02" + b"\x00" * 4), (43, b"\x00\x00" + b"\x00" * 20), (60, b"\x00" * 6)]
        ),
        ipv6(body, 6, ext=[(0, b"\x00" * 6), (44, frag_first)]),
        ipv6(b"tail-of-datagram", 6, ext=[(44, frag_later)]),
        ipv6(udp(500, 4500, b"esp?"), 17, ext=[(51, b"\x00" * 14)]),  # AH, 16 bytes
        ipv6(icmp(135, 0, b"\x00" * 20), 58, ext=[(0, b"\x05\x02\x00\x00\x01\x00")]),
        ipv6(b"", 59),
    ]
    b = read_all(write(tmp_path, "v6.pcap", pcap_bytes([(0, 0, eth(f, 0x86DD)) for f in frames])))
    ext0 = 8 + 24 + 8
    assert b.proto.tolist() == [6, 6, 6, 17, 58, 59]
    assert b.src_port.tolist() == [8080, 8080, 0, 500, 135, 0]
    assert b.dst_port.tolist() == [9090, 9090, 0, 4500, 0, 0]
    assert b.frag.tolist() == [0, 1, 2, 0, 0, 0]
    assert b.payload_len.tolist() == [10, 10, len(b"tail-of-datagram"), 4, 20, 0]
    assert b.payload_off.tolist() == [
        14 + 40 + ext0 + 20,
        14 + 40 + 16 + 20,
        14 + 40 + 8,
        14 + 40 + 16 + 8,
        14 + 40 + 8 + 8,
        0,
    ]
    assert set(b.ip_version.tolist()) == {6}


def test_ipv4_options_and_fragments(tmp_path: Path) -> None:
    seg = tcp(1111, 2222, 0x18, b"A" * 16)
    frames = [
        ipv4(seg, 6, options=b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"),  # router alert + NOPs
        ipv4(seg, 6, mf=True, total_len=20 + len(seg) + 100),  # first fragment (cut here)
        ipv4(b"B" * 24, 6, mf=True, frag_offset=1480),
        ipv4(b"C" * 8, 17, frag_offset=2960),
        ipv4(icmp(3, 3, b"orig-hdr"), 1, ttl=1),
    ]
    b = read_all(write(tmp_path, "f.pcap", pcap_bytes([(0, 0, eth(f)) for f in frames])))
    assert b.frag.tolist() == [0, 1, 3, 2, 0]
    assert b.src_port.tolist() == [1111, 1111, 0, 0, 3]
    assert b.dst_port.tolist() == [2222, 2222, 0, 0, 3]
    assert b.tcp_flags.tolist() == [0x18, 0x18, 0, 0, 0]
    assert b.payload_len.tolist() == [16, 116, 24, 8, 8]  # per the IP header, not the caplen
    assert b.payload_off.tolist() == [14 + 28 + 20, 14 + 20 + 20, 14 + 20, 14 + 20, 14 + 20 + 8]
    assert b.ttl.tolist() == [64, 64, 64, 64, 1]


def test_arp_and_icmp(tmp_path: Path) -> None:
    frames = [
        eth(arp(1, "192.168.0.10", "192.168.0.1"), 0x0806, dst=b"\xff" * 6),
        eth(arp(2, "192.168.0.1", "192.168.0.10"), 0x0806),
        eth(ipv4(icmp(8, 0, b"x" * 56), 1, src="192.168.0.10", dst="1.1.1.1")),
        eth(ipv4(icmp(0, 0, b"x" * 56), 1, src="1.1.1.1", dst="192.168.0.10")),
        eth(ipv6(icmp(1, 4, b"\x00" * 48), 58), 0x86DD),
    ]
    b = read_all(write(tmp_path, "a.pcap", pcap_bytes([(0, 0, f) for f in frames])))
    assert b.arp_op.tolist() == [1, 2, 0, 0, 0]
    assert b.dst_mac[0] == 0xFFFFFFFFFFFF
    assert [ip(b, 0), ip(b, 0, "dst"), ip(b, 1), ip(b, 1, "dst")] == [
        "192.168.0.10",
        "192.168.0.1",
        "192.168.0.1",
        "192.168.0.10",
    ]
    assert b.proto.tolist() == [0, 0, 1, 1, 58]
    assert b.src_port.tolist() == [0, 0, 8, 0, 1]
    assert b.dst_port.tolist() == [0, 0, 0, 0, 4]
    assert b.payload_len.tolist() == [0, 0, 56, 56, 48]


def test_ethernet_padding_is_not_payload(tmp_path: Path) -> None:
    syn = eth(ipv4(tcp(5, 6, 0x02), 6))
    padded = syn + b"\x00" * (60 - len(syn))
    data = eth(ipv4(tcp(5, 6, 0x18, b"PAYLOAD"), 6))
    b = read_all(write(tmp_path, "p.pcap", pcap_bytes([(0, 0, padded), (0, 0, data)])), with_raw=True)
    assert b.payload_len.tolist() == [0, 7]
    assert b.payload_off.tolist() == [0, 54]
    assert b.payload(1) == b"PAYLOAD" and b.payload(0) == b""
    assert b.frame(0) == padded and b.frame(1) == data


def test_snaplen_truncated_frames_fill_what_is_captured(tmp_path: Path) -> None:
    full = eth(ipv4(tcp(4321, 80, 0x18, b"z" * 100), 6, src="10.0.0.1", dst="10.0.0.2", ttl=9))
    cuts = [10, 14 + 10, 14 + 20 + 2, 14 + 20 + 4, 14 + 20 + 14, 14 + 20 + 20]
    recs = [(0, 0, full[:c]) for c in cuts]
    p = write(tmp_path, "s.pcap", pcap_bytes(recs, snaplen=64, wire_lens=[len(full)] * len(cuts)))
    b = read_all(p)
    assert b.cap_len.tolist() == cuts and set(b.wire_len.tolist()) == {len(full)}
    assert b.dst_mac[0] == mac_int(MAC_B) and b.src_mac[0] == 0  # src MAC not fully captured
    assert b.ip_version.tolist() == [0, 4, 4, 4, 4, 4]
    assert b.src_ip_lo[:2].tolist() == [0, 0] and b.src_ip_hi[:2].tolist() == [0, 0]
    assert [ip(b, i) for i in range(2, 6)] == ["10.0.0.1"] * 4
    assert b.ttl.tolist() == [0, 0, 9, 9, 9, 9]
    assert b.src_port.tolist() == [0, 0, 0, 4321, 4321, 4321]
    assert b.tcp_flags.tolist() == [0, 0, 0, 0, 0x18, 0x18]
    assert b.payload_len.tolist() == [0, 0, 100, 100, 100, 100]
    assert b.payload_off.tolist() == [0] * 6  # payload starts beyond every caplen


FUZZ_SCRIPT = r"""
import sys
import numpy as np
from pcapgen import *
from iotsentry.capture.decode import decode_frames
from iotsentry.schema import PacketBatch

rng = np.random.default_rng(7)
l4s = [(6, tcp(1, 2, 0x18, b"x" * 9, b"\x01" * 8)), (17, udp(3, 4, b"y")), (1, icmp(8, 0)), (58, icmp(1, 1)),
       (132, b"\x00" * 16), (47, b"gre!")]
l3s = []
for p, seg in l4s:
    l3s.append((0x0800, ipv4(seg, p, options=b"\x01" * 4)))
    l3s.append((0x0800, ipv4(seg, p, mf=True)))
    l3s.append((0x86DD, ipv6(seg, p, ext=[(0, b"\x00" * 6), (43, b"\x00" * 6), (44, b"\x00" * 6),
                                        (51, b"\x00" * 14), (60, b"\x00" * 6)])))
l3s.append((0x0806, arp(1, "1.2.3.4", "5.6.7.8")))
frames = []
for et, l3 in l3s:
    frames += [(1, eth(l3, et)), (1, eth(l3, et, vlans=[(0x88A8, 1), (0x8100, 2)])), (113, sll(l3, et)),
               (276, sll2(l3, et)), (101, l3), (0, struct.pack("<I", 2) + l3)]
frames.append((1, MAC_A + MAC_B + struct.pack(">H", 40) + bytes([0xAA, 0xAA, 3, 0, 0, 0, 8, 0]) + l3s[0][1]))
cols = {k: np.zeros(1, dtype=v) for k, v in PacketBatch.FIELDS.items()}
names = ["src_mac", "dst_mac", "ethertype", "vlan", "ip_version", "src_ip_hi", "src_ip_lo", "dst_ip_hi",
         "dst_ip_lo", "proto", "src_port", "dst_port", "tcp_flags", "ttl", "payload_len", "payload_off",
         "frag", "arp_op"]
out = [cols[k] for k in names]
calls = 0
for link, f in frames:
    variants = [f[:c] for c in range(len(f) + 1)]
    for _ in range(30):  # random byte mutations of the whole frame
        g = bytearray(f)
        for pos in rng.integers(0, len(g), 4):
            g[pos] = int(rng.integers(0, 256))
        variants.append(bytes(g[: int(rng.integers(0, len(g) + 1))]))
    for v in variants:
        for lt in {link, 1, 0, 101, 113, 276, 228, 229}:
            buf = np.frombuffer(v, dtype=np.uint8).copy()  # exactly the captured bytes
            decode_frames(buf, np.zeros(1, np.int64), np.array([len(v)], np.uint32),
                          np.array([1500], np.uint32), np.array([lt], np.int32), *out)
            calls += 1
print("ok", calls)
"""


def test_decoder_never_reads_past_cap_len(tmp_path: Path) -> None:
    """Every prefix and random mutation of many frames, decoded with numba bounds checking on."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    ok, calls = res.stdout.split()
    assert ok == "ok" and int(calls) > 50_000


# --------------------------------------------------------------------------- batching


def random_frames(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        body = rng.integers(0, 256, int(rng.integers(0, 1400)), dtype=np.uint8).tobytes()
        if k % 3 == 0:
            out.append(eth(ipv4(tcp(k % 65536, 80, 0x18, body), 6)))
        elif k % 3 == 1:
            out.append(eth(ipv6(udp(k % 65536, 53, body), 17), 0x86DD))
        else:
            out.append(eth(ipv4(udp(k % 65536, 123, body), 17), vlans=[(0x8100, k % 4096)]))
    return out


def test_batches_chunks_and_index(tmp_path: Path) -> None:
    frames = random_frames(1500)
    frames[700] = eth(b"J" * 200_000, 0x88B5)  # larger than the read chunk
    p = write(tmp_path, "big.pcap", pcap_bytes([(k, 0, f) for k, f in enumerate(frames)], snaplen=262144))
    assert p.stat().st_size > 4 * 65536
    whole = read_all(p, with_raw=True)
    assert len(whole) == 1500
    batches = list(read_pcap(p, batch_size=64, with_raw=True, chunk_bytes=65536))
    assert [len(x) for x in batches] == [64] * 23 + [1500 - 64 * 23]
    joined = PacketBatch.concat(batches)
    for name in PacketBatch.FIELDS:
        assert np.array_equal(joined.columns[name], whole.columns[name]), name
    assert joined.index.tolist() == list(range(1500))
    assert joined.ts.tolist() == [float(k) for k in range(1500)]
    assert all(joined.frame(k) == frames[k] for k in range(1500))
    assert joined.cap_len[700] == 200_014 and joined.ethertype[700] == 0x88B5
    assert sum(len(x) for x in read_packets(p, batch_size=1000)) == 1500
    assert count_packets(p) == 1500


def test_pcapng_batches_chunks(tmp_path: Path) -> None:
    frames = random_frames(900, seed=1)
    frames[5] = eth(b"J" * 100_000, 0x88B5)
    blocks = [shb(), idb(1, tsresol=3)] + [epb(0, 1000 * k, f) for k, f in enumerate(frames)]
    p = write(tmp_path, "big.pcapng", b"".join(blocks))
    batches = list(read_pcapng(p, batch_size=100, with_raw=True, chunk_bytes=65536))
    assert [len(x) for x in batches] == [100] * 9
    b = PacketBatch.concat(batches)
    assert b.ts.tolist() == [float(k) for k in range(900)]  # tsresol 10^-3
    assert all(b.frame(k) == frames[k] for k in range(900))
    whole = read_all(p)
    assert np.array_equal(whole.src_port, b.src_port) and np.array_equal(whole.index, np.arange(900))


# --------------------------------------------------------------------------- bad input


def test_empty_file_is_empty_capture(tmp_path: Path) -> None:
    p = write(tmp_path, "e.pcap", b"")
    b, damaged = read_quiet(p)
    assert len(b) == 0 and damaged == [] and count_packets(p) == 0
    assert list(read_packets(p)) == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        b"hello world, not a capture" * 10,
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    ],
)
def test_not_a_capture_raises_input_error(tmp_path: Path, data: bytes) -> None:
    p = write(tmp_path, "junk.pcap", data)
    with pytest.raises(InputError, match="not a pcap or pcapng capture") as info:
        read_all(p)
    assert info.value.path == str(p)
    with pytest.raises(InputError):
        count_packets(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_all(tmp_path / "nope.pcap")
    with pytest.raises(InputError, match="directory"):
        read_all(tmp_path)


@pytest.mark.parametrize("linktype", [147, 127, 105])
def test_unsupported_link_type(tmp_path: Path, linktype: int) -> None:
    p = write(tmp_path, "w.pcap", pcap_bytes([(0, 0, b"\x00" * 30)], linktype=linktype))
    with pytest.raises(InputError, match=f"link type {linktype}"):
        read_all(p)
    ng = write(tmp_path, "w.pcapng", shb() + idb(linktype) + epb(0, 0, b"\x00" * 30))
    with pytest.raises(InputError, match=f"link type {linktype}"):
        read_all(ng)


def test_pcap_truncated_mid_packet_and_mid_header(tmp_path: Path) -> None:
    frames = sample_frames()
    data = pcap_bytes([(1, 0, f) for f in frames])
    third = 24 + sum(16 + len(f) for f in frames[:2])  # offset of record 2's header
    for cut, what in [(third + 16 + 5, "data"), (third + 7, "header")]:
        p = write(tmp_path, f"cut-{what}.pcap", data[:cut])
        b, damaged = read_quiet(p)
        assert len(b) == 2, what
        assert b.src_port.tolist() == [1234, 5353]
        assert len(damaged) == 1
        assert damaged[0].offset == third and damaged[0].packets_read == 2
        assert str(p) in str(damaged[0])
    # cut inside the global header: nothing to read, one warning
    b, damaged = read_quiet(write(tmp_path, "gh.pcap", data[:10]))
    assert len(b) == 0 and len(damaged) == 1 and damaged[0].offset == 0


def test_pcap_corrupt_record_header(tmp_path: Path) -> None:
    frames = sample_frames()
    data = bytearray(pcap_bytes([(1, 0, f) for f in frames]))
    third = 24 + sum(16 + len(f) for f in frames[:2])
    data[third + 8 : third + 12] = struct.pack("<I", 0x7FFFFFF0)  # absurd captured length
    b, damaged = read_quiet(write(tmp_path, "c.pcap", bytes(data)))
    assert len(b) == 2 and len(damaged) == 1 and damaged[0].offset == third


def test_pcapng_truncated_and_corrupt(tmp_path: Path) -> None:
    data = pcapng_two_interfaces(False)
    full = read_all(write(tmp_path, "full.pcapng", data))
    # find where the 2nd EPB starts: walk block lengths
    offs, p = [], 0
    while p < len(data):
        offs.append(p)
        p += struct.unpack("<I", data[p + 4 : p + 8])[0]
    second_epb = offs[5]  # SHB, IDB, IDB, NRB, EPB, EPB
    b, damaged = read_quiet(write(tmp_path, "t.pcapng", data[: second_epb + 30]))
    assert len(b) == 1 and len(damaged) == 1 and damaged[0].offset == second_epb
    assert b.src_port[0] == full.src_port[0]
    bad = bytearray(data)
    bad[second_epb + 8 : second_epb + 12] = struct.pack("<I", 9)  # interface 9 does not exist
    b, damaged = read_quiet(write(tmp_path, "i.pcapng", bytes(bad)))
    assert len(b) == 1 and len(damaged) == 1 and "interface" in damaged[0].problem
    bad = bytearray(data)
    bad[second_epb + 4 : second_epb + 8] = struct.pack("<I", 13)  # not a multiple of 4
    b, damaged = read_quiet(write(tmp_path, "l.pcapng", bytes(bad)))
    assert len(b) == 1 and len(damaged) == 1 and damaged[0].offset == second_epb


# --------------------------------------------------------------------------- real data


def real_captures() -> list[Path]:
    if not DATA.exists():
        return []
    return sorted(p for p in DATA.rglob("*") if p.suffix in (".pcap", ".pcapng") and p.is_file())


def dpkt_records(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        reader: Any = dpkt.pcapng.Reader(f) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        return [(float(ts), bytes(buf)) for ts, buf in reader]


def pcap_wire_lens(path: Path) -> list[int]:
    """Record wire lengths read with struct (independently of the reader under test)."""
    data = path.read_bytes()
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, p = [], 24
    while p + 16 <= len(data):
        _s, _f, cl, wl = struct.unpack(e + "IIII", data[p : p + 16])
        if p + 16 + cl > len(data):
            break
        out.append(wl)
        p += 16 + cl
    return out


@pytest.mark.slow
def test_every_real_capture_has_dpkt_packet_count(data_dir: Path) -> None:
    files = real_captures()
    assert len(files) > 500
    total = 0
    for path in files:
        expected = len(dpkt_records(path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            n = count_packets(path)
        damaged = [w for w in caught if issubclass(w.category, CaptureDamaged)]
        if path.as_posix().endswith(TRUNCATED_42_1):
            # dpkt also returns the cut-short last record; we keep complete packets only
            assert n == expected - 1 == 24484, path
            assert len(damaged) == 1, path
        else:
            assert n == expected, path
            assert damaged == [], path
        total += n
    assert total > 270_000


@pytest.mark.slow
def test_truncated_iot23_capture() -> None:
    path = data_path(*TRUNCATED_42_1.split("/"))
    b, damaged = read_quiet(path)
    assert len(b) == 24484
    assert len(damaged) == 1
    size = path.stat().st_size
    last = dpkt_records(path)[-1]
    assert damaged[0].offset == size - 16 - len(last[1])  # header of the cut-short record
    assert damaged[0].packets_read == 24484
    assert b.index[-1] == 24483


def dpkt_reference(records: list[tuple[float, bytes]]) -> dict[str, Any]:
    """Expected columns from a dpkt decode, with masks of rows where dpkt decoded L3 / L4."""
    n = len(records)
    cols = {
        k: np.zeros(n, dtype=np.int64)
        for k in (
            "src_mac",
            "dst_mac",
            "ethertype",
            "vlan",
            "ip_version",
            "proto",
            "src_port",
            "dst_port",
            "tcp_flags",
            "ttl",
            "frag",
            "payload_len",
            "arp_op",
        )
    }
    addrs = {k: np.zeros(n, dtype=object) for k in ("src", "dst")}
    l3 = np.zeros(n, dtype=bool)
    l4 = np.zeros(n, dtype=bool)
    for i, (_ts, buf) in enumerate(records):
        e = dpkt.ethernet.Ethernet(buf)
        cols["src_mac"][i] = int.from_bytes(e.src, "big")
        cols["dst_mac"][i] = int.from_bytes(e.dst, "big")
        tags = getattr(e, "vlan_tags", None)
        cols["vlan"][i] = tags[0].id if tags else 0
        d = e.data
        if isinstance(d, dpkt.ip.IP):
            l3[i] = True
            cols["ethertype"][i], cols["ip_version"][i] = 0x0800, 4
            addrs["src"][i] = ip_to_str(0, 0xFFFF00000000 | int.from_bytes(d.src, "big"))
            addrs["dst"][i] = ip_to_str(0, 0xFFFF00000000 | int.from_bytes(d.dst, "big"))
            cols["proto"][i], cols["ttl"][i] = d.p, d.ttl
            cols["frag"][i] = (1 if d.mf else 0) | (2 if d.offset else 0)
            ip_payload = (d.len or (len(buf) - 14)) - d.hl * 4
            nonfirst = bool(d.offset)
        elif isinstance(d, dpkt.ip6.IP6):
            l3[i] = True
            cols["ethertype"][i], cols["ip_version"][i] = 0x86DD, 6
            addrs["src"][i] = ip_to_str(int.from_bytes(d.src[:8], "big"), int.from_bytes(d.src[8:], "big"))
            addrs["dst"][i] = ip_to_str(int.from_bytes(d.dst[:8], "big"), int.from_bytes(d.dst[8:], "big"))
            cols["proto"][i], cols["ttl"][i] = d.p, d.hlim
            ext = sum(h.length for h in d.all_extension_headers)
            ip_payload = d.plen - ext
            fh = [h for h in d.all_extension_headers if isinstance(h, dpkt.ip6.IP6FragmentHeader)]
            nonfirst = bool(fh and fh[0].frag_off)
            if fh:
                cols["frag"][i] = (1 if fh[0].m_flag else 0) | (2 if fh[0].frag_off else 0)
        elif isinstance(d, dpkt.arp.ARP):
            l3[i] = True
            cols["ethertype"][i], cols["arp_op"][i] = 0x0806, d.op
            addrs["src"][i] = ip_to_str(0, 0xFFFF00000000 | int.from_bytes(d.spa, "big"))
            addrs["dst"][i] = ip_to_str(0, 0xFFFF00000000 | int.from_bytes(d.tpa, "big"))
            l4[i] = True
            continue
        else:
            addrs["src"][i] = addrs["dst"][i] = ""
            continue
        t = d.data
        hdr = None
        if nonfirst:
            hdr = 0
        elif isinstance(t, dpkt.tcp.TCP):
            cols["src_port"][i], cols["dst_port"][i], cols["tcp_flags"][i] = t.sport, t.dport, t.flags
            hdr = t.off * 4
        elif isinstance(t, dpkt.udp.UDP):
            cols["src_port"][i], cols["dst_port"][i] = t.sport, t.dport
            hdr = 8
        elif isinstance(t, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
            cols["src_port"][i], cols["dst_port"][i] = t.type, t.code
            hdr = 8
        elif cols["proto"][i] not in (6, 17, 1, 58, 132):
            hdr = 0
        if hdr is not None:
            l4[i] = True
            cols["payload_len"][i] = max(0, ip_payload - hdr)
    return {"cols": cols, "addrs": addrs, "l3": l3, "l4": l4}


def sample_real_files() -> list[Path]:
    files = real_captures()
    sentinel = [p for p in files if "iot-sentinel" in p.parts]
    others = [p for p in files if "iot-sentinel" not in p.parts]
    return others + sentinel[::10]


@pytest.mark.slow
def test_fields_equal_dpkt_decode_on_real_captures(data_dir: Path) -> None:
    files = sample_real_files()
    assert len(files) > 60
    n_rows = n_l3 = n_l4 = 0
    for path in files:
        records = dpkt_records(path)
        if path.as_posix().endswith(TRUNCATED_42_1):
            records = records[:-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptureDamaged)
            b = read_all(path)
        assert len(b) == len(records), path
        ref = dpkt_reference(records)
        cols, l3, l4 = ref["cols"], ref["l3"], ref["l4"]
        ts = np.array([r[0] for r in records])
        if path.suffix == ".pcap":
            assert np.array_equal(b.ts, ts), path  # same float arithmetic as dpkt
            assert b.wire_len.tolist() == pcap_wire_lens(path), path
        else:
            np.testing.assert_allclose(b.ts, ts, rtol=0, atol=1e-6, err_msg=str(path))
            assert (b.wire_len >= b.cap_len).all(), path
        assert b.cap_len.tolist() == [len(r[1]) for r in records], path
        for name in ("src_mac", "dst_mac", "vlan"):
            assert np.array_equal(b.columns[name].astype(np.int64), cols[name]), (path, name)
        for name in ("ethertype", "ip_version", "proto", "ttl", "frag", "arp_op"):
            got = b.columns[name].astype(np.int64)[l3]
            bad = np.flatnonzero(got != cols[name][l3])
            assert len(bad) == 0, (path, name, np.flatnonzero(l3)[bad[:5]])
        src = np.array([ip(b, i) for i in range(len(b))], dtype=object)
        dst = np.array([ip(b, i, "dst") for i in range(len(b))], dtype=object)
        assert (src[l3] == ref["addrs"]["src"][l3]).all(), path
        assert (dst[l3] == ref["addrs"]["dst"][l3]).all(), path
        for name in ("src_port", "dst_port", "tcp_flags", "payload_len"):
            got = b.columns[name].astype(np.int64)[l4]
            bad = np.flatnonzero(got != cols[name][l4])
            assert len(bad) == 0, (path, name, np.flatnonzero(l4)[bad[:5]])
        n_rows += len(b)
        n_l3 += int(l3.sum())
        n_l4 += int(l4.sum())
    assert n_rows > 90_000
    assert n_l3 > 0.95 * n_rows and n_l4 > 0.95 * n_rows
