"""Segmentation advice: per-device allow-lists from mature baselines, as JSON or nftables.

While a baseline learns, :class:`AllowlistCollector` records every distinct
(device, peer, protocol, port, direction) of the learning traffic: ``out`` when the device
opened the conversation to ``peer:port`` (a TCP SYN it sent, or the peer's side holding the
service port), ``in`` when the peer opened it to the device's ``port``; ICMP echo becomes
``icmp``/``icmpv6`` with the echo-request type as port. :func:`build_allowlist` keeps the
devices whose baseline is mature (:mod:`iotsentry.baseline.maturity`); the others, and the
gateway, are listed as excluded with the reason. Only learning-period traffic is ever used,
so what a device does after its baseline was learned (an attack included) cannot widen its
allow-list.

:meth:`Allowlist.to_nftables` writes a ``table inet iotsentry`` with, per device, a set of its
addresses and an ``out`` and an ``in`` chain that accept the learned conversations and drop the
rest; the ``forward`` chain accepts established/related traffic and jumps to the device chains.
Multicast peers are kept in the JSON only (a forward hook never sees them).
:func:`learn_allowlist` runs the whole thing over capture files (inventory, learning period).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.baseline.profile import Baseline, TokenRows
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.features.app_tokens import TokenLog
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, PacketContext, packet_context
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import Device, PacketBatch, ip_to_str, rfc3339

__all__ = [
    "AllowRule",
    "Allowlist",
    "AllowlistCollector",
    "DeviceAllowlist",
    "build_allowlist",
    "learn_allowlist",
]

PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
ECHO_REQUEST = {1: 8, 58: 128}
MAX_RULES_PER_DEVICE = 4096


@dataclass(frozen=True)
class AllowRule:
    """One allowed conversation of a device."""

    peer: str
    proto: str
    port: int
    direction: str
    packets: int = 0
    scope: str = "internet"
    """``internet``, ``local`` (private / link-local) or ``multicast``."""


@dataclass
class DeviceAllowlist:
    """The allow-list of one device with a mature baseline."""

    device_id: str
    label: str
    mac: str | None
    ips: list[str]
    maturity: dict[str, Any]
    rules: list[AllowRule] = field(default_factory=list)

    @property
    def peers(self) -> set[str]:
        """Every allowed peer address."""
        return {r.peer for r in self.rules}


@dataclass
class Allowlist:
    """Allow-lists of the mature devices, and why the others were left out."""

    devices: list[DeviceAllowlist]
    excluded: dict[str, str]
    learned_until: float | None = None

    def device(self, device_id: str) -> DeviceAllowlist | None:
        """The allow-list of ``device_id`` (None when excluded or unknown)."""
        return next((d for d in self.devices if d.device_id == device_id), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready document (``format: iotsentry-allowlist``, version 1)."""
        return {
            "format": "iotsentry-allowlist",
            "version": 1,
            "learned_until": rfc3339(self.learned_until) if self.learned_until is not None else None,
            "devices": [
                {
                    **{k: v for k, v in asdict(d).items() if k != "rules"},
                    "rules": [asdict(r) for r in d.rules],
                }
                for d in self.devices
            ],
            "excluded": [{"device_id": k, "reason": v} for k, v in self.excluded.items()],
        }

    def to_nftables(self) -> str:
        """An ``nft -f`` ruleset (see module docstring)."""
        return nftables_ruleset(self)


