"""Detection metrics: ROC AUC, TPR at a fixed FPR, detection latency."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def roc_auc(y: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    yy = np.asarray(y).astype(bool)
    if yy.all() or not yy.any():
        return float("nan")
    return float(roc_auc_score(yy, np.asarray(scores, dtype=np.float64)))


def tpr_at_fpr(y: npt.ArrayLike, scores: npt.ArrayLike, fpr: float) -> float:
    """True-positive rate at the threshold that lets at most ``fpr`` of negatives through.

    The threshold is the smallest negative score such that the share of negatives strictly
    above it is ≤ ``fpr``; positives count only when strictly above it (ties are not detected).
    """
    yy = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    neg, pos = np.sort(s[~yy]), s[yy]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    k = int(np.floor(fpr * len(neg)))
    thr = neg[len(neg) - 1 - k] if k < len(neg) else -np.inf
    return float(np.mean(pos > thr))


def detection_latency(first_malicious_ts: float, alert_ts: list[float]) -> float | None:
    """Seconds from the first malicious packet to the first alert at or after it (None: never)."""
    later = [t for t in alert_ts if t >= first_malicious_ts]
    if not later:
        return None
    return max(0.0, min(later) - first_malicious_ts)
