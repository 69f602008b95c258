"""Chaff for problem-space evasion: benign-looking flows added from the attacker host.

:func:`add_chaff` (a transformation, see :mod:`~iotsentry.adversarial.problem_space`) adds
complete, well-formed exchanges -- the host's request and the peer's answer, as a real peer
would send it -- with valid lengths and checksums: DNS queries to its resolver, NTP, short
TCP sessions (TLS records on TLS ports, e.g. HTTPS keep-alives). What the host usually does is
read from the capture itself (:func:`usual_targets`, :func:`dns_exchanges`): an infected
device can watch its own traffic, so chaff goes to the peers and services it already uses and
DNS chaff repeats the names it already resolves. Chaff frames are labelled malicious (they are
the attacker's) and have ``origin`` -1.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_core import (
    US,
    WINDOW_US,
    AttackerSelector,
    Cost,
    finish,
    ip_int,
    roles,
)
from iotsentry.adversarial.problem_frames import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    Fields,
    Packets,
    header_fields,
    ipv4_frame,
)
from iotsentry.evaluation.mix import Capture, detect_gateway, host_mac

__all__ = [
    "ChaffHost",
    "ChaffParams",
    "ChaffTarget",
    "add_chaff",
    "dns_exchanges",
    "dns_flow",
    "ntp_flow",
    "tcp_flow",
    "usual_client_targets",
    "usual_targets",
]

NTP_EPOCH_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (NTP era 0) to the Unix epoch."""

ChaffTarget = tuple[int, int, int]
"""(peer IPv4 as int, IP protocol, server port)."""

Frames = list[tuple[int, bytes]]
"""(timestamp in microseconds, frame) pairs."""


@dataclass(frozen=True)
class ChaffHost:
    """Link and IP identity of the two ends of a chaff flow."""

    mac: int
    ip: int
    ttl: int
    peer_mac: int
    peer_ip: int
    peer_ttl: int


def usual_targets(
    pk: Packets, f: Fields, own: npt.NDArray[np.bool_], host_ip: int
) -> list[tuple[ChaffTarget, int]]:
    """(peer, protocol, server port) the host contacts as a client in the frames ``own``, with
    the number of packets it sent there, most used first (TCP and UDP only)."""
    sel = own & (f.src == host_ip) & (f.tcp | f.udp) & (f.dport >= 0)
    # the server side is the lower port, as the device context attributes services
    client = sel & (f.dport <= f.sport)
    keys = Counter(
        zip(f.dst[client].tolist(), f.proto[client].tolist(), f.dport[client].tolist(), strict=True)
    )
    return [((int(a), int(p), int(s)), int(c)) for (a, p, s), c in keys.most_common()]


def dns_exchanges(
    pk: Packets, f: Fields, own: npt.NDArray[np.bool_], host_ip: int
) -> list[tuple[bytes, bytes]]:
    """(query, response) DNS payload pairs the host exchanged in the frames ``own``."""
    q = np.flatnonzero(own & f.udp & (f.src == host_ip) & (f.dport == 53))
    r = np.flatnonzero(own & f.udp & (f.dst == host_ip) & (f.sport == 53))
    answers: dict[tuple[int, int, int], bytes] = {}
    for i in r.tolist():
        pay = _payload(pk, f, i)
        if len(pay) >= 12:
            answers.setdefault((int(f.src[i]), int(f.dport[i]), int.from_bytes(pay[:2], "big")), pay)
    out: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for i in q.tolist():
        pay = _payload(pk, f, i)
        if len(pay) < 12:
            continue
        resp = answers.get((int(f.dst[i]), int(f.sport[i]), int.from_bytes(pay[:2], "big")))
        if resp is not None and pay[2:] not in seen:
            seen.add(pay[2:])
            out.append((pay, resp))
    return out


def _payload(pk: Packets, f: Fields, i: int) -> bytes:
    s = int(f.pay_off[i])
    return pk.cap.buf[s : min(s + int(f.pay_len[i]), int(pk.cap.off[i + 1]))].tobytes()