class AllowlistCollector:
    """Distinct conversations per device of the learning traffic (bounded per device)."""

    def __init__(self, device_ids: Sequence[str], max_rules: int = MAX_RULES_PER_DEVICE) -> None:
        self.device_ids = list(device_ids)
        self.max_rules = max_rules
        self.seen: dict[int, dict[tuple[int, int, int, int, bool], int]] = {}
        """device -> (peer hi, peer lo, proto, port, outgoing) -> packets."""
        self.dropped = 0
        """Conversations not recorded because a device reached ``max_rules``."""

    def add(self, batch: PacketBatch, ctx: PacketContext, until: float | None = None) -> None:
        """Record the conversations of a batch's device packets (those before ``until`` only)."""
        b = batch
        ok = (ctx.device >= 0) & (b.ip_version > 0)
        if until is not None:
            ok &= b.ts < until
        proto = b.proto
        tcpudp = (proto == 6) | (proto == 17)
        icmp = (proto == 1) | (proto == 58)
        peer_port = np.where(ctx.outbound, b.dst_port, b.src_port)
        dev_port = np.where(ctx.outbound, b.src_port, b.dst_port)
        syn = (proto == 6) & ((b.tcp_flags & 0x12) == 0x02)
        out_tu = np.where(syn, ctx.outbound, peer_port == ctx.service)
        port_tu = np.where(syn, b.dst_port, np.where(out_tu, peer_port, dev_port))
        # ICMP: only echo; ctx.service folds replies onto the request type
        echo = icmp & ((ctx.service == 8) | (ctx.service == 128))
        request = (b.src_port == 8) | (b.src_port == 128)
        out_ic = ctx.outbound == request
        keep = ok & (tcpudp | echo)
        idx = np.flatnonzero(keep)
        if not len(idx):
            return
        outgoing = np.where(tcpudp, out_tu, out_ic)[idx]
        port = np.where(tcpudp, port_tu, ctx.service)[idx].astype(np.uint64)
        keys = np.stack(
            [
                ctx.device[idx].astype(np.uint64),
                ctx.peer_hi[idx],
                ctx.peer_lo[idx],
                proto[idx].astype(np.uint64),
                port,
                outgoing.astype(np.uint64),
            ],
            axis=1,
        )
        uk, counts = np.unique(keys, axis=0, return_counts=True)
        for (d, hi, lo, pr, pt, o), c in zip(uk.tolist(), counts.tolist(), strict=True):
            store = self.seen.setdefault(int(d), {})
            key = (int(hi), int(lo), int(pr), int(pt), bool(o))
            if key in store:
                store[key] += int(c)
            elif len(store) < self.max_rules:
                store[key] = int(c)
            else:
                self.dropped += 1

    def rules(self, device: int) -> list[AllowRule]:
        """The device's conversations as rules (sorted)."""
        out = []
        for (hi, lo, pr, pt, o), c in self.seen.get(device, {}).items():
            peer = ip_to_str(hi, lo)
            out.append(AllowRule(peer, PROTO.get(pr, str(pr)), pt, "out" if o else "in", c, _scope(peer)))
        return sorted(out, key=lambda r: (r.direction, r.proto, r.port, _addr_key(r.peer)))


def _scope(peer: str) -> str:
    a = ipaddress.ip_address(peer)
    if a.is_multicast or peer == "255.255.255.255" or (a.version == 4 and peer.endswith(".255")):
        return "multicast"
    if a.is_private or a.is_link_local:
        return "local"
    return "internet"


def _addr_key(peer: str) -> tuple[int, int]:
    a = ipaddress.ip_address(peer)
    return a.version, int(a)


def build_allowlist(
    collector: AllowlistCollector,
    baseline: Baseline,
    devices: Sequence[Device] = (),
    learned_until: float | None = None,
) -> Allowlist:
    """Allow-lists of the devices whose baseline is mature; the rest are excluded with a reason."""
    by_id = {d.device_id: d for d in devices}
    kept: list[DeviceAllowlist] = []
    excluded: dict[str, str] = {}
    for i, prof in enumerate(baseline.profiles):
        dev = by_id.get(prof.device_id)
        if dev is not None and dev.is_gateway:
            excluded[prof.device_id] = "gateway (its traffic is everyone's)"
            continue
        mat = prof.maturity()
        if not mat.mature:
            excluded[prof.device_id] = f"baseline not mature: {mat.reason}"
            continue
        idx = collector.device_ids.index(prof.device_id) if prof.device_id in collector.device_ids else i
        rules = collector.rules(idx)
        if not rules:
            excluded[prof.device_id] = "no conversation recorded while learning"
            continue
        kept.append(
            DeviceAllowlist(
                prof.device_id,
                dev.label if dev is not None else prof.device_id,
                dev.mac if dev is not None else None,
                list(dev.ips) if dev is not None else [],
                mat.to_dict(),
                rules,
            )
        )
    return Allowlist(kept, excluded, learned_until)


