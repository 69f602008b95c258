"""Shared machinery of the problem-space transformations: who the attacker is, what a
transformation costs, and how delays propagate along the attacker's traffic.

* :class:`AttackerSelector` / :func:`roles` -- which frames the attacker sends (and so
  controls), which it receives, which belong to the servers it talks to;
* :class:`Cost` / :func:`measure_cost` -- IP bytes and packets added, delay added, slowdown;
* :func:`chains` / :func:`running_max` / :func:`shifted` -- causal chains: the attacker's
  traffic in time order (all of it, or per flow). Shifting every packet by the running maximum
  of the delays along its chain never shrinks a gap, so order and causality hold;
* :func:`finish` -- new frames, time-sorted, with their cost.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_frames import (
    Fields,
    Packets,
    concat_captures,
    flow_ids,
    header_fields,
    ip_bytes,
)
from iotsentry.evaluation.mix import Capture, host_mac

__all__ = [
    "US",
    "WINDOW_US",
    "AttackerSelector",
    "Cost",
    "Roles",
    "Scope",
    "chains",
    "finish",
    "ip_int",
    "measure_cost",
    "roles",
    "rows_against",
    "running_max",
    "shifted",
]

US = 1_000_000
WINDOW_US = 60 * US
"""The per-device window of the profile detector (``features.device_context.WINDOW_S``)."""
_SEG_BITS = 40
"""Segmented running maxima pack (segment, value) into one int64: values below 2**40 µs
(12.7 days), fewer than 2**23 chains."""


# ---------------------------------------------------------------------------------------------
# Who is the attacker
# ---------------------------------------------------------------------------------------------


def ip_int(text: str) -> int:
    """An IPv4 address as an integer."""
    return int(ipaddress.IPv4Address(text))


@dataclass(frozen=True)
class AttackerSelector:
    """The attacker-controlled host of a capture.

    Parameters
    ----------
    ip
        IPv4 address of the infected host (in a Q1 mix: the victim device's address).
    mac
        Its MAC (``aa:bb:..``) for non-IP frames (ARP); default: the MAC it sends from.
    servers
        Responders the attack talks to (C&C servers, brute-force targets).
    servers_controlled
        The attacker runs ``servers`` (its C&C): their packets are controlled too (padding,
        delays), and TCP padding toward them is stripped by the receiver.
    attack_only
        Only frames flagged ``attack`` are the attacker's (a mix shares the address with the
        device's own traffic); without the flag every frame of the host is.
    """

    ip: str
    mac: str | None = None
    servers: tuple[str, ...] = ()
    servers_controlled: bool = False
    attack_only: bool = True

    @property
    def ip_int(self) -> int:
        """The address as an integer."""
        return ip_int(self.ip)

    def mac_int(self, cap: Capture) -> int:
        """The host's MAC (given, else the one it sends from; -1 when unknown)."""
        if self.mac:
            return int(self.mac.replace(":", "").replace("-", ""), 16)
        m = host_mac(cap, self.ip_int)
        return -1 if m is None else m


@dataclass
class Roles:
    """Per-frame roles relative to the attacker."""

    sent: npt.NDArray[np.bool_]
    """Sent by the attacker host (its own traffic)."""
    server_sent: npt.NDArray[np.bool_]
    """Sent by one of the selector's servers to the attacker."""
    involved: npt.NDArray[np.bool_]
    """The attacker's traffic in either direction (what delays must keep consistent)."""
    controlled: npt.NDArray[np.bool_]
    """What the attacker may shape: ``sent``, plus ``server_sent`` for servers it runs."""
    peer: npt.NDArray[np.int64]
    """The other end's IPv4 address (-1 when not IPv4)."""
    to_server: npt.NDArray[np.bool_]
    """Traffic between the attacker and one of the selector's servers."""


def roles(pk: Packets, f: Fields, attacker: AttackerSelector) -> Roles:
    """Roles of every frame of ``pk``."""
    ip = attacker.ip_int
    mac = attacker.mac_int(pk.cap)
    other = ~f.ipv4
    sent = (f.src == ip) | (other & (f.src_mac == mac) & (mac >= 0))
    recv = ((f.dst == ip) | (other & (f.dst_mac == mac) & (mac >= 0))) & ~sent
    if attacker.attack_only:
        sent &= pk.attack
        recv &= pk.attack
    peer = np.where(sent, f.dst, np.where(recv, f.src, -1))
    servers = np.array([ip_int(s) for s in attacker.servers], np.int64)
    to_server = (sent | recv) & np.isin(peer, servers)
    server_sent = recv & to_server
    controlled = sent | (server_sent & attacker.servers_controlled)
    return Roles(sent, server_sent, sent | recv, controlled, peer, to_server)


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """The price of a transformation.

    ``bytes_added`` counts IP-level bytes (IPv4 total length; Ethernet zero fill of short
    frames not counted), padding and added packets in both directions; ``delay_total_s`` sums
    the delay added to every packet the attacker sent, ``delay_max_s`` is the largest delay
    added to any packet; ``slowdown_factor`` is the new duration of the attacker's malicious
    traffic over the old one (first to last packet it sent).
    """

    bytes_added: int = 0
    packets_added: int = 0
    delay_total_s: float = 0.0
    delay_max_s: float = 0.0
    slowdown_factor: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def measure_cost(
    before: Packets,
    after: Packets,
    attacker: AttackerSelector,
    rows: npt.NDArray[np.int64] | None = None,
) -> Cost:
    """Cost of turning ``before`` into ``after``.

    ``rows[i]`` is the frame of ``before`` that frame ``i`` of ``after`` came from (-1: added);
    by default ``after.origin`` (right when ``before`` is the untransformed capture).
    """
    rows = after.origin if rows is None else np.asarray(rows, np.int64)
    fb, fa = header_fields(before.cap), header_fields(after.cap)
    added_bytes = int(ip_bytes(fa).sum() - ip_bytes(fb).sum())
    moved = rows >= 0
    delay = np.zeros(len(after), np.int64)
    delay[moved] = after.ts_us[moved] - before.ts_us[rows[moved]]
    ra = roles(after, fa, attacker)
    sent = moved & ra.sent
    mal = sent & (after.label == 1)
    sel = mal if mal.any() else sent
    slow = 1.0
    if sel.sum() >= 2:
        old = before.ts_us[rows[sel]]
        new = after.ts_us[sel]
        span_old = int(old.max() - old.min())
        if span_old > 0:
            slow = float(new.max() - new.min()) / span_old
    return Cost(
        bytes_added=added_bytes,
        packets_added=len(after) - len(before),
        delay_total_s=float(delay[sent].sum()) / US,
        delay_max_s=float(delay[moved].max()) / US if moved.any() else 0.0,
        slowdown_factor=slow,
    )


def finish(
    before: Packets, cap: Capture, attacker: AttackerSelector, extra: Packets | None = None
) -> tuple[Packets, Cost]:
    """New packets from ``cap`` (same rows as ``before``) plus ``extra`` frames, time-sorted,
    with their cost against ``before``."""
    out = Packets(cap, before.label.copy(), before.attack.copy(), before.origin.copy())
    rows = np.arange(len(before), dtype=np.int64)
    if extra is not None and len(extra):
        out = Packets(
            concat_captures(out.cap, extra.cap),
            np.concatenate([out.label, extra.label]),
            np.concatenate([out.attack, extra.attack]),
            np.concatenate([out.origin, extra.origin]),
        )
        rows = np.concatenate([rows, np.full(len(extra), -1, np.int64)])
    out, order = out.time_sorted()
    return out, measure_cost(before, out, attacker, rows[order])


# ---------------------------------------------------------------------------------------------
# Time shifts along causal chains
# ---------------------------------------------------------------------------------------------


Scope = Literal["host", "flow"]


def chains(
    pk: Packets, f: Fields, ro: Roles, scope: Scope
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Rows of the attacker's traffic in chain order (chain, time, row) and chain starts."""
    rows = np.flatnonzero(ro.involved).astype(np.int64)
    key = flow_ids(f)[rows] if scope == "flow" else np.zeros(len(rows), np.int64)
    order = np.lexsort((rows, pk.ts_us[rows], key))
    rows, key = rows[order], key[order]
    starts = np.ones(len(rows), bool)
    starts[1:] = key[1:] != key[:-1]
    return rows, starts


def running_max(values: npt.NDArray[np.int64], starts: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Running maximum of non-negative ``values`` restarting at every ``starts``."""
    if not len(values):
        return values
    if int(values.max()) >= (1 << _SEG_BITS):
        raise ValueError("delay too large (more than 2**40 µs)")
    seg = np.cumsum(starts).astype(np.int64) - 1
    packed = (seg << _SEG_BITS) | values
    return np.maximum.accumulate(packed) - (seg << _SEG_BITS)


def shifted(pk: Packets, rows: npt.NDArray[np.int64], shift: npt.NDArray[np.int64]) -> Capture:
    """The frames of ``pk`` with ``rows`` moved later by ``shift`` microseconds (not re-sorted)."""
    ts = pk.ts_us.copy()
    ts[rows] += shift
    return Capture(ts, pk.cap.buf, pk.cap.off, pk.cap.snaplen, pk.cap.truncated)


def rows_against(before: Packets, after: Packets) -> npt.NDArray[np.int64]:
    """Row of ``before`` each frame of ``after`` came from, matched by ``origin``."""
    size = int(max(before.origin.max(initial=-1), after.origin.max(initial=-1))) + 1
    where = np.full(size + 1, -1, np.int64)  # the last slot answers origin -1
    have = before.origin >= 0
    where[before.origin[have]] = np.flatnonzero(have)
    return where[np.where(after.origin >= 0, after.origin, size)]
