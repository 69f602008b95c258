"""Tests of the infection-replay mixer (BENCHMARKS Q1)."""

from __future__ import annotations

import csv
import socket
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.evaluation.checksum import incremental_update, internet_checksum, ones_sum
from iotsentry.evaluation.mix import MixSummary, detect_gateway, mix_captures, read_capture

# ---------------------------------------------------------------------------------------------
# helpers (independent of the code under test: dpkt parsing and recomputation)
# ---------------------------------------------------------------------------------------------


def _frames(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as fh:
        return [(ts, buf) for ts, buf in dpkt.pcap.Reader(fh)]


def _recomputed(frame: bytes) -> tuple[int, int, int | None, int | None] | None:
    """(stored IP sum, recomputed IP sum, stored L4 sum, recomputed L4 sum) by dpkt."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP):
        return None
    stored_ip = ip.sum
    l4 = ip.data if isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)) else None
    if l4 is not None and len(bytes(ip)) < ip.len:  # snapped frame: no full L4 sum possible
        l4 = None
    if l4 is not None and isinstance(l4, dpkt.udp.UDP) and l4.sum == 0:
        l4 = None
    stored_l4 = l4.sum if l4 is not None else None
    fresh = dpkt.ip.IP(bytes(ip))
    fresh.sum = 0
    if l4 is not None:
        fresh.data.sum = 0
    again = dpkt.ip.IP(bytes(fresh))
    return stored_ip, again.sum, stored_l4, (again.data.sum if l4 is not None else None)


def _checksums_valid(frame: bytes) -> bool:
    r = _recomputed(frame)
    return r is None or (r[0] == r[1] and r[2] == r[3])


def _residuals(frame: bytes) -> tuple[int, int | None]:
    """Folded sums over the IPv4 header and over pseudo-header + TCP/UDP segment."""
    ip = dpkt.ethernet.Ethernet(frame).data
    assert isinstance(ip, dpkt.ip.IP)
    raw = bytes(ip)
    hl = ip.hl * 4
    l4 = None
    if ip.p in (6, 17) and len(raw) >= ip.len:
        seg = raw[hl : ip.len]
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, ip.p, len(seg))
        l4 = ones_sum(pseudo + seg)
    return ones_sum(raw[:hl]), l4


def _addresses(frame: bytes) -> set[bytes]:
    """Every MAC and IPv4 address in Ethernet, ARP and IPv4 headers."""
    eth = dpkt.ethernet.Ethernet(frame)
    out = {eth.src, eth.dst}
    if isinstance(eth.data, dpkt.arp.ARP):
        out |= {eth.data.sha, eth.data.tha, eth.data.spa, eth.data.tpa}
    elif isinstance(eth.data, dpkt.ip.IP):
        out |= {eth.data.src, eth.data.dst}
    return out


def _read_labels(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _tiny_conn_log(path: Path) -> list[tuple[float, float, str, int, str, int, str, str]]:
    """Independent parser of an IoT-23 labeled conn log: (ts, dur, orig, oport, resp, rport, proto, label)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split("\t")
        last = f[-1].split("   ")
        dur = 0.0 if f[8] == "-" else float(f[8])
        rows.append((float(f[0]), dur, f[2], int(f[3]), f[4], int(f[5]), f[6], last[1].lower()))
    return rows


def _independent_malicious(attack_frames: list[tuple[float, bytes]], log: Path) -> int:
    flows = _tiny_conn_log(log)
    by_key: dict[tuple[str, frozenset[tuple[str, int]]], list[tuple[float, float, str]]] = {}
    for ts, dur, a, ap, b, bp, proto, label in flows:
        if proto in ("tcp", "udp"):
            by_key.setdefault((proto, frozenset({(a, ap), (b, bp)})), []).append((ts, dur, label))
    n = 0
    for ts, frame in attack_frames:
        ip = dpkt.ethernet.Ethernet(frame).data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            continue
        proto = "tcp" if isinstance(ip.data, dpkt.tcp.TCP) else "udp"
        key = (
            proto,
            frozenset({(socket.inet_ntoa(ip.src), ip.data.sport), (socket.inet_ntoa(ip.dst), ip.data.dport)}),
        )
        best = None
        for t0, dur, label in by_key.get(key, []):
            dist = max(t0 - ts, ts - (t0 + dur), 0.0)
            if dist <= 1.0 and (best is None or (dist, label != "malicious") < best):
                best = (dist, label != "malicious")
        n += best is not None and not best[1]
    return n


# ---------------------------------------------------------------------------------------------
# checksum arithmetic
# ---------------------------------------------------------------------------------------------


def test_incremental_update_matches_full_recomputation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        data = bytearray(rng.integers(0, 256, size=40, dtype=np.uint8).tobytes())
        data[10:12] = b"\x00\x00"
        data[10:12] = internet_checksum(bytes(data)).to_bytes(2, "big")
        new = bytearray(data)
        new[12:20] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
        old_w = struct.unpack("!4H", bytes(data[12:20]))
        new_w = struct.unpack("!4H", bytes(new[12:20]))
        hc = int.from_bytes(data[10:12], "big")
        upd = int(incremental_update(np.array([hc]), np.array([old_w]), np.array([new_w]))[0])
        new[10:12] = b"\x00\x00"
        assert upd == internet_checksum(bytes(new))


def test_ones_sum_agrees_with_dpkt() -> None:
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 3, 20, 61, 1500):
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert internet_checksum(data) == dpkt.in_cksum(data)
    assert internet_checksum(b"\xff\xff\x00\x00") == dpkt.in_cksum(b"\xff\xff\x00\x00") == 0


