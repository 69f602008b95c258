"""Typed records shared by every stage of iotsentry.

Everything that crosses a stage boundary is one of these:

* :class:`PacketBatch` -- columnar packets (numpy arrays, one row per frame), optionally
  carrying the raw frame bytes for the few packets that application parsers look at.
* :class:`FlowBatch` -- columnar bidirectional flows (from the flow meter, Zeek conn logs or
  flow CSVs), with optional string columns (uid, conn_state, label, ...).
* :class:`AppEvent` -- an application field seen in one packet (DHCP hostname, DNS answer,
  SSDP SERVER, HTTP User-Agent, TLS SNI, ...).
* :class:`Device` -- one entry of the inventory.
* :class:`Alert` -- an EVE-style alert (only ``alerts/policy.py`` creates them).

IP addresses are stored as two ``uint64`` columns (``*_hi``, ``*_lo``): IPv6 as its 128 bits,
IPv4 as the IPv4-mapped address ``::ffff:a.b.c.d`` (so ``hi == 0`` and
``lo == 0xFFFF_0000_0000 | v4``). MAC addresses are ``uint64`` holding the 48-bit value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

SCHEMA_VERSION = "1.0"

V4_MAPPED = np.uint64(0xFFFF_0000_0000)
"""``lo`` half of an IPv4-mapped address before the IPv4 value is or-ed in."""

# ---------------------------------------------------------------------------------------------
# Address helpers
# ---------------------------------------------------------------------------------------------


def mac_to_str(mac: int) -> str:
    """Format a 48-bit MAC held in an integer as ``aa:bb:cc:dd:ee:ff``."""
    return _mac_to_str(int(mac))


@lru_cache(maxsize=16384)
def _mac_to_str(m: int) -> str:
    return ":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def mac_from_str(text: str) -> int:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or with ``-``) into a 48-bit integer."""
    digits = text.replace(":", "").replace("-", "").replace(".", "")
    if len(digits) != 12:
        raise ValueError(f"not a MAC address: {text!r}")
    return int(digits, 16)


def ip_to_str(hi: int, lo: int) -> str:
    """Format an address stored as (hi, lo); IPv4-mapped addresses print as dotted quads."""
    return _ip_to_str(int(hi), int(lo))


@lru_cache(maxsize=65536)
def _ip_to_str(h: int, lo_: int) -> str:
    if h == 0 and (lo_ >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo_ & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((h << 64) | lo_))


