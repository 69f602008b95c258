"""Q1 for fused packet scores: the profile detector combined with the packet-stream models.

Each detector's scores are calibrated on the packets of the learning period (before the
splice: benign by construction) into upper-tail p-values and combined with Fisher's method
(:class:`iotsentry.detectors.fusion.Fusion`). The rows sit beside the single detectors' rows,
so the gain (or loss) of fusing shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.capture.reader import read_all
from iotsentry.detectors.fusion import Fusion
from iotsentry.detectors.stream import PacketStreamDetector
from iotsentry.evaluation.q1 import RECIPES, build_recipe, packet_metrics, score_capture


def _profile_scores(pcap: Path, learn_seconds: float) -> tuple[npt.NDArray[np.float64], float]:
    res, index, _ts, scores, _ids = score_capture(pcap, learn_seconds=learn_seconds)
    return scores[np.argsort(index, kind="stable")], float(res.stats["learn_end"])


def q1_fused_rows(
    recipes: Sequence[str],
    data_dir: Path,
    work_dir: Path,
    combos: Sequence[tuple[str, ...]] = (("profile", "kitnet"), ("profile", "kitnet", "iforest")),
    method: str = "fisher",
) -> list[dict[str, Any]]:
    """Q1 packet metrics of fused scores per recipe and detector combination."""
    rows: list[dict[str, Any]] = []
    for name in recipes:
        built = build_recipe(RECIPES[name], Path(data_dir), Path(work_dir))
        batch = read_all(built.pcap)
        order = np.argsort(batch.index, kind="stable")
        per: dict[str, npt.NDArray[np.float64]] = {}
        per["profile"], learn_end = _profile_scores(built.pcap, built.learn_seconds)
        X = PacketStreamDetector().features(batch)
        learn_rows = batch.ts < float(batch.ts.min()) + built.learn_seconds
        for model in {m for c in combos for m in c if m != "profile"}:
            det = PacketStreamDetector(model).fit_features(X[learn_rows])
            assert det.detector is not None
            per[model] = det.detector.score_samples(X.astype(np.float64))[order]
        learn = built.ts < learn_end
        for combo in combos:
            S = np.stack([per[m] for m in combo], axis=1)
            fused = Fusion(method=method).fit(S[learn]).score(S)  # type: ignore[arg-type]
            m = packet_metrics(built, fused, learn_end)
            rows.append(
                {
                    "recipe": name,
                    "model": "+".join(combo),
                    "learn_packets": int(learn.sum()),
                    "fit_s": 0.0,
                    **m,
                }
            )
    return rows
