"""Frames under problem-space transformation: labelled captures, header fields, rebuilding.

A :class:`Packets` is a capture (:class:`~iotsentry.evaluation.mix.Capture`: raw Ethernet
frames back to back and integer-microsecond timestamps) with three per-frame columns that every
transformation carries along:

* ``label`` -- 1 for a malicious frame (chaff added by the attacker is malicious too);
* ``attack`` -- the frame belongs to the attacker's own traffic (in a Q1 mix: the replayed
  malware capture; the infected device's firmware traffic shares its address but is not the
  malware's to shape);
* ``origin`` -- the frame number in the untransformed capture, ``-1`` for added frames.

:func:`header_fields` decodes, vectorised over all frames, the Ethernet / IPv4 / TCP / UDP
fields the transformations need (VLAN tags skipped). :func:`rebuild_ipv4` writes one frame back
with a new payload and TCP sequence numbers, fresh lengths and recomputed checksums;
:func:`replace_frames` and :func:`concat_captures` assemble captures without a Python loop over
unchanged frames. IPv6 is left alone (never selected as the attacker's traffic).
"""

from __future__ import annotations

import csv
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.evaluation.checksum import incremental_update, internet_checksum
from iotsentry.evaluation.mix import DEFAULT_SNAPLEN, Capture, read_capture, write_capture

__all__ = [
    "MIN_FRAME",
    "Fields",
    "Packets",
    "concat_captures",
    "connection_ids",
    "fix_checksums",
    "flow_ids",
    "header_fields",
    "ip_bytes",
    "ipv4_frame",
    "rebuild_ipv4",
    "replace_frames",
]

MIN_FRAME = 60
"""Smallest Ethernet frame without FCS: shorter frames are zero-filled on the wire."""

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# ---------------------------------------------------------------------------------------------
# Labelled captures
# ---------------------------------------------------------------------------------------------


@dataclass
class Packets:
    """A capture with per-frame ``label``, ``attack`` and ``origin`` (see module docstring)."""

    cap: Capture
    label: npt.NDArray[np.int8]
    attack: npt.NDArray[np.bool_]
    origin: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        n = len(self.cap)
        if not (len(self.label) == len(self.attack) == len(self.origin) == n):
            raise ValueError("label, attack and origin need one entry per frame")

    def __len__(self) -> int:
        return len(self.cap)

    @property
    def ts_us(self) -> npt.NDArray[np.int64]:
        """Timestamps in integer microseconds."""
        return self.cap.ts_us

    @classmethod
    def of(
        cls,
        cap: Capture,
        label: npt.ArrayLike | None = None,
        attack: npt.ArrayLike | None = None,
    ) -> Packets:
        """Wrap an untransformed capture (``origin`` = frame numbers).

        Without ``label`` every frame is benign; without ``attack`` every frame counts as the
        attacker's own (a capture of the attacker host alone).
        """
        n = len(cap)
        lab = np.zeros(n, np.int8) if label is None else np.asarray(label, dtype=np.int8).copy()
        att = np.ones(n, bool) if attack is None else np.asarray(attack, dtype=bool).copy()
        return cls(cap, lab, att, np.arange(n, dtype=np.int64))

    @classmethod
    def read(
        cls, path: str | Path, label: npt.ArrayLike | None = None, attack: npt.ArrayLike | None = None
    ) -> Packets:
        """Read a pcap file (see :meth:`of`)."""
        return cls.of(read_capture(path), label, attack)

    def take(self, idx: npt.NDArray[np.int64]) -> Packets:
        """Frames selected by an index array, in that order, with their columns."""
        idx = np.asarray(idx, dtype=np.int64)
        return Packets(self.cap.take(idx), self.label[idx], self.attack[idx], self.origin[idx])

    def time_sorted(self) -> tuple[Packets, npt.NDArray[np.int64]]:
        """Frames in time order (ties keep their order); also the permutation applied."""
        order = np.argsort(self.cap.ts_us, kind="stable").astype(np.int64)
        if np.array_equal(order, np.arange(len(self))):
            return self, order
        return self.take(order), order

    def write(self, path: str | Path, labels: str | Path | None = None) -> None:
        """Write the frames as a pcap file and, optionally, ``index,ts,label,source,origin`` rows.

        ``source`` is ``attack`` (the attacker's original traffic), ``chaff`` (added frames) or
        ``benign``; ``origin`` the frame number in the untransformed capture (-1 for chaff).
        """
        write_capture(path, self.cap.ts_us, self.cap, max(self.cap.snaplen, DEFAULT_SNAPLEN))
        if labels is None:
            return
        with Path(labels).open("w", encoding="ascii", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "ts", "label", "source", "origin"])
            for i, (t, lab, att, org) in enumerate(
                zip(
                    self.cap.ts_us.tolist(),
                    self.label.tolist(),
                    self.attack.tolist(),
                    self.origin.tolist(),
                    strict=True,
                )
            ):
                src = "chaff" if org < 0 else ("attack" if att else "benign")
                w.writerow([i, f"{t // 1_000_000}.{t % 1_000_000:06d}", lab, src, org])