# ---------------------------------------------------------------------------------------------
# fast test on two tiny generated captures
# ---------------------------------------------------------------------------------------------

GW_MAC_B = bytes.fromhex("a040a0000001")  # benign gateway (NETGEAR OUI)
VICTIM_MAC = bytes.fromhex("001788000002")
GW_MAC_A = bytes.fromhex("788a20000003")  # malware capture's gateway
ATT_MAC = bytes.fromhex("b827eb000004")
BROADCAST = b"\xff" * 6


def _ip(a: str) -> bytes:
    return socket.inet_aton(a)


def _tcp(
    smac: bytes, dmac: bytes, src: str, dst: str, sp: int, dp: int, flags: int, data: bytes = b""
) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sp, dport=dp, seq=1000, ack=0, flags=flags, data=data)
    ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=6, ttl=64, data=tcp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=smac, dst=dmac, type=0x0800, data=ip))


def _udp(smac: bytes, dmac: bytes, src: str, dst: str, sp: int, dp: int, data: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sp, dport=dp, data=data)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=17, ttl=64, data=udp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=smac, dst=dmac, type=0x0800, data=ip))


def _arp(smac: bytes, dmac: bytes, op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    arp = dpkt.arp.ARP(op=op, sha=sha, spa=_ip(spa), tha=tha, tpa=_ip(tpa))
    return bytes(dpkt.ethernet.Ethernet(src=smac, dst=dmac, type=0x0806, data=arp))


def _write(path: Path, pkts: list[tuple[float, bytes]]) -> None:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535)
        for ts, buf in pkts:
            w.writepkt(buf, ts)


