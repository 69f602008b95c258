"""Wires the stages for a batch run over capture files.

Three streaming passes, each bounded in memory by the batch size, devices and windows:

1. **inventory**: every packet updates the device tracker; application fields (DHCP, DNS,
   mDNS, SSDP, HTTP, TLS) are parsed from the few packets that carry them.
2. **learning**: packets before the end of the learning period build each device's baseline
   (window-aligned, so no window is split between learning and detection).
3. **detection**: every packet is scored; windows outside their device's learned range become
   findings, findings become alerts through the alert policy; per-device timelines are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.peer_groups import PeerGroups, peer_group_findings, profile_vectors
from iotsentry.baseline.profile import Baseline, TokenRows
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.decode import RawSpec
from iotsentry.capture.reader import read_packets
from iotsentry.detectors.profile import Finding, ProfileDetector
from iotsentry.features.app_tokens import TokenLog
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, packet_context
from iotsentry.features.flowmeter import FlowMeter
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import PROTO_NAMES, Alert, Device, PacketBatch

PEER_MIN_WINDOWS = 5
"""Devices with fewer learned windows are left out of peer grouping."""

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


@dataclass
class AnalysisResult:
    """What a run produced."""

    devices: list[Device]
    alerts: list[Alert]
    baselines: dict[str, dict[str, Any]]
    timelines: dict[str, dict[str, list[float]]]
    stats: dict[str, Any] = field(default_factory=dict)
    peer_groups: list[dict[str, Any]] = field(default_factory=list)


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


class Analyzer:
    """Runs the three passes over a set of captures (see module docstring)."""

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
        """The learned baselines of the last :meth:`run` (frozen)."""
        self.tokens = TokenLog()
        self._type_model: Any = None
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
            if len(b):
                last = self.last_ts
                self._time_sorted &= bool(b.ts[0] >= last or last == -math.inf) and bool(
                    np.all(np.diff(b.ts) >= 0)
                )
                self.first_ts = min(self.first_ts, float(b.ts.min()))
                self.last_ts = max(self.last_ts, float(b.ts.max()))
            self.packets += len(b)
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
        """Tokens carried by the packets at these (ascending) stream positions."""
        if not len(positions):
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint64)
        pos, mac, h = self.tokens.in_range(int(positions[0]), int(positions[-1]) + 1)
        rows = np.searchsorted(positions, pos)
        ok = (rows < len(positions)) & (positions[np.minimum(rows, len(positions) - 1)] == pos)
        return rows[ok].astype(np.int64), index.of_macs(mac[ok]), h[ok]

    # -- passes 2 and 3 -------------------------------------------------------------------------
    def run(self, progress: Progress | None = None, score_sink: ScoreSink | None = None) -> AnalysisResult:
        """All three passes; returns inventory, baselines, alerts and timelines."""
        devices = self.inventory(progress) if self.packets == 0 else self._typed(self.tracker.devices())
        self.devices = devices
        gw = next((d.device_id for d in devices if d.is_gateway), None)
        index = DeviceIndex([d.device_id for d in devices], gw)
        labels = [d.label for d in devices]
        baseline = Baseline([d.device_id for d in devices])
        baseline.drift_guard = self.config.drift_guard
        self.baseline = baseline
        t_end = self.learn_end()
        names = self.tracker.ip_names
        learned = 0
        consumed = 0
        for b in window_aligned(iter_batches(self.paths, self.config.batch_size)):
            positions = consumed + np.arange(len(b), dtype=np.int64)
            consumed += len(b)
            before = b.ts < t_end
            lb, _rest = _split_at(b, t_end)
            if len(lb):
                rows = self._token_rows(positions[before], index)
                baseline.learn(lb, packet_context(lb, index), names, rows)
                learned += len(lb)
                if progress:
                    progress("learning", learned)
            if self._time_sorted and len(_rest):
                break  # time-sorted input: nothing later can fall before the learning end
        detector = ProfileDetector(
            baseline, labels=labels, margin=self.config.margin, token_text=self.tokens.text
        ).fit()
        policy = AlertPolicy(site_id=self.config.site_id)
        meter = FlowMeter()
        n_flows = 0
        timeline: dict[int, dict[int, list[float]]] = {}
        done = 0
        for b in window_aligned(iter_batches(self.paths, self.config.batch_size)):
            ctx = packet_context(b, index)
            rows = self._token_rows(done + np.arange(len(b), dtype=np.int64), index)
            scores, table, wscores = detector.evaluate(b, ctx, names, rows)
            flows = meter.update(b)
            n_flows += len(flows)
            if score_sink is not None:
                score_sink(b, ctx.device, scores)
            for r in range(len(table)):
                d, w = int(table.device[r]), int(table.window[r])
                row = timeline.setdefault(d, {}).setdefault(w, [0.0, 0.0, 0.0])
                row[0] += table.X[r, 0]
                row[1] += table.X[r, 1]
                row[2] = max(row[2], float(wscores[r]))
            detect = (table.window * WINDOW_S) >= t_end
            if detect.any():
                ws = np.where(detect, wscores, 0.0)
                found = detector.findings(b, ctx, table, ws) + detector.schedule_findings(
                    b, ctx, names, t_end
                )
                for f in found:
                    finding_alert(
                        policy, detector, f, devices[f.device].ips[0] if devices[f.device].ips else ""
                    )
            done += len(b)
            if progress:
                progress("detection", done)
        n_flows += len(meter.flush())
        groups = self._peer_groups(baseline, labels, policy)
        baselines = {}
        for prof, model, mature in zip(
            baseline.profiles, detector.window_models, detector.mature, strict=False
        ):
            s = prof.summary()
            s["limits"] = dict(
                zip(detector.summary()[prof.device_id]["limits"], model.limits_.tolist(), strict=True)
            )
            s["mature"] = mature
            s["schedules"] = [
                {"peer": x.peer, "service": x.service, "period_s": round(x.period_s, 1), "count": x.count}
                for x in baseline.periodicity.device_schedules(baseline.device_ids.index(prof.device_id))
            ]
            baselines[prof.device_id] = s
        timelines = {
            baseline.device_ids[d]: {
                "t": [w * WINDOW_S for w in sorted(rows)],
                "packets": [rows[w][0] for w in sorted(rows)],
                "bytes": [rows[w][1] for w in sorted(rows)],
                "score": [rows[w][2] for w in sorted(rows)],
            }
            for d, rows in timeline.items()
        }
        stats = {
            "packets": self.packets,
            "flows": n_flows,
            "app_events": self.app_events,
            "devices": len(devices),
            "first_ts": self.first_ts if math.isfinite(self.first_ts) else None,
            "last_ts": self.last_ts if math.isfinite(self.last_ts) else None,
            "learn_end": t_end,
            "gateway": gw,
            "alerts_suppressed": policy.suppressed,
        }
        return AnalysisResult(devices, policy.alerts(), baselines, timelines, stats, groups)

    def _peer_groups(
        self, baseline: Baseline, labels: list[str], policy: AlertPolicy
    ) -> list[dict[str, Any]]:
        """Group devices that behave alike; alert on a device that leaves its group."""
        ids, X = profile_vectors(baseline, min_windows=PEER_MIN_WINDOWS)
        if len(ids) < 3:
            return []
        groups = PeerGroups().fit(ids, X)
        label_of = dict(zip(baseline.device_ids, labels, strict=False))
        for f in peer_group_findings(baseline, label_of, min_windows=PEER_MIN_WINDOWS, groups=PeerGroups()):
            prof = baseline.profiles[baseline.device_ids.index(f["device_id"])]
            policy.make(
                ts=prof.last_ts,
                device_id=f["device_id"],
                detector="peer-groups",
                detector_version="1",
                score=float(f["score"]),
                threshold=float(f["threshold"]),
                category="peer-outlier",
                reason=str(f["reason"]),
            )
        return groups.group_summary()
