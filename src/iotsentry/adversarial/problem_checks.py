"""Function checks for problem-space evasion: is the transformed capture still the attack?

An adversarial capture counts only if it is realisable as traffic and keeps its malicious
function (ARCHITECTURE, "Attacks"). Three checks, each comparing the capture before and after
a transformation (``Packets``, ``Capture`` or a pcap path):

* :func:`cc_exchange_intact` -- every TCP connection between the attacker and its server still
  has the same packets in the same order (so SYN / SYN-ACK / ACK, data, FIN), each direction
  carries the same application bytes with only padding appended to segments, and every ACK
  still acknowledges the same point of the (padded) stream; every UDP flow between them keeps
  its requests and responses, in order, payloads only padded. Extra connections (chaff) are
  allowed.
* :func:`scan_targets_intact` -- every (protocol, target, port) the attacker probed is still
  probed, and every probe that was answered still is, after the probe.
* :func:`valid_capture` -- our reader and dpkt both parse every frame, IPv4 / TCP / UDP
  checksums verify (a UDP checksum of 0 means none), timestamps never go back.

Each returns a :class:`Check` (truthy when it passed) listing what failed.
"""

from __future__ import annotations

import ipaddress
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_frames import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Fields,
    Packets,
    connection_ids,
    header_fields,
)
from iotsentry.capture.reader import read_packets
from iotsentry.evaluation.checksum import ones_sum
from iotsentry.evaluation.mix import Capture, read_capture

__all__ = ["Check", "cc_exchange_intact", "scan_targets_intact", "valid_capture"]

CaptureLike = Packets | Capture | str | Path
MAX_PROBLEMS = 20


@dataclass
class Check:
    """Outcome of one check: ``ok``, the first problems found, and counts of what was checked."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)
    """Frame numbers that failed (:func:`valid_capture`)."""

    def __bool__(self) -> bool:
        return self.ok

    def fail(self, text: str) -> None:
        """Record a problem (only the first few are kept)."""
        self.ok = False
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"ok": self.ok, "problems": list(self.problems), "checked": dict(self.checked)}


def _cap(x: CaptureLike) -> Capture:
    if isinstance(x, Packets):
        return x.cap
    if isinstance(x, Capture):
        return x
    return read_capture(x)


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _payload(cap: Capture, f: Fields, i: int) -> bytes:
    s = int(f.pay_off[i])
    return cap.buf[s : min(s + int(f.pay_len[i]), int(cap.off[i + 1]))].tobytes()


def _order(cap: Capture, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return rows[np.lexsort((rows, cap.ts_us[rows]))]


# ---------------------------------------------------------------------------------------------
# C&C (or any client/server) exchange
# ---------------------------------------------------------------------------------------------


def _rel(x: int, base: int) -> int:
    return ((x - base + (1 << 31)) % (1 << 32)) - (1 << 31)


@dataclass
class _Conn:
    """One TCP connection seen from the capture: packets in time order."""

    sig: list[tuple[int, int, bool]]
    """(direction, SYN/ACK/FIN/RST flags, carries data) per packet."""
    segs: tuple[list[bytes], list[bytes]]
    """Distinct data segments per direction, in sequence order."""
    ack_pos: list[int | None]
    """Per ACK-carrying packet: which boundary of the other direction's stream it acknowledges."""


