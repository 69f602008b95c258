"""What the followers of growing inputs share: the poll/follow loop and atomic JSON state files."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from iotsentry.schema import FlowBatch, PacketBatch

__all__ = ["READ_CHUNK", "save_json"]

READ_CHUNK = 16 << 20
B = TypeVar("B", PacketBatch, FlowBatch)


def save_json(path: str | Path, data: dict[str, Any]) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, p)


class _Follower(Generic[B]):
    """Shared blocking loop over a non-blocking ``poll()``."""

    def poll(self) -> B:  # pragma: no cover - overridden
        raise NotImplementedError

    def follow(
        self, interval: float = 0.5, *, timeout: float | None = None, stop: threading.Event | None = None
    ) -> Iterator[B]:
        """Yield non-empty batches as data arrives.

        Parameters
        ----------
        interval
            Sleep between polls that found nothing (never busy-spins).
        timeout
            Return after this many seconds without new data (``None``: never).
        stop
            Return once this event is set.
        """
        last = time.monotonic()
        while stop is None or not stop.is_set():
            batch = self.poll()
            if len(batch):
                last = time.monotonic()
                yield batch
                continue
            if timeout is not None and time.monotonic() - last >= timeout:
                return
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)


# ============================================================================ rotating pcaps
