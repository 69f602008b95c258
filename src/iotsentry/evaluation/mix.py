"""Infection replay: splice an infected host's traffic onto a benign device (BENCHMARKS Q1).

:func:`mix_captures` takes a benign capture (one device behaving normally) and a malware
capture (an infected host), and writes one capture in which the benign device appears to get
infected at a chosen fraction of the benign capture's duration:

1. The infected host's packets of the malware capture (every frame whose Ethernet or ARP
   MAC, or IPv4/ARP address, is the attacker's), from its first packet (or ``attack_start``)
   on, are shifted in time so that the first one lands at
   ``benign_start + at_fraction * benign_duration``.
2. They are re-addressed: attacker MAC/IPv4 -> victim MAC/IPv4, and the malware capture's
   gateway MAC/IPv4 -> the benign capture's gateway MAC/IPv4, in the Ethernet header, the
   IPv4 header and ARP sender/target fields. Frame lengths never change. The IPv4 header,
   TCP and UDP checksums are updated incrementally (RFC 1624): a checksum that was right
   stays right, one that was already wrong in the source (e.g. offloaded or coalesced
   frames) keeps its error.
3. Both streams are merged by timestamp (benign first on ties). Replayed packets later than
   the benign capture's last packet are dropped (``truncate=True``, the default) so the
   mixed capture spans exactly the benign capture.
4. A labels CSV ``index,ts,label,source`` has one row per output frame. ``label`` is 1 for a
   replayed packet whose flow (5-tuple in either direction; ICMP by address pair) is labeled
   malicious in the malware capture's labeled Zeek conn log at that time
   (``flow.ts - tol <= ts <= flow.ts + duration + tol``, original timestamps), else 0.

The gateway of a capture is the MAC through which most traffic to/from public IPv4
addresses goes; its IPv4 address is the DNS server most queried by local hosts, else the
address that MAC uses in ARP or IPv4 packets. Addresses inside payloads (DNS answers, ICMP
quoted headers) and IPv6 addresses are not rewritten.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.errors import InputError
from iotsentry.evaluation.checksum import incremental_update

__all__ = [
    "Capture",
    "MixSummary",
    "detect_gateway",
    "host_mac",
    "label_attack_packets",
    "main",
    "mix_captures",
    "read_capture",
    "rewrite_addresses",
    "write_capture",
]

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = (0x8100, 0x88A8)
DEFAULT_SNAPLEN = 262144


# ---------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------


class _ShortReadProbe:
    """File wrapper that notices a read returning fewer bytes than asked (a cut record)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.short_reads = 0
        self.name = getattr(f, "name", "<file>")

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if n > 0 and 0 < len(data) < n:
            self.short_reads += 1
        return data

    def fileno(self) -> int:
        return self._f.fileno()


