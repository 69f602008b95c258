"""The streaming detection engine: the batch pipeline's passes, one batch at a time.

Packet batches:

1. every batch updates the :class:`~iotsentry.inventory.devices.DeviceTracker` (application
   fields parsed from the frames whose raw bytes the source kept); devices new to the tracker are
   appended to the :class:`~iotsentry.baseline.profile.Baseline` (``add_device``) and the
   :class:`~iotsentry.features.device_context.DeviceIndex` is rebuilt with the longer id list
   (numbers of known devices never change);
2. batches are re-cut so that no 60-s window is split (the tail window is carried to the next
   batch: memory is bounded by one window of packets, nothing else is buffered);
3. packets before the learning end -- ``learn_seconds`` after the first packet, aligned down to a
   window boundary, as :meth:`iotsentry.pipeline.Analyzer.learn_end` -- are learned; the first
   packet past it ends learning: ``ProfileDetector.fit`` (and the peer-group check the batch
   pipeline runs), and the learned baselines are available from :meth:`StreamEngine.baselines`;
4. afterwards every batch is evaluated: window findings + schedule findings -> alerts through
   the :class:`~iotsentry.alerts.policy.AlertPolicy`.

Documented differences from the batch :class:`~iotsentry.pipeline.Analyzer` (which reads the
whole input before learning): the inventory, gateway and DNS names are those known *so far*;
the detector's streaming state (periodicity, slow-scan targets) starts at the learning end,
whereas the batch pipeline also runs the learning-period packets through ``evaluate`` (without
findings); the peer-group check runs at the learning end (same profiles, as they are frozen);
alerts are not re-counted after they are emitted (``extra["count"]`` stays 1 in what the monitor
stores for repeats folded later: the store merges repeats by de-duplication key instead).

Persistence: with ``snapshot_baseline`` the engine encodes its frozen baseline at the learning
end, before any packet is evaluated (:func:`~iotsentry.baseline.persist.encode_baseline`, JSON +
npz), with what detection needs besides it (learning end, device labels, gateway, DNS names,
application token texts) as metadata; the monitor writes and signs it. :meth:`StreamEngine.restore`
starts detection from such a saved baseline without learning: the detector is fitted on it,
and the learning-end findings (peer groups, baseline drift) are not raised again. A restored
engine's streaming state (periodicity since the learning end, slow-scan targets, alert
de-duplication) starts empty; learned schedules count as seen at the first packet after the
restore (silence is judged over observed time only).

Flow batches (Zeek, NetFlow) go through a flow model when one was loaded (see
:func:`load_flow_model_verified`), else they only count.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.peer_groups import PeerGroups, peer_group_findings, profile_vectors
from iotsentry.baseline.profile import Baseline, TokenRows
from iotsentry.capture.appfields import extract_app_events
from iotsentry.detectors.profile import Finding, ProfileDetector
from iotsentry.features.app_tokens import token_hash, tokens_of
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, PacketContext, packet_context
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.pipeline import PEER_MIN_WINDOWS, finding_alert
from iotsentry.schema import PROTO_NAMES, Alert, AppEvent, Device, FlowBatch, PacketBatch, ip_to_str

__all__ = ["EngineOutput", "FlowModelRunner", "StreamEngine", "load_flow_model_verified"]

RESTORE_FORMAT = 1
"""Version of the engine's metadata in a saved baseline (``metadata.json``)."""

MAX_TOKEN_TEXTS = 100_000
"""Distinct application tokens whose text is kept for explanations (memory bound)."""


@dataclass
class EngineOutput:
    """What one call of :meth:`StreamEngine.ingest` / :meth:`StreamEngine.flush` produced."""

    alerts: list[Alert] = field(default_factory=list)
    packets: int = 0
    """Packets of the input batch (ingested; scored packets may lag by the carried window)."""
    flows: int = 0
    scored: int = 0
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    """Per-packet scores of the packets scored in this call (detection phase only)."""
    contexts: list[tuple[PacketBatch, PacketContext]] = field(default_factory=list)
    """The scored (batch, context) pairs, for monitors that look at packets (change rate)."""
    learned: bool = False
    """Learning ended during this call."""


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


