"""``iotsentry serve``: the command line of the always-on monitor.

``iotsentry serve --config F`` runs the monitor; ``iotsentry serve --check-config F`` only checks
the file (prints ``ok`` or the one-line error). Wire it with::

    from iotsentry.serve.cli import register as register_serve
    register_serve(subparsers)
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING, Any

from iotsentry.errors import IotSentryError
from iotsentry.serve.config import ServeConfig, load_config

if TYPE_CHECKING:
    from iotsentry.serve.metrics import Metrics

__all__ = ["cmd_serve", "main", "register", "start_api"]


def start_api(cfg: ServeConfig, metrics: Metrics | None) -> tuple[Any, threading.Thread]:
    """Serve the REST API (plus ``/metrics`` when ``metrics`` is given) with uvicorn in a thread.

    Returns
    -------
    tuple
        ``(server, thread)``; stop with ``server.should_exit = True`` and ``thread.join()``.
    """
    import uvicorn

    from iotsentry.api.app import create_app
    from iotsentry.serve.metrics import metrics_router

    audit = None
    if cfg.audit_path is not None:
        from iotsentry.integrity.audit import AuditLog

        # its own handle on the monitor's log (the file lock orders the two writers)
        audit = AuditLog(cfg.audit_path, actor="iotsentry-api")
    app = create_app(cfg.store, audit=audit.append if audit is not None else None)
    if metrics is not None:
        app.include_router(metrics_router(metrics))
    server = uvicorn.Server(
        uvicorn.Config(app, host=cfg.api.host, port=cfg.api.port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, name="iotsentry-serve-api", daemon=True)
    thread.start()
    return server, thread


def cmd_serve(args: argparse.Namespace) -> int:
    """Run (or only check) the monitor configured by ``--config`` / ``--check-config``."""
    from iotsentry.serve.monitor import JsonLog, build_monitor  # heavy: detectors, numba

    log = JsonLog()
    try:
        if args.check_config:
            cfg = load_config(args.check_config)
            cfg.resolved_state_dir()
            print(f"{args.check_config}: ok ({len(cfg.sources)} source(s), {len(cfg.sinks)} sink(s))")
            return 0
        cfg = load_config(args.config)
        monitor = build_monitor(cfg, log=log)
    except IotSentryError as e:
        print(f"iotsentry serve: {e}", file=sys.stderr)
        return 2
    api = None
    try:
        if cfg.api.enabled:
            api = start_api(cfg, monitor.metrics if cfg.metrics_enabled else None)
            log("info", "api.start", host=cfg.api.host, port=cfg.api.port, metrics=cfg.metrics_enabled)
        monitor.run()
    except IotSentryError as e:
        log("error", "serve.error", error=str(e))
        return 1
    finally:
        if api is not None:
            api[0].should_exit = True
            api[1].join(timeout=5.0)
        monitor.close()
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve", help="run the always-on monitor", description="Run the always-on monitor from a TOML file."
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE", help="the monitor's TOML configuration")
    g.add_argument("--check-config", metavar="FILE", help="only check FILE; print ok or the problem")
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m iotsentry.serve ...`` (until ``serve`` is wired into ``iotsentry``)."""
    ap = argparse.ArgumentParser(prog="iotsentry")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    rc: int = args.func(args)
    return rc
