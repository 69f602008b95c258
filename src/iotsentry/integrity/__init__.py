"""Integrity of model artifacts: Ed25519 signatures, a trust store, and verified loading.

See :mod:`iotsentry.integrity.signing` for the formats and :mod:`iotsentry.integrity.keys_cli`
for the ``iotsentry keys`` / ``iotsentry model`` subcommands.
"""

from __future__ import annotations

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
    "IntegrityError",
    "KeyInfo",
    "Keyring",
    "VerifiedArtifact",
    "generate_keypair",
    "load_keyring",
    "load_verified",
    "revoke_key",
    "rotate_key",
    "sign_model_dir",
    "trust_key",
    "verify_model_dir",
]
