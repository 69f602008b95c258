"""The ``iotsentry audit`` subcommands (wired in by ``register``).

::

    iotsentry audit verify LOG [--trusted-keys F] [--json]   exit 0 intact, 1 broken (one-line reason)
    iotsentry audit show LOG [--tail N] [--json]             the records, one per line

``--trusted-keys`` is a key directory holding ``trusted_keys.json``, that file, or a ``.pub``
public key; with it every checkpoint must verify and at least one must exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from iotsentry.errors import InputError, IotSentryError
from iotsentry.integrity import audit

__all__ = ["cmd_audit_show", "cmd_audit_verify", "register"]


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify a log; print the report (one line, or JSON) and return 0 (intact) or 1 (broken)."""
    try:
        rep = audit.verify(args.log, keyring=args.trusted_keys)
    except IotSentryError as e:
        print(f"iotsentry: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep.to_dict(), sort_keys=True))
    else:
        print(rep.summary(), file=sys.stdout if rep.ok else sys.stderr)
    return 0 if rep.ok else 1


def cmd_audit_show(args: argparse.Namespace) -> int:
    """Print the (last ``--tail``) records, one line each."""
    try:
        records = audit.tail_records(args.log, args.tail)
    except OSError as e:
        raise InputError(args.log, f"cannot read ({e.strerror or e})") from None
    for r in records:
        if args.json:
            print(json.dumps(r.to_json(), sort_keys=True))
            continue
        details = json.dumps(r.details, sort_keys=True, separators=(",", ":"))
        if len(details) > 200:
            details = details[:197] + "..."
        print(f"{r.seq:>6}  {r.timestamp}  {r.actor}  {r.action}  {r.subject}  {details}")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``audit`` subcommand (``verify``, ``show``) to the top-level ``subparsers``."""
    a = subparsers.add_parser("audit", help="the hash-chained audit log")
    sub = a.add_subparsers(dest="audit_command", required=True)
    v = sub.add_parser("verify", help="check the hash chain and signed checkpoints of LOG")
    v.add_argument("log", help="audit log (JSON lines)")
    v.add_argument("--trusted-keys", help="trust store directory, trusted_keys.json, or a .pub key")
    v.add_argument("--json", action="store_true", help="print the full report as JSON")
    v.set_defaults(func=cmd_audit_verify)
    s = sub.add_parser("show", help="print the records of LOG")
    s.add_argument("log", help="audit log (JSON lines)")
    s.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N records")
    s.add_argument("--json", action="store_true", help="one JSON record per line")
    s.set_defaults(func=cmd_audit_show)
