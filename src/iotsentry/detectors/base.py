"""The detector contract, a registry, and artifact save/load without pickle.

Contract (scikit-learn / pyod style): ``__init__`` only stores parameters; ``fit(X) -> self``;
``score_samples(X) -> float64[n]`` with **higher = more anomalous**; learned state ends in ``_``;
scoring never mutates state. Thresholds are separate objects (``thresholds.py``).

Artifacts are a directory with ``weights.npz`` (numpy arrays only, loaded with
``allow_pickle=False``) and ``manifest.json`` (detector, version, parameters, feature schema,
training-data digest). Signing and verification live in ``integrity/``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from iotsentry.errors import InputError
from iotsentry.schema import SCHEMA_VERSION

REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator adding a detector to :data:`REGISTRY` under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def data_digest(X: npt.NDArray[Any]) -> str:
    """SHA-256 of the training matrix (dtype, shape and bytes)."""
    a = np.ascontiguousarray(X)
    h = hashlib.sha256(f"{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


class Detector(ABC):
    """Base class of every detector."""

    name: ClassVar[str] = "detector"
    version: ClassVar[str] = "0"

    @abstractmethod
    def fit(self, X: npt.NDArray[np.float64]) -> Self:
        """Learn from (benign) rows of ``X``."""

    @abstractmethod
    def score_samples(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Anomaly score per row; higher means more anomalous."""

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-ready)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def _state(self) -> dict[str, npt.NDArray[Any]]:
        return {k: np.asarray(v) for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def save(
        self, directory: str | Path, *, feature_names: list[str] | None = None, digest: str = ""
    ) -> Path:
        """Write ``weights.npz`` and ``manifest.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = self._state()
        np.savez(d / "weights.npz", **state)  # type: ignore[arg-type]
        manifest = {
            "detector": self.name,
            "version": self.version,
            "schema_version": SCHEMA_VERSION,
            "params": self.get_params(),
            "state_keys": sorted(state),
            "feature_names": feature_names or [],
            "training_data_digest": digest,
            "weights_sha256": hashlib.sha256((d / "weights.npz").read_bytes()).hexdigest(),
        }
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read an artifact written by :meth:`save` (weights hash checked; no pickle)."""
        d = Path(directory)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise InputError(d / "manifest.json", f"cannot read model manifest ({e})") from None
        if manifest.get("detector") != cls.name:
            raise InputError(d, f"artifact holds detector {manifest.get('detector')!r}, not {cls.name!r}")
        raw = (d / "weights.npz").read_bytes()
        if hashlib.sha256(raw).hexdigest() != manifest.get("weights_sha256"):
            raise InputError(d / "weights.npz", "weights do not match the manifest's hash")
        obj = cls(**manifest.get("params", {}))
        with np.load(d / "weights.npz", allow_pickle=False) as z:
            for k in manifest.get("state_keys", []):
                setattr(obj, k, z[k])
        return obj