def _synth_dns(rng: np.random.Generator, answer_ip: int) -> tuple[bytes, bytes]:
    """A query for an A record of a generic time-service name and its one-answer response."""
    q = dpkt.dns.DNS(id=0, rd=1)
    q.qd = [dpkt.dns.DNS.Q(name="pool.ntp.org", type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)]
    r = dpkt.dns.DNS(id=0, qr=dpkt.dns.DNS_R, rd=1, ra=1)
    r.qd = q.qd
    r.an = [
        dpkt.dns.DNS.RR(
            name="pool.ntp.org",
            type=dpkt.dns.DNS_A,
            cls=dpkt.dns.DNS_IN,
            ttl=int(rng.integers(60, 3600)),
            rlen=4,
            rdata=int(answer_ip).to_bytes(4, "big"),
        )
    ]
    return bytes(q), bytes(r)


def dns_flow(
    h: ChaffHost,
    t0: int,
    sport: int,
    rng: np.random.Generator,
    rtt_us: int,
    exchanges: list[tuple[bytes, bytes]],
) -> Frames:
    """One DNS query and its response (a known exchange with a fresh id, else a synthetic one)."""
    if exchanges:
        query, resp = exchanges[int(rng.integers(len(exchanges)))]
    else:
        query, resp = _synth_dns(rng, h.peer_ip)
    txid = int(rng.integers(0, 1 << 16)).to_bytes(2, "big")
    query, resp = txid + query[2:], txid + resp[2:]
    return [
        (t0, _udp(h, sport, 53, query, rng, out=True)),
        (t0 + rtt_us, _udp(h, sport, 53, resp, rng, out=False)),
    ]


def _ntp_ts(us: int) -> bytes:
    sec, frac = divmod(us, 1_000_000)
    return struct.pack("!II", (sec + NTP_EPOCH_OFFSET) & 0xFFFFFFFF, (frac << 32) // 1_000_000)


def ntp_flow(h: ChaffHost, t0: int, sport: int, rng: np.random.Generator, rtt_us: int) -> Frames:
    """One NTPv4 client request (mode 3) and the server's answer (mode 4, stratum 2)."""
    xmt = _ntp_ts(t0)
    req = bytes([0x23]) + bytes(39) + xmt
    t1 = t0 + rtt_us // 2
    t2 = t1 + int(rng.integers(20, 200))
    resp = (
        bytes([0x24, 2, 6, 0xE9])
        + struct.pack("!II", int(rng.integers(0, 1 << 12)), int(rng.integers(0, 1 << 14)))
        + h.peer_ip.to_bytes(4, "big")
        + _ntp_ts(t0 - int(rng.integers(1, 600)) * 1_000_000)
        + xmt
        + _ntp_ts(t1)
        + _ntp_ts(t2)
    )
    return [
        (t0, _udp(h, sport, 123, req, rng, out=True)),
        (t0 + rtt_us, _udp(h, sport, 123, resp, rng, out=False)),
    ]


def _udp(h: ChaffHost, sport: int, dport: int, data: bytes, rng: np.random.Generator, *, out: bool) -> bytes:
    ident = int(rng.integers(0, 1 << 16))
    if out:
        return ipv4_frame(
            h.mac, h.peer_mac, h.ip, h.peer_ip, dpkt.udp.UDP(sport=sport, dport=dport, data=data),
            ident=ident, ttl=h.ttl,
        )  # fmt: skip
    return ipv4_frame(
        h.peer_mac, h.mac, h.peer_ip, h.ip, dpkt.udp.UDP(sport=dport, dport=sport, data=data),
        ident=ident, ttl=h.peer_ttl,
    )  # fmt: skip


def _tcp(
    h: ChaffHost, out: bool, ports: tuple[int, int], seq: int, ack: int, flags: int,
    data: bytes, rng: np.random.Generator, opts: bytes = b"",
) -> bytes:  # fmt: skip
    sport, dport = ports if out else (ports[1], ports[0])
    seg = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags,
        win=int(rng.integers(14_000, 65_535)), opts=opts, data=data,
    )  # fmt: skip
    seg.off = (20 + len(opts)) // 4
    ident = int(rng.integers(0, 1 << 16))
    if out:
        return ipv4_frame(h.mac, h.peer_mac, h.ip, h.peer_ip, seg, ident=ident, ttl=h.ttl)
    return ipv4_frame(h.peer_mac, h.mac, h.peer_ip, h.ip, seg, ident=ident, ttl=h.peer_ttl)


