"""Problem-space evasion: transformations of a capture that change only the attacker's traffic.

ARCHITECTURE: "Problem-space attacks transform captures (packets), then features are
re-extracted: an adversarial example counts only if it is realisable as traffic and keeps its
malicious function." Every transformation here is a pure function

    ``transform(packets, attacker, params, seed) -> (new packets, Cost)``

on a :class:`~iotsentry.adversarial.problem_frames.Packets` (frames + per-frame ``label``,
``attack``, ``origin``). It changes only what the attacker controls -- packets *sent* by the
infected host (its IPv4 address / MAC; in a Q1 mix only the replayed malware frames, not the
device's own firmware traffic), and with ``servers_controlled`` also those sent by the C&C
servers it runs -- and keeps everything a real exchange implies consistent:

* :func:`pad_payloads` appends padding to the attacker's UDP payloads and TCP segments. In
  TCP every later sequence number of that direction and every ACK / SACK edge of the other
  direction is moved (retransmissions get the same padding), IP/UDP lengths and all checksums
  are recomputed. TCP padding is realisable in-band only where the receiver drops it: the
  attacker's own server (default) or protocols with their own padding (``tcp="any"``, e.g.
  SSH/TLS records). SYN probes can carry data the target discards (``pad_syn``).
* :func:`jitter_delay` delays the attacker's packets by random amounts; :func:`rate_limit`
  paces them (at most ``max_pps`` packets per second) or stretches the attack ``slowdown``
  times. Causality: along a *chain* (all the attacker's traffic, or each bidirectional flow,
  in time order) a packet is never moved less than the one before it, so every gap only grows
  -- a reply is never earlier than its request and order is kept; replies the attacker does
  not control move with their requests.
* :func:`add_chaff` adds complete benign-looking flows from the attacker host (DNS to its
  resolver, NTP, short TCP/TLS sessions) to the peers and services it already uses.
* :func:`mimic_baseline` delays the attacker's packets so that the device's per-window volume,
  connection starts and new peers / services stay under its learned maxima
  (:class:`DeviceBudget` from :class:`~iotsentry.baseline.profile.DeviceProfile`), then adds
  chaff to learned peers.
* :func:`compose` chains them; its cost is measured against the first capture.

Every output is sorted by time (ties keep their order), labels stay aligned (``origin`` tracks
each frame; chaff is labelled malicious: it is the attacker's). :class:`Cost` reports the
price: IP bytes and packets added, delay added (total over the attacker's packets, and the
largest) and the slowdown of the attack's duration.

This module holds padding, jitter, rate limiting and composition and re-exports the rest:
selector, roles, cost and causal chains live in :mod:`~iotsentry.adversarial.problem_core`,
frames in :mod:`~iotsentry.adversarial.problem_frames`, chaff in
:mod:`~iotsentry.adversarial.problem_chaff`, mimicry in :mod:`~iotsentry.adversarial.problem_mimic`;
the function checks are in :mod:`~iotsentry.adversarial.problem_checks` and the Q6 evaluation in
:mod:`~iotsentry.adversarial.problem_eval`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_chaff import ChaffParams, add_chaff
from iotsentry.adversarial.problem_core import (
    US,
    AttackerSelector,
    Cost,
    Roles,
    Scope,
    chains,
    finish,
    measure_cost,
    roles,
    rows_against,
    running_max,
    shifted,
)
from iotsentry.adversarial.problem_frames import (
    TCP_ACK,
    TCP_SYN,
    Fields,
    Packets,
    connection_ids,
    header_fields,
    rebuild_ipv4,
    replace_frames,
)
from iotsentry.adversarial.problem_mimic import DeviceBudget, MimicParams, mimic_baseline

__all__ = [
    "TRANSFORMS",
    "AttackerSelector",
    "ChaffParams",
    "Cost",
    "DeviceBudget",
    "JitterParams",
    "MimicParams",
    "PadParams",
    "Params",
    "RateParams",
    "Roles",
    "add_chaff",
    "compose",
    "jitter_delay",
    "measure_cost",
    "mimic_baseline",
    "pad_payloads",
    "rate_limit",
    "roles",
]


# ---------------------------------------------------------------------------------------------
# 1. Padding
# ---------------------------------------------------------------------------------------------

PadMode = Literal["uniform", "fixed", "round"]


@dataclass(frozen=True)
class PadParams:
    """Padding budget.

    ``mode``: ``fixed`` adds exactly ``bytes`` to every padded payload, ``uniform`` a random
    0..``bytes``, ``round`` pads each payload up to the next multiple of ``bytes`` (hides
    sizes). ``tcp`` / ``udp``: pad only toward controlled servers (``"controlled"``), toward
    every peer (``"any"``: the protocol must carry its own padding) or never (``"none"``).
    ``pad_syn`` adds ``bytes`` of data to the attacker's bare SYNs (a target without a TCP Fast
    Open cookie discards it and answers the SYN alone). No IP packet exceeds ``mtu``.
    """

    bytes: int = 64
    mode: PadMode = "uniform"
    tcp: Literal["controlled", "any", "none"] = "controlled"
    udp: Literal["controlled", "any", "none"] = "controlled"
    pad_syn: bool = False
    mtu: int = 1500


def _pad_amount(p: PadParams, rng: np.random.Generator, length: int) -> int:
    if p.mode == "fixed":
        return p.bytes
    if p.mode == "round":
        return (-length) % p.bytes if p.bytes > 0 else 0
    return int(rng.integers(0, p.bytes + 1))


def _rel(x: npt.NDArray[np.int64], base: int) -> npt.NDArray[np.int64]:
    """Sequence numbers relative to ``base``, as signed distances (mod 2**32)."""
    return ((x - base + (1 << 31)) % (1 << 32)) - (1 << 31)


def _allowed(
    policy: str, to_server: npt.NDArray[np.bool_], controlled_servers: bool
) -> npt.NDArray[np.bool_]:
    if policy == "any":
        return np.ones(len(to_server), bool)
    if policy == "controlled" and controlled_servers:
        return to_server.copy()
    return np.zeros(len(to_server), bool)


def pad_payloads(
    pk: Packets, attacker: AttackerSelector, params: PadParams, seed: int = 0
) -> tuple[Packets, Cost]:
    """Append padding to the attacker's UDP payloads and TCP segments (see :class:`PadParams`).

    TCP streams stay consistent both ways: with padding appended at the end of each distinct
    segment (keyed by its end in the sequence space, so a retransmission is padded the same),
    every sequence number ``x`` of the padded direction becomes ``x + pads ending at or before
    x`` and so does every ACK and SACK edge of the other direction. A direction with frames cut
    by the snap length, or with overlapping segments of different extent (re-packetised
    retransmissions), is left unpadded. Fragments are never padded.
    """
    rng = np.random.default_rng(seed)
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    cid = connection_ids(f, pk.ts_us)
    new_payload: dict[int, bytes] = {}
    new_seq: dict[int, int] = {}
    new_ack: dict[int, int] = {}
    sack: dict[int, dict[int, int]] = {}

    def payload(i: int) -> bytes:
        s = int(f.pay_off[i])
        return pk.cap.buf[s : s + int(f.pay_len[i])].tobytes()

    limit = params.mtu
    # UDP: every controlled datagram the policy allows
    udp_ok = _allowed(params.udp, ro.to_server, attacker.servers_controlled)
    for i in np.flatnonzero(f.udp & ro.controlled & udp_ok & f.full & ~f.frag).tolist():
        k = min(_pad_amount(params, rng, int(f.pay_len[i])), max(0, limit - int(f.ip_len[i])))
        if k:
            new_payload[i] = payload(i) + rng.bytes(k)
    # bare SYN probes: data the target discards, no sequence space used
    if params.pad_syn and params.bytes > 0:
        syn = f.tcp & ro.sent & f.full & ((f.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) & (f.pay_len == 0)
        for i in np.flatnonzero(syn).tolist():
            k = min(params.bytes, max(0, limit - int(f.ip_len[i])))
            if k:
                new_payload[i] = rng.bytes(k)
    # TCP streams
    tcp_ok = _allowed(params.tcp, ro.to_server, attacker.servers_controlled)
    tcp_rows = np.flatnonzero(f.tcp & ro.involved)
    ts = pk.ts_us
    for conn in np.unique(cid[tcp_rows]).tolist():
        rows = tcp_rows[cid[tcp_rows] == conn]
        rows = rows[np.lexsort((rows, ts[rows]))]
        by_attacker = ro.sent[rows]
        for side in (by_attacker, ~by_attacker):
            # ``mine``: the direction to pad (one sender); ``rev``: the other way
            mine, rev = rows[side], rows[~side]
            if not len(mine) or not (ro.controlled[mine].all() and tcp_ok[mine].all()):
                continue
            syn_rows = mine[(f.flags[mine] & TCP_SYN) != 0]
            base = int(f.seq[syn_rows[0]]) if len(syn_rows) else int(f.seq[mine[0]])
            data = mine[f.pay_len[mine] > 0]
            if not len(data) or not f.full[data].all():
                continue
            start = _rel(f.seq[data], base) + ((f.flags[data] & TCP_SYN) != 0)
            end = start + f.pay_len[data]
            ends = np.unique(end)
            # a segment containing another segment's end strictly inside cannot take a suffix
            pos = np.searchsorted(ends, start, side="right")
            if np.any(ends[np.minimum(pos, len(ends) - 1)] < end):
                continue
            longest = np.zeros(len(ends), np.int64)
            np.maximum.at(longest, np.searchsorted(ends, end), f.ip_len[data])
            first_len = {
                int(e): int(n)
                for e, n in zip(end[::-1].tolist(), f.pay_len[data][::-1].tolist(), strict=True)
            }
            pads = np.array(
                [
                    min(_pad_amount(params, rng, first_len[int(e)]), max(0, limit - int(m)))
                    for e, m in zip(ends.tolist(), longest.tolist(), strict=True)
                ],
                np.int64,
            )
            if not pads.any():
                continue
            pad_bytes = [rng.bytes(int(k)) for k in pads.tolist()]
            cum = np.concatenate([[0], np.cumsum(pads)])

            def mapped(x: npt.NDArray[np.int64], base: int = base, ends: Any = ends, cum: Any = cum) -> Any:
                rel = _rel(x, base)
                return (base + rel + cum[np.searchsorted(ends, rel, side="right")]) % (1 << 32)

            for i, v in zip(mine.tolist(), mapped(f.seq[mine]).tolist(), strict=True):
                if v != int(f.seq[i]):
                    new_seq[i] = int(v)
            for i, e in zip(data.tolist(), np.searchsorted(ends, end).tolist(), strict=True):
                if pads[e]:
                    new_payload[i] = payload(i) + pad_bytes[e]
            acked = rev[(f.flags[rev] & TCP_ACK) != 0]
            edge_map = {
                int(a): int(b)
                for a, b in zip(f.ack[acked].tolist(), mapped(f.ack[acked]).tolist(), strict=True)
            }
            for i in acked.tolist():
                a = int(f.ack[i])
                if edge_map[a] != a:
                    new_ack[i] = edge_map[a]
                sack[i] = _sack_map(pk, f, i, mapped)
    rows_out = sorted(set(new_payload) | set(new_seq) | set(new_ack))
    frames = [
        rebuild_ipv4(
            pk.cap.frame(i),
            int(f.ip_off[i] - pk.cap.off[i]),
            payload=new_payload.get(i),
            seq=new_seq.get(i),
            ack=new_ack.get(i),
            sack=sack.get(i) or None,
        )
        for i in rows_out
    ]
    return finish(pk, replace_frames(pk.cap, rows_out, frames), attacker)


def _sack_map(pk: Packets, f: Fields, i: int, mapped: Callable[[Any], Any]) -> dict[int, int]:
    """Old -> new SACK edges of frame ``i`` (empty without SACK blocks)."""
    thl = int(f.pay_off[i] - f.l4_off[i])
    if thl <= 20:
        return {}
    s = int(f.l4_off[i]) + 20
    opts = pk.cap.buf[s : s + thl - 20].tobytes()
    edges: list[int] = []
    j = 0
    while j < len(opts):
        kind = opts[j]
        if kind == 0:
            break
        if kind == 1:
            j += 1
            continue
        if j + 1 >= len(opts) or opts[j + 1] < 2:
            break
        ln = opts[j + 1]
        if kind == 5:
            edges += [
                int.from_bytes(opts[k : k + 4], "big") for k in range(j + 2, min(j + ln, len(opts)) - 3, 4)
            ]
        j += ln
    if not edges:
        return {}
    new = mapped(np.array(edges, np.int64)).tolist()
    return dict(zip(edges, (int(x) for x in new), strict=True))


# ---------------------------------------------------------------------------------------------
# 2. Jitter / delay
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JitterParams:
    """Random delay of each controlled packet: ``uniform`` in [0, ``max_delay_s``] or
    ``exponential`` with mean ``max_delay_s / 4`` capped at ``max_delay_s``; causality kept per
    ``scope`` (``host``: all the attacker's traffic is one chain, ``flow``: each flow is)."""

    max_delay_s: float = 1.0
    distribution: Literal["uniform", "exponential"] = "uniform"
    scope: Scope = "host"


def jitter_delay(
    pk: Packets, attacker: AttackerSelector, params: JitterParams, seed: int = 0
) -> tuple[Packets, Cost]:
    """Delay the attacker's packets by random amounts, keeping order and causality per chain:
    each packet moves by the running maximum of the delays drawn along its chain, so no gap
    shrinks and replies stay after their requests."""
    rng = np.random.default_rng(seed)
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    rows, starts = chains(pk, f, ro, params.scope)
    top = round(params.max_delay_s * US)
    if params.distribution == "uniform":
        draw = rng.integers(0, top + 1, size=len(rows))
    else:
        draw = np.minimum(rng.exponential(top / 4.0, size=len(rows)).astype(np.int64), top)
    own = np.where(ro.controlled[rows], draw, 0).astype(np.int64)
    return finish(pk, shifted(pk, rows, running_max(own, starts)), attacker)


# ---------------------------------------------------------------------------------------------
# 4. Rate limiting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateParams:
    """Pace the attacker's own packets: at most ``max_pps`` per second, and/or every gap
    between them stretched ``slowdown`` times (the whole attack slowed by about that much)."""

    max_pps: float | None = None
    slowdown: float | None = None


def rate_limit(
    pk: Packets, attacker: AttackerSelector, params: RateParams, seed: int = 0
) -> tuple[Packets, Cost]:
    """Spread the attacker's traffic over time (a scan or flood slowed down).

    Over all the attacker's traffic in time order, the gap before each packet it sends becomes
    ``max(slowdown * gap, 1 / max_pps)``; packets it does not send (replies) keep their delay
    behind the last packet it sent, so every gap only grows (vectorised: the new send times are
    a cumulative sum of the new gaps).
    """
    del seed  # deterministic
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    rows, _ = chains(pk, f, ro, "host")
    sent_pos = np.flatnonzero(ro.sent[rows])
    if len(sent_pos) == 0 or (params.max_pps is None and params.slowdown is None):
        return finish(pk, pk.cap, attacker)
    t = pk.ts_us[rows[sent_pos]]
    gap = np.diff(t, prepend=t[0])
    new_gap = gap.astype(np.float64)
    if params.slowdown is not None:
        new_gap = new_gap * max(1.0, float(params.slowdown))
    if params.max_pps is not None:
        new_gap[1:] = np.maximum(new_gap[1:], US / float(params.max_pps))
    new_gap = np.maximum(np.round(new_gap).astype(np.int64), gap)
    shift_sent = t[0] + np.cumsum(new_gap) - t
    shift = np.zeros(len(rows), np.int64)
    shift[sent_pos] = shift_sent
    shift = np.maximum.accumulate(shift)
    return finish(pk, shifted(pk, rows, shift), attacker)


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------

Params = PadParams | JitterParams | ChaffParams | RateParams | MimicParams
Transform = Callable[[Packets, AttackerSelector, Any, int], tuple[Packets, Cost]]

TRANSFORMS: dict[type, Transform] = {
    PadParams: pad_payloads,
    JitterParams: jitter_delay,
    ChaffParams: add_chaff,
    RateParams: rate_limit,
    MimicParams: mimic_baseline,
}
"""The transformation each parameter type selects."""


def compose(
    pk: Packets, attacker: AttackerSelector, steps: Sequence[Params], seed: int = 0
) -> tuple[Packets, Cost]:
    """Apply several transformations in order (step ``k`` gets seed ``seed + k``); the cost is
    measured from ``pk`` to the result."""
    out = pk
    for k, p in enumerate(steps):
        out, _ = TRANSFORMS[type(p)](out, attacker, p, seed + k)
    return out, measure_cost(pk, out, attacker, rows_against(pk, out))
