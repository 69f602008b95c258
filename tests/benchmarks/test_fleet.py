"""The fleet generator of ``benchmarks/fleet.py`` on a real capture (IoTEnsemble, 2020-11-23).

The output is read back with dpkt (not with the generator's own field parsing) and compared
frame by frame with the source.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from conftest import REPO, data_path
from iotsentry.evaluation.checksum import ones_sum

sys.path.insert(0, str(REPO / "benchmarks"))

import fleet

pytestmark = pytest.mark.slow

K = 4


@pytest.fixture(scope="module")
def source() -> fleet.Source:
    folder = data_path("iotensemble")
    paths = sorted(folder.glob("*/2020-11-23.pcap"))
    if not paths:
        pytest.skip(f"no 2020-11-23 captures under {folder}")
    return fleet.analyse(fleet.load_frames(paths))


@pytest.fixture(scope="module")
def built(source: fleet.Source, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fleet")
    src_pcap, out = tmp / "source.pcap", tmp / "fleet.pcap"
    fleet.write_fleet(src_pcap, source, clones=1)  # the source itself, merged in time order
    summary = fleet.write_fleet(out, source, clones=K, seed=7)
    return {"summary": summary, "src": _frames(src_pcap), "out": _frames(out), "path": out, "tmp": tmp}


def _ip(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _frames(path: Path) -> list[dict[str, Any]]:
    """Each frame's timestamp, addresses and checksum residuals, parsed with dpkt."""
    rows = []
    with path.open("rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            r: dict[str, Any] = {"ts": ts, "len": len(buf), "macs": (_ip(eth.src), _ip(eth.dst)), "ips": ()}
            r["local_src"] = False  # sent from a local address (what makes the inventory see a device)
            if isinstance(eth.data, dpkt.ip.IP):
                ip = eth.data
                r["ips"] = (_ip(ip.src), _ip(ip.dst))
                r["local_src"] = bool(fleet._local_v4(np.array([_ip(ip.src)]))[0])
                hdr = buf[14 : 14 + ip.hl * 4]
                r["ip_sum"] = ones_sum(hdr)  # 0xFFFF when the header checksum verifies
                seg = buf[14 + ip.hl * 4 : 14 + ip.len]
                if ip.p in (6, 17) and ip.offset == 0 and not (ip.p == 17 and seg[6:8] == b"\0\0"):
                    pseudo = buf[26:34] + bytes([0, ip.p]) + len(seg).to_bytes(2, "big")
                    r["l4_sum"] = ones_sum(pseudo + seg)
                if (
                    ip.p == 17
                    and isinstance(ip.data, dpkt.udp.UDP)
                    and {ip.data.sport, ip.data.dport} <= {67, 68}
                ):
                    p = bytes(ip.data.data)
                    if len(p) >= 34:
                        r["dhcp"] = (_ip(p[12:16]), _ip(p[16:20]), _ip(p[28:34]))
                        r["local_src"] |= r["dhcp"][2] == _ip(eth.src)  # a DHCP client's message
            elif isinstance(eth.data, dpkt.arp.ARP):
                a = eth.data
                r["macs"] += (_ip(a.sha), _ip(a.tha))
                r["ips"] = (_ip(a.spa), _ip(a.tpa))
                r["local_src"] = True
            elif isinstance(eth.data, dpkt.ip6.IP6):
                r["local_src"] = eth.data.src[:2] in (b"\xfe\x80",) or eth.data.src[0] & 0xFE == 0xFC
            rows.append(r)
    return rows


def _clone_of_mac(source: fleet.Source, mac: int) -> tuple[int, int] | None:
    """(device, clone) a MAC stands for in a one-copy fleet of K clones; None for other hosts."""
    i = np.searchsorted(source.dev_mac, mac)
    if i < source.devices and source.dev_mac[i] == mac:
        return int(i), 0
    if mac >> 40 == 0x02:
        g = mac & ((1 << 40) - 1)
        return (g // K) % source.devices, g % K
    return None


def _clone_of_ip(source: fleet.Source, ip: int) -> tuple[int, int] | None:
    """(device, clone) an IPv4 address stands for; None for the gateway and remote peers."""
    hit = np.flatnonzero(source.slot_ip == ip)
    if len(hit):
        return int(source.slot_dev[hit[0]]), 0
    if ip >> 24 == 10:
        h = (ip >> 8 & 0xFFFF) * 254 + (ip & 0xFF) - 1
        return int(source.slot_dev[(h // K) % len(source.slot_ip)]), h % K
    return None


def _devices_in(source: fleet.Source, r: dict[str, Any]) -> dict[int, set[int]]:
    """Device -> the clones whose addresses appear in a frame (Ethernet, IPv4, ARP, DHCP)."""
    dhcp = r.get("dhcp", (0, 0, 0))
    out: dict[int, set[int]] = defaultdict(set)
    for c in [_clone_of_mac(source, m) for m in (*r["macs"], dhcp[2])] + [
        _clone_of_ip(source, ip) for ip in (*r["ips"], dhcp[0], dhcp[1])
    ]:
        if c is not None:
            out[c[0]].add(c[1])
    return out


def test_same_packets_in_time_order(built: dict[str, Any]) -> None:
    src, out = built["src"], built["out"]
    assert built["summary"].packets == len(out) == len(src) > 50_000
    ts = np.array([r["ts"] for r in out])
    assert np.all(np.diff(ts) >= 0)
    assert np.array_equal(ts, [r["ts"] for r in src])
    assert [r["len"] for r in out] == [r["len"] for r in src]


def test_devices_grow_about_k_times(source: fleet.Source, built: dict[str, Any]) -> None:
    assert source.devices >= 10
    devices = built["summary"].devices
    assert 3 * source.devices <= devices <= K * source.devices
    assert fleet.count_devices(source, K, seed=7) == devices


def test_each_packet_of_a_device_belongs_to_exactly_one_clone(
    source: fleet.Source, built: dict[str, Any]
) -> None:
    per_clone: dict[tuple[int, int], int] = defaultdict(int)
    per_device: dict[int, int] = defaultdict(int)
    for r0, r in zip(built["src"], built["out"], strict=True):
        seen, before = _devices_in(source, r), _devices_in(source, r0)
        assert set(seen) == set(before)  # the same devices, under clone addresses
        assert all(k == {0} for k in before.values())
        for dev, clones in seen.items():
            assert len(clones) == 1, (r["ts"], dev, clones)
            per_clone[dev, clones.pop()] += 1
            per_device[dev] += 1
    for dev, n in per_device.items():
        assert sum(v for (d, _k), v in per_clone.items() if d == dev) == n
    assert len(per_clone) > 3 * source.devices


def test_gateway_and_remote_peers_untouched(source: fleet.Source, built: dict[str, Any]) -> None:
    gw = source.gateway
    gw_ips = {int(ip) for ip in source.fields["src_ip"][source.fields["src_mac"] == gw] if ip >= 0}
    changed = 0
    for r0, r in zip(built["src"], built["out"], strict=True):
        for a, b in zip(r0["macs"], r["macs"], strict=True):
            if a == gw or b == gw or (a >> 40) & 1:  # gateway and group addresses stay
                assert a == b
            changed += a != b
        for a, b in zip(r0["ips"], r["ips"], strict=True):
            if a in gw_ips or not fleet._private(np.array([a]))[0]:
                assert a == b
    assert changed > len(built["out"]) // 2  # most frames carry a clone's MAC


def test_checksums_still_verify(built: dict[str, Any]) -> None:
    checked = 0
    for r0, r in zip(built["src"], built["out"], strict=True):
        for key in ("ip_sum", "l4_sum"):
            assert (key in r0) == (key in r)
            if key in r:
                assert r[key] == r0[key]  # a checksum that verified still does (0xFFFF)
                checked += r[key] == 0xFFFF
    ip_frames = sum("ip_sum" in r for r in built["out"])
    assert checked > 1.8 * ip_frames


def test_dhcp_client_fields_follow_the_clone(source: fleet.Source, built: dict[str, Any]) -> None:
    rows = [(r0, r) for r0, r in zip(built["src"], built["out"], strict=True) if "dhcp" in r]
    if not rows:
        pytest.skip("no DHCP in this capture")
    for r0, r in rows:
        chaddr = _clone_of_mac(source, r["dhcp"][2])
        if chaddr is None:
            assert r["dhcp"] == r0["dhcp"]
            continue
        ether = {_clone_of_mac(source, m) for m in r["macs"]} - {None}
        assert chaddr in ether


def test_deterministic_for_a_seed(source: fleet.Source, built: dict[str, Any]) -> None:
    again, other = built["tmp"] / "again.pcap", built["tmp"] / "other.pcap"
    fleet.write_fleet(again, source, clones=K, seed=7)
    fleet.write_fleet(other, source, clones=K, seed=8)
    assert again.read_bytes() == built["path"].read_bytes()
    assert other.read_bytes() != built["path"].read_bytes()


def test_copies_shift_in_time_with_fresh_devices(source: fleet.Source, tmp_path: Path) -> None:
    n = len(source.frames)
    out = tmp_path / "copies.pcap"
    s = fleet.write_fleet(out, source, clones=2, packets=2 * n + n // 3)
    rows = _frames(out)
    assert s.packets == len(rows) == 2 * n + n // 3 and s.copies == 3
    ts = np.array([r["ts"] for r in rows])
    assert np.all(np.diff(ts) >= 0)
    assert ts[n] > ts[n - 1] and ts[2 * n] > ts[2 * n - 1]
    originals = {int(m) for m in source.dev_mac}
    later = {m for r in rows[n:] for m in r["macs"]}
    assert not originals & later  # every device of copies 1 and 2 has fresh addresses
    assert source.gateway in later
    assert s.devices == fleet.count_devices(source, 2, 2 * n + n // 3)
    assert s.devices > 2 * 2 * source.devices


def test_inventory_finds_the_clones(source: fleet.Source, built: dict[str, Any]) -> None:
    from iotsentry.pipeline import Analyzer
    from iotsentry.schema import mac_to_str

    inv = Analyzer([built["path"]]).inventory()
    gateways = [d for d in inv if d.is_gateway]
    assert [d.mac for d in gateways] == [mac_to_str(source.gateway)]
    macs = {d.mac for d in inv if not d.is_gateway}
    expected = {
        mac_to_str(r["macs"][0])
        for r in built["out"]
        if r["local_src"] and _clone_of_mac(source, r["macs"][0]) is not None
    }
    assert len(expected) == built["summary"].devices
    assert macs == expected
