"""The straightforward device tracker: the reference for the incremental one in
:mod:`iotsentry.inventory.devices` (every device refreshed, typed and sorted on every call).

Device inventory: which local hosts exist, how they are named, and which one is the gateway.

A device is identified by its MAC address (IP bindings may change over time: DHCP, ARP and
ordinary traffic update them); captures without link-layer addresses fall back to local IPs.
The tracker is fed batch after batch, so memory grows with devices, not with capture length.
"""

from __future__ import annotations

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


class ReferenceTracker:
    """Builds the inventory from packet batches and application events."""

    def __init__(self) -> None:
        self._macs: dict[int, _MacState] = {}
        self._ip_only: dict[str, _MacState] = {}
        self._devices: dict[str, Device] = {}
        self.ip_names: dict[str, str] = {}
        self.ip_name_ts: dict[str, float] = {}
        """When a name was first seen for each address of :attr:`ip_names` (packet time)."""
        """Last DNS / mDNS name seen resolving to each IP (used to name peers)."""
        self._dhcp_servers: Counter[int] = Counter()
        self._seen_events: set[tuple[int, str, str]] = set()

    # -- packets ---------------------------------------------------------------------------
    def update(self, batch: PacketBatch, events: list[AppEvent] | None = None) -> None:
        """Account one batch of packets (and the application events parsed from it)."""
        if len(batch):
            self._update_packets(batch)
        for ev in events or ():
            if ev.kind != "dhcp":
                key = (ev.src_mac, ev.kind, repr(ev.fields))
                if key in self._seen_events:
                    continue  # the same announcement again: nothing new
                if len(self._seen_events) >= 200_000:
                    self._seen_events.clear()
                self._seen_events.add(key)
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
            for i, m in enumerate(macs.tolist()):
                st = self._macs.setdefault(m, _MacState())
                st.packets += int(pk[i])
                st.bytes += int(by[i])
                st.first = min(st.first, float(first[i]))
                st.last = max(st.last, float(last[i]))
                st.local_src += int(loc[i])
                st.relayed += int(rel[i])
            # IP bindings: (mac, local source IP) pairs, ARP senders included
            bind = uni & (src_local | (is_arp & ~is_unspecified(b.src_ip_hi, b.src_ip_lo)))
            if bind.any():
                rows = np.flatnonzero(bind)
                h = mix_keys(src_mac[rows], b.src_ip_hi[rows], b.src_ip_lo[rows])
                _, first, kinv = np.unique(h, return_index=True, return_inverse=True)
                lastb = np.full(len(first), -np.inf)
                np.maximum.at(lastb, kinv, b.ts[rows])
                r0 = rows[first]
                hi0, lo0 = b.src_ip_hi[r0].tolist(), b.src_ip_lo[r0].tolist()
                pairs = zip(src_mac[r0].tolist(), hi0, lo0, strict=True)
                for (m, hi, lo), t in zip(pairs, lastb.tolist(), strict=True):
                    ip = ip_to_str(hi, lo)
                    st = self._macs[m]
                    st.ips[ip] = max(st.ips.get(ip, t), t)
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
                st = self._ip_only.setdefault(ip, _MacState())
                st.packets += int(pk[i])
                st.bytes += int(by[i])
                st.first = min(st.first, float(first[i]))
                st.last = max(st.last, float(last[i]))
                st.local_src += int(pk[i])
                st.ips[ip] = float(last[i])

    # -- application events ------------------------------------------------------------------
    def _device_for_event(self, mac: int) -> Device | None:
        if mac == 0 or (mac >> 40) & 1:
            return None  # absent or group (multicast / broadcast) address
        key = mac_to_str(mac)
        dev = self._devices.get(key)
        if dev is None:
            dev = Device(device_id=key, mac=key)
            self._devices[key] = dev
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
                st = self._macs.setdefault(client, _MacState())
                st.ips[str(yi)] = ev.ts
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
        best, best_n = None, 0
        for m, st in self._macs.items():
            if st.relayed > best_n:
                best, best_n = m, st.relayed
        if best is not None:
            return best
        if self._dhcp_servers:
            return self._dhcp_servers.most_common(1)[0][0]
        return None

    def device_macs(self) -> set[int]:
        """MACs that are local devices (sent traffic from a local IP, ARP, or DHCP)."""
        out = {m for m, st in self._macs.items() if st.local_src > 0}
        gw = self.gateway_mac()
        if gw is not None:
            out.add(gw)
        for key in self._devices:
            if not key.startswith("ip:"):  # devices known by IP only (no link layer) have no MAC
                out.add(mac_from_str(key))
        return out

    def devices(self) -> list[Device]:
        """The inventory, gateway first, then by MAC / IP."""
        gw = self.gateway_mac()
        out: list[Device] = []
        for m in sorted(self.device_macs()):
            st = self._macs.get(m, _MacState())
            key = mac_to_str(m)
            dev = self._devices.get(key) or Device(device_id=key, mac=key)
            self._devices[key] = dev
            dev.vendor = vendor_of(m)
            dev.is_gateway = m == gw
            seen_at = st.ips
            ips = sorted(seen_at, key=lambda ip: -seen_at[ip])
            dev.ips = ips[:MAX_NAMES]
            dev.packets, dev.bytes = st.packets, st.bytes
            dev.first_seen = st.first if st.packets else 0.0
            dev.last_seen = st.last if st.packets else 0.0
            out.append(dev)
        for ip, st in sorted(self._ip_only.items()):
            key = f"ip:{ip}"
            dev = self._devices.get(key) or Device(device_id=key)
            self._devices[key] = dev
            dev.ips = [ip]
            dev.packets, dev.bytes = st.packets, st.bytes
            dev.first_seen, dev.last_seen = st.first, st.last
            out.append(dev)
        for dev in out:
            dev.device_type, dev.type_confidence, _ = guess_type(dev)
            dev.is_local = True
        out.sort(key=lambda d: (not d.is_gateway, d.device_id))
        return out
