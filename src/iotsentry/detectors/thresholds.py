"""Thresholds calibrated on benign scores to a target false-positive rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class FprThreshold:
    """Alert when a score exceeds the (1 - ``target_fpr``) quantile of benign scores.

    ``floor`` bounds the threshold from below (a detector whose benign scores are all zero
    must not alert on any positive score); ``margin`` multiplies the calibrated quantile.
    """

    target_fpr: float = 0.001
    floor: float = 0.0
    margin: float = 1.0
    value_: float = float("inf")

    def calibrate(self, benign_scores: npt.NDArray[np.float64]) -> FprThreshold:
        """Set ``value_`` from benign scores."""
        s = np.asarray(benign_scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if len(s) == 0:
            self.value_ = max(self.floor, 0.0)
            return self
        q = float(np.quantile(s, 1.0 - self.target_fpr, method="higher"))
        self.value_ = max(self.floor, q * self.margin)
        return self

    def exceeded(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Rows whose score is above the threshold."""
        return np.asarray(scores) > self.value_
