"""BENCHMARKS Q1 for the packet-stream models (damped statistics + KitNET / isolation forest).

For every recipe of :data:`iotsentry.evaluation.q1.RECIPES`: mix the capture
(:func:`~iotsentry.evaluation.q1.build_recipe`), extract the damped features of every packet
in file order, fit each model on the packets before the splice only (``ts < first_ts +
built.learn_seconds``), score every packet, and compute the Q1 packet metrics with
:func:`~iotsentry.evaluation.q1.packet_metrics` (``learn_end = first_ts + learn_seconds``).
The features are extracted once per recipe and shared by the models; they equal what
:func:`~iotsentry.detectors.stream.score_capture_with_model` computes (the statistics do not
depend on batching). One configuration (the defaults) for every recipe.

Command line (wired by the CLI), e.g. ``iotsentry eval q1-models [--recipe D1 ...]``::

    rows = q1_model_rows(recipes or list(RECIPES), data_dir, work_dir)
    print(q1_models_markdown(rows))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from iotsentry.capture.reader import read_all
from iotsentry.detectors.stream import PacketStreamDetector
from iotsentry.evaluation.q1 import RECIPES, build_recipe, packet_metrics

__all__ = ["q1_model_rows", "q1_models_markdown"]


def q1_model_rows(
    recipes: Sequence[str], data_dir: Path, work_dir: Path, models: Sequence[str] = ("kitnet", "iforest")
) -> list[dict[str, Any]]:
    """Q1 packet metrics per recipe and model.

    Returns
    -------
    list of dict
        ``recipe``, ``model``, ``learn_packets``, ``fit_s``, ``score_s`` and the keys of
        :func:`~iotsentry.evaluation.q1.packet_metrics`.
    """
    rows: list[dict[str, Any]] = []
    for name in recipes:
        built = build_recipe(RECIPES[name], Path(data_dir), Path(work_dir))
        batch = read_all(built.pcap)
        order = np.argsort(batch.index, kind="stable")
        if not np.array_equal(batch.index[order], built.index):
            raise RuntimeError(f"{built.pcap}: labels and packets do not cover the same frames")
        X = PacketStreamDetector().features(batch)  # file order
        learn_end = float(batch.ts.min()) + built.learn_seconds
        learn = batch.ts < learn_end
        for model in models:
            det = PacketStreamDetector(model)
            t0 = time.perf_counter()
            det.fit_features(X[learn])
            t1 = time.perf_counter()
            assert det.detector is not None
            scores = det.detector.score_samples(cast(npt.NDArray[np.float64], X))
            t2 = time.perf_counter()
            m = packet_metrics(built, scores[order], learn_end)
            rows.append(
                {
                    "recipe": name,
                    "model": model,
                    "learn_packets": int(learn.sum()),
                    "fit_s": t1 - t0,
                    "score_s": t2 - t1,
                    **m,
                }
            )
    return rows


def _f(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.4f}"


def q1_models_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`q1_model_rows` output."""
    lines = [
        "| recipe | model | learn packets | packets after splice | malicious | AUC (all) | TPR@0.1%FPR (all) "
        "| AUC (benign-capture negatives) | TPR@0.1%FPR (benign-capture negatives) | fit (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['model']} | {r['learn_packets']} | {int(r['packets_after_splice'])} | "
            f"{int(r['malicious_packets'])} | {_f(r['auc_all'])} | {_f(r['tpr_at_0_1pct_all'])} | "
            f"{_f(r['auc_benign_negatives'])} | {_f(r['tpr_at_0_1pct_benign_negatives'])} | "
            f"{r['fit_s']:.1f} |"
        )
    return "\n".join(lines)
