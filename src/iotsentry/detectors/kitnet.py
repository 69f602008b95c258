"""KitNET (Kitsune's ensemble of autoencoders) and an isolation forest, behind the detector contract.

:class:`KitNET` (registered as ``kitnet``), after Mirsky et al., NDSS 2018:

1. **Feature map** (learned in :meth:`KitNET.fit`, the grace period): hierarchical clustering
   (single linkage) of the features on the distance ``1 - |corr|``; the dendrogram is cut
   top-down until every group has at most ``max_group`` features (a constant feature has
   correlation 0 with every other).
2. **Ensemble**: one autoencoder per group with tied weights, ``ceil(hidden_ratio * size)``
   sigmoid hidden units and a sigmoid output, on inputs min-max normalised with the training
   minimum and maximum; each reports its reconstruction RMSE.
3. **Output autoencoder** of the same kind over the (min-max normalised) group RMSEs; its
   RMSE is the anomaly score.

Training is offline over the grace-period rows: mini-batch Adam on the summed per-group mean
squared errors for ``epochs`` passes (PyTorch, all groups at once as padded block-diagonal
tensors; at least ``min_steps`` steps, so a short grace period still trains), then the output
autoencoder the same way on the trained ensemble's RMSEs. Scoring
uses numpy on the learned arrays (float32), so it neither imports torch nor mutates state.

:class:`IsolationForestDetector` (registered as ``iforest``): scikit-learn's
``IsolationForest``, sign flipped (higher = more anomalous). Trees cannot be saved without
pickle, so the state is the training sample itself (at most ``max_train`` rows, drawn with
``random_state``) and the forest is **refitted deterministically from it on load**.
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.base import Detector, register
from iotsentry.detectors.isolation_forest import TreeArrayIsolationForest

__all__ = ["IsolationForestDetector", "KitNET", "correlation_groups"]


def correlation_groups(X: npt.NDArray[Any], max_group: int) -> list[list[int]]:
    """Feature groups of at most ``max_group`` from single-linkage clustering on ``1 - |corr|``."""
    from scipy.cluster.hierarchy import ClusterNode, linkage, to_tree

    f = X.shape[1]
    if f <= max_group:
        return [list(range(f))]
    x = np.asarray(X, np.float64)
    c = x - x.mean(axis=0)
    norm = np.sqrt((c * c).sum(axis=0))
    norm[norm == 0] = np.inf
    corr = (c.T @ c) / np.outer(norm, norm)
    dist = np.clip(1.0 - np.abs(corr), 0.0, 1.0)
    iu = np.triu_indices(f, 1)
    root = to_tree(linkage(dist[iu], method="single"))
    groups: list[list[int]] = []

    def split(node: ClusterNode) -> None:
        if node.get_count() <= max_group:
            groups.append(sorted(node.pre_order()))
        else:
            split(node.get_left())
            split(node.get_right())

    split(root)
    return groups


def _sigmoid(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """In place: ``z`` becomes ``1 / (1 + exp(-z))`` (as ``0.5 * tanh(z / 2) + 0.5``)."""
    z *= np.float32(0.5)
    np.tanh(z, out=z)
    z *= np.float32(0.5)
    z += np.float32(0.5)
    return z


Layer = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]
]


def _dense_layer(
    f: int,
    idx: npt.NDArray[np.int64],
    size: npt.NDArray[np.int64],
    W: npt.NDArray[np.float32],
    bh: npt.NDArray[np.float32],
    bv: npt.NDArray[np.float32],
) -> Layer:
    """The groups partition the inputs, so a layer of group autoencoders is one block-diagonal
    encoder ``[inputs, groups * hmax]`` (its transpose decodes): returns encoder, hidden bias,
    output bias and the ``[inputs, groups]`` matrix averaging squared errors per group."""
    G, _, hmax = W.shape
    enc = np.zeros((f, G * hmax), np.float32)
    bdec = np.zeros(f, np.float32)
    avg = np.zeros((f, G), np.float32)
    for g in range(G):
        m = int(size[g])
        cols = idx[g, :m]
        enc[cols, g * hmax : (g + 1) * hmax] = W[g, :m, :]
        bdec[cols] = bv[g, :m]
        avg[cols, g] = 1.0 / m
    return enc, bh.reshape(-1).astype(np.float32), bdec, avg


def _rmse(Xn: npt.NDArray[np.float32], layer: Layer) -> npt.NDArray[np.float32]:
    """RMSE of each group autoencoder of ``layer`` on normalised rows (``[n, groups]``)."""
    enc, benc, bdec, avg = layer
    h = Xn @ enc
    h += benc
    z = Xn - _sigmoid(_sigmoid(h) @ enc.T + bdec)
    z *= z
    r = z @ avg
    np.maximum(r, 0.0, out=r)
    return np.sqrt(r, out=r)


def _layer_rmse(
    Xn: npt.NDArray[np.float32],
    idx: npt.NDArray[np.int64],
    size: npt.NDArray[np.int64],
    W: npt.NDArray[np.float32],
    bh: npt.NDArray[np.float32],
    bv: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """RMSE of each group autoencoder on rows of normalised inputs (``[n, groups]``)."""
    return _rmse(Xn, _dense_layer(Xn.shape[1], idx, size, W, bh, bv))


def _train_layer(
    Xn: npt.NDArray[np.float32],
    groups: list[list[int]],
    hidden_ratio: float,
    epochs: int,
    batch_size: int,
    lr: float,
    min_steps: int,
    seed: int,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
]:
    """Train one autoencoder per group (tied weights) with Adam; returns padded arrays
    ``idx [G, gmax]`` (-1 padded), ``size [G]``, ``hidden [G]``, ``W [G, gmax, hmax]``,
    ``bh [G, hmax]``, ``bv [G, gmax]``."""
    import torch

    G = len(groups)
    size = np.array([len(g) for g in groups], np.int64)
    hidden = np.array([max(1, math.ceil(hidden_ratio * s)) for s in size], np.int64)
    gmax, hmax = int(size.max()), int(hidden.max())
    idx = np.full((G, gmax), -1, np.int64)
    for g, cols in enumerate(groups):
        idx[g, : len(cols)] = cols
    in_mask = np.arange(gmax)[None, :] < size[:, None]
    h_mask = np.arange(hmax)[None, :] < hidden[:, None]
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give
    try:
        bound = torch.tensor(1.0 / size, dtype=torch.float32)[:, None, None]
        w0 = (torch.rand(G, gmax, hmax, generator=gen) * 2 - 1) * bound
        wmask = torch.tensor(in_mask[:, :, None] & h_mask[:, None, :], dtype=torch.float32)
        W = torch.nn.Parameter(w0 * wmask)
        bh = torch.nn.Parameter(torch.zeros(G, hmax))
        bv = torch.nn.Parameter(torch.zeros(G, gmax))
        opt = torch.optim.Adam([W, bh, bv], lr=lr)
        Xpad = np.concatenate([Xn, np.zeros((len(Xn), 1), np.float32)], axis=1)
        gather = torch.tensor(np.where(idx < 0, Xn.shape[1], idx))  # padding -> the zero column
        Xg = torch.from_numpy(np.ascontiguousarray(Xpad))[:, gather]  # [n, G, gmax]
        im = torch.tensor(in_mask, dtype=torch.float32)
        hm = torch.tensor(h_mask, dtype=torch.float32)
        denom = torch.tensor(size, dtype=torch.float32)
        n = len(Xn)
        steps_per_epoch = -(-n // batch_size)
        for _ in range(max(epochs, -(-min_steps // steps_per_epoch))):
            perm = torch.randperm(n, generator=gen)
            for lo in range(0, n, batch_size):
                xb = Xg[perm[lo : lo + batch_size]].transpose(0, 1)  # [G, B, gmax]
                h = torch.sigmoid(torch.bmm(xb, W) + bh[:, None, :]) * hm[:, None, :]
                z = torch.sigmoid(torch.bmm(h, W.transpose(1, 2)) + bv[:, None, :])
                mse = (((xb - z) ** 2) * im[:, None, :]).sum(dim=2) / denom[:, None]
                loss = mse.mean(dim=1).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    W.mul_(wmask)
    finally:
        torch.set_num_threads(threads)
    return (
        idx,
        size,
        hidden,
        W.detach().numpy().astype(np.float32),
        bh.detach().numpy().astype(np.float32),
        bv.detach().numpy().astype(np.float32),
    )


def _minmax(
    X: npt.NDArray[np.float32], lo: npt.NDArray[np.float32], hi: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    return np.asarray((X - lo) * (np.float32(1.0) / (hi - lo + np.float32(1e-10))), np.float32)


@register
class KitNET(Detector):
    """Kitsune's ensemble of autoencoders (module docstring).

    Parameters
    ----------
    max_group
        Largest feature group (autoencoder input size).
    hidden_ratio
        Hidden units per autoencoder as a fraction of its inputs (rounded up).
    epochs, batch_size, lr
        Adam training of each layer.
    min_steps
        Fewer training rows get more epochs: at least this many Adam steps per layer.
    max_train
        Rows used for training at most (drawn with ``random_state`` when there are more).
    random_state
        Seed of the initial weights, the batch order and the subsample.
    chunk
        Rows scored per numpy chunk.
    """

    name = "kitnet"
    version = "1"

    def __init__(
        self,
        max_group: int = 10,
        hidden_ratio: float = 0.75,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-2,
        min_steps: int = 2000,
        max_train: int = 200_000,
        random_state: int = 0,
        chunk: int = 8192,
    ) -> None:
        self.max_group = max_group
        self.hidden_ratio = hidden_ratio
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.min_steps = min_steps
        self.max_train = max_train
        self.random_state = random_state
        self.chunk = chunk

    def fit(self, X: npt.NDArray[Any]) -> Self:
        """Learn the feature map, the ensemble and the output autoencoder from benign rows."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise ValueError("KitNET needs a 2-D matrix with at least two rows")
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
        if len(X) > self.max_train:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(len(X), self.max_train, replace=False))]
        groups = correlation_groups(X, self.max_group)
        lo, hi = X.min(axis=0), X.max(axis=0)
        Xn = _minmax(X, lo, hi)
        args = (self.hidden_ratio, self.epochs, self.batch_size, self.lr, self.min_steps)
        idx, size, _, W, bh, bv = _train_layer(Xn, groups, *args, self.random_state)
        R = _layer_rmse(Xn, idx, size, W, bh, bv)
        rlo, rhi = R.min(axis=0), R.max(axis=0)
        _, _, _, oW, obh, obv = _train_layer(
            _minmax(R, rlo, rhi), [list(range(len(groups)))], *args, self.random_state + 1
        )
        self.x_min_, self.x_max_ = lo, hi
        self.group_index_, self.group_size_ = idx, size
        self.W_, self.bh_, self.bv_ = W, bh, bv
        self.rmse_min_, self.rmse_max_ = rlo, rhi
        self.out_W_, self.out_bh_, self.out_bv_ = oW, obh, obv
        return self

    def _normalise(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        x = np.array(X, dtype=np.float32)  # a copy, normalised in place
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        x -= self.x_min_
        x *= np.float32(1.0) / (self.x_max_ - self.x_min_ + np.float32(1e-10))
        return x

    def group_rmse(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """RMSE of every group autoencoder per row (``[n, groups]``)."""
        layer = _dense_layer(X.shape[1], self.group_index_, self.group_size_, self.W_, self.bh_, self.bv_)
        return _rmse(self._normalise(X), layer)

    def score_samples(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Output-autoencoder RMSE per row (higher = more anomalous)."""
        X = np.asarray(X)
        out = np.empty(len(X), np.float64)
        k = len(self.group_size_)
        ens = _dense_layer(X.shape[1], self.group_index_, self.group_size_, self.W_, self.bh_, self.bv_)
        top = _dense_layer(
            k, np.arange(k, dtype=np.int64)[None, :], np.array([k]), self.out_W_, self.out_bh_, self.out_bv_
        )
        rlo = self.rmse_min_
        rscale = np.float32(1.0) / (self.rmse_max_ - rlo + np.float32(1e-10))
        for lo in range(0, len(X), self.chunk):
            R = _rmse(self._normalise(X[lo : lo + self.chunk]), ens)
            R -= rlo
            R *= rscale
            out[lo : lo + len(R)] = _rmse(R, top)[:, 0]
        return out


@register
class IsolationForestDetector(TreeArrayIsolationForest):
    """Isolation forest on packet features, higher = more anomalous; trees kept as arrays.

    Parameters
    ----------
    n_estimators, max_samples, random_state
        As in :class:`~iotsentry.detectors.isolation_forest.TreeArrayIsolationForest`.
    max_train
        Rows the forest is grown from at most, a subsample drawn with ``random_state``.
    """

    name = "iforest"
    version = "2"

    def __init__(
        self, n_estimators: int = 100, max_samples: int = 256, max_train: int = 20_000, random_state: int = 0
    ) -> None:
        super().__init__(n_estimators=n_estimators, max_samples=max_samples, random_state=random_state)
        self.max_train = max_train

    def _rows(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return np.nan_to_num(super()._rows(X))

    def fit(self, X: npt.NDArray[Any]) -> Self:
        """Grow the forest on (a seeded subsample of) the rows."""
        A = self._rows(X)
        if len(A) > self.max_train:
            rng = np.random.default_rng(self.random_state)
            A = A[np.sort(rng.choice(len(A), self.max_train, replace=False))]
        return super().fit(A)
