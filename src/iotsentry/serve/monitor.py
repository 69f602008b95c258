"""The monitor loop: sources -> bounded queue -> engine -> store, then sinks.

* A reader thread polls the sources round-robin (each for ``poll_timeout_s / n`` seconds) and
  puts ``(source, batch, source state after it)`` on a bounded queue. A full queue blocks it: no
  source is polled until the engine has taken a batch (backpressure; nothing is ever dropped).
* The engine thread (the caller of :meth:`Monitor.run`) takes one batch at a time, runs the
  :class:`~iotsentry.serve.engine.StreamEngine`, and commits the batch's alerts *and* the
  source's state after the batch (position and counters) to the store in ONE transaction
  (:meth:`~iotsentry.store.base.StoreBase.add_alerts` with ``source_state``; the
  ``source_state`` table): either both are stored or neither. Only then are the alerts handed
  to the sinks and the state mirrored to ``state.json`` in the state folder. On start the
  sources are restored from the store's committed state; ``state.json`` is only the fallback
  for a source the store holds no state for (a store written by an iotsentry before the
  ``source_state`` table: the first run after the upgrade resumes from the file). So a crash
  at any point re-reads nothing that was committed and skips nothing that was not: each batch
  is processed exactly once as far as the store is concerned (no alert ``count`` grows on a
  restart).
* Incidents: the same transaction folds the batch's traffic alerts into incidents per
  (site, device, cause) against the incidents *stored* for their keys
  (:meth:`~iotsentry.store.base.StoreBase.commit_alerts`), so an operator's status change made
  through the API meanwhile wins, and a restart continues the stored incidents (their counts
  never grow twice). Sinks get only what opened or escalated an incident (the EVE record with
  ``incident_id`` and the incident's count and status in ``iotsentry.incident``), each notice
  and each integrity/canary alert once: never one record per repeat.
* Sinks are fed after the commit, at least once across a crash: what the sinks were being
  handed when the process died is in the store and in its outbox (written in the same
  transaction): on start the outbox is handed to the sinks first, so sinks get every such
  record at least once (twice only if the process died after the sinks and before the outbox
  was cleared). A sink that raises is logged and counted, not retried.
* Periodic work between batches: canary replay through the engine's detector
  (:mod:`iotsentry.integrity.canary`; a missed class is a ``detector-blind`` integrity alert),
  score drift (:class:`~iotsentry.integrity.drift.ScoreDriftMonitor`, reference = the first
  scores after learning) and change rate (:class:`~iotsentry.integrity.drift.ChangeRateMonitor`),
  inventory upserts (counter deltas).
* Canary results are stored per attack class in ``canary_runs`` (served by
  ``GET /integrity/canaries`` and shown on the dashboard).
* Audit records (when an audit log is configured): ``serve.start``/``serve.stop``, ``model.load``
  / ``model.refused``, ``baseline.learned``, ``baseline.devices_learned``, ``baseline.absorbed``
  (one per item a living baseline absorbed: what, when, why), ``baseline.expected`` /
  ``baseline.reverted`` (an operator's verdict applied), ``baseline.saved``,
  ``baseline.restored`` / ``baseline.refused`` / ``baseline.reset`` (see below),
  ``canary.result``.
* Operator feedback: every ``FEEDBACK_INTERVAL_S`` the store's pending feedback rows (an
  incident marked expected, or taken back; :meth:`~iotsentry.store.base.StoreBase.pending_feedback`)
  are applied to the living baselines (:meth:`~iotsentry.engine.DetectionEngine.apply_feedback`),
  marked applied with the history records they produced, audited, and the baseline saved.
* The living baseline is saved (JSON + npz,
  :mod:`iotsentry.baseline.persist`) as ``baseline/`` in the state folder, atomically, and
  signed (:func:`~iotsentry.integrity.signing.sign_model_dir`) when a signing key is configured,
  whenever it changed: the first learning end, later devices' learning ends, absorptions,
  operator feedback, and at a graceful stop. On start a saved baseline is loaded instead of
  learning again (``baseline.restored``): with a
  keyring configured only if its signature verifies, else after its SHA-256 digests are checked.
  A saved baseline that does not verify is refused (``baseline.refused`` and a
  ``baseline-integrity`` alert) and the baseline is learned again (``baseline.reset``).
* SIGTERM / SIGINT stop gracefully: the queue is drained, the open window is scored, devices
  and state are written. Logs are JSON lines on stderr: ``ts``, ``level``, ``event``, fields.

Known limit: packets of the open (carried) 60-s window at a ``kill -9`` were counted and their
source position persisted but not scored; a graceful stop scores them.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from iotsentry.alerts.incidents import ESCALATED, OPENED
from iotsentry.alerts.policy import integrity_alert
from iotsentry.alerts.sinks import AlertSink, sink_from_uri
from iotsentry.features.device_context import WINDOW_S
from iotsentry.integrity.audit import AuditLog
from iotsentry.integrity.drift import ChangeRateMonitor, ScoreDriftMonitor
from iotsentry.schema import Alert, Device, FlowBatch, rfc3339
from iotsentry.serve.config import ServeConfig
from iotsentry.serve.engine import EngineOutput, StreamEngine, load_flow_model_verified
from iotsentry.serve.metrics import Metrics
from iotsentry.serve.sources import Batch, Source, make_source
from iotsentry.store import open_store
from iotsentry.store.base import StoreBase
from iotsentry.store.records import CanaryResult

__all__ = ["JsonLog", "Monitor", "MonitorStats", "build_monitor"]

STATE_FILE = "state.json"
BASELINE_DIR = "baseline"
"""The saved baseline's folder in the state folder."""
KILL_AFTER_COMMITS_ENV = "IOTSENTRY_TEST_KILL_AFTER_COMMITS"
"""Test hook: when set to ``N``, the process kills itself (SIGKILL) right after its ``N``-th store
commit of a source state, before the sinks see that batch's alerts (tests of exactly-once)."""
DRIFT_REFERENCE = 4096
FEEDBACK_INTERVAL_S = 2.0
"""How often (wall clock) the monitor looks for operators' verdicts to apply to its baselines."""