def _tiny_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    benign, attack, log = tmp_path / "b.pcap", tmp_path / "a.pcap", tmp_path / "conn.log.labeled"
    bp: list[tuple[float, bytes]] = []
    for k in range(100):  # victim polls a cloud server and asks DNS, 100 s long
        t = 1000.0 + k
        bp.append((t, _udp(VICTIM_MAC, GW_MAC_B, "10.0.0.5", "10.0.0.1", 5353 + k, 53, b"q" * 30)))
        bp.append(
            (t + 0.1, _tcp(VICTIM_MAC, GW_MAC_B, "10.0.0.5", "52.1.2.3", 40000 + k, 443, 0x18, b"x" * 50))
        )
        bp.append(
            (t + 0.2, _tcp(GW_MAC_B, VICTIM_MAC, "52.1.2.3", "10.0.0.5", 443, 40000 + k, 0x18, b"y" * 80))
        )
    _write(benign, bp)
    ap: list[tuple[float, bytes]] = []
    t = 5000.0
    ap.append((t, _arp(GW_MAC_A, BROADCAST, 1, GW_MAC_A, "192.168.1.1", b"\0" * 6, "192.168.1.9")))
    ap.append((t + 0.01, _arp(ATT_MAC, GW_MAC_A, 2, ATT_MAC, "192.168.1.9", GW_MAC_A, "192.168.1.1")))
    for k in range(30):  # benign DNS, then C&C (malicious), then an unlabeled scan
        s = t + 1 + k
        ap.append((s, _udp(ATT_MAC, GW_MAC_A, "192.168.1.9", "192.168.1.1", 30000 + k, 53, b"d" * 20)))
        ap.append(
            (s + 0.2, _tcp(ATT_MAC, GW_MAC_A, "192.168.1.9", "185.244.25.235", 50000 + k, 6667, 0x18, b"N"))
        )
        ap.append(
            (s + 0.3, _tcp(GW_MAC_A, ATT_MAC, "185.244.25.235", "192.168.1.9", 6667, 50000 + k, 0x18, b"P"))
        )
    # another host of the malware LAN: not the infected host, must not be replayed
    ap.append((t + 2.5, _tcp(bytes.fromhex("b827eb0000ff"), GW_MAC_A, "192.168.1.77", "8.8.8.8", 1, 2, 0x02)))
    ap.sort()
    _write(attack, ap)
    head = (
        "#separator \\x09\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\t"
        "duration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\t"
        "orig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents   label   detailed-label\n"
    )
    rows = []
    for k in range(30):
        s = t + 1 + k
        dns = [f"{s:.6f}", f"C{k}", "192.168.1.9", str(30000 + k), "192.168.1.1", "53", "udp", "dns"]
        dns += ["0.000001", "20", "0", "S0", "-", "-", "0", "D", "1", "48", "0", "0", "-   Benign   -"]
        cnc = [f"{s + 0.2:.6f}", f"D{k}", "192.168.1.9", str(50000 + k), "185.244.25.235", "6667", "tcp"]
        cnc += ["-", "0.1", "1", "1", "OTH", "-", "-", "0", "Dd", "1", "41", "1", "41", "-   Malicious   C&C"]
        rows += ["\t".join(dns), "\t".join(cnc)]
    log.write_text(head + "\n".join(rows) + "\n")
    return benign, attack, log


