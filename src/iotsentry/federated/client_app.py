"""Flower ``ClientApp`` (Message API, flwr 1.42) training :class:`FlowMLP` on one IoT-23 site.

Each simulated SuperNode is one site: ``context.node_config["partition-id"]`` indexes the
sites saved by :func:`iotsentry.federated.sites.save_sites`. The sites file is read once per
worker process and cached.

* ``train``: set the global weights, :meth:`FlowMLP.partial_fit` for ``local-epochs``
  (from the ``config`` record, default 1), reply with the new weights (``arrays``) and
  ``num-examples``.
* ``evaluate``: set the global weights, reply with the held-out ROC AUC of the
  malicious score (``auc``; ``auc-valid`` = 0 when the held-out part has one class only,
  in which case ``auc`` is 0 and must be ignored), ``partition-id`` and ``num-examples``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.evaluation.metrics import roc_auc
from iotsentry.federated.sites import CLASSES, Site, load_sites, pooled_scaler

__all__ = ["make_client_app", "new_model"]


def new_model(hidden: Sequence[int], seed: int, mean: np.ndarray, scale: np.ndarray) -> FlowMLP:
    """A FlowMLP with the shared class list and scaler (weights still to be set or fitted)."""
    m = FlowMLP(hidden=hidden, classes=list(CLASSES), seed=seed)
    m.set_scaler(mean, scale)
    m.classes_ = np.array(CLASSES, dtype=str)
    return m


@functools.lru_cache(maxsize=4)
def _sites(path: str) -> tuple[list[Site], tuple[np.ndarray, np.ndarray]]:
    sites = load_sites(path)
    return sites, pooled_scaler(sites)


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(1)  # one CPU per simulated client


def make_client_app(sites_file: str, hidden: Sequence[int] = (64, 32), seed: int = 0) -> ClientApp:
    """ClientApp serving the sites stored in ``sites_file``."""
    app = ClientApp()
    hidden = tuple(int(h) for h in hidden)

    def _site_and_model(msg: Message, context: Context) -> tuple[Site, FlowMLP, int]:
        sites, (mean, scale) = _sites(sites_file)
        pid = int(context.node_config["partition-id"])
        model = new_model(hidden, seed + pid, mean, scale)
        model.set_weights(msg.content.array_records["arrays"].to_numpy_ndarrays())
        return sites[pid], model, pid

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        _limit_threads()
        site, model, pid = _site_and_model(msg, context)
        cfg = msg.content.config_records.get("config")
        epochs = int(cfg["local-epochs"]) if cfg is not None and "local-epochs" in cfg else 1  # type: ignore[arg-type]
        model.partial_fit(site.X_train, site.y_train, epochs=epochs)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.get_weights()),
                "metrics": MetricRecord({"num-examples": len(site.y_train), "partition-id": pid}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site, model, pid = _site_and_model(msg, context)
        y = (site.y_test == CLASSES[1]).astype(int)
        valid = site.evaluable
        auc = float(roc_auc(y, model.score(site.X_test))) if valid else 0.0
        metrics = MetricRecord(
            {"auc": auc, "auc-valid": int(valid), "partition-id": pid, "num-examples": max(len(y), 1)}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app
