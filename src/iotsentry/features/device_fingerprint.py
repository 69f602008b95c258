"""Device-type fingerprints of a device's setup traffic (IoT SENTINEL style, extended).

:func:`fingerprint` turns the packets a device sends or receives into one fixed-length
``float64`` vector made of three blocks (:func:`feature_names` lists every column):

1. **Per-packet header features** of the first ``n_first`` packets (IoT SENTINEL's 23
   features plus direction and a presence flag), ``n_first`` slots of :data:`PACKET_FEATURES`:
   link layer (ARP, LLC), network (IP, ICMP, ICMPv6, EAPoL = EtherType 0x888E), transport
   (TCP, UDP), application by port (HTTP, HTTPS, DHCP, BOOTP, SSDP, DNS, mDNS, NTP), IP options
   (padding, router alert; need raw bytes), packet size (frame length), raw data (L4 payload
   present), destination IP counter (1-based rank of the destination address in order of first
   appearance), source/destination port class (0 none, 1 well-known < 1024, 2 registered
   < 49152, 3 dynamic), direction (1 sent by the device, 0 received) and ``present`` (0 for
   the padding slots of captures with fewer packets). With ``dedupe=True`` consecutive packets
   with identical header features are collapsed first, as IoT SENTINEL does.
2. **Capture-wide counts and distributions** (:data:`CAPTURE_FEATURES` and the hashed
   service-port shares): packets, bytes, duration, protocol shares and presence, distinct peers
   and ports, frame-size and inter-arrival quantiles, direction ratios, broadcast/multicast and
   IPv6 shares, the initial TTL class of the device's IPv4 packets, TCP flag counts.
3. **Application fields** (from :func:`iotsentry.capture.appfields.extract_app_events`):
   DHCP parameter request list, vendor class and host name, DNS/TLS/HTTP names, mDNS service
   types, HTTP User-Agent and SSDP SERVER strings, each hashed (CRC-32, stable across runs)
   into a few buckets. All zero when no events are available.

What is deliberately **not** a feature, because it identifies the physical unit or the capture
session rather than the type and would not generalise to another unit of the same type: the
MAC address and its OUI (in IoT SENTINEL data every folder has its own MAC, so the MAC is the
label), IP address values (DHCP leases follow the MAC), absolute timestamps (the setups of one
folder were captured on the same days). Every hashed name has runs of 6+ hex digits and 5+
decimal digits replaced by ``#`` first, so MAC suffixes and serial numbers in names
(``ESP_07AEFB``, ``GainSpanca9152``, ``KEQ0817541``) do not tell two units apart, while model
names (``HS110(EU)``, ``DCS-935L``) -- the same for every unit of a type -- stay features.
``use_hostname=False`` drops the DHCP host name (on IoT SENTINEL it is what separates
TP-Link HS100 from HS110 and the D-Link sensor family).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from iotsentry.capture.appfields import extract_app_events
from iotsentry.schema import AppEvent, PacketBatch

__all__ = [
    "CAPTURE_FEATURES",
    "PACKET_FEATURES",
    "device_rows",
    "feature_names",
    "fingerprint",
    "packet_features",
]

PACKET_FEATURES: tuple[str, ...] = (
    "arp",
    "llc",
    "ip",
    "icmp",
    "icmpv6",
    "eapol",
    "tcp",
    "udp",
    "http",
    "https",
    "dhcp",
    "bootp",
    "ssdp",
    "dns",
    "mdns",
    "ntp",
    "ip_padding",
    "ip_router_alert",
    "size",
    "raw_data",
    "dst_ip_counter",
    "src_port_class",
    "dst_port_class",
    "direction",
    "present",
)
"""Per-packet features (one block per slot of the first ``n_first`` packets)."""

_PROTO_FLAGS = PACKET_FEATURES[:16]  # arp .. ntp: the protocol indicator columns

CAPTURE_FEATURES: tuple[str, ...] = (
    "log_packets",
    "log_bytes",
    "log_duration",
    "log_rate",
    *(f"share_{p}" for p in _PROTO_FLAGS),
    *(f"has_{p}" for p in ("dhcp", "dns", "mdns", "ssdp", "eapol", "arp", "ntp", "http", "https")),
    "share_ipv6",
    "share_broadcast",
    "share_multicast",
    "share_sent_packets",
    "share_sent_bytes",
    "log_remote_ips_sent",
    "log_remote_ips_received",
    "log_peer_macs",
    "log_remote_tcp_ports",
    "log_remote_udp_ports",
    "log_local_ports",
    *(f"size_q{q}" for q in (10, 25, 50, 75, 90)),
    "size_mean_sent",
    "size_mean_received",
    *(f"log_iat_ms_q{q}" for q in (10, 25, 50, 75, 90)),
    "ttl_initial_sent",
    "log_tcp_syn_sent",
    "share_tcp_rst",
    "log_tcp_fin",
    "log_arp_requests_sent",
    "log_eapol_frames",
)
"""Capture-wide features (before the hashed service-port shares)."""

N_PORT_BUCKETS = 16
_N_PRL = 16
_N_VENDOR = 8
_N_NAMES = 16
_N_MDNS = 8
_N_UA = 8
_N_SSDP = 8
_N_HOST = 16
_APP_SCALARS = ("dhcp_prl_len", "dhcp_has_vendor_class", "dhcp_has_hostname", "log_names")

_SIZE_Q = (10, 25, 50, 75, 90)
_BCAST = np.uint64(0xFFFF_FFFF_FFFF)
_MCAST_BIT = np.uint64(0x0100_0000_0000)
_SERIAL = re.compile(r"[0-9a-f]{6,}|\d{5,}", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _app_names() -> tuple[str, ...]:
    return (
        *(f"dhcp_prl_b{i}" for i in range(_N_PRL)),
        *(f"dhcp_vendor_b{i}" for i in range(_N_VENDOR)),
        *(f"dhcp_hostname_b{i}" for i in range(_N_HOST)),
        *(f"name_b{i}" for i in range(_N_NAMES)),
        *(f"mdns_service_b{i}" for i in range(_N_MDNS)),
        *(f"http_ua_b{i}" for i in range(_N_UA)),
        *(f"ssdp_server_b{i}" for i in range(_N_SSDP)),
        *_APP_SCALARS,
    )


def feature_names(n_first: int = 12) -> list[str]:
    """Column names of :func:`fingerprint` for the same ``n_first``, in order."""
    names = [f"p{k}_{f}" for k in range(n_first) for f in PACKET_FEATURES]
    names += list(CAPTURE_FEATURES)
    names += [f"port_share_b{i}" for i in range(N_PORT_BUCKETS)]
    names += list(_app_names())
    return names


# ---------------------------------------------------------------------------------------------
# Per-packet header features
# ---------------------------------------------------------------------------------------------


def device_rows(batch: PacketBatch, device_mac: int) -> npt.NDArray[np.int64]:
    """Rows of ``batch`` sent or received by ``device_mac`` (Ethernet source or destination)."""
    m = np.uint64(device_mac)
    return np.nonzero((batch.src_mac == m) | (batch.dst_mac == m))[0]


def _port_class(p: npt.NDArray[np.uint16], has_ports: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    cls = np.where(p < 1024, 1.0, np.where(p < 49152, 2.0, 3.0))
    return np.where(has_ports, cls, 0.0)


def _either(
    sp: npt.NDArray[np.uint16], dp: npt.NDArray[np.uint16], ports: Sequence[int]
) -> npt.NDArray[np.bool_]:
    return np.isin(sp, ports) | np.isin(dp, ports)


def _ip_options(frame: bytes) -> tuple[float, float]:
    """(padding, router alert) from an Ethernet frame's IPv4 options or IPv6 hop-by-hop header."""
    off = 12
    et = int.from_bytes(frame[off : off + 2], "big") if len(frame) >= 14 else 0
    while et in (0x8100, 0x88A8, 0x9100) and len(frame) >= off + 6:
        off += 4
        et = int.from_bytes(frame[off : off + 2], "big")
    l3 = off + 2
    if et == 0x0800 and len(frame) > l3:
        ihl = (frame[l3] & 0x0F) * 4
        opts = frame[l3 + 20 : l3 + ihl]
        pad = ra = 0.0
        i = 0
        while i < len(opts):
            t = opts[i]
            if t in (0, 1):  # end of list / no-operation: padding
                pad = 1.0
                i += 1
                continue
            if t == 0x94:
                ra = 1.0
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            i += opts[i + 1]
        return pad, ra
    if et == 0x86DD and len(frame) >= l3 + 42 and frame[l3 + 6] == 0:  # hop-by-hop options
        hbh = frame[l3 + 40 : l3 + 40 + (frame[l3 + 41] + 1) * 8]
        pad = ra = 0.0
        i = 2
        while i < len(hbh):
            t = hbh[i]
            if t in (0, 1):  # Pad1 / PadN
                pad = 1.0
            if t == 5:
                ra = 1.0
            if t == 0:
                i += 1
                continue
            if i + 1 >= len(hbh):
                break
            i += 2 + hbh[i + 1]
        return pad, ra
    return 0.0, 0.0