def ip_from_str(text: str) -> tuple[int, int]:
    """Parse an IPv4 or IPv6 address into the (hi, lo) pair used in every batch."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv4Address):
        return 0, 0xFFFF_0000_0000 | int(addr)
    v = int(addr)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def ipv4_of(lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint32]:
    """The IPv4 value of IPv4-mapped ``lo`` halves (meaningless for IPv6 rows)."""
    return (lo & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def is_ipv4(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Rows whose address is IPv4-mapped."""
    return (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC timestamp with microseconds."""
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Columnar batches
# ---------------------------------------------------------------------------------------------


class ColumnBatch:
    """A set of equally long numpy columns, with a fixed schema per subclass.

    ``FIELDS`` maps numeric column names to dtypes (always present); ``STR_FIELDS`` names
    optional string columns (numpy ``object`` arrays of ``str``), present only when a source
    provides them.
    """

    FIELDS: ClassVar[dict[str, type[np.generic]]] = {}
    STR_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, columns: dict[str, np.ndarray[Any, Any]]) -> None:
        n: int | None = None
        cols: dict[str, np.ndarray[Any, Any]] = {}
        for name, arr in columns.items():
            if name in self.FIELDS:
                arr = np.asarray(arr, dtype=self.FIELDS[name])
            elif name in self.STR_FIELDS:
                arr = np.asarray(arr, dtype=object)
            else:
                raise KeyError(f"{type(self).__name__} has no column {name!r}")
            if arr.ndim != 1:
                raise ValueError(f"column {name!r} must be one-dimensional")
            if n is None:
                n = len(arr)
            elif len(arr) != n:
                raise ValueError(f"column {name!r} has {len(arr)} rows, expected {n}")
            cols[name] = arr
        n = n or 0
        for name, dt in self.FIELDS.items():
            if name not in cols:
                cols[name] = np.zeros(n, dtype=dt)
        self.columns = cols
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str) -> np.ndarray[Any, Any]:
        cols = self.__dict__.get("columns")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    def has(self, name: str) -> bool:
        """Whether the (optional string) column ``name`` is present."""
        return name in self.columns

    @classmethod
    def empty(cls) -> Self:
        """A batch with zero rows."""
        return cls({k: np.zeros(0, dtype=v) for k, v in cls.FIELDS.items()})

    def take(self, rows: npt.ArrayLike) -> Self:
        """Rows selected by an index array or boolean mask, as a new batch."""
        idx = np.asarray(rows)
        return type(self)({k: v[idx] for k, v in self.columns.items()})

    @classmethod
    def concat(cls, batches: list[Self]) -> Self:
        """Concatenate batches; string columns are kept only if every batch has them."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        names = set(batches[0].columns)
        for b in batches[1:]:
            names &= set(b.columns)
        return cls({k: np.concatenate([b.columns[k] for b in batches]) for k in sorted(names)})


class PacketBatch(ColumnBatch):
    """Columnar packets decoded from a capture, one row per frame in file order.

    Columns (all always present; zero where a layer is absent):

    ``index`` 0-based frame number in the source; ``ts`` seconds since the epoch;
    ``wire_len`` original frame length; ``cap_len`` captured length; ``iface`` pcapng
    interface id; ``src_mac``/``dst_mac``; ``ethertype`` innermost EtherType after VLAN tags
    (0x0800/0x86DD synthesised for raw-IP link types); ``vlan`` outer VLAN id;
    ``ip_version`` 4, 6 or 0; ``src_ip_*``/``dst_ip_*`` addresses (for ARP the sender and
    target protocol addresses); ``proto`` IP protocol after IPv6 extension headers;
    ``src_port``/``dst_port`` (ICMP/ICMPv6: type and code, as Zeek does); ``tcp_flags``;
    ``ttl`` (IPv6 hop limit); ``payload_len`` L4 payload bytes according to the IP header;
    ``payload_off`` offset of the L4 payload from the frame start (0 when none);
    ``frag`` bit 0 more-fragments, bit 1 non-first fragment; ``arp_op``.

    ``raw`` (optional) holds the captured bytes of all frames back to back and
    ``raw_off[i]`` the start of frame ``i`` in it (length ``n + 1``).
    """

    FIELDS: ClassVar[dict[str, type[np.generic]]] = {
        "index": np.int64,
        "ts": np.float64,
        "wire_len": np.uint32,
        "cap_len": np.uint32,
        "iface": np.uint16,
        "src_mac": np.uint64,
        "dst_mac": np.uint64,
        "ethertype": np.uint16,
        "vlan": np.uint16,
        "ip_version": np.uint8,
        "src_ip_hi": np.uint64,
        "src_ip_lo": np.uint64,
        "dst_ip_hi": np.uint64,
        "dst_ip_lo": np.uint64,
        "proto": np.uint8,
        "src_port": np.uint16,
        "dst_port": np.uint16,
        "tcp_flags": np.uint8,
        "ttl": np.uint8,
        "payload_len": np.uint32,
        "payload_off": np.uint32,
        "frag": np.uint8,
        "arp_op": np.uint8,
    }

    def __init__(
        self,
        columns: dict[str, np.ndarray[Any, Any]],
        raw: npt.NDArray[np.uint8] | None = None,
        raw_off: npt.NDArray[np.int64] | None = None,
    ) -> None:
        super().__init__(columns)
        if (raw is None) != (raw_off is None):
            raise ValueError("raw and raw_off go together")
        if raw_off is not None and len(raw_off) != self.n + 1:
            raise ValueError("raw_off must have one entry more than the batch has rows")
        self.raw = raw
        self.raw_off = raw_off

    def frame(self, i: int) -> bytes:
        """Captured bytes of row ``i`` (needs ``raw``)."""
        if self.raw is None or self.raw_off is None:
            raise ValueError("this batch was read without raw frame bytes")
        return self.raw[self.raw_off[i] : self.raw_off[i + 1]].tobytes()

    def payload(self, i: int) -> bytes:
        """Captured L4 payload bytes of row ``i``, at most ``payload_len`` of them (needs ``raw``)."""
        if self.raw is None or self.raw_off is None:
            raise ValueError("this batch was read without raw frame bytes")
        off = int(self.columns["payload_off"][i])
        if off == 0:
            return b""
        start = int(self.raw_off[i]) + off
        end = min(int(self.raw_off[i + 1]), start + int(self.columns["payload_len"][i]))
        return self.raw[start:end].tobytes()  # without Ethernet padding

    def take(self, rows: npt.ArrayLike) -> PacketBatch:
        """Rows selected by index or mask; raw bytes are carried along when present."""
        idx = np.asarray(rows)
        cols = {k: v[idx] for k, v in self.columns.items()}
        if self.raw is None or self.raw_off is None:
            return PacketBatch(cols)
        sel = np.arange(self.n)[idx]
        starts, ends = self.raw_off[sel], self.raw_off[sel + 1]
        lens = ends - starts
        new_off = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(lens, out=new_off[1:])
        if len(sel):
            gather = np.repeat(starts - new_off[:-1], lens) + np.arange(int(new_off[-1]))
            raw = self.raw[gather]
        else:
            raw = np.zeros(0, dtype=np.uint8)
        return PacketBatch(cols, raw=raw, raw_off=new_off)

    def rows(self, start: int, stop: int) -> PacketBatch:
        """Rows ``start:stop`` as views (no copy of the columns or the raw bytes)."""
        cols = {k: v[start:stop] for k, v in self.columns.items()}
        if self.raw is None or self.raw_off is None:
            return PacketBatch(cols)
        lo, hi = int(self.raw_off[start]), int(self.raw_off[stop])
        return PacketBatch(cols, raw=self.raw[lo:hi], raw_off=self.raw_off[start : stop + 1] - lo)

    @classmethod
    def concat(cls, batches: list[PacketBatch]) -> PacketBatch:  # type: ignore[override]
        """Concatenate; raw bytes are kept only if every batch has them."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        cols = {k: np.concatenate([b.columns[k] for b in batches]) for k in cls.FIELDS}
        if all(b.raw is not None for b in batches):
            raws = [b.raw for b in batches if b.raw is not None]
            offs: list[npt.NDArray[np.int64]] = []
            base = 0
            for b in batches:
                assert b.raw_off is not None
                offs.append(b.raw_off[:-1] + base)
                base += int(b.raw_off[-1])
            offs.append(np.array([base], dtype=np.int64))
            return PacketBatch(cols, raw=np.concatenate(raws), raw_off=np.concatenate(offs))
        return PacketBatch(cols)


class FlowBatch(ColumnBatch):
    """Columnar bidirectional flows; ``src`` is the originator (Zeek's ``orig``).

    Numeric columns: ``ts`` start, ``duration``; addresses, ports (ICMP type/code) and
    ``proto``; ``src_pkts``/``dst_pkts``; ``src_bytes``/``dst_bytes`` IP-level bytes (Zeek's
    ``*_ip_bytes``); ``src_payload``/``dst_payload`` L4 payload bytes (Zeek's
    ``orig_bytes``/``resp_bytes``); ``src_mac``/``dst_mac`` (0 when unknown);
    ``src_flags``/``dst_flags`` OR of TCP flags per direction; inter-arrival and frame-size
    statistics over both directions (``iat_*``, ``size_*``); ``first_index`` frame index of
    the first packet (-1 when the flow did not come from a capture); ``flow_id`` a stable id.

    Optional string columns: ``uid``, ``service``, ``conn_state``, ``history``, ``label``
    (``benign``/``malicious``, lower case), ``detailed_label`` (``-`` when none).
    """

    FIELDS: ClassVar[dict[str, type[np.generic]]] = {
        "flow_id": np.int64,
        "ts": np.float64,
        "duration": np.float64,
        "src_ip_hi": np.uint64,
        "src_ip_lo": np.uint64,
        "dst_ip_hi": np.uint64,
        "dst_ip_lo": np.uint64,
        "src_port": np.uint16,
        "dst_port": np.uint16,
        "proto": np.uint8,
        "src_pkts": np.uint64,
        "dst_pkts": np.uint64,
        "src_bytes": np.uint64,
        "dst_bytes": np.uint64,
        "src_payload": np.uint64,
        "dst_payload": np.uint64,
        "src_mac": np.uint64,
        "dst_mac": np.uint64,
        "src_flags": np.uint8,
        "dst_flags": np.uint8,
        "iat_mean": np.float64,
        "iat_std": np.float64,
        "iat_min": np.float64,
        "iat_max": np.float64,
        "size_mean": np.float64,
        "size_std": np.float64,
        "size_min": np.float64,
        "size_max": np.float64,
        "first_index": np.int64,
    }
    STR_FIELDS: ClassVar[tuple[str, ...]] = (
        "uid",
        "service",
        "conn_state",
        "history",
        "label",
        "detailed_label",
    )


PROTO_NAMES: dict[int, str] = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}
PROTO_NUMBERS: dict[str, int] = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AppEvent:
    """An application-layer fact seen in one packet.

    ``kind`` is one of ``dhcp``, ``dns``, ``mdns``, ``ssdp``, ``http``, ``tls``; ``fields``
    holds what was parsed (e.g. ``{"hostname": ..., "vendor_class": ...}`` for DHCP,
    ``{"query": ..., "answers": [...]}`` for DNS, ``{"sni": ...}`` for TLS).
    """

    index: int
    ts: float
    kind: str
    src_mac: int
    dst_mac: int
    src_ip: str
    dst_ip: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Device:
    """One device of the inventory. ``device_id`` is the MAC (``aa:bb:..``) when known,
    else ``ip:<address>``; it survives IP changes."""

    device_id: str
    mac: str | None = None
    ips: list[str] = field(default_factory=list)
    vendor: str | None = None
    names: list[str] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    dhcp: dict[str, Any] = field(default_factory=dict)
    ssdp: list[str] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    tls_sni: list[str] = field(default_factory=list)
    device_type: str | None = None
    type_confidence: float = 0.0
    is_gateway: bool = False
    is_local: bool = True
    first_seen: float = 0.0
    last_seen: float = 0.0
    packets: int = 0
    bytes: int = 0
    visibility: dict[str, Any] = field(default_factory=dict)
    """What the sensor can observe of this device's application fields, e.g.
    ``{"dns_names": "observed" | "truncated" | "not seen", "snaplen": 96}`` (empty: unknown)."""

    @property
    def label(self) -> str:
        """A short human name: the first host name, else the id."""
        return self.names[0] if self.names else self.device_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


SEVERITY_NAMES = {1: "high", 2: "medium", 3: "low", 4: "info"}
"""Alert severities (EVE convention: 1 is the most severe); 4 (info) is for notices."""


@dataclass(slots=True)
class Alert:
    """An alert in the style of Suricata's eve.json (severity 1 = high, 3 = low, 4 = info).

    ``event_type`` is ``"alert"`` for traffic alerts, ``"notice"`` for notices (a device fell
    silent or offline: severity 4, never an incident), ``"integrity"``/``"canary"`` for the
    monitor's own. ``incident_id`` names the incident a traffic alert was folded into
    (:mod:`iotsentry.alerts.incidents`; ``""``: none), and is written as the EVE record's
    top-level ``"incident_id"`` when set.
    """

    timestamp: float
    flow_id: int
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    proto: str
    device_id: str
    site_id: str
    detector: str
    detector_version: str
    score: float
    threshold: float
    severity: int
    category: str
    reason: str
    signature: str = ""
    event_type: str = "alert"
    extra: dict[str, Any] = field(default_factory=dict)
    incident_id: str = ""

    def to_eve(self) -> dict[str, Any]:
        """The flat EVE-style JSON record."""
        rec: dict[str, Any] = {
            "timestamp": rfc3339(self.timestamp),
            "event_type": self.event_type,
            "flow_id": int(self.flow_id),
            "src_ip": self.src_ip,
            "src_port": int(self.src_port),
            "dest_ip": self.dest_ip,
            "dest_port": int(self.dest_port),
            "proto": self.proto,
            "device_id": self.device_id,
            "site_id": self.site_id,
            "alert": {
                "detector": self.detector,
                "detector_version": self.detector_version,
                "signature": self.signature or self.category,
                "score": float(self.score),
                "threshold": float(self.threshold),
                "severity": int(self.severity),
                "category": self.category,
                "reason": self.reason,
            },
            "schema_version": SCHEMA_VERSION,
        }
        if self.incident_id:
            rec["incident_id"] = self.incident_id
        if self.extra:
            rec["iotsentry"] = self.extra
        return rec
