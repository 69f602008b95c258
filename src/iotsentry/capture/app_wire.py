"""Focused wire parsers for the two payloads that cost the most to parse with dpkt.

:func:`parse_dns` reads a DNS / mDNS message and :func:`parse_tls_sni` the server name of a TLS
ClientHello. Each returns exactly what :mod:`iotsentry.capture.appfields`' dpkt-based
reference (``parse_dns_dpkt`` and ``parse_tls_sni_dpkt``) returns, and raises
:class:`WireError` (a ``ValueError``) exactly where the reference raises one of the errors
that mark a packet as malformed: the same bounds, the same name-compression rules (a pointer
must point before the name it is in; at most 255 bytes of labels), the same strict UTF-8 for
DNS names and TXT strings, and dpkt's own leniencies (a short session id or cipher-suite list
in a ClientHello is read as far as it goes; the extension loop stops at the declared length
counted from the length field itself).

They exist for speed only: dpkt builds an object per question and record, copies their default
fields and, for a ClientHello, a cipher-suite object per offered suite.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from functools import lru_cache
from typing import Any

__all__ = ["WireError", "dns_name", "parse_dns", "parse_tls_sni"]

_HDR = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")
_U16 = struct.Struct(">H")

_DNS_A, _DNS_CNAME, _DNS_PTR, _DNS_TXT, _DNS_AAAA, _DNS_SRV = 1, 5, 12, 16, 28, 33
_TLS_HANDSHAKE_TYPES = frozenset((0, 1, 2, 4, 11, 12, 13, 14, 15, 16, 20))
"""Handshake types dpkt knows (any other is an error there)."""


class WireError(ValueError):
    """The payload is not what its port or first bytes suggested (truncated or damaged)."""


@lru_cache(maxsize=4096)
def _ipv6_text(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


def dns_name(buf: bytes, off: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``off`` and the offset just after it, as
    ``dpkt.dns.unpack_name`` reads it (raises :class:`WireError` where that raises)."""
    labels: list[bytes] = []
    saved = 0
    start = off
    length = 0
    end = len(buf)
    while True:
        if off >= end:
            raise WireError("DNS name runs past the end")
        n = buf[off]
        if n == 0:
            off += 1
            break
        if n >= 0xC0:
            if off + 2 > end:
                raise WireError("DNS compression pointer cut short")
            ptr = ((n & 0x3F) << 8) | buf[off + 1]
            if ptr >= start:
                raise WireError("invalid DNS compression pointer")
            off += 2
            if not saved:
                saved = off
            start = off = ptr
        elif n < 0x40:
            off += 1
            labels.append(buf[off : off + n])
            length += n + 1
            if length > 255:
                raise WireError("DNS name longer than 255 bytes")
            off += n
        else:
            raise WireError(f"invalid DNS label length {n:02x}")
    if not saved:
        saved = off
    return b".".join(labels).decode("utf-8"), saved


def _txt(rdata: bytes) -> list[str]:
    out: list[str] = []
    i, end = 0, len(rdata)
    while i < end:
        n = rdata[i]
        out.append(rdata[i + 1 : i + 1 + n].decode("utf-8"))
        i += 1 + n
    return out


