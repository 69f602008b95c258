"""BENCHMARKS Q3: device-type identification on the IoT SENTINEL setup captures.

:func:`run_q3` reads every setup capture listed in ``iot-sentinel/index.csv``, makes one
fingerprint per capture (:func:`iotsentry.features.device_fingerprint.fingerprint` on the
device's MAC) and measures, in one run:

* **closed set** -- 5-fold stratified split by setup capture over the 27 types (the unit pairs
  EdimaxCam1/2, EdnetCam1/2, WeMoInsightSwitch/2 and WeMoSwitch/2 merged): accuracy, per-type
  F1, most confused pairs, from the forest's best trained type;
* **open set on the same folds** -- the :class:`DeviceTypeClassifier` decision with its
  "unknown" outcome (a rejection of a known type counts as an error);
* **baseline** -- a plain random forest (100 trees) on the first 12 packets' header flags plus
  capture-wide protocol counts, each of the 31 folders its own class (BENCHMARKS: about 87 %);
  scored per folder (31 classes) and with its predictions merged to the 27 types;
* **left-out type** -- for each type, on each fold, the model is trained without that type:
  how often its captures are reported "unknown" (target >= 90 %), and accuracy and rejection
  rate on the known types' test captures of the same folds.

:func:`q3_markdown` formats the result for ``docs/results.md``.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from iotsentry.capture.reader import read_all
from iotsentry.features.device_fingerprint import CAPTURE_FEATURES, PACKET_FEATURES, fingerprint
from iotsentry.inventory.type_classifier import UNKNOWN, DeviceTypeClassifier
from iotsentry.schema import mac_from_str

__all__ = ["SentinelSet", "folder_type", "load_sentinel", "q3_markdown", "run_q3"]

_UNIT_PAIRS = {
    "EdimaxCam1": "EdimaxCam",
    "EdimaxCam2": "EdimaxCam",
    "EdnetCam1": "EdnetCam",
    "EdnetCam2": "EdnetCam",
    "WeMoInsightSwitch2": "WeMoInsightSwitch",
    "WeMoSwitch2": "WeMoSwitch",
}

FINGERPRINT_PARAMS: dict[str, Any] = {"n_first": 12, "dedupe": True, "use_hostname": True}
"""Fingerprint settings of the evaluated model."""


def folder_type(folder: str) -> str:
    """The device type of an IoT SENTINEL folder (unit pairs merged)."""
    return _UNIT_PAIRS.get(folder, folder)


@dataclass
class SentinelSet:
    """One row per setup capture: fingerprints, baseline features and labels."""

    X: npt.NDArray[np.float64]
    X_base: npt.NDArray[np.float64]
    types: npt.NDArray[np.str_]
    folders: npt.NDArray[np.str_]
    files: list[str]


def _baseline_features(batch: Any, mac: int) -> npt.NDArray[np.float64]:
    """First 12 packets' header features (no dedupe) + capture-wide protocol counts."""
    v = fingerprint(batch, mac, n_first=12, events=[], dedupe=False)
    block = v[: 12 * len(PACKET_FEATURES)]
    cap = v[12 * len(PACKET_FEATURES) :]
    log_n = cap[CAPTURE_FEATURES.index("log_packets")]
    n = float(np.expm1(log_n))
    shares = cap[4 : 4 + 16]  # share_arp .. share_ntp
    counts = np.round(shares * n)
    return np.concatenate([block, counts, cap[:3]])