@dataclass
class Capture:
    """Frames of one capture held as one byte buffer.

    Attributes
    ----------
    ts_us
        Timestamps in integer microseconds since the epoch, ``int64[n]``.
    buf
        All frames back to back, ``uint8``.
    off
        ``off[i]:off[i+1]`` are the bytes of frame ``i``, ``int64[n+1]``.
    snaplen
        Snap length of the source file header.
    truncated
        Number of records cut short at the end of the file (skipped).
    """

    ts_us: npt.NDArray[np.int64]
    buf: npt.NDArray[np.uint8]
    off: npt.NDArray[np.int64]
    snaplen: int = DEFAULT_SNAPLEN
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ts_us)

    def frame(self, i: int) -> bytes:
        """Bytes of frame ``i``."""
        return self.buf[self.off[i] : self.off[i + 1]].tobytes()

    def take(self, idx: npt.NDArray[np.int64]) -> Capture:
        """Frames selected by an index array (in that order)."""
        starts, ends = self.off[idx], self.off[idx + 1]
        lens = ends - starts
        new_off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=new_off[1:])
        gather = np.repeat(starts - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
        return Capture(self.ts_us[idx].copy(), self.buf[gather], new_off, self.snaplen, 0)


def read_capture(path: str | Path) -> Capture:
    """Read a classic pcap file (Ethernet link type) with ``dpkt.pcap.Reader``.

    A record cut short at the end of the file is skipped and counted in ``truncated``.

    Raises
    ------
    InputError
        When the file is missing, not a pcap file, or not Ethernet.
    """
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(p, f"cannot open: {exc.strerror}") from exc
    with fh:
        probe = _ShortReadProbe(fh)
        try:
            reader = dpkt.pcap.Reader(probe)
        except (ValueError, dpkt.NeedData) as exc:
            raise InputError(p, "not a libpcap (.pcap) file") from exc
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            raise InputError(p, f"link type {reader.datalink()} is not Ethernet")
        ts_list: list[int] = []
        frames: list[bytes] = []
        try:
            for ts, frame in reader:
                if probe.short_reads:
                    break
                ts_list.append(round(float(ts) * 1_000_000))
                frames.append(frame)
        except dpkt.NeedData:  # cut inside a record header
            probe.short_reads += 1
    lens = np.fromiter((len(f) for f in frames), dtype=np.int64, count=len(frames))
    off = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    buf = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
    return Capture(np.asarray(ts_list, dtype=np.int64), buf, off, int(reader.snaplen), probe.short_reads)


def write_capture(path: str | Path, ts_us: npt.NDArray[np.int64], cap: Capture, snaplen: int) -> None:
    """Write the frames of ``cap`` with timestamps ``ts_us`` as a microsecond pcap file."""
    with Path(path).open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=snaplen, linktype=dpkt.pcap.DLT_EN10MB)
        raw = cap.buf.tobytes()
        off = cap.off.tolist()
        writer.writepkts(
            (int(t) // 1_000_000 + (int(t) % 1_000_000) / 1e6, raw[off[i] : off[i + 1]])
            for i, t in enumerate(ts_us.tolist())
        )


# ---------------------------------------------------------------------------------------------
# Per-frame header fields, vectorised
# ---------------------------------------------------------------------------------------------


def _gather(buf: npt.NDArray[np.uint8], pos: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint64]:
    """Big-endian integers of ``width`` bytes starting at each position."""
    out = np.zeros(len(pos), dtype=np.uint64)
    for k in range(width):
        out = (out << np.uint64(8)) | buf[pos + k].astype(np.uint64)
    return out


def _scatter(buf: npt.NDArray[np.uint8], pos: npt.NDArray[np.int64], width: int, vals: npt.ArrayLike) -> None:
    v = np.asarray(vals, dtype=np.uint64)
    for k in range(width):
        buf[pos + k] = ((v >> np.uint64(8 * (width - 1 - k))) & np.uint64(0xFF)).astype(np.uint8)


@dataclass
class _Layout:
    """Where the interesting fields of each frame are (``-1``/False when absent)."""

    l3: npt.NDArray[np.int64]
    ethertype: npt.NDArray[np.int64]
    ipv4: npt.NDArray[np.bool_]
    arp: npt.NDArray[np.bool_]
    proto: npt.NDArray[np.int64]
    l4: npt.NDArray[np.int64]
    first_frag: npt.NDArray[np.bool_]
    end: npt.NDArray[np.int64]


def _layout(cap: Capture) -> _Layout:
    buf, start, end = cap.buf, cap.off[:-1], cap.off[1:]
    n = len(start)
    caplen = end - start
    ethertype = np.full(n, -1, dtype=np.int64)
    l3 = np.full(n, -1, dtype=np.int64)
    ok = caplen >= 14
    et = np.zeros(n, dtype=np.int64)
    et[ok] = _gather(buf, start[ok] + 12, 2).astype(np.int64)
    l3[ok] = start[ok] + 14
    ethertype[ok] = et[ok]
    vlan = ok & np.isin(et, ETH_VLAN) & (caplen >= 18)
    ethertype[vlan] = _gather(buf, start[vlan] + 16, 2).astype(np.int64)
    l3[vlan] = start[vlan] + 18
    has = l3 >= 0
    ipv4 = has & (ethertype == ETH_IPV4) & (end - l3 >= 20)
    ipv4[ipv4] = (buf[l3[ipv4]] >> 4) == 4
    arp = has & (ethertype == ETH_ARP) & (end - l3 >= 28)
    if arp.any():
        hdr = _gather(buf, l3[arp], 6)  # htype(2) ptype(2) hlen(1) plen(1)
        arp[arp] = hdr == np.uint64(0x0001_0800_0604)
    proto = np.zeros(n, dtype=np.int64)
    l4 = np.full(n, -1, dtype=np.int64)
    first_frag = np.zeros(n, dtype=bool)
    if ipv4.any():
        p = l3[ipv4]
        proto[ipv4] = buf[p + 9]
        l4[ipv4] = p + (buf[p] & 0x0F).astype(np.int64) * 4
        first_frag[ipv4] = (_gather(buf, p + 6, 2) & np.uint64(0x1FFF)) == 0
    return _Layout(l3, ethertype, ipv4, arp, proto, l4, first_frag, end)


def _ipv4_fields(cap: Capture, lay: _Layout) -> tuple[npt.NDArray[np.int64], ...]:
    """Per frame: IPv4 src, dst (``-1`` when not IPv4), ARP sender/target IP (``-1``)."""
    n = len(cap)
    src = np.full(n, -1, dtype=np.int64)
    dst = np.full(n, -1, dtype=np.int64)
    src[lay.ipv4] = _gather(cap.buf, lay.l3[lay.ipv4] + 12, 4).astype(np.int64)
    dst[lay.ipv4] = _gather(cap.buf, lay.l3[lay.ipv4] + 16, 4).astype(np.int64)
    spa = np.full(n, -1, dtype=np.int64)
    tpa = np.full(n, -1, dtype=np.int64)
    spa[lay.arp] = _gather(cap.buf, lay.l3[lay.arp] + 14, 4).astype(np.int64)
    tpa[lay.arp] = _gather(cap.buf, lay.l3[lay.arp] + 24, 4).astype(np.int64)
    return src, dst, spa, tpa


def _macs(cap: Capture) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    start, end = cap.off[:-1], cap.off[1:]
    ok = end - start >= 14
    dst = np.full(len(cap), -1, dtype=np.int64)
    src = np.full(len(cap), -1, dtype=np.int64)
    dst[ok] = _gather(cap.buf, start[ok], 6).astype(np.int64)
    src[ok] = _gather(cap.buf, start[ok] + 6, 6).astype(np.int64)
    return src, dst


def _is_public(ip: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """IPv4 addresses that are neither private, loopback, link-local, multicast nor broadcast."""
    a = ip >> 24
    b = (ip >> 16) & 0xFF
    private = (
        (a == 10)
        | ((a == 172) & (b >= 16) & (b < 32))
        | ((a == 192) & (b == 168))
        | ((a == 169) & (b == 254))
        | (a == 127)
        | (a == 0)
        | (a >= 224)
        | ((a == 100) & (b >= 64) & (b < 128))
    )
    return (ip >= 0) & ~private


# ---------------------------------------------------------------------------------------------
# Gateway and host detection
# ---------------------------------------------------------------------------------------------


def detect_gateway(cap: Capture) -> tuple[int | None, int | None]:
    """Gateway (MAC, IPv4) of a capture; ``None`` for what cannot be told.

    The MAC is the one on the local side of most frames to or from public IPv4 addresses.
    The IPv4 address is the DNS server most queried (UDP/TCP 53, private address, reached
    through that MAC), else the address the MAC uses as ARP sender or IPv4 source with a
    private address.
    """
    lay = _layout(cap)
    src_ip, dst_ip, spa, _tpa = _ipv4_fields(cap, lay)
    src_mac, dst_mac = _macs(cap)
    votes = np.concatenate([src_mac[_is_public(src_ip)], dst_mac[_is_public(dst_ip)]])
    votes = votes[(votes >= 0) & ((votes >> 40) & 1 == 0)]  # no group addresses
    if len(votes) == 0:
        return None, None
    macs, counts = np.unique(votes, return_counts=True)
    gw_mac = int(macs[np.argmax(counts)])
    # DNS server: destination of queries to port 53 through the gateway MAC
    l4ok = lay.ipv4 & ((lay.proto == 6) | (lay.proto == 17)) & lay.first_frag & (lay.end - lay.l4 >= 4)
    dport = np.full(len(cap), -1, dtype=np.int64)
    dport[l4ok] = _gather(cap.buf, lay.l4[l4ok] + 2, 2).astype(np.int64)
    dns = (dport == 53) & (dst_mac == gw_mac) & ~_is_public(dst_ip) & (dst_ip >= 0)
    if dns.any():
        return gw_mac, int(Counter(dst_ip[dns].tolist()).most_common(1)[0][0])
    cand = np.concatenate([spa[(src_mac == gw_mac) & (spa > 0)], src_ip[(src_mac == gw_mac) & (src_ip > 0)]])
    cand = cand[~_is_public(cand)]
    if len(cand):
        return gw_mac, int(Counter(cand.tolist()).most_common(1)[0][0])
    return gw_mac, None


def host_mac(cap: Capture, ip: int) -> int | None:
    """The MAC most often seen as source of IPv4 or ARP frames sent from ``ip``."""
    lay = _layout(cap)
    src_ip, _dst, spa, _tpa = _ipv4_fields(cap, lay)
    src_mac, _ = _macs(cap)
    m = src_mac[((src_ip == ip) | (spa == ip)) & (src_mac >= 0)]
    if len(m) == 0:
        return None
    return int(Counter(m.tolist()).most_common(1)[0][0])


def _involves(cap: Capture, mac: int, ip: int) -> npt.NDArray[np.bool_]:
    lay = _layout(cap)
    src_ip, dst_ip, spa, tpa = _ipv4_fields(cap, lay)
    src_mac, dst_mac = _macs(cap)
    return (src_mac == mac) | (dst_mac == mac) | (src_ip == ip) | (dst_ip == ip) | (spa == ip) | (tpa == ip)


# ---------------------------------------------------------------------------------------------
# Rewriting
# ---------------------------------------------------------------------------------------------


def _map_values(vals: npt.NDArray[np.uint64], mapping: dict[int, int]) -> npt.NDArray[np.uint64]:
    out = vals.copy()
    for old, new in mapping.items():
        out[vals == np.uint64(old)] = np.uint64(new)
    return out


def rewrite_addresses(cap: Capture, mac_map: dict[int, int], ip_map: dict[int, int]) -> Capture:
    """Re-address frames in place of a copy; checksums updated incrementally (RFC 1624).

    Parameters
    ----------
    cap
        Frames to rewrite (not modified).
    mac_map
        48-bit MAC -> MAC, applied to Ethernet source/destination and ARP sender/target.
    ip_map
        IPv4 (as int) -> IPv4, applied to IPv4 source/destination and ARP sender/target.

    Returns
    -------
    Capture
        A new capture with the same timestamps and frame lengths.
    """
    out = Capture(cap.ts_us.copy(), cap.buf.copy(), cap.off.copy(), cap.snaplen, cap.truncated)
    buf = out.buf
    lay = _layout(out)
    start, end = out.off[:-1], out.off[1:]
    # MAC addresses: Ethernet header, ARP sender/target hardware addresses
    eth = np.flatnonzero(end - start >= 14)
    arp = np.flatnonzero(lay.arp)
    for pos in (start[eth], start[eth] + 6, lay.l3[arp] + 8, lay.l3[arp] + 18):
        _scatter(buf, pos, 6, _map_values(_gather(buf, pos, 6), mac_map))
    # ARP protocol addresses (no checksum)
    for pos in (lay.l3[arp] + 14, lay.l3[arp] + 24):
        _scatter(buf, pos, 4, _map_values(_gather(buf, pos, 4), ip_map))
    # IPv4 addresses, IPv4 header checksum, TCP/UDP checksums (pseudo-header)
    v4 = np.flatnonzero(lay.ipv4)
    if len(v4) == 0:
        return out
    l3 = lay.l3[v4]
    old_src, old_dst = _gather(buf, l3 + 12, 4), _gather(buf, l3 + 16, 4)
    new_src, new_dst = _map_values(old_src, ip_map), _map_values(old_dst, ip_map)
    changed = (old_src != new_src) | (old_dst != new_dst)
    v4, l3 = v4[changed], l3[changed]
    old_src, old_dst, new_src, new_dst = (
        old_src[changed],
        old_dst[changed],
        new_src[changed],
        new_dst[changed],
    )
    if len(v4) == 0:
        return out

    def words(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        m = np.uint64(0xFFFF)
        return np.stack([a >> np.uint64(16), a & m, b >> np.uint64(16), b & m], axis=1)

    old_w, new_w = words(old_src, old_dst), words(new_src, new_dst)
    _scatter(buf, l3 + 12, 4, new_src)
    _scatter(buf, l3 + 16, 4, new_dst)
    ipsum_pos = l3 + 10
    _scatter(buf, ipsum_pos, 2, incremental_update(_gather(buf, ipsum_pos, 2), old_w, new_w))
    proto, l4, fend = lay.proto[v4], lay.l4[v4], lay.end[v4]
    first = lay.first_frag[v4]
    for p, sum_off, zero_means_none in ((6, 16, False), (17, 6, True)):
        sel = first & (proto == p) & (fend - l4 >= sum_off + 2)
        if not sel.any():
            continue
        pos = l4[sel] + sum_off
        cur = _gather(buf, pos, 2)
        new = incremental_update(cur, old_w[sel], new_w[sel]).astype(np.uint64)
        if zero_means_none:
            new = np.where(cur == 0, np.uint64(0), np.where(new == 0, np.uint64(0xFFFF), new))
        _scatter(buf, pos, 2, new)
    return out


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def _packet_tuples(cap: Capture) -> tuple[npt.NDArray[np.int64], ...]:
    """Per frame: proto, src ip, dst ip, src port, dst port (``-1`` where absent)."""
    lay = _layout(cap)
    src, dst, _spa, _tpa = _ipv4_fields(cap, lay)
    proto = np.where(lay.ipv4, lay.proto, -1)
    sport = np.full(len(cap), -1, dtype=np.int64)
    dport = np.full(len(cap), -1, dtype=np.int64)
    ok = lay.ipv4 & ((lay.proto == 6) | (lay.proto == 17)) & lay.first_frag & (lay.end - lay.l4 >= 4)
    sport[ok] = _gather(cap.buf, lay.l4[ok], 2).astype(np.int64)
    dport[ok] = _gather(cap.buf, lay.l4[ok] + 2, 2).astype(np.int64)
    return proto, src, dst, sport, dport


def label_attack_packets(
    cap: Capture, conn_log: str | Path, *, tolerance_s: float = 1.0
) -> npt.NDArray[np.bool_]:
    """Malicious flag of each frame of ``cap`` (original addresses and times) from a Zeek log.

    A frame is malicious when an IPv4 flow of the labeled conn log with the same protocol and
    endpoints (either direction; ports too for TCP/UDP) is labeled malicious and the frame's
    time lies in ``[ts - tolerance_s, ts + duration + tolerance_s]``. When several flows
    match, the one whose interval is nearest (inside counts as 0) decides, a malicious one
    winning ties.
    """
    from iotsentry.capture.zeek import read_conn_log

    flows = read_conn_log(conn_log)
    if not flows.has("label"):
        raise InputError(conn_log, "conn log has no label column")
    v4 = (flows.src_ip_hi == 0) & ((flows.src_ip_lo >> np.uint64(32)) == np.uint64(0xFFFF))
    index: dict[tuple[int, int, int, int, int], list[tuple[float, float, bool]]] = {}
    f_src = (flows.src_ip_lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    f_dst = (flows.dst_ip_lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for i in np.flatnonzero(v4).tolist():
        proto = int(flows.proto[i])
        a = (int(f_src[i]), int(flows.src_port[i]) if proto in (6, 17) else 0)
        b = (int(f_dst[i]), int(flows.dst_port[i]) if proto in (6, 17) else 0)
        lo, hi = min(a, b), max(a, b)
        t0 = float(flows.ts[i])
        index.setdefault((proto, *lo, *hi), []).append(
            (t0, t0 + float(flows.duration[i]), str(flows.label[i]) == "malicious")
        )
    proto_a, src, dst, sport, dport = _packet_tuples(cap)
    ts = cap.ts_us / 1e6
    out = np.zeros(len(cap), dtype=bool)
    for i in np.flatnonzero(proto_a >= 0).tolist():
        p = int(proto_a[i])
        a = (int(src[i]), int(sport[i]) if p in (6, 17) else 0)
        b = (int(dst[i]), int(dport[i]) if p in (6, 17) else 0)
        lo, hi = min(a, b), max(a, b)
        cands = index.get((p, *lo, *hi))
        if not cands:
            continue
        t = float(ts[i])
        best: tuple[float, int] | None = None
        for t0, t1, mal in cands:
            dist = max(t0 - t, t - t1, 0.0)
            if dist <= tolerance_s:
                key = (dist, 0 if mal else 1)
                if best is None or key < best:
                    best = key
        out[i] = best is not None and best[1] == 0
    return out


# ---------------------------------------------------------------------------------------------
# The mixer
# ---------------------------------------------------------------------------------------------


@dataclass
class MixSummary:
    """What :func:`mix_captures` did (JSON-ready via :meth:`to_dict`)."""

    benign_packets: int
    attack_packets_read: int
    attack_packets_of_host: int
    attack_packets_replayed: int
    packets_total: int
    malicious_packets: int
    splice_ts: float
    shift_s: float
    end_ts: float
    truncated_records: int
    mac_map: dict[str, str] = field(default_factory=dict)
    ip_map: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def _mac_str(m: int) -> str:
    return ":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def _ip_int(text: str, what: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError as exc:
        raise ValueError(f"{what} must be an IPv4 address: {text!r}") from exc


def _fmt_ts(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def mix_captures(
    benign: str | Path,
    attack: str | Path,
    *,
    attacker_ip: str,
    victim_ip: str,
    at_fraction: float,
    out: str | Path,
    labels_out: str | Path,
    attack_log: str | Path | None = None,
    all_malicious: bool = False,
    attack_start: float | None = None,
    truncate: bool = True,
    tolerance_s: float = 1.0,
) -> MixSummary:
    """Replay an infected host's traffic onto a benign device (BENCHMARKS Q1).

    Parameters
    ----------
    benign
        Benign pcap with the victim device.
    attack
        Malware pcap with the infected host.
    attacker_ip, victim_ip
        IPv4 addresses of the infected host (in ``attack``) and the device (in ``benign``).
    at_fraction
        Where the first replayed packet lands, as a fraction of the benign capture's duration.
    out, labels_out
        Output pcap and labels CSV (``index,ts,label,source``).
    attack_log
        Labeled Zeek conn log of the malware capture; without it every replayed packet is
        labelled ``all_malicious``.
    all_malicious
        Label of every replayed packet when there is no log (a capture that is one attack as a
        whole, such as a scan sample).
    attack_start
        Epoch time in the malware capture from which packets are replayed (default: its
        first packet).
    truncate
        Drop replayed packets later than the benign capture's last packet.
    tolerance_s
        Time tolerance when matching packets to labeled flows.

    Returns
    -------
    MixSummary
        Counts and the address mapping used.

    Raises
    ------
    InputError
        When a capture is unusable, or the attacker/victim cannot be found in it.
    """
    if not 0.0 <= at_fraction <= 1.0:
        raise ValueError(f"at_fraction must lie in [0, 1], got {at_fraction}")
    a_ip, v_ip = _ip_int(attacker_ip, "attacker_ip"), _ip_int(victim_ip, "victim_ip")
    ben = read_capture(benign)
    att = read_capture(attack)
    if len(ben) < 2:
        raise InputError(benign, "needs at least two packets")
    if len(att) == 0:
        raise InputError(attack, "has no packets")
    v_mac = host_mac(ben, v_ip)
    if v_mac is None:
        raise InputError(benign, f"victim {victim_ip} sends no IPv4/ARP packet")
    a_mac = host_mac(att, a_ip)
    if a_mac is None:
        raise InputError(attack, f"attacker {attacker_ip} sends no IPv4/ARP packet")
    b_gw_mac, b_gw_ip = detect_gateway(ben)
    a_gw_mac, a_gw_ip = detect_gateway(att)

    mac_map = {a_mac: v_mac}
    ip_map = {a_ip: v_ip}
    if a_gw_mac is not None and b_gw_mac is not None and a_gw_mac != a_mac:
        mac_map[a_gw_mac] = b_gw_mac
    if a_gw_ip is not None and b_gw_ip is not None and a_gw_ip != a_ip:
        ip_map[a_gw_ip] = b_gw_ip

    start_us = int(att.ts_us[0]) if attack_start is None else round(attack_start * 1_000_000)
    host = _involves(att, a_mac, a_ip) & (att.ts_us >= start_us)
    host_idx = np.flatnonzero(host)
    b0, b1 = int(ben.ts_us.min()), int(ben.ts_us.max())
    splice_us = b0 + round(at_fraction * (b1 - b0))
    shift_us = splice_us - (int(att.ts_us[host_idx[0]]) if len(host_idx) else splice_us)
    new_ts = att.ts_us[host_idx] + shift_us
    keep = host_idx[new_ts <= b1] if truncate else host_idx
    replay = att.take(keep)
    if attack_log is not None:
        malicious = label_attack_packets(replay, attack_log, tolerance_s=tolerance_s)
    else:
        malicious = np.full(len(replay), bool(all_malicious), dtype=bool)
    replay = rewrite_addresses(replay, mac_map, ip_map)
    replay.ts_us = replay.ts_us + shift_us

    # merge by time, benign first on ties, each stream in file order
    ts_all = np.concatenate([ben.ts_us, replay.ts_us])
    source = np.concatenate([np.zeros(len(ben), dtype=np.int64), np.ones(len(replay), dtype=np.int64)])
    seq = np.concatenate([np.arange(len(ben)), np.arange(len(replay))])
    order = np.lexsort((seq, source, ts_all))
    both = Capture(
        ts_all,
        np.concatenate([ben.buf, replay.buf]),
        np.concatenate([ben.off[:-1], replay.off + ben.off[-1]]),
    )
    merged = both.take(order)
    labels = np.concatenate([np.zeros(len(ben), dtype=bool), malicious])[order]
    src_sorted = source[order]
    write_capture(out, merged.ts_us, merged, max(ben.snaplen, att.snaplen, DEFAULT_SNAPLEN))
    with Path(labels_out).open("w", encoding="ascii") as fh:
        fh.write("index,ts,label,source\n")
        names = ("benign", "attack")
        fh.writelines(
            f"{i},{_fmt_ts(t)},{int(lab)},{names[s]}\n"
            for i, (t, lab, s) in enumerate(
                zip(merged.ts_us.tolist(), labels.tolist(), src_sorted.tolist(), strict=True)
            )
        )
    return MixSummary(
        benign_packets=len(ben),
        attack_packets_read=len(att),
        attack_packets_of_host=int(host.sum()),
        attack_packets_replayed=len(replay),
        packets_total=len(merged),
        malicious_packets=int(malicious.sum()),
        splice_ts=splice_us / 1e6,
        shift_s=shift_us / 1e6,
        end_ts=b1 / 1e6,
        truncated_records=att.truncated + ben.truncated,
        mac_map={_mac_str(k): _mac_str(v) for k, v in mac_map.items()},
        ip_map={str(ipaddress.IPv4Address(k)): str(ipaddress.IPv4Address(v)) for k, v in ip_map.items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iotsentry.evaluation.mix``: the ``iotsentry mix`` command."""
    ap = argparse.ArgumentParser(
        prog="iotsentry mix", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--benign", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--attacker", required=True, help="IPv4 of the infected host in --attack")
    ap.add_argument("--victim", required=True, help="IPv4 of the device in --benign")
    ap.add_argument("--at", type=float, required=True, help="splice point, fraction of the benign duration")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--attack-log", default=None, help="labeled Zeek conn log of --attack")
    ap.add_argument("--attack-start", type=float, default=None)
    ap.add_argument("--keep-all", action="store_true", help="keep replayed packets past the benign end")
    args = ap.parse_args(argv)
    summary = mix_captures(
        args.benign,
        args.attack,
        attacker_ip=args.attacker,
        victim_ip=args.victim,
        at_fraction=args.at,
        out=args.out,
        labels_out=args.labels,
        attack_log=args.attack_log,
        attack_start=args.attack_start,
        truncate=not args.keep_all,
    )
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