def parse_dns(payload: bytes) -> dict[str, Any]:
    """``queries``, ``answers`` (A, AAAA, PTR, CNAME, SRV, TXT records of every section) and
    ``is_response`` of one DNS / mDNS message (see :mod:`iotsentry.capture.appfields`)."""
    buf = payload
    end = len(buf)
    if end < 12:
        raise WireError("DNS header cut short")
    _id, op, qd, an, ns, ar = _HDR.unpack_from(buf)
    off = 12
    queries: list[str] = []
    for _ in range(qd):
        name, off = dns_name(buf, off)
        off += 4
        if off > end:
            raise WireError("DNS question cut short")
        queries.append(name)
    answers: list[dict[str, Any]] = []
    for _ in range(an + ns + ar):
        name, off = dns_name(buf, off)
        if off + 10 > end:
            raise WireError("DNS record header cut short")
        typ, _cls, _ttl, rdlen = _RR.unpack_from(buf, off)
        off += 10
        stop = off + rdlen
        if stop > end:
            raise WireError("DNS record runs past the end of the packet")
        if typ == _DNS_A:
            if rdlen != 4:
                raise WireError("A record of wrong length")
            answers.append({"name": name, "type": "A", "value": socket.inet_ntoa(buf[off:stop])})
        elif typ == _DNS_AAAA:
            if rdlen != 16:
                raise WireError("AAAA record of wrong length")
            answers.append({"name": name, "type": "AAAA", "value": _ipv6_text(buf[off:stop])})
        elif typ == _DNS_PTR:
            answers.append({"name": name, "type": "PTR", "value": dns_name(buf, off)[0]})
        elif typ == _DNS_CNAME:
            answers.append({"name": name, "type": "CNAME", "value": dns_name(buf, off)[0]})
        elif typ == _DNS_SRV:
            if rdlen < 6:
                raise WireError("SRV record cut short")
            port = _U16.unpack_from(buf, off + 4)[0]
            answers.append({"name": name, "type": "SRV", "value": dns_name(buf, off + 6)[0], "port": port})
        elif typ == _DNS_TXT:
            answers.append({"name": name, "type": "TXT", "value": _txt(buf[off:stop])})
        off = stop
    return {"queries": queries, "answers": answers, "is_response": bool(op & 0x8000)}


def _extensions(rest: bytes) -> list[tuple[int, bytes]]:
    """``dpkt.ssl.parse_extensions``: the loop runs while the offset, counted from the start
    of the 2-byte length field, is below the declared length."""
    declared = _U16.unpack_from(rest)[0]
    out: list[tuple[int, bytes]] = []
    end = len(rest)
    q = 2
    while q < declared:
        if q + 4 > end:
            raise WireError("TLS extension header cut short")
        ext_type, size = _U16.unpack_from(rest, q)[0], _U16.unpack_from(rest, q + 2)[0]
        out.append((ext_type, rest[q + 4 : q + 4 + size]))
        q += 4 + size
    return out


def parse_tls_sni(payload: bytes) -> dict[str, Any] | None:
    """``{"sni": name}`` of a TLS ClientHello record at the start of a TCP payload (None when
    it carries no host name)."""
    if len(payload) < 5:
        raise WireError("TLS record header cut short")
    rec_len = _U16.unpack_from(payload, 3)[0]
    if len(payload) - 5 < rec_len:
        raise WireError("TLS record cut short")
    if payload[0] != 22:
        raise WireError("not a handshake record")
    rec = payload[5 : 5 + rec_len]
    if len(rec) < 4:
        raise WireError("TLS handshake header cut short")
    hs_type = rec[0]
    hs_len = int.from_bytes(rec[1:4], "big")
    if hs_type not in _TLS_HANDSHAKE_TYPES or len(rec) - 4 < hs_len or hs_type != 1:
        raise WireError("not a complete ClientHello")
    hello = rec[4 : 4 + hs_len]
    if len(hello) < 35:  # version, random, session id length
        raise WireError("ClientHello cut short")
    data = hello[34:]
    p = data[0] + 1  # the session id (may be cut short: dpkt reads what there is)
    if p + 2 > len(data):
        raise WireError("ClientHello cipher suites cut short")
    n_suites = _U16.unpack_from(data, p)[0]
    if len(data[p + 2 : p + 2 + n_suites]) % 2:
        raise WireError("odd cipher suite list")
    p += 2 + n_suites
    if p >= len(data):
        raise WireError("ClientHello compression methods cut short")
    p += data[p] + 1
    rest = data[p:]
    extensions = _extensions(rest) if len(rest) >= 6 else []
    for ext_type, ext in extensions:
        if ext_type != 0:
            continue
        if len(ext) < 2:
            raise WireError("server_name extension cut short")
        names = ext[2 : 2 + _U16.unpack_from(ext)[0]]
        i = 0
        while i + 3 <= len(names):
            size = _U16.unpack_from(names, i + 1)[0]
            if names[i] == 0:
                return {"sni": names[i + 3 : i + 3 + size].decode("ascii", "replace")}
            i += 3 + size
    return None
