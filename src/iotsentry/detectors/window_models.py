"""Contract detectors on per-device window rows (the ``WINDOW_FEATURES`` matrix of a profile).

Both detectors work on ``log1p`` of the (non-negative) window counts, so that a device sending
ten times its usual volume moves as far as one sending a tenth of it.

``window-iforest``
    scikit-learn's :class:`~sklearn.ensemble.IsolationForest`, fitted once; its trees are then
    stored as plain arrays (feature, threshold, children, node sizes) and scored by a small
    vectorised numpy walk that reproduces ``-IsolationForest.score_samples`` (the anomaly
    score of Liu et al., in (0, 1); higher = more anomalous). No pickle and no refit on load.
``window-mcd``
    Robust Mahalanobis distance: columns are centred on their median and scaled by their MAD,
    the varying columns get a Minimum Covariance Determinant (:class:`~sklearn.covariance.MinCovDet`)
    location and precision matrix; columns that were constant while learning count as
    independent standardised deviations. Parameters are arrays.

:func:`fit_device_models` fits one detector per device of a :class:`~iotsentry.baseline.profile.Baseline`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.base import Detector, register
from iotsentry.detectors.isolation_forest import TreeArrayIsolationForest

if TYPE_CHECKING:
    from iotsentry.baseline.profile import Baseline

__all__ = ["WindowIForest", "WindowMCD", "fit_device_models", "log_windows"]

F64 = npt.NDArray[np.float64]


def log_windows(X: npt.ArrayLike) -> F64:
    """``log1p`` of window counts (negative values, which counts never have, are clipped to 0)."""
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D matrix of window rows, got shape {a.shape}")
    return np.log1p(np.clip(a, 0.0, None))


@register
class WindowIForest(TreeArrayIsolationForest):
    """Isolation forest on log-scaled window rows (trees kept as arrays, no refit on load)."""

    name: ClassVar[str] = "window-iforest"
    version: ClassVar[str] = "1"

    def _rows(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return log_windows(X).astype(np.float32)


@register
class WindowMCD(Detector):
    """Robust Mahalanobis distance of log-scaled window rows (see module docstring).

    Parameters
    ----------
    support_fraction
        Share of rows in the MCD support (``None``: scikit-learn's default, (n + p + 1) / 2n).
    min_scale
        Floor of each column's robust scale, in ``log1p`` units (a column that never varied
        while learning still gets a finite, small scale).
    ridge
        Added to the diagonal of the (standardised) robust covariance before inversion.
    random_state
        Seed of the MCD's random subsets.
    """

    name: ClassVar[str] = "window-mcd"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        support_fraction: float | None = None,
        min_scale: float = 0.1,
        ridge: float = 1e-3,
        random_state: int = 0,
    ) -> None:
        self.support_fraction = support_fraction
        self.min_scale = min_scale
        self.ridge = ridge
        self.random_state = random_state

    def fit(self, X: npt.NDArray[np.float64]) -> Self:
        """Robust location, scale and precision of benign window rows."""
        from sklearn.covariance import MinCovDet

        L = log_windows(X)
        if len(L) < 2:
            raise ValueError("window-mcd needs at least two rows to learn from")
        center = np.median(L, axis=0)
        mad = 1.4826 * np.median(np.abs(L - center), axis=0)
        varying = mad > 0
        scale = np.maximum(np.where(varying, mad, L.std(axis=0)), self.min_scale)
        Z = (L - center) / scale
        cols = np.flatnonzero(varying)
        p = len(cols)
        location = np.zeros(p)
        cov = np.eye(p)
        if p and len(L) > 2 * p + 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    mcd = MinCovDet(support_fraction=self.support_fraction, random_state=self.random_state)
                    mcd.fit(Z[:, cols])
                    location, cov = mcd.location_, mcd.covariance_
                except (ValueError, np.linalg.LinAlgError):
                    location, cov = np.median(Z[:, cols], axis=0), np.cov(Z[:, cols], rowvar=False)
        elif p:
            location = np.median(Z[:, cols], axis=0)
        cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
        self.center_ = center
        self.scale_ = scale
        self.cols_ = cols.astype(np.int64)
        self.location_ = np.asarray(location, dtype=np.float64)
        self.precision_ = np.linalg.pinv(cov + self.ridge * np.eye(p)) if p else np.zeros((0, 0))
        return self

    def score_samples(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Robust Mahalanobis distance per row (not squared); higher = more anomalous."""
        Z = (log_windows(X) - self.center_) / self.scale_
        rest = np.ones(Z.shape[1], dtype=bool)
        rest[self.cols_] = False
        d2 = np.sum(Z[:, rest] ** 2, axis=1)
        if len(self.cols_):
            D = Z[:, self.cols_] - self.location_
            d2 = d2 + np.einsum("ij,jk,ik->i", D, self.precision_, D)
        return np.sqrt(np.maximum(d2, 0.0)).astype(np.float64)


def fit_device_models(
    baseline: Baseline, detector: str = "window-mcd", min_windows: int = 10
) -> dict[str, Detector]:
    """One window detector per device of a baseline, fitted on its learned window rows.

    Parameters
    ----------
    baseline
        Learned baselines (``Analyzer.baseline``).
    detector
        Registered name: ``"window-mcd"`` or ``"window-iforest"``.
    min_windows
        Devices with fewer learned windows get no model.

    Returns
    -------
    dict
        device_id -> fitted detector. Score new rows with ``model.score_samples(rows)``.
    """
    from iotsentry.detectors.base import REGISTRY

    cls = REGISTRY[detector]
    out: dict[str, Detector] = {}
    for prof in baseline.profiles:
        X = prof.matrix()
        if len(X) >= min_windows:
            out[prof.device_id] = cls().fit(X)
    return out
