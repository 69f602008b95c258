"""Q2 evaluation: one small leave-one-scenario-out fold on real IoT-23 flows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from iotsentry.evaluation.q2 import q2_markdown, run_q2


@pytest.mark.slow
def test_small_loso_fold(data_dir: Path) -> None:
    if not (data_dir / "iot23").exists():
        pytest.skip("IoT-23 data not available")
    r = run_q2(
        data_dir,
        folds=[("44-1",), ("7-1",)],
        families=False,
        models=("hgb", "baseline"),
        scenarios=("44-1", "20-1", "7-1"),
    )
    mirai, somfy = r["folds"]
    # SOURCE.md: 44-1 has 237 flows, 26 malicious (14 C&C + 11 C&C-FileDownload + 1 DDoS)
    assert (mirai["n_flows"], mirai["n_malicious"]) == (237, 26)
    assert mirai["class_counts"] == {"benign": 211, "C&C": 25, "DDoS": 1}
    assert mirai["train"] == ["20-1", "7-1"]
    assert "DDoS" not in mirai["train_classes"]  # no DDoS in the training scenarios
    for m in ("hgb", "baseline"):
        res = mirai["models"][m]
        assert 0.0 <= res["auc"] <= 1.0 and 0.0 <= res["recall_at_1pct_fpr"] <= 1.0
        assert 0.0 <= res["fpr_at_threshold"] <= 1.0
    hgb = mirai["models"]["hgb"]
    # C&C is known from 20-1 (Torii), so the supervised model must beat chance on 44-1
    assert hgb["auc"] > 0.5
    assert set(hgb["f1_per_class"]) == {"benign", "C&C", "DDoS"}
    assert hgb["macro_f1"] == pytest.approx(np.mean(list(hgb["f1_per_class"].values())))
    assert sum(hgb["predicted_by_class"]["C&C"].values()) == 25
    # Somfy (7-1) is benign only: no AUC, an FPR instead
    assert somfy["n_malicious"] == 0
    assert math.isnan(somfy["models"]["hgb"]["auc"])
    assert 0.0 <= somfy["models"]["hgb"]["fpr_at_threshold"] <= 1.0
    assert r["summary"]["hgb"]["min_auc"] == hgb["auc"]  # 44-1 is the only two-class fold
    md = q2_markdown(r)
    assert "| 44-1 | 237 | 26 | hgb |" in md and "| 7-1 | 130 | 0 | baseline |" in md
