"""FlowAutoencoder: weights as numpy arrays, federated determinism, scaler, clipping, real flows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from iotsentry.detectors.base import REGISTRY
from iotsentry.detectors.flow_autoencoder import FlowAutoencoder


def _benign(n: int = 300, f: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 50.0, size=(n, 3))
    # correlated columns (as flow features are): a few latent factors, mixed, plus noise
    mix = rng.uniform(0.0, 2.0, size=(3, f))
    return (base @ mix + rng.normal(0.0, 5.0, size=(n, f))).astype(np.float32)


def _small(**kw: object) -> FlowAutoencoder:
    params: dict[str, object] = {"hidden": (8, 3), "epochs": 3, "batch_size": 64, "seed": 0}
    params.update(kw)
    return FlowAutoencoder(**params)  # type: ignore[arg-type]


def test_registered_and_parameters_only_in_init() -> None:
    assert REGISTRY["flow-ae"] is FlowAutoencoder
    m = FlowAutoencoder()
    assert not [k for k in vars(m) if k.endswith("_")]
    json.dumps(m.get_params())  # JSON-ready


def test_import_does_not_import_torch() -> None:
    code = "import sys, iotsentry.detectors.flow_autoencoder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_weight_shapes_mirror_the_encoder() -> None:
    m = _small().init_weights(10)
    shapes = [w.shape for w in m.get_weights()]
    assert shapes == [(8, 10), (8,), (3, 8), (3,), (8, 3), (8,), (10, 8), (10,)]
    assert all(w.dtype == np.float32 for w in m.get_weights())


def test_get_set_weights_round_trip_gives_identical_scores() -> None:
    X = _benign()
    a = _small().fit(X)
    b = _small(seed=7)
    b.set_scaler(a.mean_, a.scale_)
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    # get_weights hands out copies: changing them does not touch the model
    w = a.get_weights()
    w[0][:] = 0.0
    assert not np.array_equal(a.get_weights()[0], w[0])


def test_partial_fit_from_set_weights_equals_continuing_training() -> None:
    X = _benign()
    a = _small().fit(X)
    start = a.get_weights()
    a.partial_fit(X, epochs=2)
    assert not all(np.array_equal(p, q) for p, q in zip(start, a.get_weights(), strict=True))
    b = _small()
    b.set_scaler(a.mean_, a.scale_)
    b.set_weights(start)
    b.partial_fit(X, epochs=2)
    for p, q in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)
    # fit == seeded init + partial_fit
    c = _small()
    c.set_scaler(a.mean_, a.scale_)
    c.init_weights(X.shape[1]).partial_fit(X)
    for p, q in zip(start, c.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_training_reduces_reconstruction_error() -> None:
    X = _benign()
    untrained = _small(epochs=0).fit(X).score_samples(X).mean()
    trained = _small(epochs=30).fit(X).score_samples(X).mean()
    assert trained < 0.5 * untrained


def test_set_scaler_is_respected() -> None:
    X = _benign()
    mean = np.full(X.shape[1], 10.0, dtype=np.float32)
    scale = np.full(X.shape[1], 100.0, dtype=np.float32)
    scale[3] = 0.0  # a constant feature: scale 1
    m = _small()
    m.set_scaler(mean, scale)
    m.fit(X)
    np.testing.assert_array_equal(m.mean_, mean)
    assert m.scale_[3] == 1.0 and (np.delete(m.scale_, 3) == 100.0).all()
    Z, _ = m.reconstruct(X[:5])
    expected = np.clip((X[:5] - mean) / m.scale_, -m.clip, m.clip)
    np.testing.assert_allclose(Z, expected, rtol=1e-6)
    learned = _small().fit(X)
    np.testing.assert_allclose(learned.mean_, X.astype(np.float64).mean(axis=0), rtol=1e-5)
    assert not np.array_equal(learned.score_samples(X), m.score_samples(X))


def test_shape_mismatch_raises() -> None:
    X = _benign()
    m = _small().fit(X)
    w = m.get_weights()
    with pytest.raises(ValueError, match="layer arrays"):
        m.set_weights(w[:-2])
    with pytest.raises(ValueError, match="shapes"):
        m.set_weights([np.zeros((w[0].shape[0], 11)), *w[1:]])
    bad = list(w)
    bad[2] = np.zeros((4, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="shapes"):
        m.set_weights(bad)
    with pytest.raises(ValueError, match="features"):
        m.score_samples(X[:, :9])
    with pytest.raises(ValueError, match="features"):
        m.partial_fit(X[:, :9])
    fresh = _small()
    fresh.set_scaler(np.zeros(12), np.ones(12))  # scaler width disagrees with the weights
    with pytest.raises(ValueError, match="shapes"):
        fresh.set_weights(w)
    with pytest.raises(ValueError, match="features"):
        m.set_scaler(np.zeros(12), np.ones(12))
    with pytest.raises(ValueError, match="not fitted"):
        _small().score_samples(X)


def test_clipping_bounds_extreme_rows() -> None:
    X = _benign()
    m = _small(clip=10.0).fit(X)
    extreme = X[:3].copy()
    extreme[:, 0] = 1e30
    Z, _ = m.reconstruct(extreme)
    assert np.abs(Z).max() <= 10.0
    s = m.score_samples(np.vstack([X, extreme]))
    assert np.isfinite(s).all()
    assert (s[-3:] > np.quantile(s[: len(X)], 0.99)).all()


def test_clipping_keeps_one_extreme_benign_row_from_dominating() -> None:
    """With a fixed (e.g. pooled) scaler one benign row 10^4 std out would dominate the MSE."""
    X = _benign()
    outlier = X[:1].copy()
    outlier[:, 0] = X[:, 0].mean() + 1e4 * X[:, 0].std()
    mean, std = X.mean(axis=0), X.std(axis=0)

    def ratio(clip: float) -> float:
        errs = []
        for data in (np.vstack([X, outlier]), X):
            m = _small(epochs=30, clip=clip)
            m.set_scaler(mean, std)
            errs.append(m.fit(data).score_samples(X).mean())
        return float(errs[0] / errs[1])

    assert ratio(10.0) < 1.2  # measured about 1.00
    assert ratio(1e30) > 1.5  # without clipping: about 2.4


def test_federated_average_round(tmp_path: Path) -> None:
    """Two sites train from the same global weights with one shared scaler; the averaged
    weights load into a fresh model and survive save/load."""
    X1, X2 = _benign(seed=1), _benign(seed=2)
    pooled = np.vstack([X1, X2]).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    server = _small()
    server.set_scaler(mean, std)
    global_w = server.init_weights(X1.shape[1]).get_weights()
    updates = []
    for X in (X1, X2):
        site = _small()
        site.set_scaler(mean, std)
        site.set_weights(global_w)
        updates.append(site.partial_fit(X, epochs=2).get_weights())
    avg = [(p + q) / 2 for p, q in zip(*updates, strict=True)]
    server.set_weights(avg)
    s = server.score_samples(X1)
    assert s.dtype == np.float64 and np.isfinite(s).all()
    server.save(tmp_path / "m")
    back = FlowAutoencoder.load(tmp_path / "m")
    np.testing.assert_array_equal(back.score_samples(X1), s)
    assert back.get_params() == server.get_params()
    # a loaded model keeps training from its weights
    back.partial_fit(X1, epochs=1)


@pytest.mark.slow
def test_real_flows_malicious_score_higher() -> None:
    """Benign 34-1 flows (first 80 % by time) plus benign honeypot 4-1 train; score 34-1's last 20 %."""
    from iotsentry.capture.zeek import read_flows
    from iotsentry.evaluation.metrics import roc_auc
    from iotsentry.features.flow_features import flow_matrix
    from iotsentry.federated.sites import scenario_files

    files = scenario_files(data_path("iot23").parent)
    if "34-1" not in files or "4-1" not in files:
        pytest.skip("IoT-23 scenarios 34-1 / 4-1 not available")

    def load(sid: str) -> tuple[np.ndarray, np.ndarray]:
        flows = read_flows(files[sid])
        X, _ = flow_matrix(flows)
        mal = np.asarray(flows.columns["label"]).astype(str) == "malicious"
        order = np.argsort(np.asarray(flows.columns["ts"], dtype=np.float64), kind="stable")
        return X[order], mal[order]

    X, mal = load("34-1")
    Xh, mal_h = load("4-1")
    assert not mal_h.any()
    cut = round(0.8 * len(X))
    train = np.vstack([X[:cut][~mal[:cut]], Xh])
    det = FlowAutoencoder().fit(train)
    y_test = mal[cut:]
    assert 0 < y_test.sum() < len(y_test)
    auc = roc_auc(y_test, det.score_samples(X[cut:]))
    print(f"flow-ae AUC on 34-1 last 20 %: {auc:.4f}")  # measured 0.985
    assert auc > 0.8