# -- nftables -----------------------------------------------------------------------------------------
def _ident(device_id: str) -> str:
    return "dev_" + re.sub(r"[^A-Za-z0-9]", "", device_id.removeprefix("ip:"))[:40]


def _comment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9 ._:/()=,+-]", "_", text)[:120]


def _own_addresses(d: DeviceAllowlist) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for ip in d.ips:
        a = ipaddress.ip_address(ip)
        if a.is_link_local or a.is_loopback or a.is_unspecified:
            continue
        (v4 if a.version == 4 else v6).append(str(a))
    return sorted(set(v4)), sorted(set(v6))


def _rule_lines(d: DeviceAllowlist, direction: str) -> list[str]:
    groups: dict[tuple[int, str, int], list[str]] = {}
    version: int
    for r in d.rules:
        if r.direction != direction or r.scope == "multicast":
            continue
        version = ipaddress.ip_address(r.peer).version
        if r.proto in ("icmp", "icmpv6") and (r.proto == "icmp") != (version == 4):
            continue
        groups.setdefault((version, r.proto, r.port), []).append(r.peer)
    lines = []
    for (version, proto, port), peers in sorted(groups.items()):
        fam = "ip" if version == 4 else "ip6"
        side = "daddr" if direction == "out" else "saddr"
        addrs = peers[0] if len(peers) == 1 else "{ " + ", ".join(sorted(set(peers), key=_addr_key)) + " }"
        match = f"{proto} dport {port}" if proto in ("tcp", "udp") else f"{proto} type echo-request"
        lines.append(f"\t\t{fam} {side} {addrs} {match} accept")
    return lines


def nftables_ruleset(allowlist: Allowlist) -> str:
    """The allow-lists as an ``nft -f`` script (``table inet iotsentry``, default drop per device)."""
    out = ["#!/usr/sbin/nft -f", "# iotsentry segmentation advice: learned conversations per device"]
    if allowlist.learned_until is not None:
        out.append(f"# learned from traffic before {rfc3339(allowlist.learned_until)}")
    for dev_id, why in allowlist.excluded.items():
        out.append(f"# excluded {_comment(dev_id)}: {_comment(why)}")
    out += ["", "table inet iotsentry", "delete table inet iotsentry", "", "table inet iotsentry {"]
    jumps: list[str] = []
    for d in allowlist.devices:
        name = _ident(d.device_id)
        v4, v6 = _own_addresses(d)
        out.append(
            f"\t# {_comment(d.label)} ({_comment(d.device_id)}), maturity {d.maturity.get('score', 0):.2f}"
        )
        if v4:
            out.append(f"\tset {name}_v4 {{\n\t\ttype ipv4_addr\n\t\telements = {{ {', '.join(v4)} }}\n\t}}")
            jumps += [f"\t\tip saddr @{name}_v4 jump {name}_out", f"\t\tip daddr @{name}_v4 jump {name}_in"]
        if v6:
            out.append(f"\tset {name}_v6 {{\n\t\ttype ipv6_addr\n\t\telements = {{ {', '.join(v6)} }}\n\t}}")
            jumps += [f"\t\tip6 saddr @{name}_v6 jump {name}_out", f"\t\tip6 daddr @{name}_v6 jump {name}_in"]
        if not v4 and not v6 and d.mac:
            jumps.append(f"\t\tether saddr {d.mac} jump {name}_out")
        for direction in ("out", "in"):
            out.append(f"\tchain {name}_{direction} {{")
            out += _rule_lines(d, direction)
            label = _comment(f"iotsentry: {d.device_id} {direction} not in its baseline")
            out.append(f'\t\tcounter drop comment "{label}"')
            out.append("\t}")
    out.append("\tchain forward {")
    out.append("\t\ttype filter hook forward priority 0; policy accept;")
    out.append("\t\tct state established,related accept")
    out += jumps
    out += ["\t}", "}", ""]
    return "\n".join(out)


