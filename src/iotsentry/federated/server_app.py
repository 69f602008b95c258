"""Flower ``ServerApp`` (Message API, flwr 1.42) federating :class:`FlowMLP` across sites.

Aggregators come from :func:`iotsentry.federated.strategies.make_strategy` (Flower's built-in
FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, and iotsentry's norm clipping,
FLTrust and FLAME-style filtering wired in as Flower strategies).

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
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from iotsentry.federated.strategies import AGGREGATORS, make_strategy

__all__ = ["AGGREGATORS", "make_server_app", "make_strategy", "run_rounds"]


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
        run_rounds(grid, aggregator, n_rounds, n_sites, initial_weights, out, local_epochs, **strategy_kwargs)

    return app


def run_rounds(
    grid: Grid,
    aggregator: str,
    n_rounds: int,
    n_sites: int,
    initial_weights: Sequence[np.ndarray],
    out: dict[str, Any],
    local_epochs: int = 1,
    **strategy_kwargs: Any,
) -> None:
    """The ServerApp's body: ``n_rounds`` of ``aggregator`` over ``grid``, results into ``out``."""
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
    out["train_metrics"] = {r: dict(m) for r, m in result.train_metrics_clientapp.items()}
    out["evaluate_metrics_clientapp"] = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