# ---------------------------------------------------------------------------------------------
# Header fields, vectorised
# ---------------------------------------------------------------------------------------------


def _be(buf: npt.NDArray[np.uint8], pos: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    """Big-endian unsigned integers of ``width`` (<= 6) bytes at each position."""
    out = np.zeros(len(pos), dtype=np.int64)
    for k in range(width):
        out = (out << 8) | buf[pos + k].astype(np.int64)
    return out


@dataclass
class Fields:
    """Per-frame header fields (absolute offsets into ``Capture.buf``; ``-1`` / 0 when absent)."""

    length: npt.NDArray[np.int64]
    src_mac: npt.NDArray[np.int64]
    dst_mac: npt.NDArray[np.int64]
    ipv4: npt.NDArray[np.bool_]
    ip_off: npt.NDArray[np.int64]
    ihl: npt.NDArray[np.int64]
    ip_len: npt.NDArray[np.int64]
    ttl: npt.NDArray[np.int64]
    proto: npt.NDArray[np.int64]
    src: npt.NDArray[np.int64]
    dst: npt.NDArray[np.int64]
    frag: npt.NDArray[np.bool_]
    """More-fragments set or a non-zero fragment offset."""
    full: npt.NDArray[np.bool_]
    """The frame holds the whole IPv4 packet (not cut by the snap length)."""
    l4_off: npt.NDArray[np.int64]
    sport: npt.NDArray[np.int64]
    dport: npt.NDArray[np.int64]
    flags: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    ack: npt.NDArray[np.int64]
    pay_off: npt.NDArray[np.int64]
    pay_len: npt.NDArray[np.int64]
    """L4 payload bytes according to the IP header (TCP/UDP only)."""

    def __len__(self) -> int:
        return len(self.length)

    @property
    def tcp(self) -> npt.NDArray[np.bool_]:
        """Unfragmented TCP segments with a whole header."""
        return self.ipv4 & (self.proto == 6) & (self.pay_off >= 0)

    @property
    def udp(self) -> npt.NDArray[np.bool_]:
        """Unfragmented UDP datagrams."""
        return self.ipv4 & (self.proto == 17) & (self.pay_off >= 0)

    @property
    def service(self) -> npt.NDArray[np.int64]:
        """The lower of the two ports (the server side of ordinary traffic); 0 without ports."""
        return np.where(self.sport >= 0, np.minimum(self.sport, self.dport), 0)


def header_fields(cap: Capture) -> Fields:
    """Decode the fields of every frame of ``cap`` (IPv4 over Ethernet, up to two VLAN tags)."""
    buf, start, end = cap.buf, cap.off[:-1], cap.off[1:]
    n = len(start)
    length = end - start
    m1 = np.full(n, -1, np.int64)
    src_mac, dst_mac = m1.copy(), m1.copy()
    eth = length >= 14
    dst_mac[eth] = _be(buf, start[eth], 6)
    src_mac[eth] = _be(buf, start[eth] + 6, 6)
    l3 = np.where(eth, start + 14, -1)
    et = np.full(n, -1, np.int64)
    et[eth] = _be(buf, start[eth] + 12, 2)
    for _ in range(2):  # 802.1Q / 802.1ad tags
        tag = (l3 >= 0) & np.isin(et, (0x8100, 0x88A8)) & (end - l3 >= 4)
        et[tag] = _be(buf, l3[tag] + 2, 2)
        l3[tag] += 4
    ipv4 = (l3 >= 0) & (et == 0x0800) & (end - l3 >= 20)
    ipv4[ipv4] = (buf[l3[ipv4]] >> 4) == 4
    ip_off = np.where(ipv4, l3, -1)
    p = ip_off[ipv4]
    ihl, ip_len, ttl, proto = (np.zeros(n, np.int64) for _ in range(4))
    proto[:] = -1
    src, dst = m1.copy(), m1.copy()
    frag = np.zeros(n, bool)
    ihl[ipv4] = (buf[p] & 0x0F).astype(np.int64) * 4
    ip_len[ipv4] = _be(buf, p + 2, 2)
    frag[ipv4] = (_be(buf, p + 6, 2) & 0x3FFF) != 0
    ttl[ipv4] = buf[p + 8]
    proto[ipv4] = buf[p + 9]
    src[ipv4] = _be(buf, p + 12, 4)
    dst[ipv4] = _be(buf, p + 16, 4)
    full = ipv4 & (ip_off + ip_len <= end) & (ip_len >= ihl)
    l4_off = np.where(ipv4 & ~frag, ip_off + ihl, -1)
    sport, dport, pay_off = m1.copy(), m1.copy(), m1.copy()
    flags, seq, ack, pay_len = (np.zeros(n, np.int64) for _ in range(4))
    ports = (l4_off >= 0) & np.isin(proto, (6, 17)) & (end - l4_off >= 4)
    sport[ports] = _be(buf, l4_off[ports], 2)
    dport[ports] = _be(buf, l4_off[ports] + 2, 2)
    tcp = ports & (proto == 6) & (end - l4_off >= 20)
    q = l4_off[tcp]
    seq[tcp] = _be(buf, q + 4, 4)
    ack[tcp] = _be(buf, q + 8, 4)
    thl = (buf[q + 12] >> 4).astype(np.int64) * 4
    flags[tcp] = buf[q + 13]
    pay_off[tcp] = q + thl
    pay_len[tcp] = np.maximum(ip_len[tcp] - ihl[tcp] - thl, 0)
    udp = ports & (proto == 17) & (end - l4_off >= 8)
    pay_off[udp] = l4_off[udp] + 8
    pay_len[udp] = np.maximum(ip_len[udp] - ihl[udp] - 8, 0)
    return Fields(
        length, src_mac, dst_mac, ipv4, ip_off, ihl, ip_len, ttl, proto, src, dst, frag, full,
        l4_off, sport, dport, flags, seq, ack, pay_off, pay_len,
    )  # fmt: skip


def flow_ids(f: Fields) -> npt.NDArray[np.int64]:
    """A number per bidirectional flow: TCP/UDP by 5-tuple, other IPv4 by protocol and
    address pair, every non-IPv4 frame in one group."""
    a = np.stack([f.src, np.maximum(f.sport, 0)])
    b = np.stack([f.dst, np.maximum(f.dport, 0)])
    swap = (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] > b[1]))
    lo = np.where(swap, b, a)
    hi = np.where(swap, a, b)
    key = np.stack([f.proto, lo[0], lo[1], hi[0], hi[1]], axis=1)
    if len(key) == 0:
        return np.zeros(0, np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def connection_ids(f: Fields, ts_us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """A number per TCP connection (other frames: per :func:`flow_ids` flow).

    A 5-tuple reused over time holds several connections: a new one starts at every bare SYN
    whose sequence number differs from the previous bare SYN of that 5-tuple (a retransmitted
    SYN keeps it); frames before the first SYN belong to the first connection.
    """
    fid = flow_ids(f)
    n = len(fid)
    if n == 0:
        return fid
    order = np.lexsort((np.arange(n), ts_us, fid))
    fs = fid[order]
    bare = (f.proto[order] == 6) & ((f.flags[order] & (TCP_SYN | TCP_ACK)) == TCP_SYN)
    start = np.ones(n, bool)
    start[1:] = fs[1:] != fs[:-1]
    syn = np.flatnonzero(bare)
    if len(syn):
        fsyn, qsyn = fs[syn], f.seq[order][syn]
        later = np.zeros(len(syn), bool)
        later[1:] = (fsyn[1:] == fsyn[:-1]) & (qsyn[1:] != qsyn[:-1])
        start[syn[later]] = True  # a later SYN of the 5-tuple with another initial sequence number
    out = np.empty(n, np.int64)
    out[order] = np.cumsum(start) - 1
    return out


def ip_bytes(f: Fields) -> npt.NDArray[np.int64]:
    """IP-level bytes of each frame (IPv4 total length; the frame length for other frames)."""
    return np.where(f.ipv4, f.ip_len, f.length)


# ---------------------------------------------------------------------------------------------
# Assembling captures
# ---------------------------------------------------------------------------------------------


def _ranges(starts: npt.NDArray[np.int64], lens: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lens)])`` without a loop."""
    cs = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=cs[1:])
    return np.repeat(starts - cs[:-1], lens) + np.arange(int(cs[-1]), dtype=np.int64)


def replace_frames(cap: Capture, rows: Sequence[int], frames: Sequence[bytes]) -> Capture:
    """A copy of ``cap`` with frame ``rows[k]`` replaced by ``frames[k]`` (timestamps kept)."""
    r = np.asarray(rows, dtype=np.int64)
    if len(r) == 0:
        return Capture(cap.ts_us.copy(), cap.buf.copy(), cap.off.copy(), cap.snaplen, cap.truncated)
    lens = np.diff(cap.off)
    new_lens = lens.copy()
    new_lens[r] = np.fromiter((len(f) for f in frames), np.int64, count=len(r))
    off = np.zeros(len(cap) + 1, np.int64)
    np.cumsum(new_lens, out=off[1:])
    buf = np.empty(int(off[-1]), np.uint8)
    keep = np.ones(len(cap), bool)
    keep[r] = False
    k = np.flatnonzero(keep)
    buf[_ranges(off[k], lens[k])] = cap.buf[_ranges(cap.off[k], lens[k])]
    buf[_ranges(off[r], new_lens[r])] = np.frombuffer(b"".join(frames), np.uint8)
    return Capture(cap.ts_us.copy(), buf, off, cap.snaplen, cap.truncated)


def concat_captures(a: Capture, b: Capture) -> Capture:
    """Frames of ``a`` then ``b`` (not sorted)."""
    return Capture(
        np.concatenate([a.ts_us, b.ts_us]),
        np.concatenate([a.buf, b.buf]),
        np.concatenate([a.off[:-1], b.off + a.off[-1]]),
        max(a.snaplen, b.snaplen),
        a.truncated + b.truncated,
    )


# ---------------------------------------------------------------------------------------------
# Single frames
# ---------------------------------------------------------------------------------------------


def _l4_checksum(ip: bytes | bytearray, proto: int, segment: bytes | bytearray) -> int:
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, proto, len(segment))
    return internet_checksum(pseudo + bytes(segment))


def fix_checksums(frame: bytearray, ip_off: int) -> None:
    """Recompute the IPv4 header checksum and, for a whole unfragmented TCP/UDP packet, the
    L4 checksum, in place. A UDP checksum of 0 ("none") stays 0."""
    ihl = (frame[ip_off] & 0x0F) * 4
    frame[ip_off + 10 : ip_off + 12] = b"\x00\x00"
    frame[ip_off + 10 : ip_off + 12] = internet_checksum(bytes(frame[ip_off : ip_off + ihl])).to_bytes(
        2, "big"
    )
    total = int.from_bytes(frame[ip_off + 2 : ip_off + 4], "big")
    proto = frame[ip_off + 9]
    fragged = int.from_bytes(frame[ip_off + 6 : ip_off + 8], "big") & 0x3FFF
    if fragged or ip_off + total > len(frame) or proto not in (6, 17):
        return
    l4 = ip_off + ihl
    pos = l4 + (16 if proto == 6 else 6)
    if pos + 2 > ip_off + total:
        return
    if proto == 17 and frame[pos : pos + 2] == b"\x00\x00":
        return
    frame[pos : pos + 2] = b"\x00\x00"
    s = _l4_checksum(frame[ip_off : ip_off + ihl], proto, frame[l4 : ip_off + total])
    if proto == 17 and s == 0:
        s = 0xFFFF
    frame[pos : pos + 2] = s.to_bytes(2, "big")


def _map_sack(opts: bytearray, map_ack: dict[int, int]) -> None:
    """Rewrite SACK block edges (option kind 5) through ``map_ack``, in place."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            return
        ln = opts[i + 1]
        if kind == 5:
            for j in range(i + 2, min(i + ln, len(opts)) - 3, 4):
                edge = int.from_bytes(opts[j : j + 4], "big")
                opts[j : j + 4] = map_ack.get(edge, edge).to_bytes(4, "big")
        i += ln