def test_tiny_mix(tmp_path: Path) -> None:
    benign, attack, log = _tiny_inputs(tmp_path)
    out, labels = tmp_path / "mix.pcap", tmp_path / "labels.csv"
    s = mix_captures(
        benign,
        attack,
        attacker_ip="192.168.1.9",
        victim_ip="10.0.0.5",
        at_fraction=0.5,
        out=out,
        labels_out=labels,
        attack_log=log,
    )
    assert isinstance(s, MixSummary)
    bframes, aframes, oframes = _frames(benign), _frames(attack), _frames(out)
    assert s.benign_packets == len(bframes) == 300
    assert s.attack_packets_of_host == len(aframes) - 1
    # splice at 1000 + 0.5 * 99.2; attack spans 30.3 s; truncated at the benign end (1099.2)
    assert s.splice_ts == pytest.approx(1049.6)
    host = [f for f in aframes if f[1][6:12] != bytes.fromhex("b827eb0000ff")]
    assert s.attack_packets_replayed == len(host) == 2 + 90
    assert s.packets_total == len(oframes) == 300 + 92
    assert s.mac_map == {"b8:27:eb:00:00:04": "00:17:88:00:00:02", "78:8a:20:00:00:03": "a0:40:a0:00:00:01"}
    assert s.ip_map == {"192.168.1.9": "10.0.0.5", "192.168.1.1": "10.0.0.1"}
    rows = _read_labels(labels)
    assert len(rows) == len(oframes)
    assert [int(r["index"]) for r in rows] == list(range(len(oframes)))
    assert sum(int(r["label"]) for r in rows) == s.malicious_packets == 60  # C&C both directions
    assert all(r["source"] == "attack" for r in rows if r["label"] == "1")
    ts = [t for t, _ in oframes]
    assert ts == sorted(ts)
    assert [float(r["ts"]) for r in rows] == pytest.approx(ts, abs=1e-6)
    assert min(float(r["ts"]) for r in rows if r["source"] == "attack") == pytest.approx(s.splice_ts)
    # benign frames unchanged and in order; attack frames keep their lengths
    assert [f for (_, f), r in zip(oframes, rows, strict=True) if r["source"] == "benign"] == [
        f for _, f in bframes
    ]
    replayed = [f for (_, f), r in zip(oframes, rows, strict=True) if r["source"] == "attack"]
    assert [len(f) for f in replayed] == [len(f) for _, f in host]
    forbidden = {ATT_MAC, GW_MAC_A, _ip("192.168.1.9"), _ip("192.168.1.1")}
    for _, f in oframes:
        assert not (_addresses(f) & forbidden)
        r = _recomputed(f)
        if r is not None:
            assert r[0] == r[1] and r[2] == r[3]
    arp = dpkt.ethernet.Ethernet(replayed[1]).data
    assert isinstance(arp, dpkt.arp.ARP)
    assert (arp.sha, arp.spa, arp.tha, arp.tpa) == (VICTIM_MAC, _ip("10.0.0.5"), GW_MAC_B, _ip("10.0.0.1"))


def test_tiny_keep_all_and_gateway(tmp_path: Path) -> None:
    benign, attack, _log = _tiny_inputs(tmp_path)
    gw_mac, gw_ip = detect_gateway(read_capture(benign))
    assert gw_mac == int.from_bytes(GW_MAC_B, "big")
    assert gw_ip == int.from_bytes(_ip("10.0.0.1"), "big")
    s = mix_captures(
        benign,
        attack,
        attacker_ip="192.168.1.9",
        victim_ip="10.0.0.5",
        at_fraction=0.9,
        out=tmp_path / "o.pcap",
        labels_out=tmp_path / "l.csv",
        truncate=False,
    )
    assert s.attack_packets_replayed == 92 and s.malicious_packets == 0
    assert _frames(tmp_path / "o.pcap")[-1][0] > s.end_ts


