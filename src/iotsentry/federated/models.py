"""The two models sites can train together: the supervised flow MLP and the flow autoencoder.

Both expose what federation needs — ``get_weights`` / ``set_weights`` (plain float32 arrays),
``partial_fit(X, y, epochs)`` from the current weights, and ``score(X)`` (higher = more
malicious) — so the ClientApp, the strategies and the baselines do not care which one runs.

* ``mlp``: :class:`~iotsentry.detectors.flow_mlp.FlowMLP` (benign / malicious classes), score
  ``P(malicious)``; decision at 0.5.
* ``ae``: :class:`~iotsentry.detectors.flow_autoencoder.FlowAutoencoder`, trained on each
  site's *benign* rows only (labels are used to drop the malicious ones, nothing else), score
  = reconstruction error; no fixed decision (a threshold is calibrated on benign rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.flow_autoencoder import FlowAutoencoder
from iotsentry.detectors.flow_mlp import FlowMLP

__all__ = ["DEFAULT_HIDDEN", "MODEL_KINDS", "AEModel", "FedModel", "n_train_rows", "new_model"]

CLASSES = ("benign", "malicious")
MODEL_KINDS = ("mlp", "ae")
DEFAULT_HIDDEN = {"mlp": (64, 32), "ae": (32, 8)}


class FedModel(Protocol):
    def get_weights(self) -> list[npt.NDArray[np.float32]]: ...
    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None: ...
    def partial_fit(self, X: npt.NDArray[Any], y: Any, epochs: int | None = None) -> Any: ...
    def score(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]: ...


class AEModel:
    """:class:`FlowAutoencoder` behind the federated-model interface (benign rows only)."""

    def __init__(self, hidden: Sequence[int], seed: int, mean: np.ndarray, scale: np.ndarray) -> None:
        self.ae = FlowAutoencoder(hidden=tuple(int(h) for h in hidden), seed=seed)
        self.ae.set_scaler(mean, scale)
        self.n_features = len(mean)

    def init_weights(self) -> Self:
        self.ae.init_weights(self.n_features)
        return self

    def get_weights(self) -> list[npt.NDArray[np.float32]]:
        return self.ae.get_weights()

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        self.ae.set_weights(weights)

    def partial_fit(self, X: npt.NDArray[Any], y: Any, epochs: int | None = None) -> Self:
        benign = np.asarray(y, dtype=str) == CLASSES[0]
        if benign.any():
            self.ae.partial_fit(np.asarray(X)[benign], epochs=epochs)
        return self

    def score(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        return self.ae.score_samples(np.asarray(X))


def n_train_rows(kind: str, y: npt.ArrayLike) -> int:
    """Rows a site actually trains on (its FedAvg weight): benign rows only for ``ae``."""
    labels = np.asarray(y, dtype=str)
    return int((labels == CLASSES[0]).sum()) if kind == "ae" else len(labels)


def new_model(kind: str, hidden: Sequence[int], seed: int, mean: np.ndarray, scale: np.ndarray) -> Any:
    """A model of ``kind`` with the shared scaler (weights still to be set or initialised)."""
    if kind == "mlp":
        m = FlowMLP(hidden=hidden, classes=list(CLASSES), seed=seed)
        m.set_scaler(mean, scale)
        m.classes_ = np.array(CLASSES, dtype=str)
        return m
    if kind == "ae":
        return AEModel(hidden, seed, mean, scale)
    raise ValueError(f"unknown federated model {kind!r}; choose from {', '.join(MODEL_KINDS)}")
