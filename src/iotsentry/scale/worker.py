"""One worker of a sharded analysis: a detection engine for one share of the devices."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.engine import PEER_MIN_WINDOWS, DetectionEngine, EngineOutput
from iotsentry.schema import AppEvent, PacketBatch

__all__ = ["ShardWorker"]


class ShardWorker:
    """A :class:`~iotsentry.engine.DetectionEngine` with ``shard=(k, n)``, driven batch by batch
    (run as a Ray actor; see :mod:`iotsentry.scale`).

    Parameters
    ----------
    shard, shards
        This worker's number and the number of workers.
    coordinator
        The coordinator actor of the hourly group-knowledge exchange (``None``: one worker).
    engine_args
        Keyword arguments of the engine (``learn_seconds``, ``site_id``, ``margin``, ...).
    """

    def __init__(self, shard: int, shards: int, coordinator: Any, engine_args: dict[str, Any]) -> None:
        self.engine = DetectionEngine(shard=(shard, shards), **engine_args)
        self.engine.score_rows = []
        self.coordinator = coordinator
        if coordinator is not None:
            self.engine.exchange = self._exchange
        self._peer_sent = False
        self._ids_sent = 0

    def _exchange(self, now: float, keys: list[npt.NDArray[np.uint64]]) -> list[npt.NDArray[np.uint64]]:
        import ray

        assert self.engine.shard is not None
        got: list[npt.NDArray[np.uint64]] = ray.get(
            self.coordinator.exchange.remote(self.engine.shard[0], int(now // 3600.0), keys)
        )
        return got

    def step(
        self, batch: PacketBatch, events: list[AppEvent] | None, learn_until: float | None = None
    ) -> dict[str, Any]:
        """Ingest one batch (``events``: its application events if already parsed, else parsed
        here from the batch's raw bytes)."""
        if learn_until is not None:
            self.engine.learn_until = learn_until
        return self._result(self.engine.ingest(batch, events))

    def flush(self) -> dict[str, Any]:
        """Process the carried window (end of input)."""
        return self._result(self.engine.flush())

    def _result(self, out: EngineOutput) -> dict[str, Any]:
        rows = self.engine.score_rows or []
        self.engine.score_rows = []
        res: dict[str, Any] = {
            "absorbed": out.absorbed,
            "finished": out.finished,
            "learned": out.learned,
            "scored": out.scored,
            "pos": np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64),
            "device": np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int32),
            "scores": np.concatenate([r[2] for r in rows]) if rows else np.zeros(0),
            "peer": None,
            "new_ids": self.engine.baseline.device_ids[self._ids_sent :],
        }
        self._ids_sent = len(self.engine.baseline.device_ids)
        if self.engine.peer_snapshot is not None and not self._peer_sent:
            self._peer_sent = True
            res["peer"] = self.engine.peer_snapshot
        return res

    def snaplen(self) -> int:
        """Largest captured frame length this worker saw."""
        return int(self.engine.visibility.snaplen)

    def summary(self, snaplen: int) -> dict[str, Any]:
        """Everything the driver needs at the end: this worker's devices' baselines, alerts,
        visibility (with the whole input's snap length), and the shared inventory."""
        eng = self.engine
        eng.visibility.snaplen = max(eng.visibility.snaplen, snaplen)
        owned = eng.owned_ids()
        return {
            "device_ids": list(eng.baseline.device_ids),
            "owned": owned,
            "devices": [d for d in eng.devices() if d.device_id in owned],
            "all_devices": eng.devices() if eng.shard is not None and eng.shard[0] == 0 else [],
            "baselines": dict(eng.baselines()),
            "alerts": eng.policy.alerts(),
            "suppressed": eng.policy.suppressed,
            "notices": eng.policy.notices,
            "visibility": eng.visibility.site(),
            "t_end": eng.t_end,
            "app_events": eng.app_events,
            "token_text": dict(eng._tokens.text) if eng.shard is not None and eng.shard[0] == 0 else {},
        }

    def peer_vectors(self, min_windows: int = PEER_MIN_WINDOWS) -> tuple[list[str], npt.NDArray[np.float64]]:
        """Profile vectors of this worker's devices whose learning ended (peer-group summary)."""
        return self.engine.peer_vectors(min_windows)
