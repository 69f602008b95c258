"""Tests of problem-space evasion (transformations, function checks, evaluation).

The small captures are built here with dpkt: a TCP connection with data both ways (one segment
lost and retransmitted, a SACK), a DNS exchange, a SYN scan, the device's own traffic and a
bystander's. Verification goes through dpkt parsing and checksum recomputation, independent of
the code under test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.adversarial.problem_checks import cc_exchange_intact, scan_targets_intact, valid_capture
from iotsentry.adversarial.problem_frames import Packets, header_fields
from iotsentry.adversarial.problem_space import (
    AttackerSelector,
    ChaffParams,
    Cost,
    DeviceBudget,
    JitterParams,
    MimicParams,
    PadParams,
    RateParams,
    add_chaff,
    compose,
    jitter_delay,
    mimic_baseline,
    pad_payloads,
    rate_limit,
)
from iotsentry.evaluation.mix import read_capture

T0 = 1_700_000_000.0
MAC = {
    "gw": b"\x02\x00\x00\x00\x00\x01",
    "a": b"\x02\x00\x00\x00\x00\x05",
    "b": b"\x02\x00\x00\x00\x00\x07",
    "t": b"\x02\x00\x00\x00\x00\x09",
}
IP = {
    "gw": "10.0.0.1",
    "a": "10.0.0.5",
    "b": "10.0.0.7",
    "t": "10.0.0.9",
    "s": "203.0.113.10",
    "w": "198.51.100.20",
}
SERVER_MAC_OF = {"s": "gw", "w": "gw", "gw": "gw", "t": "t", "a": "a", "b": "b"}


def _ipb(name: str) -> bytes:
    return bytes(int(x) for x in IP[name].split("."))


def _frame(src: str, dst: str, l4: dpkt.Packet, ttl: int = 64) -> bytes:
    if isinstance(l4, dpkt.udp.UDP):
        l4.ulen = 8 + len(l4.data)
        p = 17
    else:
        p = 6
    ip = dpkt.ip.IP(src=_ipb(src), dst=_ipb(dst), p=p, ttl=ttl, data=l4)
    ip.len = 20 + len(bytes(l4))
    eth = dpkt.ethernet.Ethernet(
        src=MAC[SERVER_MAC_OF[src]] if src != "a" else MAC["a"],
        dst=MAC[SERVER_MAC_OF[dst]] if dst != "a" else MAC["a"],
        type=dpkt.ethernet.ETH_TYPE_IP,
        data=ip,
    )
    return bytes(eth)


def _tcp(
    src: str, dst: str, sp: int, dp: int, seq: int, ack: int, flags: int, data: bytes = b"", opts: bytes = b""
) -> bytes:
    t = dpkt.tcp.TCP(sport=sp, dport=dp, seq=seq, ack=ack, flags=flags, win=65535, opts=opts, data=data)
    t.off = (20 + len(opts)) // 4
    return _frame(src, dst, t)


def _udp(src: str, dst: str, sp: int, dp: int, data: bytes) -> bytes:
    return _frame(src, dst, dpkt.udp.UDP(sport=sp, dport=dp, data=data))


def _dns(name: str, qid: int, answer: str | None = None) -> bytes:
    d = dpkt.dns.DNS(id=qid, rd=1)
    d.qd = [dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)]
    if answer is not None:
        d.qr, d.ra = dpkt.dns.DNS_R, 1
        d.an = [
            dpkt.dns.DNS.RR(
                name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=300, rlen=4,
                rdata=bytes(int(x) for x in answer.split(".")),
            )
        ]  # fmt: skip
    return bytes(d)


S, A, F, P, R = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_RST


def _build() -> tuple[list[tuple[float, bytes]], list[int], list[bool]]:
    """Frames (ts, bytes), labels, attack flags of the test capture (time order)."""
    rows: list[tuple[float, bytes, int, bool]] = []

    def add(t: float, frame: bytes, label: int = 0, attack: bool = False) -> None:
        rows.append((T0 + t, frame, label, attack))

    # bystander: DNS and a TCP session of another host
    add(0.5, _udp("b", "gw", 5353, 53, _dns("cloud.example", 1)))
    add(0.52, _udp("gw", "b", 53, 5353, _dns("cloud.example", 1, "198.51.100.20")))
    add(1.0, _tcp("b", "w", 41000, 443, 1000, 0, S))
    add(1.05, _tcp("w", "b", 443, 41000, 5000, 1001, S | A))
    add(1.06, _tcp("b", "w", 41000, 443, 1001, 5001, A))
    add(1.10, _tcp("b", "w", 41000, 443, 1001, 5001, P | A, b"\x17\x03\x03\x00\x05hello"))
    add(1.15, _tcp("w", "b", 443, 41000, 5001, 1011, A))
    # the device's own (firmware) traffic: DNS and NTP, not the attacker's
    add(2.0, _udp("a", "gw", 40001, 53, _dns("time.example", 7)))
    add(2.02, _udp("gw", "a", 53, 40001, _dns("time.example", 7, "198.51.100.20")))
    add(2.1, _udp("a", "w", 40002, 123, b"\x23" + bytes(47)))
    add(2.15, _udp("w", "a", 123, 40002, b"\x24" + bytes(47)))
    # attacker: resolve the C&C name (malicious), then a TCP session with data both ways
    add(10.0, _udp("a", "gw", 40100, 53, _dns("cc.example", 99)), 1, True)
    add(10.02, _udp("gw", "a", 53, 40100, _dns("cc.example", 99, IP["s"])), 1, True)
    c, s = 7000, 90000
    k = ("a", "s", 45000, 8080)
    r = ("s", "a", 8080, 45000)
    seg1, seg2, seg3 = b"A" * 100, b"B" * 50, b"C" * 30
    add(10.10, _tcp(*k, c, 0, S), 1, True)
    add(10.15, _tcp(*r, s, c + 1, S | A), 1, True)
    add(10.151, _tcp(*k, c + 1, s + 1, A), 1, True)
    add(10.20, _tcp(*k, c + 1, s + 1, P | A, seg1), 1, True)
    add(10.21, _tcp(*k, c + 101, s + 1, P | A, seg2), 1, True)  # lost on the way
    add(10.22, _tcp(*k, c + 151, s + 1, P | A, seg3), 1, True)
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", c + 151, c + 181)
    add(10.27, _tcp(*r, s + 1, c + 101, A, opts=sack), 1, True)
    add(10.50, _tcp(*k, c + 101, s + 1, P | A, seg2), 1, True)  # retransmission
    add(10.55, _tcp(*r, s + 1, c + 181, A), 1, True)
    add(10.60, _tcp(*r, s + 1, c + 181, P | A, b"D" * 200), 1, True)
    add(10.61, _tcp(*k, c + 181, s + 201, A), 1, True)
    add(11.00, _tcp(*k, c + 181, s + 201, F | A), 1, True)
    add(11.05, _tcp(*r, s + 201, c + 182, F | A), 1, True)
    add(11.06, _tcp(*k, c + 182, s + 202, A), 1, True)
    # SYN scan of the neighbour: RST for closed ports, SYN-ACK on 22 then the scanner's RST
    for j, port in enumerate(range(20, 30)):
        t = 12.0 + 0.01 * j
        add(t, _tcp("a", "t", 50000, port, 1234, 0, S), 1, True)
        if port == 22:
            add(t + 0.001, _tcp("t", "a", port, 50000, 777, 1235, S | A), 1, True)
            add(t + 0.002, _tcp("a", "t", 50000, port, 1235, 0, R), 1, True)
        else:
            add(t + 0.001, _tcp("t", "a", port, 50000, 0, 1235, R | A), 1, True)
    # later benign traffic of the bystander, after the attack
    add(20.0, _udp("b", "gw", 5354, 53, _dns("cloud.example", 2)))
    add(20.02, _udp("gw", "b", 53, 5354, _dns("cloud.example", 2, "198.51.100.20")))
    rows.sort(key=lambda x: x[0])
    return [(t, b) for t, b, _, _ in rows], [lab for *_, lab, _ in rows], [att for *_, att in rows]


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, Packets]:
    frames, labels, attack = _build()
    path = tmp_path / "small.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for t, b in frames:
            w.writepkt(b, ts=t)
    return path, Packets.read(path, labels, attack)


ATTACKER = AttackerSelector(IP["a"], servers=(IP["s"],), servers_controlled=True)


# ---------------------------------------------------------------------------------------------
# independent verification helpers (dpkt)
# ---------------------------------------------------------------------------------------------


def _dpkt_frames(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as fh:
        return list(dpkt.pcap.Reader(fh))


def _dpkt_checksums_ok(frame: bytes) -> bool:
    ip = dpkt.ethernet.Ethernet(frame).data
    if not isinstance(ip, dpkt.ip.IP):
        return True
    fresh = dpkt.ip.IP(bytes(ip))
    stored = (fresh.sum, fresh.data.sum)
    fresh.sum = 0
    fresh.data.sum = 0
    again = dpkt.ip.IP(bytes(fresh))
    return stored == (again.sum, again.data.sum)


def _write_and_verify(pk: Packets, path: Path) -> list[tuple[float, bytes]]:
    pk.write(path)
    check = valid_capture(path)
    assert check, check.problems
    frames = _dpkt_frames(path)
    assert all(_dpkt_checksums_ok(b) for _, b in frames)
    ts = [t for t, _ in frames]
    assert ts == sorted(ts)
    return frames


def _assert_common(orig: Packets, new: Packets, cost: Cost, tmp_path: Path, name: str) -> None:
    """Function checks, validity, label alignment, untouched bystanders."""
    _write_and_verify(new, tmp_path / f"{name}.pcap")
    assert cc_exchange_intact(orig, new, IP["a"], IP["s"]), cc_exchange_intact(
        orig, new, IP["a"], IP["s"]
    ).problems
    assert cc_exchange_intact(orig, new, IP["a"], IP["gw"])  # the DNS request / response pair
    assert scan_targets_intact(orig, new, IP["a"])
    assert np.all(np.diff(new.ts_us) >= 0)
    kept = new.origin >= 0
    assert np.array_equal(new.label[kept], orig.label[new.origin[kept]])
    assert np.array_equal(new.attack[kept], orig.attack[new.origin[kept]])
    assert np.all(new.label[~kept] == 1) and np.all(new.attack[~kept])
    assert sorted(new.origin[kept].tolist()) == list(range(len(orig)))  # nothing dropped
    # frames that are not the attacker's keep their bytes and time
    for i in np.flatnonzero(kept & ~new.attack).tolist():
        j = int(new.origin[i])
        assert new.cap.frame(i) == orig.cap.frame(j)
        assert new.ts_us[i] == orig.ts_us[j]
    assert cost.packets_added == len(new) - len(orig)


# ---------------------------------------------------------------------------------------------
# the test capture itself
# ---------------------------------------------------------------------------------------------


def test_generated_capture_is_valid(capture: tuple[Path, Packets]) -> None:
    path, pk = capture
    assert valid_capture(path)
    assert cc_exchange_intact(pk, pk, IP["a"], IP["s"]).checked == {"tcp_connections": 1, "udp_flows": 0}
    assert scan_targets_intact(pk, pk, IP["a"]).checked["probes"] == 10 + 3  # SYNs, DNS, device's own UDP


# ---------------------------------------------------------------------------------------------
# 1. padding
# ---------------------------------------------------------------------------------------------


def test_pad_fixed_keeps_streams_consistent(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    new, cost = pad_payloads(pk, ATTACKER, PadParams(bytes=16, mode="fixed"), seed=1)
    _assert_common(pk, new, cost, tmp_path, "pad")
    frames = _dpkt_frames(tmp_path / "pad.pcap")
    # data segments both ways (server controlled): 100, 50, 30, 50 (retransmission) and 200
    segs = {}
    for _, b in frames:
        ip = dpkt.ethernet.Ethernet(b).data
        if isinstance(ip.data, dpkt.tcp.TCP) and 8080 in (ip.data.sport, ip.data.dport) and ip.data.data:
            segs.setdefault((ip.data.sport, ip.data.seq), []).append(bytes(ip.data.data))
    lengths = sorted(len(v[0]) for v in segs.values())
    assert lengths == [30 + 16, 50 + 16, 100 + 16, 200 + 16]
    retrans = [v for v in segs.values() if len(v) == 2]
    assert len(retrans) == 1 and retrans[0][0] == retrans[0][1]  # same padding both times
    assert cost.bytes_added == 5 * 16  # five padded segments, DNS to the gateway not (not a server)
    assert cost.delay_max_s == 0.0 and cost.slowdown_factor == pytest.approx(1.0)
    # every ACK of the server points at a segment boundary of the padded client stream
    c_seq = {}
    for _, b in frames:
        tcp = dpkt.ethernet.Ethernet(b).data.data
        if isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == 45000:
            c_seq[tcp.seq + len(tcp.data) + (1 if tcp.flags & (S | F) else 0)] = True
    for _, b in frames:
        tcp = dpkt.ethernet.Ethernet(b).data.data
        if isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == 8080 and tcp.flags & A:
            assert tcp.ack in c_seq
            for kind, val in dpkt.tcp.parse_opts(tcp.opts):
                if kind == dpkt.tcp.TCP_OPT_SACK:
                    left, right = struct.unpack("!II", val)
                    assert right - left == 30 + 16 and right in c_seq


def test_pad_udp_any_and_syn_probes(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    p = PadParams(bytes=24, mode="fixed", tcp="none", udp="any", pad_syn=True)
    new, cost = pad_payloads(pk, ATTACKER, p, seed=2)
    _assert_common(pk, new, cost, tmp_path, "pad_udp")
    f = header_fields(new.cap)
    syn = (f.proto == 6) & (f.flags & (S | A) == S) & (f.src == int.from_bytes(_ipb("a"), "big"))
    assert np.all(f.pay_len[syn & new.attack] == 24)
    # 11 bare SYNs (scan + C&C) and the DNS query; the C&C server's DNS answer is not the attacker's
    assert cost.bytes_added == 12 * 24


def test_pad_uniform_and_round(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    for k, p in enumerate([PadParams(bytes=200, mode="uniform"), PadParams(bytes=64, mode="round")]):
        new, cost = pad_payloads(pk, ATTACKER, p, seed=3)
        _assert_common(pk, new, cost, tmp_path, f"pad{k}")
        before = header_fields(pk.cap).pay_len.sum()
        assert cost.bytes_added == header_fields(new.cap).pay_len.sum() - before
    f = header_fields(new.cap)
    data = (f.proto == 6) & (f.pay_len > 0) & ((f.sport == 8080) | (f.dport == 8080))
    assert np.all(f.pay_len[data] % 64 == 0)


def test_pad_reused_port_pair_and_sequence_wrap(tmp_path: Path) -> None:
    """Two connections on one 5-tuple (the second one's sequence numbers wrap around 2**32)
    are padded independently and stay consistent."""
    frames: list[tuple[float, bytes]] = []
    k = ("a", "s", 45001, 8080)
    r = ("s", "a", 8080, 45001)
    for n, (c, s) in enumerate([(100, 5000), (0xFFFFFFF0, 7000)]):
        t = T0 + 10 * n
        data = bytes([65 + n]) * 40
        frames += [
            (t, _tcp(*k, c, 0, S)),
            (t + 0.01, _tcp(*r, s, c + 1, S | A)),
            (t + 0.02, _tcp(*k, c + 1, s + 1, A)),
            (t + 0.03, _tcp(*k, (c + 1) % 2**32, s + 1, P | A, data)),
            (t + 0.04, _tcp(*r, s + 1, (c + 41) % 2**32, A)),
            (t + 0.05, _tcp(*k, (c + 41) % 2**32, s + 1, F | A)),
            (t + 0.06, _tcp(*r, s + 1, (c + 42) % 2**32, F | A)),
            (t + 0.07, _tcp(*k, (c + 42) % 2**32, s + 2, A)),
        ]
    path = tmp_path / "reuse.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for t, b in frames:
            w.writepkt(b, ts=t)
    pk = Packets.read(path, np.ones(len(frames), np.int8))
    new, cost = pad_payloads(pk, ATTACKER, PadParams(bytes=8, mode="fixed"), seed=0)
    assert cost.bytes_added == 2 * 8
    check = cc_exchange_intact(pk, new, IP["a"], IP["s"])
    assert check and check.checked["tcp_connections"] == 2
    out = _write_and_verify(new, tmp_path / "reuse_pad.pcap")
    acks = [dpkt.ethernet.Ethernet(b).data.data.ack for _, b in out]
    assert acks[4] == (100 + 41 + 8) % 2**32 and acks[12] == (0xFFFFFFF0 + 41 + 8) % 2**32
    assert acks[6] == (100 + 42 + 8) % 2**32 and acks[14] == (0xFFFFFFF0 + 42 + 8) % 2**32


# ---------------------------------------------------------------------------------------------
# 2. jitter, 4. rate limit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["host", "flow"])
def test_jitter_keeps_order_and_causality(capture: tuple[Path, Packets], tmp_path: Path, scope: str) -> None:
    _, pk = capture
    new, cost = jitter_delay(pk, ATTACKER, JitterParams(max_delay_s=2.0, scope=scope), seed=4)  # type: ignore[arg-type]
    _assert_common(pk, new, cost, tmp_path, f"jit_{scope}")
    moved = new.ts_us - pk.ts_us[new.origin]
    assert moved.min() >= 0 and moved.max() <= 2_000_000
    assert 0 < cost.delay_max_s <= 2.0 and cost.delay_total_s > 0
    assert cost.bytes_added == 0 and cost.packets_added == 0


def test_rate_limit_paces_the_scan(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    new, cost = rate_limit(pk, ATTACKER, RateParams(max_pps=2.0), seed=0)
    _assert_common(pk, new, cost, tmp_path, "rate")
    f = header_fields(new.cap)
    sent = np.flatnonzero(new.attack & (f.src == int.from_bytes(_ipb("a"), "big")))
    gaps = np.diff(new.ts_us[sent])
    assert gaps.min() >= 500_000  # at most 2 packets per second
    assert cost.slowdown_factor > 4
    new2, cost2 = rate_limit(pk, ATTACKER, RateParams(slowdown=10.0))
    _assert_common(pk, new2, cost2, tmp_path, "slow")
    assert cost2.slowdown_factor == pytest.approx(10.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# 3. chaff, 5. mimicry, composition
# ---------------------------------------------------------------------------------------------


def test_chaff_adds_well_formed_flows(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    new, cost = add_chaff(pk, ATTACKER, ChaffParams(flows_per_min=30.0), seed=5)
    _assert_common(pk, new, cost, tmp_path, "chaff")
    added = new.origin < 0
    assert cost.packets_added == added.sum() > 0
    f = header_fields(new.cap)
    assert cost.bytes_added == int(f.ip_len[added].sum())
    a = int.from_bytes(_ipb("a"), "big")
    assert np.all((f.src[added] == a) | (f.dst[added] == a))
    # chaff goes to the device's usual services (DNS at the gateway, NTP), each query answered
    for i in np.flatnonzero(added & (f.src == a)).tolist():
        assert (int(f.dport[i]), int(f.proto[i])) in {(53, 17), (123, 17)}
        if f.dport[i] == 53:
            query = dpkt.dns.DNS(new.cap.frame(i)[42:])
            assert query.qr == dpkt.dns.DNS_Q and query.qd[0].name == "time.example"
    assert (added & (f.dst == a)).sum() == (added & (f.src == a)).sum()
    # chaff starts no earlier than the attack
    assert new.ts_us[added].min() >= pk.ts_us[pk.label == 1].min()


def test_chaff_tcp_sessions(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    p = ChaffParams(flows_per_min=10.0, targets=((IP["w"], 6, 443),))
    new, cost = add_chaff(pk, ATTACKER, p, seed=6)
    _assert_common(pk, new, cost, tmp_path, "chaff_tcp")
    assert cc_exchange_intact(new.take(np.flatnonzero(new.origin < 0)), new, IP["a"], IP["w"])
    assert cost.packets_added % 9 == 0  # handshake, a TLS record each way, ACK, both FINs, ACK


def test_mimic_keeps_windows_under_budget(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    budget = DeviceBudget(packets=8, bytes=4000, initiations=2, new_peers=0, new_services=0)
    new, cost = mimic_baseline(pk, ATTACKER, MimicParams(budget, fraction=1.0), seed=7)
    _assert_common(pk, new, cost, tmp_path, "mimic")
    f = header_fields(new.cap)
    a = int.from_bytes(_ipb("a"), "big")
    device = (f.src == a) | (f.dst == a)
    win, counts = np.unique(new.ts_us[device] // 60_000_000, return_counts=True)
    # at most the budget, plus replies counted after their request was placed
    assert counts.max() <= 8 + 1
    assert len(win) >= len(pk) // 8 // 2
    assert cost.slowdown_factor > 10


def test_budget_from_learned_profile() -> None:
    from iotsentry.baseline.profile import DeviceProfile
    from iotsentry.features.windows import WINDOW_FEATURES

    col = {name: j for j, name in enumerate(WINDOW_FEATURES)}
    rows = []
    for pkts, new_peers in [(10, 3), (40, 0), (25, 1), (5, 0)]:
        x = np.zeros(len(WINDOW_FEATURES))
        x[col["packets"]], x[col["bytes"]], x[col["new_peers"]] = pkts, 100 * pkts, new_peers
        rows.append(x)
    prof = DeviceProfile("02:00:00:00:00:05", windows=rows)
    prof.peers.update({"198.51.100.20": 4, "10.0.0.1": 2})
    prof.services.update({"UDP/53": 2})
    b = DeviceBudget.from_profile(prof)
    assert (b.packets, b.bytes, b.new_peers) == (40, 4000, 1)  # new peers: settled second half only
    assert b.peers == ("198.51.100.20", "10.0.0.1") and b.services == ("UDP/53",)


def test_compose_and_costs(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    _, pk = capture
    steps = [PadParams(bytes=8, mode="fixed"), JitterParams(0.5), ChaffParams(flows_per_min=20.0)]
    new, cost = compose(pk, ATTACKER, steps, seed=8)
    _assert_common(pk, new, cost, tmp_path, "combo")
    assert cost.bytes_added >= 5 * 8
    assert cost.packets_added == int((new.origin < 0).sum())
    assert 0 < cost.delay_max_s <= 0.5 + 1e-6


# ---------------------------------------------------------------------------------------------
# the checks catch broken transformations
# ---------------------------------------------------------------------------------------------


def test_checks_catch_broken_function(capture: tuple[Path, Packets], tmp_path: Path) -> None:
    path, pk = capture
    f = header_fields(pk.cap)
    a, s = int.from_bytes(_ipb("a"), "big"), int.from_bytes(_ipb("s"), "big")
    # drop the SYN-ACK: handshake and packet sequence broken
    synack = np.flatnonzero((f.src == s) & (f.flags & (S | A) == S | A))[0]
    dropped = pk.take(np.delete(np.arange(len(pk)), synack))
    assert not cc_exchange_intact(pk, dropped, IP["a"], IP["s"])
    # drop a probe
    probe = np.flatnonzero((f.src == a) & (f.dport == 25))[0]
    assert not scan_targets_intact(pk, pk.take(np.delete(np.arange(len(pk)), probe)), IP["a"])
    # a reply earlier than its request
    ts = pk.ts_us.copy()
    reply = np.flatnonzero((f.src == int.from_bytes(_ipb("gw"), "big")) & (f.dst == a) & pk.attack)[0]
    ts[reply] -= 100_000
    early = Packets(type(pk.cap)(ts, pk.cap.buf, pk.cap.off), pk.label, pk.attack, pk.origin).time_sorted()[0]
    assert not cc_exchange_intact(pk, early, IP["a"], IP["gw"])
    # padding without fixing sequence numbers: the ACKs no longer match
    new, _ = pad_payloads(pk, ATTACKER, PadParams(bytes=16, mode="fixed"), seed=1)
    fn = header_fields(new.cap)
    acks = np.flatnonzero((fn.src == s) & (fn.flags & A != 0))
    broken = new.cap.buf.copy()
    for i in acks.tolist():  # put the original ack numbers back
        j = int(new.origin[i])
        broken[fn.l4_off[i] + 8 : fn.l4_off[i] + 12] = pk.cap.buf[f.l4_off[j] + 8 : f.l4_off[j] + 12]
    moved = int((fn.ack[acks] != f.ack[new.origin[acks]]).sum())
    assert moved == len(acks) - 1  # all but the SYN-ACK's
    bad = Packets(type(pk.cap)(new.ts_us, broken, new.cap.off), new.label, new.attack, new.origin)
    assert not cc_exchange_intact(pk, bad, IP["a"], IP["s"])
    # ... and their checksums are now wrong
    bad.write(tmp_path / "bad.pcap")
    check = valid_capture(tmp_path / "bad.pcap")
    assert not check and check.checked["bad_checksum"] == moved
    # changed application bytes
    data = np.flatnonzero((f.src == a) & (f.pay_len == 100))[0]
    buf = pk.cap.buf.copy()
    buf[f.pay_off[data]] ^= 0xFF
    changed = Packets(type(pk.cap)(pk.ts_us, buf, pk.cap.off), pk.label, pk.attack, pk.origin)
    assert not cc_exchange_intact(pk, changed, IP["a"], IP["s"])
    assert read_capture(path).ts_us.shape == pk.ts_us.shape


# ---------------------------------------------------------------------------------------------
# real data (slow): one Q1 recipe, one transformation, the real detection path
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_problem_space_on_q1_scan_recipe(tmp_path: Path) -> None:
    from iotsentry.adversarial.problem_eval import evaluate_recipe

    data = data_path("iot-sentinel")
    rows = evaluate_recipe("D3", data.parent, tmp_path, budgets={"rate_limit": [RateParams(slowdown=4.0)]})
    clean = next(r for r in rows if r["transform"] == "clean")
    adv = next(r for r in rows if r["transform"] == "rate_limit")
    assert clean["realisable"] and adv["realisable"]
    assert clean["clean_detection_rate"] > 0.9
    assert adv["slowdown"] == pytest.approx(4.0, rel=0.05)
    assert 0.0 <= adv["adversarial_detection_rate"] <= 1.0
    assert adv["space"] == "problem" and adv["model"] == "profile" and adv["attack"] == "D3"
