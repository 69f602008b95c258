from __future__ import annotations

import numpy as np

from iotsentry.evaluation.metrics import detection_latency, roc_auc, tpr_at_fpr


def test_auc_hand_computed() -> None:
    # pairs (pos, neg): (0.9>0.1),(0.9>0.5),(0.4>0.1),(0.4<0.5) -> 3 of 4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.1, 0.5]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_tpr_at_fpr_counts_only_scores_above_the_negative_quantile() -> None:
    neg = np.arange(1000, dtype=float)  # threshold at 0.1 % FPR lets 1 negative through: 998
    pos = np.array([998.0, 998.5, 1200.0, 5.0])
    y = np.r_[np.zeros(1000), np.ones(4)]
    s = np.r_[neg, pos]
    assert tpr_at_fpr(y, s, 0.001) == 0.5  # 998.5 and 1200 are above 998; 998 ties, 5 below
    assert tpr_at_fpr(y, s, 0.0) == 0.25  # only 1200 is above the largest negative


def test_latency() -> None:
    assert detection_latency(100.0, [50.0, 130.0, 110.0]) == 10.0
    assert detection_latency(100.0, [50.0]) is None