def _records_of(result: str | None) -> list[dict[str, Any]]:
    """The history records an applied feedback row reported (empty when it reported none)."""
    try:
        doc = json.loads(result or "{}")
    except ValueError:
        return []
    recs = doc.get("records") if isinstance(doc, dict) else None
    return [r for r in recs if isinstance(r, dict)] if isinstance(recs, list) else []


class JsonLog:
    """Structured logs: one JSON object per line (``ts``, ``level``, ``event``, fields)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        """Write one record."""
        rec = {"ts": rfc3339(time.time()), "level": level, "event": event, **fields}
        line = json.dumps(rec, default=str, separators=(",", ":"))
        with self._lock:
            stream = self.stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()


@dataclass
class MonitorStats:
    """What one :meth:`Monitor.run` did."""

    batches: int = 0
    packets: int = 0
    flows: int = 0
    alerts_stored: int = 0
    alerts_sent: int = 0
    """Records handed to the sinks after their commit (openings, escalations, notices, integrity)."""
    incidents_opened: int = 0
    incidents_escalated: int = 0
    notices: int = 0
    max_queue_depth: int = 0
    canary_runs: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Monitor:
    """The always-on loop (see the module docstring).

    Parameters
    ----------
    sources
        Name -> source.
    engine
        The detection engine.
    store
        Where alerts, devices, baselines and the run are recorded.
    state_dir
        Where ``state.json`` (source positions and counters) is kept.
    sinks
        Alert sinks, fed after the store with what opened or escalated an incident, notices and
        integrity alerts (never a repeat).
    queue_size
        Bound of the queue between the sources and the engine.
    poll_timeout_s
        Time the reader spends on one round over all sources when none has data.
    audit
        Audit log (optional).
    canary_interval_s
        Seconds between canary replays (0: none).
    metrics
        Counters (a fresh :class:`Metrics` by default).
    inventory_interval_s
        Seconds between inventory upserts (and at stop).
    site_id
        Written into integrity alerts.
    log
        Structured logger (JSON lines on stderr by default).
    """

    def __init__(
        self,
        sources: dict[str, Source],
        engine: StreamEngine,
        store: StoreBase,
        state_dir: str | Path,
        *,
        sinks: list[AlertSink] | None = None,
        queue_size: int = 8,
        poll_timeout_s: float = 0.5,
        audit: AuditLog | None = None,
        canary_interval_s: float = 0.0,
        metrics: Metrics | None = None,
        inventory_interval_s: float = 10.0,
        site_id: str = "default",
        log: JsonLog | None = None,
        command: str = "serve",
        persist_baseline: bool = True,
        baseline_keyring: Path | None = None,
        baseline_signing_key: Path | None = None,
    ) -> None:
        self.sources = sources
        self.engine = engine
        self.persist_baseline = persist_baseline
        """Save the learned baseline in the state folder, and restore it on start."""
        self.baseline_keyring = baseline_keyring
        """Trust store a saved baseline must verify against (``None``: digests only)."""
        self.baseline_signing_key = baseline_signing_key
        """Private key that signs the saved baseline (``None``: unsigned)."""
        engine.snapshot_baseline = engine.snapshot_baseline or persist_baseline
        self.store = store
        self.state_dir = Path(state_dir)
        self.sinks = list(sinks or [])
        self.queue: queue.Queue[tuple[str, Batch, dict[str, Any], float]] = queue.Queue(maxsize=queue_size)
        self.queue_size = queue_size
        self.poll_timeout_s = poll_timeout_s
        self.audit = audit
        self.canary_interval_s = canary_interval_s
        self.metrics = metrics or Metrics()
        self.metrics.set(queue_capacity=queue_size)
        self.inventory_interval_s = inventory_interval_s
        self.site_id = site_id
        self.log = log or JsonLog()
        self.command = command
        self.stop_event = threading.Event()
        self.stats = MonitorStats()
        self.pending: list[Alert] = []
        """Alerts raised before the loop started (e.g. a refused model), stored first."""
        self.run_id: int | None = None
        self._state: dict[str, Any] = {"version": 1, "sources": {}}
        self._stored_counts: dict[str, tuple[int, int]] = {}
        self._reader_error: BaseException | None = None
        self._drift = ScoreDriftMonitor("profile", site_id=site_id, reference_size=DRIFT_REFERENCE)
        self._drift_ref = 0
        self._drifted = False
        self._churn = ChangeRateMonitor(site_id=site_id)
        self._canary_next = 0
        self._canary_due = time.monotonic() + canary_interval_s
        self._feedback_due = 0.0
        hook = os.environ.get(KILL_AFTER_COMMITS_ENV, "").strip()
        self._kill_after_commits = int(hook) if hook else 0
        self._state_commits = 0

    # -- state -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """The state file."""
        return self.state_dir / STATE_FILE

    def _load_state(self) -> None:
        """Restore the sources from the store's committed state (``state.json``: fallback)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            self._state = json.loads(self.state_path.read_text(encoding="utf-8"))
        self._state.setdefault("sources", {})
        committed = self.store.get_source_state()
        for name, src in self.sources.items():
            entry, origin = committed.get(name), "store"
            if entry is None:  # nothing committed for it (e.g. a store older than source_state)
                entry, origin = self._state["sources"].get(name), STATE_FILE
            else:
                self._state["sources"][name] = entry
            if entry and entry.get("state"):
                src.restore(entry["state"])
                self.log(
                    "info", "source.resumed", source=name, packets=entry.get("packets", 0), origin=origin
                )
        self._restore_baseline()

    def _save_state(self) -> None:
        _atomic_write_json(self.state_path, self._state)

    def source_counters(self) -> dict[str, dict[str, int]]:
        """Packets, flows and batches per source over every run (from the state)."""
        return {
            n: {k: int(e.get(k, 0)) for k in ("packets", "flows", "batches")}
            for n, e in self._state["sources"].items()
        }

    # -- helpers -----------------------------------------------------------------------------
    def _audit(self, action: str, subject: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append(action, subject, details)

    def _commit(self, alerts: list[Alert], source_state: dict[str, dict[str, Any]] | None = None) -> None:
        """Store first (alerts, their incidents, ``source_state`` and the outbox in one
        transaction), then hand the sinks the openings, escalations, notices and integrity alerts."""
        if not alerts and not source_state:
            return
        commit = self.store.commit_alerts(
            self.run_id, alerts, source_state=source_state, outbox=bool(self.sinks)
        )
        if source_state:
            self._state_commits += 1
            if self._kill_after_commits and self._state_commits >= self._kill_after_commits:
                self.log("warning", "test.kill", commits=self._state_commits)
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die between the commit and the sinks
        if not alerts:
            return
        events = [e for _, e in commit.events]
        opened, escalated = events.count(OPENED), events.count(ESCALATED)
        notices = sum(1 for a in alerts if a.event_type == "notice")
        self.stats.alerts_stored += len(alerts)
        self.stats.incidents_opened += opened
        self.stats.incidents_escalated += escalated
        self.stats.notices += notices
        self.metrics.stored([int(a.severity) for a in alerts])
        self.log(
            "info",
            "alerts.stored",
            count=len(alerts),
            total=self.stats.alerts_stored,
            incidents_opened=opened,
            incidents_escalated=escalated,
            notices=notices,
            to_sinks=len(commit.to_sinks),
        )
        if commit.to_sinks and self.sinks:
            self._to_sinks(commit.to_sinks)
            self.store.outbox_done()

    def _to_sinks(self, alerts: list[Alert]) -> None:
        self.stats.alerts_sent += len(alerts)
        for sink in self.sinks:
            for a in alerts:
                try:
                    sink.emit(a)
                except Exception as e:  # a sink failing must not stop the monitor: it is stored
                    self.metrics.set(sink_errors=self.metrics.sink_errors + 1)
                    self.log("error", "sink.error", sink=type(sink).__name__, error=str(e))

    def _flush_outbox(self) -> None:
        """Hand the sinks what a crash left stored but unsent (at-least-once sinks)."""
        if not self.sinks:
            return
        while pending := self.store.outbox_pending(limit=1000):
            self._to_sinks([a for _, a in pending])
            self.store.outbox_done(pending[-1][0])
            self.log("info", "outbox.resent", count=len(pending))

    # -- reader thread -------------------------------------------------------------------------
    def _reader(self) -> None:
        names = list(self.sources)
        per = self.poll_timeout_s / max(1, len(names))
        try:
            while not self.stop_event.is_set():
                started, got = time.monotonic(), False
                for name in names:
                    if self.stop_event.is_set():
                        return
                    src = self.sources[name]
                    batch = src.poll(per)
                    if batch is None or not len(batch):
                        continue
                    got = True
                    item = (name, batch, src.state(), time.perf_counter())
                    while not self.stop_event.is_set():
                        try:
                            self.queue.put(item, timeout=0.1)  # blocks while full: backpressure
                            break
                        except queue.Full:
                            continue
                    else:
                        return  # stopping: the batch is re-read after a restart (state not saved)
                idle = self.poll_timeout_s - (time.monotonic() - started)
                if not got and idle > 0:
                    self.stop_event.wait(idle)  # sources that return at once must not spin
        except BaseException as e:  # surfaced by run()
            self._reader_error = e
            self.stop_event.set()

    # -- engine side ---------------------------------------------------------------------------
    def _handle(self, name: str, batch: Batch, state: dict[str, Any], t_poll: float) -> None:
        out = self.engine.ingest(batch)
        alerts = list(out.alerts) + self._integrity(out)
        if out.learned:
            self._learned()
        elif out.finished or out.absorbed:
            self._baseline_changed(out)
        is_flow = isinstance(batch, FlowBatch)
        entry = dict(self._state["sources"].get(name) or {})
        entry["packets"] = int(entry.get("packets", 0)) + (0 if is_flow else len(batch))
        entry["flows"] = int(entry.get("flows", 0)) + (len(batch) if is_flow else 0)
        entry["batches"] = int(entry.get("batches", 0)) + 1
        entry["state"] = state
        self._commit(alerts, {name: entry})  # the alerts and the position after them: one transaction
        self._state["sources"][name] = entry
        self._save_state()  # a mirror of the committed state (the fallback of an older store)
        self.stats.batches += 1
        self.stats.packets += 0 if is_flow else len(batch)
        self.stats.flows += len(batch) if is_flow else 0
        self.metrics.batch(
            name, 0 if is_flow else len(batch), len(batch) if is_flow else 0, time.perf_counter() - t_poll
        )

    def _learned(self) -> None:
        self._state["learned"] = True
        self.metrics.set(learning=False)
        baselines = self.engine.baselines()  # each summary made as it is read: read once
        mature = 0

        def rows() -> Iterator[tuple[str, dict[str, Any], float, bool]]:
            nonlocal mature
            for dev_id, prof in baselines.items():
                mature += bool(prof["mature"])
                yield dev_id, prof, float(prof["maturity"]["score"]), bool(prof["mature"])

        self.store.save_baselines(self.run_id, rows())
        self._audit(
            "baseline.learned",
            "baseline",
            {"devices": len(baselines), "mature": mature, "learn_end": self.engine.t_end},
        )
        self.log(
            "info", "baseline.learned", devices=len(baselines), mature=mature, learn_end=self.engine.t_end
        )
        self._save_baseline()

    def _baseline_changed(self, out: EngineOutput) -> None:
        """Devices finished learning or behaviour was absorbed: store their profiles, audit the
        absorptions (what, when, why) and save the living baseline."""
        changed = set(out.finished) | {str(r["device_id"]) for r in out.absorbed}
        baselines = self.engine.baselines()
        profiles = [(d, baselines[d]) for d in sorted(changed) if d in baselines]
        self.store.save_baselines(
            self.run_id, [(d, p, float(p["maturity"]["score"]), bool(p["mature"])) for d, p in profiles]
        )
        if out.finished:
            self._audit("baseline.devices_learned", "baseline", {"devices": list(out.finished)})
        for rec in out.absorbed:
            self._audit("baseline.absorbed", str(rec["device_id"]), dict(rec))
        if out.absorbed:
            self.log("info", "baseline.absorbed", items=len(out.absorbed))
        self._save_baseline()

    def _apply_feedback(self) -> None:
        """Apply operators' verdicts on incidents (marked expected, or taken back) to the living
        baselines: each pending feedback row of the store once, audited, then saved."""
        try:
            pending = self.store.pending_feedback()
        except Exception as e:  # the store may be briefly unavailable (PostgreSQL restart)
            self.log("warning", "feedback.unavailable", error=f"{type(e).__name__}: {e}")
            return
        if not pending:
            return
        for fb in pending:
            undo: list[dict[str, Any]] = []
            if fb.action == "revert":
                for prior in reversed(self.store.baseline_feedback(fb.incident_id)):
                    if prior.action == "absorb" and prior.applied_at is not None and prior.id < fb.id:
                        undo = _records_of(prior.result)
                        break
            verdict = "marked expected" if fb.action == "absorb" else "no longer expected"
            why = f"incident {fb.incident_id} {verdict}"
            try:
                recs = self.engine.apply_feedback(
                    fb.action,
                    fb.device_id,
                    fb.scope,
                    fb.evidence,
                    who=fb.created_by or "operator",
                    ts=self.engine.last_ts if math.isfinite(self.engine.last_ts) else time.time(),
                    reason=why,
                    undo=undo,
                )
            except ValueError as e:
                self.store.mark_feedback_applied(fb.id, json.dumps({"error": str(e)}))
                self.log("warning", "feedback.refused", feedback=fb.id, error=str(e))
                continue
            self.store.mark_feedback_applied(fb.id, json.dumps({"records": recs}, default=str))
            event = "baseline.expected" if fb.action == "absorb" else "baseline.reverted"
            self._audit(
                event,
                fb.device_id,
                {
                    "feedback": fb.id,
                    "incident": fb.incident_id,
                    "scope": fb.scope,
                    "by": fb.created_by,
                    "records": recs,
                },
            )
            self.log("info", event, feedback=fb.id, incident=fb.incident_id, items=len(recs))
        self.engine.learned_snapshot = self.engine.snapshot() if self.engine.snapshot_baseline else None
        self.engine.baseline_changed = False
        self._save_baseline()

    # -- the saved baseline ----------------------------------------------------------------------
    @property
    def baseline_dir(self) -> Path:
        """Where the learned baseline is saved."""
        return self.state_dir / BASELINE_DIR

    def _save_baseline(self) -> None:
        """Write (and sign) the baseline the engine encoded at the learning end."""
        files, self.engine.learned_snapshot = self.engine.learned_snapshot, None
        if files is None or not self.persist_baseline:
            return
        from iotsentry.baseline.persist import write_baseline_files
        from iotsentry.integrity.signing import IntegrityError, sign_model_dir

        key, ring = self.baseline_signing_key, self.baseline_keyring

        def sign(d: Path) -> None:
            if key is not None:
                sign_model_dir(d, key, keyring=ring)

        try:
            write_baseline_files(files, self.baseline_dir, finalize=sign)
        except (OSError, ValueError, IntegrityError) as e:
            self._audit("baseline.save_failed", str(self.baseline_dir), {"error": str(e)})
            self.log("error", "baseline.save_failed", path=str(self.baseline_dir), error=str(e))
            return
        self._audit("baseline.saved", str(self.baseline_dir), {"signed": key is not None})
        self.log("info", "baseline.saved", path=str(self.baseline_dir), signed=key is not None)
        if key is None and ring is not None:
            self.log("warning", "baseline.unsigned", reason="no signing key: a restart will refuse it")

    def _restore_baseline(self) -> None:
        """Start from the saved baseline if it verifies, else learn (``baseline.reset``)."""
        from iotsentry.baseline.persist import load_baseline_with_metadata
        from iotsentry.errors import InputError
        from iotsentry.integrity.signing import IntegrityError, load_verified

        was_learned = bool(self._state.get("learned"))
        self._state["learned"] = False
        path = self.baseline_dir
        reason = "restart: no saved baseline, the baseline is learned again"
        if self.persist_baseline and path.exists():
            try:
                if self.baseline_keyring is not None:
                    baseline, meta = load_verified(path, self.baseline_keyring, load_baseline_with_metadata)
                else:
                    baseline, meta = load_baseline_with_metadata(path)
                self.engine.restore(baseline, meta)
            except (IntegrityError, InputError, ValueError, OSError) as e:
                self._audit("baseline.refused", str(path), {"error": str(e)})
                self.log("error", "baseline.refused", path=str(path), error=str(e))
                if isinstance(e, IntegrityError | InputError):
                    self.pending.append(
                        integrity_alert(
                            "baseline-integrity",
                            f"refused to load the saved baseline {path}: {e}",
                            ts=time.time(),
                            detector="baseline-loader",
                            site_id=self.site_id,
                            extra={"baseline_dir": str(path)},
                        )
                    )
                was_learned, reason = True, "the saved baseline was refused: the baseline is learned again"
            else:
                self._state["learned"] = True
                signed = self.baseline_keyring is not None
                details = {
                    "devices": len(baseline.device_ids),
                    "learn_end": self.engine.t_end,
                    "signed": signed,
                }
                self._audit("baseline.restored", str(path), details)
                self.log("info", "baseline.restored", path=str(path), **details)
                if not signed:
                    self.log(
                        "warning",
                        "baseline.unverified",
                        reason="no keyring: digests checked, not a signature",
                    )
                return
        if was_learned:
            self._audit("baseline.reset", "baseline", {"reason": reason})
            self.log("warning", "baseline.reset", reason=reason)

    def _integrity(self, out: EngineOutput) -> list[Alert]:
        """Drift and change-rate verdicts on the scored packets."""
        alerts: list[Alert] = []
        if self.engine.learning:
            return alerts
        for b, ctx in out.contexts:
            alerts += self._churn.observe_packets(b, ctx, self.engine.index.ids)
        scores = out.scores
        if len(scores):
            if self._drift_ref < DRIFT_REFERENCE:
                take = scores[: DRIFT_REFERENCE - self._drift_ref]
                self._drift.add_reference(take)
                self._drift_ref += len(take)
                if self._drift_ref >= DRIFT_REFERENCE:
                    self._drift.freeze()
                scores = scores[len(take) :]
            if len(scores) and self._drift.edges_ is not None:
                self._drift.update(scores)
                res = self._drift.check(self.engine.last_ts)
                if res.drifted and not self._drifted and res.alert is not None:
                    alerts.append(res.alert)
                    self.log("warning", "drift.detected", psi=res.psi, ks=res.ks_stat)
                self._drifted = res.drifted
        return alerts

    def _canary(self) -> None:
        from iotsentry.integrity.canary import DeviceIdentity, profile_detect_fn, run_canaries

        det = self.engine.detector
        if det is None:
            return
        devices = self.engine.devices()
        gw = next((d for d in devices if d.is_gateway), None)
        ids: list[DeviceIdentity] = []
        for d in devices:
            if d.is_gateway or d.device_id not in self.engine.index.ids:
                continue
            try:
                ids.append(DeviceIdentity.from_device(d, gw))
            except ValueError:
                continue
        if not ids:
            self.log("info", "canary.skipped", reason="no device with a MAC and an IPv4 address")
            return
        identity = ids[self._canary_next % len(ids)]
        self._canary_next += 1
        start = max(self.engine.last_ts, self.engine.t_end) + WINDOW_S
        fn = profile_detect_fn(det, self.engine.index, self.engine.tracker.ip_names)
        report = run_canaries(
            fn, identity, start_ts=start, site_id=self.site_id, detector_name=det.name, audit=self.audit
        )
        ran_at = time.time()
        self.store.add_canary_results(
            CanaryResult(
                ts=ran_at,
                detector=det.name,
                attack_class=cls,
                detected=cov.detected,
                score=cov.score,
                threshold=cov.threshold,
                device_id=report.device_id,
                canary_run=report.run_id,
            )
            for cls, cov in report.coverage.items()
        )
        detected = sum(1 for c in report.coverage.values() if c.detected)
        self.metrics.canary(detected, len(report.coverage))
        self.stats.canary_runs += 1
        self.log("info", "canary.result", device=identity.device_id, detected=detected, missed=report.missed)
        self._commit(report.alerts)

    def _upsert_devices(self) -> None:
        """Inventory into the store with the counters added since the last upsert."""
        delta: list[Device] = []
        for d in self.engine.devices():
            pk, by = self._stored_counts.get(d.device_id, (0, 0))
            if (d.packets, d.bytes) == (pk, by) and d.device_id in self._stored_counts:
                continue
            delta.append(replace(d, packets=d.packets - pk, bytes=d.bytes - by))
            self._stored_counts[d.device_id] = (d.packets, d.bytes)
        if delta:
            self.store.upsert_devices(delta)

    def _periodic(self, now: float, last_inventory: float) -> float:
        if now >= self._feedback_due:
            self._feedback_due = now + FEEDBACK_INTERVAL_S
            if not self.engine.learning:
                self._apply_feedback()
        if self.canary_interval_s > 0 and now >= self._canary_due and not self.engine.learning:
            self._canary_due = now + self.canary_interval_s
            try:
                self._canary()
            except Exception as e:
                self.log("error", "canary.error", error=f"{type(e).__name__}: {e}")
        if now - last_inventory >= self.inventory_interval_s:
            self._upsert_devices()
            return now
        return last_inventory

    # -- the loop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to stop (thread- and signal-safe)."""
        self.stop_event.set()

    def run(self, *, idle_exit_s: float | None = None, handle_signals: bool = True) -> MonitorStats:
        """Run until :meth:`stop`, SIGTERM/SIGINT, or ``idle_exit_s`` seconds without a batch.

        Returns
        -------
        MonitorStats
            Counters of this run.
        """
        restore: list[tuple[signal.Signals, Any]] = []
        if handle_signals and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, _frame: FrameType | None) -> None:
                self.log("info", "signal", signal=signal.Signals(signum).name)
                self.stop()

            for s in (signal.SIGTERM, signal.SIGINT):
                restore.append((s, signal.signal(s, on_signal)))
        self._load_state()
        self.run_id = self.store.start_run(self.command, {"sources": list(self.sources)})
        self._flush_outbox()
        self._audit("serve.start", "serve", {"run_id": self.run_id, "sources": list(self.sources)})
        self.log(
            "info", "serve.start", run_id=self.run_id, sources=list(self.sources), state=str(self.state_path)
        )
        self._commit(self.pending)
        self.pending = []
        if not self.engine.learning:
            self._apply_feedback()  # verdicts given while the monitor was down, before new traffic
        reader = threading.Thread(target=self._reader, name="iotsentry-serve-reader", daemon=True)
        reader.start()
        status = "ok"
        last_batch = time.monotonic()
        last_inventory = time.monotonic()
        try:
            while not self.stop_event.is_set():
                depth = self.queue.qsize()
                self.stats.max_queue_depth = max(self.stats.max_queue_depth, depth)
                self.metrics.set(queue_depth=depth, learning=self.engine.learning)
                try:
                    item = self.queue.get(timeout=0.1)
                except queue.Empty:
                    now = time.monotonic()
                    last_inventory = self._periodic(now, last_inventory)
                    if idle_exit_s is not None and now - last_batch >= idle_exit_s:
                        break
                    continue
                self._handle(*item)
                last_batch = time.monotonic()
                last_inventory = self._periodic(last_batch, last_inventory)
        except BaseException as e:
            status = "failed"
            self.log("error", "serve.failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            self.stop_event.set()
            reader.join(timeout=5.0)
            if status == "ok":
                while True:  # drain: batches already polled are processed, not re-read
                    try:
                        self._handle(*self.queue.get_nowait())
                    except queue.Empty:
                        break
                flushed = self.engine.flush()
                self._commit(list(flushed.alerts) + self._integrity(flushed))
                if flushed.learned:
                    self._learned()
                elif flushed.finished or flushed.absorbed:
                    self._baseline_changed(flushed)
                if not self.engine.learning:
                    self._apply_feedback()
                self._save_state()
            self._upsert_devices()
            if self._reader_error is not None:
                status = "failed"
                self.log(
                    "error",
                    "source.failed",
                    error=f"{type(self._reader_error).__name__}: {self._reader_error}",
                )
            self.stats.sources = self.source_counters()
            self.store.finish_run(
                self.run_id,
                status,
                {
                    "batches": self.stats.batches,
                    "packets": self.stats.packets,
                    "alerts": self.stats.alerts_stored,
                    "incidents_opened": self.stats.incidents_opened,
                    "incidents_escalated": self.stats.incidents_escalated,
                    "notices": self.stats.notices,
                    "sent": self.stats.alerts_sent,
                },
            )
            self._audit("serve.stop", "serve", {"run_id": self.run_id, "status": status})
            self.log(
                "info", "serve.stop", status=status, batches=self.stats.batches, packets=self.stats.packets
            )
            for s, old in restore:
                signal.signal(s, old)
        if self._reader_error is not None:
            raise self._reader_error
        return self.stats

    def close(self) -> None:
        """Close sources, sinks, the audit log and the store."""
        for src in self.sources.values():
            src.close()
        for sink in self.sinks:
            sink.close()
        if self.audit is not None:
            self.audit.close()
        self.store.close()


def build_monitor(
    cfg: ServeConfig, *, log: JsonLog | None = None, extra_sinks: list[AlertSink] | None = None
) -> Monitor:
    """Build a :class:`Monitor` from a configuration (a refused model becomes a pending
    integrity alert and an audit record; the monitor runs on without the flow model)."""
    log = log or JsonLog()
    store = open_store(cfg.store)
    audit = AuditLog(cfg.audit_path, actor="iotsentry-serve") if cfg.audit_path is not None else None
    pending: list[Alert] = []
    flow_model = None
    if cfg.model_dir is not None and cfg.model_keyring is not None:
        flow_model, refusal = _load_model(cfg.model_dir, cfg.model_keyring, audit, log)
        if refusal is not None:
            pending.append(
                integrity_alert(
                    "model-integrity",
                    f"refused to load the flow model {cfg.model_dir}: {refusal}",
                    ts=time.time(),
                    detector="model-loader",
                    site_id=cfg.site_id,
                    extra={"model_dir": str(cfg.model_dir)},
                )
            )
    engine = StreamEngine(
        cfg.learning_seconds, site_id=cfg.site_id, margin=cfg.margin, flow_model=flow_model, living=cfg.living
    )
    keyring = cfg.state_keyring or cfg.model_keyring
    sources = {s.name: make_source(s) for s in cfg.sources}
    sinks = [sink_from_uri(s.uri) for s in cfg.sinks] + list(extra_sinks or [])
    mon = Monitor(
        sources,
        engine,
        store,
        cfg.resolved_state_dir(),
        sinks=sinks,
        queue_size=cfg.monitor.queue_size,
        poll_timeout_s=cfg.monitor.poll_timeout_s,
        audit=audit,
        canary_interval_s=cfg.canary_interval_s,
        inventory_interval_s=cfg.monitor.inventory_interval_s,
        site_id=cfg.site_id,
        log=log,
        baseline_keyring=keyring,
        baseline_signing_key=cfg.state_signing_key or _active_signing_key(keyring),
    )
    mon.pending = pending
    return mon


def _active_signing_key(keyring: Path | None) -> Path | None:
    """The private key file (``*.key``) of the keyring's active key, when it sits in the keyring's
    folder and is readable (as ``iotsentry keys generate / rotate`` leave it); else ``None``."""
    if keyring is None:
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from iotsentry.integrity.signing import IntegrityError, key_id_of, load_keyring

    try:
        active = load_keyring(keyring).active
    except IntegrityError:
        return None
    if active is None:
        return None
    folder = keyring if keyring.is_dir() else keyring.parent
    for path in sorted(folder.glob("*.key")):
        try:
            priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            continue
        if isinstance(priv, Ed25519PrivateKey) and key_id_of(priv.public_key()) == active.key_id:
            return path
    return None


def _load_model(
    model_dir: Path, keyring: Path, audit: AuditLog | None, log: Callable[..., None]
) -> tuple[Any, str | None]:
    """(runner, None) after a verified load, or (None, why) when the artifact was refused."""
    from iotsentry.errors import InputError
    from iotsentry.integrity.signing import IntegrityError

    try:
        runner = load_flow_model_verified(model_dir, keyring)
    except (IntegrityError, InputError) as e:
        if audit is not None:
            audit.append("model.refused", str(model_dir), {"error": str(e)})
        log("error", "model.refused", model_dir=str(model_dir), error=str(e))
        return None, str(e)
    if audit is not None:
        audit.append(
            "model.load",
            str(model_dir),
            {"model": runner.name, "features": len(runner.manifest.get("feature_names", []))},
        )
    log("info", "model.load", model_dir=str(model_dir), model=runner.name)
    return runner, None
