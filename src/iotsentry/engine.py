"""The detection engine: one pass over a packet stream, every device on its own clock.

Both the batch analysis (:class:`~iotsentry.pipeline.Analyzer`) and the always-on monitor
(:class:`~iotsentry.serve.engine.StreamEngine`) run this engine, so a capture analysed as one
file and the same traffic fed as hourly files give the same alerts. Per batch:

1. the batch updates the :class:`~iotsentry.inventory.devices.DeviceTracker` (application fields
   parsed from the frames whose raw bytes the reader kept; names and devices are those known so
   far); new devices are appended to the baseline;
2. batches are re-cut so that no 60-s window is split (the tail window is carried);
3. each packet's conversation direction is tracked (:class:`~iotsentry.features.direction.FlowDirection`)
   and the packet is attributed to a device (:func:`~iotsentry.features.device_context.packet_context`);
4. a device's learning clock starts at its own first packet; its packets before its learning
   end (``learn_seconds`` later, window-aligned) are learned; when the stream passes that end
   the device's learning ends (:meth:`Baseline.finish`, :meth:`ProfileDetector.fit_devices`).
   The stream is cut into segments at clock hours and at the first learning end only: a device
   whose learning ends inside a segment has its earlier packets (and application events)
   counted and learned, is finished, then has its later packets counted and judged -- so a
   large fleet, whose learning ends fall in most minutes, is not cut into minute-long pieces;
5. the packets of devices whose learning ended are scored; findings become alerts through the
   :class:`~iotsentry.alerts.policy.AlertPolicy`; what the devices did that their baselines do
   not hold is recorded for guarded absorption (:class:`~iotsentry.baseline.living.Living`), and
   what an alert was made of is blocked from it;
6. once per clock hour of stream time: what devices added to their groups' knowledge since the
   last hour joins it (across workers too, see :mod:`iotsentry.scale`), absorption of
   persistent, unalerted behaviour, the devices' groups (type, vendor) and name visibility are
   refreshed, and devices silent far longer than they ever were while learning get an
   ``offline`` notice.

At the first learning end (``learn_seconds`` after the first packet) the peer-group check runs
over the devices whose learning has ended.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.identity import device_groups
from iotsentry.baseline.living import Living, alerted_key, items_of_evidence
from iotsentry.baseline.peer_groups import PeerGroups, peer_group_findings, profile_vectors
from iotsentry.baseline.profile import Baseline, DeviceProfile, TokenRows
from iotsentry.baseline.visibility import Visibility
from iotsentry.capture.appfields import extract_app_events
from iotsentry.detectors.profile import Finding, ProfileDetector
from iotsentry.features.app_tokens import token_hash, tokens_of
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, PacketContext, packet_context
from iotsentry.features.direction import FlowDirection
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import PROTO_NAMES, Alert, AppEvent, Device, PacketBatch

__all__ = ["PEER_MIN_WINDOWS", "DetectionEngine", "EngineOutput", "finding_alert", "offline_after"]

PEER_MIN_WINDOWS = 5
"""Devices with fewer learned windows are left out of peer grouping."""
MAX_TOKEN_TEXTS = 100_000
"""Distinct application tokens whose text is kept for explanations (memory bound)."""
OFFLINE_MIN_S = 3600.0
"""A device is called offline after at least this long without a packet ..."""
OFFLINE_GAP_FACTOR = 4.0
"""... and at least this many times the longest pause it made while learning."""
NAMED_SHARE = 0.5
"""Share of its learned remote peers a device must reach by name for a bare IP to be evidence."""
NOVELTY_FEATURES = frozenset({"new_peers", "new_unnamed_peers", "new_services", "new_names", "beacon"})
"""Findings about novelty: an operator's "expected" absorbs their items, not a limit."""
REMOTE_KINDS = frozenset({"network", "service", "bare-service", "high-network", "domain"})
"""What a device whose baseline holds no remote peer is still learning."""
NAME_KINDS = frozenset({"token", "domain"})
"""What a device whose baseline holds no names is still learning."""
LONG_HORIZON = frozenset({"slow_scan", "slow_brute_force", "beacon"})
"""Findings that sum up an hour: everything the device did in that hour is part of them."""

ScoreRows = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]
"""(stream position, device number, score) of processed packets."""
ScoreSink = Callable[[PacketBatch, npt.NDArray[np.int32], npt.NDArray[np.float64]], None]
"""Receives (batch, device number per packet, score per packet) for every processed batch."""


@dataclass
class EngineOutput:
    """What one call of :meth:`DetectionEngine.ingest` / :meth:`DetectionEngine.flush` produced."""

    alerts: list[Alert] = field(default_factory=list)
    packets: int = 0
    """Packets of the input batch (ingested; scored packets may lag by the carried window)."""
    flows: int = 0
    scored: int = 0
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    """Per-packet scores of the packets scored in this call (devices past their learning)."""
    contexts: list[tuple[PacketBatch, PacketContext]] = field(default_factory=list)
    """The scored (batch, context) pairs, for monitors that look at packets (change rate)."""
    learned: bool = False
    """The first learning end passed during this call."""
    finished: list[str] = field(default_factory=list)
    """Devices whose learning ended during this call."""
    absorbed: list[dict[str, Any]] = field(default_factory=list)
    """History records of behaviour absorbed into baselines during this call."""


def offline_after(prof: DeviceProfile) -> float:
    """Seconds without a packet after which a device whose learning ended is called offline:
    ``OFFLINE_GAP_FACTOR`` x the longest pause it made while learning, at least ``OFFLINE_MIN_S``."""
    ts = np.sort(np.asarray(prof.window_ts, dtype=np.float64))
    gap = float(np.diff(ts).max()) if len(ts) > 1 else 0.0
    return max(OFFLINE_MIN_S, OFFLINE_GAP_FACTOR * gap)


