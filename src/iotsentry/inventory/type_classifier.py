"""Learned device-type identification with an "unknown type" outcome (open set).

:class:`DeviceTypeClassifier` is a random forest (scikit-learn, fixed ``random_state``) over
:func:`iotsentry.features.device_fingerprint.fingerprint` vectors. A prediction is replaced by
:data:`UNKNOWN` when the input is unlike every trained type, by either of two tests whose
thresholds are calibrated on the training data by stratified cross-validation:

* the forest's highest class probability is below ``min_proba_`` (the ``reject_rate``
  quantile of the out-of-fold highest probabilities of training fingerprints), or
* the Euclidean distance from the standardised input to its nearest training fingerprint is
  above ``max_distance_`` (the ``1 - reject_rate`` quantile of out-of-fold nearest distances).

So each test rejects about ``reject_rate`` of inputs of known types (together at most twice
that) while a type absent from training is caught when it is far from, or ambiguous between,
the trained types. A type whose traffic is the same as a trained type's (identical firmware
under two product names) cannot be caught this way.

Saving: scikit-learn forests cannot be stored as plain arrays, so :meth:`save` writes the
training fingerprints, labels, parameters and calibrated thresholds to one ``.npz`` (no
pickle: ``allow_pickle=False`` on load) and :meth:`load` refits the forest deterministically
(same data, same ``random_state``: the same trees) and reuses the stored thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.model_selection import StratifiedKFold

from iotsentry.capture.appfields import extract_app_events
from iotsentry.features.device_fingerprint import fingerprint
from iotsentry.schema import Device, PacketBatch, mac_from_str

__all__ = ["UNKNOWN", "DeviceTypeClassifier", "classify_devices"]

UNKNOWN = "unknown"
"""Label returned for inputs unlike every trained type."""

FORMAT_VERSION = 1


def _sq_dist_min(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Nearest Euclidean distance from each row of ``a`` to the rows of ``b``."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


class DeviceTypeClassifier:
    """Random-forest device-type classifier with an open-set "unknown" outcome.

    Parameters
    ----------
    n_estimators
        Trees in the forest.
    estimator
        ``"random_forest"`` (default) or ``"extra_trees"``.
    random_state
        Seed of the forest and of the calibration folds (results are deterministic).
    open_set
        Calibrate and apply the "unknown" tests; False always returns a trained type.
    reject_rate
        Share of known-type training fingerprints each test rejects in cross-validation.
    cv_folds
        Folds of the calibration cross-validation (reduced for types with fewer samples).
    fingerprint_params
        Keyword arguments of :func:`fingerprint` the training vectors were made with
        (``n_first``, ``dedupe``, ``use_hostname``); :func:`classify_devices` uses them.
    n_jobs
        Parallel jobs of the forest (results do not depend on it).
    """

    def __init__(
        self,
        n_estimators: int = 200,
        estimator: str = "random_forest",
        random_state: int = 0,
        open_set: bool = True,
        reject_rate: float = 0.025,
        cv_folds: int = 3,
        fingerprint_params: dict[str, Any] | None = None,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.estimator = estimator
        self.random_state = random_state
        self.open_set = open_set
        self.reject_rate = reject_rate
        self.cv_folds = cv_folds
        self.fingerprint_params = dict(fingerprint_params or {"n_first": 12, "dedupe": True})
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------------------- fitting

    def _params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "estimator": self.estimator,
            "random_state": self.random_state,
            "open_set": self.open_set,
            "reject_rate": self.reject_rate,
            "cv_folds": self.cv_folds,
            "fingerprint_params": self.fingerprint_params,
            "n_jobs": self.n_jobs,
        }

    def _forest(self) -> RandomForestClassifier | ExtraTreesClassifier:
        cls = {"random_forest": RandomForestClassifier, "extra_trees": ExtraTreesClassifier}[self.estimator]
        return cls(n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=self.n_jobs)

    def _scale(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (X - self.mean_) / self.scale_

    def _fit_forest(self, X: npt.NDArray[np.float64], y: npt.NDArray[np.str_]) -> None:
        self.X_ = X
        self.y_ = y
        self.mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        self.Z_ = self._scale(X)
        self.forest_ = self._forest().fit(X, y)
        self.classes_ = np.asarray(self.forest_.classes_, dtype=str)

    def fit(self, X: npt.ArrayLike, types: list[str] | npt.ArrayLike) -> Self:
        """Fit the forest on fingerprints ``X`` (n, d) labelled ``types``, then calibrate.

        Returns
        -------
        DeviceTypeClassifier
            ``self``.
        """
        Xa = np.asarray(X, dtype=np.float64)
        y = np.asarray(types, dtype=str)
        if Xa.ndim != 2 or len(Xa) != len(y):
            raise ValueError("X must be (n, d) with one type per row")
        if UNKNOWN in set(y.tolist()):
            raise ValueError(f"{UNKNOWN!r} is reserved for the open-set outcome")
        self._fit_forest(Xa, y)
        self.min_proba_ = 0.0
        self.max_distance_ = float("inf")
        if self.open_set:
            self.min_proba_, self.max_distance_ = self._calibrate(Xa, y)
        return self

    def _calibrate(self, X: npt.NDArray[np.float64], y: npt.NDArray[np.str_]) -> tuple[float, float]:
        """Thresholds from out-of-fold highest probabilities and nearest-neighbour distances."""
        _, counts = np.unique(y, return_counts=True)
        k = int(min(self.cv_folds, counts.min()))
        if k < 2:
            return 0.0, float("inf")
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
        maxp = np.zeros(len(y))
        dist = np.zeros(len(y))
        for tr, te in cv.split(X, y):
            f = self._forest().fit(X[tr], y[tr])
            maxp[te] = f.predict_proba(X[te]).max(axis=1)
            mu = X[tr].mean(axis=0)
            sd = X[tr].std(axis=0)
            sd = np.where(sd > 0, sd, 1.0)
            dist[te] = _sq_dist_min((X[te] - mu) / sd, (X[tr] - mu) / sd)
        return float(np.quantile(maxp, self.reject_rate)), float(np.quantile(dist, 1.0 - self.reject_rate))

    # ----------------------------------------------------------------------------- prediction

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Class probabilities (n, len(``classes_``)) of the trained types (no unknown column)."""
        return np.asarray(self.forest_.predict_proba(np.asarray(X, dtype=np.float64)), dtype=np.float64)

    def nearest_distance(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Distance of each standardised input to its nearest training fingerprint."""
        return _sq_dist_min(self._scale(np.asarray(X, dtype=np.float64)), self.Z_)

    def decide(self, X: npt.ArrayLike) -> tuple[list[str], npt.NDArray[np.float64]]:
        """Predicted types (with :data:`UNKNOWN`) and the highest class probability of each row."""
        Xa = np.asarray(X, dtype=np.float64)
        if len(Xa) == 0:
            return [], np.zeros(0)
        proba = self.predict_proba(Xa)
        best = proba.max(axis=1)
        labels = self.classes_[proba.argmax(axis=1)].astype(object)
        if self.open_set:
            unknown = (best < self.min_proba_) | (self.nearest_distance(Xa) > self.max_distance_)
            labels[unknown] = UNKNOWN
        return [str(s) for s in labels], best

    def predict(self, X: npt.ArrayLike) -> list[str]:
        """Predicted type of each fingerprint, or :data:`UNKNOWN`."""
        return self.decide(X)[0]

    # ----------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write training data, parameters and thresholds to an ``.npz`` (no pickle)."""
        meta = {
            "format": "iotsentry.device_type_classifier",
            "format_version": FORMAT_VERSION,
            "params": self._params(),
            "min_proba": self.min_proba_,
            "max_distance": None if np.isinf(self.max_distance_) else self.max_distance_,
        }
        with open(path, "wb") as fh:
            np.savez_compressed(fh, X=self.X_, y=self.y_.astype(str), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> DeviceTypeClassifier:
        """Read a model written by :meth:`save`; the forest is refitted deterministically."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            X = np.asarray(z["X"], dtype=np.float64)
            y = np.asarray(z["y"], dtype=str)
        if meta.get("format") != "iotsentry.device_type_classifier":
            raise ValueError(f"{path}: not a device-type classifier")
        model = cls(**meta["params"])
        model._fit_forest(X, y)
        model.min_proba_ = float(meta["min_proba"])
        md = meta["max_distance"]
        model.max_distance_ = float("inf") if md is None else float(md)
        return model


def classify_devices(devices: list[Device], batch: PacketBatch, model: DeviceTypeClassifier) -> None:
    """Fill ``device_type`` and ``type_confidence`` of every device with a MAC, in place.

    The fingerprint is made from the device's packets in ``batch`` (read it with
    ``with_raw=True`` for the application fields) with the model's ``fingerprint_params``.
    ``type_confidence`` is the forest's highest class probability; for :data:`UNKNOWN` it is
    ``1 -`` that probability (how sure the model is that none of its types fits). Devices
    without a MAC or without packets in ``batch`` are left unchanged.
    """
    targets = [(d, mac_from_str(d.mac)) for d in devices if d.mac]
    if not targets:
        return
    events = extract_app_events(batch) if batch.raw is not None else []
    rows: list[npt.NDArray[np.float64]] = []
    kept: list[Device] = []
    present = set(np.unique(np.concatenate([batch.src_mac, batch.dst_mac])).tolist()) if len(batch) else set()
    for dev, mac in targets:
        if mac not in present:
            continue
        rows.append(fingerprint(batch, mac, events=events, **model.fingerprint_params))
        kept.append(dev)
    if not rows:
        return
    labels, best = model.decide(np.vstack(rows))
    for dev, label, p in zip(kept, labels, best.tolist(), strict=True):
        dev.device_type = label
        dev.type_confidence = float(1.0 - p) if label == UNKNOWN else float(p)
