"""The ``iotsentry serve`` configuration: one TOML file -> typed dataclasses.

Example::

    [store]
    target = "/var/lib/iotsentry/iotsentry.db"   # or "postgresql://user@host/db"

    [[source]]
    kind = "pcap-dir"             # pcap-dir | zeek-log | netflow | interface
    name = "lan"
    path = "/var/spool/tcpdump"   # files written by e.g. tcpdump -G 60 -w 'lan-%s.pcap'
    pattern = "*.pcap*"
    settle_s = 5.0                # the newest file counts as closed after this many quiet seconds

    [learning]
    seconds = 3600          # each device learns this long from its own first packet
    living = true           # then absorbs what persists unalerted (guarded, audited)

    [[sink]]
    uri = "syslog+udp://127.0.0.1:514"
    [[sink]]
    path = "/var/log/iotsentry/alerts.jsonl"     # a JSON-lines file

    [api]
    enabled = true
    host = "127.0.0.1"
    port = 8080

    [canary]
    interval_s = 3600

    [audit]
    path = "/var/lib/iotsentry/audit.jsonl"

    [model]                       # optional: flow model for zeek-log / netflow sources
    dir = "/var/lib/iotsentry/models/flows"
    keyring = "/etc/iotsentry/keys"

    [state]
    dir = "/var/lib/iotsentry/state"
    keyring = "/etc/iotsentry/keys"   # optional: the saved baseline must verify (default: [model] keyring)
    signing_key = "/etc/iotsentry/keys/monitor.key"   # optional (default: the keyring's active key file)

Relative paths are taken from the configuration file's folder. Any unknown section or key and
any bad value is a :class:`ConfigError` whose message is one line: ``FILE: KEY: PROBLEM``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotsentry.errors import IotSentryError

__all__ = [
    "SOURCE_KINDS",
    "ApiConfig",
    "ConfigError",
    "MonitorConfig",
    "ServeConfig",
    "SinkConfig",
    "SourceConfig",
    "load_config",
    "parse_config",
]

SOURCE_KINDS = ("pcap-dir", "zeek-log", "netflow", "interface")


class ConfigError(IotSentryError, ValueError):
    """A configuration file that cannot be used; the message is ``FILE: KEY: PROBLEM``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}")


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[source]]``: its kind, a unique name and the kind's options."""

    kind: str
    name: str
    path: Path | None = None
    pattern: str = "*.pcap*"
    settle_s: float = 5.0
    batch_size: int = 50_000
    host: str = "0.0.0.0"
    port: int = 2055
    interface: str = ""
    poll_s: float = 1.0


@dataclass(frozen=True)
class SinkConfig:
    """One ``[[sink]]``: a sink URI (``jsonl:``, ``syslog+udp://``, ``https://``, ``memory:``)."""

    uri: str


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the REST API (and ``/metrics``) served next to the monitor."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class MonitorConfig:
    """``[monitor]``: the loop's knobs."""

    queue_size: int = 8
    poll_timeout_s: float = 0.5
    inventory_interval_s: float = 10.0


