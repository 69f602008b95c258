"""Per-device behavioural baselines: peers, services, volumes per window, discovery over time.

Every device learns on its own clock: from its own first packet for ``learn_s`` seconds
(:meth:`Baseline.start_clock`; a device that appears on day 3 gets its own learning period),
after which :meth:`Baseline.finish` ends its learning (its schedules are frozen, its knowledge is
shared with its groups) and detection judges it. The per-packet grouping while learning runs
in the numba hash kernels of ``features._window_kernels``; membership tests during detection are
vectorised (sorted hash arrays, :class:`~iotsentry.baseline.keysets.KeySet`).

A remote is known to a device by more than its address (:mod:`~iotsentry.baseline.identity`):
the registrable domain of its DNS name, its /24 (/48) network, and whether the devices of the
same type or vendor (the device's *groups*) learned it. A new address of a service the device
already reaches by bare IP is "another server of a known service", not a new peer; UDP between
two unprivileged ports is one service per peer network. :meth:`Baseline.identity` gives all of
it per packet. After learning, the baseline keeps living: :meth:`Baseline.absorb` adds
behaviour that persisted without being alerted, or that an operator marked expected
(:mod:`~iotsentry.baseline.living`), and records it in the device's history.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.baseline import identity as ident
from iotsentry.baseline.keysets import CountTable, KeySet
from iotsentry.baseline.maturity import Maturity, maturity_of
from iotsentry.baseline.periodicity import PeriodicityTracker, connection_starts, service_label
from iotsentry.baseline.quantiles import column_quantile
from iotsentry.baseline.ramp_guard import RampGuard
from iotsentry.features import _identity_kernels as RK
from iotsentry.features import _window_kernels as K
from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import WINDOW_S, PacketContext
from iotsentry.features.windows import WINDOW_FEATURES, window_table
from iotsentry.schema import PROTO_NAMES, PacketBatch, ip_from_str, ip_to_str

MAX_PEERS_LISTED = 64

TokenRows = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.uint64]]
"""Application tokens of a batch: (packet row, device number, token hash)."""

KeyStats = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]
"""Per packet key number, and per distinct key (first-appearance order): key, first window,
number of windows, representative row (see ``_window_kernels.key_windows``)."""


def _mix(*cols: npt.NDArray[np.generic]) -> npt.NDArray[np.uint64]:
    """``mix_keys`` of the columns, in one pass."""
    out: npt.NDArray[np.uint64] = K.mix(np.stack([np.asarray(c, dtype=np.uint64) for c in cols]))
    return out


@dataclass
class DeviceProfile:
    """What one device did while its baseline was learned."""

    device_id: str
    peers: Counter[str] = field(default_factory=Counter)
    """Remote address -> number of windows it was seen in."""
    peer_names: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    services: Counter[str] = field(default_factory=Counter)
    """``proto/port`` -> number of windows it was seen in."""
    windows: list[npt.NDArray[np.float64]] = field(default_factory=list)
    window_ts: list[float] = field(default_factory=list)
    discoveries: list[float] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    """Peers / services refused by the drift-rate limit (they ramped up while learning)."""
    capped: list[str] = field(default_factory=list)
    """Window features whose learned range was capped at the first half's (they ramped up)."""
    first_ts: float = float("inf")
    last_ts: float = float("-inf")
    networks: set[str] = field(default_factory=set)
    """Remote /24 (/48) networks it talked to (``a.b.c.0/24``)."""
    domains: set[str] = field(default_factory=set)
    """Registrable domains of the names it used or reached peers by."""
    bare_services: set[str] = field(default_factory=set)
    """Services (``TCP/443``) it reached on remote peers by bare IP (no DNS name)."""
    high_networks: set[str] = field(default_factory=set)
    """Networks (remote) or addresses (local) it exchanged UDP with between unprivileged ports."""
    learn_start: float = float("inf")
    """Its own first packet: its learning clock starts here."""
    learn_end: float = float("inf")
    """End of its learning period (window-aligned); ``inf`` before its first packet."""
    active: bool = False
    """Learning ended; detection judges it."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """What was absorbed after learning (or reverted): ts, kind, item, source, reason."""
    groups: list[str] = field(default_factory=list)
    """Its groups (``type:camera``, ``vendor:...``): what they learned is known to it too."""
    limit_overrides: dict[str, float] = field(default_factory=dict)
    """Limits an operator raised by marking an incident expected (feature -> smallest limit)."""

    def matrix(self) -> npt.NDArray[np.float64]:
        """Window feature matrix (rows in time order)."""
        if not self.windows:
            return np.zeros((0, len(WINDOW_FEATURES)))
        return np.vstack(self.windows)

    def maturity(self) -> Maturity:
        """How far the discovery of new peers and services has flattened."""
        return maturity_of(self.first_ts, self.last_ts, self.discoveries, len(self.windows))

    def summary(self) -> dict[str, Any]:
        """JSON-ready description, used by the store and the report."""
        X = self.matrix()
        if not len(X):
            X = np.zeros((1, len(WINDOW_FEATURES)))
        mean, top = X.mean(axis=0).tolist(), X.max(axis=0).tolist()
        p95 = column_quantile(X, 0.95).tolist()
        vol = {
            name: {"mean": mean[j], "p95": p95[j], "max": top[j]} for j, name in enumerate(WINDOW_FEATURES)
        }
        mat = self.maturity()
        return {
            "device_id": self.device_id,
            "peers": [
                {"ip": ip, "name": self.peer_names.get(ip, ""), "windows": n}
                for ip, n in self.peers.most_common(MAX_PEERS_LISTED)
            ],
            "peer_count": len(self.peers),
            "services": [{"service": s, "windows": n} for s, n in self.services.most_common(32)],
            "schedules": [],
            "window_s": 60,
            "windows": len(self.windows),
            "per_window": vol,
            "observed_s": max(0.0, self.last_ts - self.first_ts),
            "maturity": mat.to_dict(),
            "quarantined": list(self.quarantined),
            "capped_features": list(self.capped),
            "networks": sorted(self.networks)[:MAX_PEERS_LISTED],
            "domains": sorted(self.domains)[:MAX_PEERS_LISTED],
            "bare_services": sorted(self.bare_services),
            "learn_start": self.learn_start if np.isfinite(self.learn_start) else None,
            "learn_end": self.learn_end if np.isfinite(self.learn_end) else None,
            "learning": not self.active,
            "groups": list(self.groups),
            "history": self.history[-MAX_PEERS_LISTED:],
            "limit_overrides": dict(self.limit_overrides),
        }

    def remote_peers(self) -> int:
        """How many remote (not local, not multicast) peer addresses it learned."""
        return sum(1 for ip in self.peers if not _is_local_text(ip))

    def named_share(self) -> float:
        """Share of its learned remote peers it reached through a DNS name (0 when it has none)."""
        remote = [ip for ip in self.peers if not _is_local_text(ip)]
        if not remote:
            return 0.0
        return sum(1 for ip in remote if ip in self.peer_names) / len(remote)

    def top_services(self, k: int = 4) -> str:
        """``443/tcp, 123/udp`` style list of the most used services."""
        out = []
        for s, _ in self.services.most_common(k):
            proto, port = s.split("/")
            out.append(f"{port}/{proto.lower()}")
        return ", ".join(out) if out else "none"


@dataclass
class Identity:
    """Per packet: what the device's baseline knows of the packet's remote (see
    :meth:`Baseline.identity`)."""

    valid: npt.NDArray[np.bool_]
    """Attributed to a device and carried by IP."""
    local: npt.NDArray[np.bool_]
    """Peer is local, multicast, or the packet is not IP."""
    peer_windows: npt.NDArray[np.float64]
    """Learned windows of the exact (device, peer address); 0 = never."""
    service_windows: npt.NDArray[np.float64]
    """Learned windows of the (device, service); 0 = never."""
    has_name: npt.NDArray[np.bool_]
    """The peer address was reached through a DNS name (or is local)."""
    name_known: npt.NDArray[np.bool_]
    """The peer's DNS name, or its registrable domain, is known to the device or its groups."""
    net_known: npt.NDArray[np.bool_]
    """The peer's network is known to the device."""
    group_known: npt.NDArray[np.bool_]
    """The peer's network is known to one of the device's groups."""
    known_peer: npt.NDArray[np.bool_]
    """Any of the above (or local, or not a remote at all)."""
    churn: npt.NDArray[np.bool_]
    """Not a known peer, but another address of a service the device reaches by bare IP."""
    known_service: npt.NDArray[np.bool_]
    """The service is learned (or UDP between unprivileged ports with a known network)."""
    high_udp: npt.NDArray[np.bool_]
    """UDP between two unprivileged ports."""
    high_known: npt.NDArray[np.bool_]
    """... with a network (a local address) the device or its groups exchanged such UDP with."""
    net_hi: npt.NDArray[np.uint64] | None = None
    net_lo: npt.NDArray[np.uint64] | None = None
    """The peer's network (:func:`~iotsentry.baseline.identity.network_of`) as (hi, lo) halves."""