def test_bad_inputs(tmp_path: Path) -> None:
    from iotsentry.errors import InputError

    benign, attack, _log = _tiny_inputs(tmp_path)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a pcap at all, sorry" * 4)
    kw = {"out": tmp_path / "o.pcap", "labels_out": tmp_path / "l.csv", "at_fraction": 0.5}
    with pytest.raises(InputError, match=r"junk\.pcap"):
        mix_captures(junk, attack, attacker_ip="192.168.1.9", victim_ip="10.0.0.5", **kw)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"victim 10\.0\.0\.99"):
        mix_captures(benign, attack, attacker_ip="192.168.1.9", victim_ip="10.0.0.99", **kw)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="attacker"):
        mix_captures(benign, attack, attacker_ip="192.168.1.200", victim_ip="10.0.0.5", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# D1 / D2 on the real IoT-23 captures
# ---------------------------------------------------------------------------------------------

RECIPES = {
    "D1": dict(
        benign=("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap"),
        attack=("iot23", "pcap", "CTU-IoT-Malware-Capture-42-1", "2019-01-10-14-34-38-192.168.1.197.pcap"),
        log=("iot23", "zeek", "CTU-IoT-Malware-Capture-42-1", "conn.log.labeled"),
        attacker="192.168.1.197",
        victim="192.168.100.118",
        at=0.8,
        attacker_mac="b827eb9a7da9",
        forbidden_ips=("192.168.1.197", "192.168.1.1"),
    ),
    "D2": dict(
        benign=(
            "iot23",
            "pcap",
            "CTU-Honeypot-Capture-7-1",
            "Somfy-01",
            "2019-07-03-15-15-47-first_start_somfy_gateway.pcap",
        ),
        attack=(
            "iot23",
            "pcap",
            "CTU-IoT-Malware-Capture-34-1",
            "2018-12-21-15-50-14-192.168.1.195.irc.pcap",
        ),
        log=("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled"),
        attacker="192.168.1.195",
        victim="192.168.1.158",
        at=0.5,
        attacker_mac="b827eb5891d2",
        forbidden_ips=("192.168.1.195",),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_real_recipe(name: str, tmp_path: Path) -> None:
    r = RECIPES[name]
    benign, attack, log = data_path(*r["benign"]), data_path(*r["attack"]), data_path(*r["log"])  # type: ignore[misc]
    out, labels = tmp_path / "mix.pcap", tmp_path / "labels.csv"
    s = mix_captures(
        benign,
        attack,
        attacker_ip=r["attacker"],
        victim_ip=r["victim"],
        at_fraction=r["at"],  # type: ignore[arg-type]
        out=out,
        labels_out=labels,
        attack_log=log,
    )
    bframes, oframes = _frames(benign), _frames(out)
    aframes = _frames(attack)
    if name == "D1":
        aframes = aframes[:-1]  # the last record of 42-1 is cut short
        assert s.truncated_records == 1
    rows = _read_labels(labels)
    assert len(rows) == len(oframes) == s.packets_total == len(bframes) + s.attack_packets_replayed
    ts = [t for t, _ in oframes]
    assert ts == sorted(ts)
    assert ts[-1] == pytest.approx(bframes[-1][0])
    # replayed frames are the first attack frames (all belong to the infected host here)
    src = [row["source"] for row in rows]
    replayed = [f for (_, f), k in zip(oframes, src, strict=True) if k == "attack"]
    originals = aframes[: len(replayed)]
    assert len(replayed) == s.attack_packets_replayed > 0
    assert [f for (_, f), k in zip(oframes, src, strict=True) if k == "benign"] == [f for _, f in bframes]
    assert [len(f) for f in replayed] == [len(f) for _, f in originals]
    first_attack = next(t for (t, _), k in zip(oframes, src, strict=True) if k == "attack")
    assert first_attack == pytest.approx(bframes[0][0] + r["at"] * (bframes[-1][0] - bframes[0][0]), abs=1e-5)
    # checksums: valid in output unless the source frame was already wrong (offload/coalesced
    # frames in the original captures), in which case the error is carried over unchanged
    bad_in, bad_out = 0, 0
    for new, (_, old) in zip(replayed, originals, strict=True):
        ro = _recomputed(old)
        rn = _recomputed(new)
        assert (ro is None) == (rn is None)
        if rn is None:
            continue
        if _checksums_valid(old):
            assert rn[0] == rn[1] and rn[2] == rn[3]  # incremental == full recomputation
        else:
            bad_in += 1
            bad_out += not _checksums_valid(new)
            assert _residuals(new) == _residuals(old)
    assert bad_out == bad_in
    invalid_benign = sum(not _checksums_valid(f) for _, f in bframes)
    invalid_out = sum(not _checksums_valid(f) for _, f in oframes)
    assert invalid_out == invalid_benign + bad_in
    # no trace of the malware LAN's addresses
    forbidden = {bytes.fromhex(r["attacker_mac"])} | {socket.inet_aton(a) for a in r["forbidden_ips"]}  # type: ignore[attr-defined]
    for _, f in oframes:
        assert not (_addresses(f) & forbidden)
    # labels agree with an independent count, and only attack frames are malicious
    n_mal = sum(int(row["label"]) for row in rows)
    assert n_mal == s.malicious_packets == _independent_malicious(originals, log)
    assert all(row["source"] == "attack" for row in rows if row["label"] == "1")
    if name == "D1":
        assert 550 <= n_mal <= 700  # BENCHMARKS: "about 600 malicious packets replayed"
    else:
        assert n_mal == len(replayed)  # the 34-1 .irc.pcap holds only C&C flows
