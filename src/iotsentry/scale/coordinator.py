"""The rendezvous of the workers at every clock hour: group knowledge each worker's devices
added is handed to the others (see :mod:`iotsentry.scale`)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Coordinator"]


class Coordinator:
    """Collects one contribution per worker for each round (a clock hour) and gives every worker
    the others' contributions once all have arrived. Run as an asyncio Ray actor, so that the
    workers waiting in a round do not block the one still on its way."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a coordinator needs at least one worker")
        self.workers = workers
        self._rounds: dict[int, dict[str, Any]] = {}

    async def exchange(
        self, worker: int, round_id: int, keys: list[npt.NDArray[np.uint64]]
    ) -> list[npt.NDArray[np.uint64]]:
        """Hand in this worker's keys for ``round_id``; returns the other workers' keys."""
        r = self._rounds.setdefault(round_id, {"got": {}, "event": asyncio.Event(), "done": 0})
        r["got"][worker] = keys
        if len(r["got"]) == self.workers:
            r["event"].set()
        await r["event"].wait()
        out = [a for w, arrays in sorted(r["got"].items()) if w != worker for a in arrays]
        r["done"] += 1
        if r["done"] == self.workers:
            del self._rounds[round_id]
        return out