class FlowModelRunner:
    """A verified flow model applied to flow batches (alerts for flows it does not call benign).

    Parameters
    ----------
    model
        A fitted flow model (``evaluate(X) -> (score, predicted class, _)``).
    manifest
        Its manifest (``feature_names``, ``model``, ...).
    """

    def __init__(self, model: Any, manifest: dict[str, Any]) -> None:
        self.model = model
        self.manifest = manifest
        self.name = f"flow-{manifest.get('model', 'model')}"
        self.version = str(manifest.get("version", "1"))

    def alerts(self, flows: FlowBatch, policy: AlertPolicy) -> list[Alert]:
        """Score the flows; one alert (through ``policy``) per flow predicted not benign."""
        from iotsentry.features.flow_features import flow_matrix

        X, names = flow_matrix(flows)
        if names != self.manifest.get("feature_names"):
            raise ValueError("the flow model was trained on a different feature set")
        score, pred, _ = self.model.evaluate(X)
        out: list[Alert] = []
        for r in np.flatnonzero(pred != "benign").tolist():
            a = policy.make(
                ts=float(flows.ts[r]),
                device_id=ip_to_str(flows.src_ip_hi[r], flows.src_ip_lo[r]),
                detector=self.name,
                detector_version=self.version,
                score=float(score[r]),
                threshold=float(self.manifest.get("threshold", 0.5)),
                category=str(pred[r]),
                reason=f"flow model {self.name} predicts {pred[r]} (score {float(score[r]):.3g})",
                src_ip=ip_to_str(flows.src_ip_hi[r], flows.src_ip_lo[r]),
                src_port=int(flows.src_port[r]),
                dest_ip=ip_to_str(flows.dst_ip_hi[r], flows.dst_ip_lo[r]),
                dest_port=int(flows.dst_port[r]),
                proto=PROTO_NAMES.get(int(flows.proto[r]), str(int(flows.proto[r]))),
            )
            if a is not None:
                out.append(a)
        return out


def load_flow_model_verified(model_dir: str | Path, keyring: str | Path) -> FlowModelRunner:
    """Verify the signature of ``model_dir`` against ``keyring``, then load the flow model.

    Raises
    ------
    iotsentry.integrity.signing.IntegrityError
        Unsigned, unknown key, bad signature, altered / extra / missing file.
    """
    from iotsentry.detectors.flow_models import load_flow_model
    from iotsentry.integrity.signing import load_verified

    model, manifest = load_verified(model_dir, keyring, load_flow_model)
    return FlowModelRunner(model, manifest)


