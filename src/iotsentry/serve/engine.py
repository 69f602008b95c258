"""The monitor's streaming engine: the shared :class:`~iotsentry.engine.DetectionEngine`, plus
flow records and persistence of the living baseline.

Packet batches go through :class:`~iotsentry.engine.DetectionEngine` unchanged -- the batch
analysis (:class:`~iotsentry.pipeline.Analyzer`) runs the same engine, so the same traffic gives
the same alerts whether it is analysed as one file or fed to the monitor as hourly files.

Persistence: with ``snapshot_baseline`` the engine encodes its living baseline (every device's
profile, learning clock, absorbed behaviour and history; :func:`~iotsentry.baseline.persist.encode_baseline`,
JSON + npz) whenever it changed -- devices finished learning, behaviour was absorbed, an operator's
feedback was applied -- with what detection needs besides it (first learning end, labels,
gateway, DNS names, application token texts, visibility counters) as metadata; the monitor
writes and signs it (:attr:`StreamEngine.learned_snapshot`). :meth:`StreamEngine.restore`
resumes from such a saved baseline: devices whose learning ended are judged at once, devices
still learning go on learning, and the learning-end findings are not raised again. Detection-time
state (slow-scan targets, new-beacon series, absorption candidates, alert de-duplication) starts
empty after a restore; learned schedules count as seen at the first packet after it (silence is
judged over observed time only).

Flow batches (Zeek, NetFlow) go through a flow model when one was loaded (see
:func:`load_flow_model_verified`), else they only count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.living import Living
from iotsentry.baseline.profile import Baseline
from iotsentry.baseline.visibility import Visibility
from iotsentry.detectors.profile import ProfileDetector
from iotsentry.engine import MAX_TOKEN_TEXTS, DetectionEngine, EngineOutput, offline_after
from iotsentry.features.device_context import DeviceIndex
from iotsentry.schema import PROTO_NAMES, Alert, AppEvent, FlowBatch, PacketBatch, ip_to_str

__all__ = ["EngineOutput", "FlowModelRunner", "StreamEngine", "load_flow_model_verified"]

RESTORE_FORMAT = 2
"""Version of the engine's metadata in a saved baseline (``metadata.json``)."""


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


