"""Numba decode of captured frames into :class:`~iotsentry.schema.PacketBatch` columns.

The capture readers (:mod:`iotsentry.capture.pcap`, :mod:`iotsentry.capture.pcapng`) scan
record headers into per-frame arrays (offset of the frame in a byte buffer, captured and
wire length, timestamp, interface, link type); :class:`BatchBuilder` collects those and
:func:`decode_frames` fills the protocol columns in one compiled loop.

Layers decoded: Ethernet (with 802.1Q / 802.1ad / QinQ tags and LLC/SNAP), Linux cooked
capture v1 and v2, raw IP, BSD null/loopback; IPv4 (options, fragments), IPv6 (hop-by-hop,
routing, fragment, destination options, AH, mobility extension headers), ARP; TCP, UDP,
SCTP ports, ICMP / ICMPv6 type and code. Every read is bounded by the frame's captured
length: a frame cut by the snap length keeps the fields whose bytes were captured.

Conventions beyond the schema docstring:

* ``ethertype`` of an IEEE 802.3 frame is the SNAP protocol id when the frame carries an
  LLC/SNAP header, else 0 (the 802.3 length field is not an EtherType).
* ARP rows have ``ip_version == 0``; their addresses are the sender/target protocol
  addresses (IPv4-mapped) and ``arp_op`` the operation.
* ``payload_len`` is the IP length minus the IP header(s) minus the L4 header (TCP data
  offset, UDP 8, SCTP 12, ICMP/ICMPv6 8); for other protocols and for non-first fragments
  it is the whole IP payload. A zero IPv4 total length / IPv6 payload length (segmentation
  offload, jumbograms) falls back to the wire length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from iotsentry.schema import PacketBatch

# Link types (LINKTYPE_* values of pcap / pcapng) that decode_frames understands.
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW_OPENBSD = 12
LINK_RAW_14 = 14
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276

SUPPORTED_LINKTYPES: dict[int, str] = {
    LINK_NULL: "BSD null/loopback",
    LINK_ETHERNET: "Ethernet",
    LINK_RAW_OPENBSD: "raw IP",
    LINK_RAW_14: "raw IP",
    LINK_RAW: "raw IP",
    LINK_LOOP: "OpenBSD loopback",
    LINK_SLL: "Linux cooked capture (SLL)",
    LINK_IPV4: "raw IPv4",
    LINK_IPV6: "raw IPv6",
    LINK_SLL2: "Linux cooked capture v2 (SLL2)",
}

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_ARP = 0x0806
_V4_MAPPED = 0xFFFF_0000_0000


@njit(cache=True)
def _be16(b: Any, i: int) -> int:
    return int((np.int64(b[i]) << 8) | np.int64(b[i + 1]))


@njit(cache=True)
def _be32(b: Any, i: int) -> int:
    return int(
        (np.int64(b[i]) << 24) | (np.int64(b[i + 1]) << 16) | (np.int64(b[i + 2]) << 8) | np.int64(b[i + 3])
    )


@njit(cache=True)
def _le32(b: Any, i: int) -> int:
    return int(
        (np.int64(b[i + 3]) << 24) | (np.int64(b[i + 2]) << 16) | (np.int64(b[i + 1]) << 8) | np.int64(b[i])
    )


@njit(cache=True)
def _mac(b: Any, i: int) -> int:
    return (_be16(b, i) << 32) | _be32(b, i + 2)


@njit(cache=True)
def _u64(b: Any, i: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(b[i + k])
    return v


@njit(cache=True)
def decode_frames(
    buf: npt.NDArray[np.uint8],
    data_off: npt.NDArray[np.int64],
    cap_len: npt.NDArray[np.uint32],
    wire_len: npt.NDArray[np.uint32],
    link: npt.NDArray[np.int32],
    src_mac: npt.NDArray[np.uint64],
    dst_mac: npt.NDArray[np.uint64],
    ethertype: npt.NDArray[np.uint16],
    vlan: npt.NDArray[np.uint16],
    ip_version: npt.NDArray[np.uint8],
    src_hi: npt.NDArray[np.uint64],
    src_lo: npt.NDArray[np.uint64],
    dst_hi: npt.NDArray[np.uint64],
    dst_lo: npt.NDArray[np.uint64],
    proto: npt.NDArray[np.uint8],
    src_port: npt.NDArray[np.uint16],
    dst_port: npt.NDArray[np.uint16],
    tcp_flags: npt.NDArray[np.uint8],
    ttl: npt.NDArray[np.uint8],
    payload_len: npt.NDArray[np.uint32],
    payload_off: npt.NDArray[np.uint32],
    frag: npt.NDArray[np.uint8],
    arp_op: npt.NDArray[np.uint8],
) -> None:
    """Decode frame ``i`` (``buf[data_off[i] : data_off[i] + cap_len[i]]``) into row ``i``.

    Output arrays must be zero-filled and as long as ``data_off``; fields of absent layers
    stay zero.
    """
    n = data_off.shape[0]
    for i in range(n):
        p = data_off[i]
        cl = int(cap_len[i])
        wl = int(wire_len[i])
        lt = link[i]
        et = 0
        off = 0
        tagged = False
        if lt == LINK_ETHERNET:
            if cl >= 6:
                dst_mac[i] = _mac(buf, p)
            if cl >= 12:
                src_mac[i] = _mac(buf, p + 6)
            if cl < 14:
                continue
            et = _be16(buf, p + 12)
            off = 14
            tagged = True
        elif lt == LINK_SLL:
            if cl < 16:
                continue
            if _be16(buf, p + 4) == 6:
                src_mac[i] = _mac(buf, p + 6)
            et = _be16(buf, p + 14)
            off = 16
            tagged = True
        elif lt == LINK_SLL2:
            if cl < 20:
                continue
            if buf[p + 11] == 6:
                src_mac[i] = _mac(buf, p + 12)
            et = _be16(buf, p)
            off = 20
            tagged = True
        elif lt in (LINK_RAW, LINK_RAW_OPENBSD, LINK_RAW_14):
            if cl < 1:
                continue
            v = buf[p] >> 4
            if v == 4:
                et = _ETH_IPV4
            elif v == 6:
                et = _ETH_IPV6
        elif lt == LINK_IPV4:
            et = _ETH_IPV4
        elif lt == LINK_IPV6:
            et = _ETH_IPV6
        elif lt in (LINK_NULL, LINK_LOOP):
            if cl < 4:
                continue
            fam = _be32(buf, p)
            if lt == LINK_NULL and fam > 0xFFFF:  # written in little-endian host order
                fam = _le32(buf, p)
            if fam == 2:
                et = _ETH_IPV4
            elif fam == 10 or fam == 24 or fam == 28 or fam == 30:
                et = _ETH_IPV6
            off = 4
        if tagged:
            first = True
            while (et == 0x8100 or et == 0x88A8 or et == 0x9100) and off + 4 <= cl:
                if first:
                    vlan[i] = _be16(buf, p + off) & 0xFFF
                    first = False
                et = _be16(buf, p + off + 2)
                off += 4
            if et < 0x0600:  # IEEE 802.3 length: LLC, maybe SNAP
                if (
                    off + 8 <= cl
                    and buf[p + off] == 0xAA
                    and buf[p + off + 1] == 0xAA
                    and buf[p + off + 2] == 3
                ):
                    et = _be16(buf, p + off + 6)
                    off += 8
                else:
                    et = 0
        ethertype[i] = et
        l3 = off
        avail = cl - l3
        l4 = -1  # offset of the L4 header (from frame start); -1 = none
        ip_end = 0  # end of the IP datagram per the IP header (from frame start)
        pr = 0
        nonfirst = False
        if et == _ETH_IPV4:
            if avail < 1:
                continue
            ip_version[i] = 4
            if avail < 20:
                continue
            q = p + l3
            ihl = int(buf[q] & 0x0F) * 4
            tot = _be16(buf, q + 2)
            if tot == 0:
                tot = wl - l3
            fo = _be16(buf, q + 6)
            fr = 0
            if fo & 0x2000:
                fr |= 1
            if fo & 0x1FFF:
                fr |= 2
                nonfirst = True
            frag[i] = fr
            ttl[i] = buf[q + 8]
            pr = int(buf[q + 9])
            proto[i] = pr
            src_lo[i] = _V4_MAPPED | _be32(buf, q + 12)
            dst_lo[i] = _V4_MAPPED | _be32(buf, q + 16)
            if ihl < 20 or tot < ihl:
                continue
            l4 = l3 + ihl
            ip_end = l3 + tot
        elif et == _ETH_IPV6:
            if avail < 1:
                continue
            ip_version[i] = 6
            if avail < 40:
                continue
            q = p + l3
            plen = _be16(buf, q + 4)
            if plen == 0:
                plen = wl - l3 - 40
            nh = int(buf[q + 6])
            ttl[i] = buf[q + 7]
            src_hi[i] = _u64(buf, q + 8)
            src_lo[i] = _u64(buf, q + 16)
            dst_hi[i] = _u64(buf, q + 24)
            dst_lo[i] = _u64(buf, q + 32)
            ip_end = l3 + 40 + plen
            h = l3 + 40
            ok = True
            while True:
                if nh == 0 or nh == 43 or nh == 60 or nh == 135:
                    if h + 2 > cl:
                        ok = False
                        break
                    nxt = int(buf[p + h])
                    h += (int(buf[p + h + 1]) + 1) * 8
                    nh = nxt
                elif nh == 51:
                    if h + 2 > cl:
                        ok = False
                        break
                    nxt = int(buf[p + h])
                    h += (int(buf[p + h + 1]) + 2) * 4
                    nh = nxt
                elif nh == 44:
                    if h + 4 > cl:
                        ok = False
                        break
                    nxt = int(buf[p + h])
                    fo = _be16(buf, p + h + 2)
                    fr = 0
                    if fo & 1:
                        fr |= 1
                    if fo & 0xFFF8:
                        fr |= 2
                        nonfirst = True
                    frag[i] = fr
                    h += 8
                    nh = nxt
                else:
                    break
            pr = nh
            if not ok:
                # extension headers run past the captured bytes: the L4 protocol is unknown
                continue
            proto[i] = pr
            if h > ip_end:
                continue
            l4 = h
        elif et == _ETH_ARP:
            if avail < 8:
                continue
            q = p + l3
            arp_op[i] = _be16(buf, q + 6) & 0xFF
            hl = int(buf[q + 4])
            pl = int(buf[q + 5])
            if _be16(buf, q + 2) == _ETH_IPV4 and pl == 4:
                spa = 8 + hl
                tpa = 8 + 2 * hl + 4
                if spa + 4 <= avail:
                    src_lo[i] = _V4_MAPPED | _be32(buf, q + spa)
                if tpa + 4 <= avail:
                    dst_lo[i] = _V4_MAPPED | _be32(buf, q + tpa)
            continue
        else:
            continue
        # ---- L4 ----
        if l4 < 0:
            continue
        hdr = 0
        if not nonfirst:
            if pr == 6:
                hdr = 20
                if l4 + 4 <= cl:
                    src_port[i] = _be16(buf, p + l4)
                    dst_port[i] = _be16(buf, p + l4 + 2)
                if l4 + 14 <= cl:
                    doff = int(buf[p + l4 + 12] >> 4) * 4
                    if doff > 20:
                        hdr = doff
                    tcp_flags[i] = buf[p + l4 + 13]
            elif pr == 17:
                hdr = 8
                if l4 + 4 <= cl:
                    src_port[i] = _be16(buf, p + l4)
                    dst_port[i] = _be16(buf, p + l4 + 2)
            elif pr == 132:
                hdr = 12
                if l4 + 4 <= cl:
                    src_port[i] = _be16(buf, p + l4)
                    dst_port[i] = _be16(buf, p + l4 + 2)
            elif pr == 1 or pr == 58:
                hdr = 8
                if l4 + 2 <= cl:
                    src_port[i] = buf[p + l4]
                    dst_port[i] = buf[p + l4 + 1]
        start = l4 + hdr
        plen_l4 = ip_end - start
        if plen_l4 > 0:
            payload_len[i] = plen_l4
            if start < cl:
                payload_off[i] = start


@njit(cache=True)
def gather_frames(
    buf: npt.NDArray[np.uint8],
    data_off: npt.NDArray[np.int64],
    cap_len: npt.NDArray[np.uint32],
    out: npt.NDArray[np.uint8],
) -> None:
    """Copy the captured bytes of every frame back to back into ``out``."""
    o = 0
    for i in range(data_off.shape[0]):
        s = data_off[i]
        c = int(cap_len[i])
        out[o : o + c] = buf[s : s + c]
        o += c


RAW_FILTER_HEAD = 8
RawFilter = Callable[[PacketBatch, "npt.NDArray[np.uint8]", "npt.NDArray[np.int64]"], "npt.NDArray[np.bool_]"]
"""Chooses the frames whose raw bytes are kept, from the decoded columns, the first
``RAW_FILTER_HEAD`` L4 payload bytes of each frame (garbage past the payload) and the captured
payload length."""
RawSpec = bool | RawFilter


class FrameBlock:
    """Per-frame arrays produced by a record scanner for one chunk of a file.

    ``data_off`` (offset of each frame in the chunk buffer), ``cap_len``, ``wire_len``,
    ``ts``, ``iface`` and ``link`` (link type) for up to ``capacity`` frames; the scanner
    fills the first ``n``.
    """

    def __init__(self, capacity: int) -> None:
        self.data_off = np.empty(capacity, dtype=np.int64)
        self.cap_len = np.empty(capacity, dtype=np.uint32)
        self.wire_len = np.empty(capacity, dtype=np.uint32)
        self.ts = np.empty(capacity, dtype=np.float64)
        self.iface = np.zeros(capacity, dtype=np.uint16)
        self.link = np.empty(capacity, dtype=np.int32)


class BatchBuilder:
    """Accumulates decoded frames until a :class:`PacketBatch` of ``capacity`` rows is full.

    Parameters
    ----------
    capacity
        Maximum rows of the batch being built.
    first_index
        Frame number (0-based, over the whole file) of the batch's first row.
    with_raw
        Keep the captured bytes of every frame (``PacketBatch.raw``), or, given a
        :data:`RawFilter`, only of the frames it selects (the others get zero raw bytes).
    decode
        Run the protocol decoder (off: only the frame number and timestamp columns, for
        counting packets and finding a capture's time span).
    """

    def __init__(self, capacity: int, first_index: int, with_raw: RawSpec, decode: bool = True) -> None:
        self.capacity = capacity
        self.first_index = first_index
        self.with_raw = with_raw
        self.decode = decode
        self.n = 0
        self.cols: dict[str, npt.NDArray[Any]] = (
            {k: np.zeros(capacity, dtype=dt) for k, dt in PacketBatch.FIELDS.items()} if decode else {}
        )
        self.ts = np.zeros(0 if decode else capacity)
        self.raw = np.zeros(0, dtype=np.uint8)
        self.raw_used = 0
        self.raw_lens: list[npt.NDArray[np.uint32]] = []

    @property
    def room(self) -> int:
        """Rows still free in this batch."""
        return self.capacity - self.n

    def add(self, buf: npt.NDArray[np.uint8], blk: FrameBlock, k: int) -> None:
        """Decode the first ``k`` frames of ``blk`` (whose offsets point into ``buf``)."""
        if k == 0:
            return
        a, b = self.n, self.n + k
        self.n = b
        if not self.decode:
            self.ts[a:b] = blk.ts[:k]
            return
        c = self.cols
        c["ts"][a:b] = blk.ts[:k]
        c["cap_len"][a:b] = blk.cap_len[:k]
        c["wire_len"][a:b] = blk.wire_len[:k]
        c["iface"][a:b] = blk.iface[:k]
        decode_frames(
            buf,
            blk.data_off[:k],
            blk.cap_len[:k],
            blk.wire_len[:k],
            blk.link[:k],
            c["src_mac"][a:b],
            c["dst_mac"][a:b],
            c["ethertype"][a:b],
            c["vlan"][a:b],
            c["ip_version"][a:b],
            c["src_ip_hi"][a:b],
            c["src_ip_lo"][a:b],
            c["dst_ip_hi"][a:b],
            c["dst_ip_lo"][a:b],
            c["proto"][a:b],
            c["src_port"][a:b],
            c["dst_port"][a:b],
            c["tcp_flags"][a:b],
            c["ttl"][a:b],
            c["payload_len"][a:b],
            c["payload_off"][a:b],
            c["frag"][a:b],
            c["arp_op"][a:b],
        )
        if self.with_raw:
            lens = blk.cap_len[:k].copy()
            if callable(self.with_raw):
                view = PacketBatch({name: col[a:b] for name, col in c.items() if name != "index"})
                off = view.payload_off.astype(np.int64)
                avail = np.where(off > 0, lens.astype(np.int64) - off, 0)
                pos = blk.data_off[:k, None] + off[:, None] + np.arange(RAW_FILTER_HEAD)
                head = buf[np.clip(pos, 0, len(buf) - 1)]
                keep = self.with_raw(view, head, avail)
                lens[~keep] = 0
            need = int(lens.sum(dtype=np.int64))
            used = self.raw_used
            if used + need > len(self.raw):
                # room for the whole batch at the mean frame length seen so far (untouched pages
                # cost no memory), or half as much again when that estimate was too small
                per_frame = (used + need) / b
                size = max(used + need, int(1.5 * len(self.raw)), int(1.05 * per_frame * self.capacity))
                grown = np.empty(size, dtype=np.uint8)
                grown[:used] = self.raw[:used]
                self.raw = grown
            gather_frames(buf, blk.data_off[:k], lens, self.raw[used : used + need])
            self.raw_used = used + need
            self.raw_lens.append(lens)

    def finish(self) -> PacketBatch:
        """The batch of the rows added so far."""
        n = self.n
        if not self.decode:
            index = np.arange(self.first_index, self.first_index + n, dtype=np.int64)
            return PacketBatch({"index": index, "ts": self.ts[:n]})
        cols = {k: v[:n] for k, v in self.cols.items()}
        cols["index"] = np.arange(self.first_index, self.first_index + n, dtype=np.int64)
        if not self.with_raw:
            return PacketBatch(cols)
        raw = self.raw[: self.raw_used]
        raw_off = np.zeros(n + 1, dtype=np.int64)
        if self.raw_lens:
            np.cumsum(np.concatenate(self.raw_lens), out=raw_off[1:])
        return PacketBatch(cols, raw=raw, raw_off=raw_off)
