"""Wires the stages for a batch run over capture files.

One streaming read of the input, bounded in memory by the batch size, devices and windows:
the packets go through the :class:`~iotsentry.engine.DetectionEngine` -- the same engine the
always-on monitor runs -- which builds the inventory (application fields DHCP, DNS, mDNS, SSDP,
HTTP and TLS parsed from the few packets that carry them), lets every device learn on its own
clock, then scores and alerts, with living baselines; per-device timelines are kept.

Two cases need more than that one read:

* a learning period given as a fraction of the capture (``learn_seconds=None``, the default)
  needs the capture's time span first: a walk over the record headers only (timestamps, no
  protocol decode: ~0.1 s per million packets) comes before the read;
* input that is not in time order (merged captures) is found so while it streams; the analysis
  then starts again on the input sorted in memory, with a warning.

:meth:`Analyzer.inventory` (the ``devices`` command) is a pass of its own: the inventory alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.incidents import Incident, IncidentBook
from iotsentry.baseline.peer_groups import PeerGroups
from iotsentry.baseline.profile import Baseline, TokenRows
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.decode import RawSpec
from iotsentry.capture.reader import read_packets, read_timestamps
from iotsentry.engine import PEER_MIN_WINDOWS, DetectionEngine, finding_alert
from iotsentry.errors import IotSentryError
from iotsentry.features.app_tokens import TokenLog
from iotsentry.features.device_context import WINDOW_S, DeviceIndex
from iotsentry.features.flowmeter import FlowMeter
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import Alert, Device, PacketBatch

if TYPE_CHECKING:
    from iotsentry.scale import ShardedEngine

__all__ = [
    "PEER_MIN_WINDOWS",
    "AnalysisConfig",
    "AnalysisResult",
    "Analyzer",
    "finding_alert",
    "iter_batches",
    "window_aligned",
]


Progress = Callable[[str, int], None]
"""Called with (phase, packets done so far)."""

ScoreSink = Callable[[PacketBatch, npt.NDArray[np.int32], npt.NDArray[np.float64]], None]
"""Receives (batch, device number per packet, score per packet) during detection."""


@dataclass
class AnalysisConfig:
    """Knobs of a run. ``learn_seconds=None`` learns from the first half of the capture."""

    learn_seconds: float | None = None
    learn_fraction: float = 0.5
    batch_size: int = 250_000
    """Packets per batch: 250 k was faster and used less memory than 1 M (docs/results.md, P1)."""
    site_id: str = "default"
    margin: float = 2.0
    type_model: Path | None = None
    """A device-type model (``iotsentry train --types``); without it types are rule-based guesses."""
    drift_guard: bool = False
    """Refuse bare-IP peers and scan shapes that ramp up while the baseline learns (boiling-frog
    defence, :mod:`~iotsentry.baseline.ramp_guard`); off by default: real devices that are set up
    during learning grow too (docs/results.md Q6)."""
    living: bool = True
    """Absorb persistent, unalerted behaviour after learning (:mod:`~iotsentry.baseline.living`)."""
    workers: int = 1
    """Ray workers the devices are spread over (:mod:`iotsentry.scale`); 1: this process only."""
    ray_address: str | None = None
    """A Ray cluster to join (``auto``, ``host:6379``); default a private one on this machine."""
    global_deadline: bool = False
    """No device learns past the first learning end (``learn_seconds`` after the capture's first
    packet), whatever its own clock: the protocol of infection-replay evaluations and of
    ``iotsentry score`` (learn only from the first S seconds of traffic)."""


@dataclass
class AnalysisResult:
    """What a run produced."""

    devices: list[Device]
    alerts: list[Alert]
    baselines: Mapping[str, dict[str, Any]]
    """Device id -> JSON-ready profile (from one engine: each built when read; see
    :class:`~iotsentry.engine.BaselineSummaries`)."""
    timelines: dict[str, dict[str, list[float]]]
    stats: dict[str, Any] = field(default_factory=dict)
    peer_groups: list[dict[str, Any]] = field(default_factory=list)
    absorbed: list[dict[str, Any]] = field(default_factory=list)
    """What the living baselines absorbed after learning (history records)."""
    incidents: list[Incident] = field(default_factory=list)
    """The alerts folded into incidents (each alert's ``incident_id`` is set)."""
    to_sinks: list[Alert] = field(default_factory=list)
    """What sinks get: the alerts that opened or escalated an incident, and the notices."""


def iter_batches(
    paths: Sequence[str | Path], batch_size: int, with_raw: RawSpec = False
) -> Iterator[PacketBatch]:
    """Packets of several captures, one after the other."""
    for p in paths:
        yield from read_packets(p, batch_size=batch_size, with_raw=with_raw)


def window_aligned(batches: Iterator[PacketBatch], window_s: float = WINDOW_S) -> Iterator[PacketBatch]:
    """Re-cut batches so that no time window is split across two of them."""
    carry: PacketBatch | None = None
    for b in batches:
        if carry is not None and len(carry):
            b = PacketBatch.concat([carry, b])
        if not len(b):
            continue
        w = np.floor(b.ts / window_s)
        last = w[-1]
        cut = int(np.searchsorted(w, last, side="left")) if np.all(np.diff(w) >= 0) else len(b)
        if cut == 0:
            carry = b
            continue
        yield b.take(np.arange(cut)) if cut < len(b) else b
        carry = b.take(np.arange(cut, len(b))) if cut < len(b) else None
    if carry is not None and len(carry):
        yield carry


def _split_at(b: PacketBatch, t: float) -> tuple[PacketBatch, PacketBatch]:
    before = b.ts < t
    if before.all():
        return b, PacketBatch.empty()
    if not before.any():
        return PacketBatch.empty(), b
    return b.take(before), b.take(~before)


class Analyzer:
    """Runs the two passes over a set of captures (see module docstring)."""

    def __init__(self, paths: Sequence[str | Path], config: AnalysisConfig | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.config = config or AnalysisConfig()
        self.tracker = DeviceTracker()
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.packets = 0
        self.app_events = 0
        self.devices: list[Device] = []
        self.baseline: Baseline | None = None
        """The baselines of the last :meth:`run` (devices still learning at the end of the input
        are not finished)."""
        self.engine: DetectionEngine | None = None
        """The engine of the last :meth:`run`."""
        self.tokens = TokenLog()
        self._type_model: Any = None
        self._sharded: ShardedEngine | None = None
        self._time_sorted = True
        """Whether every packet came no earlier than the one before (merged captures may not)."""

    # -- pass 1 -------------------------------------------------------------------------------
    def inventory(self, progress: Progress | None = None) -> list[Device]:
        """Build the device inventory (pass 1)."""
        # raw bytes only of the few packets whose application fields are parsed
        for b in iter_batches(self.paths, self.config.batch_size, with_raw=keep_raw_for_app_fields):
            events = extract_app_events(b)
            self.app_events += len(events)
            self.tracker.update(b, events)
            if events:
                self.tokens.add(events, b.index, self.packets)
            self._note_times(b)
            if progress:
                progress("inventory", self.packets)
        return self._typed(self.tracker.devices())

    def _typed(self, devices: list[Device]) -> list[Device]:
        """Replace the rule-based type guesses by the learned classifier's, when one is given.

        The fingerprint is the device's setup-like traffic: the first batch of the first input.
        """
        if self.config.type_model is None or not self.paths or not devices:
            return devices
        from iotsentry.inventory.type_classifier import DeviceTypeClassifier, classify_devices

        if self._type_model is None:
            self._type_model = DeviceTypeClassifier.load(self.config.type_model)
        first = next(read_packets(self.paths[0], batch_size=self.config.batch_size, with_raw=True), None)
        if first is not None:
            classify_devices([d for d in devices if not d.is_gateway], first, self._type_model)
        return devices

    def learn_end(self) -> float:
        """End of the learning period, aligned down to a window boundary."""
        if not math.isfinite(self.first_ts):
            return 0.0
        cfg = self.config
        span = self.last_ts - self.first_ts
        secs = cfg.learn_seconds if cfg.learn_seconds is not None else span * cfg.learn_fraction
        end = self.first_ts + max(0.0, secs)
        return math.floor(end / WINDOW_S) * WINDOW_S

    def _token_rows(self, positions: npt.NDArray[np.int64], index: DeviceIndex) -> TokenRows:
        """Tokens (from the inventory pass) carried by the packets at these ascending stream
        positions, for callers that replay the capture through a detector themselves."""
        if not len(positions):
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint64)
        pos, mac, h = self.tokens.in_range(int(positions[0]), int(positions[-1]) + 1)
        rows = np.searchsorted(positions, pos)
        ok = (rows < len(positions)) & (positions[np.minimum(rows, len(positions) - 1)] == pos)
        return rows[ok].astype(np.int64), index.of_macs(mac[ok]), h[ok]

    # -- pass 2 -------------------------------------------------------------------------------
    def _span(self, progress: Progress | None = None) -> None:
        """First and last packet time and whether the input is in time order (a walk over the
        record headers: timestamps only, no protocol decode)."""
        for p in self.paths:
            for ts in read_timestamps(p, batch_size=self.config.batch_size):
                self._note_times(PacketBatch({"index": np.zeros(len(ts), np.int64), "ts": ts}))
                if progress:
                    progress("span", self.packets)

    def _in_order(self, b: PacketBatch) -> bool:
        """Whether the batch continues the input in time order."""
        return bool(b.ts[0] >= self.last_ts or self.last_ts == -math.inf) and bool(np.all(np.diff(b.ts) >= 0))

    def _note_times(self, b: PacketBatch) -> None:
        """Count a batch of the input: packets, first / last time, whether still in time order."""
        if len(b):
            self._time_sorted &= self._in_order(b)
            self.first_ts = min(self.first_ts, float(b.ts.min()))
            self.last_ts = max(self.last_ts, float(b.ts.max()))
        self.packets += len(b)

    def run(
        self,
        progress: Progress | None = None,
        score_sink: ScoreSink | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> AnalysisResult:
        """The analysis (see the module docstring); returns inventory, baselines, alerts and
        timelines.

        ``score_sink`` gets every batch's per-packet scores. When the input turns out not to be
        in time order, the analysis starts again from the first packet: ``on_restart`` is called
        first (a sink that wrote scores drops them there).
        """
        stream = self.packets == 0 and self.config.learn_seconds is not None
        if self.packets == 0 and not stream:
            self._span(progress)
        try:
            return self._analyse(progress, score_sink, stream)
        except _OutOfOrder:
            if on_restart is not None:
                on_restart()
            self.first_ts, self.last_ts, self.packets = math.inf, -math.inf, 0
            self._span(progress)  # finds the input unsorted: it is sorted in memory
            return self._analyse(progress, score_sink, stream=False)

    def _analyse(
        self, progress: Progress | None, score_sink: ScoreSink | None, stream: bool
    ) -> AnalysisResult:
        """One read through the engine. ``stream``: the span is not known yet -- times are noted
        as the batches come, and :class:`_OutOfOrder` is raised at the first packet earlier than
        one before it."""
        cfg = self.config
        span = self.last_ts - self.first_ts if math.isfinite(self.first_ts) else 0.0
        secs = cfg.learn_seconds if cfg.learn_seconds is not None else max(0.0, span * cfg.learn_fraction)
        until = self.first_ts + secs if cfg.global_deadline and math.isfinite(self.first_ts) else None
        engine: DetectionEngine | ShardedEngine
        if cfg.workers > 1:
            from iotsentry.scale import ShardedEngine

            if not cfg.living:
                raise IotSentryError("--workers needs living baselines (leave out --static-baseline)")
            engine = ShardedEngine(
                cfg.workers,
                secs,
                site_id=cfg.site_id,
                margin=cfg.margin,
                drift_guard=cfg.drift_guard,
                learn_until=until,
                ray_address=cfg.ray_address,
            )
        else:
            engine = DetectionEngine(
                secs,
                site_id=cfg.site_id,
                margin=cfg.margin,
                drift_guard=cfg.drift_guard,
                living=cfg.living,
                learn_until=until,
            )
        timeline = _Timeline()

        def sink(b: PacketBatch, device: npt.NDArray[np.int32], scores: npt.NDArray[np.float64]) -> None:
            timeline.add(b, device, scores)
            if score_sink is not None:
                score_sink(b, device, scores)

        engine.score_sink = sink
        self.engine = engine if isinstance(engine, DetectionEngine) else None
        self._sharded = engine if not isinstance(engine, DetectionEngine) else None
        meter = FlowMeter()
        n_flows = 0
        done = 0
        absorbed: list[dict[str, Any]] = []
        batches = iter_batches(self.paths, cfg.batch_size, with_raw=keep_raw_for_app_fields)
        for b in batches if stream else self._time_ordered(batches):
            if stream and len(b):
                if not self._in_order(b):
                    raise _OutOfOrder
                if not math.isfinite(self.first_ts) and cfg.global_deadline:
                    engine.learn_until = float(b.ts[0]) + secs
                self._note_times(b)
            out = engine.ingest(b)
            absorbed += out.absorbed
            n_flows += len(meter.update(b))
            done += len(b)
            if progress:
                progress("analysis", done)
        absorbed += engine.flush().absorbed
        n_flows += len(meter.flush())
        if isinstance(engine, DetectionEngine):
            self.baseline = engine.baseline
            self.tracker = engine.tracker
            self.tokens.text.update(engine._tokens.text)
            self.app_events = engine.app_events
            raw_devices, device_ids = engine.devices(), engine.baseline.device_ids
            alerts = engine.policy.alerts()
            baselines: Mapping[str, dict[str, Any]] = engine.baselines()
            t_end, suppressed, notices = engine.t_end, engine.policy.suppressed, engine.policy.notices
            visibility = engine.visibility.site()
            groups = self._group_summary(*engine.peer_vectors())
        else:
            try:
                view = engine.result()
            finally:
                engine.close()
            self.tokens.text.update(view.token_text)
            self.app_events = view.app_events
            raw_devices, device_ids = view.devices, view.device_ids
            alerts, baselines, visibility = view.alerts, view.baselines, view.visibility
            t_end, suppressed, notices = view.t_end, view.suppressed, view.notices
            groups = self._group_summary(view.peer_ids, view.peer_vectors)
        devices = self._typed(raw_devices)
        self.devices = devices
        gw = next((d.device_id for d in devices if d.is_gateway), None)
        timelines = timeline.result(device_ids)
        stats = {
            "packets": self.packets,
            "flows": n_flows,
            "app_events": self.app_events,
            "devices": len(devices),
            "first_ts": self.first_ts if math.isfinite(self.first_ts) else None,
            "last_ts": self.last_ts if math.isfinite(self.last_ts) else None,
            "learn_end": t_end if math.isfinite(t_end) else self.learn_end(),
            "learn_seconds": secs,
            "gateway": gw,
            "alerts_suppressed": suppressed,
            "absorbed": len(absorbed),
            "visibility": visibility,
            "workers": cfg.workers,
        }
        book = IncidentBook()
        _, to_sinks = book.fold_many(alerts)
        incidents = book.incidents()
        stats["incidents"] = len(incidents)
        stats["notices"] = notices
        return AnalysisResult(
            devices, alerts, baselines, timelines, stats, groups, absorbed, incidents, list(to_sinks)
        )

    def device_ids(self) -> list[str]:
        """Device ids by device number, as the score sink's device numbers count them (so far)."""
        if self.engine is not None:
            return self.engine.baseline.device_ids
        return self._sharded.device_ids if self._sharded is not None else []

    def _time_ordered(self, batches: Iterator[PacketBatch]) -> Iterator[PacketBatch]:
        """The input in time order: as it is when the inventory pass found it so, else sorted in
        memory (stable, so packets with equal times keep their order); a warning says so."""
        if self._time_sorted:
            yield from batches
            return
        import warnings

        whole = PacketBatch.concat(list(batches))
        warnings.warn(
            f"{', '.join(map(str, self.paths))}: packets are not in time order; "
            f"{len(whole):,} packets sorted in memory before the analysis",
            RuntimeWarning,
            stacklevel=3,
        )
        order = np.argsort(whole.ts, kind="stable")
        for i in range(0, len(order), self.config.batch_size):
            yield whole.take(order[i : i + self.config.batch_size])

    @staticmethod
    def _group_summary(ids: list[str], X: npt.NDArray[np.float64]) -> list[dict[str, Any]]:
        """The peer groups of the devices whose learning ended (the engine alerts on outliers)."""
        if len(ids) < 3:
            return []
        return PeerGroups().fit(ids, X).group_summary()


class _OutOfOrder(Exception):
    """The input turned out not to be in time order while it streamed."""


class _Timeline:
    """Per device and window: packets, bytes and the highest packet score (for the report).

    Batches add columnar rows ((device, window) key, packets, bytes, score); rows are folded
    together (numpy, no per-row Python) when they pile up and at the end."""

    FOLD_ROWS = 2_000_000

    def __init__(self) -> None:
        self._parts: list[tuple[npt.NDArray[np.int64], ...]] = []
        self._rows = 0
        self._folded: tuple[npt.NDArray[Any], ...] | None = None

    def add(self, b: PacketBatch, device: npt.NDArray[np.int32], scores: npt.NDArray[np.float64]) -> None:
        ok = device >= 0
        if not ok.any():
            return
        d = device[ok].astype(np.int64)
        w = np.floor(b.ts[ok] / WINDOW_S).astype(np.int64)
        key = (d << 32) | (w & 0xFFFFFFFF)
        uk, inv = np.unique(key, return_inverse=True)
        inv = inv.ravel()
        top = np.zeros(len(uk))
        np.maximum.at(top, inv, scores[ok])
        pk = np.bincount(inv, minlength=len(uk)).astype(np.float64)
        by = np.bincount(inv, weights=b.wire_len[ok].astype(np.float64), minlength=len(uk))
        self._append(uk, pk, by, top)

    def _append(self, *cols: npt.NDArray[Any]) -> None:
        self._parts.append(cols)
        self._rows += len(cols[0])
        if self._rows > self.FOLD_ROWS:
            self._fold()

    def _fold(self) -> tuple[npt.NDArray[Any], ...]:
        parts = self._parts if self._folded is None else [self._folded, *self._parts]
        if not parts:
            return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        key, pk, by, sc = (np.concatenate([p[j] for p in parts]) for j in range(4))
        uk, inv = np.unique(key, return_inverse=True)
        inv = inv.ravel()
        top = np.zeros(len(uk))
        np.maximum.at(top, inv, sc)
        self._folded = (
            uk,
            np.bincount(inv, weights=pk, minlength=len(uk)),
            np.bincount(inv, weights=by, minlength=len(uk)),
            top,
        )
        self._parts, self._rows = [], 0
        return self._folded

    def result(self, device_ids: list[str]) -> dict[str, dict[str, list[float]]]:
        key, pk, by, sc = self._fold()
        dev = (key >> 32).astype(np.int64)
        win = key & 0xFFFFFFFF
        out = {}
        bounds = np.flatnonzero(np.diff(dev)) + 1 if len(dev) else np.zeros(0, np.int64)
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(dev)], strict=True):
            if hi <= lo:
                continue
            out[device_ids[int(dev[lo])]] = {
                "t": (win[lo:hi] * WINDOW_S).astype(np.float64).tolist(),
                "packets": pk[lo:hi].tolist(),
                "bytes": by[lo:hi].tolist(),
                "score": sc[lo:hi].tolist(),
            }
        return out
