"""Baseline mimicry: the attacker's traffic shaped to the device's learned per-window budget.

:class:`DeviceBudget` reads what the device did per window while its baseline was learned
(:class:`~iotsentry.baseline.profile.DeviceProfile`: window volumes, peers, services);
:func:`mimic_baseline` delays the attacker's packets, window by window, so that the device
(its own traffic included) stays under a fraction of those maxima, then adds chaff flows to
learned peers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_chaff import ChaffParams, add_chaff, usual_client_targets
from iotsentry.adversarial.problem_core import (
    US,
    WINDOW_US,
    AttackerSelector,
    Cost,
    chains,
    finish,
    ip_int,
    measure_cost,
    roles,
    rows_against,
    shifted,
)
from iotsentry.adversarial.problem_frames import (
    TCP_ACK,
    TCP_SYN,
    Fields,
    Packets,
    flow_ids,
    header_fields,
    ip_bytes,
)
from iotsentry.baseline.profile import DeviceProfile, service_label
from iotsentry.features.windows import WINDOW_FEATURES

__all__ = ["DeviceBudget", "MimicParams", "mimic_baseline"]

# ---------------------------------------------------------------------------------------------
# 5. Baseline mimicry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceBudget:
    """What the device did per window while its baseline was learned (the attacker's target).

    Volumes are the learned per-window maxima; ``new_peers`` / ``new_services`` the maxima in
    the settled second half of the learning period (discovery is high during setup).
    """

    packets: float
    bytes: float
    initiations: float
    new_peers: float
    new_services: float
    peers: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    @classmethod
    def from_profile(cls, prof: DeviceProfile) -> DeviceBudget:
        """Read the budget off a learned :class:`~iotsentry.baseline.profile.DeviceProfile`."""
        X = prof.matrix()
        col = {name: j for j, name in enumerate(WINDOW_FEATURES)}
        if len(X) == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, tuple(prof.peers), tuple(prof.services))
        tail = X[len(X) // 2 :]
        return cls(
            packets=float(X[:, col["packets"]].max()),
            bytes=float(X[:, col["bytes"]].max()),
            initiations=float(X[:, col["initiations"]].max()),
            new_peers=float(tail[:, col["new_peers"]].max()),
            new_services=float(tail[:, col["new_services"]].max()),
            peers=tuple(ip for ip, _ in prof.peers.most_common()),
            services=tuple(s for s, _ in prof.services.most_common()),
        )


@dataclass(frozen=True)
class MimicParams:
    """Keep each window of the device at ``fraction`` of its learned maxima (packets, bytes,
    connection starts) and at most ``max(new_per_window, learned)`` new peers and new
    services, by delaying the attacker's packets to later windows; then add
    ``chaff_flows_per_min`` chaff flows to learned peers."""

    budget: DeviceBudget
    fraction: float = 0.5
    new_per_window: int = 1
    chaff_flows_per_min: float = 0.0


@dataclass
class _Window:
    packets: int = 0
    bytes: int = 0
    starts: int = 0
    peers: set[int] = field(default_factory=set)
    services: set[tuple[int, int]] = field(default_factory=set)


def mimic_baseline(
    pk: Packets, attacker: AttackerSelector, params: MimicParams, seed: int = 0
) -> tuple[Packets, Cost]:
    """Delay the attacker's traffic window by window under the device's learned budget.

    Walks the attacker's traffic in time order carrying the delay so far (never decreasing,
    so order and causality hold); a packet the attacker sends that would push its window --
    the device's own traffic there included -- over a cap waits for the next window with room.
    Replies follow their requests and are counted, not moved on their own. The chaff added
    afterwards is not counted against the budget (keep ``chaff_flows_per_min`` small).
    """
    rng = np.random.default_rng(seed)
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    b = params.budget
    frac = params.fraction
    cap_pk = max(2.0, frac * b.packets)
    cap_by = max(3000.0, frac * b.bytes)
    cap_st = max(1.0, frac * b.initiations)
    cap_np = max(float(params.new_per_window), b.new_peers)
    cap_ns = max(float(params.new_per_window), b.new_services)
    known_peers = {ip_int(p) for p in b.peers if ":" not in p}
    known_svc = set(b.services)
    size = ip_bytes(f)
    # the device's own traffic per window (what the attacker shares the window with)
    ip, mac = attacker.ip_int, attacker.mac_int(pk.cap)
    device = (f.src == ip) | (f.dst == ip) | ((mac >= 0) & ((f.src_mac == mac) | (f.dst_mac == mac)))
    windows: dict[int, _Window] = {}
    own = np.flatnonzero(device & ~ro.involved)
    if len(own):
        wk, inv = np.unique(pk.ts_us[own] // WINDOW_US, return_inverse=True)
        inv = inv.reshape(-1)
        n_pk = np.bincount(inv)
        n_by = np.bincount(inv, weights=size[own])
        n_st = np.bincount(inv, weights=_starts(f, own, ip).astype(np.float64))
        for w, a, c, d in zip(wk.tolist(), n_pk.tolist(), n_by.tolist(), n_st.tolist(), strict=True):
            windows[int(w)] = _Window(packets=int(a), bytes=int(c), starts=int(d))
    rows, _ = chains(pk, f, ro, "host")
    start = np.zeros(len(pk), bool)
    start[rows] = _starts(f, rows, ip)
    svc = f.service
    shift = np.zeros(len(rows), np.int64)
    carried = 0
    ts = pk.ts_us
    for k, r in enumerate(rows.tolist()):
        t = int(ts[r]) + carried
        w = t // WINDOW_US
        peer = int(ro.peer[r])
        service = (int(f.proto[r]), int(svc[r]))
        new_peer = peer >= 0 and peer not in known_peers
        new_svc = peer >= 0 and service_label(*service) not in known_svc
        if ro.controlled[r]:
            while True:
                win = windows.setdefault(w, _Window())
                fits = (
                    win.packets + 1 <= cap_pk
                    and win.bytes + int(size[r]) <= cap_by
                    and (not start[r] or win.starts + 1 <= cap_st)
                    and (not new_peer or peer in win.peers or len(win.peers) + 1 <= cap_np)
                    and (not new_svc or service in win.services or len(win.services) + 1 <= cap_ns)
                )
                if fits:
                    break
                w += 1
                t = w * WINDOW_US + int(rng.integers(0, US))
            carried = t - int(ts[r])
        win = windows.setdefault(w, _Window())
        win.packets += 1
        win.bytes += int(size[r])
        win.starts += int(start[r])
        if new_peer:
            win.peers.add(peer)
        if new_svc:
            win.services.add(service)
        shift[k] = carried
    out, _cost = finish(pk, shifted(pk, rows, shift), attacker)
    if params.chaff_flows_per_min > 0:
        targets, _ = usual_client_targets(out, header_fields(out.cap), attacker)
        peers = set(b.peers)
        learned = [t for t in targets if str(ipaddress.IPv4Address(t[0])) in peers]
        if learned:
            chaff = ChaffParams(
                flows_per_min=params.chaff_flows_per_min,
                targets=tuple((str(ipaddress.IPv4Address(a)), p, s) for a, p, s in learned[:8]),
            )
            out, _ = add_chaff(out, attacker, chaff, seed + 1)
    return out, measure_cost(pk, out, attacker, rows_against(pk, out))


def _starts(f: Fields, rows: npt.NDArray[np.int64], ip: int) -> npt.NDArray[np.bool_]:
    """Which of ``rows`` (in time order) start a connection from ``ip``: a bare TCP SYN, or
    the first packet of another flow sent by ``ip``."""
    fid = flow_ids(f)[rows]
    first = np.zeros(len(rows), bool)
    _, at = np.unique(fid, return_index=True)
    first[at] = True
    syn = (f.flags[rows] & (TCP_SYN | TCP_ACK)) == TCP_SYN
    return (f.src[rows] == ip) & np.where(f.proto[rows] == 6, syn, first)
