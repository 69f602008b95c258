"""Application fields the device inventory needs (DHCP, DNS/mDNS, SSDP, HTTP, TLS SNI).

:func:`extract_app_events` takes a :class:`~iotsentry.schema.PacketBatch` read with raw frame
bytes, picks the few candidate packets with vectorised masks on protocol, ports and the first
payload bytes, groups them by payload and parses each distinct payload once (DHCP, SSDP and
HTTP with dpkt; DNS and TLS with the focused parsers of :mod:`iotsentry.capture.app_wire`,
which give dpkt's answers):

=========  =========================================  ============================================
kind       candidates                                 ``fields``
=========  =========================================  ============================================
``dhcp``   UDP, both ports in {67, 68}                ``msg_type`` (int, 1 = DISCOVER ... 8 =
                                                      INFORM, None for plain BOOTP),
                                                      ``hostname`` (opt 12), ``vendor_class``
                                                      (60), ``param_req_list`` (55, list of
                                                      int), ``requested_ip`` (50), ``client_mac``
                                                      (chaddr), ``yiaddr``, ``server_id`` (54);
                                                      ``fqdn`` (81) only when present
``dns``    UDP port 53                                ``queries`` (names), ``answers`` (list of
``mdns``   UDP port 5353                              ``{name, type, value}`` for A, AAAA, PTR,
                                                      CNAME, SRV (+ ``port``), TXT (value is a
                                                      list of strings) from the answer, authority
                                                      and additional sections), ``is_response``
``ssdp``   UDP port 1900                              ``method`` (``M-SEARCH``, ``NOTIFY`` or
                                                      ``RESPONSE``), ``server``, ``usn``,
                                                      ``location``, ``st``, ``nt``, ``user_agent``
                                                      (``User-Agent``, else ``X-User-Agent``)
``http``   TCP payload starting with an HTTP method   ``method``, ``uri``, ``host``, ``user_agent``
``tls``    TCP payload starting with a TLS handshake  ``sni`` (events only for ClientHellos that
           record (0x16 0x03) holding a ClientHello   carry a server_name)
=========  =========================================  ============================================

Text values are decoded as UTF-8 (invalid bytes replaced); absent optional values are None.
Packets that do not parse (truncated, fragmented, not the protocol the port suggests) are
skipped and counted in :class:`AppFieldStats`; nothing here raises on packet contents.
"""

from __future__ import annotations

import io
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.capture.app_wire import parse_dns, parse_tls_sni
from iotsentry.schema import AppEvent, PacketBatch, ip_to_str, mac_to_str

__all__ = ["KINDS", "AppFieldStats", "extract_app_events"]

KINDS = ("dhcp", "dns", "mdns", "ssdp", "http", "tls")
"""Event kinds produced, in the order candidates are classified."""

