"""Integrity of model artifacts: Ed25519 signatures, a trust store, and verified loading.

See :mod:`iotsentry.integrity.signing` for the formats and :mod:`iotsentry.integrity.keys_cli`
for the ``iotsentry keys`` / ``iotsentry model`` subcommands; :mod:`~iotsentry.integrity.audit`
(hash-chained audit log, ``iotsentry audit`` in :mod:`~iotsentry.integrity.audit_cli`),
:mod:`~iotsentry.integrity.canary` (canary replay) and :mod:`~iotsentry.integrity.drift`
(score-distribution and baseline change-rate drift). The canary and drift names are imported
lazily (they pull in the detectors, numba and scipy), so ``import iotsentry.integrity.signing``
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from iotsentry.integrity.audit import AuditError, AuditLog, AuditRecord, VerifyReport, verify
from iotsentry.integrity.signing import (
    IntegrityError,
    KeyInfo,
    Keyring,
    VerifiedArtifact,
    generate_keypair,
    load_keyring,
    load_verified,
    revoke_key,
    rotate_key,
    sign_model_dir,
    trust_key,
    verify_model_dir,
)

__all__ = [
    "CANARY_CLASSES",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "CanaryReport",
    "ChangeRateMonitor",
    "DeviceIdentity",
    "DriftResult",
    "IntegrityError",
    "KeyInfo",
    "Keyring",
    "ScoreDriftMonitor",
    "Verdict",
    "VerifiedArtifact",
    "VerifyReport",
    "generate_keypair",
    "load_keyring",
    "load_verified",
    "profile_detect_fn",
    "revoke_key",
    "rotate_key",
    "run_canaries",
    "sign_model_dir",
    "trust_key",
    "verify",
    "verify_model_dir",
]

_LAZY = {
    "CANARY_CLASSES": "canary",
    "CanaryReport": "canary",
    "DeviceIdentity": "canary",
    "Verdict": "canary",
    "profile_detect_fn": "canary",
    "run_canaries": "canary",
    "ChangeRateMonitor": "drift",
    "DriftResult": "drift",
    "ScoreDriftMonitor": "drift",
}


def __getattr__(name: str) -> Any:
    """Import the canary and drift names on first use."""
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
