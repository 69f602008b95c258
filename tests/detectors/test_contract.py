"""The shared check suite, run over every registered detector."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import iotsentry.detectors
from iotsentry.detectors.base import REGISTRY, Detector
from iotsentry.evaluation.metrics import roc_auc
from iotsentry.features.windows import WINDOW_FEATURES

# every detector module registers its detectors on import: run the suite over all of them
for _mod in pkgutil.iter_modules(iotsentry.detectors.__path__):
    importlib.import_module(f"iotsentry.detectors.{_mod.name}")

N_FEATURES = {"profile-window": len(WINDOW_FEATURES)}


def _data(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = N_FEATURES.get(name, 8)
    benign = rng.gamma(2.0, 50.0, size=(400, f))
    anomalies = benign[:40] * rng.uniform(20.0, 200.0, size=(40, f))
    return benign, anomalies


@pytest.fixture(params=sorted(REGISTRY))
def detector_cls(request: pytest.FixtureRequest) -> type[Detector]:
    return REGISTRY[request.param]


def test_scores_shape_dtype_finite(detector_cls: type[Detector]) -> None:
    benign, anomalies = _data(detector_cls.name)
    det = detector_cls().fit(benign)
    s = det.score_samples(np.vstack([benign, anomalies]))
    assert s.shape == (len(benign) + len(anomalies),)
    assert s.dtype == np.float64
    assert np.isfinite(s).all()


def test_init_stores_only_parameters(detector_cls: type[Detector]) -> None:
    det = detector_cls()
    assert not [k for k in vars(det) if k.endswith("_")], "learned state must appear only after fit"


def test_deterministic_and_scoring_does_not_mutate(detector_cls: type[Detector]) -> None:
    benign, anomalies = _data(detector_cls.name)
    a = detector_cls().fit(benign)
    b = detector_cls().fit(benign)
    X = np.vstack([benign, anomalies])
    before = {k: np.array(v, copy=True) for k, v in vars(a).items() if k.endswith("_")}
    s1 = a.score_samples(X)
    s2 = a.score_samples(X)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1, b.score_samples(X))
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(a, k), v)


def test_save_load_round_trip(detector_cls: type[Detector], tmp_path: Path) -> None:
    benign, anomalies = _data(detector_cls.name)
    det = detector_cls().fit(benign)
    det.save(tmp_path / "m")
    back = detector_cls.load(tmp_path / "m")
    X = np.vstack([benign, anomalies])
    np.testing.assert_array_equal(det.score_samples(X), back.score_samples(X))


def test_tampered_weights_refused(detector_cls: type[Detector], tmp_path: Path) -> None:
    from iotsentry.errors import InputError

    benign, _ = _data(detector_cls.name)
    detector_cls().fit(benign).save(tmp_path / "m")
    w = tmp_path / "m" / "weights.npz"
    raw = bytearray(w.read_bytes())
    raw[-10] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="hash"):
        detector_cls.load(tmp_path / "m")


def test_higher_scores_for_injected_anomalies(detector_cls: type[Detector]) -> None:
    benign, anomalies = _data(detector_cls.name)
    train, test = benign[:300], benign[300:]
    det = detector_cls().fit(train)
    X = np.vstack([test, anomalies])
    y = np.r_[np.zeros(len(test)), np.ones(len(anomalies))]
    assert roc_auc(y, det.score_samples(X)) > 0.5