@dataclass
class _Remote:
    """Address facts of a batch's packets (:func:`~iotsentry.features._identity_kernels.remote_basics`)."""

    local: npt.NDArray[np.bool_]
    valid: npt.NDArray[np.bool_]
    high: npt.NDArray[np.bool_]
    net_hi: npt.NDArray[np.uint64]
    net_lo: npt.NDArray[np.uint64]
    cand: npt.NDArray[np.int64]
    """Rows of a device whose peer is remote (they may have a DNS name) ..."""
    peer_of_cand: npt.NDArray[np.int64]
    """... the number of their distinct peer ..."""
    peer_hi: npt.NDArray[np.uint64]
    peer_lo: npt.NDArray[np.uint64]
    """... and the distinct peers' halves."""


def _remote(batch: PacketBatch, ctx: PacketContext) -> _Remote:
    return _Remote(
        *RK.remote_basics(
            ctx.device, batch.ip_version, ctx.peer_hi, ctx.peer_lo, ctx.proto, batch.src_port, batch.dst_port
        )
    )


_Clocks = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]
"""Per device: learning start, learning end, learning ended."""


class Baseline:
    """All device profiles of a site: learned per device on its own clock, then living."""

    def __init__(self, device_ids: list[str]) -> None:
        self.device_ids = list(device_ids)
        self.profiles = [DeviceProfile(d) for d in self.device_ids]
        self._peer_win = CountTable()
        """(device, peer) key -> windows in which the device met the peer while learning."""
        self._svc_win = CountTable()
        """(device, service) key -> windows in which the device used the service."""
        self._names: dict[int, set[str]] = defaultdict(set)
        self.periodicity = PeriodicityTracker()
        self._tokens: dict[int, set[int]] = defaultdict(set)
        self.known = KeySet()
        """Identity keys (:func:`~iotsentry.baseline.identity.key`) owned by devices: networks,
        domains, bare-IP services, high-UDP networks."""
        self.group_known = KeySet()
        """The same keys owned by groups (the union of their active members' knowledge)."""
        self.defer_groups = False
        """Queue what a device adds to its groups' knowledge (learning end, absorption) in
        :attr:`group_pending` instead of adding it at once; the caller applies it
        (:meth:`apply_group_pending`) at points of its choosing -- the detection engine: at the
        next clock hour, the same points in one process and across workers."""
        self.group_pending: list[npt.NDArray[np.uint64]] = []
        self.drift_guard = False
        """Refuse bare-IP peers that ramp up while learning (:mod:`~iotsentry.baseline.ramp_guard`)."""
        self._guard = RampGuard()
        self._key_label: dict[int, tuple[int, str, str]] = {}
        """Learned key -> (device, "peer" | "service", address or service label)."""
        self._bare_peers: dict[int, dict[str, set[str]]] = {}
        """With the drift guard, while learning: device -> bare-IP service -> the peers on it."""
        self._owners: npt.NDArray[np.uint64] | None = None
        """Cache of :meth:`group_owners` (rows updated when a device's groups change)."""
        self._clocks: _Clocks | None = None
        """Cache of :meth:`clocks`."""
        self.names_evidence = np.ones(len(self.device_ids), dtype=bool)
        """Per device: a bare-IP peer is evidence (the device's DNS answers are observable and it
        names its peers); set by the caller from :mod:`~iotsentry.baseline.visibility`. It may
        hold spare entries past the last device (room to grow)."""

    # -- keys ------------------------------------------------------------------------------
    @staticmethod
    def peer_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        """Hash of (device, peer address) per packet."""
        return _mix(ctx.device.astype(np.uint64), ctx.peer_hi, ctx.peer_lo)

    @staticmethod
    def service_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        """Hash of (device, protocol, service port) per packet."""
        return _mix(ctx.device.astype(np.uint64), ctx.proto.astype(np.uint64), ctx.service.astype(np.uint64))

    # -- clocks --------------------------------------------------------------------------------
    def start_clock(self, device: int, first_ts: float, learn_s: float, until: float | None = None) -> None:
        """Start a device's learning clock at its first packet (no-op when already started).

        Its learning ends ``learn_s`` later, window-aligned, or at ``until`` (a deadline for every
        device, as evaluation protocols that learn only before an infection need) if earlier.
        """
        p = self.profiles[device]
        if np.isfinite(p.learn_start):
            return
        p.learn_start = float(first_ts)
        end = first_ts + max(0.0, learn_s)
        if until is not None:
            end = min(end, until)
        p.learn_end = float(np.floor(end / WINDOW_S) * WINDOW_S)
        if self._clocks is not None and device < len(self._clocks[0]):
            self._clocks[0][device] = p.learn_start
            self._clocks[1][device] = p.learn_end

    def clocks(self) -> _Clocks:
        """Per device: (learning start, learning end, learning ended) as arrays, kept in step with
        the profiles by :meth:`start_clock` and :meth:`finish` (whoever sets those profile fields
        directly calls :meth:`reset_clocks`)."""
        n = len(self.profiles)
        if self._clocks is None:
            self._clocks = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
        have = len(self._clocks[0])
        if have < n:
            new = self.profiles[have:]
            self._clocks = (
                np.append(self._clocks[0], [p.learn_start for p in new]),
                np.append(self._clocks[1], [p.learn_end for p in new]),
                np.append(self._clocks[2], np.array([p.active for p in new], dtype=bool)),
            )
        return self._clocks

    def reset_clocks(self) -> None:
        """Re-read the clocks and groups from the profiles (after their fields were set directly)."""
        self._clocks = None
        self._owners = None

    def learn_ends(self) -> npt.NDArray[np.float64]:
        """Per device: the end of its learning period (``inf`` before its first packet)."""
        return self.clocks()[1].copy()

    def learning_mask(
        self, device: npt.NDArray[np.int32], ts: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.bool_]:
        """Per packet: attributed to a device that still learns at the packet's time."""
        _, ends, active = self.clocks()
        if not len(ends):
            return np.zeros(len(device), dtype=bool)
        d = np.maximum(device, 0)
        out: npt.NDArray[np.bool_] = (device >= 0) & ~active[d] & (ts < ends[d])
        return out

    def due(self, now: float) -> list[int]:
        """Devices still learning whose learning period ended before ``now``."""
        _, ends, active = self.clocks()
        out: list[int] = np.flatnonzero(~active & (ends <= now)).tolist()
        return out

    def finish(self, devices: list[int]) -> None:
        """End the learning of these devices: freeze their schedules, share their knowledge."""
        if not devices:
            return
        ramped = self._guard.ramped() if self.drift_guard else {}
        for d in devices:
            p = self.profiles[d]
            if p.active:
                continue
            p.active = True
            if self._clocks is not None and d < len(self._clocks[2]):
                self._clocks[2][d] = True
            if ramped:
                self._quarantine({k: v for k, v in ramped.items() if self._key_label.get(k, (-1,))[0] == d})
            self._bare_peers.pop(d, None)
            self._share(d)
        self.periodicity.freeze_devices(set(devices))

    def freeze(self) -> None:
        """End learning for every device (a batch run's single learning end)."""
        self.finish([i for i, p in enumerate(self.profiles) if not p.active])

    @property
    def frozen(self) -> bool:
        """Whether every device's learning has ended."""
        return bool(self.clocks()[2].all())

    def add_device(self, device_id: str) -> int:
        """Register a device first seen later (its own clock starts at its first packet)."""
        self.device_ids.append(device_id)
        self.profiles.append(DeviceProfile(device_id))
        n = len(self.profiles)
        if n > len(self.names_evidence):  # room for many more (one append per device is quadratic)
            grown = np.ones(max(n, 2 * len(self.names_evidence), 64), dtype=bool)
            grown[: len(self.names_evidence)] = self.names_evidence
            self.names_evidence = grown
        return n - 1

    # -- groups --------------------------------------------------------------------------------
    def set_groups(self, device: int, groups: list[str]) -> None:
        """The device's groups; an active device's knowledge is shared with new ones."""
        p = self.profiles[device]
        new = [g for g in groups if g not in p.groups]
        p.groups = list(groups)
        if self._owners is not None and device < len(self._owners):
            row = [ident.group_owner(g) for g in p.groups[:2]]
            self._owners[device] = row + [0] * (2 - len(row))
        if new and p.active:
            self._share(device, only=new)

    def _share(self, d: int, only: list[str] | None = None) -> None:
        """Copy device ``d``'s networks, domains and high-UDP networks into its groups' knowledge."""
        p = self.profiles[d]
        for g in only if only is not None else p.groups:
            owner = ident.group_owner(g)
            self._add_items(owner, "net", p.networks, self.group_known)
            self._add_items(owner, "dom", p.domains, self.group_known)
            self._add_items(owner, "high", p.high_networks, self.group_known)
            self._add_items(owner, "bare", p.bare_services, self.group_known)

    def _add_items(self, owner: int, kind: str, items: set[str], into: KeySet | None = None) -> int:
        into = self.known if into is None else into
        if not items:
            return 0
        if kind == "dom":
            vals = [ident.domain_hash(x) for x in items]
            keys = ident.key("dom", owner, np.array(vals, np.uint64))
        elif kind == "bare":
            pp = [_service_parts(x) for x in items]
            protos, ports = np.array([a for a, _ in pp], np.uint64), np.array([b for _, b in pp], np.uint64)
            keys = ident.key("bare", owner, protos, ports)
        else:
            keys = ident.key(kind, owner, *_addr_cols(items))
        if into is self.group_known and self.defer_groups:
            self.group_pending.append(np.asarray(keys, dtype=np.uint64))
            return 0
        return into.add(keys)

    def apply_group_pending(
        self, upto: int | None = None, more: Sequence[npt.NDArray[np.uint64]] = ()
    ) -> int:
        """Add the first ``upto`` (default: all) pending group-knowledge key arrays, and ``more``
        (other workers' pending keys), to the groups' knowledge; returns how many keys were new."""
        upto = len(self.group_pending) if upto is None else upto
        take, self.group_pending = self.group_pending[:upto], self.group_pending[upto:]
        arrays = [*take, *more]
        if not arrays:
            return 0
        return self.group_known.add(np.concatenate(arrays))

    def group_owners(self) -> npt.NDArray[np.uint64]:
        """(devices, 2) owner numbers of each device's first two groups (0 = none)."""
        have = 0 if self._owners is None else len(self._owners)
        if self._owners is None or have != len(self.profiles):
            out = np.zeros((len(self.profiles), 2), dtype=np.uint64)
            if self._owners is not None and have < len(self.profiles):
                out[:have] = self._owners  # rows of devices added since are appended
            else:
                have = 0
            for i in range(have, len(self.profiles)):
                for j, g in enumerate(self.profiles[i].groups[:2]):
                    out[i, j] = ident.group_owner(g)
            self._owners = out
        return self._owners

    # -- lookups -----------------------------------------------------------------------------
    @property
    def _peer_keys(self) -> npt.NDArray[np.uint64]:
        return self._peer_win.sorted_arrays()[0]

    @property
    def _peer_counts(self) -> npt.NDArray[np.float64]:
        return self._peer_win.sorted_arrays()[1]

    @property
    def _svc_keys(self) -> npt.NDArray[np.uint64]:
        return self._svc_win.sorted_arrays()[0]

    @property
    def _svc_counts(self) -> npt.NDArray[np.float64]:
        return self._svc_win.sorted_arrays()[1]

    def peer_windows(self, ctx: PacketContext) -> npt.NDArray[np.float64]:
        """Windows in which each packet's (device, peer) was seen while learning (0 = never)."""
        return self._peer_win.lookup(self.peer_keys(ctx))

    def service_windows(self, ctx: PacketContext) -> npt.NDArray[np.float64]:
        """Windows in which each packet's (device, service) was seen while learning."""
        return self._svc_win.lookup(self.service_keys(ctx))

    def named(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Per packet: (peer reached through a DNS name or local, peer's name or its registrable
        domain known to the device or its groups, peer is local / multicast / not IP).

        With ``name_ts`` (address -> when its name was first seen), a name counts only for the
        packets at or after that time, so the verdict does not depend on how the stream is cut.
        """
        has_name, name_known, local, _ = self._named(batch, ctx, ip_names, name_ts)
        return has_name | local, name_known, local

    def _named(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """As :meth:`named` (without folding local into the first), plus the candidate rows."""
        rem = _remote(batch, ctx)
        has_name, name_known, named, dom = self._names_of(batch, rem, ctx.device, ip_names, name_ts)
        rows = np.flatnonzero(named)
        if len(rows):
            # the registrable domain of the name, known to the device or one of its groups
            dev = ctx.device[rows].astype(np.uint64)
            hit = self.known.contains(ident.key("dom", dev, dom[rows]))
            owners = self.group_owners()
            if len(owners) and owners.any() and len(self.group_known):
                g = owners[ctx.device[rows]]
                for j in range(2):
                    has_g = g[:, j] != 0
                    hit |= has_g & self.group_known.contains(ident.key("dom", g[:, j], dom[rows]))
            name_known[rows] |= hit
        return has_name, name_known, rem.local, rem.cand

    def _names_of(
        self,
        batch: PacketBatch,
        rem: _Remote,
        device: npt.NDArray[np.int32],
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.uint64]]:
        """Per packet: (peer reached through a DNS name, that name is one the device learned,
        the packet has a name (its domain is to be looked up), the domain hash of its name).

        With ``name_ts`` (address -> when its name was first seen), a name counts only for the
        packets at or after that time, so the verdict does not depend on how the stream is cut.
        """
        n = len(device)
        has_name = np.zeros(n, dtype=bool)
        name_known = np.zeros(n, dtype=bool)
        named = np.zeros(n, dtype=bool)
        dom = np.zeros(n, dtype=np.uint64)
        cand = rem.cand
        if not len(cand) or not ip_names:
            return has_name, name_known, named, dom
        uhi, ulo, inv = rem.peer_hi, rem.peer_lo, rem.peer_of_cand
        names = _ip_names(uhi, ulo, ip_names, via_table=len(uhi) > len(ip_names))
        number: dict[str, int] = {}
        ip_name = np.array([number.setdefault(s, len(number)) if s else -1 for s in names], np.int64)
        pkt_name = ip_name[inv]
        if name_ts:
            since = np.array(
                [
                    name_ts.get(ip_to_str(h, x), -np.inf) if s else np.inf
                    for h, x, s in zip(uhi.tolist(), ulo.tolist(), names, strict=True)
                ]
            )
            pkt_name = np.where(batch.ts[cand] >= since[inv], pkt_name, -1)
        ok = pkt_name >= 0
        has_name[cand] = ok
        okr = np.flatnonzero(ok)
        if not len(okr):
            return has_name, name_known, named, dom
        rows = cand[okr]
        names_of_rows = pkt_name[okr]
        if self._names:
            # the (device, name) pairs of this batch, each checked against the device's names
            texts = list(number)
            nt = len(texts)
            code = device[rows].astype(np.int64) * nt + names_of_rows
            inv_u, u, _, _ = K.intern(code.view(np.uint64), code.view(np.uint64), False)
            learned = self._names
            hit_u = np.array(
                [texts[c % nt] in learned.get(c // nt, ()) for c in u.view(np.int64).tolist()], dtype=bool
            )
            name_known[rows] = hit_u[inv_u]
        dh = np.array([ident.domain_hash(s) for s in number], np.uint64)
        named[rows] = True
        dom[rows] = dh[names_of_rows]
        return has_name, name_known, named, dom

    def identity(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> Identity:
        """What the baseline knows of every packet's remote (see :class:`Identity`).

        Two kernel passes (:mod:`~iotsentry.features._identity_kernels`) and one lookup per key
        set with the batch's distinct keys; Python only maps the distinct peers to their names.
        """
        rem = _remote(batch, ctx)
        has_name, name_known, named, dom = self._names_of(batch, rem, ctx.device, ip_names, name_ts)
        slots, qd, qg, pinv, upk, sinv, usk = RK.remote_queries(
            ctx.device,
            rem.valid,
            rem.local,
            rem.high,
            ctx.peer_hi,
            ctx.peer_lo,
            rem.net_hi,
            rem.net_lo,
            ctx.proto,
            ctx.service,
            named,
            dom,
            self.group_owners(),
        )
        hit_d = self.known.contains(qd) if len(qd) else np.zeros(0, dtype=bool)
        hit_g = (
            self.group_known.contains(qg) if len(qg) and len(self.group_known) else np.zeros(len(qg), bool)
        )
        pw, sw, net_known, group_known, high_known, known_peer, churn, known_service, has_name_or_local = (
            RK.remote_verdicts(
                rem.valid,
                rem.local,
                rem.high,
                named,
                slots,
                hit_d,
                hit_g,
                pinv,
                self._peer_win.lookup(upk),
                sinv,
                self._svc_win.lookup(usk),
                has_name,
                name_known,
            )
        )
        return Identity(
            valid=rem.valid,
            local=rem.local,
            peer_windows=pw,
            service_windows=sw,
            has_name=has_name_or_local,
            name_known=name_known,
            net_known=net_known,
            group_known=group_known,
            known_peer=known_peer,
            churn=churn,
            known_service=known_service,
            high_udp=rem.high,
            high_known=high_known,
            net_hi=rem.net_hi,
            net_lo=rem.net_lo,
        )

    def new_tokens(
        self, n: int, tokens: TokenRows | None, token_text: dict[int, str] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Per packet: hash of an application token its device has never used (0 = none).

        A DNS or TLS name whose registrable domain the device (or one of its groups) knows is
        not new: a cloud's new host name is the same cloud (needs ``token_text``).
        """
        out = np.zeros(n, dtype=np.uint64)
        if tokens is None:
            return out
        rows, dev, h = tokens
        owners = self.group_owners() if len(self.profiles) else np.zeros((0, 2), np.uint64)
        # tokens whose name's domain decides: looked up together once the batch is read
        named: list[tuple[int, int, int, int]] = []
        for r, d, k in zip(rows.tolist(), dev.tolist(), h.tolist(), strict=True):
            if d < 0 or k in self._tokens.get(d, ()):
                continue
            text = token_text.get(k) if token_text else None
            dh = _token_domain(text) if text else 0
            if dh:
                named.append((r, d, k, dh))
            else:
                out[r] = k
        if named:
            known = self._domains_known([d for _, d, _, _ in named], [dh for _, _, _, dh in named], owners)
            for (r, _, k, _), hit in zip(named, known, strict=True):
                if not hit:
                    out[r] = k
        return out

    def _domains_known(self, devs: list[int], dhs: list[int], owners: npt.NDArray[np.uint64]) -> list[bool]:
        """Whether each (device, domain hash) is known to the device or one of its groups."""
        hit = self.known.contains(ident.key("dom", np.array(devs, np.uint64), np.array(dhs, np.uint64)))
        gd: list[int] = []
        go: list[int] = []
        gh: list[int] = []
        for j, (d, dh) in enumerate(zip(devs, dhs, strict=True)):
            for o in owners[d].tolist() if d < len(owners) else []:
                if o:
                    gd.append(j)
                    go.append(o)
                    gh.append(dh)
        if gd:
            ghit = self.group_known.contains(
                ident.key("dom", np.array(go, np.uint64), np.array(gh, np.uint64))
            )
            hit[np.array(gd, np.int64)[ghit]] = True
        out: list[bool] = hit.tolist()
        return out

    def known_tokens(self, device: int) -> int:
        """How many distinct names / clients the device used while learning."""
        return len(self._tokens.get(device, ()))

    # -- learning ------------------------------------------------------------------------------
    def learn(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        tokens: TokenRows | None = None,
        token_text: dict[int, str] | None = None,
        name_ts: dict[str, float] | None = None,
    ) -> None:
        """Add the packets of one batch (whole windows) to the profiles of their devices.

        Packets of devices whose learning ended must be left out by the caller (device -1 in
        ``ctx``). ``tokens`` are the application tokens of the batch: (packet row, device,
        token hash); ``token_text`` their texts (for the domains of DNS / TLS names).
        """
        valid = (ctx.device >= 0) & (batch.ip_version > 0)
        pk = self.peer_keys(ctx)
        sk = self.service_keys(ctx)
        idx = np.flatnonzero(valid)
        pst = _key_stats(pk, ctx.window, idx)
        sst = _key_stats(sk, ctx.window, idx)
        if self.drift_guard and len(idx):
            g_dev = ctx.device[idx].astype(np.int64)
            g_ts = batch.ts[idx].astype(np.float64)
            self._guard.add(pk[idx], g_dev, g_ts)
        known_p = self._first_window_flags(pst, ctx.window, idx, self._peer_win)
        known_s = self._first_window_flags(sst, ctx.window, idx, self._svc_win)
        has_name, name_known = self.named(batch, ctx, ip_names, name_ts)[:2]
        local = is_local(ctx.peer_hi, ctx.peer_lo) | is_multicast(ctx.peer_hi, ctx.peer_lo)
        new_tok = self._first_tokens(len(batch), ctx, tokens, token_text)
        table = window_table(
            batch,
            ctx,
            known_p | name_known | local | ~valid,
            has_name,
            known_s | ~valid,
            new_tok,
            (known_p | name_known | local) & known_s,
        )
        for r in range(len(table)):
            prof = self.profiles[int(table.device[r])]
            prof.windows.append(table.X[r])
            prof.window_ts.append(float(table.window[r]) * 60.0)
        keys, rows = connection_starts(batch.ts, ctx, valid)
        self.periodicity.learn(keys, batch.ts[rows].tolist(), self.series_labels(ctx, rows, ip_names))
        self._account_pairs(pst, idx, ctx, batch, ip_names, kind="peer", name_ts=name_ts)
        self._account_pairs(sst, idx, ctx, batch, ip_names, kind="service")
        self._learn_identity(batch, ctx, valid, local, has_name)
        # time span per device
        dv = ctx.device[ctx.device >= 0]
        if len(dv):
            ts = batch.ts[ctx.device >= 0]
            first, last = K.min_max_per_group(dv.astype(np.int64), ts.astype(np.float64), len(self.profiles))
            for d in np.flatnonzero(np.bincount(dv, minlength=len(self.profiles))).tolist():
                p = self.profiles[d]
                p.first_ts = min(p.first_ts, float(first[d]))
                p.last_ts = max(p.last_ts, float(last[d]))

    def _learn_identity(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        valid: npt.NDArray[np.bool_],
        local: npt.NDArray[np.bool_],
        has_name: npt.NDArray[np.bool_],
    ) -> None:
        """Networks, bare-IP services and high-UDP networks of the learned packets."""
        rows = np.flatnonzero(valid)
        if not len(rows):
            return
        loc = local[rows]
        dev = ctx.device[rows].astype(np.int64)
        nhi, nlo = ident.network_of(ctx.peer_hi[rows], ctx.peer_lo[rows])
        high = ident.is_high_udp(ctx.proto[rows], batch.src_port[rows], batch.dst_port[rows])
        remote = np.flatnonzero(~loc)
        self._learn_set(dev[remote], nhi[remote], nlo[remote], "net", net_label)
        bare = remote[~has_name[rows][remote]]
        if self.drift_guard and len(bare):
            # which peers taught each bare-IP service (the drift guard may unlearn a peer)
            for dv, pr, sv, h, lo in zip(
                dev[bare].tolist(),
                ctx.proto[rows][bare].tolist(),
                ctx.service[rows][bare].tolist(),
                ctx.peer_hi[rows][bare].tolist(),
                ctx.peer_lo[rows][bare].tolist(),
                strict=True,
            ):
                self._bare_peers.setdefault(dv, {}).setdefault(service_label(pr, sv), set()).add(
                    ip_to_str(h, lo)
                )
        self._learn_set(
            dev[bare],
            ctx.proto[rows][bare].astype(np.uint64),
            ctx.service[rows][bare].astype(np.uint64),
            "bare",
            service_label,
        )
        hr = np.flatnonzero(high)
        hhi = np.where(loc[hr], ctx.peer_hi[rows][hr], nhi[hr])
        hlo = np.where(loc[hr], ctx.peer_lo[rows][hr], nlo[hr])
        hl = loc[hr]
        self._learn_set(dev[hr[hl]], hhi[hl], hlo[hl], "high", ip_to_str)
        self._learn_set(dev[hr[~hl]], hhi[~hl], hlo[~hl], "high", net_label)

    def _learn_set(
        self,
        dev: npt.NDArray[np.int64],
        a: npt.NDArray[np.uint64],
        b: npt.NDArray[np.uint64],
        kind: str,
        label: Any,
    ) -> None:
        if not len(dev):
            return
        keys = ident.key(kind, dev.astype(np.uint64), a, b)
        uk, first = np.unique(keys, return_index=True)
        fresh = ~self.known.contains(uk)
        if not fresh.any():
            return
        self.known.add(uk[fresh])
        attr = {"net": "networks", "bare": "bare_services", "high": "high_networks"}[kind]
        for r in first[fresh].tolist():
            getattr(self.profiles[int(dev[r])], attr).add(label(int(a[r]), int(b[r])))

    def _first_tokens(
        self, n: int, ctx: PacketContext, tokens: TokenRows | None, token_text: dict[int, str] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Tokens new to the device at their first window in the batch, then learned."""
        out = np.zeros(n, dtype=np.uint64)
        if tokens is None:
            return out
        rows, dev, h = tokens
        first_seen: dict[tuple[int, int], int] = {}
        for r, d, k in zip(rows.tolist(), dev.tolist(), h.tolist(), strict=True):
            if d < 0:
                continue
            w = int(ctx.window[r])
            key = (d, k)
            if k in self._tokens[d] and key not in first_seen:
                continue
            if first_seen.setdefault(key, w) == w:
                out[r] = k
                self.profiles[d].discoveries.append(float(w) * 60.0)
        for d, k in first_seen:
            self._tokens[d].add(k)
            text = token_text.get(k) if token_text else None
            if text:
                self._learn_domain(
                    d, text.partition(":")[2] if text.split(":", 1)[0] in ("dns", "sni") else ""
                )
        return out

    def _learn_domain(self, d: int, name: str) -> bool:
        dom = ident.registered_domain(name) if name else ""
        if not dom or dom in self.profiles[d].domains:
            return False
        self.profiles[d].domains.add(dom)
        self.known.add(ident.key("dom", d, ident.domain_hash(dom)))
        return True

    @staticmethod
    def _first_window_flags(
        stats: KeyStats, window: npt.NDArray[np.int64], idx: npt.NDArray[np.int64], seen: CountTable
    ) -> npt.NDArray[np.bool_]:
        """Known = seen in an earlier batch, or earlier in this batch than the packet's window."""
        out = np.zeros(len(window), dtype=bool)
        if not len(idx):
            return out
        inv, uk, first_w, _, _ = stats
        before = np.array([k in seen for k in uk.tolist()], dtype=bool)
        out[idx] = before[inv] | (window[idx] > first_w[inv])
        return out

    def _account_pairs(
        self,
        stats: KeyStats,
        idx: npt.NDArray[np.int64],
        ctx: PacketContext,
        batch: PacketBatch,
        ip_names: dict[str, str],
        kind: str,
        name_ts: dict[str, float] | None = None,
    ) -> None:
        """Windows per key into the store and the human-readable profile (keys in sorted order)."""
        if not len(idx):
            return
        _, uk, _, nwin, rep_row = stats
        order = np.argsort(uk)
        rows = idx[rep_row[order]]
        store = self._peer_win if kind == "peer" else self._svc_win
        devs = ctx.device[rows].tolist()
        ts = batch.ts[rows].tolist()
        if kind == "peer":
            a, b = ctx.peer_hi[rows].tolist(), ctx.peer_lo[rows].tolist()
        else:
            a, b = ctx.proto[rows].tolist(), ctx.service[rows].tolist()
        for k, c, dev, t, x, y in zip(uk[order].tolist(), nwin[order].tolist(), devs, ts, a, b, strict=True):
            prof = self.profiles[dev]
            if k not in store:
                prof.discoveries.append(t)
                self._key_label[k] = (dev, kind, ip_to_str(x, y) if kind == "peer" else service_label(x, y))
            store[k] = store.get(k, 0) + c
            if kind == "peer":
                ip = ip_to_str(x, y)
                prof.peers[ip] += c
                name = ip_names.get(ip)
                if name and name_ts is not None and name_ts.get(ip, -np.inf) > t:
                    name = None  # its name was seen only after this packet
                if name:
                    prof.peer_names[ip] = name
                    self._names[dev].add(name)
                    prof.names.add(name)
                    self._learn_domain(dev, name)
            else:
                prof.services[service_label(x, y)] += c

    @staticmethod
    def series_labels(
        ctx: PacketContext, rows: npt.NDArray[np.int64], ip_names: dict[str, str]
    ) -> list[tuple[int, str, str]]:
        """(device, peer name or address, service) of the given packet rows."""
        if not len(rows):
            return []
        # one label per distinct (address, device, service), then spread over the rows
        ipn, _, _, _ = K.intern(ctx.peer_hi[rows], ctx.peer_lo[rows], True)
        dps = (
            (ctx.device[rows].astype(np.int64).astype(np.uint64) << np.uint64(24))
            | (ctx.proto[rows].astype(np.uint64) << np.uint64(16))
            | ctx.service[rows].astype(np.uint64)
        )
        inv, _, _, first = K.intern(ipn.view(np.uint64), dps, True)
        fr = rows[first]
        labels = []
        for d, hi, lo, proto, svc in zip(
            ctx.device[fr].tolist(),
            ctx.peer_hi[fr].tolist(),
            ctx.peer_lo[fr].tolist(),
            ctx.proto[fr].tolist(),
            ctx.service[fr].tolist(),
            strict=True,
        ):
            ip = ip_to_str(hi, lo)
            labels.append((d, ip_names.get(ip, ip), service_label(proto, svc)))
        return [labels[j] for j in inv.tolist()]

    def _quarantine(self, ramped: dict[int, tuple[float, float]]) -> None:
        """Unlearn the keys that ramped up while learning; note them in their profiles."""
        for key, (first, second) in ramped.items():
            where = self._key_label.get(key)
            store = self._peer_win if where and where[1] == "peer" else self._svc_win
            if where is None or key not in store:
                continue
            dev, kind, label = where
            if kind != "peer" or label in self.profiles[dev].peer_names or _is_local_text(label):
                continue  # a named or local peer is known by its name / place, not by its count
            del store[key]
            prof = self.profiles[dev]
            entry: dict[str, Any] = {"kind": kind, "key": label, "first_half": first, "second_half": second}
            if kind == "peer":
                prof.peers.pop(label, None)
                name = prof.peer_names.pop(label, "")
                if name and name not in prof.peer_names.values():
                    # the name came only with the ramping address: unlearn it too
                    self._names[dev].discard(name)
                    prof.names.discard(name)
                entry["name"] = name
                self._unlearn_identity(dev, label)
            else:
                prof.services.pop(label, None)
            prof.quarantined.append(entry)

    def _unlearn_identity(self, d: int, ip: str) -> None:
        """Forget what a quarantined peer taught its device's identity sets: its network and
        the bare-IP services only it was reached on (unless other learned peers share them)."""
        prof = self.profiles[d]
        h, lo = ip_from_str(ip)
        nh, nl = ident.network_of(np.array([h], np.uint64), np.array([lo], np.uint64))
        net = net_label(int(nh[0]), int(nl[0]))
        others = [p for p in prof.peers if p != ip and not _is_local_text(p)]
        same_net = False
        for p in others:
            ph, pl = ip_from_str(p)
            qh, ql = ident.network_of(np.array([ph], np.uint64), np.array([pl], np.uint64))
            same_net |= net_label(int(qh[0]), int(ql[0])) == net
        if not same_net:
            for kind in ("network", "high-network"):
                if self.has_item(d, kind, net):
                    self.remove_item(d, kind, net)
        for svc, peers in list(self._bare_peers.get(d, {}).items()):
            peers.discard(ip)
            if not peers and self.has_item(d, "bare-service", svc):
                self.remove_item(d, "bare-service", svc)

    # -- living --------------------------------------------------------------------------------
    def has_item(self, d: int, kind: str, item: str) -> bool:
        """Whether device ``d`` knows ``item`` of ``kind`` (see :meth:`absorb_item`)."""
        p = self.profiles[d]
        if kind == "network":
            return item in p.networks
        if kind == "domain":
            return item in p.domains
        if kind == "bare-service":
            return item in p.bare_services
        if kind == "high-network":
            return item in p.high_networks
        if kind == "service":
            return item in p.services
        if kind == "token":
            return int(item) in self._tokens.get(d, ())
        raise ValueError(f"unknown baseline item kind {kind!r}")

    def absorb_item(self, d: int, kind: str, item: str) -> bool:
        """Add one item to device ``d``'s baseline; returns whether it was new.

        Kinds: ``network`` (``a.b.c.0/24``), ``domain`` (registrable domain), ``bare-service``
        and ``service`` (``TCP/443``), ``high-network`` (network or local address), ``token``
        (the decimal hash of an application token).
        """
        if self.has_item(d, kind, item):
            return False
        p = self.profiles[d]
        if kind == "domain":
            self._learn_domain(d, item)
        elif kind == "token":
            self._tokens[d].add(int(item))
        elif kind == "service":
            proto, port = _service_parts(item)
            k = int(
                _mix(np.array([d], np.uint64), np.array([proto], np.uint64), np.array([port], np.uint64))[0]
            )
            self._svc_win[k] = self._svc_win.get(k, 0) + 1
            p.services[item] += 1
        else:
            attr, tag = {
                "network": ("networks", "net"),
                "bare-service": ("bare_services", "bare"),
                "high-network": ("high_networks", "high"),
            }[kind]
            getattr(p, attr).add(item)
            self._add_items(d, tag, {item})
        if p.active and kind in ("network", "domain", "high-network", "bare-service"):
            for g in p.groups:
                tag = {"network": "net", "domain": "dom", "high-network": "high", "bare-service": "bare"}[
                    kind
                ]
                self._add_items(ident.group_owner(g), tag, {item}, self.group_known)
        return True

    def remove_item(self, d: int, kind: str, item: str) -> bool:
        """Take an absorbed item out of device ``d``'s baseline again (operator revert).

        Group knowledge it fed stays until the groups are rebuilt (:meth:`rebuild_groups`).
        """
        if not self.has_item(d, kind, item):
            return False
        p = self.profiles[d]
        if kind == "token":
            self._tokens[d].discard(int(item))
        elif kind == "service":
            proto, port = _service_parts(item)
            k = int(
                _mix(np.array([d], np.uint64), np.array([proto], np.uint64), np.array([port], np.uint64))[0]
            )
            self._svc_win.pop(k, None)
            p.services.pop(item, None)
        else:
            attr, tag = {
                "network": ("networks", "net"),
                "domain": ("domains", "dom"),
                "bare-service": ("bare_services", "bare"),
                "high-network": ("high_networks", "high"),
            }[kind]
            getattr(p, attr).discard(item)
            if tag == "dom":
                self.known.discard(ident.key("dom", d, ident.domain_hash(item)).tolist())
            elif tag == "bare":
                proto, port = _service_parts(item)
                self.known.discard(ident.key("bare", d, proto, port).tolist())
            else:
                h, lo = ip_from_str(item.split("/")[0])
                self.known.discard(ident.key(tag, d, h, lo).tolist())
        return True

    def rebuild_identity(self) -> None:
        """Recompute the devices' identity keys from their profiles (after loading)."""
        self.known = KeySet()
        for d, p in enumerate(self.profiles):
            self._add_items(d, "net", p.networks)
            self._add_items(d, "dom", p.domains)
            self._add_items(d, "bare", p.bare_services)
            self._add_items(d, "high", p.high_networks)

    def rebuild_groups(self) -> None:
        """Recompute every group's knowledge from its active members' baselines (at once, also
        when group knowledge is deferred)."""
        self.group_known = KeySet()
        defer, self.defer_groups = self.defer_groups, False
        for d, p in enumerate(self.profiles):
            if p.active:
                self._share(d)
        self.defer_groups = defer
        self.group_pending = []


def net_label(hi: int, lo: int) -> str:
    """``a.b.c.0/24`` (IPv4) or ``x:y:z::/48`` (IPv6) of a network's (hi, lo) halves."""
    v4 = hi == 0 and (lo >> 32) == 0xFFFF
    return f"{ip_to_str(hi, lo)}/{24 if v4 else 48}"


@lru_cache(maxsize=65536)
def _token_domain(token: str) -> int:
    """The domain hash of a DNS / TLS name token (``dns:...``, ``sni:...``), 0 for other tokens."""
    kind, _, name = token.partition(":")
    if kind not in ("dns", "sni") or not name:
        return 0
    return ident.domain_hash(name)


def _service_parts(label: str) -> tuple[int, int]:
    """(protocol number, port) of a ``TCP/443`` style service label."""
    proto, _, port = label.partition("/")
    num = {v: k for k, v in PROTO_NAMES.items()}.get(proto)
    return (int(num) if num is not None else int(proto)), int(port)


def _addr_cols(items: set[str]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    hl = [ip_from_str(x.split("/")[0]) for x in items]
    return np.array([h for h, _ in hl], np.uint64), np.array([lo for _, lo in hl], np.uint64)


@lru_cache(maxsize=65536)
def _is_local_text(ip: str) -> bool:
    hi, lo = ip_from_str(ip)
    h, x = np.array([hi], np.uint64), np.array([lo], np.uint64)
    return bool(is_local(h, x)[0] or is_multicast(h, x)[0])


def _key_stats(
    keys: npt.NDArray[np.uint64], window: npt.NDArray[np.int64], idx: npt.NDArray[np.int64]
) -> KeyStats:
    """Distinct keys of the rows ``idx`` with their first window, window count and first row there."""
    out: KeyStats = K.key_windows(
        np.ascontiguousarray(keys[idx]), np.ascontiguousarray(window[idx], dtype=np.int64)
    )
    return out


def _ip_names(
    hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64], ip_names: dict[str, str], via_table: bool
) -> list[str]:
    """The DNS name (or "") of each address.

    Either formats every address and looks it up, or (for many addresses) parses the keys of
    ``ip_names`` once and matches the pairs: a key matches an address exactly when it is the
    canonical text of that address (``ip_to_str`` and ``ip_from_str`` round-trip).
    """
    if not via_table:
        return [ip_names.get(ip_to_str(h, x)) or "" for h, x in zip(hi.tolist(), lo.tolist(), strict=True)]
    th: list[int] = []
    tl: list[int] = []
    tn: list[str] = []
    for text, name in ip_names.items():
        try:
            h, x = ip_from_str(text)
        except ValueError:
            continue
        if ip_to_str(h, x) == text:
            th.append(h)
            tl.append(x)
            tn.append(name or "")
    if not tn:
        return [""] * len(hi)
    pos = K.lookup_pairs(
        np.ascontiguousarray(hi), np.ascontiguousarray(lo), np.array(th, np.uint64), np.array(tl, np.uint64)
    )
    return [tn[p] if p >= 0 else "" for p in pos.tolist()]
