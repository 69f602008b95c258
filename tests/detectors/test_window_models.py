"""Window detectors: the shared contract suite, exactness of the array forest, robust distances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_contract as contract
from sklearn.ensemble import IsolationForest

from iotsentry.detectors.base import REGISTRY, Detector
from iotsentry.detectors.window_models import WindowIForest, WindowMCD, fit_device_models, log_windows
from iotsentry.evaluation.metrics import roc_auc
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.features.windows import WINDOW_FEATURES
from iotsentry.pipeline import AnalysisConfig, Analyzer


@pytest.fixture(params=["window-iforest", "window-mcd"])
def detector_cls(request: pytest.FixtureRequest) -> type[Detector]:
    """The shared checks below run on the window detectors even when the contract module was
    collected before they were registered."""
    return REGISTRY[request.param]


test_contract_shape = contract.test_scores_shape_dtype_finite
test_contract_init = contract.test_init_stores_only_parameters
test_contract_deterministic = contract.test_deterministic_and_scoring_does_not_mutate
test_contract_round_trip = contract.test_save_load_round_trip
test_contract_tampered = contract.test_tampered_weights_refused
test_contract_auc = contract.test_higher_scores_for_injected_anomalies


def test_array_forest_reproduces_sklearn_exactly() -> None:
    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 50.0, size=(500, len(WINDOW_FEATURES)))
    X[:, 4] = 0.0
    X[:, 7] = np.round(X[:, 7] / 60)
    Q = rng.gamma(2.0, 80.0, size=(300, len(WINDOW_FEATURES)))
    ours = WindowIForest(n_estimators=50, max_samples=128, random_state=3).fit(X)
    ref = IsolationForest(n_estimators=50, max_samples=128, random_state=3).fit(log_windows(X))
    np.testing.assert_allclose(ours.score_samples(Q), -ref.score_samples(log_windows(Q)), atol=1e-12)


def test_mcd_follows_the_correlation_and_ignores_training_contamination() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 1.0, size=(600, 1))
    L = np.hstack([4 + z, 4 + z + rng.normal(0, 0.1, size=(600, 1))])  # log1p packets ~ log1p bytes
    X = np.expm1(L)
    dirty = np.vstack([X, np.expm1(L[:60] + np.array([0.0, 3.0]))])  # 10 % off-axis rows in training
    det = WindowMCD().fit(dirty)
    on_axis = np.expm1(np.array([[5.0, 5.0]]))  # 1 sd along the correlation
    off_axis = np.expm1(np.array([[4.0, 5.0]]))  # same euclidean step, across it
    assert det.score_samples(off_axis)[0] > 3 * det.score_samples(on_axis)[0]
    held = np.expm1(np.hstack([4 + z[:200], 4 + z[:200] + rng.normal(0, 0.1, size=(200, 1))]))
    bad = np.expm1(np.log1p(held[:50]) + np.array([0.0, 1.0]))
    y = np.r_[np.zeros(len(held)), np.ones(len(bad))]
    assert roc_auc(y, det.score_samples(np.vstack([held, bad]))) > 0.99


def test_mcd_constant_column_deviation_is_finite_and_large() -> None:
    rng = np.random.default_rng(3)
    X = rng.gamma(2.0, 50.0, size=(200, 4))
    X[:, 2] = 0.0  # never seen while learning, e.g. new_services
    det = WindowMCD().fit(X)
    q = X[:5].copy()
    q[:, 2] = 3.0
    s0, s1 = det.score_samples(X[:5]), det.score_samples(q)
    assert np.isfinite(s1).all() and (s1 > s0 + 5).all()


@pytest.fixture(scope="module")
def camera_windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("home") / "home.pcap"
    truth = generate_home(path, seed=11, duration_s=3600.0, infect_at=0.75)
    an = Analyzer([path], AnalysisConfig(learn_seconds=1e9))
    an.run()
    assert an.baseline is not None
    prof = an.baseline.profiles[an.baseline.device_ids.index(truth.infected_mac)]
    X, ts = prof.matrix(), np.asarray(prof.window_ts)
    return X, ts, np.asarray([truth.infection_ts])


@pytest.mark.parametrize("name", ["window-iforest", "window-mcd"])
def test_infected_camera_windows_score_above_its_clean_windows(
    name: str, camera_windows: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, ts, (t_inf,) = camera_windows
    clean = np.flatnonzero(ts + 60.0 <= t_inf)
    train, held = clean[: int(0.7 * len(clean))], clean[int(0.7 * len(clean)) :]
    infected = np.flatnonzero(ts >= t_inf)
    det = REGISTRY[name]().fit(X[train])
    y = np.r_[np.zeros(len(held)), np.ones(len(infected))]
    auc = roc_auc(y, det.score_samples(np.vstack([X[held], X[infected]])))
    print(
        f"{name}: infected-camera window AUC {auc:.3f} ({len(held)} clean held-out, {len(infected)} infected)"
    )
    assert auc > 0.9


def test_fit_device_models_skips_short_profiles(tmp_path: Path) -> None:
    path = tmp_path / "h.pcap"
    generate_home(path, seed=4, duration_s=600.0, infect_at=1.0)
    an = Analyzer([path], AnalysisConfig(learn_seconds=1e9))
    an.run()
    assert an.baseline is not None
    models = fit_device_models(an.baseline, "window-iforest", min_windows=5)
    long_enough = {p.device_id for p in an.baseline.profiles if len(p.windows) >= 5}
    assert set(models) == long_enough and long_enough
    prof = next(p for p in an.baseline.profiles if p.device_id in models)
    s = models[prof.device_id].score_samples(prof.matrix())
    assert s.shape == (len(prof.windows),) and np.isfinite(s).all()
