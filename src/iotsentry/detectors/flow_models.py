"""Train flow-log models into a model directory and score flow logs with them.

A model directory holds ``manifest.json`` (format, model kind, feature names, class list,
training-data digest, source files, parameters, the SHA-256 of the weights) and
``weights.npz`` (numpy arrays only, read with ``allow_pickle=False``):

``hgb``
    :class:`~iotsentry.detectors.flow_classifier.FlowClassifier`: the bounded training sample
    and class codes; **refitted deterministically on load** (no pickle).
``mlp``
    :class:`~iotsentry.detectors.flow_mlp.FlowMLP`: standardisation and layer arrays (exact).
``iforest``
    :class:`~iotsentry.detectors.flow_classifier.FlowIForest` fitted on the benign training
    flows only (unsupervised; ``predicted_class`` is ``benign`` or ``unknown`` at the score
    that 1 % of the benign training flows exceed).

Command line (wired by the CLI)::

    iotsentry train --flows LOG... --out MODEL_DIR [--model hgb|mlp|iforest]
        -> train_flows([Path(p) for p in LOG], Path(MODEL_DIR), model)
    iotsentry score --flows LOG --model MODEL_DIR --out scores.csv
        -> index, uid, score, cls = score_flows(Path(LOG), Path(MODEL_DIR))
           write_scores_csv(Path(out), index, uid, score, cls)
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.capture.zeek import read_flows
from iotsentry.detectors.base import data_digest
from iotsentry.detectors.flow_classifier import UNKNOWN, FlowClassifier, FlowIForest, flow_classes
from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.detectors.thresholds import FprThreshold
from iotsentry.errors import InputError
from iotsentry.features.flow_features import flow_matrix
from iotsentry.schema import FlowBatch

__all__ = ["MODEL_KINDS", "load_flow_model", "score_flows", "train_flows", "write_scores_csv"]

MODEL_KINDS = ("hgb", "mlp", "iforest")
FORMAT = "iotsentry-flow-model"
FORMAT_VERSION = "1"


class _IForestModel:
    """``FlowIForest`` with a benign-calibrated cut, exposing ``evaluate`` like the classifiers."""

    def __init__(self, det: FlowIForest, cut: float) -> None:
        self.det = det
        self.cut = cut

    def evaluate(self, X: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.str_], None]:
        s = self.det.score_samples(X)
        return s, np.where(s > self.cut, UNKNOWN, "benign").astype(str), None


FlowModel = FlowClassifier | FlowMLP | _IForestModel


def _read_labeled(paths: list[Path]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.str_], list[str]]:
    """Features per file (context never crosses files) and classes of all flows."""
    Xs, ys = [], []
    names: list[str] = []
    for p in paths:
        flows = read_flows(p)
        if not flows.has("label"):
            raise InputError(p, "training flows need labels (label / detailed-label columns)")
        X, names = flow_matrix(flows)
        Xs.append(X)
        ys.append(flow_classes(flows))
    if not Xs or sum(len(x) for x in Xs) == 0:
        raise ValueError("no training flows")
    return np.vstack(Xs), np.concatenate(ys), names


def fit_flow_model(
    X: npt.NDArray[Any], y: npt.NDArray[np.str_], model: str = "hgb", seed: int = 0
) -> FlowModel:
    """Fit one model kind on feature rows and class names (used by training and by Q2)."""
    if model == "hgb":
        return FlowClassifier(random_state=seed).fit(X, y)
    if model == "mlp":
        return FlowMLP(seed=seed).fit(X, y)
    if model == "iforest":
        benign = np.asarray(X)[np.asarray(y) == "benign"]
        det = FlowIForest(random_state=seed).fit(benign)
        cut = FprThreshold(target_fpr=0.01).calibrate(det.score_samples(benign)).value_
        return _IForestModel(det, cut)
    raise ValueError(f"unknown flow model {model!r}; choose from {', '.join(MODEL_KINDS)}")


def train_flows(paths: list[Path], out_dir: Path, model: str = "hgb") -> dict[str, Any]:
    """Train a flow model on labeled conn logs / IoT-23 CSVs and write it to ``out_dir``.

    Parameters
    ----------
    paths
        Labeled Zeek conn logs or flow CSVs (read with :func:`~iotsentry.capture.zeek.read_flows`).
    out_dir
        Model directory to create (``manifest.json`` + ``weights.npz``).
    model
        ``hgb`` (default), ``mlp`` or ``iforest``.

    Returns
    -------
    dict
        The manifest that was written.
    """
    if model not in MODEL_KINDS:
        raise ValueError(f"unknown flow model {model!r}; choose from {', '.join(MODEL_KINDS)}")
    X, y, names = _read_labeled([Path(p) for p in paths])
    fitted = fit_flow_model(X, y, model)
    arrays: dict[str, npt.NDArray[Any]]
    params: dict[str, Any]
    if isinstance(fitted, _IForestModel):
        arrays = fitted.det._state()
        arrays["cut_"] = np.float64(fitted.cut)  # type: ignore[assignment]
        params = fitted.det.get_params()
        classes = ["benign", UNKNOWN]
    else:
        arrays, params = fitted.state_arrays(), fitted.get_params()
        classes = fitted.classes_.tolist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **arrays)  # type: ignore[arg-type]
    counts = dict(zip(*np.unique(y, return_counts=True), strict=True))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "feature_names": names,
        "classes": classes,
        "training_data_digest": data_digest(X),
        "training_files": [Path(p).name for p in paths],
        "training_class_counts": {str(k): int(v) for k, v in counts.items()},
        "params": params,
        "refit_on_load": model == "hgb",
        "weights_sha256": hashlib.sha256((out / "weights.npz").read_bytes()).hexdigest(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def load_flow_model(model_dir: Path) -> tuple[FlowModel, dict[str, Any]]:
    """Read a model directory written by :func:`train_flows` (hash checked, no pickle)."""
    d = Path(model_dir)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(d / "manifest.json", f"cannot read model manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(d, "not a flow model directory (manifest format differs)")
    raw = (d / "weights.npz").read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest.get("weights_sha256"):
        raise InputError(d / "weights.npz", "weights do not match the manifest's hash")
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    kind, params = manifest["model"], manifest.get("params", {})
    fitted: FlowModel
    if kind == "hgb":
        fitted = FlowClassifier.from_arrays(params, arrays)
    elif kind == "mlp":
        fitted = FlowMLP.from_arrays(params, arrays)
    elif kind == "iforest":
        det = FlowIForest(**params)
        for k, v in arrays.items():
            if k != "cut_":
                setattr(det, k, v)
        fitted = _IForestModel(det, float(arrays["cut_"]))
    else:
        raise InputError(d, f"unknown flow model kind {kind!r}")
    return fitted, manifest


def score_flows(
    path: Path, model_dir: Path
) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.float64], list[str]]:
    """Score every flow of a conn log / flow CSV with a model directory.

    Returns
    -------
    index : numpy.ndarray
        0-based row of each flow in the file (file order).
    uid : list of str
        Zeek uid (``""`` when the source has none).
    score : numpy.ndarray
        Malicious-vs-benign score, higher = more likely malicious.
    predicted_class : list of str
        A class of the model, or ``unknown``.
    """
    fitted, manifest = load_flow_model(model_dir)
    flows: FlowBatch = read_flows(path)
    X, names = flow_matrix(flows)
    if names != manifest.get("feature_names"):
        raise InputError(Path(model_dir), "the model was trained on a different feature set")
    score, pred, _ = fitted.evaluate(X)
    uid = [str(u) for u in flows.uid] if flows.has("uid") else [""] * len(flows)
    return np.asarray(flows.flow_id, dtype=np.int64), uid, score, [str(p) for p in pred]


def write_scores_csv(
    out: Path,
    index: npt.NDArray[np.int64],
    uid: list[str],
    score: npt.NDArray[np.float64],
    predicted_class: list[str],
) -> None:
    """Write ``index,uid,score,predicted_class`` rows (with a header) to ``out``."""
    with Path(out).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "uid", "score", "predicted_class"])
        for i, u, s, c in zip(index.tolist(), uid, score.tolist(), predicted_class, strict=True):
            w.writerow([i, u, f"{s:.6g}", c])
