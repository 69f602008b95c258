"""Federated training of :class:`FlowMLP` on IoT-23 sites with Flower's Simulation Runtime.

:func:`simulate` builds the sites (:mod:`iotsentry.federated.sites`), runs
``flwr.simulation.run_simulation`` (Ray backend, 1 CPU per client, 2 CPUs in all by default)
with the ClientApp / ServerApp of this package, and compares with two baselines trained from
the same initial weights with the same epoch budget (``n_rounds * local_epochs`` passes):

* ``centralized``: one model on the pooled train rows of all sites;
* ``local``: one model per site on its own train rows.

All three are scored on each site's held-out rows (ROC AUC of ``1 - P(benign)``); the
reported figure is the unweighted mean over the sites whose held-out part has both classes
(others have no defined AUC). The pooled held-out AUC is reported too.

Run: ``python -m iotsentry.federated.simulate --rounds 10 --aggregator fedavg``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.evaluation.metrics import roc_auc
from iotsentry.federated.client_app import make_client_app, new_model
from iotsentry.federated.server_app import AGGREGATORS, make_server_app
from iotsentry.federated.sites import CLASSES, Site, build_sites, pooled_scaler, save_sites

__all__ = ["simulate"]


def _site_aucs(model: FlowMLP, sites: Sequence[Site]) -> list[float | None]:
    return [
        float(roc_auc(s.y_test == CLASSES[1], model.score(s.X_test))) if s.evaluable else None for s in sites
    ]


def _pooled_auc(models: Sequence[FlowMLP], sites: Sequence[Site]) -> float:
    y = np.concatenate([s.y_test == CLASSES[1] for s in sites])
    sc = np.concatenate([m.score(s.X_test) for m, s in zip(models, sites, strict=True)])
    return float(roc_auc(y, sc))


def _mean(values: Sequence[float | None]) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def simulate(
    n_rounds: int,
    aggregator: str,
    data_dir: str | Path,
    *,
    splits: dict[str, int] | None = None,
    local_epochs: int = 1,
    hidden: Sequence[int] = (64, 32),
    seed: int = 0,
    num_cpus: int = 2,
    **strategy_kwargs: Any,
) -> dict[str, Any]:
    """Run the Flower simulation and the two baselines; see the module docstring.

    Returns a JSON-ready dict with ``federated`` / ``centralized`` / ``local`` blocks (each
    ``auc_site_mean``, ``auc_per_site``, ``auc_pooled``), ``sites``, ``bytes_per_site_per_round``
    and ``seconds``.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; choose from {AGGREGATORS}")
    t0 = time.time()
    sites = build_sites(data_dir, splits)
    mean, scale = pooled_scaler(sites)
    init = new_model(hidden, seed, mean, scale)
    init.epochs = 0
    init.fit(sites[0].X_train[:2], sites[0].y_train[:2])  # initialise weights only (0 epochs)
    w0 = init.get_weights()
    budget = n_rounds * local_epochs

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="iotsentry-fl-") as tmp:
        sites_file = str(Path(tmp) / "sites.npz")
        save_sites(sites, sites_file)
        t1 = time.time()
        run_simulation(
            server_app=make_server_app(
                aggregator, n_rounds, len(sites), w0, out, local_epochs=local_epochs, **strategy_kwargs
            ),
            client_app=make_client_app(sites_file, hidden=hidden, seed=seed),
            num_supernodes=len(sites),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False},
            },
        )
        t_fl = time.time() - t1
    if "arrays" not in out:
        raise RuntimeError("the Flower simulation did not finish (no final weights); see its log")

    # federated: per-site AUC as reported by the ClientApps in the last evaluate round
    last = {int(r["partition-id"]): r for r in out["eval"][-1]}
    fed_sites: list[float | None] = [
        float(last[i]["auc"]) if int(last[i]["auc-valid"]) else None for i in range(len(sites))
    ]
    fed = new_model(hidden, seed, mean, scale)
    fed.set_weights(out["arrays"])

    central = new_model(hidden, seed, mean, scale)
    central.set_weights(w0)
    central.partial_fit(
        np.concatenate([s.X_train for s in sites]), np.concatenate([s.y_train for s in sites]), epochs=budget
    )

    locals_: list[FlowMLP] = []
    for i, s in enumerate(sites):
        m = new_model(hidden, seed + i, mean, scale)
        m.set_weights(w0)
        m.partial_fit(s.X_train, s.y_train, epochs=budget)
        locals_.append(m)
    local_sites = [
        float(roc_auc(s.y_test == CLASSES[1], m.score(s.X_test))) if s.evaluable else None
        for m, s in zip(locals_, sites, strict=True)
    ]
    central_sites = _site_aucs(central, sites)

    return {
        "aggregator": aggregator,
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
        "federated": {
            "auc_site_mean": _mean(fed_sites),
            "auc_per_site": fed_sites,
            "auc_site_mean_recomputed": _mean(_site_aucs(fed, sites)),
            "auc_pooled": _pooled_auc([fed] * len(sites), sites),
            "per_round_site_mean": [
                _mean([float(r["auc"]) if int(r["auc-valid"]) else None for r in rows])
                for rows in out["eval"]
            ],
        },
        "centralized": {
            "auc_site_mean": _mean(central_sites),
            "auc_per_site": central_sites,
            "auc_pooled": _pooled_auc([central] * len(sites), sites),
        },
        "local": {
            "auc_site_mean": _mean(local_sites),
            "auc_per_site": local_sites,
            "auc_pooled": _pooled_auc(locals_, sites),
        },
        "bytes_per_site_per_round": {"down": out["bytes_down"], "up": out["bytes_up"]},
        "seconds": {"total": time.time() - t0, "flower_simulation": t_fl},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--aggregator", choices=AGGREGATORS, default="fedavg")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[4] / "shared" / "data"))
    args = p.parse_args(argv)
    res = simulate(args.rounds, args.aggregator, args.data_dir, local_epochs=args.local_epochs)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
