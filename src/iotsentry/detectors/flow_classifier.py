"""Supervised flow classifier with an open-set ("unknown") outcome, and the flow isolation forest.

``flow_classes``
    Maps IoT-23 labels onto the classes the supervised models learn:

    ========================================  ==============
    ``detailed_label`` (``label``)             class
    ========================================  ==============
    ``-`` (benign)                             ``benign``
    ``C&C``, ``C&C-Torii``, ``C&C-FileDownload``, ``C&C-HeartBeat*``, ...  ``C&C``
    ``DDoS``                                   ``DDoS``
    ``PartOfAHorizontalPortScan*``             ``PortScan``
    ``FileDownload``                           ``FileDownload``
    anything else malicious                    its detailed label (``malicious`` when ``-``)
    ========================================  ==============

    ``C&C-FileDownload`` goes to ``C&C``: the download is fetched over the C&C channel, and the
    benchmark's macro-F1 is defined over (DDoS, C&C, PortScan, benign).

:class:`FlowClassifier`
    :class:`~sklearn.ensemble.HistGradientBoostingClassifier` on :func:`~iotsentry.features.
    flow_features.flow_matrix` rows, plus a novelty score: the distance to the nearest *benign*
    training flow after standardising on the benign rows (standard deviation floored at
    ``min_scale``, so a feature never active in benign traffic counts strongly). An isolation
    forest was tried first and missed novel single-flag flows (34-1's DDoS rows differ from
    benign ones by one history flag among ~90 features). For each flow:

    * ``a`` = share of benign reference flows whose leave-one-out nearest-neighbour distance is
      below this flow's distance (an empirical CDF, in [0, 1]);
    * ``score = 1 - (1 - p_mal) * (1 - a ** gamma)`` with ``p_mal = 1 - P(benign)`` -- a
      noisy-or of "looks like a known attack" and "looks unlike any benign flow", so a novel
      attack that the classifier calls benign still ranks high when it is anomalous
      (``gamma`` = 10 makes only the top few percent of the benign distribution count);
    * ``predicted_class = "unknown"`` when the highest class probability is below ``min_prob``,
      or when the classifier says benign but ``a`` exceeds ``1 - novelty_fpr`` (a flow unlike
      every benign training flow). A confident known-attack prediction is kept even when
      anomalous: every attack is anomalous with respect to benign traffic.

    **No pickle.** The state is the (bounded, deterministic) training sample -- ``X_train_``
    (float32), ``y_train_`` (class codes) -- and the hyper-parameters; :meth:`FlowClassifier.
    from_arrays` *refits* the boosting model and the novelty reference on it, which reproduces the same
    model because every random choice is seeded (``random_state``). Loading therefore costs a
    training run (a few seconds on IoT-23 sized data).

:class:`FlowIForest` (registered as ``flow-iforest``)
    Isolation forest fitted with scikit-learn, then kept as plain tree arrays and scored by a
    vectorised numpy walk (``2 ** (-E[h] / c(psi))``, higher = more anomalous): saved exactly,
    no refit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.base import register
from iotsentry.detectors.isolation_forest import TreeArrayIsolationForest
from iotsentry.schema import FlowBatch

__all__ = ["UNKNOWN", "FlowClassifier", "FlowIForest", "attack_class", "balanced_weights", "flow_classes"]

F64 = npt.NDArray[np.float64]
UNKNOWN = "unknown"
"""``predicted_class`` of a flow that fits no known class."""


def attack_class(label: str, detailed: str) -> str:
    """Class of one flow from its IoT-23 ``label`` and ``detailed_label`` (see the module table)."""
    lab, det = label.strip().lower(), detailed.strip()
    if lab != "malicious":
        return "benign"
    if det.startswith("C&C"):
        return "C&C"
    if det.startswith("PartOfAHorizontalPortScan"):
        return "PortScan"
    if det in ("DDoS", "FileDownload"):
        return det
    return det if det not in ("", "-") else "malicious"


def flow_classes(flows: FlowBatch) -> npt.NDArray[np.str_]:
    """Class of every flow of a labeled batch (``ValueError`` when it has no labels)."""
    if not flows.has("label"):
        raise ValueError("these flows carry no labels")
    det = flows.detailed_label if flows.has("detailed_label") else np.full(len(flows), "-", dtype=object)
    pairs = np.column_stack([np.asarray(flows.label, dtype=str), np.asarray(det, dtype=str)])
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    names = np.array([attack_class(a, b) for a, b in uniq] or ["benign"], dtype=object)
    return names[inv.reshape(-1)].astype(str)


def balanced_weights(codes: npt.NDArray[np.int64], n_classes: int) -> F64:
    """Sample weights ``sqrt(n / (k * n_c))``: half-way between unweighted and balanced classes."""
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = np.sqrt(len(codes) / (present.sum() * counts[present]))
    return w[codes]


# ---------------------------------------------------------------------------------------------
# Isolation forest (shared tree-array implementation)
# ---------------------------------------------------------------------------------------------


@register
class FlowIForest(TreeArrayIsolationForest):
    """Isolation forest on flow feature rows (trees kept as arrays, no refit on load)."""

    name: ClassVar[str] = "flow-iforest"
    version: ClassVar[str] = "1"


def _nn_distance(Q: F64, R: F64, exclude_self: bool = False, chunk: int = 2048) -> F64:
    """Euclidean distance of each row of ``Q`` to its nearest row of ``R`` (chunked)."""
    out = np.zeros(len(Q))
    r2 = np.einsum("ij,ij->i", R, R)
    for start in range(0, len(Q), chunk):
        q = Q[start : start + chunk]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + r2[None, :] - 2.0 * (q @ R.T)
        if exclude_self:
            d2[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf
        out[start : start + len(q)] = np.sqrt(np.maximum(d2.min(axis=1), 0.0)) if len(R) else np.inf
    return out


# ---------------------------------------------------------------------------------------------
# Supervised classifier with an open-set outcome
# ---------------------------------------------------------------------------------------------


class FlowClassifier:
    """Gradient-boosted multi-class flow classifier with novelty detection (module docstring).

    Parameters
    ----------
    max_iter, learning_rate, max_leaf_nodes, l2_regularization
        Passed to :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (early stopping
        is off so that the fit does not depend on a random validation split).
    min_prob
        Below this highest class probability a flow is ``unknown``.
    novelty_fpr
        Share of benign training flows allowed above the novelty cut of the anomaly CDF.
    gamma
        Exponent of the anomaly CDF in the combined score.
    max_train_rows
        Bound on the stored training sample (rows drawn per class in proportion, seeded).
    max_reference
        Benign training rows kept (seeded sample) as the novelty reference.
    min_scale
        Floor of the per-feature standard deviation used to standardise for the novelty
        distance (a feature constant in benign training moves a flow by ``1 / min_scale`` per unit).
    random_state
        Seed of every random choice.
    """

    def __init__(
        self,
        max_iter: int = 100,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 31,
        l2_regularization: float = 1.0,
        min_prob: float = 0.5,
        novelty_fpr: float = 0.005,
        gamma: float = 10.0,
        max_train_rows: int = 200_000,
        max_reference: int = 5000,
        min_scale: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.min_prob = min_prob
        self.novelty_fpr = novelty_fpr
        self.gamma = gamma
        self.max_train_rows = max_train_rows
        self.max_reference = max_reference
        self.min_scale = min_scale
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-ready)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    # -- training ---------------------------------------------------------------------------

    def fit(self, X: npt.NDArray[Any], y: Sequence[str] | npt.NDArray[Any]) -> Self:
        """Learn from feature rows ``X`` and class names ``y`` (must include ``benign``)."""
        labels = np.asarray(y, dtype=str)
        if len(labels) != len(X):
            raise ValueError("X and y differ in length")
        if "benign" not in labels:
            raise ValueError("the training flows must include benign ones")
        others = sorted(set(labels.tolist()) - {"benign"})
        self.classes_ = np.array(["benign", *others], dtype=str)
        codes = np.searchsorted(self.classes_[1:], labels, side="left") + 1
        codes[labels == "benign"] = 0
        keep = self._bounded(codes)
        self.X_train_ = np.asarray(X, dtype=np.float32)[keep]
        self.y_train_ = codes[keep].astype(np.int64)
        self._build()
        return self

    def _bounded(self, codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Row indices of a deterministic, class-proportional sample of at most ``max_train_rows``."""
        n = len(codes)
        if n <= self.max_train_rows:
            return np.arange(n)
        rng = np.random.default_rng(self.random_state)
        keep = [
            np.sort(
                rng.permutation(np.flatnonzero(codes == c))[
                    : max(1, int(self.max_train_rows * np.mean(codes == c)))
                ]
            )
            for c in np.unique(codes)
        ]
        return np.sort(np.concatenate(keep))

    def _build(self) -> None:
        """(Re)fit the boosting model and the benign novelty reference on the stored sample."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        y = self.y_train_
        self._single = len(np.unique(y)) < 2
        if not self._single:
            self._hgb = HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                l2_regularization=self.l2_regularization,
                early_stopping=False,
                random_state=self.random_state,
            ).fit(self.X_train_, y, sample_weight=balanced_weights(y, len(self.classes_)))
        benign = self.X_train_[y == 0].astype(np.float64)
        if len(benign) > self.max_reference:
            rng = np.random.default_rng(self.random_state)
            benign = benign[np.sort(rng.permutation(len(benign))[: self.max_reference])]
        self._mu = benign.mean(axis=0)
        self._sd = np.maximum(benign.std(axis=0), self.min_scale)
        self._ref = (benign - self._mu) / self._sd
        # leave-one-out distances of the reference rows calibrate the CDF
        self._benign_anomaly = np.sort(_nn_distance(self._ref, self._ref, exclude_self=True))

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> FlowClassifier:
        """Rebuild from :meth:`get_params` and :meth:`state_arrays` by refitting (see module docstring)."""
        obj = cls(**params)
        obj.classes_ = np.asarray(arrays["classes_"]).astype(str)
        obj.X_train_ = np.asarray(arrays["X_train_"], dtype=np.float32)
        obj.y_train_ = np.asarray(arrays["y_train_"], dtype=np.int64)
        obj._build()
        return obj

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The learned state as numpy arrays (no object arrays; saved with ``np.savez``)."""
        return {"classes_": self.classes_.astype(str), "X_train_": self.X_train_, "y_train_": self.y_train_}

    # -- scoring ----------------------------------------------------------------------------

    def predict_proba(self, X: npt.NDArray[Any]) -> F64:
        """Class probabilities, columns in the order of ``classes_``."""
        A = np.asarray(X, dtype=np.float32)
        if self._single:
            out = np.zeros((len(A), len(self.classes_)))
            out[:, 0] = 1.0
            return out
        return np.asarray(self._hgb.predict_proba(A), dtype=np.float64)

    def anomaly_cdf(self, X: npt.NDArray[Any]) -> F64:
        """Share of benign reference flows farther from their nearest neighbour than each row is."""
        s = _nn_distance((np.asarray(X, dtype=np.float64) - self._mu) / self._sd, self._ref)
        return np.searchsorted(self._benign_anomaly, s, side="left") / max(len(self._benign_anomaly), 1)

    def evaluate(self, X: npt.NDArray[Any]) -> tuple[F64, npt.NDArray[np.str_], F64]:
        """``(score, predicted_class, probabilities)`` of each row (see the module docstring)."""
        proba = self.predict_proba(X)
        a = self.anomaly_cdf(X)
        p_mal = 1.0 - proba[:, 0]
        score = 1.0 - (1.0 - p_mal) * (1.0 - a**self.gamma)
        best = proba.argmax(axis=1)
        pred = self.classes_[best].astype(object)
        unknown = (proba.max(axis=1) < self.min_prob) | ((best == 0) & (a > 1.0 - self.novelty_fpr))
        pred[unknown] = UNKNOWN
        return np.asarray(score, dtype=np.float64), pred.astype(str), proba

    def score(self, X: npt.NDArray[Any]) -> F64:
        """Malicious-vs-benign score per row (higher = more likely malicious)."""
        return self.evaluate(X)[0]

    def predict(self, X: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
        """Predicted class per row, ``unknown`` for novel flows."""
        return self.evaluate(X)[1]