def _app_data(port: int, rng: np.random.Generator, request: bool) -> bytes:
    """A small application message: a TLS application-data record on TLS ports, else none."""
    if port in (443, 8443, 8883, 993, 995, 5223):
        n = int(rng.integers(24, 120))
        return b"\x17\x03\x03" + n.to_bytes(2, "big") + rng.bytes(n)
    return b""


def tcp_flow(h: ChaffHost, t0: int, sport: int, dport: int, rng: np.random.Generator, rtt_us: int) -> Frames:
    """A complete short TCP session: handshake, one small exchange (TLS records on TLS
    ports, e.g. an HTTPS keep-alive), both FINs and the last ACK."""
    c, s = int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << 32))
    p = (sport, dport)
    mss = b"\x02\x04\x05\xb4"
    think = int(rng.integers(200, 5_000))
    req, resp = _app_data(dport, rng, True), _app_data(dport, rng, False)
    t = t0
    out: Frames = [(t, _tcp(h, True, p, c, 0, TCP_SYN, b"", rng, mss))]
    t += rtt_us
    out.append((t, _tcp(h, False, p, s, c + 1, TCP_SYN | TCP_ACK, b"", rng, mss)))
    c, s = c + 1, s + 1
    t += think
    out.append((t, _tcp(h, True, p, c, s, TCP_ACK, b"", rng)))
    if req:
        t += think
        out.append((t, _tcp(h, True, p, c, s, TCP_PSH | TCP_ACK, req, rng)))
        c += len(req)
        t += rtt_us
        out.append((t, _tcp(h, False, p, s, c, TCP_PSH | TCP_ACK, resp, rng)))
        s += len(resp)
        t += think
        out.append((t, _tcp(h, True, p, c, s, TCP_ACK, b"", rng)))
    t += think
    out.append((t, _tcp(h, True, p, c, s, TCP_FIN | TCP_ACK, b"", rng)))
    t += rtt_us
    out.append((t, _tcp(h, False, p, s, c + 1, TCP_FIN | TCP_ACK, b"", rng)))
    t += think
    out.append((t, _tcp(h, True, p, c + 1, s + 1, TCP_ACK, b"", rng)))
    return out


# ---------------------------------------------------------------------------------------------
# 3. Chaff
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaffParams:
    """Chaff flows: about ``flows_per_min`` complete flows per minute over the attack's span
    (from the attacker's first to last malicious packet, at least one minute), to ``targets``
    ((peer IPv4, protocol, port), default: the peers and services the host uses itself, else
    DNS and NTP to the gateway). UDP/53 -> DNS exchange, UDP/123 -> NTP, TCP -> short session
    (TLS records on TLS ports); other targets are skipped."""

    flows_per_min: float = 2.0
    targets: tuple[tuple[str, int, int], ...] = ()
    rtt_s: float = 0.03
    max_targets: int = 8


def usual_client_targets(
    pk: Packets, f: Fields, attacker: AttackerSelector
) -> tuple[list[ChaffTarget], list[int]]:
    """The host's own client services, from frames the attacker did not produce."""
    own = ~pk.attack if attacker.attack_only else np.ones(len(pk), bool)
    got = usual_targets(pk, f, own & (pk.origin >= 0), attacker.ip_int)
    got = [(t, c) for t, c in got if (t[1], t[2]) in ((17, 53), (17, 123)) or t[1] == 6]
    return [t for t, _ in got], [c for _, c in got]


