"""Device inventory: which local hosts exist, how they are named, and which one is the gateway.

A device is identified by its MAC address (IP bindings may change over time: DHCP, ARP and
ordinary traffic update them); captures without link-layer addresses fall back to local IPs.
The tracker is fed batch after batch, so memory grows with devices, not with capture length.

:meth:`DeviceTracker.devices` is asked for after every batch: it refreshes only the devices
whose packets, addresses, names or gateway role changed since it was last asked, looks a
vendor up once per device and re-sorts only when devices join.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iotsentry.features.addresses import is_local, is_multicast, is_unicast_mac, is_unspecified
from iotsentry.features.device_context import mix_keys
from iotsentry.inventory.device_type import guess_type
from iotsentry.inventory.oui import vendor_of
from iotsentry.schema import AppEvent, Device, PacketBatch, ip_to_str, mac_from_str, mac_to_str

MAX_NAMES = 32
"""Bound on the names / DNS names / User-Agents kept per device (attacker-controlled input)."""


def _add_bounded(items: list[str], value: str, limit: int = MAX_NAMES) -> None:
    value = value.strip().rstrip(".")
    if value and value not in items and len(items) < limit:
        items.append(value[:255])


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
    packets: int = 0
    bytes: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    local_src: int = 0
    relayed: int = 0
    ips: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    """Order of creation (ties for the gateway go to the MAC seen first)."""


_NO_STATE = _MacState()
"""Read-only stand-in for a listed MAC without packets."""


class DeviceTracker:
    """Builds the inventory from packet batches and application events."""

    def __init__(self) -> None:
        self._macs: dict[int, _MacState] = {}
        self._ip_only: dict[str, _MacState] = {}
        self._devices: dict[str, Device] = {}
        self.ip_names: dict[str, str] = {}
        """Last DNS / mDNS name seen resolving to each IP (used to name peers)."""
        self.ip_name_ts: dict[str, float] = {}
        """When a name was first seen for each address of :attr:`ip_names` (packet time)."""
        self._dhcp_servers: Counter[int] = Counter()
        self._seen_events: dict[tuple[int, str, int], Any] = {}
        # incremental state of the inventory (see devices())
        self._local: set[int] = set()
        """MACs that sent from a local IP or ARP (``local_src > 0``)."""
        self._keyed: set[int] = set()
        """MACs with an entry in ``_devices``."""
        self._relay_best: int | None = None
        self._relay_n = 0
        self._listed: set[int] = set()
        self._listed_ips: set[str] = set()
        self._join: set[int] = set()
        """MACs that may have become devices since the inventory was last built."""
        self._join_ips: set[str] = set()
        self._dirty: set[int] = set()
        """MACs whose counters or addresses changed since the inventory was last built."""
        self._dirty_ips: set[str] = set()
        self._retype: set[int] = set()
        """MACs whose names, announcements, User-Agents or DHCP options changed."""
        self._ids: list[str] = []
        self._order: list[Device] = []
        """Every listed device, by device id (``_ids`` holds the ids)."""
        self._gateway: int | None = None
        """The gateway as of the last inventory."""

    def _state(self, mac: int) -> _MacState:
        st = self._macs.get(mac)
        if st is None:
            st = self._macs[mac] = _MacState(seq=len(self._macs))
        return st

    # -- packets ---------------------------------------------------------------------------
    def update(self, batch: PacketBatch, events: list[AppEvent] | None = None) -> None:
        """Account one batch of packets (and the application events parsed from it)."""
        if len(batch):
            self._update_packets(batch)
        seen = self._seen_events
        for ev in events or ():
            key = (ev.src_mac, ev.kind, id(ev.fields))
            if key in seen and ev.kind != "dhcp":
                continue  # the same announcement again (parsed fields are shared): nothing new
            if len(seen) >= 200_000:
                seen.clear()
            seen[key] = ev.fields  # holding the dict keeps its id unique
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
            loc = np.bincount(inv, weights=(src_local | is_arp)[uni], minlength=len(macs))
            rel = np.bincount(inv, weights=src_relayed[uni], minlength=len(macs))
            mac_list = macs.tolist()
            self._dirty.update(mac_list)
            columns = zip(
                mac_list,
                pk.tolist(),
                by.tolist(),
                first.tolist(),
                last.tolist(),
                loc.tolist(),
                rel.tolist(),
                strict=True,
            )
            for m, n_pk, n_by, t0, t1, n_loc, n_rel in columns:
                st = self._state(m)
                st.packets += int(n_pk)
                st.bytes += int(n_by)
                st.first = min(st.first, t0)
                st.last = max(st.last, t1)
                if n_loc:
                    if not st.local_src:
                        self._local.add(m)
                        self._join.add(m)
                    st.local_src += int(n_loc)
                if n_rel:
                    st.relayed += int(n_rel)
                    self._note_relay(m, st)
            # IP bindings: (mac, local source IP) pairs, ARP senders included
            bind = uni & (src_local | (is_arp & ~is_unspecified(b.src_ip_hi, b.src_ip_lo)))
            if bind.any():
                rows = np.flatnonzero(bind)
                h = mix_keys(src_mac[rows], b.src_ip_hi[rows], b.src_ip_lo[rows])
                _, first_row, kinv = np.unique(h, return_index=True, return_inverse=True)
                lastb = np.full(len(first_row), -np.inf)
                np.maximum.at(lastb, kinv, b.ts[rows])
                r0 = rows[first_row]
                hi0, lo0 = b.src_ip_hi[r0].tolist(), b.src_ip_lo[r0].tolist()
                pairs = zip(src_mac[r0].tolist(), hi0, lo0, strict=True)
                for (m, hi, lo), t in zip(pairs, lastb.tolist(), strict=True):
                    ip = ip_to_str(hi, lo)
                    ips = self._macs[m].ips
                    ips[ip] = max(ips.get(ip, t), t)
        # captures without link-layer addresses: local IPs stand for devices
        nomac = (src_mac == 0) & src_local
        if nomac.any():
            keys = np.stack([b.src_ip_hi[nomac], b.src_ip_lo[nomac]], axis=1)
            uk, kinv = np.unique(keys, axis=0, return_inverse=True)
            kinv = kinv.ravel()
            pk = np.bincount(kinv, minlength=len(uk))
            by = np.bincount(kinv, weights=b.wire_len[nomac].astype(np.float64), minlength=len(uk))
            tsn = b.ts[nomac]
            first = np.full(len(uk), np.inf)
            last = np.full(len(uk), -np.inf)
            np.minimum.at(first, kinv, tsn)
            np.maximum.at(last, kinv, tsn)
            for i, (hi, lo) in enumerate(uk.tolist()):
                ip = ip_to_str(hi, lo)
                ist = self._ip_only.get(ip)
                if ist is None:
                    ist = self._ip_only[ip] = _MacState()
                    self._join_ips.add(ip)
                self._dirty_ips.add(ip)
                ist.packets += int(pk[i])
                ist.bytes += int(by[i])
                ist.first = min(ist.first, float(first[i]))
                ist.last = max(ist.last, float(last[i]))
                ist.local_src += int(pk[i])
                ist.ips[ip] = float(last[i])

    def _note_relay(self, mac: int, st: _MacState) -> None:
        """Keep the MAC with the most relayed packets (the first seen among equals)."""
        best = self._relay_best
        if best == mac:
            self._relay_n = st.relayed
        elif st.relayed > self._relay_n or (
            best is not None and st.relayed == self._relay_n and st.seq < self._macs[best].seq
        ):
            self._relay_best, self._relay_n = mac, st.relayed

    # -- application events ------------------------------------------------------------------
    def _device_for_event(self, mac: int) -> Device | None:
        if mac == 0 or (mac >> 40) & 1:
            return None  # absent or group (multicast / broadcast) address
        key = mac_to_str(mac)
        dev = self._devices.get(key)
        if dev is None:
            dev = Device(device_id=key, mac=key)
            self._devices[key] = dev
            self._keyed.add(mac)
            self._join.add(mac)
        self._retype.add(mac)
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
                self._state(client).ips[str(yi)] = ev.ts
                self._dirty.add(client)
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
        """The MAC that relays internet traffic (most packets with a non-local source IP)."""
        if self._relay_best is not None:
            return self._relay_best
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
        """The inventory, gateway first, then by MAC / IP."""
        gw = self.gateway_mac()
        if gw is not None:
            self._join.add(gw)
        if gw != self._gateway:
            for m in (self._gateway, gw):
                if m is not None and m in self._listed:
                    self._dirty.add(m)
                    self._retype.add(m)
            self._gateway = gw
        joined: list[Device] = []
        for m in self._join - self._listed:
            if m in self._local or m in self._keyed or m == gw:
                joined.append(self._list_mac(m))
        for ip in self._join_ips - self._listed_ips:
            joined.append(self._list_ip(ip))
        self._join.clear()
        self._join_ips.clear()
        for m in self._dirty & self._listed:
            self._refresh_mac(m, gw)
        for m in self._retype & self._listed:
            dev = self._devices[mac_to_str(m)]
            dev.device_type, dev.type_confidence, _ = guess_type(dev)
        for ip in self._dirty_ips & self._listed_ips:
            self._refresh_ip(ip)
        self._dirty.clear()
        self._retype.clear()
        self._dirty_ips.clear()
        if len(joined) > 64:
            merged = sorted([*zip(self._ids, self._order, strict=True), *((d.device_id, d) for d in joined)])
            self._ids = [i for i, _ in merged]
            self._order = [d for _, d in merged]
        else:
            for dev in joined:
                at = bisect_left(self._ids, dev.device_id)
                self._ids.insert(at, dev.device_id)
                self._order.insert(at, dev)
        if gw is None:
            return list(self._order)
        at = bisect_left(self._ids, mac_to_str(gw))
        return [self._order[at], *self._order[:at], *self._order[at + 1 :]]

    def _list_mac(self, m: int) -> Device:
        """A MAC enters the inventory: its device, vendor and every derived field."""
        key = mac_to_str(m)
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = Device(device_id=key, mac=key)
            self._keyed.add(m)
        self._listed.add(m)
        dev.vendor = vendor_of(m)
        dev.is_local = True
        self._dirty.add(m)
        self._retype.add(m)
        return dev

    def _refresh_mac(self, m: int, gw: int | None) -> None:
        dev = self._devices[mac_to_str(m)]
        st = self._macs.get(m, _NO_STATE)
        dev.is_gateway = m == gw
        seen_at = st.ips
        ips = sorted(seen_at, key=lambda ip: -seen_at[ip])
        dev.ips = ips[:MAX_NAMES]
        dev.packets, dev.bytes = st.packets, st.bytes
        dev.first_seen = st.first if st.packets else 0.0
        dev.last_seen = st.last if st.packets else 0.0

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