def rebuild_ipv4(
    frame: bytes,
    ip_off: int,
    *,
    payload: bytes | None = None,
    seq: int | None = None,
    ack: int | None = None,
    sack: dict[int, int] | None = None,
) -> bytes:
    """One IPv4 TCP/UDP frame with a new L4 payload and/or TCP sequence / ack numbers.

    IP total length, UDP length and both checksums are recomputed; ``sack`` maps old SACK
    edges to new ones. A frame that carried an Ethernet trailer (zero fill of a short frame)
    is zero-filled to :data:`MIN_FRAME` bytes again. Only whole, unfragmented packets may get
    a new payload; for a frame cut by the snap length, sequence numbers are patched with an
    incremental checksum update (RFC 1624), so a checksum that was right stays right.
    """
    b = bytearray(frame)
    ihl = (b[ip_off] & 0x0F) * 4
    total = int.from_bytes(b[ip_off + 2 : ip_off + 4], "big")
    proto = b[ip_off + 9]
    l4 = ip_off + ihl
    hl = ((b[l4 + 12] >> 4) * 4) if proto == 6 else 8
    whole = ip_off + total <= len(b)
    if not whole:
        if payload is not None or proto != 6:
            raise ValueError("a frame cut by the snap length cannot get a new payload")
        old = [int.from_bytes(b[l4 + k : l4 + k + 2], "big") for k in (4, 6, 8, 10)]
        if seq is not None:
            b[l4 + 4 : l4 + 8] = (seq & 0xFFFFFFFF).to_bytes(4, "big")
        if ack is not None:
            b[l4 + 8 : l4 + 12] = (ack & 0xFFFFFFFF).to_bytes(4, "big")
        new = [int.from_bytes(b[l4 + k : l4 + k + 2], "big") for k in (4, 6, 8, 10)]
        cur = int.from_bytes(b[l4 + 16 : l4 + 18], "big")
        upd = int(incremental_update(np.array([cur]), np.array([old]), np.array([new]))[0])
        b[l4 + 16 : l4 + 18] = upd.to_bytes(2, "big")
        return bytes(b)
    had_trailer = len(b) > ip_off + total
    head = b[:l4]
    l4hdr = bytearray(b[l4 : l4 + hl])
    data = bytes(b[l4 + hl : ip_off + total]) if payload is None else payload
    if proto == 6:
        if seq is not None:
            l4hdr[4:8] = (seq & 0xFFFFFFFF).to_bytes(4, "big")
        if ack is not None:
            l4hdr[8:12] = (ack & 0xFFFFFFFF).to_bytes(4, "big")
        if sack:
            opts = l4hdr[20:]
            _map_sack(opts, sack)
            l4hdr[20:] = opts
    else:
        l4hdr[4:6] = (8 + len(data)).to_bytes(2, "big")
    new_total = ihl + len(l4hdr) + len(data)
    if new_total > 0xFFFF:
        raise ValueError("IPv4 packet longer than 65535 bytes")
    head[ip_off + 2 : ip_off + 4] = new_total.to_bytes(2, "big")
    out = head + l4hdr + data
    if had_trailer and len(out) < MIN_FRAME:
        out += bytes(MIN_FRAME - len(out))
    fix_checksums(out, ip_off)
    return bytes(out)


