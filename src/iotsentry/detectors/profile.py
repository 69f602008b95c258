"""Profile-deviation detector: new peers, new services, fan-out (scans), volume and rate.

Two layers:

* :class:`WindowProfileDetector` follows the detector contract on per-device window feature
  rows (``features/windows.py``): it learns per-feature limits (``margin`` × the learned maximum,
  never below a floor) and scores a row by its largest ratio to a limit. One instance per device
  gives per-device thresholds; a score above 1 exceeds the device's learned range.
* :class:`ProfileDetector` applies it to a site: it owns the :class:`Baseline`, scores every
  packet (``packet_scores``) and every device window (``window_findings``), and explains each
  finding in words. Devices whose baseline is not mature get only the absolute floors (scans,
  floods), so short or young captures do not raise "new peer" noise.

Across windows, :class:`ProfileDetector` also keeps per device the distinct *new targets* it
reached after learning -- (peer, protocol, destination port) of its outbound initiations whose
service, or whose peer (reached by bare IP, no DNS name), its baseline never saw -- over a
sliding horizon (``SLOW_HORIZON_S``, by packet time, at most ``SLOW_MAX_TARGETS`` remembered
per device). More of them in the horizon than the device's limit (``margin`` x the most its
settled baseline reached in any horizon, never below ``SLOW_FLOOR_MATURE``;
``SLOW_FLOOR_IMMATURE`` for young baselines) is a "slow-scan" finding, dated at the packet that
crossed the limit, at most once per device per horizon: a scan paced below every per-window
limit still adds up.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.baseline import identity as ident
from iotsentry.baseline.keysets import KeySet
from iotsentry.baseline.periodicity import SESSION_GAP_S, connection_starts, last_packet_of_devices
from iotsentry.baseline.profile import Baseline, DeviceProfile, Identity, TokenRows, service_label
from iotsentry.baseline.quantiles import column_quantile
from iotsentry.baseline.ramp_guard import RAMP_RATIO, capped_range
from iotsentry.detectors.base import Detector, register
from iotsentry.features import _profile_kernels as PK
from iotsentry.features import _window_kernels as K
from iotsentry.features.addresses import is_local
from iotsentry.features.device_context import WINDOW_S, PacketContext
from iotsentry.features.windows import WINDOW_FEATURES, WindowTable, window_table
from iotsentry.schema import PacketBatch, ip_to_str

F = {name: i for i, name in enumerate(WINDOW_FEATURES)}

FLOORS_MATURE: dict[str, float] = {
    "packets": 3000.0,
    "bytes": 4_000_000.0,
    "peers": 24.0,
    "new_peers": 3.5,
    "new_unnamed_peers": 0.5,
    "services": 24.0,
    "new_services": 3.0,
    "initiations": 600.0,
    "max_ports_per_peer": 24.0,
    "max_peers_per_port": 24.0,
    "syn_only": 120.0,
    "new_names": 0.5,
    "max_conns_per_target": 30.0,
}
"""Smallest limits for a device with a mature baseline (a quiet device is not alerted for a
few extra packets)."""

FLOORS_IMMATURE: dict[str, float] = {
    "packets": 30000.0,
    "bytes": 40_000_000.0,
    "peers": 100.0,
    "new_peers": 100.0,
    "new_unnamed_peers": 100.0,
    "services": 100.0,
    "new_services": 100.0,
    "initiations": 3000.0,
    "max_ports_per_peer": 100.0,
    "max_peers_per_port": 100.0,
    "syn_only": 1000.0,
    "new_names": 100.0,
    "max_conns_per_target": 60.0,
}
"""Absolute limits that apply to every device: what no IoT device does in a minute."""

CATEGORY: dict[str, str] = {
    "packets": "flood",
    "bytes": "volume",
    "peers": "fan-out",
    "new_peers": "new-peer",
    "new_unnamed_peers": "c2",
    "services": "fan-out",
    "new_services": "new-service",
    "initiations": "connection-burst",
    "max_ports_per_peer": "port-scan",
    "max_peers_per_port": "scan",
    "syn_only": "scan",
    "new_names": "new-name",
    "max_conns_per_target": "brute-force",
}

EXPLAIN_ORDER = (
    "max_peers_per_port",
    "max_ports_per_peer",
    "max_conns_per_target",
    "syn_only",
    "packets",
    "bytes",
    "initiations",
    "new_unnamed_peers",
    "new_names",
    "new_peers",
    "new_services",
    "peers",
    "services",
)
"""Which exceeded limit names a finding: the shape (scan, flood) before the novelty it causes."""

SEPARATE_CAUSES = ("new_unnamed_peers", "new_names")
"""Window features reported as findings of their own even when another feature names the window."""

FLOOD_PACKETS_PER_TARGET = 10.0
"""A scan sends about one packet per target; a window above its packet limit with more than
this many packets per distinct target is named a flood."""
FLOOD_MEAN_FRAME = 150.0
"""... and so is one whose frames average more than this many bytes (probes are small)."""

PROTO_TEXT = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
LOGIN_PORTS = frozenset({21, 22, 23, 110, 143, 445, 902, 1433, 2222, 2323, 3306, 3389, 5432, 5900, 8291})
"""Services whose repeated connection attempts are named a brute force (others: repeated attempts)."""

SCAN_SHAPE_FEATURES = ("max_ports_per_peer", "max_peers_per_port", "syn_only", "max_conns_per_target")
"""Window features whose learned range the drift guard caps when they ramp up while learning."""

DISCOVERY_FEATURES = ("new_peers", "new_unnamed_peers", "new_services", "new_names")

SLOW_HORIZON_S = 3600.0
"""Sliding horizon (packet time) over which distinct new targets are counted (slow scans)."""
SLOW_FLOOR_MATURE = 20.0
"""Smallest slow-scan limit (distinct new targets per horizon) of a device with a mature baseline."""
SLOW_FLOOR_IMMATURE = 50.0
"""Slow-scan limit of a device whose baseline is not mature (every peer of it is new). Below 60,
so that one new port a minute is caught within the hour; the 550 IoT SENTINEL setup captures
reach at most 35."""
SLOW_MAX_TARGETS = 4096
"""At most this many new targets are remembered per device (oldest forgotten first)."""
ALERTED_BOOST = 1.0
"""Added to the score of a packet that continues behaviour already part of an alert."""
WINDOW_BOOST = 1.0
"""Added to the score of every packet of a device window that left the device's limits: a
packet is stronger evidence when its minute is one the baseline cannot explain."""
C2_SPAN_S = 10.0
"""A contact with a new, unexplained peer (bare IP where names are evidence, or a TCP service the
device never used) counts for the c2 rule once it was answered and the device has kept it up
this long, or opened a second connection: command channels are sustained, a one-off
connectivity check is not."""
C2_REPEAT_S = 300.0
"""A channel that stays up is reported again this often (its incident's last-seen moves on)."""
C2_TURNS = 3
"""... or once the data went back and forth this many times (an interactive session)."""
C2_MAX_TRACKED = 65536
"""(device, peer) contacts tracked for it (least recently seen forgotten first)."""
BRUTE_FLOOR_MATURE = 30.0
"""Most connection attempts a device with a mature baseline may open to one *new* target (a
peer it reached by bare IP or a service its baseline never used) in a horizon: a brute force
paced below the per-window limit (``max_conns_per_target``) still adds up."""
BRUTE_FLOOR_IMMATURE = 60.0
"""The same for a young baseline: one attempt a minute is not yet an alert."""


def _mix(*cols: npt.NDArray[np.generic]) -> npt.NDArray[np.uint64]:
    out: npt.NDArray[np.uint64] = K.mix(np.stack([np.asarray(c, dtype=np.uint64) for c in cols]))
    return out


def duration_text(seconds: float) -> str:
    """A human duration: ``42 s`` below two minutes, ``17 min`` below two hours, else hours."""
    s = max(0.0, float(seconds))
    if s < 120.0:
        return f"{s:.0f} s"
    if s < 7200.0:
        return f"{s / 60.0:.0f} min"
    return f"{s / 3600.0:.1f} h"


def learned_discovery(
    prof: DeviceProfile, horizon_s: float = SLOW_HORIZON_S, extrapolate: bool = True
) -> float:
    """Most new peers + new services the device met in any ``horizon_s`` span of the settled
    second half of its learning period (with ``extrapolate``, its rate scaled to the horizon
    when that half is shorter than it)."""
    X = prof.matrix()
    if not len(X):
        return 0.0
    ts = np.asarray(prof.window_ts, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    X, ts = X[order], ts[order]
    half = len(X) // 2
    v = X[half:, F["new_peers"]] + X[half:, F["new_services"]]
    t = ts[half:]
    span = float(t[-1] - t[0]) + WINDOW_S
    if span < horizon_s:
        return float(v.sum()) * (horizon_s / span if extrapolate else 1.0)
    c = np.concatenate([[0.0], np.cumsum(v)])
    end = np.searchsorted(t, t + horizon_s, side="left")
    return float((c[end] - c[np.arange(len(t))]).max())


@register
class WindowProfileDetector(Detector):
    """Per-feature learned limits on window rows; score = largest ratio of a value to its limit."""

    name = "profile-window"
    version = "1"

    def __init__(self, margin: float = 2.0, mature: bool = True, drift_guard: bool = False) -> None:
        self.margin = margin
        self.mature = mature
        self.drift_guard = drift_guard

    def fit(self, X: npt.NDArray[np.float64]) -> Self:
        """Learn the limits from benign window rows (time order matters for discovery features)."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(WINDOW_FEATURES))
        floors = FLOORS_MATURE if self.mature else FLOORS_IMMATURE
        limits = np.array([floors[f] for f in WINDOW_FEATURES], dtype=np.float64)
        self.capped_: list[str] = []
        if len(X):
            learned = X.max(axis=0)
            if self.drift_guard:
                # a volume or shape that ramped up while learning keeps the first half's range
                cols = [F[f] for f in SCAN_SHAPE_FEATURES]
                learned, capped = capped_range(X, cols)
                self.capped_ = [WINDOW_FEATURES[j] for j in capped]
            # discovery is high while a device is set up: use the settled second half only
            tail = X[len(X) // 2 :]
            # a setup burst is rare: the 90th percentile, not the maximum, of the settled half
            cols = [F[f] for f in DISCOVERY_FEATURES]
            learned[cols] = column_quantile(tail[:, cols], 0.9) if len(tail) else 0.0
            limits = np.maximum(limits, self.margin * learned)
        if not self.mature:
            limits = np.maximum(limits, np.array([FLOORS_IMMATURE[f] for f in WINDOW_FEATURES]))
        # what no IoT device does in a minute is never learned as normal: a scan replayed while
        # the baseline learns (baseline poisoning) cannot lift the scan-shape limits past it
        for f in SCAN_SHAPE_FEATURES:
            limits[F[f]] = min(limits[F[f]], FLOORS_IMMATURE[f])
        self.limits_ = limits
        return self

    def ratios(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Each value divided by its limit."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(WINDOW_FEATURES))
        return X / self.limits_

    def score_samples(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Largest ratio per row (> 1 means outside the learned range)."""
        r = self.ratios(X)
        return r.max(axis=1) if r.shape[1] else np.zeros(len(r))


@dataclass
class Finding:
    """One device window whose behaviour left its baseline (input to the alert policy)."""

    device: int
    device_id: str
    ts: float
    score: float
    threshold: float
    feature: str
    category: str
    reason: str
    peer_ip: str
    peer_port: int
    proto: int
    values: dict[str, float]


def _squash(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 - np.exp(-np.maximum(x, 0.0))


class SlowScanState:
    """The new targets one device reached after learning, for the slow-scan rule (bounded).

    One per device: slots, and the queue of recent targets made on first use (a fleet's quiet
    devices hold no empty deque each)."""

    __slots__ = (
        "_recent",
        "cap",
        "conn_limit",
        "conn_next_ts",
        "conns",
        "horizon_s",
        "learned",
        "limit",
        "next_ts",
        "per_peer",
        "per_port",
        "seen",
    )

    def __init__(self, limit: float, learned: float, horizon_s: float, cap: int) -> None:
        self.limit = limit
        self.learned = learned
        self.horizon_s = horizon_s
        self.cap = cap
        self.seen: dict[int, tuple[float, int, int, int, int, float]] = {}
        """Target key -> (first time, peer hi, peer lo, protocol, port, its part in a scan);
        at most ``cap``, the oldest forgotten first."""
        self._recent: deque[tuple[float, tuple[int, int], tuple[int, int]]] | None = None
        self.per_peer: Counter[tuple[int, int]] = Counter()
        self.per_port: Counter[tuple[int, int]] = Counter()
        self.next_ts = -np.inf
        """Earliest time of the next finding (one per horizon)."""
        self.conn_limit = BRUTE_FLOOR_IMMATURE
        self.conns: dict[int, deque[float]] = {}
        """Target key (of ``seen``) -> times of the latest connection attempts to it, at most
        ``conn_limit`` + 1 of them."""
        self.conn_next_ts = -np.inf
        """Earliest time of the next repeated-attempt finding (one per horizon)."""

    @property
    def recent(self) -> deque[tuple[float, tuple[int, int], tuple[int, int]]]:
        """(first time, peer, (protocol, port)) of the targets first reached inside the horizon."""
        if self._recent is None:
            self._recent = deque()
        return self._recent

    def attempt(self, key: int, t: float, tcp: bool) -> int:
        """Record a connection attempt to a known new target; returns the attempts in the horizon.

        Every TCP SYN is an attempt; other initiations (UDP datagrams, pings) count only after a
        ``SESSION_GAP_S`` pause on the target, so a stream is one attempt, not one per packet.
        """
        q = self.conns.get(key)
        if q is None:
            q = self.conns[key] = deque(maxlen=int(self.conn_limit) + 1)
        if tcp or not q or t - q[-1] >= SESSION_GAP_S:
            q.append(t)
        elif q:
            q[-1] = t
        while q and q[0] <= t - self.horizon_s:
            q.popleft()
        return len(q)

    def _drop_oldest(self) -> None:
        _, peer, svc = self.recent.popleft()
        for c, k in ((self.per_peer, peer), (self.per_port, svc)):
            c[k] -= 1
            if c[k] <= 0:
                del c[k]

    def add(self, key: int, t: float, hi: int, lo: int, proto: int, port: int) -> int:
        """Record a target first reached at ``t``; returns the targets in the horizon up to it."""
        while self.recent and self.recent[0][0] <= t - self.horizon_s:
            self._drop_oldest()
        if len(self.recent) >= self.cap:
            self._drop_oldest()
        peer, svc = (hi, lo), (proto, port)
        self.recent.append((t, peer, svc))
        self.per_peer[peer] += 1
        self.per_port[svc] += 1
        part = float(max(self.per_peer[peer], self.per_port[svc]))
        self.seen[key] = (t, hi, lo, proto, port, part)
        if len(self.seen) > self.cap:
            old = next(iter(self.seen))
            del self.seen[old]
            self.conns.pop(old, None)
        return len(self.recent)


class ProfileDetector:
    """Site-level profile-deviation detection over packet batches (see module docstring)."""

    name = "profile"
    version = "1"

    def __init__(
        self,
        baseline: Baseline,
        labels: list[str] | None = None,
        margin: float = 2.0,
        token_text: dict[int, str] | None = None,
    ) -> None:
        self.baseline = baseline
        self.token_text = token_text if token_text is not None else {}
        self.labels = labels or list(baseline.device_ids)
        self.margin = margin
        self.window_models: list[WindowProfileDetector] = []
        self.mature: list[bool] = []
        self._learn_windows = np.zeros(0)
        self._limits = np.zeros((0, len(F)))
        """Per device: its window model's limits (one row each, kept in step with the models)."""
        self._slow_limit = np.zeros(0)
        """Per device: its slow-scan limit."""
        self._max_packets = np.zeros(0)
        self._max_new = np.zeros(0)
        self._trust = np.zeros(0)
        self._calm_peer = np.zeros(0)
        self._calm_tok = np.zeros(0)
        self._new_peer = np.zeros(0, dtype=bool)
        self._new_unnamed = np.zeros(0, dtype=bool)
        self._new_service = np.zeros(0, dtype=bool)
        self._new_token = np.zeros(0, dtype=np.uint64)
        self._starts: tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]] = (
            np.zeros(0, np.uint64),
            np.zeros(0, np.int64),
        )
        self._starts_known = np.zeros(0, dtype=bool)
        self.slow_horizon_s = SLOW_HORIZON_S
        self.slow_max_targets = SLOW_MAX_TARGETS
        self.slow: list[SlowScanState] = []
        """Per device: the new targets it reached after learning (slow-scan rule)."""
        self._slow_pending: list[Finding] = []
        self._slow_count = np.zeros(0)
        self._fitted = np.zeros(0, dtype=bool)
        """Per device: its window model was fitted on its own learned baseline."""
        self._churn = np.zeros(0, dtype=bool)
        self._c2_state: OrderedDict[int, tuple[float, float, int, int, int, float]] = OrderedDict()
        """(device, new unexplained peer) -> (first opening, last opening, openings, turns, side
        of the last payload, when it was last reported): the c2 rule."""
        self._raw_unnamed = np.zeros(0, dtype=bool)
        self._raw_new_service = np.zeros(0, dtype=bool)
        self.remote_known = np.zeros(0, dtype=bool)
        """Per device: its baseline holds remote peers (remote novelty rules judge it)."""
        self.names_known = np.zeros(0, dtype=bool)
        """Per device: its baseline holds names / clients (the new-name rule judges it)."""
        self.identity: Identity | None = None
        """The remote identity of the packets last passed to :meth:`evaluate`."""
        self.alerted: KeySet | None = None
        """Identity keys of behaviour already part of an alert (kept by the living baseline):
        packets that continue it score :data:`ALERTED_BOOST` higher."""

    def _slow_state(self, learned: float, mature: bool) -> SlowScanState:
        floor = SLOW_FLOOR_MATURE if mature else SLOW_FLOOR_IMMATURE
        limit = max(floor, self.margin * learned)
        st = SlowScanState(limit, learned, self.slow_horizon_s, self.slow_max_targets)
        st.conn_limit = BRUTE_FLOOR_MATURE if mature else BRUTE_FLOOR_IMMATURE
        return st

    def fit(self) -> ProfileDetector:
        """Fit one window model per device (ending every device's learning first: a batch run)."""
        if not self.baseline.frozen:
            self.baseline.freeze()
        self.window_models, self.mature = [], []
        n = len(self.baseline.profiles)
        for name in ("_learn_windows", "_max_packets", "_max_new", "_trust", "_calm_peer", "_calm_tok"):
            setattr(self, name, np.zeros(0))
        self._limits, self._slow_limit = np.zeros((0, len(F))), np.zeros(0)
        self.remote_known = np.zeros(0, dtype=bool)
        self.names_known = np.zeros(0, dtype=bool)
        self.slow, self._slow_pending = [], []
        self._fitted = np.zeros(0, dtype=bool)
        self._ensure_devices(n)
        self.fit_devices(list(range(n)))
        return self

    def fit_devices(self, devices: list[int]) -> list[Finding]:
        """(Re)fit the window models of devices whose learning just ended; returns their
        learning-end findings (baseline drift), which are also queued for :meth:`findings`."""
        self._ensure_devices(len(self.baseline.profiles))
        out: list[Finding] = []
        for i in devices:
            prof = self.baseline.profiles[i]
            mat = prof.maturity()
            mature = mat.mature
            self._trust[i] = mat.score
            X = prof.matrix()
            guard = self.baseline.drift_guard
            wm = WindowProfileDetector(margin=self.margin, mature=mature, drift_guard=guard)
            self.window_models[i] = wm.fit(X)
            prof.capped = list(wm.capped_)
            if prof.quarantined or prof.capped:
                f = self._drift_finding(i, prof)
                self._slow_pending.append(f)
                out.append(f)
            self.mature[i] = mature
            self._learn_windows[i] = len(X)
            self._calm_peer[i] = self._calm_tok[i] = 1.0
            self._max_packets[i] = self._max_new[i] = 0.0
            if len(X):
                tail = X[len(X) // 2 :]
                # how rarely the settled device meets a new peer / name: novelty weighs that much
                self._calm_peer[i] = 1.0 - float(np.mean(tail[:, F["new_peers"]] > 0))
                self._calm_tok[i] = 1.0 - float(np.mean(tail[:, F["new_names"]] > 0))
                self._max_packets[i] = X[:, F["packets"]].max()
                self._max_new[i] = X[len(X) // 2 :, F["new_peers"]].max()
            # a young baseline's rate says little: its own count only, never extrapolated
            learned = learned_discovery(prof, self.slow_horizon_s, extrapolate=mature)
            self.slow[i] = self._slow_state(learned, mature)
            self._fitted[i] = True
            self.apply_overrides(i)
        self.refresh_knowledge(devices)
        return out

    def apply_overrides(self, d: int) -> None:
        """Raise device ``d``'s limits to those an operator accepted (its profile's
        ``limit_overrides``: window features, ``slow_scan``, ``slow_brute_force``)."""
        prof = self.baseline.profiles[d]
        wm = self.window_models[d]
        for feat, limit in prof.limit_overrides.items():
            if feat in F:
                wm.limits_[F[feat]] = max(float(wm.limits_[F[feat]]), limit)
            elif feat == "slow_scan":
                self.slow[d].limit = max(self.slow[d].limit, limit)
            elif feat == "slow_brute_force":
                self.slow[d].conn_limit = max(self.slow[d].conn_limit, limit)
        self._limits[d] = wm.limits_
        self._slow_limit[d] = self.slow[d].limit

    def limit_of(self, d: int, feature: str) -> float | None:
        """Device ``d``'s current limit of a window feature or cross-window rule (None: none)."""
        if feature in F:
            return float(self.window_models[d].limits_[F[feature]])
        if feature == "slow_scan":
            return float(self.slow[d].limit)
        if feature == "slow_brute_force":
            return float(self.slow[d].conn_limit)
        return None

    def refresh_knowledge(self, devices: list[int] | None = None) -> None:
        """Re-read which kinds of behaviour each device's baseline holds (after absorption).

        A rule judges only what the baseline has seen: remote novelty (new peers, bare-IP
        contacts, beacons) needs learned remote peers, new names need learned names.
        """
        self._ensure_devices(len(self.baseline.profiles))
        for i in range(len(self.baseline.profiles)) if devices is None else devices:
            prof = self.baseline.profiles[i]
            self.remote_known[i] = bool(prof.networks) or prof.remote_peers() > 0
            self.names_known[i] = self.baseline.known_tokens(i) > 0 or bool(prof.domains)

    def _ensure_devices(self, n: int) -> None:
        """Placeholder state (absolute limits only) for devices not fitted yet."""
        k = n - len(self.window_models)
        if k <= 0:
            return
        template = WindowProfileDetector(mature=False).fit(np.zeros((0, len(F))))
        for _ in range(k):
            wm = WindowProfileDetector(mature=False)
            wm.limits_, wm.capped_ = template.limits_.copy(), []
            self.window_models.append(wm)
            self.mature.append(False)
            self.slow.append(self._slow_state(0.0, False))
        self._learn_windows = np.append(self._learn_windows, np.zeros(k))
        self._limits = np.vstack([self._limits, np.stack([m.limits_ for m in self.window_models[-k:]])])
        self._slow_limit = np.append(self._slow_limit, [x.limit for x in self.slow[-k:]])
        self._max_packets = np.append(self._max_packets, np.zeros(k))
        self._max_new = np.append(self._max_new, np.zeros(k))
        self._trust = np.append(self._trust, np.zeros(k))
        self._calm_peer = np.append(self._calm_peer, np.ones(k))
        self._calm_tok = np.append(self._calm_tok, np.ones(k))
        self._fitted = np.append(self._fitted, np.zeros(k, dtype=bool))
        self.remote_known = np.append(self.remote_known, np.zeros(k, dtype=bool))
        self.names_known = np.append(self.names_known, np.zeros(k, dtype=bool))
        while len(self.labels) < n:
            self.labels.append(self.baseline.device_ids[len(self.labels)])

    def evaluate(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        tokens: TokenRows | None = None,
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.float64], WindowTable, npt.NDArray[np.float64]]:
        """Score a batch: (per-packet scores, window table, per-window scores).

        The per-packet rules run in the kernels of :mod:`~iotsentry.features._profile_kernels`
        (see there); the reasoning, rule by rule:

        * remote novelty is judged only for devices whose baseline holds remote peers;
        * a bare IP is evidence only where the device's names are observable and it uses them
          ... and where a missing name is no evidence, a TCP connection to a new network on a
          service the device never used still is (the shape of a bot's command channel),
          counted once the device keeps the channel up (:meth:`_sustained`);
        * a device "contacts" a new host when it opens the conversation: closing a connection
          opened before it was watched, or answering a host that reached it, is not contacting;
        * the per-packet score is the novelty of the peer and service for this device (a peer
          known by its name, network or group, or another server of a bare-IP service the
          device uses, counts as half-known; a service the identity rules know likewise), plus
          the device-window context (fan-out of new peers, rate against the learned maximum),
          the packet's own part in a scan / brute-force shape and in a slow scan (with a step
          once that part alone is beyond the device's limit); novelty is evidence only as far
          as the device's baseline is trusted (its maturity).
        """
        self._ensure_devices(len(self.baseline.profiles))
        n = len(ctx)
        idn = self.baseline.identity(batch, ctx, ip_names, name_ts)
        self.identity = idn
        valid = idn.valid
        new_tok = self.baseline.new_tokens(n, tokens, self.token_text)
        self._new_token = new_tok
        known_peer, known_service, unnamed_ok, c2_cand, tok_judged, raw_unnamed, churn, target, kin = (
            PK.novelty_flags(
                ctx.device,
                ctx.proto,
                valid,
                idn.local,
                idn.known_peer,
                idn.churn,
                idn.known_service,
                idn.has_name,
                idn.name_known,
                idn.net_known,
                idn.group_known,
                new_tok,
                self.baseline.names_evidence,
                self.remote_known,
                self.names_known,
            )
        )
        c2_event = self._sustained(batch, ctx, c2_cand)
        table = window_table(
            batch,
            ctx,
            known_peer | (~ctx.initiation & ~c2_event),
            unnamed_ok | ~c2_event,
            known_service,
            tok_judged,
            target,
        )
        self._new_peer = ~known_peer
        self._new_unnamed = c2_event
        self._raw_unnamed = raw_unnamed
        self._raw_new_service = ~idn.known_service
        self._churn = churn
        self._new_service = ~known_service
        self._starts = connection_starts(batch.ts, ctx, valid)
        self._starts_known = known_peer[self._starts[1]]
        wscores = (table.X / self._limits[table.device]).max(axis=1) if len(table) else np.zeros(0)
        self._slow_count = self._slow_update(batch, ctx, valid)
        use_table = len(table) > 0
        shape = table.shape if table.shape is not None and use_table else np.zeros((0, 3))
        use_shape = len(shape) > 0
        slow_limit = self._slow_limit if len(self._slow_limit) else np.full(1, SLOW_FLOOR_IMMATURE)
        L, E, slow_ratio = PK.score_args(
            ctx.device,
            idn.peer_windows,
            idn.service_windows,
            kin,
            known_service,
            table.group_of_packet,
            table.X,
            shape,
            use_table,
            use_shape,
            self._learn_windows,
            self._max_new,
            self._max_packets,
            self._limits,
            self._slow_count,
            slow_limit,
        )
        scores: npt.NDArray[np.float64] = PK.score_combine(
            ctx.device,
            valid,
            np.log1p(L),
            np.exp(E),
            use_shape,
            slow_ratio,
            c2_event,
            idn.peer_windows,
            new_tok,
            self._trust,
            self._calm_peer,
            self._calm_tok,
            use_table,
            wscores,
            table.group_of_packet,
        )
        if self.alerted is not None and len(self.alerted):
            scores = scores + ALERTED_BOOST * self._continues_alert(batch, ctx, idn, new_tok)
        return scores, table, wscores

    def _continues_alert(
        self, batch: PacketBatch, ctx: PacketContext, idn: Identity, new_tok: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Per packet: it reaches a network, an unknown peer's service or uses a token that was
        part of an alert on its device."""
        assert self.alerted is not None
        if idn.net_hi is None or idn.net_lo is None:
            nhi, nlo = ident.network_of(ctx.peer_hi, ctx.peer_lo)
        else:
            nhi, nlo = idn.net_hi, idn.net_lo
        slots, keys = PK.alert_queries(
            ctx.device,
            idn.valid,
            idn.local,
            ctx.peer_hi,
            ctx.peer_lo,
            nhi,
            nlo,
            ctx.proto,
            ctx.service,
            new_tok,
        )
        hit = self.alerted.contains(keys) if len(keys) else np.zeros(0, dtype=bool)
        out: npt.NDArray[np.bool_] = PK.alert_verdicts(slots, hit, idn.known_peer)
        return out

    def _sustained(
        self, batch: PacketBatch, ctx: PacketContext, cand: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]:
        """Per packet: the one at which the device's contact with a new, unexplained peer became
        a channel -- the peer answered with data, and the conversation either lasted
        ``C2_SPAN_S`` since the device first opened it, or took ``C2_TURNS`` turns of data
        back and forth, or was opened a second time (an unanswered probe is a scan's business;
        one request and its answer is a check, not a channel); state per (device, peer), bounded."""
        out = np.zeros(len(ctx), dtype=bool)
        rows = np.flatnonzero(cand)
        if not len(rows):
            return out
        keys = _mix(ctx.device[rows].astype(np.uint64), ctx.peer_hi[rows], ctx.peer_lo[rows])
        # a TCP conversation already under way when it was first seen (the monitor started or
        # restarted in its middle): the device is taken for its client, as for its service
        outb = ctx.outbound[rows]
        uncertain = ~ctx.certain[rows] if ctx.certain is not None else np.zeros(len(rows), dtype=bool)
        # keys in ascending order, each key's packets in batch order
        order = np.argsort(keys, kind="stable")
        ks = keys[order].tolist()
        ts = batch.ts[rows][order].tolist()
        init = ctx.initiation[rows][order].tolist()
        inbound = (~outb)[order].tolist()
        midway = (outb & uncertain & (ctx.proto[rows] == 6))[order].tolist()
        payload = (batch.payload_len[rows] > 0)[order].tolist()
        where = rows[order].tolist()
        st = self._c2_state
        j, m = 0, len(ks)
        while j < m:
            k = ks[j]
            first, last, starts, turns, side, said = st.get(k, (np.inf, -np.inf, 0, 0, 0, -np.inf))
            while j < m and ks[j] == k:
                t = ts[j]
                opens = init[j] or (starts == 0 and midway[j])
                if opens and (starts == 0 or t - last > SESSION_GAP_S):
                    starts += 1
                    first = min(first, t)
                if opens:
                    last = t
                if starts and payload[j]:
                    now_side = 2 if inbound[j] else 1
                    turns += int(side != 0 and now_side != side)
                    side = now_side
                sustained = (
                    side == 2 and starts and (starts >= 2 or turns >= C2_TURNS or t - first >= C2_SPAN_S)
                )
                if sustained and t - said >= C2_REPEAT_S:
                    out[where[j]] = True  # again every C2_REPEAT_S while the channel stays up
                    said = t
                j += 1
            st[k] = (first, last, starts, turns, side, said)
            st.move_to_end(k)
            if len(st) > C2_MAX_TRACKED:
                st.popitem(last=False)
        return out

    def findings(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        table: WindowTable,
        wscores: npt.NDArray[np.float64],
    ) -> list[Finding]:
        """Explain every window whose score exceeds 1 (its device's learned range)."""
        out: list[Finding] = []
        for r in np.flatnonzero(wscores > 1.0).tolist():
            d = int(table.device[r])
            model = self.window_models[d]
            ratios = model.ratios(table.X[r])[0]
            over = [f for f in EXPLAIN_ORDER if ratios[F[f]] > 1.0]
            feat = over[0] if over else WINDOW_FEATURES[int(np.argmax(ratios))]
            x = table.X[r]
            targets = max(x[F["max_ports_per_peer"]], x[F["max_peers_per_port"]], 1.0)
            mean_size = x[F["bytes"]] / max(x[F["packets"]], 1.0)
            if ratios[F["packets"]] > 1.0 and (
                x[F["packets"]] / targets > FLOOD_PACKETS_PER_TARGET or mean_size > FLOOD_MEAN_FRAME
            ):
                feat = "packets"  # many or large packets per target: a flood, even if it sprays ports
            pk = np.flatnonzero(table.group_of_packet == r)
            out.append(self._explain(batch, ctx, d, r, feat, float(wscores[r]), pk, table))
            # a command channel or new names in the same minute as a scan or flood are a cause of
            # their own (their own incident), not a detail of it
            for extra in SEPARATE_CAUSES:
                if extra != feat and ratios[F[extra]] > 1.0:
                    score = float(ratios[F[extra]])
                    out.append(self._explain(batch, ctx, d, r, extra, score, pk, table))
        out.extend(self._slow_pending)
        self._slow_pending = []
        return out

    def _slow_update(
        self, batch: PacketBatch, ctx: PacketContext, valid: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        """Track the new targets of the batch's outbound initiations (findings are queued for
        :meth:`findings`); per packet, its part in a slow scan: how many new targets of its
        device share its peer or its port in the horizon when its target was first reached
        (0 for packets that reach no new target).

        Packets are taken in batch order, so for time-ordered input the values and findings do
        not depend on how the stream is cut into batches.
        """
        n = len(ctx)
        out = np.zeros(n)
        if len(self._new_peer) != n:
            return out
        # unexplained novelty only: a new peer reached through a DNS name on a known service
        # (a cloud address rotating, a new CDN node) is not probing; another address of a
        # service the device reaches by bare IP counts as a target, not as an attempt
        churn = self._churn if len(self._churn) == n else np.zeros(n, dtype=bool)
        raw = self._raw_unnamed if len(self._raw_unnamed) == n else self._new_unnamed
        raw_svc = self._raw_new_service if len(self._raw_new_service) == n else self._new_service
        cand = valid & ctx.initiation & (raw | raw_svc | churn)
        idx = np.flatnonzero(cand)
        if not len(idx):
            return out
        proto = ctx.proto[idx].astype(np.uint64)
        tcp_udp = (proto == 6) | (proto == 17)
        port = np.where(tcp_udp, batch.dst_port[idx].astype(np.uint64), ctx.service[idx].astype(np.uint64))
        # UDP between unprivileged ports (peer-to-peer) has no service: one target per peer
        high = (
            self.identity.high_udp[idx]
            if self.identity is not None and len(self.identity.high_udp) == n
            else None
        )
        if high is not None:
            port = np.where(high, np.uint64(0), port)
        hi, lo = ctx.peer_hi[idx], ctx.peer_lo[idx]
        keys = K.mix(np.stack([hi.astype(np.uint64), lo.astype(np.uint64), proto, port]))
        lan = is_local(hi, lo)
        cchurn = churn[idx] & ~self._new_service[idx]
        # devices in ascending order, each device's packets in batch order
        order = np.argsort(ctx.device[idx], kind="stable")
        dl = ctx.device[idx][order].tolist()
        kl = keys[order].tolist()
        tl = batch.ts[idx][order].tolist()
        hl, ll = hi[order].tolist(), lo[order].tolist()
        pl, portl = proto[order].tolist(), port[order].tolist()
        lanl, cl = lan[order].tolist(), cchurn[order].tolist()
        rl = idx[order].tolist()
        m = len(dl)
        attempts = np.zeros(m)
        part = np.zeros(m)
        ratio = np.zeros(m)
        slow = self.slow
        for j in range(m):
            d, key, t = dl[j], kl[j], tl[j]
            st = slow[d]
            if key not in st.seen:
                count = st.add(key, t, hl[j], ll[j], pl[j], portl[j])
                if count > st.limit and t >= st.next_ts:
                    st.next_ts = t + st.horizon_s
                    self._slow_pending.append(self._slow_finding(d, t, count, rl[j], batch, ctx))
            # repeated attempts on one new target: a paced brute force (on the LAN, where
            # devices being set up poll each other's web services, login services only;
            # reconnects to another server of a service the device uses are not attempts)
            if (not lanl[j] and not cl[j]) or portl[j] in LOGIN_PORTS:
                attempts[j] = n_att = st.attempt(key, t, pl[j] == 6)
            else:
                continue
            if n_att > st.conn_limit and t >= st.conn_next_ts:
                st.conn_next_ts = t + st.horizon_s
                self._slow_pending.append(self._brute_finding(d, t, n_att, rl[j], batch, ctx))
        # in the limit of the device's slow-scan rule: the larger of the two parts (as the
        # device's targets stand after the batch)
        for j in range(m):
            st = slow[dl[j]]
            seen = st.seen.get(kl[j])
            part[j] = seen[5] if seen is not None else 0.0
            ratio[j] = st.limit / st.conn_limit
        out[idx[order]] = np.maximum(part, attempts * ratio)
        return out

    def _drift_finding(self, d: int, prof: DeviceProfile) -> Finding:
        """A device whose traffic ramped up while its baseline learned (refused, not learned)."""
        label = self.labels[d] if d < len(self.labels) else prof.device_id
        parts = []
        top = sorted(prof.quarantined, key=lambda e: -float(e["second_half"]))[:3]
        for e in top:
            who = f"{e['key']} ({e['name']})" if e.get("name") else str(e["key"])
            parts.append(f"{e['kind']} {who}: {e['first_half']:.0f} -> {e['second_half']:.0f} packets")
        if prof.capped:
            parts.append("per-minute " + ", ".join(prof.capped))
        peer = next((e for e in top if e["kind"] == "peer"), None)
        growth = max([e["second_half"] / max(e["first_half"], 1.0) for e in prof.quarantined] or [RAMP_RATIO])
        reason = (
            f"{label}: traffic grew more than x{RAMP_RATIO:g} between the halves of its learning period "
            f"({'; '.join(parts)}{' ...' if len(prof.quarantined) > 3 else ''}); not learned into the "
            f"baseline (possible slow baseline poisoning)"
        )
        return Finding(
            device=d,
            device_id=prof.device_id,
            ts=float(prof.last_ts) if np.isfinite(prof.last_ts) else 0.0,
            score=float(growth) / RAMP_RATIO,
            threshold=1.0,
            feature="baseline_drift",
            category="baseline-drift",
            reason=reason,
            peer_ip=str(peer["key"]) if peer else "",
            peer_port=0,
            proto=0,
            values={
                "quarantined": float(len(prof.quarantined)),
                "capped_features": float(len(prof.capped)),
                "growth": float(growth),
            },
        )

    def _brute_finding(
        self, d: int, t: float, count: int, row: int, batch: PacketBatch, ctx: PacketContext
    ) -> Finding:
        """Explain device ``d``'s repeated attempts on one new target crossing its limit."""
        st = self.slow[d]
        prof = self.baseline.profiles[d]
        label = self.labels[d] if d < len(self.labels) else prof.device_id
        proto = int(ctx.proto[row])
        port = int(batch.dst_port[row]) if proto in (6, 17) else int(ctx.service[row])
        peer_ip = ip_to_str(int(ctx.peer_hi[row]), int(ctx.peer_lo[row]))
        key_times = [q for q in st.conns.values() if len(q) == count]
        span = t - key_times[0][0] if key_times else 0.0
        per = "hour" if st.horizon_s == 3600.0 else f"{st.horizon_s / 60:.0f} min"
        login = proto == 6 and port in LOGIN_PORTS
        what = "paced brute force on a login service" if login else "paced brute force or a new beacon"
        reason = (
            f"{label} opened {count} connections to {peer_ip} port {port}/{PROTO_TEXT.get(proto, proto)} "
            f"in {duration_text(span)}, a target its baseline never used, above its limit of "
            f"{st.conn_limit:.0f} per {per}: {what}; "
            f"baseline: {len(prof.peers)} peers, services {prof.top_services()}"
        )
        return Finding(
            device=d,
            device_id=prof.device_id,
            ts=t,
            score=count / st.conn_limit,
            threshold=1.0,
            feature="slow_brute_force",
            category="brute-force" if login else "repeated-attempts",
            reason=reason,
            peer_ip=peer_ip,
            peer_port=port,
            proto=proto,
            values={"attempts": float(count), "limit": st.conn_limit, "span_s": span},
        )

    def _slow_finding(
        self, d: int, t: float, count: int, row: int, batch: PacketBatch, ctx: PacketContext
    ) -> Finding:
        """Explain device ``d``'s new targets crossing its limit at time ``t`` (packet ``row``)."""
        st = self.slow[d]
        prof = self.baseline.profiles[d]
        label = self.labels[d] if d < len(self.labels) else prof.device_id
        span = max(t - st.recent[0][0], 0.0) if st.recent else 0.0
        (top_hi, top_lo), top_n = st.per_peer.most_common(1)[0]
        proto = int(ctx.proto[row])
        port = int(batch.dst_port[row]) if proto in (6, 17) else int(ctx.service[row])
        peer_ip = ip_to_str(top_hi, top_lo)
        hours = st.horizon_s / 3600.0
        per = "hour" if hours == 1.0 else f"{st.horizon_s / 60:.0f} min"
        if self.mature[d] if d < len(self.mature) else False:
            base = f"its baseline reached at most {st.learned:.0f} new peers/services in any {per}"
        else:
            base = f"its baseline is not mature ({prof.maturity().reason})"
        reason = (
            f"{label} reached {count} new (peer, port) targets in {duration_text(span)} "
            f"({len(st.per_peer)} peer(s), {len(st.per_port)} port(s); {top_n} of them on {peer_ip}), "
            f"above its limit of {st.limit:.0f} per {per}: slow scan / discovery; {base}; "
            f"baseline: {len(prof.peers)} peers, services {prof.top_services()}"
        )
        return Finding(
            device=d,
            device_id=prof.device_id,
            ts=t,
            score=count / st.limit,
            threshold=1.0,
            feature="slow_scan",
            category="slow-scan",
            reason=reason,
            peer_ip=peer_ip,
            peer_port=port,
            proto=proto,
            values={
                "new_targets": float(count),
                "limit": st.limit,
                "learned_max": st.learned,
                "span_s": span,
                "peers": float(len(st.per_peer)),
                "ports": float(len(st.per_port)),
            },
        )

    def _explain(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        d: int,
        r: int,
        feat: str,
        score: float,
        pk: npt.NDArray[np.int64],
        table: WindowTable,
    ) -> Finding:
        prof = self.baseline.profiles[d]
        label = self.labels[d] if d < len(self.labels) else prof.device_id
        x = {f: float(table.X[r, F[f]]) for f in WINDOW_FEATURES}
        limit = float(self.window_models[d].limits_[F[feat]])
        # the dominant peer and port of the window's outbound initiations (or all packets)
        sel = pk[ctx.initiation[pk]] if ctx.initiation[pk].any() else pk
        if feat in ("new_peers", "new_unnamed_peers") and len(self._new_peer) == len(ctx):
            src = self._new_unnamed if feat == "new_unnamed_peers" else self._new_peer
            fresh = pk[src[pk]]
            if len(fresh):
                sel = fresh
        ports = np.where(ctx.outbound[sel], batch.dst_port[sel], batch.src_port[sel])
        port = int(np.bincount(ports).argmax()) if len(ports) else 0
        hi, lo = ctx.peer_hi[sel], ctx.peer_lo[sel]
        keys = hi ^ (lo * np.uint64(31))
        uk, first, cnt = np.unique(keys, return_index=True, return_counts=True)
        top = int(sel[first[int(np.argmax(cnt))]]) if len(uk) else int(pk[0])
        peer_ip = ip_to_str(ctx.peer_hi[top], ctx.peer_lo[top])
        proto = int(batch.proto[top])
        n_base = len(prof.peers)
        base = f"baseline: {n_base} peers, services {prof.top_services()}"
        if not (self.mature[d] if d < len(self.mature) else False):
            base += f" (baseline not mature: {prof.maturity().reason})"
        span = f"in {WINDOW_S:.0f} s"
        if feat in ("max_peers_per_port", "syn_only", "peers"):
            reason = (
                f"{label} contacted {int(x['peers'])} hosts ({int(x['new_peers'])} new) "
                f"{span}, {int(x['max_peers_per_port'])} on port {port}, {int(x['syn_only'])} unanswered "
                f"SYNs; {base}"
            )
        elif feat == "max_conns_per_target":
            reason = (
                f"{label} opened {int(x['max_conns_per_target'])} connections to {peer_ip}:{port} {span} "
                f"(limit {limit:.0f}): brute-force shape; {base}"
            )
        elif feat == "max_ports_per_peer":
            reason = f"{label} probed {int(x['max_ports_per_peer'])} ports of {peer_ip} {span}; {base}"
        elif feat in ("packets", "bytes", "initiations"):
            reason = (
                f"{label} sent {int(x['packets'])} packets / {int(x['bytes'])} bytes {span} "
                f"(limit {limit:.0f} {feat}), mostly to {peer_ip}:{port}; "
                f"learned max {int(self._max_packets[d])} packets per window; {base}"
            )
        elif feat == "new_unnamed_peers":
            svc = f"{peer_ip}:{port}/{service_label(proto, port).split('/')[0].lower()}"
            ev = self.baseline.names_evidence
            if d < len(ev) and not ev[d]:
                reason = (
                    f"{label} contacted {int(x['new_unnamed_peers'])} new host(s) on a TCP service it never "
                    f"used (e.g. {svc}); {base}"
                )
            else:
                reason = (
                    f"{label} contacted {int(x['new_unnamed_peers'])} new host(s) by bare IP, no DNS name "
                    f"(e.g. {svc}); {base}"
                )
        elif feat == "new_names":
            toks = self._new_token[pk] if len(self._new_token) == len(ctx) else np.zeros(0, np.uint64)
            texts = sorted({self.token_text.get(int(k), "?") for k in toks[toks != 0].tolist()})
            shown = ", ".join(texts[:5]) + (f" and {len(texts) - 5} more" if len(texts) > 5 else "")
            reason = (
                f"{label} used {len(texts)} name(s)/client(s) never seen in its baseline ({shown}); "
                f"{base}, {self.baseline.known_tokens(d)} known names/clients"
            )
        elif feat == "new_services":
            reason = (
                f"{label} used {int(x['new_services'])} new service(s) (e.g. port {port} on {peer_ip}); "
                f"{base}"
            )
        else:
            reason = (
                f"{label} contacted {int(x['new_peers'])} new host(s) {span} (e.g. {peer_ip}:{port}); {base}"
            )
        return Finding(
            device=d,
            device_id=prof.device_id,
            ts=self._crossing_time(batch, ctx, pk, feat, limit),
            score=score,
            threshold=1.0,
            feature=feat,
            category=CATEGORY[feat],
            reason=reason,
            peer_ip=peer_ip,
            peer_port=port,
            proto=proto,
            values=x,
        )

    def schedule_findings(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        detect_from: float,
        last: float | None = None,
    ) -> list[Finding]:
        """New beacons and broken schedules seen in the batch last passed to :meth:`evaluate`;
        schedules are checked for breaks at ``last`` (default: the batch's last packet time)."""
        keys, rows = self._starts
        sel = batch.ts[rows] >= detect_from
        keys, rows, known = keys[sel], rows[sel], self._starts_known[sel]
        per = self.baseline.periodicity
        dev, proto, svc = ctx.device[rows], ctx.proto[rows], ctx.service[rows]

        def series(j: int) -> tuple[int, str, str]:
            r = int(rows[j])
            ip = ip_to_str(int(ctx.peer_hi[r]), int(ctx.peer_lo[r]))
            return int(dev[j]), ip_names.get(ip, ip), service_label(int(proto[j]), int(svc[j]))

        out: list[Finding] = []
        for _kind, t, s in per.observe_starts(keys, batch.ts[rows], dev, proto, svc, series, known):
            d = s.device
            if not (self.mature[d] if d < len(self.mature) else False):
                continue  # every peer of a young baseline is new: no beacon verdicts there
            times = np.diff(np.asarray(getattr(s, "times", [0.0, 0.0])))
            period = float(np.median(times)) if len(times) else 0.0
            label = self.labels[d] if d < len(self.labels) else self.baseline.device_ids[d]
            prof = self.baseline.profiles[d]
            peer_ip = s.peer
            out.append(
                Finding(
                    device=d,
                    device_id=prof.device_id,
                    ts=t,
                    score=2.0,
                    threshold=1.0,
                    feature="beacon",
                    category="c2",
                    peer_ip=peer_ip,
                    peer_port=int(s.service.split("/")[1]),
                    proto=6 if s.service.startswith("TCP") else 17,
                    reason=(
                        f"{label} contacts new peer {s.peer} ({s.service}) every ~{period:.0f} s, "
                        f"{len(getattr(s, 'times', []))} times so far: beacon-like schedule never seen "
                        f"in its baseline; baseline: {len(prof.peers)} peers, "
                        f"services {prof.top_services()}"
                    ),
                    values={"period_s": period, "count": float(len(getattr(s, "times", [])))},
                )
            )
        end = float(batch.ts[-1]) if last is None and len(batch) else last
        if len(batch) and end is not None and end >= detect_from:
            for _kind, t, sch in per.broken(last_packet_of_devices(batch.ts, ctx.device)):
                d = sch.device
                label = self.labels[d] if d < len(self.labels) else self.baseline.device_ids[d]
                out.append(
                    Finding(
                        device=d,
                        device_id=self.baseline.device_ids[d],
                        ts=t,
                        score=1.2,
                        threshold=1.0,
                        feature="schedule",
                        category="silence",
                        peer_ip=sch.peer,
                        peer_port=int(sch.service.split("/")[1]),
                        proto=6 if sch.service.startswith("TCP") else 17,
                        reason=(
                            f"{label} stopped its ~{sch.period_s:.0f} s check-ins to {sch.peer} "
                            f"({sch.service}); "
                            f"last one {t - sch.last_ts:.0f} s ago while the device is still active"
                        ),
                        values={"period_s": sch.period_s, "silent_s": t - sch.last_ts},
                    )
                )
        return out

    def _crossing_time(
        self, batch: PacketBatch, ctx: PacketContext, pk: npt.NDArray[np.int64], feat: str, limit: float
    ) -> float:
        """When, inside the window, the feature's running value first exceeded its limit.

        A streaming monitor can alert at that packet; the per-peer / per-port scan shapes are
        dated at the window's last packet; connection attempts per target at the attempt that
        took the busiest target past the limit.
        """
        end = float(batch.ts[pk[-1]])
        if feat == "max_conns_per_target":
            rows = pk[ctx.syn_only[pk]]
            if len(rows):
                key = _mix(
                    ctx.peer_hi[rows],
                    ctx.peer_lo[rows],
                    ctx.proto[rows].astype(np.uint64),
                    ctx.service[rows].astype(np.uint64),
                )
                _, inv = np.unique(key, return_inverse=True)
                inv = inv.ravel()
                order = np.argsort(inv, kind="stable")
                grp = inv[order]
                start = np.r_[0, np.flatnonzero(np.diff(grp)) + 1]
                run = np.arange(len(grp)) - np.repeat(start, np.diff(np.r_[start, len(grp)])) + 1
                over = order[run > limit]
                if len(over):
                    return float(batch.ts[rows[over.min()]])
            return end
        if feat in ("packets", "bytes", "initiations", "syn_only"):
            w = {
                "packets": np.ones(len(pk)),
                "bytes": batch.wire_len[pk].astype(np.float64),
                "initiations": ctx.initiation[pk].astype(np.float64),
                "syn_only": ctx.syn_only[pk].astype(np.float64),
            }[feat]
            run = np.cumsum(w)
        elif feat == "new_names" and len(self._new_token) == len(ctx):
            toks = self._new_token[pk]
            _, first = np.unique(toks, return_index=True)
            firsts = np.zeros(len(pk))
            firsts[first] = 1.0
            firsts[toks == 0] = 0.0
            run = np.cumsum(firsts)
        elif feat in ("new_peers", "new_unnamed_peers", "peers", "new_services"):
            if feat == "new_services":
                mask = self._new_service[pk] if len(self._new_service) == len(ctx) else np.ones(len(pk), bool)
                key = (ctx.proto[pk].astype(np.uint64) << np.uint64(16)) | ctx.service[pk].astype(np.uint64)
            else:
                src = {"new_peers": self._new_peer, "new_unnamed_peers": self._new_unnamed}.get(feat)
                mask = src[pk] if src is not None and len(src) == len(ctx) else batch.ip_version[pk] > 0
                key = ctx.peer_hi[pk] ^ (ctx.peer_lo[pk] * np.uint64(0x9E3779B97F4A7C15))
            _, first = np.unique(np.where(mask, key, np.uint64(0)), return_index=True)
            firsts = np.zeros(len(pk))
            firsts[first] = 1.0
            firsts[~mask] = 0.0
            run = np.cumsum(firsts)
        else:
            return end
        over = np.flatnonzero(run > limit)
        return float(batch.ts[pk[over[0]]]) if len(over) else end

    def summary(self) -> dict[str, Any]:
        """Limits per device (JSON-ready)."""
        return {
            self.baseline.device_ids[i]: {
                "mature": self.mature[i],
                "limits": dict(zip(WINDOW_FEATURES, m.limits_.tolist(), strict=True)),
            }
            for i, m in enumerate(self.window_models)
        }