# -- over capture files -------------------------------------------------------------------------------
def learn_allowlist(
    paths: Sequence[str | Path],
    *,
    learn_seconds: float | None = None,
    learn_fraction: float = 0.5,
    batch_size: int = 250_000,
) -> Allowlist:
    """Inventory, baselines and allow-lists from captures, learning from the first
    ``learn_seconds`` (default: ``learn_fraction`` of the span), aligned down to a window."""
    tracker, tokens = DeviceTracker(), TokenLog()
    first, last, n = math.inf, -math.inf, 0
    for p in paths:
        for b in read_packets(p, batch_size=batch_size, with_raw=keep_raw_for_app_fields):
            events = extract_app_events(b)
            tracker.update(b, events)
            if events:
                tokens.add(events, b.index, n)
            if len(b):
                first, last = min(first, float(b.ts.min())), max(last, float(b.ts.max()))
            n += len(b)
    devices = tracker.devices()
    gw = next((d.device_id for d in devices if d.is_gateway), None)
    ids = [d.device_id for d in devices]
    index = DeviceIndex(ids, gw)
    baseline = Baseline(ids)
    collector = AllowlistCollector(ids)
    if not math.isfinite(first):
        return build_allowlist(collector, baseline, devices, None)
    secs = learn_seconds if learn_seconds is not None else (last - first) * learn_fraction
    until = math.floor((first + max(0.0, secs)) / WINDOW_S) * WINDOW_S
    pos = 0
    for b in _window_aligned(b for p in paths for b in read_packets(p, batch_size=batch_size)):
        positions = pos + np.arange(len(b), dtype=np.int64)
        pos += len(b)
        before = b.ts < until
        if not before.any():
            continue
        lb = b if before.all() else b.take(before)
        ctx = packet_context(lb, index)
        baseline.learn(lb, ctx, tracker.ip_names, _token_rows(tokens, positions[before], index))
        collector.add(lb, ctx, until)
    return build_allowlist(collector, baseline, devices, until)


def _window_aligned(batches: Iterator[PacketBatch]) -> Iterator[PacketBatch]:
    """Re-cut batches so that no time window is split across two of them (as the pipeline does)."""
    carry: PacketBatch | None = None
    for b in batches:
        if carry is not None:
            b = PacketBatch.concat([carry, b])
            carry = None
        if not len(b):
            continue
        w = np.floor(b.ts / WINDOW_S)
        cut = int(np.searchsorted(w, w[-1], side="left")) if np.all(np.diff(w) >= 0) else len(b)
        if cut < len(b):
            carry = b.take(np.arange(cut, len(b)))
        if cut:
            yield b if cut == len(b) else b.take(np.arange(cut))
    if carry is not None and len(carry):
        yield carry


def _token_rows(tokens: TokenLog, positions: np.ndarray[Any, Any], index: DeviceIndex) -> TokenRows:
    if not len(positions):
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint64)
    pos, mac, h = tokens.in_range(int(positions[0]), int(positions[-1]) + 1)
    rows = np.searchsorted(positions, pos)
    ok = (rows < len(positions)) & (positions[np.minimum(rows, len(positions) - 1)] == pos)
    return rows[ok].astype(np.int64), index.of_macs(mac[ok]), h[ok]


def write_allowlist(allowlist: Allowlist, fmt: str) -> str:
    """The allow-list as text in ``fmt`` (``json`` or ``nftables``)."""
    if fmt == "json":
        return json.dumps(allowlist.to_json(), indent=2) + "\n"
    if fmt == "nftables":
        return allowlist.to_nftables()
    raise ValueError(f"unknown format {fmt!r} (json or nftables)")
