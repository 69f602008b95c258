"""Write a federated global model as a (signed) flow-model directory.

The directory has the format of :func:`iotsentry.detectors.flow_models.train_flows` (model
``mlp``), so ``iotsentry score --flows LOG --model DIR`` and
:func:`~iotsentry.detectors.flow_models.load_flow_model` read it; the manifest's ``training``
block says how it was trained (aggregator, rounds, sites, per-site figures). With a signing
key it is signed with :func:`iotsentry.integrity.signing.sign_model_dir` (Ed25519).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.detectors.flow_mlp import FlowMLP

__all__ = ["export_global_model", "write_model_dir"]


def write_model_dir(
    model: FlowMLP, feature_names: Sequence[str], out_dir: str | Path, training: dict[str, Any]
) -> dict[str, Any]:
    """Write ``weights.npz`` + ``manifest.json`` (the ``train_flows`` format, model ``mlp``)."""
    from iotsentry.detectors.flow_models import FORMAT, FORMAT_VERSION

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **model.state_arrays())  # type: ignore[arg-type]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": "mlp",
        "feature_names": list(feature_names),
        "classes": model.classes_.tolist(),
        "params": model.get_params(),
        "refit_on_load": False,
        "training": training,
        "weights_sha256": hashlib.sha256((out / "weights.npz").read_bytes()).hexdigest(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def export_global_model(
    setup: Any,
    weights: Sequence[np.ndarray],
    out_dir: Path,
    summary: dict[str, Any],
    signing_key: str | None = None,
) -> dict[str, Any]:
    """Write the global weights of a simulation (``setup``: its FLSetup) and sign them if asked."""
    from iotsentry.features.flow_features import FEATURE_NAMES

    model = setup.model(weights)
    manifest = write_model_dir(model, FEATURE_NAMES, out_dir, {"federated": summary})
    if signing_key:
        from iotsentry.integrity.signing import sign_model_dir

        sign_model_dir(out_dir, signing_key)
    return manifest
