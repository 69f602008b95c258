"""BENCHMARKS Q2: flow logs across IoT-23 scenarios, leave-one-scenario-out.

Folds
    * ``loso``: each of the 8 scenarios held out in turn, models trained on the other 7.
      Scenarios with one class only (4-1, 5-1, 7-1: all benign) give a false-positive rate.
    * ``family``: a whole malware family held out (Torii = 20-1 + 21-1, Mirai = 34-1 + 44-1,
      Trojan = 42-1), so its flows come from a family never seen in training.

Models (one configuration for every fold)
    ``hgb``       :class:`~iotsentry.detectors.flow_classifier.FlowClassifier` (supervised + open set)
    ``mlp``       :class:`~iotsentry.detectors.flow_mlp.FlowMLP`
    ``iforest``   :class:`~iotsentry.detectors.flow_classifier.FlowIForest` on benign training flows
    ``baseline``  plain ``HistGradientBoostingClassifier()`` (default settings) on the raw numeric
                  Zeek conn fields only (ports, duration, bytes, packets), malicious vs benign.

Threshold
    Each fold keeps a seeded 20 % of the *benign training* flows aside (not used to fit); the
    alert threshold of every model is the score that 1 % of them exceed
    (:class:`~iotsentry.detectors.thresholds.FprThreshold`). ``fpr_at_threshold`` and
    ``recall_at_threshold`` are measured on the held-out scenario with it.

Metrics per fold and model
    ROC AUC and recall at 1 % FPR (malicious vs benign, on the held-out flows; ``NaN`` for a
    one-class scenario), threshold FPR/recall, recall per class at the threshold, and for the
    supervised models the predicted classes, macro-F1 over the classes present in the held-out
    truth (``unknown`` counts as wrong) and the share of malicious flows not called benign.

IoT-23 label quirk (BENCHMARKS Q1): 42-1 has 1,947 unanswered SYN flows to
185.244.25.183:4975 (the /24 of 34-1's C&C) labeled Benign. Folds containing them also report
``auc_quirk_excluded`` / ``recall_at_1pct_fpr_quirk_excluded`` with those flows removed from the
negatives (addresses are used only to find them, never as features).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.capture.zeek import read_flows
from iotsentry.detectors.flow_classifier import UNKNOWN, flow_classes
from iotsentry.detectors.flow_models import fit_flow_model
from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.evaluation.metrics import roc_auc, tpr_at_fpr
from iotsentry.features.flow_features import flow_matrix
from iotsentry.schema import FlowBatch, ip_from_str

__all__ = ["FAMILY_FOLDS", "MODELS", "SCENARIOS", "Scenario", "load_scenarios", "q2_markdown", "run_q2"]

SCENARIOS: dict[str, str] = {
    "34-1": "iot23/zeek/CTU-IoT-Malware-Capture-34-1/conn.log.labeled",
    "42-1": "iot23/zeek/CTU-IoT-Malware-Capture-42-1/conn.log.labeled",
    "4-1": "iot23/zeek/CTU-Honeypot-Capture-4-1/conn.log.labeled",
    "5-1": "iot23/csv/CTU-Honeypot-Capture-5-1-labeled.csv",
    "7-1": "iot23/csv/CTU-Honeypot-Capture-7-1-labeled.csv",
    "20-1": "iot23/csv/CTU-Malware-Capture-20-1-labeled.csv",
    "21-1": "iot23/csv/CTU-Malware-Capture-21-1-labeled.csv",
    "44-1": "iot23/csv/CTU-Malware-Capture-44-1-labeled.csv",
}
"""Scenario -> path under the data folder."""

FAMILY_FOLDS: dict[str, tuple[str, ...]] = {
    "Torii": ("20-1", "21-1"),
    "Mirai": ("34-1", "44-1"),
    "Trojan": ("42-1",),
}
MODELS = ("hgb", "mlp", "iforest", "baseline")
SUPERVISED = ("hgb", "mlp")
F1_CLASSES = ("benign", "C&C", "DDoS", "PortScan", "FileDownload")
BASELINE_FIELDS = (
    "src_port",
    "dst_port",
    "duration",
    "src_payload",
    "dst_payload",
    "src_pkts",
    "src_bytes",
    "dst_pkts",
    "dst_bytes",
)
"""Zeek ``id.orig_p, id.resp_p, duration, orig_bytes, resp_bytes, orig_pkts, orig_ip_bytes,
resp_pkts, resp_ip_bytes`` as read into a FlowBatch (``missed_bytes`` is not read)."""

CALIBRATION_SHARE = 0.2
TARGET_FPR = 0.01
_QUIRK = (ip_from_str("185.244.25.183"), 4975)


@dataclass
class Scenario:
    """Features, raw baseline fields and classes of one scenario's flows."""

    name: str
    X: npt.NDArray[np.float32]
    raw: npt.NDArray[np.float64]
    y: npt.NDArray[np.str_]
    quirk: npt.NDArray[np.bool_]


