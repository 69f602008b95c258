"""The ``iotsentry advise`` subcommand (wired in by ``register``).

::

    iotsentry advise INPUT... [--format nftables|json] [--out F]
                              [--learn-seconds S | --learn-fraction F]

Learns each device's baseline from the first part of the captures and writes an allow-list of
its learned conversations for every device whose baseline is mature (the others are listed as
excluded, with the reason) -- as an nftables ruleset (``nft -c -f F`` to check it) or JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["cmd_advise", "register"]


def cmd_advise(args: argparse.Namespace) -> int:
    """Write the allow-list; a one-line summary goes to stderr."""
    from iotsentry.baseline.allowlist import learn_allowlist, write_allowlist  # heavy: numba

    allow = learn_allowlist(args.inputs, learn_seconds=args.learn_seconds, learn_fraction=args.learn_fraction)
    text = write_allowlist(allow, args.format)
    if args.out and args.out != "-":
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    rules = sum(len(d.rules) for d in allow.devices)
    print(
        f"advise: {len(allow.devices)} device(s) with {rules} allowed conversation(s); "
        f"{len(allow.excluded)} excluded" + (f" -> {args.out}" if args.out and args.out != "-" else ""),
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``advise`` subcommand to the top-level ``subparsers``."""
    p = subparsers.add_parser("advise", help="segmentation advice: allow-lists from mature baselines")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="pcap/pcapng captures")
    p.add_argument("--format", choices=("nftables", "json"), default="nftables")
    p.add_argument("--out", help="output file (default: stdout)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--learn-seconds", type=float, default=None, help="learn from the first S seconds")
    g.add_argument("--learn-fraction", type=float, default=0.5, help="learn from this share of the span")
    p.set_defaults(func=cmd_advise)