_HTTP_METHODS = (b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
_HTTP_PREFIXES = np.array([int.from_bytes((m + b" ")[:4], "big") for m in _HTTP_METHODS], dtype=np.uint32)
_HEAD = 6  # payload bytes looked at by the vectorised TCP classifier

_PARSE_ERRORS = (
    dpkt.Error,
    dpkt.ssl.SSL3Exception,
    struct.error,
    IndexError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
)

_DNS_TYPES = {
    dpkt.dns.DNS_A: "A",
    dpkt.dns.DNS_AAAA: "AAAA",
    dpkt.dns.DNS_PTR: "PTR",
    dpkt.dns.DNS_CNAME: "CNAME",
    dpkt.dns.DNS_SRV: "SRV",
    dpkt.dns.DNS_TXT: "TXT",
}


@dataclass
class AppFieldStats:
    """Counts per kind: candidate packets, events produced, and candidates that failed to parse."""

    candidates: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------------------------------------
# Candidate selection (vectorised)
# ---------------------------------------------------------------------------------------------


def _payload_bounds(batch: PacketBatch) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start and end (exclusive) of each row's captured L4 payload in ``batch.raw``."""
    assert batch.raw_off is not None
    frame_start = batch.raw_off[:-1].astype(np.int64)
    frame_end = batch.raw_off[1:].astype(np.int64)
    off = batch.payload_off.astype(np.int64)
    start = frame_start + off
    end = np.minimum(start + batch.payload_len.astype(np.int64), frame_end)
    empty = (off == 0) | (end <= start)
    end[empty] = start[empty]
    return start, end


def _candidates(
    batch: PacketBatch,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows worth parsing, their kinds, and the start and end of their payloads in ``batch.raw``.

    Only rows that carry raw bytes are looked at (a reader's raw filter leaves the others
    empty): a row without captured payload bytes is never a candidate.
    """
    if batch.raw is None or batch.raw_off is None:
        raise ValueError("extracting application fields needs a PacketBatch read with raw bytes")
    empty = np.zeros(0, np.int64)
    raw_off = batch.raw_off
    framed = np.flatnonzero((raw_off[1:] > raw_off[:-1]) & (batch.payload_off != 0))
    if not len(framed):
        return empty, np.zeros(0, np.int8), empty, empty
    frame_end = raw_off[1:][framed].astype(np.int64)
    start = raw_off[:-1][framed].astype(np.int64) + batch.payload_off[framed].astype(np.int64)
    end = np.minimum(start + batch.payload_len[framed].astype(np.int64), frame_end)
    has = end > start
    rows, start, end = framed[has], start[has], end[has]
    head = batch.raw[np.minimum(start[:, None] + np.arange(_HEAD), len(batch.raw) - 1)]
    kind = _kinds(
        batch.proto[rows], batch.frag[rows], batch.src_port[rows], batch.dst_port[rows], head, end - start
    )
    cand = kind >= 0
    return rows[cand], kind[cand], start[cand], end[cand]


def classify(batch: PacketBatch) -> npt.NDArray[np.int8]:
    """Kind of each row as an index into :data:`KINDS`, or -1 for rows not worth parsing.

    Uses only numpy operations on the columns and the first payload bytes.
    """
    kind = np.full(len(batch), -1, dtype=np.int8)
    rows, kinds, _, _ = _candidates(batch)
    kind[rows] = kinds
    return kind


def classify_head(
    batch: PacketBatch, head: npt.NDArray[np.uint8], avail: npt.NDArray[np.int64]
) -> npt.NDArray[np.int8]:
    """:func:`classify` from the columns, the first ``_HEAD`` payload bytes of each row
    (``head``, shape (n, _HEAD)) and the captured payload length (``avail``)."""
    return _kinds(batch.proto, batch.frag, batch.src_port, batch.dst_port, head, avail)


def _kinds(
    proto: npt.NDArray[np.uint8],
    frag: npt.NDArray[np.uint8],
    sp: npt.NDArray[np.uint16],
    dp: npt.NDArray[np.uint16],
    head: npt.NDArray[np.uint8],
    avail: npt.NDArray[np.int64],
) -> npt.NDArray[np.int8]:
    """:func:`classify_head` on columns (one element per row)."""
    n = len(proto)
    kind = np.full(n, -1, dtype=np.int8)
    if n == 0:
        return kind
    has = avail > 0
    nonfirst_frag = (frag & 2) != 0
    udp = (proto == 17) & has & ~nonfirst_frag
    tcp = (proto == 6) & has & ~nonfirst_frag

    def port(p: int) -> npt.NDArray[np.bool_]:
        return (sp == p) | (dp == p)

    dhcp_ports = ((sp == 67) | (sp == 68)) & ((dp == 67) | (dp == 68))
    kind[udp & port(1900)] = KINDS.index("ssdp")
    kind[udp & port(53)] = KINDS.index("dns")
    kind[udp & port(5353)] = KINDS.index("mdns")
    kind[udp & dhcp_ports] = KINDS.index("dhcp")

    rows = np.nonzero(tcp & (avail >= 4))[0]
    if len(rows):
        av = avail[rows]
        h = head[rows, :_HEAD].astype(np.uint32)
        h[np.arange(_HEAD)[None, :] >= av[:, None]] = 0
        first4 = (h[:, 0] << 24) | (h[:, 1] << 16) | (h[:, 2] << 8) | h[:, 3]
        http = np.isin(first4, _HTTP_PREFIXES)
        tls = (h[:, 0] == 0x16) & (h[:, 1] == 0x03) & (h[:, 5] == 0x01) & (av >= _HEAD)
        kind[rows[http]] = KINDS.index("http")
        kind[rows[tls]] = KINDS.index("tls")
    return kind


def keep_raw_for_app_fields(
    batch: PacketBatch, head: npt.NDArray[np.uint8], avail: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """A reader raw-bytes filter: keep only frames that :func:`extract_app_events` parses."""
    return classify_head(batch, head, avail) >= 0


# ---------------------------------------------------------------------------------------------
# Parsers (one payload each; raise one of _PARSE_ERRORS on damage)
# ---------------------------------------------------------------------------------------------


def _text(b: bytes) -> str:
    return b.rstrip(b"\x00").decode("utf-8", "replace")


def _ipv4(b: bytes) -> str:
    if len(b) != 4:
        raise ValueError("IPv4 option of wrong length")
    return str(ipaddress.IPv4Address(b))


def _dhcp_fqdn(data: bytes) -> str:
    """Option 81 (RFC 4702): flags, two rcodes, then the name (DNS wire format if E is set)."""
    flags, name = data[0], data[3:]
    if flags & 0x04:
        labels: list[str] = []
        i = 0
        while i < len(name) and name[i]:
            n = name[i]
            labels.append(_text(name[i + 1 : i + 1 + n]))
            i += 1 + n
        return ".".join(labels)
    return _text(name).rstrip(".")


def parse_dhcp(payload: bytes) -> dict[str, Any]:
    """DHCP/BOOTP fields of one UDP payload (see the module docstring)."""
    d = dpkt.dhcp.DHCP(payload)
    if d.magic != dpkt.dhcp.DHCP_MAGIC:
        raise ValueError("no DHCP magic cookie")
    opts: dict[int, bytes] = {}
    for code, data in d.opts:
        opts.setdefault(code, bytes(data))
    chaddr = bytes(d.chaddr)
    mt = opts.get(dpkt.dhcp.DHCP_OPT_MSGTYPE)
    out: dict[str, Any] = {
        "msg_type": mt[0] if mt else None,
        "hostname": _text(opts[12]) if 12 in opts else None,
        "vendor_class": _text(opts[60]) if 60 in opts else None,
        "param_req_list": list(opts[55]) if 55 in opts else None,
        "requested_ip": _ipv4(opts[50]) if 50 in opts else None,
        "client_mac": mac_to_str(int.from_bytes(chaddr[:6], "big")) if len(chaddr) >= 6 else chaddr.hex(),
        "yiaddr": str(ipaddress.IPv4Address(d.yiaddr)),
        "server_id": _ipv4(opts[54]) if 54 in opts else None,
    }
    if 81 in opts and len(opts[81]) >= 3:
        out["fqdn"] = _dhcp_fqdn(opts[81])
    return out


class _DNS(dpkt.dns.DNS):  # type: ignore[misc]
    """dpkt's DNS, but keeping records of types dpkt cannot decode (e.g. mDNS NSEC) as raw."""

    def unpack_rr(self, buf: bytes, off: int) -> tuple[Any, int]:
        rr = self.RR()
        rr.name, off = dpkt.dns.unpack_name(buf, off)
        rr.type, rr.cls, rr.ttl, rdlen = struct.unpack(">HHIH", buf[off : off + 10])
        off += 10
        rr.rdata = buf[off : off + rdlen]
        rr.rlen = rdlen
        if len(rr.rdata) != rdlen:
            raise dpkt.NeedData("DNS record runs past the end of the packet")
        if rr.type in _DNS_TYPES:
            rr.unpack_rdata(buf, off)
        return rr, off + rdlen


def _dns_answer(rr: Any) -> dict[str, Any] | None:
    t = _DNS_TYPES.get(rr.type)
    if t is None:
        return None
    ans: dict[str, Any] = {"name": rr.name, "type": t}
    if t == "A":
        ans["value"] = _ipv4(rr.ip)
    elif t == "AAAA":
        ans["value"] = str(ipaddress.IPv6Address(rr.ip6))
    elif t == "PTR":
        ans["value"] = rr.ptrname
    elif t == "CNAME":
        ans["value"] = rr.cname
    elif t == "SRV":
        ans["value"] = rr.srvname
        ans["port"] = int(rr.port)
    else:
        ans["value"] = list(rr.text)
    return ans


def parse_dns_dpkt(payload: bytes) -> dict[str, Any]:
    """DNS/mDNS names of one UDP payload (see the module docstring), read with dpkt.

    The reference for :func:`iotsentry.capture.app_wire.parse_dns`, which is used instead.
    """
    d = _DNS(payload)
    answers = []
    for rr in [*d.an, *d.ns, *d.ar]:
        ans = _dns_answer(rr)
        if ans is not None:
            answers.append(ans)
    return {
        "queries": [q.name for q in d.qd],
        "answers": answers,
        "is_response": bool(d.qr == dpkt.dns.DNS_R),
    }


def parse_dns_partial(payload: bytes) -> dict[str, Any] | None:
    """The complete records of a DNS message cut short by the capture's snap length.

    Header, questions and then answer records are read in order until one runs past the captured
    bytes; what was read whole is returned with ``truncated: True`` (a headers-only sensor still
    sees the queries, and the first answers of short responses). ``None`` when not even the
    header and the questions are complete.
    """
    if len(payload) < 12:
        return None
    _id, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", payload[:12])
    off = 12
    queries: list[str] = []
    try:
        for _ in range(qd):
            name, off = dpkt.dns.unpack_name(payload, off)
            if off + 4 > len(payload):
                return None
            off += 4
            queries.append(name)
    except (dpkt.UnpackError, IndexError, struct.error, ValueError):  # ValueError: name not UTF-8
        return None
    answers: list[dict[str, Any]] = []
    d = _DNS()
    for _ in range(an + ns + ar):
        try:
            rr, off = d.unpack_rr(payload, off)
        except (dpkt.UnpackError, dpkt.NeedData, IndexError, struct.error, ValueError):
            break
        ans = _dns_answer(rr)
        if ans is not None:
            answers.append(ans)
    return {
        "queries": queries,
        "answers": answers,
        "is_response": bool(flags & 0x8000),
        "truncated": True,
    }


def _headers(payload: bytes) -> tuple[list[str], dict[str, str]]:
    """Start line (split in three) and lower-cased headers (first value of repeated ones)."""
    first, sep, rest = payload.partition(b"\n")
    if not sep:
        raise ValueError("no header lines")
    start = first.rstrip(b"\r").decode("ascii").split(" ", 2)
    if len(start) != 3:
        raise ValueError("bad start line")
    raw = dpkt.http.parse_headers(io.BytesIO(rest))
    headers = {k: (v[0] if isinstance(v, list) else v) for k, v in raw.items()}
    return start, headers


def parse_ssdp(payload: bytes) -> dict[str, Any]:
    """SSDP (HTTP over UDP) start line and headers of one UDP payload."""
    start, h = _headers(payload)
    if start[0].startswith("HTTP/"):
        method = "RESPONSE"
    elif start[2].startswith("HTTP/"):
        method = start[0]
    else:
        raise ValueError("not an SSDP message")
    return {
        "method": method,
        "server": h.get("server"),
        "usn": h.get("usn"),
        "location": h.get("location"),
        "st": h.get("st"),
        "nt": h.get("nt"),
        "user_agent": h.get("user-agent") or h.get("x-user-agent"),
    }


def parse_http(payload: bytes) -> dict[str, Any]:
    """Request line, Host and User-Agent of an HTTP request at the start of a TCP payload."""
    start, h = _headers(payload)
    if start[0].encode() not in _HTTP_METHODS or not start[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request")
    return {"method": start[0], "uri": start[1], "host": h.get("host"), "user_agent": h.get("user-agent")}


def parse_tls_sni_dpkt(payload: bytes) -> dict[str, Any] | None:
    """Server name of a TLS ClientHello at the start of a TCP payload (None when it has none),
    read with dpkt: the reference for :func:`iotsentry.capture.app_wire.parse_tls_sni`."""
    rec = dpkt.ssl.TLSRecord(payload)
    if rec.type != 22:
        raise ValueError("not a handshake record")
    hs = dpkt.ssl.TLSHandshake(rec.data)
    if hs.type != 1:
        raise ValueError("not a ClientHello")
    for ext_type, data in getattr(hs.data, "extensions", []):
        if ext_type != 0:
            continue
        names, _ = dpkt.ssl.parse_variable_array(data, 2)
        i = 0
        while i + 3 <= len(names):
            name_type = names[i]
            name, used = dpkt.ssl.parse_variable_array(names[i + 1 :], 2)
            if name_type == 0:
                return {"sni": name.decode("ascii", "replace")}
            i += 1 + used
    return None


_PARSERS: dict[str, Callable[[bytes], dict[str, Any] | None]] = {
    "dhcp": parse_dhcp,
    "dns": parse_dns,
    "mdns": parse_dns,
    "ssdp": parse_ssdp,
    "http": parse_http,
    "tls": parse_tls_sni,
}
_DNS_KIND = np.array([k in ("dns", "mdns") for k in KINDS])
_KIND_NAMES = np.array(KINDS, dtype=object)

_CACHE_SIZE = 65536
_MISSING: Any = object()
_MALFORMED: Any = {"malformed": True}
_CACHE: dict[tuple[str, bool, bytes], Any] = {}
"""Parsed fields of recently seen payloads, by (kind, cut by the snap length, payload; for DNS
without its 2-byte transaction id, which the fields do not hold). Events share these dicts:
treat them as read-only. Emptied when full."""


def _parse(kind: str, cut: bool, payload: bytes) -> Any:
    """The fields of one payload, ``None`` (nothing to report) or ``_MALFORMED``."""
    try:
        return _PARSERS[kind](payload)
    except _PARSE_ERRORS:
        if cut and kind in ("dns", "mdns"):
            # cut by the snap length: keep the records captured whole
            return parse_dns_partial(payload) or _MALFORMED
        return _MALFORMED


def _group_payloads(
    blob: bytes,
    kind: npt.NDArray[np.int8],
    cut: npt.NDArray[np.bool_],
    key_start: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], list[tuple[str, bool, bytes]]]:
    """Candidates grouped by cache key: the group of each candidate and the key of each group
    (``blob[key_start:end]`` is a candidate's keyed payload bytes)."""
    code = kind.astype(np.int64) * 2 + cut
    gid = np.empty(len(code), np.int64)
    keys: list[tuple[str, bool, bytes]] = []
    for c in np.unique(code).tolist():
        sel = np.flatnonzero(code == c)
        seen: dict[bytes, int] = {}
        spans = zip(key_start[sel].tolist(), end[sel].tolist(), strict=True)
        local = [seen.setdefault(blob[a:b], len(seen)) for a, b in spans]
        gid[sel] = np.asarray(local, dtype=np.int64) + len(keys)
        k, ct = KINDS[c >> 1], bool(c & 1)
        keys.extend((k, ct, b) for b in seen)
    return gid, keys


def _status(fields: Any) -> int:
    return _NOTHING if fields is None else _BAD if fields is _MALFORMED else _EVENT


_EVENT, _NOTHING, _BAD = 0, 1, 2


def _fields_of_rows(
    blob: bytes,
    gid: npt.NDArray[np.int64],
    keys: list[tuple[str, bool, bytes]],
    start: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.int8]]:
    """The fields of each candidate through :data:`_CACHE`, and whether each makes an event
    (``_EVENT``), has nothing to report (``_NOTHING``: fields None) or is malformed (``_BAD``).

    Reads, parses and stores exactly as a walk over the candidates in frame order would: each
    key missing from the cache is parsed from its first candidate's payload, in order of first
    appearance. Only when the cache would fill up within the batch (and so be emptied part-way,
    after which a repeated payload is parsed again into a new dict) is that walk done as such.
    """
    _, first = np.unique(gid, return_index=True)
    order = np.argsort(first, kind="stable").tolist()
    found = [_CACHE.get(keys[g], _MISSING) for g in order]
    missing = sum(1 for f in found if f is _MISSING)
    if len(_CACHE) + missing <= _CACHE_SIZE:
        fields = np.empty(len(keys), dtype=object)
        status = np.empty(len(keys), dtype=np.int8)
        for g, got in zip(order, found, strict=True):
            if got is _MISSING:
                r = int(first[g])
                key = keys[g]
                got = _parse(key[0], key[1], blob[start[r] : end[r]])
                _CACHE[key] = got
            fields[g] = got
            status[g] = _status(got)
        return fields[gid], status[gid]
    out = np.empty(len(gid), dtype=object)
    out_status = np.empty(len(gid), dtype=np.int8)
    starts, ends = start.tolist(), end.tolist()
    for j, g in enumerate(gid.tolist()):
        key = keys[g]
        got = _CACHE.get(key, _MISSING)
        if got is _MISSING:
            got = _parse(key[0], key[1], blob[starts[j] : ends[j]])
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.clear()
            _CACHE[key] = got
        out[j] = got
        out_status[j] = _status(got)
    return out, out_status


def _ip_texts(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> list[str]:
    """``ip_to_str`` of each (hi, lo) row, formatting each distinct address once."""
    n = len(hi)
    if n == 0:
        return []
    order = np.lexsort((lo, hi))
    hs, ls = hi[order], lo[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = (hs[1:] != hs[:-1]) | (ls[1:] != ls[:-1])
    distinct = zip(hs[new].tolist(), ls[new].tolist(), strict=True)
    texts = np.array([ip_to_str(h, lo_) for h, lo_ in distinct], dtype=object)
    out = np.empty(n, dtype=object)
    out[order] = texts[np.cumsum(new) - 1]
    return out.tolist()  # type: ignore[no-any-return]


def _count(counter: Counter[str], kinds: npt.NDArray[np.int8]) -> None:
    """Add one per row to ``counter[KINDS[kind]]``, kinds in order of first appearance."""
    if not len(kinds):
        return
    u, first, n = np.unique(kinds, return_index=True, return_counts=True)
    for i in np.argsort(first, kind="stable").tolist():
        counter[KINDS[int(u[i])]] += int(n[i])


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def extract_app_events(batch: PacketBatch, stats: AppFieldStats | None = None) -> list[AppEvent]:
    """Application events (DHCP, DNS, mDNS, SSDP, HTTP, TLS SNI) of a batch, in frame order.

    Devices repeat themselves (announcements, polls, lookups): candidates are grouped by
    payload and each distinct payload is parsed once; events of the same payload share one
    ``fields`` dict (also across batches, through a bounded cache).

    Parameters
    ----------
    batch
        Packets read with raw frame bytes (``batch.raw``/``batch.raw_off``).
    stats
        If given, candidate/event/malformed counts per kind are added to it.

    Returns
    -------
    list of AppEvent
        One event per successfully parsed candidate packet (TLS: per ClientHello with SNI).

    Raises
    ------
    ValueError
        If the batch carries no raw bytes (a programming error, not bad input).
    """
    rows, kr, s, e = _candidates(batch)
    if not len(rows):
        return []
    assert batch.raw is not None
    cut = batch.cap_len[rows] < batch.wire_len[rows]
    blob = batch.raw.tobytes()
    # DNS: the 2-byte transaction id is left out of the key (the fields do not hold it)
    gid, keys = _group_payloads(blob, kr, cut, np.minimum(s + 2 * _DNS_KIND[kr], e), e)
    fields, status = _fields_of_rows(blob, gid, keys, s, e)
    keep = status == _EVENT
    if stats is not None:
        _count(stats.candidates, kr)
        _count(stats.malformed, kr[status == _BAD])
        _count(stats.events, kr[keep])
    if not keep.all():
        rows, kr, fields = rows[keep], kr[keep], fields[keep]
    ips = _ip_texts(
        np.concatenate([batch.src_ip_hi[rows], batch.dst_ip_hi[rows]]),
        np.concatenate([batch.src_ip_lo[rows], batch.dst_ip_lo[rows]]),
    )
    n = len(rows)
    return list(
        map(
            AppEvent,
            batch.index[rows].tolist(),
            batch.ts[rows].tolist(),
            _KIND_NAMES[kr].tolist(),
            batch.src_mac[rows].tolist(),
            batch.dst_mac[rows].tolist(),
            ips[:n],
            ips[n:],
            fields.tolist(),
        )
    )
