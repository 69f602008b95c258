"""Flower ``ServerApp`` (Message API, flwr 1.42) federating :class:`FlowMLP` across sites.

Aggregators are Flower's built-in strategies from :mod:`flwr.serverapp.strategy`:

==============  ===========================================================
``fedavg``      :class:`~flwr.serverapp.strategy.FedAvg` (weighted by ``num-examples``)
``median``      :class:`~flwr.serverapp.strategy.FedMedian` (coordinate-wise median)
``trimmed-mean`` :class:`~flwr.serverapp.strategy.FedTrimmedAvg` (``beta`` per side)
``krum``        :class:`~flwr.serverapp.strategy.Krum` (``num_malicious_nodes`` = f)
==============  ===========================================================

Every round all sites train (``fraction_train=1``) and all sites evaluate the new global
model on their held-out data. The per-site evaluation replies are recorded in ``out``
(a dict owned by the caller; in the simulation the ServerApp runs in a thread of the
calling process) as ``out["eval"][round] = [{"partition-id", "auc", "auc-valid", ...}]``;
the final global weights are stored as ``out["arrays"]`` and the per-round payload sizes
as ``out["bytes_down"]`` / ``out["bytes_up"]`` (ArrayRecord bytes per site per round).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

__all__ = ["AGGREGATORS", "make_server_app", "make_strategy"]

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum")


def make_strategy(
    aggregator: str,
    n_sites: int,
    out: dict[str, Any],
    trim_beta: float = 0.2,
    krum_f: int = 1,
) -> Strategy:
    """The Flower strategy for ``aggregator``, recording per-site evaluation into ``out``."""

    def eval_aggr(contents: list[RecordDict], weight_key: str) -> MetricRecord:
        rows: list[dict[str, Any]] = [dict(c.metric_records["metrics"]) for c in contents]
        out.setdefault("eval", []).append(rows)
        aucs = [float(r["auc"]) for r in rows if int(r["auc-valid"])]
        return MetricRecord(
            {"auc-site-mean": float(np.mean(aucs)) if aucs else float("nan"), "n-evaluable": len(aucs)}
        )

    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n_sites,
        "min_evaluate_nodes": n_sites,
        "min_available_nodes": n_sites,
        "evaluate_metrics_aggr_fn": eval_aggr,
    }
    if aggregator == "fedavg":
        return FedAvg(**common)
    if aggregator == "median":
        return FedMedian(**common)
    if aggregator == "trimmed-mean":
        return FedTrimmedAvg(beta=trim_beta, **common)
    if aggregator == "krum":
        return Krum(num_malicious_nodes=krum_f, **common)
    raise ValueError(f"unknown aggregator {aggregator!r}; choose from {AGGREGATORS}")


def make_server_app(
    aggregator: str,
    n_rounds: int,
    n_sites: int,
    initial_weights: Sequence[np.ndarray],
    out: dict[str, Any],
    local_epochs: int = 1,
    **strategy_kwargs: Any,
) -> ServerApp:
    """ServerApp running ``n_rounds`` of ``aggregator`` from ``initial_weights``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = make_strategy(aggregator, n_sites, out, **strategy_kwargs)
        initial = ArrayRecord([np.asarray(w) for w in initial_weights])
        out["bytes_down"] = initial.count_bytes()
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=n_rounds,
            train_config=ConfigRecord({"local-epochs": local_epochs}),
        )
        out["arrays"] = result.arrays.to_numpy_ndarrays()
        out["bytes_up"] = result.arrays.count_bytes()
        out["evaluate_metrics_clientapp"] = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}

    return app
