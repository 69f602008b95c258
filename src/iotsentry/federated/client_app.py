"""Flower ``ClientApp`` (Message API, flwr 1.42) training a flow model on one IoT-23 site.

The model is the supervised :class:`FlowMLP` (``kind="mlp"``) or the flow autoencoder
(``kind="ae"``, benign rows only); see :mod:`iotsentry.federated.models`.

Each simulated SuperNode is one site: ``context.node_config["partition-id"]`` indexes the
sites saved by :func:`iotsentry.federated.sites.save_sites`. The sites file is read once per
worker process and cached.

* ``train``: set the global weights, :meth:`FlowMLP.partial_fit` for ``local-epochs``
  (from the ``config`` record, default 1), reply with the new weights (``arrays``) and
  ``num-examples``.
* Sites in ``malicious`` reply with :func:`iotsentry.federated.poisoning.malicious_weights`
  for the configured attack instead (same message format: a malicious site looks like any
  other to the server).
* ``evaluate``: set the global weights, reply with the held-out ROC AUC of the
  malicious score (``auc``; ``auc-valid`` = 0 when the held-out part has one class only,
  in which case ``auc`` is 0 and must be ignored), ``partition-id`` and ``num-examples``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from iotsentry.evaluation.metrics import roc_auc
from iotsentry.federated import models
from iotsentry.federated.poisoning import AttackConfig, malicious_weights
from iotsentry.federated.sites import CLASSES, Site, is_cc, load_sites, pooled_scaler

__all__ = ["cc_pool", "make_client_app", "new_model"]


def new_model(
    hidden: Sequence[int], seed: int, mean: np.ndarray, scale: np.ndarray, kind: str = "mlp"
) -> Any:
    """A model of ``kind`` (:mod:`iotsentry.federated.models`) with the shared scaler."""
    return models.new_model(kind, hidden, seed, mean, scale)


@functools.lru_cache(maxsize=4)
def _sites(path: str) -> tuple[list[Site], tuple[np.ndarray, np.ndarray]]:
    sites = load_sites(path)
    return sites, pooled_scaler(sites)


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(1)  # one CPU per simulated client


def cc_pool(sites: Sequence[Site]) -> tuple[np.ndarray, np.ndarray]:
    """The command-and-control train rows of all sites: what a targeted attacker who runs the
    same malware families in its own lab can capture."""
    X = np.concatenate([s.X_train[is_cc(s.d_train)] for s in sites])
    return X.astype(np.float32), np.full(len(X), CLASSES[1])


def make_client_app(
    sites_file: str,
    hidden: Sequence[int] = (64, 32),
    seed: int = 0,
    attack: AttackConfig | None = None,
    malicious: frozenset[int] = frozenset(),
    kind: str = "mlp",
) -> ClientApp:
    """ClientApp serving the sites stored in ``sites_file`` (``malicious`` partitions attack)."""
    app = ClientApp()
    hidden = tuple(int(h) for h in hidden)
    if attack is not None and attack.attack == "targeted" and attack.cc_pool is None and malicious:
        import dataclasses

        attack = dataclasses.replace(attack, cc_pool=cc_pool(_sites(sites_file)[0]))

    def _site_and_model(msg: Message, context: Context) -> tuple[Site, Any, int]:
        sites, (mean, scale) = _sites(sites_file)
        pid = int(context.node_config["partition-id"])
        model = new_model(hidden, seed + pid, mean, scale, kind)
        model.set_weights(msg.content.array_records["arrays"].to_numpy_ndarrays())
        return sites[pid], model, pid

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        _limit_threads()
        site, model, pid = _site_and_model(msg, context)
        cfg = msg.content.config_records.get("config")
        epochs = int(cfg["local-epochs"]) if cfg is not None and "local-epochs" in cfg else 1  # type: ignore[arg-type]
        if attack is not None and pid in malicious:
            _, (mean, scale) = _sites(sites_file)

            def trainer(w: list[np.ndarray], X: np.ndarray, y: np.ndarray, s: int) -> list[np.ndarray]:
                m = new_model(hidden, s, mean, scale, kind)
                m.set_weights(w)
                return m.partial_fit(X, y, epochs=epochs).get_weights()

            rnd = int(cfg["server-round"]) if cfg is not None and "server-round" in cfg else 0  # type: ignore[arg-type]
            all_sites = _sites(sites_file)[0]
            peers = [
                (all_sites[j].X_train, all_sites[j].y_train, seed + j) for j in sorted(malicious) if j != pid
            ]
            weights = malicious_weights(
                attack,
                model.get_weights(),
                site.X_train,
                site.y_train,
                site.d_train,
                trainer,
                seed + pid,
                rnd,
                peers,
            )
            claimed = attack.claimed_examples or models.n_train_rows(kind, site.y_train)
        else:
            weights = model.partial_fit(site.X_train, site.y_train, epochs=epochs).get_weights()
            claimed = models.n_train_rows(kind, site.y_train)
        content = RecordDict(
            {
                "arrays": ArrayRecord([np.asarray(w, dtype=np.float32) for w in weights]),
                "metrics": MetricRecord({"num-examples": claimed, "partition-id": pid}),
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