def _raw_fields(flows: FlowBatch) -> npt.NDArray[np.float64]:
    return np.column_stack([np.asarray(flows.columns[c], dtype=np.float64) for c in BASELINE_FIELDS])


def load_scenarios(data_dir: Path, names: tuple[str, ...] | None = None) -> dict[str, Scenario]:
    """Read and featurise the IoT-23 scenarios (all of :data:`SCENARIOS` by default)."""
    out: dict[str, Scenario] = {}
    for name in names or tuple(SCENARIOS):
        flows = read_flows(Path(data_dir) / SCENARIOS[name])
        X, _ = flow_matrix(flows)
        y = flow_classes(flows)
        (hi, lo), port = _QUIRK
        quirk = (
            (flows.dst_ip_hi == np.uint64(hi))
            & (flows.dst_ip_lo == np.uint64(lo))
            & (flows.dst_port == port)
            & (y == "benign")
        )
        out[name] = Scenario(name, X, _raw_fields(flows), y, np.asarray(quirk, dtype=bool))
    return out


def _f1_per_class(
    y: npt.NDArray[np.str_], pred: npt.NDArray[np.str_], classes: list[str]
) -> dict[str, float]:
    out = {}
    for c in classes:
        tp = float(np.sum((y == c) & (pred == c)))
        fp = float(np.sum((y != c) & (pred == c)))
        fn = float(np.sum((y == c) & (pred != c)))
        out[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return out


def _fit_baseline(raw: npt.NDArray[np.float64], y: npt.NDArray[np.str_], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed).fit(raw, (y != "benign").astype(int))


def _run_fold(
    data: dict[str, Scenario], test: tuple[str, ...], models: tuple[str, ...], seed: int
) -> dict[str, Any]:
    train = [k for k in data if k not in test]
    Xtr = np.vstack([data[k].X for k in train])
    Rtr = np.vstack([data[k].raw for k in train])
    ytr = np.concatenate([data[k].y for k in train])
    rng = np.random.default_rng(seed)
    benign_rows = np.flatnonzero(ytr == "benign")
    calib = np.zeros(len(ytr), dtype=bool)
    calib[rng.permutation(benign_rows)[: round(CALIBRATION_SHARE * len(benign_rows))]] = True
    fit_rows = ~calib
    Xte = np.vstack([data[k].X for k in test])
    Rte = np.vstack([data[k].raw for k in test])
    yte = np.concatenate([data[k].y for k in test])
    quirk = np.concatenate([data[k].quirk for k in test])
    mal = yte != "benign"
    classes, counts = np.unique(yte, return_counts=True)
    fold: dict[str, Any] = {
        "held_out": list(test),
        "train": train,
        "n_flows": len(yte),
        "n_malicious": int(mal.sum()),
        "class_counts": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "train_classes": sorted(set(ytr.tolist())),
        "n_quirk": int(quirk.sum()),
        "models": {},
    }
    for m in models:
        t0 = time.perf_counter()
        pred: npt.NDArray[np.str_] | None = None
        if m == "baseline":
            clf = _fit_baseline(Rtr[fit_rows], ytr[fit_rows], seed)
            s_cal = clf.predict_proba(Rtr[calib])[:, 1]
            s = clf.predict_proba(Rte)[:, 1]
        else:
            model = fit_flow_model(Xtr[fit_rows], ytr[fit_rows], m, seed=seed)
            s_cal = model.evaluate(Xtr[calib])[0]
            s, pred_, _ = model.evaluate(Xte)
            pred = pred_ if m in SUPERVISED else None
        thr = FprThreshold(target_fpr=TARGET_FPR).calibrate(s_cal)
        alert = thr.exceeded(s)
        r: dict[str, Any] = {
            "auc": roc_auc(mal, s),
            "recall_at_1pct_fpr": tpr_at_fpr(mal, s, TARGET_FPR),
            "threshold": float(thr.value_),
            "fpr_at_threshold": float(alert[~mal].mean()) if (~mal).any() else float("nan"),
            "recall_at_threshold": float(alert[mal].mean()) if mal.any() else float("nan"),
            "recall_per_class": {str(c): float(alert[yte == c].mean()) for c in classes if c != "benign"},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if quirk.any():
            keep = ~quirk
            r["auc_quirk_excluded"] = roc_auc(mal[keep], s[keep])
            r["recall_at_1pct_fpr_quirk_excluded"] = tpr_at_fpr(mal[keep], s[keep], TARGET_FPR)
            r["fpr_at_threshold_on_quirk"] = float(alert[quirk].mean())
        if pred is not None:
            present = [str(c) for c in classes]
            f1 = _f1_per_class(yte, pred, present)
            r["f1_per_class"] = f1
            r["macro_f1"] = float(np.mean(list(f1.values()))) if len(present) > 1 else float("nan")
            r["not_benign_share_of_malicious"] = (
                float(np.mean(pred[mal] != "benign")) if mal.any() else float("nan")
            )
            r["unknown_share_of_malicious"] = (
                float(np.mean(pred[mal] == UNKNOWN)) if mal.any() else float("nan")
            )
            r["unknown_share_of_benign"] = (
                float(np.mean(pred[~mal] == UNKNOWN)) if (~mal).any() else float("nan")
            )
            pc = {}
            for c in classes:
                u, n = np.unique(pred[yte == c], return_counts=True)
                pc[str(c)] = {str(a): int(b) for a, b in zip(u, n, strict=True)}
            r["predicted_by_class"] = pc
            r["_pred"] = pred
        r["_score"] = s
        fold["models"][m] = r
    fold["_y"] = yte
    return fold


def _nanmin(v: list[float]) -> float:
    a = np.asarray(v, dtype=float)
    return float(np.nanmin(a)) if np.isfinite(a).any() else float("nan")


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def run_q2(
    data_dir: Path,
    *,
    folds: list[tuple[str, ...]] | None = None,
    families: bool = True,
    models: tuple[str, ...] = MODELS,
    scenarios: tuple[str, ...] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the Q2 leave-one-scenario-out evaluation.

    Parameters
    ----------
    data_dir
        The shared data folder (holding ``iot23/``).
    folds
        Held-out scenario groups; default: every scenario alone.
    families
        Also run the unseen-family folds of :data:`FAMILY_FOLDS` (when their scenarios are loaded).
    models
        Subset of :data:`MODELS`.
    scenarios
        Scenarios to load (default all 8); training uses every loaded scenario not held out.
    seed
        Seed of the models and of the calibration split.

    Returns
    -------
    dict
        ``folds`` (LOSO, one per held-out group), ``family_folds``, ``summary`` per model
        (minimum/mean AUC and recall@1%FPR over two-class held-out scenarios, mean FPR on
        one-class ones, pooled macro-F1 over all LOSO held-out flows, per-class F1), ``config``.
    """
    t0 = time.perf_counter()
    data = load_scenarios(Path(data_dir), scenarios)
    loso = folds if folds is not None else [(k,) for k in data]
    out_folds = [_run_fold(data, f, models, seed) for f in loso]
    fam_folds = []
    if families:
        for fam, members in FAMILY_FOLDS.items():
            if all(m in data for m in members) and len(data) > len(members):
                f = _run_fold(data, members, models, seed)
                f["family"] = fam
                fam_folds.append(f)
    summary: dict[str, Any] = {}
    for m in models:
        two = [f["models"][m] for f in out_folds if 0 < f["n_malicious"] < f["n_flows"]]
        one = [f["models"][m] for f in out_folds if f["n_malicious"] == 0]
        s: dict[str, Any] = {
            "min_auc": _nanmin([r["auc"] for r in two]),
            "mean_auc": _nanmean([r["auc"] for r in two]),
            "min_recall_at_1pct_fpr": _nanmin([r["recall_at_1pct_fpr"] for r in two]),
            "mean_recall_at_1pct_fpr": _nanmean([r["recall_at_1pct_fpr"] for r in two]),
            "mean_fpr_one_class": _nanmean([r["fpr_at_threshold"] for r in one]),
            "family_recall_at_threshold": {
                f["family"]: f["models"][m]["recall_at_threshold"] for f in fam_folds
            },
        }
        if m in SUPERVISED:
            y = np.concatenate([f["_y"] for f in out_folds])
            pred = np.concatenate([f["models"][m]["_pred"] for f in out_folds])
            present = [c for c in F1_CLASSES if (y == c).any()]
            f1 = _f1_per_class(y, pred, present)
            s["pooled_f1_per_class"] = f1
            s["pooled_macro_f1"] = float(np.mean([f1[c] for c in present]))
            s["family_not_benign_share"] = {
                f["family"]: f["models"][m]["not_benign_share_of_malicious"] for f in fam_folds
            }
        summary[m] = s
    for f in [*out_folds, *fam_folds]:
        f.pop("_y", None)
        for r in f["models"].values():
            r.pop("_score", None)
            r.pop("_pred", None)
    return {
        "benchmark": "Q2",
        "config": {
            "seed": seed,
            "models": list(models),
            "calibration_share_of_benign_training": CALIBRATION_SHARE,
            "target_fpr": TARGET_FPR,
            "baseline_fields": list(BASELINE_FIELDS),
        },
        "folds": out_folds,
        "family_folds": fam_folds,
        "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def q2_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a :func:`run_q2` result (for ``docs/results.md``)."""
    models = result["config"]["models"]
    lines = [
        "### Q2 — IoT-23 flow logs, leave-one-scenario-out",
        "",
        "Threshold = score exceeded by 1 % of a held-aside 20 % of the benign training flows. "
        "AUC / recall@1%FPR are NaN (–) for one-class scenarios; their row shows the FPR at the threshold.",
        "",
        "| held out | flows | malicious | model | AUC | recall@1%FPR | FPR@thr | recall@thr | macro-F1 |"
        " AUC w/o 42-1 quirk |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in [*result["folds"], *result["family_folds"]]:
        name = "+".join(f["held_out"]) + (f" ({f['family']})" if "family" in f else "")
        for m in models:
            r = f["models"][m]
            lines.append(
                f"| {name} | {f['n_flows']} | {f['n_malicious']} | {m} | {_fmt(r['auc'])} | "
                f"{_fmt(r['recall_at_1pct_fpr'])} | {_fmt(r['fpr_at_threshold'])} | "
                f"{_fmt(r['recall_at_threshold'])} | {_fmt(r.get('macro_f1'))} | "
                f"{_fmt(r.get('auc_quirk_excluded'))} |"
            )
    lines += ["", "Recall at the threshold per class (held-out malicious flows):", ""]
    lines += ["| held out | model | " + " | ".join(("C&C", "DDoS", "PortScan", "FileDownload")) + " |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    for f in [*result["folds"], *result["family_folds"]]:
        if not f["n_malicious"]:
            continue
        name = "+".join(f["held_out"])
        for m in models:
            rc = f["models"][m]["recall_per_class"]
            cells = " | ".join(_fmt(rc.get(c)) for c in ("C&C", "DDoS", "PortScan", "FileDownload"))
            lines.append(f"| {name} | {m} | {cells} |")
    lines += ["", "Summary over LOSO folds (two-class held-out scenarios for AUC/recall):", ""]
    lines += [
        "| model | min AUC | mean AUC | min recall@1%FPR | mean recall@1%FPR | mean FPR one-class |"
        " pooled macro-F1 | unseen family recall@thr (Torii/Mirai/Trojan) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        s = result["summary"][m]
        fam = " / ".join(_fmt(v) for v in s["family_recall_at_threshold"].values())
        lines.append(
            f"| {m} | {_fmt(s['min_auc'])} | {_fmt(s['mean_auc'])} | {_fmt(s['min_recall_at_1pct_fpr'])} | "
            f"{_fmt(s['mean_recall_at_1pct_fpr'])} | {_fmt(s['mean_fpr_one_class'])} | "
            f"{_fmt(s.get('pooled_macro_f1'))} | {fam} |"
        )
    return "\n".join(lines) + "\n"
