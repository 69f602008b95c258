"""Calibrated scores and their fusion across detectors.

Scores of different detectors live on different scales. :class:`ScoreCalibrator` maps a
detector's score to the empirical upper-tail probability of benign calibration scores (a
conformal p-value), ``p = (1 + #{benign >= s}) / (1 + n)``: on benign data drawn like the
calibration set, these p-values are (super-)uniform. :class:`Fusion` combines the p-values of
several detectors into one score (higher = more anomalous) and sets its alert threshold with
:class:`~iotsentry.detectors.thresholds.FprThreshold` at a target false-positive rate on benign
fused scores.

Methods: ``"fisher"`` (``-2 Σ log p`` turned into ``-log10`` of its chi-squared upper tail with
``2k`` degrees of freedom, ``k`` = detectors that scored the row) and ``"min-p"``
(``-log10(min(1, k · min p))``, Bonferroni). The chi-squared and Bonferroni forms assume
nothing for the threshold, which is calibrated empirically; they only make rows scored by
different numbers of detectors (NaN = detector missing) comparable.

Artifacts: ``weights.npz`` (sorted benign scores, loaded with ``allow_pickle=False``) and
``manifest.json`` with the weights' SHA-256; no pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.errors import InputError

__all__ = ["Fusion", "ScoreCalibrator", "combine_pvalues"]

F64 = npt.NDArray[np.float64]
Method = Literal["fisher", "min-p"]


def _write(d: Path, kind: str, arrays: dict[str, npt.NDArray[Any]], params: dict[str, Any]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "weights.npz", **arrays)  # type: ignore[arg-type]
    manifest = {
        "kind": kind,
        "params": params,
        "state_keys": sorted(arrays),
        "weights_sha256": hashlib.sha256((d / "weights.npz").read_bytes()).hexdigest(),
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return d


def _read(d: Path, kind: str) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(d / "manifest.json", f"cannot read manifest ({e})") from None
    if manifest.get("kind") != kind:
        raise InputError(d, f"artifact holds {manifest.get('kind')!r}, not {kind!r}")
    raw = (d / "weights.npz").read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest.get("weights_sha256"):
        raise InputError(d / "weights.npz", "weights do not match the manifest's hash")
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in manifest.get("state_keys", [])}
    return manifest.get("params", {}), arrays


class ScoreCalibrator:
    """Empirical upper-tail p-values of scores against benign calibration scores."""

    def fit(self, benign_scores: npt.ArrayLike) -> Self:
        """Keep the finite benign scores, sorted."""
        s = np.asarray(benign_scores, dtype=np.float64).ravel()
        s = s[np.isfinite(s)]
        if not len(s):
            raise ValueError("ScoreCalibrator needs at least one finite benign score")
        self.benign_ = np.sort(s)
        return self

    def transform(self, scores: npt.ArrayLike) -> F64:
        """``p = (1 + #{benign >= s}) / (1 + n)`` per score; NaN stays NaN, +inf gets ``1/(1+n)``."""
        s = np.asarray(scores, dtype=np.float64)
        n = len(self.benign_)
        at_least = n - np.searchsorted(self.benign_, s, side="left")
        p = (1.0 + at_least) / (1.0 + n)
        return np.where(np.isnan(s), np.nan, p).astype(np.float64)

    def save(self, directory: str | Path) -> Path:
        """Write the sorted benign scores (npz) and a manifest."""
        return _write(Path(directory), "score-calibrator", {"benign_": self.benign_}, {})

    @classmethod
    def load(cls, directory: str | Path) -> ScoreCalibrator:
        """Read what :meth:`save` wrote (hash checked, no pickle)."""
        _params, arrays = _read(Path(directory), "score-calibrator")
        obj = cls()
        obj.benign_ = np.asarray(arrays["benign_"], dtype=np.float64)
        return obj


def combine_pvalues(p: npt.ArrayLike, method: Method = "fisher") -> F64:
    """Fused score per row of a p-value matrix (n, k); NaN entries are ignored; higher = more anomalous.

    A row with no p-value gets 0 (no evidence).
    """
    from scipy.stats import chi2

    P = np.atleast_2d(np.asarray(p, dtype=np.float64))
    ok = np.isfinite(P)
    k = ok.sum(axis=1)
    Pc = np.clip(np.where(ok, P, 1.0), 1e-300, 1.0)
    if method == "fisher":
        stat = -2.0 * np.log(Pc).sum(axis=1)
        logsf = chi2.logsf(stat, np.maximum(2 * k, 1))
        out = -logsf / np.log(10.0)
    elif method == "min-p":
        out = -np.log10(np.minimum(1.0, k * Pc.min(axis=1)))
    else:
        raise ValueError(f"unknown fusion method {method!r} (use 'fisher' or 'min-p')")
    out = np.where(k > 0, out, 0.0)
    return np.maximum(out, 0.0).astype(np.float64)


class Fusion:
    """Combine calibrated scores of several detectors; threshold at a target benign FPR.

    Parameters
    ----------
    method
        ``"fisher"`` or ``"min-p"`` (see module docstring).
    target_fpr
        False-positive rate the fused threshold aims at on benign data.
    """

    def __init__(self, method: Method = "fisher", target_fpr: float = 0.001) -> None:
        if method not in ("fisher", "min-p"):
            raise ValueError(f"unknown fusion method {method!r} (use 'fisher' or 'min-p')")
        self.method: Method = method
        self.target_fpr = target_fpr

    def fit(self, benign_scores: npt.ArrayLike, threshold_scores: npt.ArrayLike | None = None) -> Self:
        """Calibrate one :class:`ScoreCalibrator` per column, then the fused threshold.

        Parameters
        ----------
        benign_scores
            Raw scores of benign rows, shape (n, k): one column per detector.
        threshold_scores
            Other benign rows (m, k) to set the fused threshold on; by default the calibration
            rows themselves (slightly conservative: each row counts itself in its p-value).
        """
        B = np.atleast_2d(np.asarray(benign_scores, dtype=np.float64))
        self.calibrators_ = [ScoreCalibrator().fit(B[:, j]) for j in range(B.shape[1])]
        T = B if threshold_scores is None else np.atleast_2d(np.asarray(threshold_scores, dtype=np.float64))
        self.threshold_ = FprThreshold(target_fpr=self.target_fpr).calibrate(self.score(T))
        return self

    def pvalues(self, scores: npt.ArrayLike) -> F64:
        """Calibrated p-value matrix (n, k) of raw scores (n, k)."""
        S = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        if S.shape[1] != len(self.calibrators_):
            raise ValueError(f"expected {len(self.calibrators_)} score columns, got {S.shape[1]}")
        return np.column_stack([c.transform(S[:, j]) for j, c in enumerate(self.calibrators_)])

    def score(self, scores: npt.ArrayLike) -> F64:
        """Fused score per row (higher = more anomalous)."""
        return combine_pvalues(self.pvalues(scores), self.method)

    def predict(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Rows whose fused score is above the calibrated threshold."""
        return self.threshold_.exceeded(self.score(scores))

    @property
    def threshold(self) -> float:
        """The calibrated fused threshold."""
        return float(self.threshold_.value_)

    def save(self, directory: str | Path) -> Path:
        """Write every calibrator's benign scores and the threshold (npz + manifest)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            f"benign_{j}": c.benign_ for j, c in enumerate(self.calibrators_)
        }
        arrays["threshold"] = np.array([self.threshold_.value_])
        return _write(
            Path(directory),
            "fusion",
            arrays,
            {"method": self.method, "target_fpr": self.target_fpr, "detectors": len(self.calibrators_)},
        )

    @classmethod
    def load(cls, directory: str | Path) -> Fusion:
        """Read what :meth:`save` wrote (hash checked, no pickle)."""
        params, arrays = _read(Path(directory), "fusion")
        obj = cls(method=params["method"], target_fpr=float(params["target_fpr"]))
        cals = []
        for j in range(int(params["detectors"])):
            c = ScoreCalibrator()
            c.benign_ = np.asarray(arrays[f"benign_{j}"], dtype=np.float64)
            cals.append(c)
        obj.calibrators_ = cals
        obj.threshold_ = FprThreshold(target_fpr=obj.target_fpr)
        obj.threshold_.value_ = float(arrays["threshold"][0])
        return obj
