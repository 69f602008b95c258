"""The driver of a sharded analysis (see :mod:`iotsentry.scale`)."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.peer_groups import PeerGroups, vector_findings
from iotsentry.engine import EngineOutput, ScoreSink, peer_outlier_alerts
from iotsentry.schema import Alert, Device, PacketBatch

__all__ = ["ShardedEngine", "ShardedResult", "start_ray"]


def start_ray(address: str | None = None, workers: int = 2) -> None:
    """Join the Ray cluster at ``address`` (``ray start --head`` on one machine, ``ray start
    --address=HEAD:6379`` on the others; ``auto`` finds a local one), or start a private one
    on this machine with room for ``workers`` actors. Does nothing when Ray already runs here.
    """
    import ray

    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kw)
    else:
        # the driver and the workers share this machine's cores; actors need no reserved CPU
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), **kw)


@dataclass
class ShardedResult:
    """What the workers hold at the end of the input, merged."""

    device_ids: list[str]
    devices: list[Device]
    alerts: list[Alert]
    baselines: dict[str, dict[str, Any]]
    suppressed: int
    notices: int
    visibility: dict[str, Any]
    t_end: float
    app_events: int
    token_text: dict[int, str]
    peer_ids: list[str] = field(default_factory=list)
    peer_vectors: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))


class ShardedEngine:
    """Runs ``workers`` :class:`~iotsentry.scale.worker.ShardWorker` actors over one stream.

    :meth:`ingest` puts the batch (columns and raw bytes, zero-copy numpy) in the object store
    and hands it to every worker, which parses its application fields (unpickling a batch's
    parsed events cost a worker twice what parsing them does); while the workers process it,
    the caller reads
    and decodes the next batch (results come back one batch late, all of them by
    :meth:`flush`). Per-packet scores are merged back into stream order for ``score_sink``.
    """

    def __init__(
        self,
        workers: int,
        learn_seconds: float,
        *,
        site_id: str = "default",
        margin: float = 2.0,
        drift_guard: bool = False,
        learn_until: float | None = None,
        ray_address: str | None = None,
    ) -> None:
        if workers < 2:
            raise ValueError("a sharded engine needs at least two workers")
        import ray

        from iotsentry.scale.coordinator import Coordinator
        from iotsentry.scale.worker import ShardWorker

        start_ray(ray_address, workers)
        self.workers_n = workers
        self.coordinator: Any = ray.remote(num_cpus=0)(Coordinator).remote(workers)
        args = {
            "learn_seconds": learn_seconds,
            "site_id": site_id,
            "margin": margin,
            "drift_guard": drift_guard,
            "learn_until": learn_until,
        }
        actor = ray.remote(num_cpus=0)(ShardWorker)
        self.workers: list[Any] = [actor.remote(k, workers, self.coordinator, args) for k in range(workers)]
        self.policy = AlertPolicy(site_id=site_id)
        """The driver's own policy: the peer-group alerts (the workers keep the others)."""
        self.score_sink: ScoreSink | None = None
        self.learn_until: float | None = learn_until
        self._sent_until: float | None = learn_until
        self.packets = 0
        self._pending: list[Any] = []
        self._held: deque[tuple[int, PacketBatch]] = deque()
        self._labels: dict[str, str] = {}
        self.device_ids: list[str] = []
        """Device ids by device number (the same numbering on every worker), as far as known."""

    # -- input -------------------------------------------------------------------------------
    def ingest(self, batch: PacketBatch) -> EngineOutput:
        """Hand one batch to the workers; returns what the previous batch produced."""
        import ray

        out = self._collect()
        if not len(batch):
            return out
        until = self.learn_until if self.learn_until != self._sent_until else None
        self._sent_until = self.learn_until
        # numpy columns and raw bytes go through the object store without copies; each worker
        # parses the application fields itself (cheaper than unpickling parsed events)
        b_ref = ray.put(batch)
        self._pending = [w.step.remote(b_ref, None, until) for w in self.workers]
        self._held.append((self.packets, batch))
        self.packets += len(batch)
        out.packets = len(batch)
        return out

    def flush(self) -> EngineOutput:
        """Wait for the last batch and process the carried windows."""
        out = self._collect()
        self._pending = [w.flush.remote() for w in self.workers]
        more = self._collect()
        out.alerts += more.alerts
        out.absorbed += more.absorbed
        out.finished += more.finished
        out.scored += more.scored
        out.learned |= more.learned
        return out

    def _collect(self) -> EngineOutput:
        import ray

        out = EngineOutput()
        if not self._pending:
            return out
        results: list[dict[str, Any]] = ray.get(self._pending)
        self._pending = []
        self.device_ids += results[0]["new_ids"]
        for r in results:
            out.absorbed += r["absorbed"]
            out.finished += r["finished"]
            out.scored += int(r["scored"])
            out.learned |= bool(r["learned"])
        out.absorbed.sort(key=lambda x: (float(x["ts"]), str(x["device_id"])))
        peers = [r["peer"] for r in results]
        if all(p is not None for p in peers):
            out.alerts += self._peer_groups(peers)
        self._scores(results)
        return out

    def _scores(self, results: list[dict[str, Any]]) -> None:
        """Per-packet scores of the processed packets, merged into stream order."""
        pos = np.concatenate([r["pos"] for r in results])
        if not len(pos):
            return
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        device = np.concatenate([r["device"] for r in results])[order]
        scores = np.concatenate([r["scores"] for r in results])[order]
        if self.score_sink is not None:
            self.score_sink(self._rows(pos), device, scores)
        while self._held and self._held[0][0] + len(self._held[0][1]) <= pos[-1] + 1:
            self._held.popleft()  # every packet of the oldest batch is processed

    def _rows(self, pos: npt.NDArray[np.int64]) -> PacketBatch:
        parts = []
        for first, b in self._held:
            sel = pos[(pos >= first) & (pos < first + len(b))] - first
            if len(sel):
                parts.append(b.take(sel))
        return parts[0] if len(parts) == 1 else PacketBatch.concat(parts)

    def _peer_groups(self, snapshots: list[dict[str, Any]]) -> list[Alert]:
        """The peer-group check over every worker's devices (as one engine runs it)."""
        ids: list[str] = []
        rows: list[npt.NDArray[np.float64]] = []
        numbers: list[int] = []
        labels: dict[str, str] = {}
        last_ts: dict[str, float] = {}
        for s in snapshots:
            ids += s["ids"]
            numbers += s["numbers"]
            if len(s["ids"]):
                rows.append(np.asarray(s["vectors"]))
            labels.update(s["labels"])
            last_ts.update(s["last_ts"])
        if len(ids) < 3:
            return []
        order = np.argsort(np.array(numbers), kind="stable")
        ids = [ids[i] for i in order.tolist()]
        X = np.vstack(rows)[order]
        return peer_outlier_alerts(self.policy, vector_findings(ids, X, labels, PeerGroups()), last_ts)

    # -- results -------------------------------------------------------------------------------
    def result(self) -> ShardedResult:
        """Merge what the workers hold (call after :meth:`flush`)."""
        import ray

        snap = max(ray.get([w.snaplen.remote() for w in self.workers]))
        parts: list[dict[str, Any]] = ray.get([w.summary.remote(snap) for w in self.workers])
        owner = {d.device_id: d for p in parts for d in p["devices"]}
        devices = [owner.get(d.device_id, d) for d in parts[0]["all_devices"]]
        alerts = [a for p in parts for a in p["alerts"]] + self.policy.alerts()
        alerts.sort(key=lambda a: (a.timestamp, a.device_id))
        baselines: dict[str, dict[str, Any]] = {}
        for p in parts:
            baselines.update(p["baselines"])
        order = {d: i for i, d in enumerate(parts[0]["device_ids"])}
        baselines = dict(sorted(baselines.items(), key=lambda kv: order.get(kv[0], len(order))))
        vis = _sum_visibility([p["visibility"] for p in parts])
        vectors = ray.get([w.peer_vectors.remote() for w in self.workers])
        pid = [d for ids, _ in vectors for d in ids]
        pX = [x for ids, x in vectors if len(ids)]
        porder = np.argsort([order[d] for d in pid], kind="stable")
        return ShardedResult(
            device_ids=parts[0]["device_ids"],
            devices=devices,
            alerts=alerts,
            baselines=baselines,
            suppressed=sum(int(p["suppressed"]) for p in parts) + self.policy.suppressed,
            notices=sum(int(p["notices"]) for p in parts) + self.policy.notices,
            visibility=vis,
            t_end=float(parts[0]["t_end"]),
            app_events=int(parts[0]["app_events"]),
            token_text=parts[0]["token_text"],
            peer_ids=[pid[i] for i in porder.tolist()],
            peer_vectors=np.vstack(pX)[porder] if pX else np.zeros((0, 0)),
        )

    def close(self) -> None:
        """End the workers (the Ray runtime stays for the process)."""
        import ray

        for w in [*self.workers, self.coordinator]:
            ray.kill(w)
        self.workers = []


def _sum_visibility(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if k == "snaplen":
                out[k] = max(int(out.get(k, 0)), int(v))
            else:
                out[k] = int(out.get(k, 0)) + int(v)
    return out
