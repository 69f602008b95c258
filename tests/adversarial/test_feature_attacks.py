"""Feature-space attacks, defences and the evasion table (synthetic flows; one slow IoT-23 run)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import data_path
from iotsentry.adversarial.constraints import FlowConstraints
from iotsentry.adversarial.defences import (
    MonotoneFlowModel,
    ViewEnsemble,
    adversarial_training,
    strongest_attacker,
)
from iotsentry.adversarial.evaluate import (
    AttackSpec,
    default_attacks,
    evasion_table,
    load_evasion_data,
    single_thread,
    verdict,
)
from iotsentry.adversarial.feature_attacks import (
    FGSM,
    PGD,
    ZOO,
    FeatureAttack,
    HopSkipJump,
    Transfer,
    offers,
)
from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.features.flow_features import flow_matrix
from iotsentry.schema import FlowBatch, ip_from_str

F32 = npt.NDArray[np.float32]


def padding_world(n: int = 240, seed: int = 0) -> tuple[F32, npt.NDArray[np.str_]]:
    """HTTP flows of one device: benign ones are large, malicious ones small (padding evades)."""
    rng = np.random.default_rng(seed)
    mal = rng.random(n) < 0.5
    sp = np.where(mal, rng.integers(3, 7, n), rng.integers(20, 40, n))
    dp = np.where(mal, rng.integers(3, 7, n), rng.integers(20, 40, n))
    spay = sp * np.where(mal, rng.integers(20, 60, n), rng.integers(600, 1000, n))
    dpay = dp * np.where(mal, rng.integers(20, 60, n), rng.integers(600, 1000, n))
    src = ip_from_str("192.168.1.10")
    dst = ip_from_str("203.0.113.5")
    flows = FlowBatch(
        {
            "ts": np.sort(rng.uniform(0, 3600, n)),
            "duration": np.where(mal, rng.uniform(0.1, 1, n), rng.uniform(5, 30, n)),
            "src_ip_hi": np.full(n, src[0], dtype=np.uint64),
            "src_ip_lo": np.full(n, src[1], dtype=np.uint64),
            "dst_ip_hi": np.full(n, dst[0], dtype=np.uint64),
            "dst_ip_lo": np.full(n, dst[1], dtype=np.uint64),
            "src_port": rng.integers(30000, 60000, n),
            "dst_port": np.full(n, 80),
            "proto": np.full(n, 6),
            "src_pkts": sp,
            "dst_pkts": dp,
            "src_bytes": sp * 40 + spay,
            "dst_bytes": dp * 40 + dpay,
            "src_payload": spay,
            "dst_payload": dpay,
            "conn_state": np.full(n, "SF", dtype=object),
            "history": np.full(n, "ShADadfF", dtype=object),
            "service": np.full(n, "http", dtype=object),
        }
    )
    return flow_matrix(flows)[0], np.where(mal, "C&C", "benign").astype(str)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    X, y = padding_world()
    Xt, yt = padding_world(120, seed=1)
    mlp = FlowMLP(hidden=(32,), epochs=40, lr=3e-3, seed=0).fit(X, y)
    thr = FprThreshold(target_fpr=0.02).calibrate(mlp.score(Xt[yt == "benign"])).value_
    mal = Xt[yt != "benign"]
    return {
        "X": X,
        "y": y,
        "mlp": mlp,
        "thr": thr,
        "mal": mal[mlp.score(mal) > thr][:12],
        "ref": Xt[yt == "benign"],
    }


class ScoreOnly:
    def __init__(self, model: Any) -> None:
        self.model = model

    def score(self, X: F32) -> npt.NDArray[np.float64]:
        return np.asarray(self.model.score(X), dtype=np.float64)


class LabelsOnly:
    def __init__(self, model: Any, thr: float) -> None:
        self.model, self.thr = model, thr

    def predict(self, X: F32) -> npt.NDArray[np.str_]:
        return np.where(self.model.score(X) > self.thr, "C&C", "benign").astype(str)


def test_attacks_refuse_models_lacking_what_they_need(world: dict[str, Any]) -> None:
    mlp, thr = world["mlp"], world["thr"]
    assert offers(mlp) >= {"gradients", "scores", "labels"}
    assert offers(ScoreOnly(mlp)) == {"scores", "labels", "none"}
    assert offers(LabelsOnly(mlp, thr)) == {"labels", "none"}
    for attack in (PGD, FGSM):
        with pytest.raises(ValueError, match="needs gradients"):
            attack(ScoreOnly(mlp))
    with pytest.raises(ValueError, match="needs scores"):
        ZOO(LabelsOnly(mlp, thr))
    with pytest.raises(ValueError, match="needs labels"):
        HopSkipJump(object())
    with pytest.raises(ValueError, match="threshold"):
        HopSkipJump(ScoreOnly(mlp))
    with pytest.raises(ValueError, match="target class"):
        PGD(mlp, target="no-such-class")
    HopSkipJump(ScoreOnly(mlp), threshold=thr)
    HopSkipJump(LabelsOnly(mlp, thr))
    Transfer(object(), PGD(mlp))


def _attacks(world: dict[str, Any], c: FlowConstraints) -> dict[str, Callable[[bool], FeatureAttack]]:
    mlp, thr, ref = world["mlp"], world["thr"], world["ref"]
    return {
        "pgd": lambda k: PGD(mlp, eps=3.0, max_iter=20, constrained=k, constraints=c),
        "fgsm": lambda k: FGSM(mlp, eps=3.0, constrained=k, constraints=c),
        "hopskipjump": lambda k: HopSkipJump(
            ScoreOnly(mlp), threshold=thr, benign=ref, max_iter=3, max_eval=50, constrained=k, constraints=c
        ),
        "hopskipjump-labels": lambda k: HopSkipJump(
            LabelsOnly(mlp, thr), benign=ref, max_iter=3, max_eval=50, constrained=k, constraints=c
        ),
        "zoo": lambda k: ZOO(ScoreOnly(mlp), threshold=thr, max_iter=5, constrained=k, constraints=c),
        "transfer": lambda k: Transfer(ScoreOnly(mlp), PGD(mlp, max_iter=10, constrained=k, constraints=c)),
    }


@pytest.mark.parametrize("threat", ["own-direction", "strongest"])
@pytest.mark.parametrize("name", ["pgd", "fgsm", "hopskipjump", "hopskipjump-labels", "zoo", "transfer"])
def test_constrained_attacks_are_realisable(world: dict[str, Any], threat: str, name: str) -> None:
    c = FlowConstraints() if threat == "own-direction" else strongest_attacker()
    X0 = world["mal"][:6]
    Xa = _attacks(world, c)[name](True).generate(X0)
    assert Xa.shape == X0.shape and Xa.dtype == np.float32
    assert c.violations(X0, Xa) == [[] for _ in range(len(X0))]


def test_unconstrained_pgd_breaks_constraints(world: dict[str, Any]) -> None:
    c = FlowConstraints()
    X0 = world["mal"]
    Xa = PGD(world["mlp"], eps=1.0, max_iter=10).generate(X0)
    assert (c.violation_counts(X0, Xa) > 0).all()


def test_constrained_pgd_evades_when_padding_suffices(world: dict[str, Any]) -> None:
    """Where benign means "bigger", padding and extra packets evade, and stay realisable."""
    mlp, thr, X0 = world["mlp"], world["thr"], world["mal"]
    c = strongest_attacker()
    assert (mlp.score(X0) > thr).all() and len(X0) >= 8
    Xa = PGD(mlp, eps=5.0, max_iter=40, constrained=True, constraints=c).generate(X0)
    assert np.mean(mlp.score(Xa) > thr) <= 0.5
    assert int(c.violation_counts(X0, Xa).sum()) == 0
    raw0, raw1 = c.decode(X0), c.decode(Xa)
    assert (raw1["src_bytes"] >= raw0["src_bytes"]).all() and (raw1["src_bytes"] > raw0["src_bytes"]).any()


def test_monotone_model_cannot_be_lowered_by_realisable_changes(world: dict[str, Any]) -> None:
    c = strongest_attacker()
    model = MonotoneFlowModel(c, max_iter=50).fit(world["X"], world["y"])
    X0 = world["mal"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        P = c.project(X0, X0 + c.mask(X0) * rng.uniform(-1, 6, X0.shape).astype(np.float32))
        assert (model.score(P) >= model.score(X0) - 1e-12).all()
    names = [c.names[i] for i in model.columns_]
    assert "log_src_bytes_per_pkt" not in names and "ctx_failed_frac" not in names
    assert "proto_tcp" in names and "log_src_bytes" in names


def test_adversarial_training_and_ensemble_give_score_models(world: dict[str, Any]) -> None:
    X, y = world["X"], world["y"]
    base = world["mlp"]
    before = [w.copy() for w in base.weights_]
    adv = adversarial_training(X, y, rounds=1, n_adv=40, pgd_steps=5, epochs_per_round=2, base=base)
    assert all(np.array_equal(a, b) for a, b in zip(before, base.weights_, strict=True))  # base untouched
    assert isinstance(adv, FlowMLP) and np.isfinite(adv.score(X)).all()
    ens = ViewEnsemble(mlp=adv).fit(X, y)
    s = ens.score(X)
    assert s.shape == (len(X),) and np.isfinite(s).all()
    assert set(ens.member_scores(X)) == {"monotone", "fixed-view", "mlp-adv"}


def test_evasion_table_rows(world: dict[str, Any]) -> None:
    c = strongest_attacker()
    models = {"mlp": world["mlp"], "default": MonotoneFlowModel(c, max_iter=30).fit(world["X"], world["y"])}
    specs = [
        AttackSpec("pgd", lambda m, k, t: PGD(m, max_iter=5, constrained=k, constraints=c)),
        AttackSpec("zoo", lambda m, k, t: ZOO(m, threshold=t, max_iter=3, constrained=k, constraints=c), 3),
    ]
    ref = world["ref"]
    rows = evasion_table(models, world["mal"], ref, ref, specs, constraints=c)
    assert [(r["model"], r["attack"], r["constrained"]) for r in rows] == [
        ("mlp", "pgd", False),
        ("mlp", "pgd", True),
        ("mlp", "zoo", False),
        ("mlp", "zoo", True),
        ("default", "zoo", False),
        ("default", "zoo", True),
    ]
    for r in rows:
        assert r["space"] == "feature" and r["realisable"] == (r["constrained"] and r["n_violating"] == 0)
        assert r["violations_unconstrained"] is not None
        assert 0.0 <= r["adversarial_detection_rate"] <= 1.0 and 0.0 <= r["fpr"] <= 1.0
    assert rows[0]["n_violating"] > 0 and rows[1]["realisable"]
    v = verdict(rows)
    assert v["model"] == "default" and v["strongest_realisable_attack"] == "zoo"
    assert default_attacks(c, ref, surrogate=world["mlp"])[-1].name == "pgd-transfer"


@pytest.mark.slow
def test_iot23_undefended_mlp_falls_to_unconstrained_pgd_only() -> None:
    data = load_evasion_data(data_path("iot23").parent, max_per_class=1500, n_malicious=100, n_benign=500)
    mlp = FlowMLP(seed=0).fit(data.X_train, data.y_train)
    thr = FprThreshold(target_fpr=0.01).calibrate(mlp.score(data.X_calib)).value_
    c = strongest_attacker()
    X0 = data.X_malicious
    clean = float(np.mean(mlp.score(X0) > thr))
    free = PGD(mlp, eps=3.0).generate(X0)
    bound = PGD(mlp, eps=3.0, constrained=True, constraints=c).generate(X0)
    free_rate = float(np.mean(mlp.score(free) > thr))
    bound_rate = float(np.mean(mlp.score(bound) > thr))
    print(
        f"\nIoT-23 C&C, mlp at 1% FPR: clean {clean:.3f}, unconstrained PGD {free_rate:.3f}, "
        f"constrained PGD {bound_rate:.3f} (drop {clean - bound_rate:.3f})"
    )
    assert clean >= 0.9
    assert free_rate <= 0.5 * clean  # a large drop without constraints...
    assert (c.violation_counts(X0, free) > 0).all()  # ...but none of those rows is realisable
    assert int(c.violation_counts(X0, bound).sum()) == 0
