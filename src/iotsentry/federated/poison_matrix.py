"""The poisoning red-team: attack × aggregator × malicious-fraction matrix (BENCHMARKS Q5).

Every cell is one federation of :class:`~iotsentry.detectors.flow_mlp.FlowMLP` over the IoT-23
sites (:mod:`iotsentry.federated.sites`) through Flower's strategies and the ClientApp of this
package, delivered in-process by :class:`~iotsentry.federated.local_grid.LocalGrid` (no Ray
start-up per cell). ``round(fraction * n)`` sites (at least one) are malicious: the first
ones of a seeded permutation of the sites, so the malicious set at 20 % contains the one at
10 %. They run :func:`~iotsentry.federated.poisoning.malicious_weights`.

The final global model of every cell is scored on the held-out rows of **all** sites with their
true labels (:func:`~iotsentry.federated.simulate.evaluate_model`): ``overall`` holds the
per-site mean AUC, the pooled AUC and the pooled F1; ``targeted_recall`` is the share of held-out
command-and-control flows the model calls malicious. ``loss_vs_clean`` is how much each figure
dropped against the same aggregator's clean run (attack ``none``) in the same matrix.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.federated.poisoning import ATTACKS, AttackConfig
from iotsentry.federated.simulate import FLSetup, evaluate_model, prepare, run_federation
from iotsentry.federated.strategies import AGGREGATORS, DEFAULT_AGGREGATOR

__all__ = ["DEFAULT_FRACTIONS", "add_losses", "malicious_sites", "run_cell", "run_matrix", "summarise"]

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4)
_SETUP: FLSetup | None = None


def malicious_sites(n_sites: int, fraction: float, seed: int = 0) -> frozenset[int]:
    """The malicious partition ids for ``fraction`` (nested across fractions for one seed)."""
    if fraction <= 0:
        return frozenset()
    k = max(1, min(n_sites, round(fraction * n_sites)))
    order = np.random.default_rng(seed + 7919).permutation(n_sites)
    return frozenset(int(i) for i in order[:k])


def run_cell(
    setup: FLSetup, attack: str, aggregator: str, fraction: float, rounds: int, local_epochs: int = 1
) -> dict[str, Any]:
    """One federation; returns the JSON-ready cell (see the module docstring)."""
    t0 = time.time()
    n = len(setup.sites)
    bad = malicious_sites(n, fraction, setup.seed) if attack != "none" else frozenset()
    cfg = AttackConfig(attack, n, len(bad), seed=setup.seed) if bad else None
    out = run_federation(
        setup, rounds, aggregator, local_epochs=local_epochs, runtime="local", attack=cfg, malicious=bad
    )
    ev = evaluate_model(setup.model(out["arrays"]), setup.sites)
    return {
        "attack": attack,
        "aggregator": aggregator,
        "fraction": float(fraction) if bad else 0.0,
        "n_malicious": len(bad),
        "malicious_sites": sorted(setup.sites[i].name for i in bad),
        "overall": {"auc_site_mean": ev["auc_site_mean"], "auc_pooled": ev["auc_pooled"], "f1": ev["f1"]},
        "targeted_recall": ev["targeted_recall"],
        "per_round_site_mean": [
            float(np.mean([float(r["auc"]) for r in rows if int(r["auc-valid"])] or [np.nan]))
            for rows in out["eval"]
        ],
        "accepted": out.get("accepted"),
        "seconds": time.time() - t0,
    }


def quiet_flower() -> None:
    """Flower logs every round at INFO; keep warnings and errors only."""
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)


def _init_worker(setup: FLSetup) -> None:
    global _SETUP
    import torch

    quiet_flower()
    torch.set_num_threads(1)
    _SETUP = setup


def _run_job(job: tuple[str, str, float, int, int]) -> dict[str, Any]:
    assert _SETUP is not None
    return run_cell(_SETUP, *job)


def summarise(cells: list[dict[str, Any]], max_fraction: float = 0.3) -> dict[str, dict[str, Any]]:
    """Per aggregator: clean figures and the worst losses over attacked cells with fraction <= 0.3.

    ``meets_target`` is BENCHMARKS Q5's on the threshold-free overall metric: in every such
    cell the targeted-recall loss is <= 0.02 and the per-site mean AUC and pooled AUC losses are
    <= 0.01. ``meets_target_with_f1`` also holds the pooled F1 at the fixed 0.5 decision to
    <= 0.01 (stricter: F1 at a fixed threshold moves when the sites a rule keeps shift the
    model's calibration, even when the ranking is intact).
    """
    out: dict[str, dict[str, Any]] = {}
    for agg in dict.fromkeys(c["aggregator"] for c in cells):
        mine = [c for c in cells if c["aggregator"] == agg]
        clean = next((c for c in mine if c["attack"] == "none"), None)
        if clean is None:
            continue
        att = [c for c in mine if c["attack"] != "none" and c["fraction"] <= max_fraction + 1e-9]

        def worst(key: str, cells_: list[dict[str, Any]] = att) -> float:
            return max((float(c["loss_vs_clean"][key]) for c in cells_), default=0.0)

        worst_t, worst_auc = worst("targeted_recall"), max(worst("auc_site_mean"), worst("auc_pooled"))
        worst_f1 = worst("f1")
        worst_cell = max(
            att,
            key=lambda c: max(
                c["loss_vs_clean"]["targeted_recall"] - 0.02,
                c["loss_vs_clean"]["auc_site_mean"] - 0.01,
                c["loss_vs_clean"]["auc_pooled"] - 0.01,
            ),
            default={},
        )
        ok = bool(att) and worst_t <= 0.02 and worst_auc <= 0.01
        out[agg] = {
            "clean": {**clean["overall"], "targeted_recall": clean["targeted_recall"]},
            "worst_targeted_loss": worst_t,
            "worst_auc_loss": worst_auc,
            "worst_f1_loss": worst_f1,
            "worst_overall_loss": max(worst_auc, worst_f1),
            "worst_cell": f"{worst_cell.get('attack')} @ {worst_cell.get('fraction')}"
            if worst_cell
            else None,
            "meets_target": ok,
            "meets_target_with_f1": ok and worst_f1 <= 0.01,
        }
    return out


def add_losses(cells: list[dict[str, Any]]) -> None:
    """Fill every cell's ``loss_vs_clean`` from the same aggregator's clean cell."""
    clean = {c["aggregator"]: c for c in cells if c["attack"] == "none"}
    for c in cells:
        ref = clean[c["aggregator"]]
        c["loss_vs_clean"] = {
            k: ref["overall"][k] - c["overall"][k] for k in ("auc_site_mean", "auc_pooled", "f1")
        } | {"targeted_recall": ref["targeted_recall"] - c["targeted_recall"]}


def run_matrix(
    data_dir: str | Path,
    attacks: Sequence[str] = ATTACKS,
    aggregators: Sequence[str] = AGGREGATORS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    rounds: int = 10,
    local_epochs: int = 1,
    seed: int = 0,
    jobs: int = 1,
    setup: FLSetup | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every cell; returns ``{"default_aggregator", "cells", "summary", ...}``.

    A clean run (attack ``none``) per aggregator is always included.
    """
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
    for g in aggregators:
        if g not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {g!r}; choose from {', '.join(AGGREGATORS)}")
    for f in fractions:
        if not 0 < f < 1:
            raise ValueError(f"malicious fraction must be in (0, 1), got {f}")
    t0 = time.time()
    setup = setup if setup is not None else prepare(data_dir, seed=seed)
    jobs_list: list[tuple[str, str, float, int, int]] = []
    for g in aggregators:
        jobs_list.append(("none", g, 0.0, rounds, local_epochs))
        jobs_list += [(a, g, f, rounds, local_epochs) for a in attacks if a != "none" for f in fractions]
    cells: list[dict[str, Any]] = []
    if jobs <= 1:
        _init_worker(setup)
        for j in jobs_list:
            cells.append(_run_job(j))
            if progress:
                progress(cells[-1])
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(setup,)) as pool:
            for cell in pool.imap(_run_job, jobs_list):
                cells.append(cell)
                if progress:
                    progress(cell)
    add_losses(cells)
    return {
        "default_aggregator": DEFAULT_AGGREGATOR,
        "metric": {
            "overall": "auc_site_mean: mean over sites with both classes held out of each site's ROC AUC; "
            "auc_pooled; f1: pooled, malicious positive, P(malicious) >= 0.5",
            "targeted_recall": "share of held-out C&C flows (IoT-23 detailed label C&C*) "
            "with P(malicious) >= 0.5",
            "loss_vs_clean": "same aggregator's clean run minus this cell",
        },
        "rounds": rounds,
        "local_epochs": local_epochs,
        "seed": seed,
        "sites": [s.name for s in setup.sites],
        "n_targeted": evaluate_model(setup.model(), setup.sites)["n_targeted"],
        "cells": cells,
        "summary": summarise(cells),
        "seconds": time.time() - t0,
    }
