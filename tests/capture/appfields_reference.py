"""A straightforward reference for :func:`iotsentry.capture.appfields.extract_app_events`.

One candidate at a time in frame order, parsed with the dpkt-based parsers, through a bounded
cache of parsed fields keyed like the real one (so that the sharing of ``fields`` dicts between
events can be compared too). This is how extraction worked before candidates were grouped by
payload and before DNS and TLS got their own wire parsers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from iotsentry.capture import appfields as af
from iotsentry.schema import AppEvent, PacketBatch, ip_to_str

PARSERS: dict[str, Callable[[bytes], dict[str, Any] | None]] = {
    "dhcp": af.parse_dhcp,
    "dns": af.parse_dns_dpkt,
    "mdns": af.parse_dns_dpkt,
    "ssdp": af.parse_ssdp,
    "http": af.parse_http,
    "tls": af.parse_tls_sni_dpkt,
}

_MISSING: Any = object()
MALFORMED: Any = {"malformed": True}


class ReferenceExtractor:
    """The per-candidate loop, with its own cache of ``cache_size`` entries."""

    def __init__(self, cache_size: int = af._CACHE_SIZE) -> None:
        self.cache_size = cache_size
        self.cache: dict[tuple[str, bool, bytes], Any] = {}
        self.clears = 0
        """How often the cache was full and emptied."""

    def __call__(self, batch: PacketBatch, stats: af.AppFieldStats | None = None) -> list[AppEvent]:
        kind = af.classify(batch)
        rows = np.nonzero(kind >= 0)[0]
        if not len(rows):
            return []
        assert batch.raw is not None
        start, end = af._payload_bounds(batch)
        events: list[AppEvent] = []
        for i in rows.tolist():
            k = af.KINDS[kind[i]]
            if stats is not None:
                stats.candidates[k] += 1
            payload = batch.raw[start[i] : end[i]].tobytes()
            cut = bool(batch.cap_len[i] < batch.wire_len[i])
            key = (k, cut, payload[2:] if k in ("dns", "mdns") else payload)
            fields = self.cache.get(key, _MISSING)
            if fields is _MISSING:
                try:
                    fields = PARSERS[k](payload)
                except af._PARSE_ERRORS:
                    fields = MALFORMED
                    if cut and k in ("dns", "mdns"):
                        fields = af.parse_dns_partial(payload) or MALFORMED
                if len(self.cache) >= self.cache_size:
                    self.cache.clear()
                    self.clears += 1
                self.cache[key] = fields
            if fields is MALFORMED:
                if stats is not None:
                    stats.malformed[k] += 1
                continue
            if fields is None:
                continue
            if stats is not None:
                stats.events[k] += 1
            events.append(
                AppEvent(
                    index=int(batch.index[i]),
                    ts=float(batch.ts[i]),
                    kind=k,
                    src_mac=int(batch.src_mac[i]),
                    dst_mac=int(batch.dst_mac[i]),
                    src_ip=ip_to_str(batch.src_ip_hi[i], batch.src_ip_lo[i]),
                    dst_ip=ip_to_str(batch.dst_ip_hi[i], batch.dst_ip_lo[i]),
                    fields=fields,
                )
            )
        return events


def sharing(events: list[AppEvent]) -> list[int]:
    """For each event, the position of the first event holding the very same ``fields`` dict."""
    first: dict[int, int] = {}
    return [first.setdefault(id(ev.fields), i) for i, ev in enumerate(events)]
