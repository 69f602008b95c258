"""Federated training of a flow model on IoT-23 sites, compared with centralized and local-only.

:func:`simulate` builds the sites (:mod:`iotsentry.federated.sites`), runs the federation with
the ClientApp / ServerApp of this package, and compares with two baselines trained from the
same initial weights with the same epoch budget (``n_rounds * local_epochs`` passes):

* ``centralized``: one model on the pooled train rows of all sites;
* ``local``: one model per site on its own train rows.

Two runtimes carry the same apps: ``ray`` is Flower's Simulation Runtime
(``flwr.simulation.run_simulation``, one CPU per client); ``local`` is
:class:`~iotsentry.federated.local_grid.LocalGrid` (same strategies and ClientApp, messages
delivered in-process, no Ray start-up), used by the poisoning matrix.

All models are scored on each site's held-out rows (:func:`evaluate_model`); the headline
figure is the unweighted mean over the sites whose held-out part has both classes of each
site's ROC AUC, reported beside the pooled AUC, the pooled F1 at the model's decision
(``P(malicious) >= 0.5``) and the recall of held-out command-and-control flows at that
decision (the class a targeted poisoning attack aims at).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.evaluation.metrics import roc_auc
from iotsentry.federated.client_app import make_client_app, new_model
from iotsentry.federated.models import DEFAULT_HIDDEN, MODEL_KINDS
from iotsentry.federated.poisoning import AttackConfig
from iotsentry.federated.sites import CLASSES, Site, build_sites, is_cc, pooled_scaler, save_sites
from iotsentry.federated.strategies import AGGREGATORS

__all__ = ["FLSetup", "evaluate_model", "prepare", "root_dataset", "run_federation", "simulate"]

RUNTIMES = ("ray", "local")


@dataclass
class FLSetup:
    """Sites, the shared scaler and the initial weights every compared model starts from."""

    sites: list[Site]
    mean: np.ndarray
    scale: np.ndarray
    w0: list[np.ndarray]
    hidden: tuple[int, ...]
    seed: int
    kind: str = "mlp"

    def model(self, weights: Sequence[np.ndarray] | None = None, seed_offset: int = 0) -> Any:
        m = new_model(self.hidden, self.seed + seed_offset, self.mean, self.scale, self.kind)
        m.set_weights(self.w0 if weights is None else weights)
        return m


def prepare(
    data_dir: str | Path,
    splits: dict[str, int] | None = None,
    hidden: Sequence[int] | None = None,
    seed: int = 0,
    split: str = "class-time",
    kind: str = "mlp",
) -> FLSetup:
    """Build the sites (:func:`~iotsentry.federated.sites.build_sites`), the pooled scaler and
    seeded initial weights of a ``kind`` model (:mod:`iotsentry.federated.models`)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown federated model {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    hidden = tuple(int(h) for h in (DEFAULT_HIDDEN[kind] if hidden is None else hidden))
    sites = build_sites(data_dir, splits, split=split)
    mean, scale = pooled_scaler(sites)
    init = new_model(hidden, seed, mean, scale, kind)
    if kind == "ae":
        init.init_weights()
    else:
        init.epochs = 0
        init.fit(sites[0].X_train[:2], sites[0].y_train[:2])  # initialise weights only (0 epochs)
    return FLSetup(sites, mean, scale, init.get_weights(), hidden, seed, kind)


def evaluate_model(
    models: Any, sites: Sequence[Site], threshold: float | Sequence[float] = 0.5
) -> dict[str, Any]:
    """Held-out metrics of one model (or one model per site) on every site.

    Returns ``auc_site_mean`` (mean over evaluable sites), ``auc_cross_site_mean`` (for one
    model per site: the mean AUC of every site's model on every *other* evaluable site's
    held-out rows, i.e. how well a site detects what it never saw; for one shared model the
    same as ``auc_site_mean``), ``auc_per_site`` (``None`` where the
    held-out part has one class), ``auc_pooled``, ``f1`` (pooled, malicious positive, decision
    ``score >= threshold``), ``targeted_recall`` (share of held-out C&C flows at or above the
    threshold) and ``n_targeted``.
    """
    per = list(models) if isinstance(models, Sequence) else [models] * len(sites)
    models = models if isinstance(models, Sequence) else None
    scores = [m.score(s.X_test) for m, s in zip(per, sites, strict=True)]
    site_auc: list[float | None] = [
        float(roc_auc(s.y_test == CLASSES[1], sc)) if s.evaluable else None
        for s, sc in zip(sites, scores, strict=True)
    ]
    y = np.concatenate([s.y_test == CLASSES[1] for s in sites])
    sc = np.concatenate(scores)
    cc = np.concatenate([is_cc(s.d_test) for s in sites])
    thr = np.concatenate(
        [
            np.full(len(s.y_test), t)
            for s, t in zip(sites, np.broadcast_to(threshold, len(sites)), strict=True)
        ]
    )
    pred = sc >= thr
    tp = int((pred & y).sum())
    f1 = 2 * tp / max(int(pred.sum()) + int(y.sum()), 1)
    valid = [a for a in site_auc if a is not None]
    evaluable = [s for s in sites if s.evaluable]
    owners = per if models is not None else per[:1]
    cross = [
        float(roc_auc(s.y_test == CLASSES[1], m.score(s.X_test)))
        for i, m in enumerate(owners)
        for j, s in enumerate(sites)
        if s.evaluable and (len(owners) == 1 or i != j)
    ]
    return {
        "auc_cross_site_mean": float(np.mean(cross)) if evaluable else float("nan"),
        "auc_site_mean": float(np.mean(valid)) if valid else float("nan"),
        "auc_per_site": site_auc,
        "auc_pooled": float(roc_auc(y, sc)),
        "f1": float(f1),
        "targeted_recall": float(pred[cc].mean()) if cc.any() else float("nan"),
        "n_targeted": int(cc.sum()),
    }


def root_dataset(
    sites: Sequence[Site], per_class: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The server's small clean dataset: ``per_class`` benign and malicious train rows.

    A stand-in for the operator's own labelled lab captures (FLTrust's root dataset); drawn
    with a fixed seed from the pooled train rows, so it is clean but not representative of
    every site. Returns rows, labels and IoT-23 detailed labels.
    """
    X = np.concatenate([s.X_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    d = np.concatenate([s.d_train for s in sites])
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            rng.choice(np.flatnonzero(y == c), size=min(per_class, int((y == c).sum())), replace=False)
            for c in CLASSES
        ]
    )
    return X[idx], y[idx], d[idx]


def _root_validator(setup: FLSetup, min_rows: int = 10) -> Any:
    """Per-group cross-entropy of a proposed model on the root dataset (``guarded``).

    Groups: benign, command-and-control, and every other detailed malicious label with at
    least ``min_rows`` rows.
    """
    Xr, yr, dr = root_dataset(setup.sites, seed=setup.seed)
    group = np.where(yr == CLASSES[0], "benign", np.where(is_cc(dr), "C&C", dr))
    names = [g for g in dict.fromkeys(group.tolist()) if (group == g).sum() >= min_rows]
    target = (yr == CLASSES[1]).astype(int)

    def validate(w: list[np.ndarray]) -> np.ndarray:
        p = np.clip(setup.model(w).predict_proba(Xr), 1e-7, 1.0)
        ce = -np.log(p[np.arange(len(target)), target])
        return np.array([ce[group == g].mean() for g in names])

    return validate


def _fltrust_update(setup: FLSetup, local_epochs: int) -> Any:
    Xr, yr, _ = root_dataset(setup.sites, seed=setup.seed)

    def server_update(w: list[np.ndarray], rnd: int) -> list[np.ndarray]:
        m = setup.model(w)
        new = m.partial_fit(Xr, yr, epochs=local_epochs).get_weights()
        return [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(new, w, strict=True)]

    return server_update


def run_federation(
    setup: FLSetup,
    n_rounds: int,
    aggregator: str,
    *,
    local_epochs: int = 1,
    runtime: str = "ray",
    attack: AttackConfig | None = None,
    malicious: frozenset[int] = frozenset(),
    num_cpus: int = 2,
    **strategy_kwargs: Any,
) -> dict[str, Any]:
    """Run the ClientApp/ServerApp over the sites; returns the ServerApp's ``out`` record.

    ``out["arrays"]`` holds the final global weights, ``out["eval"]`` the per-round per-site
    evaluation replies, ``out["bytes_down"]`` / ``out["bytes_up"]`` the payload per site per
    round.
    """
    from iotsentry.federated.server_app import make_server_app, run_rounds

    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; choose from {', '.join(AGGREGATORS)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if attack is not None and setup.kind != "mlp":
        raise ValueError("poisoning attacks are defined for the supervised model (kind 'mlp') only")
    if setup.kind != "mlp" and aggregator in ("fltrust", "guarded"):
        raise ValueError(
            f"{aggregator} trains / validates on the server's labelled root dataset: --model mlp only"
        )
    if aggregator == "fltrust":
        strategy_kwargs.setdefault("server_update", _fltrust_update(setup, local_epochs))
    if aggregator == "guarded":
        strategy_kwargs.setdefault("validate", _root_validator(setup))
    strategy_kwargs.setdefault("seed", setup.seed)
    n = len(setup.sites)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="iotsentry-fl-") as tmp:
        sites_file = str(Path(tmp) / "sites.npz")
        save_sites(setup.sites, sites_file)
        client = make_client_app(
            sites_file,
            hidden=setup.hidden,
            seed=setup.seed,
            attack=attack,
            malicious=malicious,
            kind=setup.kind,
        )
        if runtime == "local":
            from iotsentry.federated.local_grid import LocalGrid

            run_rounds(
                LocalGrid(client, n), aggregator, n_rounds, n, setup.w0, out, local_epochs, **strategy_kwargs
            )
        else:
            os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
            from flwr.simulation import run_simulation

            run_simulation(
                server_app=make_server_app(
                    aggregator, n_rounds, n, setup.w0, out, local_epochs, **strategy_kwargs
                ),
                client_app=client,
                num_supernodes=n,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False},
                },
            )
    if "arrays" not in out:
        raise RuntimeError("the Flower federation did not finish (no final weights); see its log")
    return out


def _threshold(setup: FLSetup, model: Any, fpr: float = 0.01) -> float:
    """Decision threshold: 0.5 for the classifier; for the autoencoder the score exceeded by
    ``fpr`` of the pooled benign train rows (each local-only model gets its own)."""
    if setup.kind == "mlp":
        return 0.5
    benign = np.concatenate([s.X_train[s.y_train == CLASSES[0]] for s in setup.sites])
    return float(np.quantile(model.score(benign), 1.0 - fpr))


def _site_mean(rows: list[dict[str, Any]]) -> float:
    v = [float(r["auc"]) for r in rows if int(r["auc-valid"])]
    return float(np.mean(v)) if v else float("nan")


def simulate(
    n_rounds: int,
    aggregator: str,
    data_dir: str | Path,
    *,
    splits: dict[str, int] | None = None,
    local_epochs: int = 1,
    hidden: Sequence[int] | None = None,
    seed: int = 0,
    num_cpus: int = 2,
    runtime: str = "ray",
    setup: FLSetup | None = None,
    attack: str = "none",
    malicious_fraction: float = 0.0,
    kind: str = "mlp",
    **strategy_kwargs: Any,
) -> dict[str, Any]:
    """Run the federation and the two baselines; see the module docstring.

    With ``attack`` and ``malicious_fraction`` some sites poison the federation
    (:func:`iotsentry.federated.poison_matrix.malicious_sites` picks them); the baselines are
    trained on clean data.

    Returns a JSON-ready dict with ``federated`` / ``centralized`` / ``local`` blocks (each
    :func:`evaluate_model`'s keys; ``federated`` adds ``per_round_site_mean`` and the
    ClientApp-reported ``auc_site_mean_reported``), ``sites``, ``bytes_per_site_per_round``,
    ``weights`` (final global weights, not JSON) and ``seconds``.
    """
    t0 = time.time()
    setup = setup if setup is not None else prepare(data_dir, splits, hidden, seed, kind=kind)
    sites = setup.sites
    budget = n_rounds * local_epochs
    t1 = time.time()
    from iotsentry.federated.poison_matrix import malicious_sites

    bad = malicious_sites(len(sites), malicious_fraction, setup.seed) if attack != "none" else frozenset()
    cfg = AttackConfig(attack, len(sites), len(bad), seed=setup.seed) if bad else None
    out = run_federation(
        setup,
        n_rounds,
        aggregator,
        local_epochs=local_epochs,
        runtime=runtime,
        num_cpus=num_cpus,
        attack=cfg,
        malicious=bad,
        **strategy_kwargs,
    )
    t_fl = time.time() - t1
    fed = setup.model(out["arrays"])
    central = setup.model()
    central.partial_fit(
        np.concatenate([s.X_train for s in sites]), np.concatenate([s.y_train for s in sites]), epochs=budget
    )
    locals_ = [
        setup.model(seed_offset=i).partial_fit(s.X_train, s.y_train, epochs=budget)
        for i, s in enumerate(sites)
    ]
    thr = _threshold(setup, fed)
    fed_eval = evaluate_model(fed, sites, thr)
    fed_eval["auc_site_mean_reported"] = _site_mean(out["eval"][-1])
    fed_eval["per_round_site_mean"] = [_site_mean(rows) for rows in out["eval"]]
    fed_eval["per_round_per_site"] = [
        {int(r["partition-id"]): (float(r["auc"]) if int(r["auc-valid"]) else None) for r in rows}
        for rows in out["eval"]
    ]
    return {
        "aggregator": aggregator,
        "runtime": runtime,
        "attack": attack,
        "malicious_sites": sorted(sites[i].name for i in bad),
        "n_rounds": n_rounds,
        "local_epochs": local_epochs,
        "sites": [
            {
                "name": s.name,
                "n_train": len(s.y_train),
                "n_test": len(s.y_test),
                "malicious_train": int((s.y_train == CLASSES[1]).sum()),
                "malicious_test": int((s.y_test == CLASSES[1]).sum()),
                "evaluable": s.evaluable,
            }
            for s in sites
        ],
        "federated": fed_eval,
        "centralized": evaluate_model(central, sites, _threshold(setup, central)),
        "local": evaluate_model(locals_, sites, [_threshold(setup, m) for m in locals_]),
        "model": setup.kind,
        "bytes_per_site_per_round": {"down": out["bytes_down"], "up": out["bytes_up"]},
        "weights": out["arrays"],
        "seconds": {"total": time.time() - t0, "federation": t_fl},
    }
