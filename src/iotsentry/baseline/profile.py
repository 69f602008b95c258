"""Per-device behavioural baselines: peers, services, volumes per window, discovery over time.

The baseline is learned from the packets of a learning period, window by window, and then
frozen: membership tests during detection are vectorised (sorted hash arrays). The per-packet
grouping while learning runs in the numba hash kernels of ``features._window_kernels``. Peers are kept
with the DNS name that resolved to them, so a cloud service that rotates addresses behind one
name stays known.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.baseline.maturity import Maturity, maturity_of
from iotsentry.baseline.periodicity import PeriodicityTracker, connection_starts
from iotsentry.baseline.ramp_guard import RampGuard
from iotsentry.features import _window_kernels as K
from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import PacketContext
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
        vol: dict[str, dict[str, float]] = {}
        for j, name in enumerate(WINDOW_FEATURES):
            col = X[:, j] if len(X) else np.zeros(1)
            vol[name] = {
                "mean": float(col.mean()),
                "p95": float(np.quantile(col, 0.95)),
                "max": float(col.max()),
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
        }

    def top_services(self, k: int = 4) -> str:
        """``443/tcp, 123/udp`` style list of the most used services."""
        out = []
        for s, _ in self.services.most_common(k):
            proto, port = s.split("/")
            out.append(f"{port}/{proto.lower()}")
        return ", ".join(out) if out else "none"


def service_label(proto: int, port: int) -> str:
    """``TCP/443`` style label of a service key."""
    return f"{PROTO_NAMES.get(int(proto), str(int(proto)))}/{int(port)}"


class Baseline:
    """All device profiles of a site, learned from packet batches, then frozen for detection."""

    def __init__(self, device_ids: list[str]) -> None:
        self.device_ids = list(device_ids)
        self.profiles = [DeviceProfile(d) for d in self.device_ids]
        self._peer_win: dict[int, int] = {}
        self._svc_win: dict[int, int] = {}
        self._names: dict[int, set[str]] = defaultdict(set)
        self._frozen = False
        self.periodicity = PeriodicityTracker()
        self._tokens: dict[int, set[int]] = defaultdict(set)
        self._peer_keys = np.zeros(0, np.uint64)
        self._peer_counts = np.zeros(0, np.float64)
        self._svc_keys = np.zeros(0, np.uint64)
        self._svc_counts = np.zeros(0, np.float64)
        self.drift_guard = False
        """Refuse bare-IP peers that ramp up while learning (:mod:`~iotsentry.baseline.ramp_guard`)."""
        self._guard = RampGuard()
        self._key_label: dict[int, tuple[int, str, str]] = {}
        """Learned key -> (device, "peer" | "service", address or service label)."""

    # -- keys ------------------------------------------------------------------------------
    @staticmethod
    def peer_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        """Hash of (device, peer address) per packet."""
        return _mix(ctx.device.astype(np.uint64), ctx.peer_hi, ctx.peer_lo)

    @staticmethod
    def service_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        """Hash of (device, protocol, service port) per packet."""
        return _mix(ctx.device.astype(np.uint64), ctx.proto.astype(np.uint64), ctx.service.astype(np.uint64))

    # -- lookups -----------------------------------------------------------------------------
    def peer_windows(self, ctx: PacketContext) -> npt.NDArray[np.float64]:
        """Windows in which each packet's (device, peer) was seen while learning (0 = never)."""
        return _count_lookup(self._peer_keys, self._peer_counts, self.peer_keys(ctx))

    def service_windows(self, ctx: PacketContext) -> npt.NDArray[np.float64]:
        """Windows in which each packet's (device, service) was seen while learning."""
        return _count_lookup(self._svc_keys, self._svc_counts, self.service_keys(ctx))

    def named(
        self, batch: PacketBatch, ctx: PacketContext, ip_names: dict[str, str]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Per packet: (peer reached through a DNS name or local, peer's name known to the device,
        peer is local / multicast / not IP)."""
        n = len(ctx)
        has_name = np.zeros(n, dtype=bool)
        name_known = np.zeros(n, dtype=bool)
        local = is_local(ctx.peer_hi, ctx.peer_lo) | is_multicast(ctx.peer_hi, ctx.peer_lo)
        local |= batch.ip_version == 0
        cand = np.flatnonzero(~local & (ctx.device >= 0))
        if len(cand) and ip_names:
            # distinct peer addresses, their names, then (device, name) pairs against the learned names
            inv, uhi, ulo, _ = K.intern(ctx.peer_hi[cand], ctx.peer_lo[cand], True)
            names = _ip_names(uhi, ulo, ip_names, via_table=len(uhi) > len(ip_names))
            number: dict[str, int] = {}
            ip_name = np.array([number.setdefault(s, len(number)) if s else -1 for s in names], np.int64)
            pkt_name = ip_name[inv]
            has_name[cand] = pkt_name >= 0
            pairs = [(d, number[s]) for d, learned in self._names.items() for s in learned if s in number]
            if pairs:
                pd = np.array([d for d, _ in pairs], dtype=np.uint64)
                pn = np.array([k for _, k in pairs], dtype=np.uint64)
                hit = K.lookup_pairs(ctx.device[cand].astype(np.uint64), pkt_name.astype(np.uint64), pd, pn)
                name_known[cand] = (hit >= 0) & (pkt_name >= 0)
        return has_name | local, name_known, local

    def new_tokens(self, n: int, tokens: TokenRows | None) -> npt.NDArray[np.uint64]:
        """Per packet: hash of an application token its device has never used (0 = none)."""
        out = np.zeros(n, dtype=np.uint64)
        if tokens is None:
            return out
        rows, dev, h = tokens
        for r, d, k in zip(rows.tolist(), dev.tolist(), h.tolist(), strict=True):
            if d >= 0 and k not in self._tokens.get(d, ()):
                out[r] = k
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
    ) -> None:
        """Add the packets of one batch (whole windows) to the profiles.

        ``tokens`` are the application tokens of the batch: (packet row, device, token hash).
        """
        if self._frozen:
            raise RuntimeError("the baseline is frozen; learning happens before detection")
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
        has_name, name_known, local = self.named(batch, ctx, ip_names)
        new_tok = self._first_tokens(len(batch), ctx, tokens)
        table = window_table(
            batch, ctx, known_p | name_known | local | ~valid, has_name, known_s | ~valid, new_tok
        )
        for r in range(len(table)):
            prof = self.profiles[int(table.device[r])]
            prof.windows.append(table.X[r])
            prof.window_ts.append(float(table.window[r]) * 60.0)
        keys, rows = connection_starts(batch.ts, ctx, valid)
        self.periodicity.learn(keys, batch.ts[rows].tolist(), self.series_labels(ctx, rows, ip_names))
        self._account_pairs(pst, idx, ctx, batch, ip_names, kind="peer")
        self._account_pairs(sst, idx, ctx, batch, ip_names, kind="service")
        # time span per device
        dv = ctx.device[ctx.device >= 0]
        if len(dv):
            ts = batch.ts[ctx.device >= 0]
            first, last = K.min_max_per_group(dv.astype(np.int64), ts.astype(np.float64), len(self.profiles))
            for d in np.flatnonzero(np.bincount(dv, minlength=len(self.profiles))).tolist():
                p = self.profiles[d]
                p.first_ts = min(p.first_ts, float(first[d]))
                p.last_ts = max(p.last_ts, float(last[d]))

    def _first_tokens(self, n: int, ctx: PacketContext, tokens: TokenRows | None) -> npt.NDArray[np.uint64]:
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
        return out

    @staticmethod
    def _first_window_flags(
        stats: KeyStats, window: npt.NDArray[np.int64], idx: npt.NDArray[np.int64], seen: dict[int, int]
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
                if name:
                    prof.peer_names[ip] = name
                    self._names[dev].add(name)
                    prof.names.add(name)
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

    def freeze(self) -> None:
        """End learning: build the vectorised lookup tables and the learned schedules."""
        self._frozen = True
        self.periodicity.freeze()
        if self.drift_guard:
            self._quarantine(self._guard.ramped())
        self._peer_keys, self._peer_counts = _sorted_table(self._peer_win)
        self._svc_keys, self._svc_counts = _sorted_table(self._svc_win)

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
            else:
                prof.services.pop(label, None)
            prof.quarantined.append(entry)

    @property
    def frozen(self) -> bool:
        """Whether learning has ended."""
        return self._frozen

    def add_device(self, device_id: str) -> int:
        """Register a device first seen after learning started (its profile stays empty)."""
        self.device_ids.append(device_id)
        self.profiles.append(DeviceProfile(device_id))
        return len(self.profiles) - 1


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


def _sorted_table(d: dict[int, int]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
    if not d:
        return np.zeros(0, np.uint64), np.zeros(0, np.float64)
    keys = np.fromiter(d.keys(), dtype=np.uint64, count=len(d))
    vals = np.fromiter(d.values(), dtype=np.float64, count=len(d))
    order = np.argsort(keys)
    return keys[order], vals[order]


def _count_lookup(
    keys: npt.NDArray[np.uint64], counts: npt.NDArray[np.float64], q: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]:
    out = np.zeros(len(q))
    if len(keys) == 0 or len(q) == 0:
        return out
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    hit = keys[pos] == q
    out[hit] = counts[pos[hit]]
    return out
