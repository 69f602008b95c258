"""The ``iotsentry token`` and ``iotsentry api`` subcommands (wired in by :func:`register`).

::

    iotsentry token create --name N --scope read|admin [--expires-in 30d] [--store F]
                                        prints the new token once on stdout (the store keeps a hash)
    iotsentry token list [--store F] [--json]
    iotsentry token revoke NAME_OR_ID [--store F]
    iotsentry api --store F [--host 127.0.0.1] [--port 8080] [--model-dir D ...] [--keyring D]
                                        serves the API and the web dashboard (/ui/; prints its URL)

Also runnable alone: ``python -m iotsentry.api.api_cli token list --store F``. User errors are
raised as :class:`~iotsentry.errors.IotSentryError` (``iotsentry.cli.main`` prints them as one
line and exits 2; :func:`main` here does the same). FastAPI and uvicorn are imported only by
``iotsentry api``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotsentry.errors import InputError, IotSentryError

__all__ = [
    "DEFAULT_STORE",
    "cmd_api",
    "cmd_token_create",
    "cmd_token_list",
    "cmd_token_revoke",
    "main",
    "register",
]

DEFAULT_STORE = str(Path("iotsentry-out") / "iotsentry.db")
"""The store ``iotsentry analyze`` writes by default."""


def _open_store(path: str, *, must_exist: bool) -> Any:
    from iotsentry.store import open_store, sqlite_path

    local = sqlite_path(path)  # None for a postgresql:// DSN (the server reports what is wrong)
    if must_exist and local is not None and not Path(local).is_file():
        raise InputError(path, "no such store (run `iotsentry analyze` first, or pass --store)")
    return open_store(path)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_token_create(args: argparse.Namespace) -> int:
    """Create a token and print it once."""
    from iotsentry.api.tokens import create_token, parse_duration

    try:
        expires = parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as e:
        raise IotSentryError(f"--expires-in: {e}") from None
    from iotsentry.store import sqlite_path

    local = sqlite_path(args.store)
    if local is not None and not Path(local).exists():
        print(f"creating new store {args.store}", file=sys.stderr)
    with _open_store(args.store, must_exist=False) as store:
        try:
            secret, rec = create_token(store, args.name, args.scope, expires_in_s=expires)
        except ValueError as e:
            raise IotSentryError(f"token create: {e}") from None
    until = f", expires {_when(rec.expires_at)}" if rec.expires_at else ""
    print(
        f"created token {rec.id} {rec.name!r} (scope {rec.scope}{until}); it is shown only now:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """List the tokens (never their secrets)."""
    with _open_store(args.store, must_exist=True) as store:
        tokens = store.list_api_tokens()
    now = time.time()
    if args.json:
        print(json.dumps([{**t.to_dict(), "valid": t.is_valid(now)} for t in tokens], indent=2))
        return 0
    if not tokens:
        print("no API tokens (create one with `iotsentry token create --name N --scope read`)")
        return 0
    print(f"{'id':>4}  {'name':<24} {'scope':<6} {'created':<20} {'expires':<20} {'last used':<20} state")
    for t in tokens:
        state = "revoked" if t.revoked_at else ("expired" if not t.is_valid(now) else "active")
        print(
            f"{t.id:>4}  {t.name[:24]:<24} {t.scope:<6} {_when(t.created_at):<20} {_when(t.expires_at):<20}"
            f" {_when(t.last_used_at):<20} {state}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by id or by the name of an active token."""
    with _open_store(args.store, must_exist=True) as store:
        tokens = store.list_api_tokens()
        ref = str(args.token)
        match = [t for t in tokens if t.name == ref and t.revoked_at is None]
        if not match and ref.isdigit():
            match = [t for t in tokens if t.id == int(ref)]
        if not match:
            raise IotSentryError(f"token revoke: no active token named {ref!r} and no token with that id")
        store.revoke_api_token(match[0].id)
    print(f"revoked token {match[0].id} {match[0].name!r}")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dashboard_url(args: argparse.Namespace) -> str:
    """The URL of the web dashboard served by ``iotsentry api``."""
    scheme = "https" if args.ssl_certfile else "http"
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else ("[::1]" if args.host == "::" else args.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{args.port}/ui/"


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the REST API with uvicorn until interrupted."""
    try:
        import uvicorn

        from iotsentry.api.app import create_app
    except ImportError as e:
        raise IotSentryError(f"the API needs fastapi and uvicorn ({e})") from None
    store = _open_store(args.store, must_exist=True)
    try:
        now = time.time()
        if not any(t.is_valid(now) for t in store.list_api_tokens()):
            print(
                "warning: the store has no valid API token; every request will get 401 "
                "(create one with `iotsentry token create --name N --scope read`)",
                file=sys.stderr,
            )
        if not _is_loopback(args.host):
            print(
                f"warning: serving on {args.host} without TLS; bearer tokens cross the network in clear "
                "(put a TLS reverse proxy in front, or use --ssl-certfile/--ssl-keyfile)",
                file=sys.stderr,
            )
        audit = None
        if args.audit_log:
            from iotsentry.integrity.audit import AuditLog  # CLI wiring (the API itself takes a hook)

            audit = AuditLog(args.audit_log, actor="iotsentry-api")
        app = create_app(
            store,
            model_dirs=args.model_dir or [],
            trusted_keys=args.keyring,
            audit=audit.append if audit is not None else None,
        )
        print(f"dashboard: {_dashboard_url(args)} (log in by pasting an API token)", flush=True)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            server_header=False,
            proxy_headers=False,
        )
    finally:
        store.close()
    return 0


def register(subparsers: Any) -> None:
    """Add ``token`` and ``api`` to the ``iotsentry`` subcommands (an ``add_subparsers`` object)."""
    tk = subparsers.add_parser("token", help="API tokens: create, list, revoke")
    tk_sub = tk.add_subparsers(dest="token_command", required=True)

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            default=DEFAULT_STORE,
            help=f"SQLite file or postgresql:// DSN (default {DEFAULT_STORE})",
        )

    c = tk_sub.add_parser("create", help="create a token and print it once")
    c.add_argument("--name", required=True, help="who uses it (recorded on acknowledgements/assignments)")
    c.add_argument("--scope", required=True, choices=("read", "admin"), help="admin may also ack/assign")
    c.add_argument("--expires-in", help="lifetime, e.g. 3600, 12h, 30d, 2w (default: no expiry)")
    store_arg(c)
    c.set_defaults(func=cmd_token_create)

    ls = tk_sub.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("--json", action="store_true")
    store_arg(ls)
    ls.set_defaults(func=cmd_token_list)

    rv = tk_sub.add_parser("revoke", help="revoke a token by name or id")
    rv.add_argument("token", help="name of an active token, or a token id")
    store_arg(rv)
    rv.set_defaults(func=cmd_token_revoke)

    api = subparsers.add_parser("api", help="serve the REST API and the web dashboard at /ui/ (uvicorn)")
    store_arg(api)
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--model-dir", action="append", help="model directory or folder of them (repeatable)")
    api.add_argument("--keyring", help="key directory with trusted_keys.json for model signatures")
    api.add_argument(
        "--audit-log", help="hash-chained audit log that records acknowledgements and assignments"
    )
    api.add_argument("--ssl-certfile")
    api.add_argument("--ssl-keyfile")
    api.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    api.set_defaults(func=cmd_api)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``token ...`` or ``api ...`` alone (without the rest of the ``iotsentry`` command)."""
    parser = argparse.ArgumentParser(prog="iotsentry-api", description="iotsentry REST API and its tokens")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except IotSentryError as e:
        print(f"iotsentry: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