def packet_features(batch: PacketBatch, device_mac: int) -> npt.NDArray[np.float64]:
    """:data:`PACKET_FEATURES` of every row of ``batch`` (one row per packet, in order).

    ``batch`` should hold only the device's packets (see :func:`device_rows`); direction is
    relative to ``device_mac``. IP options and the LLC flag of SNAP frames need raw bytes.
    """
    n = len(batch)
    out = np.zeros((n, len(PACKET_FEATURES)), dtype=np.float64)
    if n == 0:
        return out
    col = {f: k for k, f in enumerate(PACKET_FEATURES)}
    et, proto, ipv = batch.ethertype, batch.proto, batch.ip_version
    sp, dp = batch.src_port, batch.dst_port
    tcp = (proto == 6) & (ipv > 0)
    udp = (proto == 17) & (ipv > 0)
    llc = et == 0
    if batch.raw is not None and batch.raw_off is not None:
        starts = batch.raw_off[:-1]
        ok = (batch.raw_off[1:] - starts) >= 14
        lenfield = np.zeros(n, dtype=np.int64)
        lenfield[ok] = batch.raw[starts[ok] + 12].astype(np.int64) * 256 + batch.raw[starts[ok] + 13]
        llc = llc | (ok & (lenfield < 0x0600))
    bootp = udp & np.isin(sp, (67, 68)) & np.isin(dp, (67, 68))
    dhcp = bootp & (batch.payload_len >= 244)  # BOOTP (236) + magic cookie + at least one option
    flags = {
        "arp": et == 0x0806,
        "llc": llc,
        "ip": ipv > 0,
        "icmp": (proto == 1) & (ipv == 4),
        "icmpv6": (proto == 58) & (ipv == 6),
        "eapol": et == 0x888E,
        "tcp": tcp,
        "udp": udp,
        "http": tcp & _either(sp, dp, (80, 8080, 8008, 8000)),
        "https": tcp & _either(sp, dp, (443, 8443)),
        "dhcp": dhcp,
        "bootp": bootp,
        "ssdp": udp & _either(sp, dp, (1900,)),
        "dns": udp & _either(sp, dp, (53,)),
        "mdns": udp & _either(sp, dp, (5353,)),
        "ntp": udp & _either(sp, dp, (123,)),
    }
    for name, mask in flags.items():
        out[:, col[name]] = mask
    out[:, col["size"]] = batch.wire_len
    out[:, col["raw_data"]] = batch.payload_len > 0
    # destination IP counter: rank of the destination address in order of first appearance
    has_ip = np.nonzero((ipv > 0) | (et == 0x0806))[0]
    if len(has_ip):
        key = np.stack([batch.dst_ip_hi[has_ip], batch.dst_ip_lo[has_ip]], axis=1)
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # order of first appearance of each distinct address
        out[has_ip, col["dst_ip_counter"]] = rank[inv.ravel()] + 1
    has_ports = tcp | udp
    out[:, col["src_port_class"]] = _port_class(sp, has_ports)
    out[:, col["dst_port_class"]] = _port_class(dp, has_ports)
    out[:, col["direction"]] = batch.src_mac == np.uint64(device_mac)
    out[:, col["present"]] = 1.0
    if batch.raw is not None:
        for i in np.nonzero(ipv > 0)[0].tolist():
            pad, ra = _ip_options(batch.frame(i))
            out[i, col["ip_padding"]] = pad
            out[i, col["ip_router_alert"]] = ra
    return out