def add_chaff(
    pk: Packets, attacker: AttackerSelector, params: ChaffParams, seed: int = 0
) -> tuple[Packets, Cost]:
    """Add benign-looking flows from the attacker host (see :class:`ChaffParams`)."""
    rng = np.random.default_rng(seed)
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    ip, mac = attacker.ip_int, attacker.mac_int(pk.cap)
    gw_mac, gw_ip = detect_gateway(pk.cap)
    if params.targets:
        targets = [(ip_int(a), int(p), int(s)) for a, p, s in params.targets]
        weights = [1] * len(targets)
    else:
        targets, weights = usual_client_targets(pk, f, attacker)
        targets, weights = targets[: params.max_targets], weights[: params.max_targets]
        if not targets and gw_ip is not None:
            targets, weights = [(gw_ip, 17, 53), (gw_ip, 17, 123)], [1, 1]
    sent = np.flatnonzero(ro.sent & (pk.label == 1))
    if not len(sent):
        sent = np.flatnonzero(ro.sent)
    if not targets or not len(sent) or params.flows_per_min <= 0 or mac < 0:
        return finish(pk, pk.cap, attacker)
    t0, t1 = int(pk.ts_us[sent].min()), int(pk.ts_us[sent].max())
    t1 = max(t1, t0 + WINDOW_US)
    n = max(1, round(params.flows_per_min * (t1 - t0) / WINDOW_US))
    starts = np.sort(rng.integers(t0, t1, size=n))
    prob = np.asarray(weights, np.float64) / float(np.sum(weights))
    used = set(f.sport[ro.sent].tolist()) | set(f.dport[ro.involved].tolist())
    ttl_sent = f.ttl[ro.sent & f.ipv4]
    my_ttl = int(np.bincount(ttl_sent).argmax()) if len(ttl_sent) else 64
    exchanges = dns_exchanges(pk, f, ~pk.attack if attacker.attack_only else np.ones(len(pk), bool), ip)
    rtt = max(1, int(params.rtt_s * US))
    frames: list[tuple[int, bytes]] = []
    for t in starts.tolist():
        peer, proto, port = targets[int(rng.choice(len(targets), p=prob))]
        peer_mac = host_mac(pk.cap, peer)
        if peer_mac is None or peer_mac == mac:
            peer_mac = gw_mac if gw_mac is not None else 0xFFFFFFFFFFFF
        ttl_peer = f.ttl[f.ipv4 & (f.src == peer)]
        host = ChaffHost(
            mac,
            ip,
            my_ttl,
            int(peer_mac),
            int(peer),
            int(np.bincount(ttl_peer).argmax()) if len(ttl_peer) else 64,
        )
        sport = int(rng.integers(49152, 65536))
        while sport in used:
            sport = int(rng.integers(49152, 65536))
        used.add(sport)
        if proto == 17 and port == 53:
            frames += dns_flow(host, t, sport, rng, rtt, exchanges)
        elif proto == 17 and port == 123:
            frames += ntp_flow(host, t, sport, rng, rtt)
        elif proto == 6:
            frames += tcp_flow(host, t, sport, port, rng, rtt)
    if not frames:
        return finish(pk, pk.cap, attacker)
    lens = np.fromiter((len(b) for _, b in frames), np.int64, count=len(frames))
    off = np.zeros(len(frames) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    extra_cap = Capture(
        np.fromiter((t for t, _ in frames), np.int64, count=len(frames)),
        np.frombuffer(b"".join(b for _, b in frames), np.uint8).copy(),
        off,
        pk.cap.snaplen,
    )
    m = len(frames)
    extra = Packets(extra_cap, np.ones(m, np.int8), np.ones(m, bool), np.full(m, -1, np.int64))
    return finish(pk, pk.cap, attacker, extra)