class StreamEngine(DetectionEngine):
    """The detection engine of the always-on monitor (see the module docstring).

    Parameters
    ----------
    learn_seconds
        Length of each device's learning period from its own first packet.
    site_id, margin
        As in :class:`~iotsentry.pipeline.AnalysisConfig`.
    policy
        The alert policy (a fresh one by default).
    flow_model
        Applied to flow batches (``None``: flows are only counted).
    living
        Absorb persistent, unalerted behaviour (:mod:`~iotsentry.baseline.living`).
    """

    def __init__(
        self,
        learn_seconds: float,
        *,
        site_id: str = "default",
        margin: float = 2.0,
        policy: AlertPolicy | None = None,
        flow_model: FlowModelRunner | None = None,
        living: bool = True,
    ) -> None:
        super().__init__(learn_seconds, site_id=site_id, margin=margin, policy=policy, living=living)
        self.flow_model = flow_model
        self.flows = 0
        self.snapshot_baseline = False
        """Encode the living baseline into :attr:`learned_snapshot` whenever it changed."""
        self.learned_snapshot: dict[str, bytes] | None = None
        """The files of the baseline to save (taken by the monitor)."""
        self.restored = False
        """Whether detection started from a saved baseline (:meth:`restore`)."""
        self._resume_pending = False

    # -- input -------------------------------------------------------------------------------
    def ingest(self, batch: PacketBatch | FlowBatch, events: list[AppEvent] | None = None) -> EngineOutput:
        """Take one batch; returns the alerts it raised and the scores of the packets scored."""
        if isinstance(batch, FlowBatch):
            return self._flows(batch)
        if self._resume_pending and len(batch):
            self._resume_schedules(float(batch.ts.min()))
        out = super().ingest(batch, events)
        self._maybe_snapshot()
        return out

    def flush(self) -> EngineOutput:
        """Process the carried window (at shutdown: no later packet will close it)."""
        out = super().flush()
        self._maybe_snapshot()
        return out

    def _maybe_snapshot(self) -> None:
        if self.snapshot_baseline and self.baseline_changed:
            self.learned_snapshot = self.snapshot()
            self.baseline_changed = False

    def snapshot(self) -> dict[str, bytes]:
        """The files of the living baseline as it is now (see the module docstring)."""
        from iotsentry.baseline.persist import encode_baseline

        return encode_baseline(self.baseline, self._restore_metadata())

    # -- persistence ---------------------------------------------------------------------------
    def _restore_metadata(self) -> dict[str, Any]:
        """What detection needs besides the baseline (see :meth:`restore`)."""
        return {
            "engine": RESTORE_FORMAT,
            "first_ts": self.first_ts if math.isfinite(self.first_ts) else None,
            "t_end": self.t_end if math.isfinite(self.t_end) else None,
            "learn_seconds": self.learn_seconds,
            "labels": self.labels(),
            "gateway": self._gateway,
            "ip_names": dict(self.tracker.ip_names),
            "ip_name_ts": {k: float(v) for k, v in self.tracker.ip_name_ts.items()},
            "token_text": {str(k): v for k, v in self._tokens.text.items()},
            "visibility": self.visibility.state(),
            "groups_done": self._groups_done,
        }

    def restore(self, baseline: Baseline, metadata: dict[str, Any]) -> None:
        """Resume from a saved living baseline, before the first batch.

        Parameters
        ----------
        baseline
            A loaded baseline (:func:`~iotsentry.baseline.persist.load_baseline_with_metadata`).
        metadata
            Its metadata, as written by an engine with ``snapshot_baseline``.

        Raises
        ------
        ValueError
            The metadata is not an engine's, or was learned with another ``learn_seconds``; the
            engine is left unchanged.
        """
        if self.packets:
            raise ValueError("restore a baseline before the first batch")
        m = metadata
        if m.get("engine") != RESTORE_FORMAT:
            raise ValueError(f"baseline metadata version {m.get('engine')!r} is not {RESTORE_FORMAT}")
        try:
            first_ts = float(m["first_ts"]) if m["first_ts"] is not None else math.inf
            t_end = float(m["t_end"]) if m["t_end"] is not None else math.inf
            learn_s = float(m["learn_seconds"])
            labels = [str(x) for x in m["labels"]]
            gateway = m["gateway"]
            ip_names = {str(k): str(v) for k, v in dict(m["ip_names"]).items()}
            name_ts = {str(k): float(v) for k, v in dict(m["ip_name_ts"]).items()}
            token_text = {int(k): str(v) for k, v in dict(m["token_text"]).items()}
            visibility = Visibility.from_state(dict(m["visibility"]))
            groups_done = bool(m["groups_done"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"baseline metadata is incomplete ({type(e).__name__}: {e})") from None
        if len(labels) != len(baseline.device_ids):
            raise ValueError("baseline metadata does not match the baseline (labels)")
        if gateway is not None and not isinstance(gateway, str):
            raise ValueError("baseline metadata: gateway must be a device id or null")
        if learn_s != self.learn_seconds:
            raise ValueError(
                f"the saved baseline was learned over {learn_s:g} s, the configuration says "
                f"{self.learn_seconds:g} s"
            )
        self._tokens.text.update(list(token_text.items())[:MAX_TOKEN_TEXTS])
        detector = ProfileDetector(baseline, labels=labels, margin=self.margin, token_text=self._tokens.text)
        detector._ensure_devices(len(baseline.profiles))
        detector.fit_devices([i for i, p in enumerate(baseline.profiles) if p.active])
        detector._slow_pending = []  # the learning-end findings were raised by the run that learned
        self.baseline = baseline
        self.detector = detector
        self.living = Living(baseline) if self.living is not None else None
        baseline.defer_groups = self.living is not None
        if self.living is not None:
            detector.alerted = self.living.alerted
        self.visibility = visibility
        self._known = set(baseline.device_ids)
        self._gateway = gateway
        self.index = DeviceIndex(list(baseline.device_ids), gateway)
        self.tracker.ip_names.update(ip_names)
        self.tracker.ip_name_ts.update(name_ts)
        self.first_ts, self.t_end = first_ts, t_end
        self._groups_done = groups_done
        n = len(baseline.profiles)
        self._last_seen = np.full(n, -np.inf)
        self._offline_after = np.full(n, np.inf)
        for i, p in enumerate(baseline.profiles):
            if p.active:
                self._offline_after[i] = offline_after(p)
        self.restored = True
        self._resume_pending = True

    def _resume_schedules(self, t0: float) -> None:
        """Learned schedules count as seen at ``t0`` (the monitor saw nothing while it was down)."""
        self._resume_pending = False
        for sch in self.baseline.periodicity.schedules.values():
            sch.last_ts = max(sch.last_ts, t0)

    # -- flows -------------------------------------------------------------------------------
    def _flows(self, flows: FlowBatch) -> EngineOutput:
        out = EngineOutput(flows=len(flows))
        self.flows += len(flows)
        if self.flow_model is not None and len(flows):
            out.alerts = self.flow_model.alerts(flows, self.policy)
        return out