def _mac_bytes(mac: int) -> bytes:
    return int(mac).to_bytes(6, "big")


def ipv4_frame(
    src_mac: int,
    dst_mac: int,
    src_ip: int,
    dst_ip: int,
    l4: dpkt.tcp.TCP | dpkt.udp.UDP,
    *,
    ident: int,
    ttl: int = 64,
) -> bytes:
    """An Ethernet/IPv4 frame around a dpkt TCP or UDP segment, lengths and checksums set."""
    if isinstance(l4, dpkt.udp.UDP):
        l4.ulen = 8 + len(l4.data)
        proto = dpkt.ip.IP_PROTO_UDP
    else:
        proto = dpkt.ip.IP_PROTO_TCP
    ip = dpkt.ip.IP(
        src=int(src_ip).to_bytes(4, "big"),
        dst=int(dst_ip).to_bytes(4, "big"),
        p=proto,
        ttl=int(ttl),
        id=int(ident) & 0xFFFF,
        data=l4,
    )
    if proto == dpkt.ip.IP_PROTO_TCP:
        ip.df = 1
    ip.len = 20 + len(bytes(l4))
    eth = dpkt.ethernet.Ethernet(
        src=_mac_bytes(src_mac), dst=_mac_bytes(dst_mac), type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    out = bytearray(bytes(eth))
    fix_checksums(out, 14)
    return bytes(out)
