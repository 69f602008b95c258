"""Calibrated p-values and their fusion: known answers, uniformity, FPR of the fused threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kstest

from iotsentry.detectors.fusion import Fusion, ScoreCalibrator, combine_pvalues
from iotsentry.errors import InputError
from iotsentry.evaluation.metrics import roc_auc


def test_calibrator_formula_by_hand() -> None:
    c = ScoreCalibrator().fit([3.0, 1.0, 2.0, np.nan])
    np.testing.assert_allclose(
        c.transform([0.0, 1.0, 2.0, 2.5, 3.0, 10.0]), [1, 1, 3 / 4, 2 / 4, 2 / 4, 1 / 4]
    )
    assert np.isnan(c.transform([np.nan])[0])


def test_combine_known_values() -> None:
    # fisher with one p-value is that p-value; min-p is Bonferroni
    np.testing.assert_allclose(combine_pvalues([[0.01]], "fisher"), [2.0])
    np.testing.assert_allclose(combine_pvalues([[0.01, 0.5]], "min-p"), [-np.log10(0.02)])
    # a missing detector (NaN) leaves the other's evidence intact; no evidence scores 0
    np.testing.assert_allclose(combine_pvalues([[0.001, np.nan], [np.nan, np.nan]], "fisher"), [3.0, 0.0])
    # fisher: two moderate p-values together beat either alone
    both = combine_pvalues([[0.02, 0.02]], "fisher")[0]
    assert both > -np.log10(0.02)
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion(method="mean")  # type: ignore[arg-type]


def _two_detectors(seed: int, n_benign: int, n_anom: int) -> tuple[np.ndarray, np.ndarray]:
    """Detector A sees the first half of the anomalies, detector B the second half."""
    rng = np.random.default_rng(seed)
    benign = np.column_stack([rng.normal(0, 1, n_benign), rng.gamma(2.0, 1.0, n_benign)])
    half = n_anom // 2
    a = np.column_stack([rng.normal(3.5, 1, half), rng.gamma(2.0, 1.0, half)])
    b = np.column_stack([rng.normal(0, 1, n_anom - half), rng.gamma(2.0, 1.0, n_anom - half) + 6.0])
    return benign, np.vstack([a, b])


@pytest.mark.parametrize("method", ["fisher", "min-p"])
def test_fusion_beats_each_detector_when_each_sees_half(method: str) -> None:
    cal, _ = _two_detectors(0, 3000, 0)
    benign, anom = _two_detectors(1, 2000, 200)
    fus = Fusion(method=method).fit(cal)  # type: ignore[arg-type]
    X = np.vstack([benign, anom])
    y = np.r_[np.zeros(len(benign)), np.ones(len(anom))]
    each = [roc_auc(y, X[:, j]) for j in range(2)]
    fused = roc_auc(y, fus.score(X))
    print(f"{method}: AUC A {each[0]:.3f}, B {each[1]:.3f}, fused {fused:.3f}")
    assert fused > max(each) + 0.1


def test_heldout_benign_pvalues_are_uniform() -> None:
    rng = np.random.default_rng(5)
    n, m = 20000, 2000
    c = ScoreCalibrator().fit(rng.lognormal(0, 2, n))
    p = c.transform(rng.lognormal(0, 2, m))
    # given one calibration set, the p-values' CDF is that set's empirical CDF: the KS distance
    # to the uniform follows the two-sample law; critical value at alpha = 0.001
    crit = 1.949 * np.sqrt((n + m) / (n * m))
    d = kstest(p, "uniform").statistic
    print(f"KS distance of held-out benign p-values to U(0,1): {d:.4f} (critical {crit:.4f})")
    assert d < crit
    # and not uniform when the held-out data are shifted (the test can fail)
    assert kstest(c.transform(rng.lognormal(1, 2, m)), "uniform").statistic > 3 * crit


@pytest.mark.parametrize("method", ["fisher", "min-p"])
@pytest.mark.parametrize("target", [0.01, 0.05])
def test_fused_threshold_hits_target_fpr_on_heldout_benign(method: str, target: float) -> None:
    rng = np.random.default_rng(7)

    def benign(n: int) -> np.ndarray:
        z = rng.normal(0, 1, n)  # correlated detectors: fisher's chi2 tail alone would be off
        return np.column_stack(
            [z + rng.normal(0, 0.5, n), np.exp(z + rng.normal(0, 0.5, n)), rng.gamma(1, 1, n)]
        )

    fus = Fusion(method=method, target_fpr=target).fit(benign(4000), threshold_scores=benign(4000))  # type: ignore[arg-type]
    fpr = float(fus.predict(benign(20000)).mean())
    print(f"{method} target {target}: held-out FPR {fpr:.4f}")
    assert 0.6 * target <= fpr <= 1.4 * target


def test_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    cal, _ = _two_detectors(0, 500, 0)
    fus = Fusion(method="min-p", target_fpr=0.02).fit(cal)
    fus.save(tmp_path / "f")
    back = Fusion.load(tmp_path / "f")
    X = np.vstack([cal, _two_detectors(3, 100, 40)[1]])
    np.testing.assert_array_equal(fus.score(X), back.score(X))
    assert back.threshold == fus.threshold and back.method == "min-p"
    c = fus.calibrators_[0]
    c.save(tmp_path / "c")
    np.testing.assert_array_equal(
        ScoreCalibrator.load(tmp_path / "c").transform(X[:, 0]), c.transform(X[:, 0])
    )
    w = tmp_path / "f" / "weights.npz"
    raw = bytearray(w.read_bytes())
    raw[-10] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="hash"):
        Fusion.load(tmp_path / "f")
