"""Tiny writers of test captures and frames (struct by hand, independent of the reader).

Frames: :func:`eth`, :func:`ipv4`, :func:`ipv6`, :func:`tcp`, :func:`udp`, :func:`icmp`,
:func:`arp`, :func:`sll`, :func:`sll2`. Files: :func:`pcap_bytes` (either byte order, usec or
nsec) and the pcapng block builders :func:`shb`, :func:`idb`, :func:`epb`, :func:`spb`,
:func:`other_block`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def mac_int(mac: bytes) -> int:
    return int.from_bytes(mac, "big")


# ---------------------------------------------------------------------------- frames


def eth(
    payload: bytes,
    ethertype: int = 0x0800,
    *,
    dst: bytes = MAC_B,
    src: bytes = MAC_A,
    vlans: Sequence[tuple[int, int]] = (),
) -> bytes:
    """Ethernet II; ``vlans`` are (tag protocol id, vlan id), outermost first."""
    tags = b""
    for k, (tpid, vid) in enumerate(vlans):
        nxt = vlans[k + 1][0] if k + 1 < len(vlans) else ethertype
        tags += (struct.pack(">H", tpid) if k == 0 else b"") + struct.pack(">HH", vid, nxt)
    if vlans:
        return dst + src + tags + payload
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4(
    payload: bytes,
    proto: int,
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    ttl: int = 64,
    mf: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
    total_len: int | None = None,
) -> bytes:
    """IPv4 header (+ options padded to 4 bytes) + payload."""
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + len(payload) if total_len is None else total_len
    fo = (0x2000 if mf else 0) | (frag_offset // 8)
    hdr = struct.pack(
        ">BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        tot,
        0x1234,
        fo,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + options + payload


def ipv6(
    payload: bytes,
    nh: int,
    *,
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    hlim: int = 64,
    ext: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """IPv6 header; ``ext`` is a list of (header type, body) chained before ``payload``.

    Bodies of hop-by-hop / routing / destination options get their next-header and length
    bytes prepended and are padded to 8 bytes (AH: 4 bytes); a fragment header body is the
    6 bytes after next-header and reserved, e.g. ``struct.pack(">HI", offset | more, ident)``.
    """
    chain = b""
    types = [t for t, _ in ext] + [nh]
    for k, (t, body) in enumerate(ext):
        nxt = types[k + 1]
        if t == 44:
            chain += struct.pack(">BB", nxt, 0) + body
        elif t == 51:  # AH: length in 4-byte units minus 2
            body += b"\x00" * (-(len(body) + 2) % 4)
            chain += struct.pack(">BB", nxt, (len(body) + 2) // 4 - 2) + body
        else:
            body += b"\x00" * (-(len(body) + 2) % 8)
            chain += struct.pack(">BB", nxt, (len(body) + 2) // 8 - 1) + body
    first = types[0]
    plen = len(chain) + len(payload)
    hdr = struct.pack(
        ">IHBB16s16s",
        0x60000000,
        plen,
        first,
        hlim,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return hdr + chain + payload


def tcp(sport: int, dport: int, flags: int = 0x18, payload: bytes = b"", options: bytes = b"") -> bytes:
    options += b"\x00" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, off << 4, flags, 8192, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(typ: int, code: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BBHI", typ, code, 0, 0) + payload


def arp(op: int, spa: str, tpa: str, sha: bytes = MAC_A, tha: bytes = b"\x00" * 6) -> bytes:
    return (
        struct.pack(">HHBBH", 1, 0x0800, 6, 4, op)
        + sha
        + ipaddress.IPv4Address(spa).packed
        + tha
        + ipaddress.IPv4Address(tpa).packed
    )


def sll(payload: bytes, ethertype: int = 0x0800, src: bytes = MAC_A) -> bytes:
    """Linux cooked capture v1 header."""
    return struct.pack(">HHH", 0, 1, 6) + src + b"\x00\x00" + struct.pack(">H", ethertype) + payload


def sll2(payload: bytes, ethertype: int = 0x0800, src: bytes = MAC_A) -> bytes:
    """Linux cooked capture v2 header."""
    return struct.pack(">HHIHBB", ethertype, 0, 3, 1, 0, 6) + src + b"\x00\x00" + payload


# ---------------------------------------------------------------------------- pcap


def pcap_bytes(
    frames: Sequence[tuple[int, int, bytes]],
    *,
    linktype: int = 1,
    big_endian: bool = False,
    nano: bool = False,
    snaplen: int = 65535,
    wire_lens: Sequence[int] | None = None,
) -> bytes:
    """A libpcap file; ``frames`` are (seconds, fraction (us or ns), bytes)."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for k, (sec, frac, data) in enumerate(frames):
        wl = len(data) if wire_lens is None else wire_lens[k]
        out.append(struct.pack(e + "IIII", sec, frac, len(data), wl) + data)
    return b"".join(out)


# ---------------------------------------------------------------------------- pcapng


def _block(btype: int, body: bytes, big: bool) -> bytes:
    e = ">" if big else "<"
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _opt(code: int, value: bytes, big: bool) -> bytes:
    e = ">" if big else "<"
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def shb(big: bool = False) -> bytes:
    e = ">" if big else "<"
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"pcapgen", big) + _opt(0, b"", big)
    return _block(0x0A0D0D0A, body, big)


def idb(
    linktype: int,
    *,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    snaplen: int = 0,
    big: bool = False,
) -> bytes:
    e = ">" if big else "<"
    body = struct.pack(e + "HHI", linktype, 0, snaplen)
    opts = _opt(2, b"eth0", big)
    if tsresol is not None:
        opts += _opt(9, bytes([tsresol]), big)
    if tsoffset is not None:
        opts += _opt(14, struct.pack(e + "q", tsoffset), big)
    return _block(1, body + opts + _opt(0, b"", big), big)


def epb(iface: int, ticks: int, data: bytes, *, wire_len: int | None = None, big: bool = False) -> bytes:
    e = ">" if big else "<"
    wl = len(data) if wire_len is None else wire_len
    body = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wl)
    body += data + b"\x00" * (-len(data) % 4) + _opt(1, b"comment", big) + _opt(0, b"", big)
    return _block(6, body, big)


def spb(data: bytes, *, wire_len: int | None = None, big: bool = False) -> bytes:
    e = ">" if big else "<"
    wl = len(data) if wire_len is None else wire_len
    return _block(3, struct.pack(e + "I", wl) + data, big)


def other_block(btype: int, body: bytes = b"\x00" * 8, big: bool = False) -> bytes:
    """Any block the reader must skip (NRB 4, ISB 5, custom 0xBAD / 0x40000BAD, ...)."""
    return _block(btype, body, big)
