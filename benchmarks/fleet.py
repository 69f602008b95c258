"""Fleet generator: the same real packets, with the devices multiplied (BENCHMARKS P1, fleet size).

The source is one real Ethernet LAN capture, by default the IoTEnsemble files of 2020-11-23..26
in ``../shared/data/iotensemble`` merged in time order (324,729 packets, 74 h, 18 devices behind
one gateway). Two transformations, combined in one pass:

**Clones** (``clones=K``). Every *device* — a unicast MAC that sends IPv4 from a private
(RFC 1918) address or ARP for one, other than the gateway — has its traffic spread over ``K``
clones. The gateway is the MAC that relays most IPv4 packets with a non-local source address
(the inventory's rule); it and every remote peer keep their addresses.

* The unit that goes to one clone is a *flow*: the bidirectional 5-tuple (TCP/UDP; protocol
  and address pair for other IPv4; sender/target address pair for ARP; transaction id and
  client for DHCP; EtherType and MAC pair for anything else), cut into separate flows at idle
  gaps longer than ``idle_timeout`` (120 s, as flow meters such as nfstream expire flows;
  ``arp_timeout``, 1 s, for ARP, so every request/reply exchange is its own unit). The idle
  cut is needed because these devices keep few 5-tuples for days: the 18 IoTEnsemble devices
  hold 4,675 distinct TCP/UDP 5-tuples in 74 h, 7,928 TCP/UDP flows at 120 s idle, and 50,571
  ARP exchanges (62,968 units in all), so at ~100 k devices most clones are known by a few
  ARP replies and DNS/NTP flows. A DHCP server's broadcast reply belongs to the client named
  in ``chaddr``.
* A flow goes to clone ``hash(flow, copy, seed) % K``; every device in it (both ends of a
  local-to-local flow) takes that clone's addresses. Clone 0 of the first copy keeps the
  original addresses; any other clone gets a fresh locally administered MAC
  (``02:xx:xx:xx:xx:xx``, a serial number) and a fresh private IPv4 address in ``10.0.0.0/8``
  (last octet never 0 or 255), one per (copy, device, address the device used, clone).
* Rewritten in both directions: Ethernet source/destination, IPv4 source/destination, ARP
  sender/target hardware and protocol addresses, and the BOOTP/DHCP ``ciaddr``, ``yiaddr``
  and ``chaddr`` fields (the inventory takes a DHCP client's identity from ``chaddr``). The
  IPv4 header checksum and TCP/UDP checksums are updated incrementally (RFC 1624,
  :func:`iotsentry.evaluation.checksum.incremental_update`): a checksum that verified still
  verifies; a UDP checksum of 0 (none) stays 0. Frame lengths never change. Not rewritten:
  IPv6 addresses (a clone's IPv6 frames keep the device's link-local address; 236 frames in the
  default source), addresses inside other payloads (DNS/mDNS answers, SSDP ``LOCATION``, DHCP
  options, ICMP-quoted headers).

**Copies** (``packets=N``). To reach ``N`` packets the source is repeated in time: copy ``c``
is shifted by ``c`` times the source's span (rounded up to a whole second, plus one second) so
the output stays in time order, and every device of copy ``c > 0`` (clone 0 included) has
fresh addresses, as if another site of the same devices came online after the first. The last
copy is a time prefix of the source. So the output holds up to ``copies × devices × K`` devices.

The output is a little-endian microsecond pcap in time order (stable: equal timestamps keep
the source order), deterministic for a seed. Frames are read with
:func:`iotsentry.capture.reader.read_all` and addressed with the layout helpers of
:mod:`iotsentry.evaluation.mix`; everything is vectorised with numpy (1 M packets in a few
seconds).

Run::

    .venv/bin/python benchmarks/fleet.py --clones 16 --packets 1000000 --out fleet.pcap
    .venv/bin/python benchmarks/fleet.py --devices 10000 --packets 1000000 --out fleet.pcap
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IOTSENTRY_DATA", REPO.parent / "shared" / "data"))

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]

LOCAL_ADMIN_PREFIX = 0x02 << 40
"""Fresh MACs are ``02:xx:xx:xx:xx:xx`` (locally administered, unicast) plus a serial."""
FRESH_NET = 10 << 24
"""Fresh IPv4 addresses come from 10.0.0.0/8."""
FRESH_IPS = 254 * 65536
"""Fresh IPv4 addresses available (254 per /24: last octet 1..254)."""
ETH_IPV4, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
PCAP_SNAPLEN = 262144


# ------------------------------------------------------------------------------ the source


def default_sources() -> list[Path]:
    """The IoTEnsemble per-device files of 2020-11-23..26 (one LAN, 74 h)."""
    return sorted((DATA / "iotensemble").glob("*/2020-11-2[3-6].pcap"))


@dataclass
class Frames:
    """Frames of a capture as one byte buffer (the shape of :class:`iotsentry.evaluation.mix.Capture`).

    Attributes
    ----------
    ts_us
        Timestamps in integer microseconds, ``int64[n]``, in time order.
    buf
        All frames back to back, ``uint8``.
    off
        ``off[i]:off[i + 1]`` are the bytes of frame ``i``, ``int64[n + 1]``.
    wire_len
        Original length of each frame on the wire, ``int64[n]``.
    """

    ts_us: I64
    buf: npt.NDArray[np.uint8]
    off: I64
    wire_len: I64

    def __len__(self) -> int:
        return len(self.ts_us)

    def capture(self) -> Any:
        """The same frames as a :class:`iotsentry.evaluation.mix.Capture` (no copy)."""
        from iotsentry.evaluation.mix import Capture

        return Capture(self.ts_us, self.buf, self.off, PCAP_SNAPLEN, 0)

    def prefix(self, n: int) -> Frames:
        """The first ``n`` frames."""
        end = int(self.off[n])
        return Frames(self.ts_us[:n], self.buf[:end], self.off[: n + 1], self.wire_len[:n])


def _check_ethernet(path: Path) -> None:
    with path.open("rb") as fh:
        head = fh.read(24)
    """Refuse a classic pcap whose link type is not Ethernet (pcapng: per interface, not checked)."""
    if len(head) < 24:
        return
    if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        link = int.from_bytes(head[20:24], "little")
    elif head[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        link = int.from_bytes(head[20:24], "big")
    else:
        return
    if link != 1:
        raise ValueError(f"{path}: link type {link} is not Ethernet")


def load_frames(paths: Sequence[str | Path]) -> Frames:
    """Read captures with :func:`iotsentry.capture.reader.read_all` and merge them in time order.

    Parameters
    ----------
    paths
        Ethernet pcap / pcapng files of one LAN.

    Returns
    -------
    Frames
        All complete frames (a record cut short at the end of a file is dropped), sorted by time
        (stable: files in the given order, then frame order, break ties).
    """
    from iotsentry.capture.reader import read_all

    ts, bufs, offs, wire = [], [], [], []
    base = 0
    for p in paths:
        _check_ethernet(Path(p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a capture cut short: its complete frames only
            b = read_all(p, with_raw=True)
        if not len(b):
            continue
        assert b.raw is not None and b.raw_off is not None
        ts.append(np.rint(b.ts * 1e6).astype(np.int64))
        bufs.append(b.raw)
        offs.append(b.raw_off[:-1].astype(np.int64) + base)
        wire.append(b.wire_len.astype(np.int64))
        base += int(b.raw_off[-1])
    if not ts:
        raise ValueError("no packets in the source captures")
    t = np.concatenate(ts)
    buf = np.concatenate(bufs)
    start = np.concatenate(offs)
    w = np.concatenate(wire)
    end = np.append(start[1:], base)
    order = np.argsort(t, kind="stable")
    lens = (end - start)[order]
    new_off = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    gather = np.repeat(start[order] - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
    return Frames(t[order], buf[gather], new_off, w[order])


# ------------------------------------------------------------------------------ hashing


def _mix(x: npt.ArrayLike) -> U64:
    """splitmix64 finaliser, vectorised (``uint64`` arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def _combine(*parts: npt.ArrayLike) -> U64:
    h = _mix(np.asarray(parts[0]).astype(np.uint64))
    for p in parts[1:]:
        h = _mix(h ^ np.asarray(p).astype(np.uint64))
    return h


def _private(ip: I64) -> Mask:
    """RFC 1918 addresses (``ip`` as int, ``-1`` for none)."""
    a, b = ip >> 24, (ip >> 16) & 0xFF
    return (ip >= 0) & ((a == 10) | ((a == 172) & (b >= 16) & (b < 32)) | ((a == 192) & (b == 168)))


def _local_v4(ip: I64) -> Mask:
    """Addresses the inventory counts as a local source: private or link-local, not broadcast."""
    a, b = ip >> 24, (ip >> 16) & 0xFF
    return (_private(ip) | ((a == 169) & (b == 254))) & ((ip & 0xFF) != 0xFF)


# ------------------------------------------------------------------------------ analysis


@dataclass
class Source:
    """A source capture analysed for cloning: its devices, gateway and flows.

    Attributes
    ----------
    frames
        The source frames, in time order.
    gateway
        MAC of the gateway (``-1`` when none relays non-local traffic).
    dev_mac
        MACs of the devices, sorted, ``int64[D]``.
    slot_dev, slot_ip
        The (device, private IPv4 address) pairs the devices used, sorted by ``dev << 32 | ip``.
    src_dev, dst_dev
        Per frame: the device on the source / destination side (``-1`` when none): the device
        owning the Ethernet address, else the one owning the IPv4 (or ARP) address.
    flow
        Per frame: hash of its flow (5-tuple cut at idle gaps), ``uint64[n]``.
    sender
        Per frame: sent by its source-side device from a local address, as ARP or as a DHCP
        client (what makes the inventory count a MAC as a device).
    span_us
        Shift between copies in microseconds (span rounded up to a second, plus one second).
    """

    frames: Frames
    gateway: int
    dev_mac: I64
    slot_dev: I64
    slot_ip: I64
    src_dev: I64
    dst_dev: I64
    flow: U64
    sender: Mask
    span_us: int
    lay: Any
    """Frame layout (:func:`iotsentry.evaluation.mix._layout`)."""
    fields: dict[str, I64]
    """Per-frame header fields (MACs, IPv4 / ARP addresses, ports; ``-1`` where absent)."""
    idle_timeout: float = 120.0
    arp_timeout: float = 1.0

    @property
    def devices(self) -> int:
        """Number of devices in the source (gateway excluded)."""
        return len(self.dev_mac)


def _fields(fr: Frames, lay: Any) -> dict[str, I64]:
    """Per-frame header fields (``-1`` where absent) from the layout of :mod:`iotsentry.evaluation.mix`."""
    from iotsentry.evaluation.mix import _gather

    buf, start, end = fr.buf, fr.off[:-1], fr.off[1:]
    n = len(fr)
    out: dict[str, I64] = {}
    eth = end - start >= 14
    for name, rel in (("dst_mac", 0), ("src_mac", 6)):
        v = np.full(n, -1, dtype=np.int64)
        v[eth] = _gather(buf, start[eth] + rel, 6).astype(np.int64)
        out[name] = v
    for name, mask, rel in (
        ("src_ip", lay.ipv4, 12),
        ("dst_ip", lay.ipv4, 16),
        ("spa", lay.arp, 14),
        ("tpa", lay.arp, 24),
        ("sha", lay.arp, 8),
        ("tha", lay.arp, 18),
    ):
        width = 6 if name in ("sha", "tha") else 4
        v = np.full(n, -1, dtype=np.int64)
        v[mask] = _gather(buf, lay.l3[mask] + rel, width).astype(np.int64)
        out[name] = v
    ports = lay.ipv4 & np.isin(lay.proto, (6, 17)) & lay.first_frag & (lay.end - lay.l4 >= 4)
    for name, rel in (("sport", 0), ("dport", 2)):
        v = np.full(n, -1, dtype=np.int64)
        v[ports] = _gather(buf, lay.l4[ports] + rel, 2).astype(np.int64)
        out[name] = v
    v6 = (lay.ethertype == ETH_IPV6) & (lay.l3 >= 0) & (end - lay.l3 >= 40)
    first = np.zeros(n, dtype=np.int64)
    second = np.zeros(n, dtype=np.int64)
    first[v6] = buf[lay.l3[v6] + 8]
    second[v6] = buf[lay.l3[v6] + 9]
    # BOOTP / DHCP over Ethernet: transaction id and client hardware address
    udp = (lay.proto == 17) & (out["sport"] >= 0) & (lay.end - lay.l4 >= 8 + 34)
    dhcp = udp & np.isin(out["sport"], (67, 68)) & np.isin(out["dport"], (67, 68))
    dhcp[dhcp] = (buf[lay.l4[dhcp] + 9] == 1) & (buf[lay.l4[dhcp] + 10] == 6)
    for name, rel, width in (("dhcp_xid", 12, 4), ("dhcp_chaddr", 36, 6)):
        v = np.full(n, -1, dtype=np.int64)
        v[dhcp] = _gather(buf, lay.l4[dhcp] + rel, width).astype(np.int64)
        out[name] = v
    out["src_ip6_local"] = (
        v6 & (((first == 0xFE) & ((second & 0xC0) == 0x80)) | ((first & 0xFE) == 0xFC))
    ).astype(np.int64)
    return out


def _flows(fr: Frames, lay: Any, f: dict[str, I64], idle_us: int, arp_us: int) -> U64:
    """Per-frame flow hash: the 5-tuple (or its stand-in) cut at idle gaps."""
    n = len(fr)
    ports = f["sport"] >= 0
    a = np.where(ports, (f["src_ip"] << 16) | f["sport"], f["src_ip"])
    b = np.where(ports, (f["dst_ip"] << 16) | f["dport"], f["dst_ip"])
    kind = np.where(ports, 1, 2)
    arp = lay.arp
    a = np.where(arp, f["spa"], a)
    b = np.where(arp, f["tpa"], b)
    kind = np.where(arp, 3, kind)
    other = ~lay.ipv4 & ~arp
    a = np.where(other, f["src_mac"], a)
    b = np.where(other, f["dst_mac"], b)
    kind = np.where(other, 4, kind)
    dhcp = f["dhcp_chaddr"] >= 0  # one DHCP transaction (request and reply) is one unit
    a = np.where(dhcp, f["dhcp_xid"], a)
    b = np.where(dhcp, f["dhcp_chaddr"], b)
    kind = np.where(dhcp, 5, kind)
    proto = np.where(lay.ipv4, lay.proto, np.where(other, lay.ethertype, 0))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = _combine(kind, proto, lo, hi)
    order = np.lexsort((fr.ts_us, key))
    ks, ts = key[order], fr.ts_us[order]
    timeout = np.where(arp[order], arp_us, idle_us)
    new = np.ones(n, dtype=bool)
    new[1:] = (ks[1:] != ks[:-1]) | (ts[1:] - ts[:-1] > timeout[1:])
    sid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    sess = _combine(ks[starts], ts[starts])
    out = np.empty(n, dtype=np.uint64)
    out[order] = sess[sid]
    return out


def _lookup(sorted_keys: I64, values: I64) -> I64:
    """Index of each value in ``sorted_keys``, ``-1`` when absent."""
    if not len(sorted_keys):
        return np.full(len(values), -1, dtype=np.int64)
    i = np.searchsorted(sorted_keys, values)
    i = np.minimum(i, len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == values, i, -1).astype(np.int64)


def analyse(frames: Frames, idle_timeout: float = 120.0, arp_timeout: float = 1.0) -> Source:
    """Find the gateway, the devices, their addresses and every frame's flow.

    Parameters
    ----------
    frames
        One LAN's frames in time order (untagged or VLAN-tagged Ethernet).
    idle_timeout
        Seconds of silence after which the same 5-tuple starts a new flow.
    arp_timeout
        The same for ARP exchanges.

    Returns
    -------
    Source
    """
    from iotsentry.evaluation.mix import _layout

    lay = _layout(frames.capture())
    f = _fields(frames, lay)
    src_mac, dst_mac = f["src_mac"], f["dst_mac"]
    unicast = (src_mac > 0) & (((src_mac >> 40) & 1) == 0)
    # gateway: most IPv4 packets with a non-local, non-zero source address
    relayed = unicast & lay.ipv4 & ~_local_v4(f["src_ip"]) & (f["src_ip"] > 0)
    gateway = -1
    if relayed.any():
        macs, counts = np.unique(src_mac[relayed], return_counts=True)
        gateway = int(macs[np.argmax(counts)])
    # devices: unicast MACs sending from a private IPv4 address (IPv4 or ARP)
    v4_from = lay.ipv4 & _private(f["src_ip"])
    arp_from = lay.arp & _private(f["spa"])
    own = unicast & (src_mac != gateway) & (v4_from | arp_from)
    dev_mac = np.unique(src_mac[own])
    d_of = np.searchsorted(dev_mac, src_mac[own])
    ips = np.where(v4_from[own], f["src_ip"][own], f["spa"][own])
    pair = np.unique((d_of.astype(np.int64) << 32) | ips)
    slot_dev, slot_ip = pair >> 32, pair & 0xFFFFFFFF
    # the owner of each address: the device that sent most frames from it
    owner_ip, owner_dev = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(pair):
        pk, cnt = np.unique((ips << 32) | d_of, return_counts=True)
        o = np.lexsort((-cnt, pk >> 32))
        pk = pk[o]
        keep = np.ones(len(pk), dtype=bool)
        keep[1:] = (pk[1:] >> 32) != (pk[:-1] >> 32)
        owner_ip, owner_dev = pk[keep] >> 32, pk[keep] & 0xFFFFFFFF

    def side(mac: I64, ip: I64) -> I64:
        d = _lookup(dev_mac, mac)
        j = _lookup(owner_ip, ip)
        by_ip = np.where(j >= 0, owner_dev[np.maximum(j, 0)], -1) if len(owner_dev) else j
        return np.where(d >= 0, d, by_ip)

    src_dev = side(src_mac, np.where(lay.arp, f["spa"], f["src_ip"]))
    dst_dev = side(dst_mac, np.where(lay.arp, f["tpa"], f["dst_ip"]))
    # a DHCP server's broadcast reply is for the client named in chaddr
    client = _lookup(dev_mac, f["dhcp_chaddr"])
    dst_dev = np.where((dst_dev < 0) & (client >= 0), client, dst_dev)
    s = np.maximum(src_dev, 0)
    sender = (
        (src_dev >= 0)
        & (src_mac == dev_mac[s] if len(dev_mac) else False)
        & (
            (lay.ipv4 & _local_v4(f["src_ip"]))
            | (lay.ethertype == ETH_ARP)
            | (f["src_ip6_local"] > 0)
            | (f["dhcp_chaddr"] == src_mac)  # a DHCP client's message (from 0.0.0.0)
        )
    )
    flow = _flows(frames, lay, f, round(idle_timeout * 1e6), round(arp_timeout * 1e6))
    span = int(frames.ts_us[-1] - frames.ts_us[0])
    span_us = (span // 1_000_000 + 2) * 1_000_000
    src = Source(
        frames,
        gateway,
        dev_mac,
        slot_dev,
        slot_ip,
        src_dev,
        dst_dev,
        flow,
        sender,
        span_us,
        lay,
        f,
        idle_timeout,
        arp_timeout,
    )
    _check_fresh_space(src)
    return src


def _check_fresh_space(src: Source) -> None:
    """Fresh addresses must not collide with the source's own."""
    f = src.fields
    for name in ("src_ip", "dst_ip", "spa", "tpa"):
        ip = f[name]
        if ((ip >> 24) == 10).any():
            raise ValueError(f"the source uses 10.0.0.0/8 addresses ({name}); fresh addresses would collide")
    for name in ("src_mac", "dst_mac", "sha", "tha"):
        if ((f[name] >> 40) == 0x02).any():
            raise ValueError(f"the source uses 02:xx MACs ({name}); fresh MACs would collide")


# ------------------------------------------------------------------------------ clones


def copies_for(src: Source, packets: int | None) -> int:
    """Number of copies of the source needed for ``packets`` frames (the last may be partial)."""
    n = len(src.frames)
    return 1 if packets is None else max(1, math.ceil(packets / n))


def clone_index(src: Source, clones: int, copy: int, seed: int = 0) -> I64:
    """Per frame of the source: which of the ``clones`` clones its flow goes to in copy ``copy``."""
    if clones <= 1:
        return np.zeros(len(src.frames), dtype=np.int64)
    salt = _combine(np.uint64(seed), np.uint64(copy))
    return (_mix(src.flow ^ salt) % np.uint64(clones)).astype(np.int64)


def fresh_mac(copy: int, dev: npt.ArrayLike, k: npt.ArrayLike, devices: int, clones: int) -> I64:
    """The fresh MAC of clone ``k`` of device ``dev`` in copy ``copy``: ``02:`` + a serial."""
    g = (copy * devices + np.asarray(dev, dtype=np.int64)) * clones + np.asarray(k, dtype=np.int64)
    if (g >= 1 << 40).any():
        raise ValueError("too many clones for the fresh MAC space")
    return np.asarray(LOCAL_ADMIN_PREFIX | g, dtype=np.int64)


def fresh_ip(copy: int, slot: npt.ArrayLike, k: npt.ArrayLike, slots: int, clones: int) -> I64:
    """The fresh IPv4 address of clone ``k`` for address slot ``slot`` in copy ``copy`` (10/8)."""
    h = (copy * slots + np.asarray(slot, dtype=np.int64)) * clones + np.asarray(k, dtype=np.int64)
    if (h >= FRESH_IPS).any():
        raise ValueError("too many clones for 10.0.0.0/8")
    return np.asarray(FRESH_NET + (h // 254) * 256 + h % 254 + 1, dtype=np.int64)


def count_devices(src: Source, clones: int, packets: int | None = None, seed: int = 0) -> int:
    """Devices of the fleet (clones that send at least one frame), without building it.

    This is how many device MACs the inventory will find besides the gateway (and besides hosts
    that are not devices by this module's rule).
    """
    n = len(src.frames)
    total = packets if packets is not None else n
    seen = []
    for c in range(copies_for(src, packets)):
        m = min(n, total - c * n)
        k = clone_index(src, clones, c, seed)[:m]
        s = src.sender[:m]
        seen.append(np.unique(src.src_dev[:m][s] * clones + k[s]))
    return int(sum(len(x) for x in seen))


def choose_clones(src: Source, devices: int, packets: int | None = None, seed: int = 0) -> int:
    """The smallest ``K`` whose fleet has at least ``devices`` devices (or the ``K`` past which the
    count stops growing by 1 %, when the flows of the source cannot give that many)."""
    lo, hi = 1, 2
    while count_devices(src, hi, packets, seed) < devices:
        if hi >= 1 << 20:
            return hi
        prev = count_devices(src, hi, packets, seed)
        if count_devices(src, hi * 2, packets, seed) < prev * 1.01:
            return hi  # saturated: the source has no more flows to spread
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if count_devices(src, mid, packets, seed) >= devices:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fleet_chunks(
    src: Source, clones: int, packets: int | None = None, seed: int = 0
) -> Iterator[tuple[Frames, I64]]:
    """The fleet, one copy of the source at a time, in time order.

    Yields
    ------
    tuple of (Frames, numpy.ndarray)
        The frames of one copy (rewritten, shifted) and each frame's clone index.
    """
    n = len(src.frames)
    total = packets if packets is not None else n
    for c in range(copies_for(src, packets)):
        m = min(n, total - c * n)
        k = clone_index(src, clones, c, seed)[:m]
        part = src.frames.prefix(m)
        buf = rewrite_copy(src, m, k, c, clones)
        yield Frames(part.ts_us + c * src.span_us, buf, part.off, part.wire_len), k


def rewrite_copy(src: Source, m: int, k: I64, copy: int, clones: int) -> npt.NDArray[np.uint8]:
    """Bytes of the first ``m`` source frames re-addressed for copy ``copy`` (clones ``k``).

    Parameters
    ----------
    src
        The analysed source.
    m
        Number of frames (a time prefix of the source).
    k
        Clone index of each of those frames.
    copy
        Copy number; in copy 0, clone 0 keeps the original addresses.
    clones
        Clones per device.

    Returns
    -------
    numpy.ndarray
        A new ``uint8`` buffer laid out as ``src.frames.prefix(m)``.
    """
    from iotsentry.evaluation.checksum import incremental_update
    from iotsentry.evaluation.mix import _gather, _scatter

    fr = src.frames.prefix(m)
    buf = fr.buf.copy()
    lay, f = src.lay, src.fields
    start, end = fr.off[:-1], fr.off[1:]
    sd, td = src.src_dev[:m], src.dst_dev[:m]
    D, S = max(src.devices, 1), max(len(src.slot_ip), 1)
    fresh = (k > 0) | (copy > 0)
    slot_key = (src.slot_dev << 32) | src.slot_ip

    def new_macs(rows: I64, old: I64) -> I64:
        out = old.copy()
        for side in (td[rows], sd[rows]):  # the source side wins when both match
            d = np.maximum(side, 0)
            hit = (side >= 0) & fresh[rows] & (old == src.dev_mac[d] if len(src.dev_mac) else False)
            out[hit] = fresh_mac(copy, side[hit], k[rows][hit], D, clones)
        return out

    def new_ips(rows: I64, old: I64) -> I64:
        out = old.copy()
        for side in (td[rows], sd[rows]):
            j = _lookup(slot_key, (np.maximum(side, 0) << 32) | np.maximum(old, 0))
            hit = (side >= 0) & (old >= 0) & (j >= 0) & fresh[rows]
            out[hit] = fresh_ip(copy, j[hit], k[rows][hit], S, clones)
        return out

    rows = np.flatnonzero(fresh & ((sd >= 0) | (td >= 0)))
    if not len(rows):
        return buf
    # Ethernet addresses
    eth = rows[end[rows] - start[rows] >= 14]
    for name, rel in (("dst_mac", 0), ("src_mac", 6)):
        old = f[name][eth]
        new = new_macs(eth, old)
        ch = new != old
        _scatter(buf, start[eth][ch] + rel, 6, new[ch])
    # ARP addresses (no checksum)
    arp = rows[lay.arp[rows]]
    for name, rel, kind in (("sha", 8, "mac"), ("spa", 14, "ip"), ("tha", 18, "mac"), ("tpa", 24, "ip")):
        old = f[name][arp]
        new = new_macs(arp, old) if kind == "mac" else new_ips(arp, old)
        ch = new != old
        _scatter(buf, lay.l3[arp][ch] + rel, 6 if kind == "mac" else 4, new[ch])
    # IPv4 addresses, header checksum, TCP/UDP checksums over the pseudo-header
    v4 = rows[lay.ipv4[rows]]
    old_s, old_d = f["src_ip"][v4], f["dst_ip"][v4]
    new_s, new_d = new_ips(v4, old_s), new_ips(v4, old_d)
    ch = (new_s != old_s) | (new_d != old_d)
    v4, old_s, old_d, new_s, new_d = v4[ch], old_s[ch], old_d[ch], new_s[ch], new_d[ch]
    if len(v4):
        l3 = lay.l3[v4]

        def words(a: I64, b: I64) -> I64:
            return np.stack([a >> 16, a & 0xFFFF, b >> 16, b & 0xFFFF], axis=1)

        old_w, new_w = words(old_s, old_d), words(new_s, new_d)
        _scatter(buf, l3 + 12, 4, new_s)
        _scatter(buf, l3 + 16, 4, new_d)
        pos = l3 + 10
        _scatter(buf, pos, 2, incremental_update(_gather(buf, pos, 2), old_w, new_w))
        _l4_checksums(buf, lay, v4, old_w, new_w)
    # BOOTP / DHCP client fields: ciaddr, yiaddr, chaddr (UDP checksum covers them)
    udp = rows[lay.ipv4[rows] & (lay.proto[rows] == 17) & lay.first_frag[rows]]
    udp = udp[(lay.end[udp] - lay.l4[udp] >= 8 + 34) & (f["sport"][udp] >= 0)]
    sp, dp = f["sport"][udp], f["dport"][udp]
    dhcp = udp[np.isin(sp, (67, 68)) & np.isin(dp, (67, 68))]
    if len(dhcp):
        l4 = lay.l4[dhcp]
        eth_hw = (buf[l4 + 9] == 1) & (buf[l4 + 10] == 6)
        dhcp, l4 = dhcp[eth_hw], l4[eth_hw]
        old_ci, old_yi = _gather(buf, l4 + 20, 4).astype(np.int64), _gather(buf, l4 + 24, 4).astype(np.int64)
        old_ch = _gather(buf, l4 + 36, 6).astype(np.int64)
        new_ci, new_yi, new_ch = new_ips(dhcp, old_ci), new_ips(dhcp, old_yi), new_macs(dhcp, old_ch)
        ch = (new_ci != old_ci) | (new_yi != old_yi) | (new_ch != old_ch)
        if ch.any():
            dhcp, l4 = dhcp[ch], l4[ch]

            def words6(ci: I64, yi: I64, hw: I64) -> I64:
                return np.stack(
                    [
                        ci >> 16,
                        ci & 0xFFFF,
                        yi >> 16,
                        yi & 0xFFFF,
                        hw >> 32,
                        (hw >> 16) & 0xFFFF,
                        hw & 0xFFFF,
                    ],
                    axis=1,
                )

            old_w = words6(old_ci[ch], old_yi[ch], old_ch[ch])
            new_w = words6(new_ci[ch], new_yi[ch], new_ch[ch])
            _scatter(buf, l4 + 20, 4, new_ci[ch])
            _scatter(buf, l4 + 24, 4, new_yi[ch])
            _scatter(buf, l4 + 36, 6, new_ch[ch])
            _l4_checksums(buf, lay, dhcp, old_w, new_w)
    return buf


def _l4_checksums(buf: npt.NDArray[np.uint8], lay: Any, rows: I64, old_w: I64, new_w: I64) -> None:
    """Update the TCP / UDP checksums of ``rows`` for changed covered words (RFC 1624)."""
    from iotsentry.evaluation.checksum import incremental_update
    from iotsentry.evaluation.mix import _gather, _scatter

    proto, l4, fend, first = lay.proto[rows], lay.l4[rows], lay.end[rows], lay.first_frag[rows]
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


# ------------------------------------------------------------------------------ writing


def _pcap_header() -> bytes:
    return (
        np.array([0xA1B2C3D4], "<u4").tobytes()
        + np.array([2, 4], "<u2").tobytes()
        + np.array([0, 0, PCAP_SNAPLEN, 1], "<u4").tobytes()
    )


def _records(fr: Frames) -> npt.NDArray[np.uint8]:
    """The frames as pcap records (16-byte headers, microsecond timestamps), one buffer."""
    n = len(fr)
    cap = np.diff(fr.off)
    rec_off = np.zeros(n, dtype=np.int64)
    np.cumsum(16 + cap[:-1], out=rec_off[1:])
    size = int(rec_off[-1] + 16 + cap[-1]) if n else 0
    body = np.empty(size, dtype=np.uint8)
    sec, usec = np.divmod(fr.ts_us, 1_000_000)
    hdr = np.stack([sec, usec, cap, fr.wire_len], axis=1).astype("<u4")
    body[rec_off[:, None] + np.arange(16)] = hdr.view(np.uint8).reshape(n, 16)
    data_pos = np.repeat(rec_off + 16 - fr.off[:-1], cap) + np.arange(int(fr.off[-1]), dtype=np.int64)
    body[data_pos] = fr.buf
    return body


@dataclass
class FleetSummary:
    """What :func:`write_fleet` wrote."""

    out: str
    packets: int
    clones: int
    copies: int
    seed: int
    source_packets: int
    source_devices: int
    devices: int
    """Clones that send at least one frame (the devices the inventory finds, gateway aside)."""
    gateway: str
    first_ts: float
    last_ts: float
    idle_timeout: float
    seconds: float


def _mac_str(m: int) -> str:
    return ":".join(f"{(m >> (8 * i)) & 0xFF:02x}" for i in range(5, -1, -1)) if m >= 0 else ""


def write_fleet(
    out: str | Path, src: Source, clones: int, packets: int | None = None, seed: int = 0
) -> FleetSummary:
    """Write the fleet capture (see the module docstring) to ``out``.

    Parameters
    ----------
    out
        Output pcap path.
    src
        The analysed source (:func:`analyse`).
    clones
        ``K``: clones per device.
    packets
        Frames to write (copies of the source in time); ``None``: the source's length.
    seed
        Seed of the flow-to-clone assignment.

    Returns
    -------
    FleetSummary
    """
    if clones < 1:
        raise ValueError("clones must be >= 1")
    t0 = time.perf_counter()
    written = 0
    senders: list[I64] = []
    first = last = 0
    with Path(out).open("wb") as fh:
        fh.write(_pcap_header())
        for c, (fr, k) in enumerate(fleet_chunks(src, clones, packets, seed)):
            fh.write(_records(fr).tobytes())
            s = src.sender[: len(fr)]
            senders.append(np.unique(src.src_dev[: len(fr)][s] * clones + k[s]) + c * (1 << 40))
            if written == 0:
                first = int(fr.ts_us[0])
            last = int(fr.ts_us[-1])
            written += len(fr)
    return FleetSummary(
        out=str(out),
        packets=written,
        clones=clones,
        copies=copies_for(src, packets),
        seed=seed,
        source_packets=len(src.frames),
        source_devices=src.devices,
        devices=int(sum(len(x) for x in senders)),
        gateway=_mac_str(src.gateway),
        first_ts=first / 1e6,
        last_ts=last / 1e6,
        idle_timeout=src.idle_timeout,
        seconds=time.perf_counter() - t0,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python benchmarks/fleet.py --clones K --packets N --out F.pcap``."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--clones", type=int, help="K: clones per device")
    how.add_argument("--devices", type=int, help="choose the smallest K giving at least this many devices")
    ap.add_argument(
        "--packets", type=int, help="frames to write (copies of the source in time); default: the source's"
    )
    ap.add_argument("--out", type=Path, required=True, help="output pcap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, default=120.0, help="seconds of silence that end a flow")
    ap.add_argument(
        "--source",
        type=Path,
        nargs="+",
        help="source captures of one LAN (default: IoTEnsemble 2020-11-23..26)",
    )
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    paths = a.source or default_sources()
    if not paths:
        sys.exit(f"no source captures under {DATA} (set IOTSENTRY_DATA or pass --source)")
    t0 = time.perf_counter()
    src = analyse(load_frames(paths), idle_timeout=a.idle_timeout)
    clones = a.clones if a.clones is not None else choose_clones(src, a.devices, a.packets, a.seed)
    summary = write_fleet(a.out, src, clones, a.packets, a.seed)
    summary.seconds = time.perf_counter() - t0
    if a.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print(
            f"{summary.out}: {summary.packets:,} packets, {summary.devices:,} devices "
            f"({summary.source_devices} source devices x {summary.copies} copies x K={clones}; gateway "
            f"{summary.gateway}) in {summary.seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