class StreamEngine:
    """Learning, then detection, over a stream of batches (see the module docstring).

    Parameters
    ----------
    learn_seconds
        Length of the learning phase from the first packet.
    site_id, margin
        As in :class:`~iotsentry.pipeline.AnalysisConfig`.
    policy
        The alert policy (a fresh one by default).
    flow_model
        Applied to flow batches (``None``: flows are only counted).
    """

    def __init__(
        self,
        learn_seconds: float,
        *,
        site_id: str = "default",
        margin: float = 2.0,
        policy: AlertPolicy | None = None,
        flow_model: FlowModelRunner | None = None,
    ) -> None:
        self.learn_seconds = float(learn_seconds)
        self.margin = margin
        self.policy = policy or AlertPolicy(site_id=site_id)
        self.flow_model = flow_model
        self.tracker = DeviceTracker()
        self.baseline = Baseline([])
        self.index = DeviceIndex([])
        self.detector: ProfileDetector | None = None
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.t_end = math.inf
        self.packets = 0
        self.flows = 0
        self._tokens = _TokenBuffer()
        self._carry: PacketBatch | None = None
        self._carry_pos = np.zeros(0, np.int64)
        self._gateway: str | None = None
        self._known: set[str] = set()
        self.snapshot_baseline = False
        """Encode the baseline at the learning end into :attr:`learned_snapshot`."""
        self.learned_snapshot: dict[str, bytes] | None = None
        """The files of the baseline saved at the learning end (taken by the monitor)."""
        self.restored = False
        """Whether detection started from a saved baseline (:meth:`restore`)."""
        self._resume_pending = False

    # -- state -------------------------------------------------------------------------------
    @property
    def learning(self) -> bool:
        """Whether the engine is still learning."""
        return self.detector is None

    @property
    def carried(self) -> int:
        """Packets ingested but not yet scored (the open window)."""
        return len(self._carry) if self._carry is not None else 0

    def devices(self) -> list[Device]:
        """The inventory so far (cumulative counters)."""
        return self.tracker.devices()

    def _sync_devices(self) -> None:
        devices = self.tracker.devices()
        gw = next((d.device_id for d in devices if d.is_gateway), None)
        new = [d.device_id for d in devices if d.device_id not in self._known]
        if not new and gw == self._gateway:
            return
        for dev_id in new:
            self.baseline.add_device(dev_id)
            self._known.add(dev_id)
        self._gateway = gw
        self.index = DeviceIndex(list(self.baseline.device_ids), gw)

    # -- input -------------------------------------------------------------------------------
    def ingest(self, batch: PacketBatch | FlowBatch) -> EngineOutput:
        """Take one batch; returns the alerts it raised and the scores of the packets scored."""
        if isinstance(batch, FlowBatch):
            return self._flows(batch)
        out = EngineOutput(packets=len(batch))
        if not len(batch):
            return out
        events = extract_app_events(batch) if batch.raw is not None else []
        self.tracker.update(batch, events)
        positions = self.packets + np.arange(len(batch), dtype=np.int64)
        self._tokens.add(events, batch.index, self.packets)
        self.packets += len(batch)
        if not math.isfinite(self.first_ts):
            self.first_ts = float(batch.ts.min())
            end = self.first_ts + max(0.0, self.learn_seconds)
            self.t_end = math.floor(end / WINDOW_S) * WINDOW_S
        self.last_ts = max(self.last_ts, float(batch.ts.max()))
        if self._resume_pending:
            self._resume_schedules(float(batch.ts.min()))
        self._sync_devices()
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
            self._carry, self._carry_pos = b.take(np.arange(cut, len(b))), pos[cut:]
            return b.take(np.arange(cut)), pos[:cut]
        self._carry, self._carry_pos = None, np.zeros(0, np.int64)
        return b, pos

    def _process(self, b: PacketBatch, pos: npt.NDArray[np.int64], out: EngineOutput) -> None:
        names = self.tracker.ip_names
        if self.detector is None:
            before = b.ts < self.t_end
            if before.any():
                lb = b if before.all() else b.take(before)
                rows = self._tokens.take(pos[before], self.index)
                self.baseline.learn(lb, packet_context(lb, self.index), names, rows)
            if before.all():
                return
            self._end_learning(out)
            b, pos = b.take(~before), pos[~before]
        self._detect(b, pos, out)

    def _end_learning(self, out: EngineOutput) -> None:
        labels = self._labels()
        self.detector = ProfileDetector(
            self.baseline, labels=labels, margin=self.margin, token_text=self._tokens.text
        ).fit()
        out.learned = True
        if self.snapshot_baseline:
            from iotsentry.baseline.persist import encode_baseline

            self.learned_snapshot = encode_baseline(self.baseline, self._restore_metadata(labels))
        out.alerts += self._peer_groups(labels)

    # -- persistence ---------------------------------------------------------------------------
    def _restore_metadata(self, labels: list[str]) -> dict[str, Any]:
        """What detection needs besides the baseline (see :meth:`restore`)."""
        return {
            "engine": RESTORE_FORMAT,
            "first_ts": self.first_ts,
            "t_end": self.t_end,
            "learn_seconds": self.learn_seconds,
            "labels": list(labels),
            "gateway": self._gateway,
            "ip_names": dict(self.tracker.ip_names),
            "token_text": {str(k): v for k, v in self._tokens.text.items()},
        }

    def restore(self, baseline: Baseline, metadata: dict[str, Any]) -> None:
        """Start detection from a saved baseline (frozen), skipping learning.

        Parameters
        ----------
        baseline
            A loaded baseline (:func:`~iotsentry.baseline.persist.load_baseline_with_metadata`).
        metadata
            Its metadata, as written at the learning end by an engine with ``snapshot_baseline``.

        Raises
        ------
        ValueError
            The metadata is not an engine's, or was learned with another ``learn_seconds``; the
            engine is left unchanged (still learning).
        """
        if not self.learning or self.packets:
            raise ValueError("restore a baseline before the first batch")
        if not baseline.frozen:
            raise ValueError("the baseline is not frozen")
        m = metadata
        if m.get("engine") != RESTORE_FORMAT:
            raise ValueError(f"baseline metadata version {m.get('engine')!r} is not {RESTORE_FORMAT}")
        try:
            first_ts, t_end = float(m["first_ts"]), float(m["t_end"])
            learn_s = float(m["learn_seconds"])
            labels = [str(x) for x in m["labels"]]
            gateway = m["gateway"]
            ip_names = {str(k): str(v) for k, v in dict(m["ip_names"]).items()}
            token_text = {int(k): str(v) for k, v in dict(m["token_text"]).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"baseline metadata is incomplete ({type(e).__name__}: {e})") from None
        if not (math.isfinite(first_ts) and math.isfinite(t_end)) or len(labels) != len(baseline.device_ids):
            raise ValueError("baseline metadata does not match the baseline (times or labels)")
        if gateway is not None and not isinstance(gateway, str):
            raise ValueError("baseline metadata: gateway must be a device id or null")
        if learn_s != self.learn_seconds:
            raise ValueError(
                f"the saved baseline was learned over {learn_s:g} s, the configuration says "
                f"{self.learn_seconds:g} s"
            )
        self._tokens.text.update(list(token_text.items())[:MAX_TOKEN_TEXTS])
        detector = ProfileDetector(
            baseline, labels=labels, margin=self.margin, token_text=self._tokens.text
        ).fit()
        detector._slow_pending = []  # the learning-end findings were raised by the run that learned
        self.baseline = baseline
        self.detector = detector
        self._known = set(baseline.device_ids)
        self._gateway = gateway
        self.index = DeviceIndex(list(baseline.device_ids), gateway)
        self.tracker.ip_names.update(ip_names)
        self.first_ts, self.t_end = first_ts, t_end
        self.restored = True
        self._resume_pending = True

    def _resume_schedules(self, t0: float) -> None:
        """Learned schedules count as seen at ``t0`` (the monitor saw nothing while it was down)."""
        self._resume_pending = False
        for sch in self.baseline.periodicity.schedules.values():
            sch.last_ts = max(sch.last_ts, t0)

    def _labels(self) -> list[str]:
        by_id = {d.device_id: d.label for d in self.tracker.devices()}
        return [by_id.get(i, i) for i in self.baseline.device_ids]

    def _detect(self, b: PacketBatch, pos: npt.NDArray[np.int64], out: EngineOutput) -> None:
        det = self.detector
        assert det is not None
        names = self.tracker.ip_names
        ctx = packet_context(b, self.index)
        rows = self._tokens.take(pos, self.index)
        scores, table, wscores = det.evaluate(b, ctx, names, rows)
        out.scored += len(b)
        out.scores = np.concatenate([out.scores, scores])
        out.contexts.append((b, ctx))
        detect = (table.window * WINDOW_S) >= self.t_end
        if not detect.any():
            return
        ws = np.where(detect, wscores, 0.0)
        found = det.findings(b, ctx, table, ws) + det.schedule_findings(b, ctx, names, self.t_end)
        devices = {d.device_id: d for d in self.tracker.devices()}
        for f in found:
            a = self._alert(f, devices.get(f.device_id))
            if a is not None:
                out.alerts.append(a)

    def _alert(self, f: Finding, dev: Device | None) -> Alert | None:
        assert self.detector is not None
        return finding_alert(self.policy, self.detector, f, dev.ips[0] if dev is not None and dev.ips else "")

    def _peer_groups(self, labels: list[str]) -> list[Alert]:
        """The batch pipeline's peer-group check, on the just-frozen profiles."""
        baseline = self.baseline
        ids, _X = profile_vectors(baseline, min_windows=PEER_MIN_WINDOWS)
        if len(ids) < 3:
            return []
        label_of = dict(zip(baseline.device_ids, labels, strict=False))
        out: list[Alert] = []
        for f in peer_group_findings(baseline, label_of, min_windows=PEER_MIN_WINDOWS, groups=PeerGroups()):
            prof = baseline.profiles[baseline.device_ids.index(f["device_id"])]
            a = self.policy.make(
                ts=prof.last_ts,
                device_id=f["device_id"],
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

    def _flows(self, flows: FlowBatch) -> EngineOutput:
        out = EngineOutput(flows=len(flows))
        self.flows += len(flows)
        if self.flow_model is not None and len(flows):
            out.alerts = self.flow_model.alerts(flows, self.policy)
        return out

    # -- results -----------------------------------------------------------------------------
    def baselines(self) -> dict[str, dict[str, Any]]:
        """The learned profiles in the batch pipeline's shape (empty while learning)."""
        det = self.detector
        if det is None:
            return {}
        summary = det.summary()
        out: dict[str, dict[str, Any]] = {}
        for i, (prof, model, mature) in enumerate(
            zip(self.baseline.profiles, det.window_models, det.mature, strict=False)
        ):
            s = prof.summary()
            s["limits"] = dict(zip(summary[prof.device_id]["limits"], model.limits_.tolist(), strict=True))
            s["mature"] = mature
            s["schedules"] = [
                {"peer": x.peer, "service": x.service, "period_s": round(x.period_s, 1), "count": x.count}
                for x in self.baseline.periodicity.device_schedules(i)
            ]
            out[prof.device_id] = s
        return out
