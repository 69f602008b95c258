"""Packet-stream anomaly detection: damped statistics per packet + a registered detector.

:class:`PacketStreamDetector` turns packets into :class:`~iotsentry.features.damped.DampedStats`
features and scores them with a detector of the registry (``kitnet`` by default, Kitsune's
design; ``iforest`` as a reference). The statistics continue across calls, so packets must be
fed once, in stream order.

Command line (wired by the CLI)::

    iotsentry score INPUT --learn-seconds S --model kitnet|iforest --out scores.csv
        -> index, ts, scores = score_capture_with_model(Path(INPUT), S, model)
           one row per packet: index, ts, device (not known here: leave empty), score
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self, cast

import numpy as np
import numpy.typing as npt

from iotsentry.capture.reader import read_packets
from iotsentry.detectors import kitnet as _kitnet  # noqa: F401  (registers kitnet and iforest)
from iotsentry.detectors.base import REGISTRY, Detector
from iotsentry.features.damped import DEFAULT_LAMBDAS, DampedStats
from iotsentry.schema import PacketBatch

__all__ = ["PACKET_MODELS", "PacketStreamDetector", "score_capture_with_model"]

PACKET_MODELS = ("kitnet", "iforest")


class PacketStreamDetector:
    """Damped per-packet statistics scored by a registered detector.

    Parameters
    ----------
    model
        Registered detector name (``kitnet`` or ``iforest``).
    lambdas, max_entries
        Passed to :class:`~iotsentry.features.damped.DampedStats`.
    model_params
        Constructor parameters of the detector (its defaults otherwise).
    """

    def __init__(
        self,
        model: str = "kitnet",
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        max_entries: int = 1_000_000,
        model_params: dict[str, Any] | None = None,
    ) -> None:
        if model not in REGISTRY:
            raise ValueError(f"unknown model {model!r}; choose from {', '.join(PACKET_MODELS)}")
        self.model = model
        self.lambdas = tuple(lambdas)
        self.max_entries = max_entries
        self.model_params = dict(model_params or {})
        self.stats = DampedStats(self.lambdas, max_entries=max_entries)
        self.detector: Detector | None = None

    def features(self, batch: PacketBatch) -> npt.NDArray[np.float32]:
        """Damped features of ``batch`` (continues the statistics)."""
        return self.stats.transform(batch)

    def fit_features(self, X: npt.NDArray[Any]) -> Self:
        """Fit the detector on feature rows already extracted by :meth:`features`."""
        self.detector = REGISTRY[self.model](**self.model_params).fit(X)
        return self

    def fit_packets(self, batches: Iterable[PacketBatch]) -> Self:
        """Extract the features of every packet of ``batches`` (the grace period), then fit."""
        parts = [self.features(b) for b in batches]
        X = np.vstack(parts) if parts else np.zeros((0, self.stats.n_features), np.float32)
        return self.fit_features(X)

    def score_packets(self, batch: PacketBatch) -> npt.NDArray[np.float64]:
        """Scores of the packets of ``batch`` (higher = more anomalous), continuing the statistics."""
        if self.detector is None:
            raise RuntimeError("fit the detector first")
        return self.detector.score_samples(cast(npt.NDArray[np.float64], self.features(batch)))


def score_capture_with_model(
    path: str | Path,
    learn_seconds: float,
    model: str = "kitnet",
    *,
    batch_size: int = 262_144,
    model_params: dict[str, Any] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Learn from the packets of the first ``learn_seconds`` of a capture, then score all of it.

    Pass 1 extracts features up to the first batch lying entirely after
    ``first_ts + learn_seconds`` and fits on the packets with ``ts`` before that point; pass 2
    restarts the statistics and scores every packet in file order with the final model (the
    learning-period packets included), so memory holds the learning period's features only.

    Returns
    -------
    index, ts, scores
        Frame numbers, timestamps and scores of every packet, in file order.
    """
    det = PacketStreamDetector(model, model_params=model_params)
    first: float | None = None
    learn: list[npt.NDArray[np.float32]] = []
    for b in read_packets(path, batch_size=batch_size):
        if not len(b):
            continue
        if first is None:
            first = float(b.ts[0])
        end = first + learn_seconds
        X = det.features(b)
        learn.append(X[b.ts < end])
        if float(b.ts.min()) >= end:
            break
    if first is None:
        z = np.zeros(0)
        return z.astype(np.int64), z, z
    X = np.vstack(learn)
    if len(X) < 2:
        raise ValueError(f"{path}: fewer than two packets in the first {learn_seconds} s to learn from")
    det.fit_features(X)
    det.stats.reset()
    idx, ts, sc = [], [], []
    for b in read_packets(path, batch_size=batch_size):
        idx.append(b.index)
        ts.append(b.ts)
        sc.append(det.score_packets(b))
    return np.concatenate(idx), np.concatenate(ts), np.concatenate(sc)
