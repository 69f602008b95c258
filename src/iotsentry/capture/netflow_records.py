"""Turn decoded NetFlow / IPFIX record fields into :class:`~iotsentry.schema.FlowBatch` columns.

Input is a mapping *element name -> numpy column* (names of
:data:`~iotsentry.capture.netflow_templates.IE_NAMES`; IPv6 addresses as ``<name>_hi`` /
``<name>_lo``) plus per-record export context. The mapping follows the Zeek reader's
conventions (:mod:`iotsentry.capture.zeek`):

* the record's source is the originator (``src_*``); NetFlow v5/v9 records are one-way, so
  ``dst_pkts``/``dst_bytes`` are 0 unless an IPFIX biflow (RFC 5103) gives reverse counters;
* ``src_bytes`` is ``octetDeltaCount`` (IP-level bytes, Zeek's ``orig_ip_bytes``);
  ``packetDeltaCount`` -> ``src_pkts``; the ``*Total*`` counters are used when the delta
  ones are absent; payload bytes are unknown and left 0 (Zeek's unset count);
* ICMP type/code go into ``src_port``/``dst_port`` as Zeek does, from
  ``icmpTypeCode*`` / ``icmpType*``/``icmpCode*`` or from the Cisco convention
  ``dst_port = type << 8 | code``;
* ``ts`` is the flow start in epoch seconds from whichever start element the record has
  (absolute ns/us/ms/s, delta from export time, or system uptime against the header's uptime
  (v5/v9) or ``systemInitTimeMilliseconds`` (IPFIX)); the export time when none is known;
  ``duration`` from the end element or ``flowDuration*`` (0 when unknown);
* ``tcpControlBits`` -> ``src_flags`` (reverse bits -> ``dst_flags``); MAC elements -> MACs;
* the string columns ``uid``, ``service``, ``conn_state``, ``history`` are ``""`` (unset);
  ``first_index`` is -1; ``flow_id`` counts records over the decoder's lifetime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.schema import V4_MAPPED

__all__ = ["flow_columns", "ntp_to_unix"]

NTP_EPOCH_OFFSET = 2208988800
"""Seconds from 1900-01-01 (NTP era 0) to 1970-01-01."""

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


def ntp_to_unix(v: U64) -> F64:
    """IPFIX ``dateTimeMicroseconds``/``Nanoseconds`` (NTP 64-bit format) to epoch seconds."""
    sec = (v >> np.uint64(32)).astype(np.float64) - NTP_EPOCH_OFFSET
    frac = (v & np.uint64(0xFFFFFFFF)).astype(np.float64) / 4294967296.0
    return sec + frac


def _times(
    raw: dict[str, Any], which: str, version: npt.NDArray[np.uint16], export: F64, uptime: U64, init: F64
) -> F64:
    """Flow start (``which == "Start"``) or end times; NaN where the record has none."""
    n = len(export)
    out = np.full(n, np.nan)
    up = raw.get(f"flow{which}SysUpTime")
    if up is not None:
        # v5/v9: relative to the header's uptime (mod 2**32 ms); IPFIX: to systemInitTime.
        rel = ((uptime - up) & np.uint64(0xFFFFFFFF)).astype(np.float64) / 1000.0
        out = np.where(version == 10, init + up.astype(np.float64) / 1000.0, export - rel)
    delta = raw.get(f"flow{which}DeltaMicroseconds")
    if delta is not None:
        out = export - delta.astype(np.float64) / 1e6
    sec = raw.get(f"flow{which}Seconds")
    if sec is not None:
        out = sec.astype(np.float64)
    ms = raw.get(f"flow{which}Milliseconds")
    if ms is not None:
        out = ms.astype(np.float64) / 1000.0
    for name in (f"flow{which}Microseconds", f"flow{which}Nanoseconds"):
        v = raw.get(name)
        if v is not None:
            out = ntp_to_unix(v)
    return np.asarray(out, dtype=np.float64)


def _first(raw: dict[str, Any], names: tuple[str, ...], n: int) -> U64:
    for name in names:
        v = raw.get(name)
        if v is not None:
            return np.asarray(v, dtype=np.uint64)
    return np.zeros(n, dtype=np.uint64)


def _addresses(raw: dict[str, Any], v4: str, v6: str, n: int) -> tuple[U64, U64]:
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    has4 = v4 in raw
    if f"{v6}_hi" in raw:
        hi = np.asarray(raw[f"{v6}_hi"], dtype=np.uint64).copy()
        lo = np.asarray(raw[f"{v6}_lo"], dtype=np.uint64).copy()
    if has4:
        a4 = np.asarray(raw[v4], dtype=np.uint64)
        use = (a4 != 0) | ~((hi != 0) | (lo != 0))
        hi[use] = 0
        lo[use] = V4_MAPPED | a4[use]
    return hi, lo


def flow_columns(
    raw: dict[str, Any],
    n: int,
    version: npt.NDArray[np.uint16],
    export: F64,
    uptime: U64,
    init: F64,
) -> dict[str, np.ndarray[Any, Any]]:
    """FlowBatch columns (without ``flow_id``) of ``n`` records.

    Parameters
    ----------
    raw
        Element name -> column of length ``n`` (unsigned integers; IPv6 split in hi/lo).
    n
        Number of records.
    version
        Export protocol version per record (5, 9 or 10).
    export
        Export time of each record's datagram (epoch seconds).
    uptime
        Header system uptime in ms (v5/v9; unused for IPFIX).
    init
        IPFIX ``systemInitTimeMilliseconds`` / 1000 of the exporter (NaN when unknown).
    """
    out: dict[str, np.ndarray[Any, Any]] = {}
    start = _times(raw, "Start", version, export, uptime, init)
    end = _times(raw, "End", version, export, uptime, init)
    start = np.where(np.isnan(start), export, start)
    dur = np.where(np.isnan(end), 0.0, end - start)
    if "flowDurationMilliseconds" in raw:
        dur = raw["flowDurationMilliseconds"].astype(np.float64) / 1000.0
    elif "flowDurationMicroseconds" in raw:
        dur = raw["flowDurationMicroseconds"].astype(np.float64) / 1e6
    out["ts"] = start
    out["duration"] = np.maximum(dur, 0.0)
    out["src_ip_hi"], out["src_ip_lo"] = _addresses(raw, "sourceIPv4Address", "sourceIPv6Address", n)
    out["dst_ip_hi"], out["dst_ip_lo"] = _addresses(
        raw, "destinationIPv4Address", "destinationIPv6Address", n
    )
    proto = _first(raw, ("protocolIdentifier",), n).astype(np.uint8)
    sport = _first(raw, ("sourceTransportPort",), n)
    dport = _first(raw, ("destinationTransportPort",), n)
    icmp = (proto == 1) | (proto == 58)
    if icmp.any():
        tc = _first(raw, ("icmpTypeCodeIPv4", "icmpTypeCodeIPv6"), n)
        has_tc = ("icmpTypeCodeIPv4" in raw) or ("icmpTypeCodeIPv6" in raw)
        if not has_tc:  # Cisco convention: type/code in the destination port
            tc = np.where(sport == 0, dport, (sport << np.uint64(8)) | dport)
        typ = tc >> np.uint64(8)
        code = tc & np.uint64(0xFF)
        if "icmpTypeIPv4" in raw or "icmpTypeIPv6" in raw:
            typ = _first(raw, ("icmpTypeIPv4", "icmpTypeIPv6"), n)
            code = _first(raw, ("icmpCodeIPv4", "icmpCodeIPv6"), n)
        sport = np.where(icmp, typ, sport)
        dport = np.where(icmp, code, dport)
    out["proto"] = proto
    out["src_port"] = sport.astype(np.uint16)
    out["dst_port"] = dport.astype(np.uint16)
    out["src_pkts"] = _first(raw, ("packetDeltaCount", "packetTotalCount"), n)
    out["src_bytes"] = _first(raw, ("octetDeltaCount", "octetTotalCount"), n)
    out["dst_pkts"] = _first(raw, ("reversePacketDeltaCount", "reversePacketTotalCount"), n)
    out["dst_bytes"] = _first(raw, ("reverseOctetDeltaCount", "reverseOctetTotalCount"), n)
    out["src_flags"] = (_first(raw, ("tcpControlBits",), n) & np.uint64(0xFF)).astype(np.uint8)
    out["dst_flags"] = (_first(raw, ("reverseTcpControlBits",), n) & np.uint64(0xFF)).astype(np.uint8)
    out["src_mac"] = _first(raw, ("sourceMacAddress", "postSourceMacAddress"), n)
    out["dst_mac"] = _first(raw, ("destinationMacAddress", "postDestinationMacAddress"), n)
    out["first_index"] = np.full(n, -1, dtype=np.int64)
    for col in ("uid", "service", "conn_state", "history"):
        out[col] = np.full(n, "", dtype=object)
    return out
