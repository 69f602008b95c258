"""Segmentation advice: allow-lists from a real capture, attack traffic after learning excluded,
direction rules on hand-made frames, nftables and JSON output, the CLI."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import dpkt
import pytest

from conftest import data_path
from iotsentry.baseline import advise_cli
from iotsentry.baseline.allowlist import AllowlistCollector, learn_allowlist, write_allowlist
from iotsentry.capture.reader import read_all
from iotsentry.features.device_context import DeviceIndex, packet_context
from iotsentry.pipeline import AnalysisConfig, Analyzer

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
HUE_MAC = "00:17:88:75:b3:82"
HUE_IP = "192.168.100.118"
GW_MAC = "78:8a:20:43:93:d5"


def _frame(src_mac: str, dst_mac: str, src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    eth = dpkt.ethernet.Ethernet(
        src=bytes.fromhex(src_mac.replace(":", "")), dst=bytes.fromhex(dst_mac.replace(":", "")), data=ip
    )
    return bytes(eth)


def _tcp(sport: int, dport: int, flags: int) -> dpkt.tcp.TCP:
    return dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, off=5)


def _write(path: Path, rows: list[tuple[float, bytes]]) -> Path:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, buf in sorted(rows, key=lambda r: r[0]):
            w.writepkt(buf, ts=ts)
    return path


def _attack_frames(t0: float) -> list[tuple[float, bytes]]:
    """After the learning period: the Hue scans telnet on TEST-NET-3 and beacons to a new peer."""
    rows = []
    for k in range(200):
        syn = _tcp(40000 + k, 23, dpkt.tcp.TH_SYN)
        rows.append((t0 + 0.05 * k, _frame(HUE_MAC, GW_MAC, HUE_IP, f"203.0.113.{k % 250 + 1}", syn, 6)))
    for k in range(10):
        syn = _tcp(50000 + k, 6667, dpkt.tcp.TH_SYN)
        rows.append((t0 + 20 + 30 * k, _frame(HUE_MAC, GW_MAC, HUE_IP, "198.51.100.66", syn, 6)))
    return rows


@pytest.fixture(scope="module")
def infected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    src = data_path(*HUE)
    with src.open("rb") as fh:
        rows = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    first, last = rows[0][0], rows[-1][0]
    t_attack = first + 0.9 * (last - first)
    out = tmp_path_factory.mktemp("allow") / "hue-infected.pcap"
    return _write(out, rows + _attack_frames(t_attack)), t_attack


def test_allowlist_from_a_real_capture_holds_the_device_real_peers() -> None:
    hue = data_path(*HUE)
    allow = learn_allowlist([hue], learn_fraction=0.8)
    dev = allow.device(HUE_MAC)
    assert dev is not None and dev.maturity["mature"] and HUE_IP in dev.ips
    # the same baseline the pipeline learns: every peer the Hue reached by TCP/UDP is allowed
    an = Analyzer([hue], AnalysisConfig(learn_fraction=0.8))
    an.run()
    assert an.baseline is not None
    prof = an.baseline.profiles[an.baseline.device_ids.index(HUE_MAC)]
    assert dev.peers <= set(prof.peers)
    assert len(dev.peers) >= 0.8 * len(prof.peers)
    rules = {(r.peer, r.proto, r.port, r.direction) for r in dev.rules}
    assert ("192.168.100.1", "udp", 53, "out") in rules  # its DNS resolver
    assert any(p == "udp" and port == 123 and d == "out" for _, p, port, d in rules)  # NTP
    assert any(p == "tcp" and port == 443 and d == "out" for _, p, port, d in rules)  # cloud TLS
    # immature devices and the gateway are excluded with a reason
    assert "not mature" in allow.excluded["9c:f4:8e:65:c4:4d"]
    assert "gateway" in allow.excluded[GW_MAC]
    assert allow.device("9c:f4:8e:65:c4:4d") is None


def test_traffic_after_an_injected_attack_is_not_allowed(infected: tuple[Path, float]) -> None:
    path, t_attack = infected
    allow = learn_allowlist([path], learn_fraction=0.8)
    assert allow.learned_until is not None and allow.learned_until < t_attack
    dev = allow.device(HUE_MAC)
    assert dev is not None
    assert not any(p.startswith("203.0.113.") or p == "198.51.100.66" for p in dev.peers)
    assert not any(r.port in (23, 6667) for r in dev.rules)
    nft = allow.to_nftables()
    assert "203.0.113." not in nft and "198.51.100.66" not in nft
    # control: the same packets *are* recorded when the collector is not limited to learning
    batch = read_all(path)
    an = Analyzer([path])
    devices = an.inventory()
    index = DeviceIndex([d.device_id for d in devices], GW_MAC)
    col = AllowlistCollector(index.ids)
    col.add(batch, packet_context(batch, index))
    everything = {r.peer for r in col.rules(index.ids.index(HUE_MAC))}
    assert "198.51.100.66" in everything and sum(p.startswith("203.0.113.") for p in everything) == 200


def test_directions_and_protocols_on_hand_made_frames() -> None:
    dev_mac, gw = "02:00:00:00:00:01", "02:00:00:00:00:fe"
    dev_ip = "192.168.1.20"
    frames = [
        _frame(dev_mac, gw, dev_ip, "198.51.100.1", _tcp(40000, 443, dpkt.tcp.TH_SYN), 6),
        _frame(gw, dev_mac, "198.51.100.1", dev_ip, _tcp(443, 40000, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK), 6),
        _frame(gw, dev_mac, "198.51.100.7", dev_ip, _tcp(51000, 8080, dpkt.tcp.TH_SYN), 6),  # peer opens
        _frame(dev_mac, gw, dev_ip, "198.51.100.2", dpkt.udp.UDP(sport=33000, dport=53, ulen=8), 17),
        _frame(gw, dev_mac, "198.51.100.2", dev_ip, dpkt.udp.UDP(sport=53, dport=33000, ulen=8), 17),
        _frame(dev_mac, gw, dev_ip, "198.51.100.3", _tcp(40001, 50000, dpkt.tcp.TH_SYN), 6),  # high port out
        _frame(dev_mac, gw, dev_ip, "198.51.100.4", dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo()), 1),
        _frame(gw, dev_mac, "198.51.100.4", dev_ip, dpkt.icmp.ICMP(type=0, data=dpkt.icmp.ICMP.Echo()), 1),
    ]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = _write(Path(d) / "f.pcap", [(1000.0 + i, f) for i, f in enumerate(frames)])
        batch = read_all(p)
    index = DeviceIndex([dev_mac, gw], gw)
    col = AllowlistCollector(index.ids)
    col.add(batch, packet_context(batch, index))
    got = {(r.peer, r.proto, r.port, r.direction): r.packets for r in col.rules(0)}
    assert got == {
        ("198.51.100.1", "tcp", 443, "out"): 2,
        ("198.51.100.7", "tcp", 8080, "in"): 1,
        ("198.51.100.2", "udp", 53, "out"): 2,
        ("198.51.100.3", "tcp", 50000, "out"): 1,
        ("198.51.100.4", "icmp", 8, "out"): 2,
    }


def _check_ruleset_shape(nft: str) -> None:
    assert nft.count("{") == nft.count("}")
    assert "table inet iotsentry {" in nft and "type filter hook forward priority 0; policy accept;" in nft
    chains = re.findall(r"chain (dev_\w+) \{(.*?)\n\t\}", nft, flags=re.S)
    assert chains
    for _name, body in chains:
        assert body.strip().splitlines()[-1].strip().startswith("counter drop")
        for line in body.strip().splitlines()[:-1]:
            match = r"(tcp dport \d+|udp dport \d+|icmp(v6)? type echo-request)"
            assert re.fullmatch(rf"ip6? [sd]addr (\S+|\{{ [^}}]+ \}}) {match} accept", line.strip()), line


def test_nftables_and_json_exports(tmp_path: Path) -> None:
    allow = learn_allowlist([data_path(*HUE)], learn_fraction=0.8)
    nft = write_allowlist(allow, "nftables")
    _check_ruleset_shape(nft)
    assert "chain dev_00178875b382_out" in nft and "elements = { 192.168.100.118 }" in nft
    assert "ip saddr @dev_00178875b382_v4 jump dev_00178875b382_out" in nft
    assert "239.255.255.250" not in nft  # multicast stays in the JSON only
    doc = json.loads(write_allowlist(allow, "json"))
    assert doc["format"] == "iotsentry-allowlist" and doc["learned_until"].endswith("Z")
    hue = next(d for d in doc["devices"] if d["device_id"] == HUE_MAC)
    assert {"peer", "proto", "port", "direction", "packets", "scope"} <= set(hue["rules"][0])
    assert any(r["peer"] == "239.255.255.250" and r["scope"] == "multicast" for r in hue["rules"])
    assert {e["device_id"] for e in doc["excluded"]} == set(allow.excluded)
    with pytest.raises(ValueError):
        write_allowlist(allow, "iptables")


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed on this machine")
def test_nft_accepts_the_ruleset(tmp_path: Path) -> None:
    f = tmp_path / "iotsentry.nft"
    f.write_text(learn_allowlist([data_path(*HUE)], learn_fraction=0.8).to_nftables())
    res = subprocess.run(["nft", "-c", "-f", str(f)], capture_output=True, text=True, check=False)
    if res.returncode != 0 and "Operation not permitted" in res.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert res.returncode == 0, res.stderr


def test_cli_writes_both_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser(prog="iotsentry")
    advise_cli.register(ap.add_subparsers(dest="command", required=True))
    out = tmp_path / "rules.nft"
    args = ap.parse_args(["advise", str(data_path(*HUE)), "--learn-fraction", "0.8", "--out", str(out)])
    assert args.func(args) == 0
    _check_ruleset_shape(out.read_text())
    assert "excluded" in capsys.readouterr().err
    args = ap.parse_args(["advise", str(data_path(*HUE)), "--format", "json", "--learn-seconds", "1870"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any(d["device_id"] == HUE_MAC for d in doc["devices"])
    assert doc["learned_until"] == "2018-09-14T12:11:00.000000Z"
