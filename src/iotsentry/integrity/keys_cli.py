"""The ``iotsentry keys`` and ``iotsentry model`` subcommands (wired in by ``register``).

::

    iotsentry keys generate --dir D [--name NAME]   new key pair, trusted as the active key of D
    iotsentry keys rotate --dir D                   new active key; the old one becomes retired
    iotsentry keys revoke --dir D KEY_ID            signatures by KEY_ID no longer verify
    iotsentry keys list --dir D [--json]            the trust store D/trusted_keys.json
    iotsentry model sign DIR --key KEYFILE [--keyring D]
    iotsentry model verify DIR --keyring D          prints the key id (exit 0) or one error line (exit 2)

Errors are :class:`~iotsentry.errors.IotSentryError`; ``iotsentry.cli.main`` prints them as one
line and exits 2. ``model verify`` does the same itself, so its exit status is defined even
when called directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from iotsentry.integrity import signing

__all__ = ["cmd_keys_generate", "cmd_keys_list", "cmd_keys_revoke", "cmd_keys_rotate", "register"]


def cmd_keys_generate(args: argparse.Namespace) -> int:
    ring = signing.load_keyring(args.dir)
    if ring.active is not None:
        raise signing.IntegrityError(
            ring.path or args.dir, f"key {ring.active.key_id} is already active; use 'keys rotate'"
        )
    info = signing.trust_key(args.dir, signing.generate_keypair(args.dir, args.name))
    print(f"generated key {info.key_id} (active)")
    print(f"private: {info.private_key_path}\npublic:  {info.public_key_path}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    info = signing.rotate_key(args.dir)
    print(f"rotated: key {info.key_id} is now active\nprivate: {info.private_key_path}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    info = signing.revoke_key(args.dir, args.key_id)
    print(f"revoked key {info.key_id} at {info.revoked_at}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    ring = signing.load_keyring(args.dir)
    if args.json:
        print(json.dumps([k.to_json() for k in ring.keys.values()], indent=2))
        return 0
    if not ring.keys:
        print(f"{ring.path}: no keys")
    for k in ring.keys.values():
        since = k.revoked_at or k.retired_at or k.created
        print(f"{k.key_id}  {k.status:<8} {since}")
    return 0


def cmd_model_sign(args: argparse.Namespace) -> int:
    doc = signing.sign_model_dir(args.dir, args.key, keyring=args.keyring)
    print(f"signed {args.dir} with key {doc['key_id']} ({len(doc['files'])} files)")
    return 0


def cmd_model_verify(args: argparse.Namespace) -> int:
    try:
        v = signing.verify_model_dir(args.dir, args.keyring)
    except signing.IntegrityError as e:
        print(f"iotsentry: error: {e}", file=sys.stderr)
        return 2
    print(f"{v.key_id}\t{args.dir}: verified, signed at {v.signed_at} ({len(v.files)} files)")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``keys`` and ``model`` subcommands to the top-level ``subparsers``."""
    k = subparsers.add_parser("keys", help="Ed25519 signing keys and the trust store")
    ks = k.add_subparsers(dest="keys_command", required=True)
    g = ks.add_parser("generate", help="create a key pair and trust it as the active key")
    g.add_argument("--dir", required=True, help="key directory (holds trusted_keys.json)")
    g.add_argument("--name", help="file name stem (default: the key id)")
    g.set_defaults(func=cmd_keys_generate)
    r = ks.add_parser("rotate", help="new active key; the previous one is retired")
    r.add_argument("--dir", required=True)
    r.set_defaults(func=cmd_keys_rotate)
    v = ks.add_parser("revoke", help="distrust a key: its signatures fail verification")
    v.add_argument("--dir", required=True)
    v.add_argument("key_id")
    v.set_defaults(func=cmd_keys_revoke)
    ls = ks.add_parser("list", help="the keys of the trust store and their status")
    ls.add_argument("--dir", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_keys_list)

    m = subparsers.add_parser("model", help="sign and verify model directories")
    ms = m.add_subparsers(dest="model_command", required=True)
    s = ms.add_parser("sign", help="write DIR/signature.json covering every file of DIR")
    s.add_argument("dir", help="model directory")
    s.add_argument("--key", required=True, help="private key file (.key)")
    s.add_argument("--keyring", help="trust store the key must be active in (default: the key's directory)")
    s.set_defaults(func=cmd_model_sign)
    c = ms.add_parser("verify", help="check DIR against the trust store")
    c.add_argument("dir", help="model directory")
    c.add_argument("--keyring", required=True, help="directory holding trusted_keys.json")
    c.set_defaults(func=cmd_model_verify)
