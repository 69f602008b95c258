"""A small PyTorch MLP flow classifier whose parameters are plain numpy arrays.

The network is ``standardise -> Linear -> ReLU -> ... -> Linear -> softmax`` over the classes
of :func:`~iotsentry.detectors.flow_classifier.flow_classes`. Training uses PyTorch (imported
lazily) with Adam, cross-entropy weighted by :func:`~iotsentry.detectors.flow_classifier.
balanced_weights`, and a seeded generator for initialisation and shuffling, so the same data
and seed give the same weights. Inference is a numpy forward pass (no torch import needed).

Federated learning uses :meth:`FlowMLP.get_weights` / :meth:`FlowMLP.set_weights` (the layer
parameters ``[W0, b0, W1, b1, ...]``, ``W`` shaped ``(out, in)`` like ``torch.nn.Linear``) and
:meth:`FlowMLP.partial_fit` (more epochs from the current weights). The standardisation
(``mean_``, ``scale_``) is not part of those weights: give every site the same one with
:meth:`FlowMLP.set_scaler` (or fit it on pooled statistics) before federating.

The malicious-vs-benign score is ``1 - P(benign)``; the predicted class is the most likely one,
or ``unknown`` when its probability is below ``min_prob``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.flow_classifier import UNKNOWN, balanced_weights

__all__ = ["FlowMLP"]

F64 = npt.NDArray[np.float64]


class FlowMLP:
    """Multi-class MLP on flow feature rows.

    Parameters
    ----------
    hidden
        Widths of the hidden layers.
    epochs
        Passes over the data in :meth:`fit` (and by default in :meth:`partial_fit`).
    batch_size, lr, weight_decay
        Mini-batch size, Adam learning rate and weight decay.
    min_prob
        Below this highest class probability a flow is ``unknown``.
    classes
        Fixed class list (``benign`` first), e.g. shared by federated sites; default: the
        classes seen in :meth:`fit`.
    seed
        Seed of the initialisation and of the shuffling.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (64, 32),
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        min_prob: float = 0.5,
        classes: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.hidden = [int(h) for h in hidden]
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_prob = min_prob
        self.classes = list(classes) if classes is not None else None
        self.seed = seed
        self.weights_: list[npt.NDArray[np.float32]]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-ready)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    # -- parameters as arrays -----------------------------------------------------------------

    def get_weights(self) -> list[npt.NDArray[np.float32]]:
        """Layer parameters ``[W0, b0, W1, b1, ...]`` (copies, float32)."""
        return [np.array(w, dtype=np.float32, copy=True) for w in self.weights_]

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        """Replace the layer parameters (same shapes as :meth:`get_weights`)."""
        new = [np.array(w, dtype=np.float32, copy=True) for w in weights]
        if hasattr(self, "weights_"):
            old = [w.shape for w in self.weights_]
            if [w.shape for w in new] != old:
                raise ValueError(f"weight shapes {[w.shape for w in new]} differ from {old}")
        self.weights_ = new

    def set_scaler(self, mean: npt.ArrayLike, scale: npt.ArrayLike) -> None:
        """Fix the standardisation (``(x - mean) / scale``) instead of learning it in :meth:`fit`."""
        self._scaler(mean, scale)
        self._scaler_fixed = True

    def _scaler(self, mean: npt.ArrayLike, scale: npt.ArrayLike) -> None:
        s = np.asarray(scale, dtype=np.float32)
        self.mean_ = np.asarray(mean, dtype=np.float32)
        self.scale_ = np.where(s > 1e-6, s, 1.0).astype(np.float32)

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Everything learned, as numpy arrays (for ``np.savez``)."""
        out: dict[str, npt.NDArray[Any]] = {
            "classes_": self.classes_.astype(str),
            "mean_": self.mean_,
            "scale_": self.scale_,
        }
        out.update({f"layer_{i}": w for i, w in enumerate(self.weights_)})
        return out

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> FlowMLP:
        """Rebuild from :meth:`get_params` and :meth:`state_arrays` (exact, no training)."""
        obj = cls(**params)
        obj.classes_ = np.asarray(arrays["classes_"]).astype(str)
        obj.mean_ = np.asarray(arrays["mean_"], dtype=np.float32)
        obj.scale_ = np.asarray(arrays["scale_"], dtype=np.float32)
        n = len([k for k in arrays if k.startswith("layer_")])
        obj.weights_ = [np.asarray(arrays[f"layer_{i}"], dtype=np.float32) for i in range(n)]
        return obj

    # -- training -----------------------------------------------------------------------------

    def _codes(self, y: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        labels = np.asarray(y, dtype=str)
        lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
        missing = sorted(set(labels.tolist()) - set(lookup))
        if missing:
            raise ValueError(f"classes {missing} are not in the model's class list")
        return np.array([lookup[v] for v in labels.tolist()], dtype=np.int64)

    def fit(self, X: npt.NDArray[Any], y: Sequence[str] | npt.NDArray[Any]) -> Self:
        """Standardise on ``X`` (unless :meth:`set_scaler` was called), initialise and train."""
        import torch

        labels = np.asarray(y, dtype=str)
        if self.classes is not None:
            self.classes_ = np.array(self.classes, dtype=str)
        else:
            self.classes_ = np.array(["benign", *sorted(set(labels.tolist()) - {"benign"})], dtype=str)
        A = np.asarray(X, dtype=np.float32)
        if not getattr(self, "_scaler_fixed", False):
            self._scaler(A.mean(axis=0), A.std(axis=0))
        torch.manual_seed(self.seed)
        sizes = [A.shape[1], *self.hidden, len(self.classes_)]
        weights: list[npt.NDArray[np.float32]] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layer = torch.nn.Linear(fan_in, fan_out)
            weights += [layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()]
        self.weights_ = weights
        return self.partial_fit(A, labels)

    def partial_fit(
        self, X: npt.NDArray[Any], y: Sequence[str] | npt.NDArray[Any], epochs: int | None = None
    ) -> Self:
        """Train ``epochs`` more passes from the current weights (federated local training)."""
        import torch

        codes = self._codes(y)
        A = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in self.weights_]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        cw = np.zeros(len(self.classes_))
        present = np.bincount(codes, minlength=len(self.classes_)) > 0
        w_rows = balanced_weights(codes, len(self.classes_))
        for c in np.flatnonzero(present):
            cw[c] = w_rows[codes == c][0]
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(cw.astype(np.float32)))
        Xt, yt = torch.from_numpy(np.ascontiguousarray(A)), torch.from_numpy(codes)
        for _ in range(self.epochs if epochs is None else epochs):
            perm = torch.randperm(len(Xt), generator=gen)
            for start in range(0, len(Xt), self.batch_size):
                idx = perm[start : start + self.batch_size]
                h = Xt[idx]
                for i in range(0, len(params) - 2, 2):
                    h = torch.relu(h @ params[i].T + params[i + 1])
                logits = h @ params[-2].T + params[-1]
                loss = loss_fn(logits, yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.weights_ = [p.detach().numpy().astype(np.float32).copy() for p in params]
        return self

    # -- inference ----------------------------------------------------------------------------

    def predict_proba(self, X: npt.NDArray[Any]) -> F64:
        """Class probabilities (numpy forward pass), columns in the order of ``classes_``."""
        h = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        w = self.weights_
        for i in range(0, len(w) - 2, 2):
            h = np.maximum(h @ w[i].T + w[i + 1], 0.0)
        logits = (h @ w[-2].T + w[-1]).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def evaluate(self, X: npt.NDArray[Any]) -> tuple[F64, npt.NDArray[np.str_], F64]:
        """``(score = 1 - P(benign), predicted_class, probabilities)`` per row."""
        proba = self.predict_proba(X)
        pred = self.classes_[proba.argmax(axis=1)].astype(object)
        pred[proba.max(axis=1) < self.min_prob] = UNKNOWN
        return 1.0 - proba[:, 0], pred.astype(str), proba

    def score(self, X: npt.NDArray[Any]) -> F64:
        """Malicious-vs-benign score ``1 - P(benign)``."""
        return self.evaluate(X)[0]

    def predict(self, X: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
        """Predicted class per row (``unknown`` below ``min_prob``)."""
        return self.evaluate(X)[1]
