"""Device inventory: which local hosts exist, how they are named, and which one is the gateway.

A device is identified by its MAC address (IP bindings may change over time: DHCP, ARP and
ordinary traffic update them); captures without link-layer addresses fall back to local IPs.
The tracker is fed batch after batch, so memory grows with devices, not with capture length.

:meth:`DeviceTracker.devices` is asked for after every batch: it refreshes only the devices
whose packets, addresses, names or gateway role changed since it was last asked, looks a
vendor up once per device and re-sorts only when devices join.
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.features.addresses import is_local, is_multicast, is_unicast_mac, is_unspecified
from iotsentry.features.device_context import mix_keys
from iotsentry.inventory.device_type import guess_type
from iotsentry.inventory.oui import vendor_of
from iotsentry.schema import AppEvent, Device, PacketBatch, ip_to_str, mac_from_str

_MAC48 = 0xFFFF_FFFF_FFFF

MAX_NAMES = 32
"""Bound on the names / DNS names / User-Agents kept per device (attacker-controlled input)."""


def _add_bounded(items: list[str], value: str, limit: int = MAX_NAMES) -> None:
    value = value.strip().rstrip(".")
    if value and value not in items and len(items) < limit:
        items.append(value[:255])


def _mac_text(mac: int) -> str:
    """``mac_to_str`` (``aa:bb:cc:dd:ee:ff`` of the low 48 bits), without its cache: a fleet
    has more MACs than the cache holds."""
    h = f"{mac & _MAC48:012x}"
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


def _mac_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and len(value) >= 6:
        return int.from_bytes(value[:6], "big")
    try:
        return mac_from_str(str(value))
    except ValueError:
        return 0


@dataclass
class _MacState:
    """Counters of a device known by IP only (captures without link-layer addresses)."""

    packets: int = 0
    bytes: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    local_src: int = 0
    ips: dict[str, float] = field(default_factory=dict)


_IP_TEXTS = 1 << 20
"""Bound on the remembered address texts of a tracker (emptied when full)."""


class DeviceTracker:
    """Builds the inventory from packet batches and application events.

    Per-MAC counters live in arrays (one row per MAC, in the order MACs were first seen) so
    that a batch updates them with a few vectorised operations.
    """

    def __init__(self) -> None:
        self._row: dict[int, int] = {}
        """MAC -> row of the counters, rows in the order MACs were first seen."""
        self._mac_at: list[int] = []
        self._ips: list[dict[str, float]] = []
        """Per row: local addresses the MAC used, with the last time each was seen."""
        cap = 1024
        self._pk = np.zeros(cap, np.int64)
        self._by = np.zeros(cap, np.int64)
        self._first = np.full(cap, np.inf)
        self._last = np.full(cap, -np.inf)
        self._loc = np.zeros(cap, np.int64)
        self._rel = np.zeros(cap, np.int64)
        self._dirty_rows = np.zeros(cap, dtype=bool)
        """Rows whose counters or addresses changed since the inventory was last built."""
        self._listed_rows = np.zeros(cap, dtype=bool)
        self._ips_dirty: set[int] = set()
        """Rows whose address list (its members or their order) may have changed."""
        self._ip_only: dict[str, _MacState] = {}
        self._devices: dict[str, Device] = {}
        self._dev_of: dict[int, Device] = {}
        """MAC -> its device (every MAC-keyed entry of ``_devices``)."""
        self.ip_names: dict[str, str] = {}
        """Last DNS / mDNS name seen resolving to each IP (used to name peers)."""
        self.ip_name_ts: dict[str, float] = {}
        """When a name was first seen for each address of :attr:`ip_names` (packet time)."""
        self._dhcp_servers: Counter[int] = Counter()
        self._seen_events: set[tuple[int, str, str]] = set()
        self._ip_text: dict[tuple[int, int], str] = {}
        # incremental state of the inventory (see devices())
        self._local: set[int] = set()
        """MACs that sent from a local IP or ARP."""
        self._keyed: set[int] = set()
        """MACs with an entry in ``_devices``."""
        self._listed: set[int] = set()
        self._listed_ips: set[str] = set()
        self._join: set[int] = set()
        """MACs that may have become devices since the inventory was last built."""
        self._join_ips: set[str] = set()
        self._dirty_ips: set[str] = set()
        self._retype: set[int] = set()
        self._changed: dict[str, Device] = {}
        """Devices listed, re-addressed, renamed or re-typed since :meth:`take_changed`."""
        """MACs whose names, announcements, User-Agents, DHCP options or gateway role changed."""
        self._type_of_vendor: dict[str | None, tuple[str | None, float]] = {}
        self._ids: list[str] = []
        self._order: list[Device] = []
        """Every listed device, by device id (``_ids`` holds the ids)."""
        self._gateway: int | None = None
        """The gateway as of the last inventory."""

    def _new_rows(self, macs: list[int]) -> None:
        """Rows for MACs not seen before (in the order given)."""
        n = len(self._mac_at)
        need = n + len(macs)
        if need > len(self._pk):
            cap = max(need, 2 * len(self._pk))
            grow = cap - len(self._pk)
            self._pk = np.concatenate([self._pk, np.zeros(grow, np.int64)])
            self._by = np.concatenate([self._by, np.zeros(grow, np.int64)])
            self._first = np.concatenate([self._first, np.full(grow, np.inf)])
            self._last = np.concatenate([self._last, np.full(grow, -np.inf)])
            self._loc = np.concatenate([self._loc, np.zeros(grow, np.int64)])
            self._rel = np.concatenate([self._rel, np.zeros(grow, np.int64)])
            self._dirty_rows = np.concatenate([self._dirty_rows, np.zeros(grow, dtype=bool)])
            self._listed_rows = np.concatenate([self._listed_rows, np.zeros(grow, dtype=bool)])
        for i, m in enumerate(macs, start=n):
            self._row[m] = i
            self._mac_at.append(m)
            self._ips.append({})
            self._listed_rows[i] = m in self._listed

    def _row_for(self, mac: int) -> int:
        r = self._row.get(mac)
        if r is None:
            self._new_rows([mac])
            r = len(self._mac_at) - 1
        return r

    def _texts(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> list[str]:
        """``ip_to_str`` of each (hi, lo) pair, remembered per tracker."""
        cache = self._ip_text
        if len(cache) > _IP_TEXTS:
            cache.clear()
        out: list[str] = []
        for key in zip(hi.tolist(), lo.tolist(), strict=True):
            t = cache.get(key)
            if t is None:
                h, low = key
                if h == 0 and low >> 32 == 0xFFFF:  # IPv4-mapped: a dotted quad, as ip_to_str
                    t = socket.inet_ntoa((low & 0xFFFF_FFFF).to_bytes(4, "big"))
                else:
                    t = ip_to_str(h, low)
                cache[key] = t
            out.append(t)
        return out

    # -- packets ---------------------------------------------------------------------------
    def update(self, batch: PacketBatch, events: list[AppEvent] | None = None) -> None:
        """Account one batch of packets (and the application events parsed from it)."""
        if len(batch):
            self._update_packets(batch)
        seen = self._seen_events
        text: dict[int, str] = {}  # events of a batch share parsed dicts: one repr per dict
        for ev in events or ():
            if ev.kind != "dhcp":
                # by content, not by object: events parsed in another process (Ray workers) or
                # after the parse cache let go of a payload dedupe the same as shared dicts
                f = ev.fields
                t = text.get(id(f))
                if t is None:
                    t = text[id(f)] = repr(f)
                key = (ev.src_mac, ev.kind, t)
                if key in seen:
                    continue  # the same announcement again: nothing new
                if len(seen) >= 200_000:
                    seen.clear()
                seen.add(key)
            self._update_event(ev)

    def _update_packets(self, b: PacketBatch) -> None:
        src_mac = b.src_mac
        has_ip = b.ip_version > 0
        src_local = has_ip & is_local(b.src_ip_hi, b.src_ip_lo) & ~is_multicast(b.src_ip_hi, b.src_ip_lo)
        src_relayed = has_ip & ~src_local & ~is_unspecified(b.src_ip_hi, b.src_ip_lo)
        is_arp = b.ethertype == 0x0806
        uni = is_unicast_mac(src_mac)
        if uni.any():
            macs, inv = np.unique(src_mac[uni], return_inverse=True)
            wl = b.wire_len[uni].astype(np.int64)
            ts = b.ts[uni]
            pk = np.bincount(inv, minlength=len(macs))
            by = np.bincount(inv, weights=wl, minlength=len(macs))
            first = np.full(len(macs), np.inf)
            last = np.full(len(macs), -np.inf)
            np.minimum.at(first, inv, ts)
            np.maximum.at(last, inv, ts)
            loc = np.bincount(inv, weights=(src_local | is_arp)[uni], minlength=len(macs)).astype(np.int64)
            rel = np.bincount(inv, weights=src_relayed[uni], minlength=len(macs)).astype(np.int64)
            mac_list = macs.tolist()
            found = list(map(self._row.get, mac_list))
            if None in found:
                self._new_rows([m for m, r in zip(mac_list, found, strict=True) if r is None])
                found = list(map(self._row.get, mac_list))
            rows = np.array(found, dtype=np.int64)
            self._pk[rows] += pk
            self._by[rows] += by.astype(np.int64)
            self._first[rows] = np.minimum(self._first[rows], first)
            self._last[rows] = np.maximum(self._last[rows], last)
            became_local = (self._loc[rows] == 0) & (loc > 0)
            self._loc[rows] += loc
            self._rel[rows] += rel
            self._dirty_rows[rows] = True
            if became_local.any():
                joined = macs[became_local].tolist()
                self._local.update(joined)
                self._join.update(joined)
            # IP bindings: (mac, local source IP) pairs, ARP senders included
            bind = uni & (src_local | (is_arp & ~is_unspecified(b.src_ip_hi, b.src_ip_lo)))
            if bind.any():
                brows = np.flatnonzero(bind)
                h = mix_keys(src_mac[brows], b.src_ip_hi[brows], b.src_ip_lo[brows])
                _, first_row, kinv = np.unique(h, return_index=True, return_inverse=True)
                lastb = np.full(len(first_row), -np.inf)
                np.maximum.at(lastb, kinv, b.ts[brows])
                r0 = brows[first_row]
                texts = self._texts(b.src_ip_hi[r0], b.src_ip_lo[r0])
                row_of, ips_of, ips_dirty = self._row, self._ips, self._ips_dirty
                for m, ip, t in zip(src_mac[r0].tolist(), texts, lastb.tolist(), strict=True):
                    r = row_of[m]
                    ips = ips_of[r]
                    old = ips.get(ip)
                    if old is None:
                        ips[ip] = t
                        ips_dirty.add(r)
                    elif t > old:
                        ips[ip] = t
                        if len(ips) > 1:
                            ips_dirty.add(r)
        # captures without link-layer addresses: local IPs stand for devices
        nomac = (src_mac == 0) & src_local
        if nomac.any():
            keys = np.stack([b.src_ip_hi[nomac], b.src_ip_lo[nomac]], axis=1)
            uk, kinv = np.unique(keys, axis=0, return_inverse=True)
            kinv = kinv.ravel()
            npk = np.bincount(kinv, minlength=len(uk))
            nby = np.bincount(kinv, weights=b.wire_len[nomac].astype(np.float64), minlength=len(uk))
            tsn = b.ts[nomac]
            nfirst = np.full(len(uk), np.inf)
            nlast = np.full(len(uk), -np.inf)
            np.minimum.at(nfirst, kinv, tsn)
            np.maximum.at(nlast, kinv, tsn)
            for i, (hi, lo) in enumerate(uk.tolist()):
                ip = ip_to_str(hi, lo)
                ist = self._ip_only.get(ip)
                if ist is None:
                    ist = self._ip_only[ip] = _MacState()
                    self._join_ips.add(ip)
                self._dirty_ips.add(ip)
                ist.packets += int(npk[i])
                ist.bytes += int(nby[i])
                ist.first = min(ist.first, float(nfirst[i]))
                ist.last = max(ist.last, float(nlast[i]))
                ist.local_src += int(npk[i])
                ist.ips[ip] = float(nlast[i])

    # -- application events ------------------------------------------------------------------
    def _device_for_event(self, mac: int) -> Device | None:
        if mac == 0 or (mac >> 40) & 1:
            return None  # absent or group (multicast / broadcast) address
        mac &= _MAC48  # the device id holds 48 bits
        dev = self._dev_of.get(mac)
        if dev is None:
            dev = self._keyed_device(mac)
        self._retype.add(mac)
        return dev

    def _keyed_device(self, mac: int) -> Device:
        """The device of a MAC, made when it has none yet."""
        key = _mac_text(mac)
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = Device(device_id=key, mac=key)
        self._dev_of[mac] = dev
        self._keyed.add(mac)
        self._join.add(mac)
        return dev

    def _update_event(self, ev: AppEvent) -> None:
        f = ev.fields
        if ev.kind == "dhcp":
            client = _mac_int(f.get("client_mac") or ev.src_mac)
            is_server_msg = f.get("msg_type") in (2, 5, 6, "OFFER", "ACK", "NAK")
            if is_server_msg:
                self._dhcp_servers[ev.src_mac] += 1
            dev = self._device_for_event(client)
            if dev is None:
                return
            if f.get("hostname") and not is_server_msg:
                _add_bounded(dev.names, str(f["hostname"]))
            for k in ("vendor_class", "param_req_list", "requested_ip", "fqdn"):
                if f.get(k) and not is_server_msg:
                    dev.dhcp[k] = f[k]
            if f.get("hostname") and not is_server_msg:
                dev.dhcp["hostname"] = f["hostname"]
            yi = f.get("yiaddr")
            if is_server_msg and yi and yi != "0.0.0.0":
                r = self._row_for(client)
                self._ips[r][str(yi)] = ev.ts
                self._dirty_rows[r] = True
                self._ips_dirty.add(r)
        elif ev.kind in ("dns", "mdns"):
            for ans in f.get("answers") or ():
                if ans.get("type") in ("A", "AAAA", 1, 28) and ans.get("value"):
                    ip = str(ans["value"])
                    self.ip_names[ip] = str(ans.get("name", "")).rstrip(".")
                    self.ip_name_ts[ip] = min(self.ip_name_ts.get(ip, ev.ts), ev.ts)
            dev = self._device_for_event(ev.src_mac)
            if dev is None:
                return
            if ev.kind == "dns" and not f.get("is_response"):
                for q in f.get("queries") or ():
                    _add_bounded(dev.dns_names, str(q))
            if ev.kind == "mdns" and f.get("is_response"):
                for ans in f.get("answers") or ():
                    name = str(ans.get("name", ""))
                    if ans.get("type") in ("A", "AAAA", 1, 28) and name.endswith(".local"):
                        _add_bounded(dev.names, name)
        elif ev.kind == "ssdp":
            dev = self._device_for_event(ev.src_mac)
            if dev is not None and f.get("server"):
                _add_bounded(dev.ssdp, str(f["server"]))
        elif ev.kind == "http":
            dev = self._device_for_event(ev.src_mac)
            if dev is not None and f.get("user_agent"):
                _add_bounded(dev.user_agents, str(f["user_agent"]))
        elif ev.kind == "tls":
            dev = self._device_for_event(ev.src_mac)
            if dev is not None and f.get("sni"):
                _add_bounded(dev.tls_sni, str(f["sni"]))

    # -- results -------------------------------------------------------------------------------
    def gateway_mac(self) -> int | None:
        """The MAC that relays internet traffic (most packets with a non-local source IP; the
        first seen among equals)."""
        n = len(self._mac_at)
        if n:
            i = int(np.argmax(self._rel[:n]))
            if self._rel[i] > 0:
                return self._mac_at[i]
        if self._dhcp_servers:
            return self._dhcp_servers.most_common(1)[0][0]
        return None

    def device_macs(self) -> set[int]:
        """MACs that are local devices (sent traffic from a local IP, ARP, or DHCP)."""
        out = self._local | self._keyed  # devices known by IP only (no link layer) have no MAC
        gw = self.gateway_mac()
        if gw is not None:
            out.add(gw)
        return out

    def devices(self) -> list[Device]:
        """The inventory, gateway first, then by MAC / IP.

        The devices are the tracker's own objects, updated in place from call to call: only
        those whose counters, addresses, names or gateway role changed are touched, so a field
        the tracker derives (e.g. ``device_type``) that a caller overwrites keeps the caller's
        value until the tracker next has a reason to refresh that device.
        """
        gw = self.gateway_mac()
        if gw is not None:
            self._join.add(gw)
        if gw != self._gateway:
            for m in (self._gateway, gw):
                if m is not None and m in self._listed:
                    self._dev_of[m].is_gateway = m == gw
                    self._retype.add(m)
            self._gateway = gw
        joined = [self._list_mac(m, gw) for m in self._join - self._listed]
        joined += [self._list_ip(ip) for ip in self._join_ips - self._listed_ips]
        self._join.clear()
        self._join_ips.clear()
        changed = self._changed
        for dev in joined:
            changed[dev.device_id] = dev
        self._refresh_rows()
        for m in self._retype & self._listed:
            dev = self._dev_of[m]
            self._guess(dev)
            changed[dev.device_id] = dev
        self._retype.clear()
        for ip in self._dirty_ips & self._listed_ips:
            self._refresh_ip(ip)
        self._dirty_ips.clear()
        if len(joined) > 64:
            ids = self._ids + [d.device_id for d in joined]
            order = self._order + joined
            by_id = sorted(range(len(ids)), key=ids.__getitem__)
            self._ids = [ids[i] for i in by_id]
            self._order = [order[i] for i in by_id]
        else:
            for dev in joined:
                at = bisect_left(self._ids, dev.device_id)
                self._ids.insert(at, dev.device_id)
                self._order.insert(at, dev)
        if gw is None:
            return list(self._order)
        at = bisect_left(self._ids, self._dev_of[gw].device_id)
        return [self._order[at], *self._order[:at], *self._order[at + 1 :]]

    def take_changed(self) -> list[Device]:
        """The devices whose listing, addresses, names, type or gateway role changed since the
        last call (as of the last :meth:`devices`), gateway first, then by id; counters alone
        do not count. Lets a consumer keep its own per-device view without walking the fleet."""
        out = sorted(self._changed.values(), key=lambda d: (not d.is_gateway, d.device_id))
        self._changed = {}
        return out

    def _guess(self, dev: Device) -> None:
        """Rule-based type; a device with nothing but a vendor to go by is typed by vendor once."""
        if dev.names or dev.ssdp or dev.user_agents or dev.dhcp.get("vendor_class") or dev.is_gateway:
            dev.device_type, dev.type_confidence, _ = guess_type(dev)
            return
        got = self._type_of_vendor.get(dev.vendor)
        if got is None:
            kind, conf, _ = guess_type(dev)
            got = self._type_of_vendor[dev.vendor] = (kind, conf)
        dev.device_type, dev.type_confidence = got

    def _list_mac(self, m: int, gw: int | None) -> Device:
        """A MAC enters the inventory: its device, vendor and every derived field."""
        dev = self._dev_of.get(m) or self._keyed_device(m)
        self._listed.add(m)
        dev.vendor = vendor_of(m)
        dev.is_gateway = m == gw
        dev.is_local = True
        r = self._row.get(m)
        if r is None:
            dev.ips = []
            dev.packets = dev.bytes = 0
            dev.first_seen = dev.last_seen = 0.0
        else:
            self._listed_rows[r] = True
            self._dirty_rows[r] = True
            self._ips_dirty.add(r)
        self._retype.add(m)
        return dev

    def _refresh_rows(self) -> None:
        """Counters and addresses of the listed devices whose rows changed."""
        n = len(self._mac_at)
        rows = np.flatnonzero(self._dirty_rows[:n] & self._listed_rows[:n])
        self._dirty_rows[:n] = False
        if len(rows):
            devs = [self._dev_of[m] for m in map(self._mac_at.__getitem__, rows.tolist())]
            counters = zip(
                devs,
                self._pk[rows].tolist(),
                self._by[rows].tolist(),
                self._first[rows].tolist(),
                self._last[rows].tolist(),
                strict=True,
            )
            for dev, pk, by, t0, t1 in counters:
                dev.packets, dev.bytes = pk, by
                dev.first_seen = t0 if pk else 0.0
                dev.last_seen = t1 if pk else 0.0
        for r in self._ips_dirty:
            if self._listed_rows[r]:
                seen_at = self._ips[r]
                ips = sorted(seen_at, key=lambda ip: -seen_at[ip])
                dev = self._dev_of[self._mac_at[r]]
                dev.ips = ips[:MAX_NAMES]
                self._changed[dev.device_id] = dev
        self._ips_dirty.clear()

    def _list_ip(self, ip: str) -> Device:
        key = f"ip:{ip}"
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = Device(device_id=key)
        self._listed_ips.add(ip)
        dev.is_local = True
        self._refresh_ip(ip)
        dev.device_type, dev.type_confidence, _ = guess_type(dev)
        return dev

    def _refresh_ip(self, ip: str) -> None:
        dev = self._devices[f"ip:{ip}"]
        st = self._ip_only[ip]
        dev.ips = [ip]
        dev.packets, dev.bytes = st.packets, st.bytes
        dev.first_seen, dev.last_seen = st.first, st.last
