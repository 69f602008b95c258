"""Flow detectors: contract checks, MLP weights, open set on real flows, model-directory round trip."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.zeek import read_flows
from iotsentry.detectors.base import REGISTRY
from iotsentry.detectors.flow_classifier import (
    UNKNOWN,
    FlowClassifier,
    FlowIForest,
    attack_class,
    flow_classes,
)
from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.detectors.flow_models import load_flow_model, score_flows, train_flows, write_scores_csv
from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.errors import InputError
from iotsentry.features.flow_features import flow_matrix


def _contract() -> ModuleType:
    """The shared contract suite, loaded from its file (it is collected before this module)."""
    spec = importlib.util.spec_from_file_location(
        "_flow_contract", Path(__file__).with_name("test_contract.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CONTRACT_CHECKS = [
    "test_scores_shape_dtype_finite",
    "test_init_stores_only_parameters",
    "test_deterministic_and_scoring_does_not_mutate",
    "test_save_load_round_trip",
    "test_tampered_weights_refused",
    "test_higher_scores_for_injected_anomalies",
]


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
def test_flow_iforest_meets_the_contract(check: str, tmp_path: Path) -> None:
    assert REGISTRY["flow-iforest"] is FlowIForest
    fn = getattr(_contract(), check)
    if "tmp_path" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        fn(FlowIForest, tmp_path)
    else:
        fn(FlowIForest)


def test_flow_iforest_matches_sklearn() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 3.0, size=(500, 5))
    ours = FlowIForest(n_estimators=30, random_state=3).fit(X).score_samples(X)
    ref = -IsolationForest(n_estimators=30, max_samples=256, random_state=3).fit(X).score_samples(X)
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_attack_class_mapping() -> None:
    assert attack_class("benign", "-") == "benign"
    assert attack_class("Benign", "-") == "benign"
    for det in ("C&C", "C&C-Torii", "C&C-FileDownload", "C&C-HeartBeat"):
        assert attack_class("malicious", det) == "C&C"
    assert attack_class("malicious", "PartOfAHorizontalPortScan") == "PortScan"
    assert attack_class("malicious", "DDoS") == "DDoS"
    assert attack_class("malicious", "FileDownload") == "FileDownload"
    assert attack_class("malicious", "Okiru") == "Okiru"
    assert attack_class("malicious", "-") == "malicious"


def _toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, 1, (300, 6)), rng.normal(3, 1, (60, 6)), rng.normal(-3, 1, (40, 6))])
    y = np.array(["benign"] * 300 + ["DDoS"] * 60 + ["C&C"] * 40)
    return X.astype(np.float32), y


def test_mlp_deterministic_and_weights_round_trip() -> None:
    X, y = _toy()
    a = FlowMLP(hidden=(16,), epochs=60, lr=1e-2, seed=7).fit(X, y)
    b = FlowMLP(hidden=(16,), epochs=60, lr=1e-2, seed=7).fit(X, y)
    c = FlowMLP(hidden=(16,), epochs=60, lr=1e-2, seed=8).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    w = a.get_weights()
    assert [x.shape for x in w] == [(16, 6), (16,), (3, 16), (3,)]
    assert all(isinstance(x, np.ndarray) for x in w)
    c.set_weights(w)
    np.testing.assert_array_equal(a.predict_proba(X), c.predict_proba(X))
    with pytest.raises(ValueError, match="shapes"):
        c.set_weights(w[:2])
    assert list(a.classes_) == ["benign", "C&C", "DDoS"]
    # separable toy classes: trained model beats chance by far
    assert np.mean(a.predict(X) == y) > 0.9
    back = FlowMLP.from_arrays(a.get_params(), a.state_arrays())
    np.testing.assert_array_equal(back.predict_proba(X), a.predict_proba(X))


def test_mlp_partial_fit_moves_from_given_weights() -> None:
    X, y = _toy()
    a = FlowMLP(hidden=(8,), epochs=1, seed=0).fit(X, y)
    before = a.get_weights()
    a.partial_fit(X, y, epochs=1)
    assert any(not np.array_equal(p, q) for p, q in zip(before, a.get_weights(), strict=True))


def test_classifier_unknown_on_far_benign_looking_rows() -> None:
    X, y = _toy()
    clf = FlowClassifier(max_iter=30).fit(X, y)
    far = np.full((5, 6), 40.0, dtype=np.float32)  # unlike any training row
    score, pred, proba = clf.evaluate(np.vstack([X[:300], far]))
    assert proba.shape == (305, 3)
    assert (score[-5:] > np.quantile(score[:300], 0.99)).all()
    ordinary = pred[:300]
    assert np.mean(ordinary == "benign") > 0.9
    # the classifier alone says "DDoS" (the class on that side) -- kept, or flagged as unknown
    assert set(pred[-5:]) <= {"DDoS", UNKNOWN}


@pytest.mark.slow
def test_withheld_attack_class_is_flagged_on_real_flows() -> None:
    """Train on 34-1 without its DDoS flows (plus benign 42-1); DDoS must not pass as benign."""
    mirai = read_flows(data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled"))
    trojan = read_flows(data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-42-1", "conn.log.labeled"))
    Xm, ym = flow_matrix(mirai)
    Xt, yt = flow_matrix(trojan)
    ym, yt = flow_classes(mirai), flow_classes(trojan)
    ddos = ym == "DDoS"
    assert ddos.sum() == 14394  # SOURCE.md
    X = np.vstack([Xm[~ddos], Xt])
    y = np.concatenate([ym[~ddos], yt])
    rng = np.random.default_rng(0)
    benign = np.flatnonzero(y == "benign")
    calib = np.zeros(len(y), dtype=bool)
    calib[rng.permutation(benign)[: len(benign) // 5]] = True
    clf = FlowClassifier(max_iter=50).fit(X[~calib], y[~calib])
    assert "DDoS" not in clf.classes_
    thr = FprThreshold(target_fpr=0.01).calibrate(clf.score(X[calib]))
    score, pred, _ = clf.evaluate(Xm[ddos])
    flagged = (pred != "benign") | thr.exceeded(score)
    assert flagged.mean() > 0.9
    assert np.mean(pred == UNKNOWN) + np.mean(pred != "benign") > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hgb", "mlp", "iforest"])
def test_train_score_round_trip(kind: str, tmp_path: Path) -> None:
    torii = data_path("iot23", "csv", "CTU-Malware-Capture-20-1-labeled.csv")
    mirai = data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv")
    manifest = train_flows([torii, mirai], tmp_path / "m", kind)
    on_disk = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert on_disk == manifest and on_disk["model"] == kind
    assert on_disk["training_class_counts"] == {"benign": 3193 + 211, "C&C": 16 + 25, "DDoS": 1}
    assert len(on_disk["feature_names"]) == len(flow_matrix(read_flows(mirai))[1])
    index, uid, score, cls = score_flows(mirai, tmp_path / "m")
    flows = read_flows(mirai)
    np.testing.assert_array_equal(index, np.arange(237))
    assert uid == list(flows.uid)
    assert score.shape == (237,) and np.isfinite(score).all()
    assert set(cls) <= {*manifest["classes"], UNKNOWN}
    # scoring again (hgb: a fresh deterministic refit) gives identical scores
    np.testing.assert_array_equal(score_flows(mirai, tmp_path / "m")[2], score)
    # the model has learnt something: malicious 44-1 flows (its own training data) rank above benign
    mal = flows_mal = np.asarray(flows.label) == "malicious"
    assert flows_mal.sum() == 26 and score[mal].mean() > score[~mal].mean()
    write_scores_csv(tmp_path / "s.csv", index, uid, score, cls)
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "uid", "score", "predicted_class"] and len(rows) == 238
    assert rows[1][1] == uid[0]


@pytest.mark.slow
def test_tampered_model_dir_refused(tmp_path: Path) -> None:
    mirai = data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv")
    train_flows([mirai], tmp_path / "m", "mlp")
    w = tmp_path / "m" / "weights.npz"
    raw = bytearray(w.read_bytes())
    raw[-20] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="hash"):
        load_flow_model(tmp_path / "m")