def finding_alert(policy: AlertPolicy, detector: ProfileDetector, f: Finding, device_ip: str) -> Alert | None:
    """The alert (through ``policy``, which may fold it into an earlier one) of a profile finding."""
    return policy.make(
        ts=f.ts,
        device_id=f.device_id,
        detector=detector.name,
        detector_version=detector.version,
        score=f.score,
        threshold=f.threshold,
        category=f.category,
        reason=f.reason,
        src_ip=device_ip,
        dest_ip=f.peer_ip,
        dest_port=f.peer_port,
        proto=PROTO_NAMES.get(f.proto, str(f.proto)),
        extra={"feature": f.feature, "values": f.values},
    )


class _TokenBuffer:
    """Application tokens of packets not yet processed, by stream position (bounded by the carry)."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, int, int]] = deque()
        self.text: dict[int, str] = {}

    def add(self, events: list[AppEvent], frame_index: npt.NDArray[np.int64], first_position: int) -> None:
        if not events:
            return
        where = np.searchsorted(frame_index, np.fromiter((e.index for e in events), np.int64, len(events)))
        for ev, at in zip(events, where.tolist(), strict=True):
            for t in tokens_of(ev):
                h = token_hash(t)
                if len(self.text) < MAX_TOKEN_TEXTS:
                    self.text.setdefault(h, t)
                self.items.append((first_position + at, int(ev.src_mac), h))

    def take(self, positions: npt.NDArray[np.int64], index: DeviceIndex) -> TokenRows:
        """Tokens of the packets at ``positions`` (ascending); older entries are dropped."""
        empty: TokenRows = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint64))
        if not len(positions):
            return empty
        lo, hi = int(positions[0]), int(positions[-1]) + 1
        got: list[tuple[int, int, int]] = []
        while self.items and self.items[0][0] < hi:
            item = self.items.popleft()
            if item[0] >= lo:
                got.append(item)
        if not got:
            return empty
        pos = np.array([g[0] for g in got], np.int64)
        mac = np.array([g[1] for g in got], np.uint64)
        h = np.array([g[2] for g in got], np.uint64)
        rows = np.searchsorted(positions, pos)
        ok = (rows < len(positions)) & (positions[np.minimum(rows, len(positions) - 1)] == pos)
        return rows[ok].astype(np.int64), index.of_macs(mac[ok]), h[ok]


def _token_subset(tokens: TokenRows, keep: npt.NDArray[np.bool_]) -> TokenRows:
    rows, dev, h = tokens
    if not len(rows):
        return tokens
    sel = keep[rows]
    return rows[sel], dev[sel], h[sel]


def _masked(ctx: PacketContext, keep: npt.NDArray[np.bool_]) -> PacketContext:
    """The context with packets outside ``keep`` unattributed (device -1)."""
    return PacketContext(
        device=np.where(keep, ctx.device, -1).astype(np.int32),
        outbound=ctx.outbound & keep,
        peer_hi=ctx.peer_hi,
        peer_lo=ctx.peer_lo,
        service=ctx.service,
        proto=ctx.proto,
        initiation=ctx.initiation & keep,
        syn_only=ctx.syn_only & keep,
        window=ctx.window,
        certain=ctx.certain,
    )


class DetectionEngine:
    """Learning per device, then detection and living baselines, over a packet stream.

    Parameters
    ----------
    learn_seconds
        Length of each device's learning period from its own first packet.
    site_id, margin
        As in :class:`~iotsentry.pipeline.AnalysisConfig`.
    policy
        The alert policy (a fresh one by default).
    drift_guard
        Refuse bare-IP peers and scan shapes that ramp up while a baseline learns.
    living
        Absorb persistent, unalerted behaviour after learning (guarded; see
        :mod:`~iotsentry.baseline.living`).
    learn_until
        A deadline (packet time) after which no device learns, whatever its own clock says:
        evaluation protocols that may learn only from traffic before an infection use it.
    """

    def __init__(
        self,
        learn_seconds: float,
        *,
        site_id: str = "default",
        margin: float = 2.0,
        policy: AlertPolicy | None = None,
        drift_guard: bool = False,
        living: bool = True,
        learn_until: float | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if shard is not None and not (0 <= shard[0] < shard[1]):
            raise ValueError(f"shard {shard[0]} of {shard[1]}: expected 0 <= shard < shards")
        if shard is not None and not living:
            raise ValueError("workers need living baselines (their group knowledge is exchanged hourly)")
        self.shard = shard
        """``(k, n)``: this engine learns and detects only the devices whose id hashes to ``k`` of
        ``n`` (:func:`shard_of`); it still follows every packet's time and every device's clock,
        so its segments, ticks and learning ends fall where a single engine's do."""
        self.exchange: (
            Callable[[float, list[npt.NDArray[np.uint64]]], list[npt.NDArray[np.uint64]]] | None
        ) = None
        """With ``shard``: called at the first segment of every clock hour with the group knowledge
        this engine's devices added since the last call; returns what the other workers' devices
        added (see :mod:`iotsentry.scale`)."""
        self.score_rows: (
            list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]] | None
        ) = None
        """When a list: (stream positions, device, score) of every processed packet of this
        engine's devices (and, for shard 0, of packets of no device) are appended to it."""
        self.peer_snapshot: dict[str, Any] | None = None
        """With ``shard``: the peer-group vectors of this engine's devices at the first learning
        end (a driver runs the peer-group check over all workers' vectors)."""
        self.learn_seconds = float(learn_seconds)
        self.learn_until = learn_until
        self.margin = margin
        self.policy = policy or AlertPolicy(site_id=site_id)
        self.tracker = DeviceTracker()
        self.baseline = Baseline([])
        self.baseline.drift_guard = drift_guard
        self.index = DeviceIndex([])
        self._tokens = _TokenBuffer()
        self._events: deque[tuple[int, AppEvent]] = deque()
        """Application events not yet counted for visibility, by stream position."""
        self._ip_of: dict[str, str] = {}
        self._by_id: dict[str, Device] = {}
        self._of_mac: dict[int, int] = {}
        self._inventory: list[Device] = []
        self.app_events = 0
        """Application events parsed (DHCP, DNS, mDNS, SSDP, HTTP, TLS)."""
        self.detector = ProfileDetector(self.baseline, labels=[], margin=margin, token_text=self._tokens.text)
        self.living: Living | None = Living(self.baseline) if living else None
        self.baseline.defer_groups = self.living is not None
        self._group_hour = -math.inf
        self._owned = np.zeros(0, dtype=bool)
        """Per device: learned and judged by this engine (all, without ``shard``)."""
        self._any_learned = False
        if self.living is not None:
            self.detector.alerted = self.living.alerted
        self.visibility = Visibility()
        self.direction = FlowDirection()
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.t_end = math.inf
        """The first learning end: ``learn_seconds`` after the first packet, window-aligned."""
        self.packets = 0
        self._carry: PacketBatch | None = None
        self._carry_pos = np.zeros(0, np.int64)
        self._gateway: str | None = None
        self._known: set[str] = set()
        self._last_seen = np.zeros(0)
        self._offline_after = np.zeros(0)
        self._offline = np.zeros(0, dtype=bool)
        """Per device: an offline notice was raised and no packet came since."""
        self._groups_done = False
        self._named_share = np.zeros(0)
        """Per device: share of its learned remote peers it reached by name (NaN: not yet read)."""
        self._number: dict[str, int] = {}
        """Device id -> device number."""
        self._type_sig: dict[str, tuple[str | None, str | None, bool]] = {}
        self._type_changed: set[str] = set()
        self._young_code = np.zeros(0, np.int8)
        """Per device, at the last tick: what its baseline does not hold at all (see :class:`_YoungKinds`)."""
        """Devices whose type, vendor or gateway role changed since the last hourly refresh."""
        self.score_sink: ScoreSink | None = None
        """Called for every processed batch with per-packet scores (0 while a device learns)."""
        self.baseline_changed = False
        """Devices finished learning or behaviour was absorbed since the flag was last cleared."""

    # -- state -------------------------------------------------------------------------------
    @property
    def learning(self) -> bool:
        """Whether no device's learning has ended yet."""
        return not (self._any_learned or self.baseline.clocks()[2].any())

    @property
    def carried(self) -> int:
        """Packets ingested but not yet processed (the open window)."""
        return len(self._carry) if self._carry is not None else 0

    def devices(self) -> list[Device]:
        """The inventory so far (cumulative counters), with each device's visibility."""
        devs = self.tracker.devices()
        where = {d: i for i, d in enumerate(self.baseline.device_ids)}
        for dev in devs:
            i = where.get(dev.device_id)
            if i is not None and hasattr(dev, "visibility"):
                dev.visibility = self.visibility.of(i)
        return devs

    def labels(self) -> list[str]:
        """Human labels of the baseline's devices, in device-number order."""
        return list(self._labels())

    def _labels(self) -> list[str]:
        """The detector's label list (shared, kept current by :meth:`_sync_devices`), one per
        device: the inventory's label, the device id for a device it has not listed."""
        lab = self.detector.labels
        ids = self.baseline.device_ids
        by_id = self._by_id
        while len(lab) < len(ids):
            d = ids[len(lab)]
            dev = by_id.get(d)
            lab.append(dev.label if dev is not None else d)
        return lab

    def _sync_devices(self) -> None:
        """Take the inventory's changes since the last batch (only the devices that joined or
        changed address, name, type or gateway role: no walk over the fleet)."""
        devices = self.tracker.devices()
        self._inventory = devices  # as of the last batch taken: segments of it share it
        changed = self.tracker.take_changed()
        self._grow()  # device numbers of a restored baseline
        by_id, ip_of, sig, num = self._by_id, self._ip_of, self._type_sig, self._number
        lab = self._labels()
        new: list[str] = []
        for d in changed:
            did = d.device_id
            by_id[did] = d
            if d.ips:
                ip_of[did] = d.ips[0]
            else:
                ip_of.pop(did, None)
            t = (d.device_type, d.vendor, d.is_gateway)
            if sig.get(did) != t:
                sig[did] = t
                self._type_changed.add(did)
            i = num.get(did)
            if i is not None:
                if i < len(lab):
                    lab[i] = d.label
            elif did not in self._known:
                new.append(did)
        gw = devices[0].device_id if devices and devices[0].is_gateway else None
        if not new and gw == self._gateway:
            return
        for dev_id in new:
            self.baseline.add_device(dev_id)
            self._known.add(dev_id)
        self._grow()
        self._labels()
        self._gateway = gw
        self.index = DeviceIndex(list(self.baseline.device_ids), gw)
        macs, numbers = self.index._macs.tolist(), self.index._mac_idx.tolist()
        self._grow()
        owned = self._owned
        self._of_mac = {int(m): int(i) for m, i in zip(macs, numbers, strict=True) if owned[i]}

    def _grow(self) -> None:
        """Per-device arrays sized to the baseline's devices."""
        n = len(self.baseline.device_ids)
        k = n - len(self._last_seen)
        if k > 0:
            self._last_seen = np.append(self._last_seen, np.full(k, -np.inf))
            self._offline_after = np.append(self._offline_after, np.full(k, np.inf))
        if n > len(self._offline):
            self._offline = np.append(self._offline, np.zeros(n - len(self._offline), dtype=bool))
        if n > len(self._named_share):
            self._named_share = np.append(self._named_share, np.full(n - len(self._named_share), np.nan))
        for i in range(len(self._number), n):
            self._number[self.baseline.device_ids[i]] = i
        if n > len(self._owned):
            new = self.baseline.device_ids[len(self._owned) : n]
            mine = (
                [True] * len(new)
                if self.shard is None
                else [shard_of(d, self.shard[1]) == self.shard[0] for d in new]
            )
            self._owned = np.append(self._owned, np.array(mine, dtype=bool))

    # -- input -------------------------------------------------------------------------------
    def ingest(self, batch: PacketBatch, events: list[AppEvent] | None = None) -> EngineOutput:
        """Take one batch; returns the alerts it raised and the scores of the packets scored.
        ``events``: the batch's application events when already parsed (else parsed here from
        the frames whose raw bytes the batch carries)."""
        out = EngineOutput(packets=len(batch))
        if not len(batch):
            return out
        if events is None:
            events = extract_app_events(batch) if batch.raw is not None else []
        self.app_events += len(events)
        self.tracker.update(batch, events)
        positions = self.packets + np.arange(len(batch), dtype=np.int64)
        self._tokens.add(events, batch.index, self.packets)
        self.packets += len(batch)
        if not math.isfinite(self.first_ts):
            self.first_ts = float(batch.ts.min())
            end = self.first_ts + max(0.0, self.learn_seconds)
            if self.learn_until is not None:
                end = min(end, self.learn_until)
            self.t_end = math.floor(end / WINDOW_S) * WINDOW_S
        self.last_ts = max(self.last_ts, float(batch.ts.max()))
        self._sync_devices()
        if events:
            where = np.searchsorted(
                batch.index, np.fromiter((e.index for e in events), np.int64, len(events))
            )
            self._events.extend(zip((positions[0] + where).tolist(), events, strict=True))
        head, head_pos = self._align(batch, positions)
        if head is not None:
            self._process(head, head_pos, out)
        return out

    def flush(self) -> EngineOutput:
        """Process the carried window (at shutdown: no later packet will close it)."""
        out = EngineOutput()
        if self._carry is not None and len(self._carry):
            b, pos = self._carry, self._carry_pos
            self._carry, self._carry_pos = None, np.zeros(0, np.int64)
            self._process(b, pos, out)
        return out

    def _align(
        self, batch: PacketBatch, positions: npt.NDArray[np.int64]
    ) -> tuple[PacketBatch | None, npt.NDArray[np.int64]]:
        """Carry + batch, cut before the last window (as ``pipeline.window_aligned``)."""
        if self._carry is not None and len(self._carry):
            b = PacketBatch.concat([self._carry, batch])
            pos = np.concatenate([self._carry_pos, positions])
        else:
            b, pos = batch, positions
        w = np.floor(b.ts / WINDOW_S)
        cut = int(np.searchsorted(w, w[-1], side="left")) if np.all(np.diff(w) >= 0) else len(b)
        if cut == 0:
            self._carry, self._carry_pos = b, pos
            return None, pos[:0]
        if cut < len(b):
            self._carry, self._carry_pos = b.rows(cut, len(b)), pos[cut:]
            return b.rows(0, cut), pos[:cut]
        self._carry, self._carry_pos = None, np.zeros(0, np.int64)
        return b, pos

    # -- one aligned batch ------------------------------------------------------------------------
    def _process(self, b: PacketBatch, pos: npt.NDArray[np.int64], out: EngineOutput) -> None:
        """One window-aligned batch, cut at every learning end and clock hour inside it, so that
        what happens at those times does not depend on how the stream was cut into batches."""
        ctx = packet_context(b, self.index, direction=self.direction.update(b))
        self._start_clocks(b, ctx)
        cuts = self._cuts(float(b.ts[0]), float(b.ts[-1]))
        at = np.searchsorted(b.ts, np.array(cuts), side="left").tolist() if cuts else []
        start = 0
        for stop in [*at, len(b)]:
            if stop > start:
                whole = start == 0 and stop == len(b)
                sb = b if whole else b.rows(start, stop)
                sctx = ctx if whole else _rows(ctx, start, stop)
                now, last = float(sb.ts[0]), float(sb.ts[-1])
                if self.shard is not None:  # this worker's devices (shard 0: also no device)
                    dv = sctx.device
                    keep = np.flatnonzero(
                        self._owned[np.maximum(dv, 0)] & (dv >= 0) | ((dv < 0) & (self.shard[0] == 0))
                    )
                    sb, sctx = sb.take(keep), _take(sctx, keep)
                    self._segment(sb, sctx, pos[start:stop][keep], out, now, last)
                else:
                    self._segment(sb, sctx, pos[start:stop], out, now, last)
            start = stop

    def _cuts(self, t0: float, t1: float) -> list[float]:
        """Times in ``(t0, t1]`` where the whole engine's state changes: the first learning end
        (peer groups), clock hours (group knowledge, ticks). A single device's learning end is
        handled inside a segment (:meth:`_segment`)."""
        cuts: set[float] = set()
        if t0 < self.t_end <= t1:
            cuts.add(self.t_end)
        if self.living is not None:
            h = math.floor(t0 / 3600.0) * 3600.0 + 3600.0
            while h <= t1:
                cuts.add(h)
                h += 3600.0
        return sorted(cuts)

    def _segment(
        self,
        b: PacketBatch,
        ctx: PacketContext,
        pos: npt.NDArray[np.int64],
        out: EngineOutput,
        now: float,
        last: float,
    ) -> None:
        """Packets between two state changes (the whole stream's from ``now`` to ``last``; with
        ``shard`` only this worker's, possibly none): finish due devices, share group knowledge,
        tick, learn, detect."""
        mark = len(self.baseline.group_pending)
        self._finish(now, out)
        if math.floor(now / 3600.0) > self._group_hour:
            self._share_groups(now, mark)
        if self.living is not None and self.living.due(now) and not self.learning:
            self._tick(math.floor(now / 3600.0) * 3600.0, out)
        if not len(b):
            return
        names, name_ts = self.tracker.ip_names, self.tracker.ip_name_ts
        n = len(self.baseline.device_ids)
        dev = np.maximum(ctx.device, 0)
        # devices whose learning ends inside this segment: their packets before the end are
        # learned, the device is finished, the packets after it are judged (the segment is not
        # cut at every device's learning end: in a large fleet those are most minutes)
        _, ends, active = self.baseline.clocks()
        mid_dev = np.flatnonzero(~active & (ends > now) & (ends <= last) & self._owned[: len(ends)])
        events = self._take_events(pos)
        if len(mid_dev):
            is_mid = np.zeros(len(ends), dtype=bool)
            is_mid[mid_dev] = True
            post = (ctx.device >= 0) & is_mid[dev] & (b.ts >= ends[dev])
            pre_rows, post_rows = np.flatnonzero(~post), np.flatnonzero(post)
            self.visibility.update_packets(b.take(pre_rows), _take(ctx, pre_rows), n)
            early, late = self._split_events(events, is_mid, ends)
            self.visibility.update_events(early, self._of_mac, n)
        else:
            self.visibility.update_packets(b, ctx, n)
            self.visibility.update_events(events, self._of_mac, n)
        rows = self._tokens.take(pos, self.index)
        learn = self.baseline.learning_mask(ctx.device, b.ts)
        if learn.any():
            self.baseline.learn(
                b,
                _masked(ctx, learn),
                names,
                _token_subset(rows, learn),
                token_text=self._tokens.text,
                name_ts=name_ts,
            )
        if len(mid_dev):
            self._finish_devices(mid_dev.tolist(), out)
            self._any_learned = True
            self.visibility.update_packets(b.take(post_rows), _take(ctx, post_rows), n)
            self.visibility.update_events(late, self._of_mac, n)
        active = self.baseline.clocks()[2]
        detect = (ctx.device >= 0) & active[dev] if len(active) else np.zeros(len(b), dtype=bool)
        if len(mid_dev):
            detect &= ~(is_mid[dev] & ~post)  # learned, not judged
        scores = np.zeros(len(b))
        if detect.any():
            dctx = _masked(ctx, detect)
            scores = self._detect(b, dctx, _token_subset(rows, detect), out, last)
            out.scored += int(detect.sum())
            out.scores = np.concatenate([out.scores, scores[detect]])
            out.contexts.append((b, dctx))
        if self.score_sink is not None:
            self.score_sink(b, ctx.device, scores)
        if self.score_rows is not None:
            self.score_rows.append((pos, ctx.device, scores))
        seen = ctx.device >= 0
        if seen.any():
            np.maximum.at(self._last_seen, ctx.device[seen], b.ts[seen])
            self._offline[ctx.device[seen]] = False

    def _take_events(self, pos: npt.NDArray[np.int64]) -> list[AppEvent]:
        """The application events of the packets up to the last of ``pos`` (for visibility)."""
        if not self._events or not len(pos):
            return []
        hi = int(pos[-1]) + 1
        got = []
        while self._events and self._events[0][0] < hi:
            got.append(self._events.popleft()[1])
        return got

    def _split_events(
        self, events: list[AppEvent], is_mid: npt.NDArray[np.bool_], ends: npt.NDArray[np.float64]
    ) -> tuple[list[AppEvent], list[AppEvent]]:
        """Events counted before / after the learning end of the device they count for (a DNS
        response counts for its receiver, anything else for its sender)."""
        early: list[AppEvent] = []
        late: list[AppEvent] = []
        of_mac = self._of_mac
        for ev in events:
            response = ev.kind == "dns" and bool(ev.fields.get("is_response"))
            i = of_mac.get(int(ev.dst_mac if response else ev.src_mac), -1)
            (late if i >= 0 and is_mid[i] and ev.ts >= ends[i] else early).append(ev)
        return early, late

    def _start_clocks(self, b: PacketBatch, ctx: PacketContext) -> None:
        dv = ctx.device
        started = np.isfinite(self.baseline.clocks()[0])
        fresh = (dv >= 0) & ~(started[np.maximum(dv, 0)] if len(started) else True)
        if not fresh.any():
            return
        d = dv[fresh]
        t = b.ts[fresh]
        devs, inv = np.unique(d, return_inverse=True)
        first = np.full(len(devs), np.inf)
        np.minimum.at(first, inv.ravel(), t)
        for i, t0 in zip(devs.tolist(), first.tolist(), strict=True):
            self.baseline.start_clock(int(i), t0, self.learn_seconds, self.learn_until)

    def _finish(self, now: float, out: EngineOutput) -> None:
        """End the learning of the devices whose period is over at ``now`` (stream time)."""
        self._grow()
        _, ends, active = self.baseline.clocks()
        due: list[int] = np.flatnonzero(~active & (ends <= now) & self._owned[: len(ends)]).tolist()
        if not self._any_learned and len(ends) and bool((ends <= now).any()):
            self._any_learned = True  # some device's learning ended (here or on another worker)
        self._finish_devices(due, out)
        if not self._groups_done and now >= self.t_end and not self.learning:
            self._groups_done = True
            out.learned = True
            if self.shard is None:
                out.alerts += self._peer_groups()
            else:
                ids, X = profile_vectors(
                    self.baseline, min_windows=PEER_MIN_WINDOWS, devices=self._peer_devices()
                )
                num, labels = self._number, self.labels()
                self.peer_snapshot = {
                    "ids": ids,
                    "vectors": X,
                    "numbers": [num[d] for d in ids],
                    "labels": {d: labels[num[d]] for d in ids},
                    "last_ts": {d: self.baseline.profiles[num[d]].last_ts for d in ids},
                }

    def _finish_devices(self, due: list[int], out: EngineOutput) -> None:
        """End the learning of these devices: groups, offline pause, baseline, name evidence,
        limits."""
        if not due:
            return
        by_id = self._by_id
        for i in due:
            dev = by_id.get(self.baseline.device_ids[i])
            if dev is not None:
                self.baseline.set_groups(i, device_groups(dev.device_type, dev.vendor, dev.is_gateway))
            self._offline_after[i] = offline_after(self.baseline.profiles[i])
        self.baseline.finish(due)
        self._grow()
        self._refresh_names_evidence(np.array(due, dtype=np.int64))
        self.detector.fit_devices(due)  # learning-end findings are raised with the next findings
        out.finished += [self.baseline.device_ids[i] for i in due]
        self.baseline_changed = True

    def _peer_devices(self) -> list[str]:
        """Devices of the peer-group check: learning ended by the first learning end."""
        return [
            p.device_id
            for i, p in enumerate(self.baseline.profiles)
            if p.active and p.learn_end <= self.t_end and self._owned[i]
        ]

    def _share_groups(self, now: float, mark: int) -> None:
        """At the first segment of a clock hour: what devices added to their groups' knowledge
        before this segment joins it (also from the other workers' devices, with ``shard``)."""
        self._group_hour = math.floor(now / 3600.0)
        pending = self.baseline.group_pending
        others: list[npt.NDArray[np.uint64]] = []
        if self.exchange is not None:
            others = self.exchange(now, pending[:mark])
        self.baseline.apply_group_pending(mark, others)

    def _detect(
        self, b: PacketBatch, ctx: PacketContext, rows: TokenRows, out: EngineOutput, last: float
    ) -> npt.NDArray[np.float64]:
        det = self.detector
        names = self.tracker.ip_names
        scores, table, wscores = det.evaluate(b, ctx, names, rows, self.tracker.ip_name_ts)
        found = det.findings(b, ctx, table, wscores) + det.schedule_findings(b, ctx, names, -math.inf, last)
        found.sort(key=lambda f: f.ts)  # the earliest crossing names the alert a repeat folds into
        if self.living is not None and det.identity is not None:
            self.living.observe_batch(b, ctx, det.identity, names, det._new_token, self._tokens.text)
        ip_of = self._ip_of
        for f in found:
            if self.living is not None and f.category not in ("silence", "baseline-drift"):
                span = 3600.0 if f.feature in LONG_HORIZON else 0.0
                w0 = math.floor(f.ts / WINDOW_S) * WINDOW_S
                svc = f"{PROTO_NAMES.get(f.proto, str(f.proto))}/{f.peer_port}" if f.peer_port else ""
                self.living.block(f.device, w0 - span, w0 + WINDOW_S - 1e-6, f.category, f.peer_ip, svc)
            a = finding_alert(self.policy, det, f, ip_of.get(f.device_id, ""))
            if a is not None:
                out.alerts.append(a)
        return scores

    def _refresh_names_evidence(self, devices: npt.NDArray[np.int64]) -> None:
        """Whether a bare-IP peer is evidence for each of ``devices``: its DNS answers are
        observable and its baseline reaches most of its remote peers through names (the share is
        read once, at its learning end: its learned peers do not change after it)."""
        if not len(devices):
            return
        todo = devices[np.isnan(self._named_share[devices])]
        for i in todo.tolist():
            self._named_share[i] = self.baseline.profiles[i].named_share()
        observed = self.visibility.names_evidence_of(devices)
        self.baseline.names_evidence[devices] = observed & (self._named_share[devices] >= NAMED_SHARE)

    def _tick(self, now: float, out: EngineOutput) -> None:
        """Hourly work: absorption, groups and visibility refresh, offline notices."""
        assert self.living is not None
        self._grow()
        active = self.baseline.clocks()[2]
        if self._type_changed:
            by_id = self._by_id
            for dev_id in sorted(self._type_changed, key=lambda x: self._number.get(x, -1)):
                i = self._number.get(dev_id)
                dev = by_id.get(dev_id)
                if i is None or dev is None or not active[i]:
                    continue
                groups = device_groups(dev.device_type, dev.vendor, dev.is_gateway)
                if groups != self.baseline.profiles[i].groups:
                    self.baseline.set_groups(i, groups)
            self._type_changed.clear()
        self._refresh_names_evidence(np.flatnonzero(active))
        det = self.detector
        n = len(active)
        code = np.zeros(n, np.int8)
        m = min(n, len(det.remote_known))
        code[:m] = (active[:m] & ~det.remote_known[:m]) + 2 * (active[:m] & ~det.names_known[:m])
        prev = np.zeros(n, np.int8)
        prev[: len(self._young_code)] = self._young_code[:n]
        changed = np.flatnonzero(code != prev).tolist()
        self._young_code = code
        recs = self.living.tick(now, _YoungKinds(code), young_changed=changed)
        if recs:
            out.absorbed += recs
            self.baseline_changed = True
            self.detector.refresh_knowledge(sorted({self._number[r["device_id"]] for r in recs}))
        out.alerts += self._offline_notices(now)

    # -- operator feedback ---------------------------------------------------------------------
    def apply_feedback(
        self,
        action: str,
        device_id: str,
        scope: str,
        evidence: Mapping[str, Any],
        *,
        who: str,
        ts: float,
        reason: str,
        undo: Sequence[Mapping[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Apply an operator's verdict on an incident to the living baselines.

        ``absorb`` (the incident was marked expected): the networks, services and names its
        evidence shows are absorbed into the device's baseline -- or into every device sharing
        one of its groups when ``scope`` is ``group`` -- and the limits its shape / volume
        findings crossed are raised to ``margin`` x what was seen. ``revert``: the history records
        ``undo`` (what an earlier ``absorb`` returned) are taken back. Returns the history
        records (kept in the devices' profiles; the caller audits them).

        Raises
        ------
        ValueError
            An unknown action or scope, or a device the engine does not know.
        """
        if action not in ("absorb", "revert") or scope not in ("device", "group"):
            raise ValueError(f"feedback: unknown action {action!r} or scope {scope!r}")
        ids = {d: i for i, d in enumerate(self.baseline.device_ids)}
        if device_id not in ids:
            raise ValueError(f"feedback: device {device_id} is not in the baseline")
        living = self.living if self.living is not None else Living(self.baseline)
        if action == "revert":
            recs = living.revert([dict(r) for r in undo if r.get("kind") != "limit"], ts, who, reason)
            for r in undo:
                if r.get("kind") == "limit" and str(r.get("device_id")) in ids:
                    i = ids[str(r["device_id"])]
                    feat = str(r["item"]).split("=")[0]
                    self.baseline.profiles[i].limit_overrides.pop(feat, None)
                    if self.baseline.profiles[i].active:
                        self.detector.fit_devices([i])  # back to the learned limits
                    recs.append(
                        living.record(
                            i, ts, "limit", str(r["item"]), feat, "operator", f"{who}: {reason}", "revert"
                        )
                    )
            self.baseline_changed = True
            self.detector.refresh_knowledge()
            return recs
        d = ids[device_id]
        devices = [d]
        if scope == "group":
            groups = set(self.baseline.profiles[d].groups)
            devices += [i for i, p in enumerate(self.baseline.profiles) if i != d and groups & set(p.groups)]
        samples = [dict(x) for x in evidence.get("evidence", [])]
        items = items_of_evidence(samples, [str(c) for c in evidence.get("categories", [])])
        recs = living.expected(devices, items, ts, who, reason)
        for i in devices:
            if not self.baseline.profiles[i].active:
                continue
            for smp in samples:
                feat = str(smp.get("feature") or "")
                if feat in NOVELTY_FEATURES or smp.get("score") is None:
                    continue
                limit = self.detector.limit_of(i, feat)
                if limit is None:
                    continue
                seen = float(smp["score"]) * limit
                new = self.margin * seen
                prof = self.baseline.profiles[i]
                if new > prof.limit_overrides.get(feat, 0.0) and new > limit:
                    prof.limit_overrides[feat] = new
                    recs.append(
                        living.record(i, ts, "limit", f"{feat}={new:g}", feat, "operator", f"{who}: {reason}")
                    )
            self.detector.apply_overrides(i)
        living.alerted.discard(
            k
            for r in recs
            if (k := alerted_key(ids[r["device_id"]], str(r["kind"]), str(r["item"]))) is not None
        )
        self.detector.refresh_knowledge(devices)
        self.baseline_changed = True
        return recs

    def _offline_notices(self, now: float) -> list[Alert]:
        out: list[Alert] = []
        active = self.baseline.clocks()[2]
        n = min(len(active), len(self._last_seen))
        last_all = self._last_seen[:n]
        silent = np.isfinite(last_all) & (now - last_all > self._offline_after[:n])
        due = active[:n] & ~self._offline[:n] & silent
        for i in np.flatnonzero(due).tolist():
            p = self.baseline.profiles[i]
            last = float(self._last_seen[i])
            self._offline[i] = True
            label = self.detector.labels[i] if i < len(self.detector.labels) else p.device_id
            a = self.policy.make(
                ts=now,
                device_id=p.device_id,
                detector="monitor",
                detector_version="1",
                score=(now - last) / self._offline_after[i],
                threshold=1.0,
                category="offline",
                reason=(
                    f"{label} sent nothing for {(now - last) / 3600.0:.1f} h (last packet at "
                    f"{_utc(last)}); while learning it never paused longer than "
                    f"{self._offline_after[i] / OFFLINE_GAP_FACTOR / 60.0:.0f} min"
                ),
            )
            if a is not None:
                out.append(a)
        return out

    def _peer_groups(self) -> list[Alert]:
        """The peer-group check over the devices whose learning has ended."""
        baseline = self.baseline
        labels = self.labels()
        label_of = dict(zip(baseline.device_ids, labels, strict=False))
        active = self._peer_devices()
        found = peer_group_findings(
            baseline, label_of, min_windows=PEER_MIN_WINDOWS, groups=PeerGroups(), devices=active
        )
        last_ts = {
            str(f["device_id"]): baseline.profiles[self._number[f["device_id"]]].last_ts for f in found
        }
        return peer_outlier_alerts(self.policy, found, last_ts)

    # -- results -----------------------------------------------------------------------------
    def owned_ids(self) -> set[str]:
        """Ids of the devices this engine learns and judges (all, without ``shard``)."""
        self._grow()
        return {d for d, mine in zip(self.baseline.device_ids, self._owned.tolist(), strict=True) if mine}

    def peer_vectors(self, min_windows: int = PEER_MIN_WINDOWS) -> tuple[list[str], npt.NDArray[np.float64]]:
        """Peer-group profile vectors of this engine's devices whose learning ended."""
        self._grow()
        active = self.baseline.clocks()[2]
        ids = [d for i, d in enumerate(self.baseline.device_ids) if active[i] and self._owned[i]]
        return profile_vectors(self.baseline, min_windows=min_windows, devices=ids)

    def baselines(self) -> BaselineSummaries:
        """The profiles of devices whose learning ended, JSON-ready (limits, maturity, schedules),
        each made when it is read (see :class:`BaselineSummaries`)."""
        det = self.detector
        ids = {
            prof.device_id: i
            for i, prof in enumerate(self.baseline.profiles)
            if prof.active and i < len(det.window_models)
        }
        return BaselineSummaries(ids, self.summary)

    def summary(self, i: int) -> dict[str, Any]:
        """Device ``i``'s profile, JSON-ready, with its limits, maturity, schedules, visibility."""
        det = self.detector
        s = self.baseline.profiles[i].summary()
        s["limits"] = dict(zip(_features(), det.window_models[i].limits_.tolist(), strict=True))
        s["mature"] = det.mature[i]
        s["schedules"] = [
            {"peer": x.peer, "service": x.service, "period_s": round(x.period_s, 1), "count": x.count}
            for x in self.baseline.periodicity.device_schedules(i)
        ]
        s["visibility"] = self.visibility.of(i)
        return s


class BaselineSummaries(Mapping[str, dict[str, Any]]):
    """Device id -> JSON-ready profile of the devices whose learning had ended when it was made,
    each summary built when read and not kept: a fleet of 100 k devices never holds 100 k
    summaries at once (about 6 kB each), and a caller that needs a few reads only those."""

    def __init__(self, ids: dict[str, int], make: Callable[[int], dict[str, Any]]) -> None:
        self._ids = ids
        self._make = make

    def __getitem__(self, device_id: str) -> dict[str, Any]:
        return self._make(self._ids[device_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class _YoungKinds(Mapping[int, frozenset[str]]):
    """Device -> kinds of behaviour its baseline does not hold at all (so it still learns them),
    read from a per-device code: 1 no remote peers, 2 no names, 3 neither."""

    _KINDS: tuple[frozenset[str], ...] = (frozenset(), REMOTE_KINDS, NAME_KINDS, REMOTE_KINDS | NAME_KINDS)

    def __init__(self, code: npt.NDArray[np.int8]) -> None:
        self._code = code

    def __getitem__(self, d: int) -> frozenset[str]:
        if 0 <= d < len(self._code) and self._code[d]:
            return self._KINDS[int(self._code[d])]
        raise KeyError(d)

    def __iter__(self) -> Iterator[int]:
        return iter(np.flatnonzero(self._code).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._code))


def peer_outlier_alerts(
    policy: AlertPolicy, findings: Sequence[Mapping[str, Any]], last_ts: Mapping[str, float]
) -> list[Alert]:
    """Alerts of peer-group findings, each at its device's latest packet time."""
    out: list[Alert] = []
    for f in findings:
        dev = str(f["device_id"])
        a = policy.make(
            ts=last_ts[dev],
            device_id=dev,
            detector="peer-groups",
            detector_version="1",
            score=float(f["score"]),
            threshold=float(f["threshold"]),
            category="peer-outlier",
            reason=str(f["reason"]),
        )
        if a is not None:
            out.append(a)
    return out


def shard_of(device_id: str, shards: int) -> int:
    """The worker (of ``shards``) that learns and judges a device: a stable hash of its id."""
    return zlib.crc32(device_id.encode()) % shards


def _take(ctx: PacketContext, rows: npt.NDArray[np.int64]) -> PacketContext:
    """Rows ``rows`` of a context (copies)."""
    return PacketContext(
        device=ctx.device[rows],
        outbound=ctx.outbound[rows],
        peer_hi=ctx.peer_hi[rows],
        peer_lo=ctx.peer_lo[rows],
        service=ctx.service[rows],
        proto=ctx.proto[rows],
        initiation=ctx.initiation[rows],
        syn_only=ctx.syn_only[rows],
        window=ctx.window[rows],
        certain=ctx.certain[rows] if ctx.certain is not None else None,
    )


def _rows(ctx: PacketContext, start: int, stop: int) -> PacketContext:
    """Rows ``start:stop`` of a context (views)."""
    return PacketContext(
        device=ctx.device[start:stop],
        outbound=ctx.outbound[start:stop],
        peer_hi=ctx.peer_hi[start:stop],
        peer_lo=ctx.peer_lo[start:stop],
        service=ctx.service[start:stop],
        proto=ctx.proto[start:stop],
        initiation=ctx.initiation[start:stop],
        syn_only=ctx.syn_only[start:stop],
        window=ctx.window[start:stop],
        certain=ctx.certain[start:stop] if ctx.certain is not None else None,
    )


def _features() -> tuple[str, ...]:
    from iotsentry.features.windows import WINDOW_FEATURES

    return WINDOW_FEATURES


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
