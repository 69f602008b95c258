"""Flower strategies for every aggregator iotsentry offers.

Flower's built-ins are used where they exist; the other rules are :class:`RobustFedAvg`, a
:class:`~flwr.serverapp.strategy.FedAvg` whose aggregation step calls a pure function of
:mod:`iotsentry.federated.robust` (the strategy only wires it in):

================  ==========================================================================
``fedavg``        Flower ``FedAvg`` (weighted by the sites' ``num-examples``)
``median``        Flower ``FedMedian`` (coordinate-wise median)
``trimmed-mean``  Flower ``FedTrimmedAvg`` (``beta`` trimmed from each side)
``krum``          Flower ``Krum`` (``f`` assumed malicious sites)
``multi-krum``    Flower ``MultiKrum`` (``f``; averages the ``n - f`` best, weighted)
``bulyan``        Flower ``Bulyan`` (``f`` capped at ``(n - 3) // 4``, Bulyan's own limit)
``norm-clip``     :func:`~iotsentry.federated.robust.norm_clip`, the bound being the median
                  norm of the round's updates (no tuning, honest majority assumed)
``fltrust``       :func:`~iotsentry.federated.robust.fltrust` with the server's own update
                  from its small clean root dataset (``server_update`` callback)
``flame``         :func:`~iotsentry.federated.robust.flame_filter` (HDBSCAN on cosine
                  distances, median-norm clipping, noise ``0.001 * S``, seeded per round)
``guarded``       :func:`~iotsentry.federated.robust.validation_filter` on each proposed
                  model's per-class losses on the server's root dataset (``validate``
                  callback), then median-norm clipping of the kept updates
================  ==========================================================================

The robust rules weight sites equally: a site's ``num-examples`` is its own claim, and a
malicious site could inflate it to buy weight under FedAvg.

Every strategy records, per round, the per-site evaluation replies in ``out["eval"]`` and the
sites a selection rule kept (where the rule exposes it) in ``out["accepted"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from iotsentry.federated import robust
from iotsentry.federated.names import AGGREGATORS, DEFAULT_AGGREGATOR

__all__ = ["AGGREGATORS", "DEFAULT_AGGREGATOR", "RobustFedAvg", "ServerUpdate", "make_strategy"]


Weights = list[np.ndarray]
#: ``server_update(global_weights, server_round) -> delta`` (FLTrust's root-dataset update).
ServerUpdate = Callable[[Weights, int], Weights]
#: ``validate(weights) -> losses per group`` of the server's root dataset (``guarded``).
Validate = Callable[[Weights], np.ndarray]
#: ``rule(updates, global_weights, server_round) -> (new_global_weights, accepted_site_indices)``.
Rule = Callable[[list[Weights], Weights, int], tuple[Weights, Sequence[int]]]


class RobustFedAvg(FedAvg):
    """FedAvg with its weighted average replaced by ``rule`` (one of :mod:`robust`'s)."""

    def __init__(self, rule: Rule, name: str, out: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule
        self.name = name
        self.out = out if out is not None else {}
        self._global: Weights | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays.to_numpy_ndarrays()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self._global is None:
            return None, None
        contents = [m.content for m in valid]
        updates = [c.array_records[self.arrayrecord_key].to_numpy_ndarrays() for c in contents]
        finite = [i for i, u in enumerate(updates) if all(np.isfinite(a).all() for a in u)]
        if not finite:
            return None, None
        new, accepted = self.rule([updates[i] for i in finite], self._global, server_round)
        kept = [finite[i] for i in accepted]
        self.out.setdefault("accepted", []).append(
            [int(contents[i].metric_records["metrics"].get("partition-id", i)) for i in kept]  # type: ignore[arg-type]
        )
        metrics = self.train_metrics_aggr_fn([contents[i] for i in kept] or contents, self.weighted_by_key)
        like = [np.asarray(a) for a in self._global]
        return ArrayRecord([np.asarray(w, dtype=g.dtype) for w, g in zip(new, like, strict=True)]), metrics


def _deltas(updates: list[Weights], ref: Weights) -> list[Weights]:
    return [
        [
            np.asarray(a, dtype=np.float64) - np.asarray(r, dtype=np.float64)
            for a, r in zip(u, ref, strict=True)
        ]
        for u in updates
    ]


def _norm_clip_rule(updates: list[Weights], ref: Weights, rnd: int) -> tuple[Weights, Sequence[int]]:
    norms = [float(np.linalg.norm(robust.flatten(d))) for d in _deltas(updates, ref)]
    bound = float(np.median(norms))
    if bound <= 0:
        return [np.asarray(r) for r in ref], range(len(updates))
    return robust.norm_clip(updates, bound, reference=ref), range(len(updates))


def _fltrust_rule(server_update: ServerUpdate) -> Rule:
    def rule(updates: list[Weights], ref: Weights, rnd: int) -> tuple[Weights, Sequence[int]]:
        g0 = server_update(ref, rnd)
        deltas = _deltas(updates, ref)
        agg = robust.fltrust(deltas, g0)
        trust = robust.fltrust_trust_scores(deltas, g0)
        new = [np.asarray(r, dtype=np.float64) + a for r, a in zip(ref, agg, strict=True)]
        return new, [i for i, t in enumerate(trust) if t > 0]

    return rule


def _flame_rule(seed: int, noise: float) -> Rule:
    def rule(updates: list[Weights], ref: Weights, rnd: int) -> tuple[Weights, Sequence[int]]:
        res = robust.flame_filter(
            updates, ref, noise_sigma=noise, rng=seed * 100_003 + rnd, noise_relative=True
        )
        return res.aggregate, res.accepted

    return rule


def _guarded_rule(validate: Validate, kappa: float) -> Rule:
    def rule(updates: list[Weights], ref: Weights, rnd: int) -> tuple[Weights, Sequence[int]]:
        losses = np.stack([np.asarray(validate(u), dtype=np.float64) for u in updates])
        bad = ~np.isfinite(losses).all(axis=1)
        losses[bad] = np.nanmax(np.where(np.isfinite(losses), losses, np.nan)) * 10 + 1
        kept = robust.validation_filter(losses, kappa)
        if not kept:
            return [np.asarray(r) for r in ref], []
        norms = [float(np.linalg.norm(robust.flatten(d))) for d in _deltas(updates, ref)]
        bound = float(np.median(norms)) or 1.0
        return robust.norm_clip([updates[i] for i in kept], bound, reference=ref), kept

    return rule


def make_strategy(
    aggregator: str,
    n_sites: int,
    out: dict[str, Any],
    *,
    trim_beta: float = 0.3,
    assumed_malicious: int | None = None,
    server_update: ServerUpdate | None = None,
    flame_noise: float = 0.001,
    validate: Validate | None = None,
    guard_kappa: float = 3.0,
    seed: int = 0,
) -> Strategy:
    """The Flower strategy for ``aggregator``, recording per-site evaluations into ``out``.

    Parameters
    ----------
    aggregator
        One of :data:`AGGREGATORS`.
    n_sites
        Number of sites; every round all of them train and evaluate.
    out
        Receives ``out["eval"]`` (per round, the list of per-site evaluation metric dicts) and,
        for :class:`RobustFedAvg` rules, ``out["accepted"]``.
    trim_beta
        Fraction trimmed from each side by ``trimmed-mean``.
    assumed_malicious
        ``f`` for Krum, Multi-Krum and Bulyan: the number of malicious sites the defender plans
        for (default ``floor(0.3 * n)``; Bulyan caps it at ``(n - 3) // 4``).
    server_update
        FLTrust's server-side update; required for ``fltrust``.
    flame_noise
        FLAME's noise level relative to its clipping bound.
    validate, guard_kappa
        ``guarded``: per-group root-dataset losses of a proposed model, and the tolerance of
        :func:`~iotsentry.federated.robust.validation_filter`.
    seed
        Seed of FLAME's noise.
    """

    def eval_aggr(contents: list[RecordDict], weight_key: str) -> MetricRecord:
        rows: list[dict[str, Any]] = [dict(c.metric_records["metrics"]) for c in contents]
        out.setdefault("eval", []).append(rows)
        aucs = [float(r["auc"]) for r in rows if int(r["auc-valid"])]
        return MetricRecord(
            {"auc-site-mean": float(np.mean(aucs)) if aucs else float("nan"), "n-evaluable": len(aucs)}
        )

    f = int(0.3 * n_sites) if assumed_malicious is None else int(assumed_malicious)
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
        return Krum(num_malicious_nodes=f, **common)
    if aggregator == "multi-krum":
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(n_sites - f, 1), **common)
    if aggregator == "bulyan":
        return Bulyan(num_malicious_nodes=min(f, max((n_sites - 3) // 4, 0)), **common)
    if aggregator == "norm-clip":
        return RobustFedAvg(_norm_clip_rule, aggregator, out, **common)
    if aggregator == "fltrust":
        if server_update is None:
            raise ValueError("fltrust needs the server's root-dataset update (server_update)")
        return RobustFedAvg(_fltrust_rule(server_update), aggregator, out, **common)
    if aggregator == "flame":
        return RobustFedAvg(_flame_rule(seed, flame_noise), aggregator, out, **common)
    if aggregator == "guarded":
        if validate is None:
            raise ValueError("guarded needs the server's root-dataset validation (validate)")
        return RobustFedAvg(_guarded_rule(validate, guard_kappa), aggregator, out, **common)
    raise ValueError(f"unknown aggregator {aggregator!r}; choose from {', '.join(AGGREGATORS)}")
