"""Isolation forest whose trees are kept as numpy arrays (saved without pickle, scored in numpy).

scikit-learn grows the forest; its trees (feature, threshold, children, node sizes) are copied
into padded arrays, so an artifact is plain ``weights.npz`` and loading needs no refit. Scores
reproduce ``-IsolationForest.score_samples``: ``2 ** (-E[h(x)] / c(psi))``, higher = more
anomalous. Subclasses choose how rows are prepared (:meth:`TreeArrayIsolationForest._rows`) and
register under their own name.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.base import Detector

F64 = npt.NDArray[np.float64]
SCORE_CHUNK = 20_000
"""Rows scored at once (memory is trees × chunk)."""


def average_path_length(n: npt.ArrayLike) -> F64:
    """``c(n)``: average path length of an unsuccessful BST search among ``n`` points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class TreeArrayIsolationForest(Detector):
    """Isolation forest with array-stored trees (see module docstring).

    Parameters
    ----------
    n_estimators
        Number of trees.
    max_samples
        Rows drawn without replacement per tree (capped at the number of rows).
    random_state
        Seed of the forest.
    """

    def __init__(self, n_estimators: int = 100, max_samples: int = 256, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def _rows(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The matrix the trees see (float32, as scikit-learn's trees compare)."""
        A = np.asarray(X, dtype=np.float32)
        if A.ndim != 2:
            raise ValueError(f"{self.name} expects a 2-D matrix, got shape {A.shape}")
        return A

    def fit(self, X: npt.NDArray[Any]) -> Self:
        """Grow the forest on (benign) rows; keep feature, threshold, children and node sizes."""
        from sklearn.ensemble import IsolationForest

        A = self._rows(X)
        if len(A) < 2:
            raise ValueError(f"{self.name} needs at least two rows to learn from")
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(int(self.max_samples), len(A)),
            random_state=self.random_state,
        ).fit(A)
        trees = [e.tree_ for e in forest.estimators_]
        shape = (len(trees), max(t.node_count for t in trees))
        feature, left, right = (np.full(shape, -1, np.int64) for _ in range(3))
        threshold, size = np.zeros(shape), np.zeros(shape)
        for i, (t, feats) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            k = t.node_count
            leaf = t.children_left[:k] < 0
            # tree features index the estimator's own column subset: map them back
            feature[i, :k] = np.where(leaf, -1, np.asarray(feats)[np.maximum(t.feature[:k], 0)])
            threshold[i, :k] = t.threshold[:k]
            left[i, :k] = t.children_left[:k]
            right[i, :k] = t.children_right[:k]
            size[i, :k] = t.n_node_samples[:k]
        self.feature_ = feature
        self.threshold_ = threshold
        self.left_ = left
        self.right_ = right
        self.leaf_c_ = average_path_length(size)  # c(n) of each node, used where it is a leaf
        self.max_depth_ = np.int64(max(t.max_depth for t in trees))
        self.sample_size_ = np.int64(forest.max_samples_)
        return self

    def score_samples(self, X: npt.NDArray[Any]) -> F64:
        """Anomaly score in (0, 1) per row; higher = more anomalous."""
        A = self._rows(X).astype(np.float64)
        n_trees = self.feature_.shape[0]
        depth_mean = np.zeros(len(A))
        tree = np.arange(n_trees)[:, None]
        for start in range(0, len(A), SCORE_CHUNK):
            B = A[start : start + SCORE_CHUNK]
            rows = np.arange(len(B))[None, :]
            node = np.zeros((n_trees, len(B)), np.int64)
            depth = np.zeros((n_trees, len(B)))
            for _ in range(int(self.max_depth_) + 1):
                feat = self.feature_[tree, node]
                inner = feat >= 0
                if not inner.any():
                    break
                go_left = B[rows, np.maximum(feat, 0)] <= self.threshold_[tree, node]
                node = np.where(
                    inner, np.where(go_left, self.left_[tree, node], self.right_[tree, node]), node
                )
                depth += inner
            depth += self.leaf_c_[tree, node]
            depth_mean[start : start + len(B)] = depth.mean(axis=0)
        c = float(average_path_length(np.array([float(self.sample_size_)]))[0])
        return np.asarray(2.0 ** (-depth_mean / max(c, 1e-12)), dtype=np.float64)