@dataclass(frozen=True)
class ServeConfig:
    """The whole configuration (see the module docstring)."""

    file: Path
    store: str
    sources: list[SourceConfig]
    learning_seconds: float = 3600.0
    """Each device's learning period, from its own first packet."""
    living: bool = True
    """Absorb behaviour that persists without alerts after learning (guarded; operators' verdicts
    on incidents are applied either way)."""
    margin: float = 2.0
    site_id: str = "default"
    sinks: list[SinkConfig] = field(default_factory=list)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics_enabled: bool = True
    canary_interval_s: float = 0.0
    audit_path: Path | None = None
    model_dir: Path | None = None
    model_keyring: Path | None = None
    state_dir: Path | None = None
    state_keyring: Path | None = None
    """Trust store the saved baseline must verify against (``[state] keyring``)."""
    state_signing_key: Path | None = None
    """Private key that signs the saved baseline (``[state] signing_key``)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def resolved_state_dir(self) -> Path:
        """``[state] dir``, else ``serve-state`` next to a SQLite store.

        Raises
        ------
        ConfigError
            A PostgreSQL store without ``[state] dir``.
        """
        if self.state_dir is not None:
            return self.state_dir
        if self.store.startswith(("postgresql://", "postgres://")):
            raise ConfigError(str(self.file), "state.dir", "required with a PostgreSQL store")
        target = self.store.removeprefix("sqlite:///")
        return Path(target).parent / "serve-state"


# -- value checks --------------------------------------------------------------------------------
Check = Callable[[Any], Any]


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("expected a non-empty string")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _num(lo: float, lo_open: bool = False) -> Check:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError("expected a finite number")
        if v < lo or (lo_open and v == lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}")
        return float(v)

    return check


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("expected an integer")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v

    return check


_SECTIONS: dict[str, dict[str, Check]] = {
    "store": {"target": _str},
    "learning": {"seconds": _num(0.0, lo_open=True), "living": _bool, "margin": _num(1.0), "site_id": _str},
    "api": {"enabled": _bool, "host": _str, "port": _int(0, 65535)},
    "metrics": {"enabled": _bool},
    "canary": {"interval_s": _num(0.0)},
    "audit": {"path": _str},
    "model": {"dir": _str, "keyring": _str},
    "state": {"dir": _str, "keyring": _str, "signing_key": _str},
    "monitor": {
        "queue_size": _int(1, 1_000_000),
        "poll_timeout_s": _num(0.0, lo_open=True),
        "inventory_interval_s": _num(0.0),
    },
}
_SOURCE_KEYS: dict[str, dict[str, Check]] = {
    "pcap-dir": {"path": _str, "pattern": _str, "settle_s": _num(0.0), "batch_size": _int(1, 10_000_000)},
    "zeek-log": {"path": _str, "poll_s": _num(0.0, lo_open=True)},
    "netflow": {"host": _str, "port": _int(0, 65535)},
    "interface": {"interface": _str, "batch_size": _int(1, 10_000_000)},
}
_REQUIRED_SOURCE_KEYS = {"pcap-dir": ("path",), "zeek-log": ("path",), "interface": ("interface",)}


def _table(file: str, key: str, value: Any, allowed: Mapping[str, Check]) -> dict[str, Any]:
    """Check every key of one table; returns the converted values."""
    if not isinstance(value, dict):
        raise ConfigError(file, key, "expected a table")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k not in allowed:
            raise ConfigError(file, f"{key}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})")
        try:
            out[k] = allowed[k](v)
        except ValueError as e:
            raise ConfigError(file, f"{key}.{k}", f"{e} (got {v!r})") from None
    return out


def _path(base: Path, text: str | None) -> Path | None:
    if text is None:
        return None
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _store_target(base: Path, text: str) -> str:
    if "://" in text or text == ":memory:":
        return text
    return str(_path(base, text))


def parse_config(data: Mapping[str, Any], file: str | Path = "<config>") -> ServeConfig:
    """Build a :class:`ServeConfig` from parsed TOML (``file`` names it in errors and anchors
    relative paths).

    Raises
    ------
    ConfigError
        Unknown section or key, wrong type or value, missing required key.
    """
    fname = str(file)
    base = Path(file).resolve().parent if str(file) != "<config>" else Path.cwd()
    known = set(_SECTIONS) | {"source", "sink"}
    for k in data:
        if k not in known:
            raise ConfigError(fname, k, f"unknown section (known: {', '.join(sorted(known))})")
    sec = {name: _table(fname, name, data.get(name, {}), keys) for name, keys in _SECTIONS.items()}
    if "target" not in sec["store"]:
        raise ConfigError(fname, "store.target", "required (a database path or a postgresql:// DSN)")
    sources = _sources(fname, base, data.get("source", []))
    sinks = _sinks(fname, base, data.get("sink", []))
    model = sec["model"]
    if model and ("dir" not in model or "keyring" not in model):
        missing = "model.dir" if "dir" not in model else "model.keyring"
        raise ConfigError(fname, missing, "required when [model] is given (a signed model needs both)")
    api, mon, learn = sec["api"], sec["monitor"], sec["learning"]
    return ServeConfig(
        file=Path(file),
        store=_store_target(base, sec["store"]["target"]),
        sources=sources,
        learning_seconds=learn.get("seconds", 3600.0),
        living=learn.get("living", True),
        margin=learn.get("margin", 2.0),
        site_id=learn.get("site_id", "default"),
        sinks=sinks,
        api=ApiConfig(api.get("enabled", False), api.get("host", "127.0.0.1"), api.get("port", 8080)),
        metrics_enabled=sec["metrics"].get("enabled", True),
        canary_interval_s=sec["canary"].get("interval_s", 0.0),
        audit_path=_path(base, sec["audit"].get("path")),
        model_dir=_path(base, model.get("dir")),
        model_keyring=_path(base, model.get("keyring")),
        state_dir=_path(base, sec["state"].get("dir")),
        state_keyring=_path(base, sec["state"].get("keyring")),
        state_signing_key=_path(base, sec["state"].get("signing_key")),
        monitor=MonitorConfig(
            mon.get("queue_size", 8), mon.get("poll_timeout_s", 0.5), mon.get("inventory_interval_s", 10.0)
        ),
    )


def _sources(fname: str, base: Path, raw: Any) -> list[SourceConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(fname, "source", "at least one [[source]] table is required")
    out: list[SourceConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        key = f"source[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(fname, key, "expected a table")
        kind = entry.get("kind")
        if kind not in SOURCE_KINDS:
            kinds = ", ".join(SOURCE_KINDS)
            raise ConfigError(fname, f"{key}.kind", f"expected one of {kinds} (got {kind!r})")
        name = entry.get("name", f"{kind}-{i}")
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(fname, f"{key}.name", f"expected letters, digits, - or _ (got {name!r})")
        if name in names:
            raise ConfigError(fname, f"{key}.name", f"duplicate source name {name!r}")
        names.add(name)
        rest = {k: v for k, v in entry.items() if k not in ("kind", "name")}
        opts = _table(fname, key, rest, _SOURCE_KEYS[kind])
        for req in _REQUIRED_SOURCE_KEYS.get(kind, ()):
            if req not in opts:
                raise ConfigError(fname, f"{key}.{req}", f"required for kind {kind!r}")
        if "path" in opts:
            opts["path"] = _path(base, opts["path"])
        out.append(SourceConfig(kind=kind, name=name, **opts))
    return out


def _sinks(fname: str, base: Path, raw: Any) -> list[SinkConfig]:
    if not isinstance(raw, list):
        raise ConfigError(fname, "sink", "expected [[sink]] tables")
    out: list[SinkConfig] = []
    for i, entry in enumerate(raw):
        key = f"sink[{i}]"
        opts = _table(fname, key, entry, {"uri": _str, "path": _str})
        if ("uri" in opts) == ("path" in opts):
            raise ConfigError(fname, key, "give exactly one of uri or path")
        uri = opts.get("uri") or f"jsonl:{_path(base, opts['path'])}"
        try:
            from iotsentry.alerts.sinks import SinkURIError, sink_from_uri

            if not uri.startswith(("http:", "https:", "syslog", "jsonl:", "memory:")):
                sink_from_uri(uri)  # raises the sink module's own message for unknown schemes
        except SinkURIError as e:
            raise ConfigError(fname, f"{key}.uri", str(e)) from None
        out.append(SinkConfig(uri))
    return out


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a configuration file.

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, or any problem :func:`parse_config` finds.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(p), "-", f"cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), "-", f"not valid TOML ({e})") from None
    return parse_config(data, p)