# ---------------------------------------------------------------------------------------------
# Capture-wide features
# ---------------------------------------------------------------------------------------------


def _log_distinct(*cols: npt.NDArray[np.uint64] | npt.NDArray[np.uint16]) -> float:
    if len(cols[0]) == 0:
        return 0.0
    return float(np.log1p(len(np.unique(np.stack(cols, axis=1), axis=0))))


def _port_bucket(p: npt.NDArray[np.uint16]) -> npt.NDArray[np.int64]:
    return (
        (p.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32) % np.uint64(N_PORT_BUCKETS)
    ).astype(np.int64)


def _capture_features(batch: PacketBatch, pf: npt.NDArray[np.float64], device_mac: int) -> list[float]:
    n = len(batch)
    col = {f: k for k, f in enumerate(PACKET_FEATURES)}
    sent = batch.src_mac == np.uint64(device_mac)
    size = batch.wire_len.astype(np.float64)
    ts = np.sort(batch.ts)
    duration = float(ts[-1] - ts[0]) if n else 0.0
    total = float(size.sum())
    v: list[float] = [
        float(np.log1p(n)),
        float(np.log1p(total)),
        float(np.log1p(duration)),
        float(np.log1p(n / duration)) if duration > 0 else 0.0,
    ]
    share = pf[:, : len(_PROTO_FLAGS)].mean(axis=0) if n else np.zeros(len(_PROTO_FLAGS))
    v += share.tolist()
    v += [
        float(share[col[p]] > 0)
        for p in ("dhcp", "dns", "mdns", "ssdp", "eapol", "arp", "ntp", "http", "https")
    ]
    peer_mac = np.where(sent, batch.dst_mac, batch.src_mac)
    v += [
        float(np.mean(batch.ip_version == 6)) if n else 0.0,
        float(np.mean(batch.dst_mac == _BCAST)) if n else 0.0,
        float(np.mean((batch.dst_mac & _MCAST_BIT) != 0)) if n else 0.0,
        float(np.mean(sent)) if n else 0.0,
        float(size[sent].sum() / total) if total > 0 else 0.0,
    ]
    ip = batch.ip_version > 0
    tcp = ip & (batch.proto == 6)
    udp = ip & (batch.proto == 17)
    s_ip, r_ip = sent & ip, ~sent & ip
    remote_port = np.where(sent, batch.dst_port, batch.src_port)
    local_port = np.where(sent, batch.src_port, batch.dst_port)
    v += [
        _log_distinct(batch.dst_ip_hi[s_ip], batch.dst_ip_lo[s_ip]),
        _log_distinct(batch.src_ip_hi[r_ip], batch.src_ip_lo[r_ip]),
        _log_distinct(peer_mac),
        _log_distinct(remote_port[tcp]),
        _log_distinct(remote_port[udp]),
        _log_distinct(local_port[tcp | udp]),
    ]
    v += np.percentile(size, _SIZE_Q).tolist() if n else [0.0] * len(_SIZE_Q)
    v += [
        float(size[sent].mean()) if sent.any() else 0.0,
        float(size[~sent].mean()) if (~sent).any() else 0.0,
    ]
    iat = np.diff(ts) * 1000.0
    v += np.log1p(np.percentile(iat, _SIZE_Q)).tolist() if len(iat) else [0.0] * len(_SIZE_Q)
    ttl4 = batch.ttl[sent & (batch.ip_version == 4)]
    if len(ttl4):
        t = int(np.bincount(ttl4).argmax())
        v.append(float(next(c for c in (32, 64, 128, 255) if t <= c)))
    else:
        v.append(0.0)
    fl = batch.tcp_flags
    v += [
        float(np.log1p(np.sum(sent & tcp & ((fl & 0x12) == 0x02)))),
        float(np.mean((fl[tcp] & 0x04) != 0)) if tcp.any() else 0.0,
        float(np.log1p(np.sum(tcp & ((fl & 0x01) != 0)))),
        float(np.log1p(np.sum(sent & (batch.ethertype == 0x0806) & (batch.arp_op == 1)))),
        float(np.log1p(np.sum(batch.ethertype == 0x888E))),
    ]
    # shares of packets per hashed service port (the lower of the two ports of TCP/UDP packets)
    ports = np.zeros(N_PORT_BUCKETS)
    tu = tcp | udp
    if tu.any():
        svc = np.minimum(batch.src_port[tu], batch.dst_port[tu])
        ports = np.bincount(_port_bucket(svc), minlength=N_PORT_BUCKETS) / n
    v += ports.tolist()
    return v


