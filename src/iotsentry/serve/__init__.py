"""``iotsentry serve``: the always-on monitor.

A wiring layer like ``cli.py``: it may import every stage, including ``integrity/`` (model
verification, audit log, canaries, drift monitors) and ``api/`` (the REST API it serves next to
its ``/metrics``); no stage imports it.

Modules
-------
config
    The TOML configuration file -> typed dataclasses (one-line errors naming file and key).
sources
    The :class:`~iotsentry.serve.sources.Source` protocol, an in-memory fake, adapters for the
    capture readers and the pcap-directory fallback reader.
engine
    The streaming detection engine (learning phase, then per-batch detection).
monitor
    The loop: sources -> bounded queue -> engine -> store (first) -> sinks; state, canaries,
    drift, audit, signals, JSON logs.
metrics
    Prometheus text exposition at ``/metrics`` (token-protected, mounted on the API app).
cli
    ``register(subparsers)`` for ``iotsentry serve --config F`` / ``--check-config F``.
"""

from __future__ import annotations

from iotsentry.serve.config import ConfigError, ServeConfig, load_config

__all__ = ["ConfigError", "ServeConfig", "load_config"]
