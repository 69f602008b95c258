"""An unsupervised PyTorch autoencoder on flow feature rows, trainable with federated learning.

:class:`FlowAutoencoder` (registered as ``flow-ae``) learns to reconstruct benign flow rows
(e.g. :func:`iotsentry.features.flow_features.flow_matrix`); its anomaly score is the per-row
mean squared reconstruction error in standardised space (higher = more anomalous).

Model
-----
``standardise -> clip -> encoder -> decoder -> reconstruction``:

* **Standardise** with ``mean_`` / ``scale_`` (learned in :meth:`FlowAutoencoder.fit`, or fixed
  with :meth:`FlowAutoencoder.set_scaler` so that federated sites share one scaler); a feature
  with (near) zero spread gets scale 1.
* **Clip** the standardised values to ``[-clip, clip]`` (default 10). Flow features are
  heavy-tailed (bytes, packets, durations): one extreme benign flow would otherwise dominate
  the mean squared error of a mini-batch and the training. The clipped row is also the
  reconstruction target and the reference of the score, so a flow far outside the benign range
  still scores high (about ``clip**2`` per saturated feature) but bounded.
* **Encoder** ``Linear -> ReLU`` per width of ``hidden`` (default ``(32, 8)``: ``d -> 32 -> 8``);
  the **decoder** mirrors it (``8 -> 32 -> d``) with ReLU between layers and a linear output.

Training
--------
PyTorch (imported lazily, only in :meth:`FlowAutoencoder.partial_fit`) with Adam on the mean
squared error, mini-batches shuffled by a generator seeded with ``seed``. The initial weights
are drawn with numpy from ``seed`` (uniform in ``+-1/sqrt(fan_in)``, as ``torch.nn.Linear``),
so the same data and seed give the same model. :meth:`FlowAutoencoder.partial_fit` is a pure
function of (current weights, scaler, data, epochs, seed): fresh Adam state and the same
shuffling every call, which makes local federated training reproducible.

Federated learning
------------------
:meth:`FlowAutoencoder.get_weights` / :meth:`FlowAutoencoder.set_weights` exchange the layer
parameters ``[W0, b0, W1, b1, ...]`` as float32 numpy arrays (``W`` shaped ``(out, in)`` like
``torch.nn.Linear``; encoder layers first, then decoder layers). The scaler is not part of those
weights: give every site the same one with :meth:`FlowAutoencoder.set_scaler` (e.g.
:func:`iotsentry.federated.sites.pooled_scaler`). :meth:`FlowAutoencoder.init_weights` draws
the seeded initial weights without data (for the server's initial parameters).

State and artifacts
-------------------
Learned state is ``mean_``, ``scale_`` and one attribute per layer array, ``layer_0_``,
``layer_1_``, ... (in :meth:`FlowAutoencoder.get_weights` order), so the base class's
:meth:`~iotsentry.detectors.base.Detector.save` / ``load`` (npz + JSON manifest, no pickle)
round-trip it unchanged. Scoring is a numpy forward pass (float32) and never mutates state.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.base import Detector, register

__all__ = ["FlowAutoencoder"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@register
class FlowAutoencoder(Detector):
    """Autoencoder anomaly detector on flow feature rows (score: reconstruction MSE).

    Parameters
    ----------
    hidden
        Widths of the encoder layers, the last one is the bottleneck (the decoder mirrors them).
    epochs
        Passes over the data in :meth:`fit` (and by default in :meth:`partial_fit`).
    batch_size, lr, weight_decay
        Mini-batch size, Adam learning rate and weight decay.
    clip
        Bound on the absolute standardised value of every feature (see the module docstring).
    seed
        Seed of the initial weights and of the shuffling.
    """

    name = "flow-ae"
    version = "1"

    def __init__(
        self,
        hidden: Sequence[int] = (32, 8),
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        clip: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.hidden = [int(h) for h in hidden]
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.clip = clip
        self.seed = seed

    # -- architecture -------------------------------------------------------------------------

    def _sizes(self, n_features: int) -> list[int]:
        """Layer widths from input to reconstruction, e.g. ``[d, 32, 8, 32, d]``."""
        return [n_features, *self.hidden, *self.hidden[-2::-1], n_features]

    def _shapes(self, n_features: int) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        for fan_in, fan_out in itertools.pairwise(self._sizes(n_features)):
            shapes += [(fan_out, fan_in), (fan_out,)]
        return shapes

    @property
    def n_arrays(self) -> int:
        """Number of layer arrays (weights and biases) for the configured ``hidden``."""
        return 4 * len(self.hidden)

    def _n_features(self) -> int:
        """Input width of the fitted (or weight-set) model."""
        if hasattr(self, "layer_0_"):
            return int(np.shape(self.layer_0_)[1])
        if hasattr(self, "mean_"):
            return int(np.shape(self.mean_)[0])
        raise ValueError("FlowAutoencoder is not fitted (no weights and no scaler)")

    # -- parameters as arrays -----------------------------------------------------------------

    def get_weights(self) -> list[F32]:
        """Layer parameters ``[W0, b0, W1, b1, ...]`` (copies, float32)."""
        if not hasattr(self, "layer_0_"):
            raise ValueError("FlowAutoencoder has no weights yet: fit, init_weights or set_weights first")
        return [
            np.array(getattr(self, f"layer_{i}_"), dtype=np.float32, copy=True) for i in range(self.n_arrays)
        ]

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        """Replace the layer parameters (the shapes :meth:`get_weights` gives).

        Raises ``ValueError`` when the number or shapes of the arrays do not fit the
        architecture, the scaler's width or the current weights.
        """
        new = [np.array(w, dtype=np.float32, copy=True) for w in weights]
        if len(new) != self.n_arrays or new[0].ndim != 2:
            raise ValueError(
                f"expected {self.n_arrays} layer arrays for hidden={self.hidden}, got {len(new)}"
            )
        d = int(new[0].shape[1])
        if hasattr(self, "layer_0_") or hasattr(self, "mean_"):
            d = self._n_features()
        expected = self._shapes(d)
        got = [w.shape for w in new]
        if got != expected:
            raise ValueError(f"weight shapes {got} differ from the expected {expected}")
        for i, w in enumerate(new):
            setattr(self, f"layer_{i}_", w)

    def init_weights(self, n_features: int) -> Self:
        """Draw the seeded initial weights for ``n_features`` inputs (no data needed)."""
        rng = np.random.default_rng(self.seed)
        for j, (fan_in, fan_out) in enumerate(itertools.pairwise(self._sizes(int(n_features)))):
            bound = 1.0 / np.sqrt(fan_in)
            setattr(self, f"layer_{2 * j}_", rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
            setattr(self, f"layer_{2 * j + 1}_", rng.uniform(-bound, bound, fan_out).astype(np.float32))
        return self

    def set_scaler(self, mean: npt.ArrayLike, scale: npt.ArrayLike) -> None:
        """Fix the standardisation ``(x - mean) / scale`` instead of learning it in :meth:`fit`."""
        m = np.asarray(mean, dtype=np.float32).reshape(-1)
        s = np.asarray(scale, dtype=np.float32).reshape(-1)
        if m.shape != s.shape:
            raise ValueError(f"mean has {m.size} values but scale has {s.size}")
        if hasattr(self, "layer_0_") and m.size != self._n_features():
            raise ValueError(f"scaler has {m.size} features, the weights expect {self._n_features()}")
        self._set_scaler(m, s)
        self._scaler_fixed = True

    def _set_scaler(self, mean: F32, scale: F32) -> None:
        self.mean_ = np.asarray(mean, dtype=np.float32)
        self.scale_ = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)

    # -- training -----------------------------------------------------------------------------

    def _rows(self, X: npt.ArrayLike) -> F32:
        A = np.asarray(X, dtype=np.float32)
        if A.ndim != 2:
            raise ValueError(f"expected a 2-D feature matrix, got shape {A.shape}")
        if hasattr(self, "mean_") and A.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"expected {self.mean_.shape[0]} features, got {A.shape[1]}")
        return np.nan_to_num(A, nan=0.0, posinf=0.0, neginf=0.0)

    def _standardise(self, A: F32) -> F32:
        Z = (A - self.mean_) / self.scale_
        np.clip(Z, -self.clip, self.clip, out=Z)
        return Z.astype(np.float32, copy=False)

    def fit(self, X: npt.NDArray[Any]) -> Self:
        """Learn the scaler (unless :meth:`set_scaler` was called), initialise and train."""
        if not getattr(self, "_scaler_fixed", False):
            for k in ("mean_", "scale_"):
                if hasattr(self, k):
                    delattr(self, k)
        A = self._rows(X)
        if len(A) < 2:
            raise ValueError("FlowAutoencoder needs at least two rows to fit")
        if not getattr(self, "_scaler_fixed", False):
            A64 = A.astype(np.float64)
            self._set_scaler(A64.mean(axis=0).astype(np.float32), A64.std(axis=0).astype(np.float32))
        self.init_weights(A.shape[1])
        return self.partial_fit(A)

    def partial_fit(self, X: npt.NDArray[Any], epochs: int | None = None) -> Self:
        """Train ``epochs`` more passes (default ``self.epochs``) from the current weights.

        A model without weights is first initialised (and its scaler learned from ``X`` unless
        fixed), as :meth:`fit` does.
        """
        if not hasattr(self, "layer_0_"):
            return self.fit(X)
        import torch

        Z = self._standardise(self._rows(X))
        n_epochs = self.epochs if epochs is None else int(epochs)
        if n_epochs <= 0 or len(Z) == 0:
            return self
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: threads cost more than they give
        try:
            gen = torch.Generator().manual_seed(self.seed)
            params = [torch.nn.Parameter(torch.from_numpy(w)) for w in self.get_weights()]
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            Xt = torch.from_numpy(np.ascontiguousarray(Z))
            for _ in range(n_epochs):
                perm = torch.randperm(len(Xt), generator=gen)
                for start in range(0, len(Xt), self.batch_size):
                    xb = Xt[perm[start : start + self.batch_size]]
                    h = xb
                    for i in range(0, len(params) - 2, 2):
                        h = torch.relu(h @ params[i].T + params[i + 1])
                    recon = h @ params[-2].T + params[-1]
                    loss = torch.mean((recon - xb) ** 2)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            for i, p in enumerate(params):
                setattr(self, f"layer_{i}_", p.detach().numpy().astype(np.float32, copy=True))
        finally:
            torch.set_num_threads(threads)
        return self

    # -- inference ----------------------------------------------------------------------------

    def reconstruct(self, X: npt.NDArray[Any]) -> tuple[F32, F32]:
        """``(standardised clipped rows, their reconstructions)`` (numpy forward pass)."""
        if not hasattr(self, "layer_0_") or not hasattr(self, "mean_"):
            raise ValueError("FlowAutoencoder is not fitted")
        Z = self._standardise(self._rows(X))
        w = self.get_weights()
        h = Z
        for i in range(0, len(w) - 2, 2):
            h = np.maximum(h @ w[i].T + w[i + 1], np.float32(0.0))
        return Z, (h @ w[-2].T + w[-1]).astype(np.float32, copy=False)

    def score_samples(self, X: npt.NDArray[Any]) -> F64:
        """Mean squared reconstruction error per row in standardised space (higher = more anomalous)."""
        Z, R = self.reconstruct(X)
        err = (R.astype(np.float64) - Z.astype(np.float64)) ** 2
        return np.asarray(err.mean(axis=1), dtype=np.float64)