# ---------------------------------------------------------------------------------------------
# Application fields
# ---------------------------------------------------------------------------------------------


def _bucket(text: str, k: int) -> int:
    return zlib.crc32(_SERIAL.sub("#", text.strip().lower()).encode("utf-8", "replace")) % k


def _hashed(values: Iterable[str], k: int) -> list[float]:
    b = [0.0] * k
    for s in values:
        if s:
            b[_bucket(s, k)] = 1.0
    return b


def _app_features(events: Sequence[AppEvent], device_mac: int, use_hostname: bool) -> list[float]:
    prl: set[int] = set()
    vendor: set[str] = set()
    names: set[str] = set()
    mdns: set[str] = set()
    ua: set[str] = set()
    ssdp: set[str] = set()
    host: set[str] = set()
    for e in events:
        if e.src_mac != device_mac and e.dst_mac != device_mac:
            continue
        f = e.fields
        sent = e.src_mac == device_mac
        if e.kind == "dhcp" and sent:
            prl.update(int(o) for o in f.get("param_req_list") or ())
            if f.get("vendor_class"):
                vendor.add(str(f["vendor_class"]))
            if f.get("hostname"):
                host.add(str(f["hostname"]))
        elif e.kind == "dns" and sent:
            names.update(str(q) for q in f.get("queries") or ())
        elif e.kind == "mdns":
            mdns.update(str(q) for q in f.get("queries") or () if str(q).startswith("_"))
        elif e.kind == "tls" and sent and f.get("sni"):
            names.add(str(f["sni"]))
        elif e.kind == "http" and sent:
            if f.get("host"):
                names.add(str(f["host"]).split(":")[0])
            if f.get("user_agent"):
                ua.add(str(f["user_agent"]))
        elif e.kind == "ssdp" and sent and f.get("server"):
            ssdp.add(str(f["server"]))
    v = [0.0] * _N_PRL
    for o in prl:
        v[(o * 2654435761) % 2**32 % _N_PRL] = 1.0
    v += _hashed(vendor, _N_VENDOR)
    v += _hashed(host, _N_HOST) if use_hostname else [0.0] * _N_HOST
    v += _hashed(names, _N_NAMES)
    v += _hashed(mdns, _N_MDNS)
    v += _hashed(ua, _N_UA)
    v += _hashed(ssdp, _N_SSDP)
    v += [float(len(prl)), float(bool(vendor)), float(bool(host)), float(np.log1p(len(names)))]
    return v


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def fingerprint(
    batch: PacketBatch,
    device_mac: int,
    n_first: int = 12,
    events: Sequence[AppEvent] | None = None,
    *,
    dedupe: bool = False,
    use_hostname: bool = True,
) -> npt.NDArray[np.float64]:
    """The fingerprint of one device's traffic in ``batch``.

    Parameters
    ----------
    batch
        Packets of a capture (rows of other devices are ignored). Read it with
        ``with_raw=True`` for the IP-option and application-field features.
    device_mac
        The device's 48-bit MAC; only used to select and orient its packets, never a feature.
    n_first
        Number of leading packets described one by one.
    events
        Application events of ``batch``; None extracts them when ``batch`` carries raw bytes
        (pass ``[]`` to leave the application block at zero).
    dedupe
        Collapse consecutive packets with identical header features before taking the first
        ``n_first`` (IoT SENTINEL's rule); the capture-wide block always uses every packet.
    use_hostname
        Include the (serial-stripped, hashed) DHCP host name.

    Returns
    -------
    numpy.ndarray
        ``float64`` vector of ``len(feature_names(n_first))`` finite values.
    """
    rows = device_rows(batch, device_mac)
    dev = batch.take(rows) if len(rows) != len(batch) else batch
    order = np.argsort(dev.ts, kind="stable")
    if not np.array_equal(order, np.arange(len(dev))):
        dev = dev.take(order)
    pf = packet_features(dev, device_mac)
    lead = pf
    if dedupe and len(pf) > 1:
        keep = np.ones(len(pf), dtype=bool)
        keep[1:] = np.any(pf[1:] != pf[:-1], axis=1)
        lead = pf[keep]
    block = np.zeros((n_first, len(PACKET_FEATURES)))
    m = min(n_first, len(lead))
    block[:m] = lead[:m]
    if events is None:
        events = extract_app_events(dev) if batch.raw is not None else []
    vec = np.concatenate(
        [
            block.ravel(),
            np.asarray(_capture_features(dev, pf, device_mac)),
            np.asarray(_app_features(events, device_mac, use_hostname)),
        ]
    )
    return np.nan_to_num(vec.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
