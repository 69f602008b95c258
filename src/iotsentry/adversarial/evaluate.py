"""BENCHMARKS Q6, feature space: detection rate before and after evasion at a fixed threshold.

Data (:func:`load_evasion_data`)
    IoT-23 scenarios 34-1, 44-1 and 20-1. Per scenario the flows are put in time order and split
    per class (:func:`~iotsentry.federated.sites.class_time_split`): the first 80 % of each
    class train, the rest is held out. A seeded 20 % of the benign *training* rows is kept out
    of fitting to calibrate thresholds; each training class is capped (seeded) to keep runs
    small. The attacked rows are held-out malicious flows of one class (C&C by default, at most
    200); the false-positive rate is measured on held-out benign flows (at most 2000).

Models (:func:`build_models`)
    ``mlp`` (:class:`~iotsentry.detectors.flow_mlp.FlowMLP`) and ``hgb``
    (:class:`~iotsentry.detectors.flow_classifier.FlowClassifier`) undefended; ``mlp-adv``
    (:func:`~iotsentry.adversarial.defences.adversarial_training`), ``ensemble``
    (:class:`~iotsentry.adversarial.defences.ViewEnsemble`) and ``default`` -- the hardened
    model recommended for shipping, the monotone bounded-feature model
    (:class:`~iotsentry.adversarial.defences.MonotoneFlowModel`).

Attacks (:func:`default_attacks`)
    PGD and FGSM (white box, gradient models only), HopSkipJump (labels only: alert or not at
    the operating threshold), ZOO (scores only) on at most ``n_blackbox`` flows, and PGD
    examples crafted on the undefended ``mlp`` replayed on every other model (``transfer``).
    Each runs unconstrained and constrained under one threat model (default: the strongest,
    :func:`~iotsentry.adversarial.defences.strongest_attacker` -- the attacker runs its C&C
    server and may send chaff flows).

Row of :func:`evasion_table`
    ``model, attack, constrained, space="feature", realisable`` (constrained and no row breaks a
    constraint), ``clean_detection_rate``, ``adversarial_detection_rate``, ``retained``
    (their ratio), ``fpr`` (held-out benign), ``threshold``, ``n``, ``n_violating`` (rows of
    this run breaking a constraint), ``violations_unconstrained`` (the same count for the
    unconstrained run of this model and attack), the median traffic the evading rows added
    (``added_packets``, ``added_bytes``, ``added_seconds``, ``added_chaff_flows``) and
    ``seconds``. The threshold is calibrated once per model at 1 % FPR on the benign
    calibration rows and used before and after the attack.

Command line: ``python -m iotsentry.adversarial.evaluate DATA_DIR [--out result.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.constraints import FlowConstraints
from iotsentry.adversarial.defences import (
    MonotoneFlowModel,
    ViewEnsemble,
    adversarial_training,
    strongest_attacker,
)
from iotsentry.adversarial.feature_attacks import FGSM, PGD, ZOO, FeatureAttack, HopSkipJump, Transfer
from iotsentry.capture.zeek import read_flows
from iotsentry.detectors.flow_classifier import FlowClassifier, flow_classes
from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.features.flow_features import flow_matrix
from iotsentry.federated.sites import class_time_split, scenario_files

__all__ = [
    "TRAIN_SCENARIOS",
    "AttackSpec",
    "EvasionData",
    "build_models",
    "default_attacks",
    "evasion_markdown",
    "evasion_table",
    "load_evasion_data",
    "run_evasion",
    "single_thread",
    "verdict",
]

F32 = npt.NDArray[np.float32]
TRAIN_SCENARIOS = ("34-1", "44-1", "20-1")
TARGET_FPR = 0.01
RETAIN_TARGET = 0.85


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One thread for scikit-learn/OpenMP and PyTorch (small models: threads only add overhead)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class EvasionData:
    """Rows for the evasion evaluation (see the module docstring)."""

    X_train: F32
    y_train: npt.NDArray[np.str_]
    X_calib: F32
    X_malicious: F32
    X_benign: F32
    malicious_class: str | None


def load_evasion_data(
    data_dir: str | Path,
    scenarios: Sequence[str] = TRAIN_SCENARIOS,
    *,
    train_frac: float = 0.8,
    calib_share: float = 0.2,
    max_per_class: int = 3000,
    n_malicious: int = 200,
    n_benign: int = 2000,
    malicious_class: str | None = "C&C",
    seed: int = 0,
) -> EvasionData:
    """Train, calibration, attacked and benign held-out rows from IoT-23 (module docstring).

    ``malicious_class=None`` attacks held-out malicious flows of every class.
    """
    files = scenario_files(data_dir)
    Xtr, ytr, Xte, yte = [], [], [], []
    for sid in scenarios:
        if sid not in files:
            raise FileNotFoundError(f"IoT-23 scenario {sid} not found under {Path(data_dir) / 'iot23'}")
        flows = read_flows(files[sid])
        X, _ = flow_matrix(flows)
        y = flow_classes(flows)
        order = np.argsort(np.asarray(flows.ts, dtype=np.float64), kind="stable")
        X, y = X[order], y[order]
        tr, te = class_time_split(y, train_frac)
        Xtr.append(X[tr])
        ytr.append(y[tr])
        Xte.append(X[te])
        yte.append(y[te])
    X_train, y_train = np.vstack(Xtr), np.concatenate(ytr)
    X_test, y_test = np.vstack(Xte), np.concatenate(yte)
    rng = np.random.default_rng(seed)
    benign = np.flatnonzero(y_train == "benign")
    calib = np.sort(rng.permutation(benign)[: round(calib_share * len(benign))])
    fit = np.ones(len(y_train), dtype=bool)
    fit[calib] = False
    keep = np.sort(
        np.concatenate(
            [
                rng.permutation(np.flatnonzero(fit & (y_train == c)))[:max_per_class]
                for c in np.unique(y_train)
            ]
        )
    )
    wanted = (y_test != "benign") if malicious_class is None else (y_test == malicious_class)
    mal = np.sort(rng.permutation(np.flatnonzero(wanted))[:n_malicious])
    ben = np.sort(rng.permutation(np.flatnonzero(y_test == "benign"))[:n_benign])
    return EvasionData(
        X_train=X_train[keep],
        y_train=y_train[keep],
        X_calib=X_train[calib],
        X_malicious=X_test[mal],
        X_benign=X_test[ben],
        malicious_class=malicious_class,
    )


def build_models(
    data: EvasionData, constraints: FlowConstraints | None = None, seed: int = 0
) -> dict[str, Any]:
    """Undefended ``mlp``, ``hgb``; hardened ``mlp-adv``, ``ensemble`` and ``default`` (monotone)."""
    c = constraints if constraints is not None else strongest_attacker()
    X, y = data.X_train, data.y_train
    mlp = FlowMLP(seed=seed).fit(X, y)
    hgb = FlowClassifier(random_state=seed).fit(X, y)
    adv = adversarial_training(X, y, constraints=c, base=mlp, seed=seed)
    ensemble = ViewEnsemble(c, random_state=seed).fit(X, y)
    monotone = MonotoneFlowModel(c, random_state=seed).fit(X, y)
    return {"mlp": mlp, "hgb": hgb, "mlp-adv": adv, "ensemble": ensemble, "default": monotone}


@dataclass(frozen=True)
class AttackSpec:
    """An attack of the table: ``make(model, constrained, threshold)`` builds it (``ValueError``
    when the model does not offer what it needs: the row is skipped); ``n_max`` bounds the rows."""

    name: str
    make: Callable[[Any, bool, float], FeatureAttack]
    n_max: int | None = None


def default_attacks(
    constraints: FlowConstraints,
    benign: F32,
    *,
    surrogate: Any | None = None,
    n_blackbox: int = 50,
    eps: float = 3.0,
    seed: int = 0,
) -> list[AttackSpec]:
    """PGD, FGSM, HopSkipJump, ZOO and (with a surrogate MLP) transfer PGD; ``eps`` in std units.

    ``benign`` rows are what the black-box attacker observes of benign traffic (search starts).
    """
    c = constraints
    specs = [
        AttackSpec(
            "pgd",
            lambda m, k, t: PGD(m, eps=eps, max_iter=40, constrained=k, constraints=c),
        ),
        AttackSpec("fgsm", lambda m, k, t: FGSM(m, eps=eps, constrained=k, constraints=c)),
        AttackSpec(
            "hopskipjump",
            lambda m, k, t: HopSkipJump(
                m, threshold=t, benign=benign, constrained=k, constraints=c, seed=seed
            ),
            n_blackbox,
        ),
        AttackSpec(
            "zoo",
            lambda m, k, t: ZOO(m, threshold=t, benign=benign, constrained=k, constraints=c, seed=seed),
            n_blackbox,
        ),
    ]
    if surrogate is not None:

        def transfer(m: Any, k: bool, t: float) -> FeatureAttack:
            if m is surrogate:
                raise ValueError("the surrogate itself: that is the white-box row")
            return Transfer(m, PGD(surrogate, eps=eps, max_iter=40, constrained=k, constraints=c))

        specs.append(AttackSpec("pgd-transfer", transfer))
    return specs


def _costs(c: FlowConstraints, X0: F32, Xa: F32, evaded: npt.NDArray[np.bool_]) -> dict[str, float]:
    """Median traffic added by the evading rows (NaN when none evaded)."""
    if not evaded.any():
        return {
            k: float("nan") for k in ("added_packets", "added_bytes", "added_seconds", "added_chaff_flows")
        }
    r0, r1 = c.decode(X0[evaded]), c.decode(Xa[evaded])
    d = {k: np.maximum(r1[k] - r0[k], 0.0) for k in r0}
    return {
        "added_packets": float(np.median(d["src_pkts"] + d["dst_pkts"])),
        "added_bytes": float(np.median(d["src_bytes"] + d["dst_bytes"])),
        "added_seconds": float(np.median(d["duration"])),
        "added_chaff_flows": float(np.median(d["ctx_flows"])),
    }


def evasion_table(
    models: Mapping[str, Any],
    X_malicious: npt.ArrayLike,
    X_calib: npt.ArrayLike,
    X_benign: npt.ArrayLike,
    attacks: Sequence[AttackSpec],
    *,
    constraints: FlowConstraints | None = None,
    target_fpr: float = TARGET_FPR,
) -> list[dict[str, Any]]:
    """One row per (model, attack, constrained) that the model supports (module docstring)."""
    c = constraints if constraints is not None else strongest_attacker()
    Xm = np.asarray(X_malicious, dtype=np.float32)
    Xb = np.asarray(X_benign, dtype=np.float32)
    rows: list[dict[str, Any]] = []
    for mname, model in models.items():
        thr = FprThreshold(target_fpr=target_fpr).calibrate(model.score(np.asarray(X_calib))).value_
        fpr = float(np.mean(model.score(Xb) > thr)) if len(Xb) else float("nan")
        for spec in attacks:
            X0 = Xm[: spec.n_max] if spec.n_max is not None else Xm
            clean = model.score(X0) > thr
            unconstrained_violating: int | None = None
            for constrained in (False, True):
                try:
                    attack = spec.make(model, constrained, thr)
                except ValueError:
                    break
                t0 = time.perf_counter()
                Xa = attack.generate(X0)
                seconds = time.perf_counter() - t0
                adv = model.score(Xa) > thr
                n_violating = int(np.sum(c.violation_counts(X0, Xa) > 0))
                if not constrained:
                    unconstrained_violating = n_violating
                clean_rate = float(clean.mean()) if len(X0) else float("nan")
                adv_rate = float(adv.mean()) if len(X0) else float("nan")
                rows.append(
                    {
                        "model": mname,
                        "attack": spec.name,
                        "constrained": constrained,
                        "space": "feature",
                        "realisable": bool(constrained and n_violating == 0),
                        "clean_detection_rate": clean_rate,
                        "adversarial_detection_rate": adv_rate,
                        "retained": adv_rate / clean_rate if clean_rate > 0 else float("nan"),
                        "fpr": fpr,
                        "threshold": float(thr),
                        "n": len(X0),
                        "n_violating": n_violating,
                        "violations_unconstrained": unconstrained_violating,
                        **_costs(c, X0, Xa, clean & ~adv),
                        "seconds": round(seconds, 2),
                    }
                )
    return rows


def verdict(rows: Sequence[Mapping[str, Any]], model: str = "default") -> dict[str, Any]:
    """Strongest realisable attack on ``model`` and whether it keeps >= 85 % of its clean detection."""
    mine = [r for r in rows if r["model"] == model and r["realisable"]]
    if not mine:
        return {"model": model, "strongest_realisable_attack": None, "meets_target": None}
    worst = min(mine, key=lambda r: r["retained"])
    return {
        "model": model,
        "strongest_realisable_attack": worst["attack"],
        "clean_detection_rate": worst["clean_detection_rate"],
        "adversarial_detection_rate": worst["adversarial_detection_rate"],
        "retained": worst["retained"],
        "fpr": worst["fpr"],
        "target_retained": RETAIN_TARGET,
        "meets_target": bool(worst["retained"] >= RETAIN_TARGET),
    }


def run_evasion(
    data_dir: str | Path,
    *,
    constraints: FlowConstraints | None = None,
    malicious_class: str | None = "C&C",
    n_malicious: int = 200,
    n_blackbox: int = 50,
    eps: float = 3.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Load the data, build the models, run :func:`evasion_table` (single-threaded) and judge it."""
    c = constraints if constraints is not None else strongest_attacker()
    t0 = time.perf_counter()
    with single_thread():
        data = load_evasion_data(
            data_dir, malicious_class=malicious_class, n_malicious=n_malicious, seed=seed
        )
        models = build_models(data, c, seed=seed)
        t_models = time.perf_counter() - t0
        attacks = default_attacks(
            c, data.X_calib, surrogate=models["mlp"], n_blackbox=n_blackbox, eps=eps, seed=seed
        )
        rows = evasion_table(models, data.X_malicious, data.X_calib, data.X_benign, attacks, constraints=c)
    return {
        "rows": rows,
        "verdict": verdict(rows),
        "meta": {
            "scenarios": list(TRAIN_SCENARIOS),
            "malicious_class": malicious_class,
            "n_train": len(data.y_train),
            "n_calib": len(data.X_calib),
            "n_malicious": len(data.X_malicious),
            "n_benign": len(data.X_benign),
            "threat_model": repr(c),
            "eps_std_units": eps,
            "target_fpr": TARGET_FPR,
            "default_model": "MonotoneFlowModel (bounded features, monotone boosting)",
            "seconds_models": round(t_models, 1),
            "seconds_total": round(time.perf_counter() - t0, 1),
        },
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.3g}"
    return "-" if v is None else str(v)


def evasion_markdown(result: Mapping[str, Any]) -> str:
    """The table as Markdown, then the verdict."""
    cols = [
        "model",
        "attack",
        "constrained",
        "realisable",
        "clean_detection_rate",
        "adversarial_detection_rate",
        "retained",
        "fpr",
        "n",
        "n_violating",
        "violations_unconstrained",
        "added_bytes",
        "added_packets",
        "added_chaff_flows",
        "seconds",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |" for r in result["rows"]]
    v = result.get("verdict", {})
    lines += ["", "Verdict: " + json.dumps(v, default=str)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iotsentry.adversarial.evaluate DATA_DIR [--out result.json]``."""
    p = argparse.ArgumentParser(description="Q6 feature-space evasion table")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--class", dest="malicious_class", default="C&C", help="held-out class to attack ('all')")
    p.add_argument("--n-blackbox", type=int, default=50)
    p.add_argument("--eps", type=float, default=3.0)
    a = p.parse_args(argv)
    cls = None if a.malicious_class == "all" else a.malicious_class
    result = run_evasion(a.data_dir, malicious_class=cls, n_blackbox=a.n_blackbox, eps=a.eps)
    print(evasion_markdown(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