def _connection(cap: Capture, f: Fields, rows: npt.NDArray[np.int64], a: int) -> _Conn:
    rows = _order(cap, rows)
    direc = (f.src[rows] != a).astype(int)
    flags = f.flags[rows] & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)
    bare_syn = (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
    data = (f.pay_len[rows] > 0) & ~bare_syn  # data in a bare SYN is discarded by the target
    sig = list(zip(direc.tolist(), flags.tolist(), data.tolist(), strict=True))
    base: list[int] = []
    bounds: list[list[int]] = []
    segs: list[list[bytes]] = []
    for d in (0, 1):
        mine = rows[direc == d]
        syn = mine[(f.flags[mine] & TCP_SYN) != 0]
        b = int(f.seq[syn[0]]) if len(syn) else (int(f.seq[mine[0]]) if len(mine) else 0)
        base.append(b)
        seen: dict[int, bytes] = {}
        ends = {1} if len(syn) else set()
        for i, is_data in zip(mine.tolist(), data[direc == d].tolist(), strict=True):
            start = _rel(int(f.seq[i]), b) + (1 if f.flags[i] & TCP_SYN else 0)
            if is_data:
                seen.setdefault(start, _payload(cap, f, i))
                ends.add(start + int(f.pay_len[i]))
            if f.flags[i] & TCP_FIN:
                ends.add(start + int(f.pay_len[i]) + 1)
        segs.append([seen[k] for k in sorted(seen)])
        bounds.append(sorted(ends))
    ack_pos: list[int | None] = []
    for i, d in zip(rows.tolist(), direc.tolist(), strict=True):
        if f.flags[i] & TCP_ACK:
            rel = _rel(int(f.ack[i]), base[1 - d])
            bl = bounds[1 - d]
            k = int(np.searchsorted(bl, rel))
            ack_pos.append(k if k < len(bl) and bl[k] == rel else None)
    return _Conn(sig, (segs[0], segs[1]), ack_pos)


def _tcp_conns(cap: Capture, f: Fields, a: int, s: int) -> dict[tuple[int, int, int], _Conn]:
    """Connections between ``a`` and ``s`` keyed by (attacker port, server port, ordinal of the
    connection on that port pair)."""
    sel = f.tcp & (((f.src == a) & (f.dst == s)) | ((f.src == s) & (f.dst == a)))
    rows = np.flatnonzero(sel).astype(np.int64)
    out: dict[tuple[int, int, int], _Conn] = {}
    if not len(rows):
        return out
    cid = connection_ids(f, cap.ts_us)[rows]
    a_port = np.where(f.src[rows] == a, f.sport[rows], f.dport[rows])
    s_port = np.where(f.src[rows] == a, f.dport[rows], f.sport[rows])
    ordinal: dict[tuple[int, int], int] = {}
    for c in np.unique(cid).tolist():  # connection ids grow with time within a port pair
        mine = rows[cid == c]
        pair = (int(a_port[cid == c][0]), int(s_port[cid == c][0]))
        k = ordinal[pair] = ordinal.get(pair, -1) + 1
        out[(*pair, k)] = _connection(cap, f, mine, a)
    return out


def _udp_flows(cap: Capture, f: Fields, a: int, s: int) -> dict[tuple[int, int], list[tuple[int, bytes]]]:
    sel = f.udp & (((f.src == a) & (f.dst == s)) | ((f.src == s) & (f.dst == a)))
    rows = _order(cap, np.flatnonzero(sel).astype(np.int64))
    out: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    for i in rows.tolist():
        mine = int(f.src[i]) == a
        key = (int(f.sport[i]), int(f.dport[i])) if mine else (int(f.dport[i]), int(f.sport[i]))
        out.setdefault(key, []).append((0 if mine else 1, _payload(cap, f, i)))
    return out


def _handshake(sig: list[tuple[int, int, bool]]) -> bool:
    """SYN from one side, then SYN-ACK from the other, then ACK from the first."""
    syn = next((k for k, (_, fl, _) in enumerate(sig) if fl & (TCP_SYN | TCP_ACK) == TCP_SYN), None)
    if syn is None:
        return False
    d0 = sig[syn][0]
    sa = next(
        (
            k
            for k in range(syn + 1, len(sig))
            if sig[k][0] != d0 and sig[k][1] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        ),
        None,
    )
    if sa is None:
        return False
    return any(
        sig[k][0] == d0 and sig[k][1] & TCP_ACK and not sig[k][1] & TCP_SYN for k in range(sa + 1, len(sig))
    )


def cc_exchange_intact(orig: CaptureLike, new: CaptureLike, attacker: str, server: str) -> Check:
    """Whether the exchange between ``attacker`` and ``server`` survived (module docstring)."""
    co, cn = _cap(orig), _cap(new)
    fo, fn = header_fields(co), header_fields(cn)
    a, s = _ip(attacker), _ip(server)
    out = Check(True)
    to, tn = _tcp_conns(co, fo, a, s), _tcp_conns(cn, fn, a, s)
    out.checked["tcp_connections"] = len(to)
    for key, c in to.items():
        n = tn.get(key)
        name = f"TCP {attacker}:{key[0]} <-> {server}:{key[1]} (#{key[2]})"
        if n is None:
            out.fail(f"{name}: connection missing")
            continue
        if n.sig != c.sig:
            out.fail(f"{name}: packets differ in number, flags or order")
            continue
        if _handshake(c.sig) and not _handshake(n.sig):
            out.fail(f"{name}: handshake lost")
        for d, label in ((0, "attacker->server"), (1, "server->attacker")):
            so, sn = c.segs[d], n.segs[d]
            if len(so) != len(sn):
                out.fail(f"{name}: {label} has {len(sn)} data segments instead of {len(so)}")
            elif not all(y.startswith(x) for x, y in zip(so, sn, strict=True)):
                out.fail(f"{name}: {label} application bytes changed (beyond appended padding)")
        if n.ack_pos != c.ack_pos:
            out.fail(f"{name}: acknowledgements no longer match the streams")
    uo, un = _udp_flows(co, fo, a, s), _udp_flows(cn, fn, a, s)
    out.checked["udp_flows"] = len(uo)
    for ports, msgs in uo.items():
        got = un.get(ports)
        name = f"UDP {attacker}:{ports[0]} <-> {server}:{ports[1]}"
        if got is None:
            out.fail(f"{name}: flow missing")
        elif [d for d, _ in got] != [d for d, _ in msgs]:
            out.fail(f"{name}: requests / responses differ in number or order")
        elif not all(y.startswith(x) for (_, x), (_, y) in zip(msgs, got, strict=True)):
            out.fail(f"{name}: payload changed (beyond appended padding)")
    return out


# ---------------------------------------------------------------------------------------------
# Scans
# ---------------------------------------------------------------------------------------------


def _probes(
    cap: Capture, f: Fields, a: int
) -> tuple[dict[tuple[int, int, int], int], set[tuple[int, int, int]]]:
    """First time of each probe (proto, target, port) the attacker sent, and the answered ones."""
    icmp = f.ipv4 & (f.proto == 1) & (f.l4_off >= 0) & (f.l4_off < cap.off[1:])
    itype = np.full(len(f), -1, np.int64)
    itype[icmp] = cap.buf[f.l4_off[icmp]]
    bare_syn = f.tcp & ((f.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
    sent = f.src == a
    probe = sent & (bare_syn | f.udp | (itype == 8))
    port = np.where(itype == 8, 0, f.dport)
    first: dict[tuple[int, int, int], int] = {}
    for i in _order(cap, np.flatnonzero(probe).astype(np.int64)).tolist():
        first.setdefault((int(f.proto[i]), int(f.dst[i]), int(port[i])), int(cap.ts_us[i]))
    reply = (f.dst == a) & (
        (f.tcp & ((f.flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)))
        | (f.tcp & ((f.flags & TCP_RST) != 0))
        | f.udp
        | (itype == 0)
    )
    rport = np.where(itype == 0, 0, f.sport)
    answered: set[tuple[int, int, int]] = set()
    for i in np.flatnonzero(reply).tolist():
        key = (int(f.proto[i]), int(f.src[i]), int(rport[i]))
        t = first.get(key)
        if t is not None and int(cap.ts_us[i]) >= t:
            answered.add(key)
    return first, answered


def scan_targets_intact(orig: CaptureLike, new: CaptureLike, attacker: str) -> Check:
    """Whether every probe of ``attacker`` (bare TCP SYN, UDP datagram, ICMP echo request, by
    protocol, target and port) is still sent, and every answered one still answered after it."""
    co, cn = _cap(orig), _cap(new)
    a = _ip(attacker)
    po, ao = _probes(co, header_fields(co), a)
    pn, an = _probes(cn, header_fields(cn), a)
    out = Check(True, checked={"probes": len(po), "answered": len(ao)})
    missing = sorted(set(po) - set(pn))
    if missing:
        p, t, port = missing[0]
        out.fail(f"{len(missing)} probes no longer sent, e.g. proto {p} to {ipaddress.IPv4Address(t)}:{port}")
    lost = sorted(ao - an)
    if lost:
        p, t, port = lost[0]
        out.fail(
            f"{len(lost)} probes no longer answered, e.g. proto {p} to {ipaddress.IPv4Address(t)}:{port}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Well-formed capture
# ---------------------------------------------------------------------------------------------


def _l4_ok(raw: bytes, ip: dpkt.ip.IP) -> bool:
    """TCP/UDP checksum over pseudo-header + segment verifies (UDP 0: none)."""
    hl = ip.hl * 4
    seg = raw[hl : ip.len]
    if ip.p == dpkt.ip.IP_PROTO_UDP and len(seg) >= 8 and seg[6:8] == b"\x00\x00":
        return True
    pseudo = raw[12:20] + struct.pack("!BBH", 0, ip.p, len(seg))
    return ones_sum(pseudo + seg) == 0xFFFF


def valid_capture(path: str | Path) -> Check:
    """Whether both parsers read every frame of ``path``, checksums verify and time never goes
    back. ``checked`` holds the frame counts; ``bad_checksum`` / ``parse_error`` frame numbers are
    listed in the problems (the first few) and counted in ``checked``."""
    out = Check(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = sum(len(b) for b in read_packets(path))
    for w in caught:
        out.fail(f"reader: {w.message}")
    bad_sum, bad_parse, n, back = 0, 0, 0, 0
    last = -np.inf
    with Path(path).open("rb") as fh:
        for i, (ts, buf) in enumerate(dpkt.pcap.Reader(fh)):
            n += 1
            if ts < last:
                back += 1
            last = max(last, ts)
            try:
                eth = dpkt.ethernet.Ethernet(buf)
                ip = eth.data
                if eth.type != dpkt.ethernet.ETH_TYPE_IP:
                    continue
                if not isinstance(ip, dpkt.ip.IP):
                    raise dpkt.UnpackError("IPv4 frame dpkt cannot decode")
                raw = _ip_bytes(buf, ip)
                if ones_sum(raw[: ip.hl * 4]) != 0xFFFF:
                    bad_sum += 1
                    out.frames.append(i)
                    out.fail(f"frame {i}: IPv4 header checksum")
                    continue
                whole = len(raw) >= ip.len
                if ip.p in (6, 17) and whole and not (ip.mf or ip.offset):
                    l4 = ip.data
                    if not isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                        raise dpkt.UnpackError("TCP/UDP segment dpkt cannot decode")
                    if not _l4_ok(raw, ip):
                        bad_sum += 1
                        out.frames.append(i)
                        out.fail(f"frame {i}: {'TCP' if ip.p == 6 else 'UDP'} checksum")
            except (dpkt.UnpackError, dpkt.NeedData, ValueError) as exc:
                bad_parse += 1
                out.frames.append(i)
                out.fail(f"frame {i}: dpkt: {exc}")
    if ours != n:
        out.fail(f"our reader read {ours} frames, dpkt {n}")
    if back:
        out.fail(f"{back} frames earlier than the one before")
    out.checked.update(
        {
            "frames_reader": ours,
            "frames_dpkt": n,
            "bad_checksum": bad_sum,
            "parse_error": bad_parse,
            "back_in_time": back,
        }
    )
    return out


def _ip_bytes(frame: bytes, ip: dpkt.ip.IP) -> bytes:
    """The IPv4 packet's bytes as captured (Ethernet header and VLAN tags skipped)."""
    start = 14
    while frame[start - 2 : start] in (b"\x81\x00", b"\x88\xa8"):
        start += 4
    return frame[start : start + max(ip.len, ip.hl * 4)]