def load_sentinel(
    data_dir: str | Path, types: Sequence[str] | None = None, fingerprint_params: dict[str, Any] | None = None
) -> SentinelSet:
    """Fingerprints of the IoT SENTINEL captures under ``data_dir/iot-sentinel`` (or ``data_dir``).

    Parameters
    ----------
    data_dir
        The shared data folder (holding ``iot-sentinel/``) or the ``iot-sentinel`` folder itself.
    types
        Keep only these (merged) types; None keeps all 27.
    fingerprint_params
        Keyword arguments of :func:`fingerprint` (default :data:`FINGERPRINT_PARAMS`).
    """
    root = Path(data_dir)
    if not (root / "index.csv").exists():
        root = root / "iot-sentinel"
    params = dict(FINGERPRINT_PARAMS if fingerprint_params is None else fingerprint_params)
    X: list[npt.NDArray[np.float64]] = []
    XB: list[npt.NDArray[np.float64]] = []
    ty: list[str] = []
    fo: list[str] = []
    files: list[str] = []
    with open(root / "index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            folder = row["device_dir"]
            if types is not None and folder_type(folder) not in types:
                continue
            batch = read_all(root / folder / row["file"], with_raw=True)
            mac = mac_from_str(row["device_mac"])
            X.append(fingerprint(batch, mac, **params))
            XB.append(_baseline_features(batch, mac))
            ty.append(folder_type(folder))
            fo.append(folder)
            files.append(f"{folder}/{row['file']}")
    return SentinelSet(np.vstack(X), np.vstack(XB), np.array(ty), np.array(fo), files)


def _confused(y: Sequence[str], p: Sequence[str], top: int = 8) -> list[dict[str, Any]]:
    c = Counter((a, b) for a, b in zip(y, p, strict=True) if a != b)
    return [{"true": a, "predicted": b, "count": n} for (a, b), n in c.most_common(top)]


def _per_type_f1(y: npt.NDArray[np.str_], p: npt.NDArray[np.str_], labels: list[str]) -> dict[str, float]:
    f1 = f1_score(y, p, labels=labels, average=None, zero_division=0)
    return {t: round(float(v), 4) for t, v in zip(labels, f1, strict=True)}


def run_q3(
    data_dir: str | Path,
    *,
    types: Sequence[str] | None = None,
    n_folds: int = 5,
    n_estimators: int = 200,
    random_state: int = 0,
    leave_out: bool = True,
    n_jobs: int = 1,
) -> dict[str, Any]:
    """Run BENCHMARKS Q3 and return every figure as a JSON-ready dict.

    Parameters
    ----------
    data_dir
        The shared data folder (holding ``iot-sentinel/``) or that folder itself.
    types
        Restrict to these types (reduced runs); None uses all 27.
    n_folds
        Stratified folds over setup captures.
    n_estimators
        Trees of the evaluated classifier (the baseline always uses 100).
    random_state
        Seed of folds and forests.
    leave_out
        Also run the left-out-type test (one model per type and fold: the slow part).
    n_jobs
        Parallel jobs of the forests.
    """
    t0 = time.perf_counter()
    data = load_sentinel(data_dir, types)
    t_feat = time.perf_counter() - t0
    y, folders = data.types, data.folders
    labels = sorted(set(y.tolist()))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    splits = list(cv.split(data.X, y))

    def model() -> DeviceTypeClassifier:
        return DeviceTypeClassifier(
            n_estimators=n_estimators,
            random_state=random_state,
            fingerprint_params=FINGERPRINT_PARAMS,
            n_jobs=n_jobs,
        )

    closed = np.empty(len(y), dtype=object)
    opened = np.empty(len(y), dtype=object)
    base_folder = np.empty(len(y), dtype=object)
    for tr, te in splits:
        m = model().fit(data.X[tr], y[tr])
        closed[te] = m.classes_[m.predict_proba(data.X[te]).argmax(axis=1)]
        opened[te] = m.predict(data.X[te])
        base = RandomForestClassifier(n_estimators=100, random_state=random_state, n_jobs=n_jobs)
        base.fit(data.X_base[tr], folders[tr])
        base_folder[te] = base.predict(data.X_base[te])
    closed_s, opened_s = closed.astype(str), opened.astype(str)
    base_type = np.array([folder_type(str(f)) for f in base_folder])
    result: dict[str, Any] = {
        "n_captures": len(y),
        "n_types": len(labels),
        "n_folders": len(set(folders.tolist())),
        "n_folds": n_folds,
        "n_features": int(data.X.shape[1]),
        "fingerprint_params": FINGERPRINT_PARAMS,
        "model": {"estimator": "random_forest", "n_estimators": n_estimators, "random_state": random_state},
        "closed_set": {
            "accuracy": float(np.mean(closed_s == y)),
            "macro_f1": float(f1_score(y, closed_s, labels=labels, average="macro", zero_division=0)),
            "per_type_f1": _per_type_f1(y, closed_s, labels),
            "per_type_accuracy": {t: float(np.mean(closed_s[y == t] == t)) for t in labels},
            "confused_pairs": _confused(y.tolist(), closed_s.tolist()),
        },
        "open_set_same_folds": {
            "accuracy": float(np.mean(opened_s == y)),
            "unknown_rate_on_known_types": float(np.mean(opened_s == UNKNOWN)),
            "accuracy_of_accepted": float(np.mean(opened_s[opened_s != UNKNOWN] == y[opened_s != UNKNOWN]))
            if np.any(opened_s != UNKNOWN)
            else 0.0,
        },
        "baseline": {
            "description": "RandomForest(100): first-12-packet flags + protocol counts, 31 folder classes",
            "accuracy_31_folders": float(np.mean(base_folder.astype(str) == folders)),
            "accuracy_27_types": float(np.mean(base_type == y)),
            "confused_pairs_folders": _confused(folders.tolist(), base_folder.astype(str).tolist()),
        },
    }
    if leave_out:
        result["left_out_type"] = _left_out(data.X, y, splits, labels, model)
    result["seconds"] = {"features": round(t_feat, 2), "total": round(time.perf_counter() - t0, 2)}
    return result


def _left_out(
    X: npt.NDArray[np.float64],
    y: npt.NDArray[np.str_],
    splits: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    labels: list[str],
    model: Any,
) -> dict[str, Any]:
    """For each type and fold: train without the type, test on the fold."""
    per_type: dict[str, dict[str, Any]] = {}
    unk_hits = unk_total = known_ok = known_total = known_rej = 0
    for t in labels:
        hits = total = 0
        taken_for: Counter[str] = Counter()
        for tr, te in splits:
            tr = tr[y[tr] != t]
            m = model().fit(X[tr], y[tr])
            pred = np.asarray(m.predict(X[te]), dtype=str)
            out = y[te] == t
            hits += int(np.sum(pred[out] == UNKNOWN))
            total += int(np.sum(out))
            taken_for.update(pred[out][pred[out] != UNKNOWN].tolist())
            known_ok += int(np.sum(pred[~out] == y[te][~out]))
            known_rej += int(np.sum(pred[~out] == UNKNOWN))
            known_total += int(np.sum(~out))
        per_type[t] = {
            "unknown_rate": hits / total if total else 0.0,
            "captures": total,
            "taken_for": dict(taken_for.most_common(3)),
        }
        unk_hits += hits
        unk_total += total
    rates = [v["unknown_rate"] for v in per_type.values()]
    return {
        "unknown_rate": unk_hits / unk_total if unk_total else 0.0,
        "types_at_or_above_90": int(sum(r >= 0.9 for r in rates)),
        "known_accuracy": known_ok / known_total if known_total else 0.0,
        "known_unknown_rate": known_rej / known_total if known_total else 0.0,
        "per_type": per_type,
    }


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


def q3_markdown(result: dict[str, Any]) -> str:
    """A ``docs/results.md`` section for a :func:`run_q3` result."""
    c, o, b = result["closed_set"], result["open_set_same_folds"], result["baseline"]
    lines = [
        "## Q3 — Device-type identification (IoT SENTINEL)",
        "",
        f"{result['n_captures']} setup captures, {result['n_types']} types ({result['n_folders']} folders), "
        f"{result['n_folds']}-fold stratified split by capture; {result['n_features']} features "
        f"(`fingerprint(**{result['fingerprint_params']})`), random forest "
        f"({result['model']['n_estimators']} trees, random_state {result['model']['random_state']}).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| accuracy, closed set (27 types) | {_pct(c['accuracy'])} | ≥ 95 % |",
        f"| macro F1, closed set | {c['macro_f1']:.3f} | |",
        f"| accuracy with open-set rejection (unknown = error) | {_pct(o['accuracy'])} | |",
        f"| known captures reported unknown | {_pct(o['unknown_rate_on_known_types'])} | |",
        f"| baseline RF, 31 folder classes | {_pct(b['accuracy_31_folders'])} | ≈ 87 % (BENCHMARKS) |",
        f"| baseline RF, merged to 27 types | {_pct(b['accuracy_27_types'])} | |",
    ]
    lo = result.get("left_out_type")
    if lo:
        lines += [
            f"| left-out type reported unknown (all captures) | {_pct(lo['unknown_rate'])} | ≥ 90 % |",
            f"| types with ≥ 90 % unknown when left out "
            f"| {lo['types_at_or_above_90']} / {result['n_types']} | |",
            f"| accuracy on known types in that test | {_pct(lo['known_accuracy'])} | |",
            f"| known types reported unknown in that test | {_pct(lo['known_unknown_rate'])} | |",
        ]
    lines += [
        "",
        "Per type (closed-set F1 and accuracy; left-out: share reported unknown, else taken for):",
        "",
    ]
    head = "| type | F1 | accuracy |" + (" left out → unknown | taken for |" if lo else "")
    lines += [head, "|---|---|---|" + ("---|---|" if lo else "")]
    for t, f1 in c["per_type_f1"].items():
        row = f"| {t} | {f1:.3f} | {_pct(c['per_type_accuracy'][t])} |"
        if lo:
            pt = lo["per_type"][t]
            taken = ", ".join(f"{k} ({v})" for k, v in pt["taken_for"].items()) or "—"
            row += f" {_pct(pt['unknown_rate'])} | {taken} |"
        lines.append(row)
    lines += ["", "Most confused pairs (closed set): "]
    lines.append(
        ", ".join(f"{p['true']} → {p['predicted']} ({p['count']})" for p in c["confused_pairs"]) or "none"
    )
    lines += ["", "Baseline's most confused folders: "]
    lines.append(
        ", ".join(f"{p['true']} → {p['predicted']} ({p['count']})" for p in b["confused_pairs_folders"])
    )
    lines.append("")
    return "\n".join(lines)
