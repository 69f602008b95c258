"""The SQLite store: runs, the device inventory, baselines and alerts.

The database runs in WAL mode (readers never block the writer nor each other), with foreign
keys on and a busy timeout. Every public method that writes is one transaction committed before
it returns, so a crash loses nothing a call already reported as stored. Only parameterised
queries are used; JSON columns hold ``json.dumps`` text.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.errors import InputError
from iotsentry.schema import Alert, Device
from iotsentry.store.migrations import MIGRATIONS, Migration, migrate

_DEVICE_EXTRA_LISTS = ("dns_names", "ssdp", "user_agents", "tls_sni")


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays (and sets/paths) JSON-serialisable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj, key=str) if isinstance(obj, set | frozenset) else list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Items of both, first-seen order, without repeats."""
    return list(dict.fromkeys([*first, *second]))


def merge_devices(old: Device, new: Device) -> Device:
    """Merge a newly observed ``new`` into the stored ``old`` entry of the same device.

    Lists (names, IPs, DNS names, ...) are unioned; ``first_seen`` is the earliest and
    ``last_seen`` the latest non-zero time; packet and byte counters are added; MAC, vendor and
    device type take the new value when it has one (the type with its confidence); DHCP fields
    are merged with the new values winning; ``is_gateway`` stays true once seen.
    """
    seen_first = [t for t in (old.first_seen, new.first_seen) if t]
    seen_last = [t for t in (old.last_seen, new.last_seen) if t]
    typed = new if new.device_type else old
    return Device(
        device_id=old.device_id,
        mac=new.mac or old.mac,
        ips=_union(old.ips, new.ips),
        vendor=new.vendor or old.vendor,
        names=_union(old.names, new.names),
        dns_names=_union(old.dns_names, new.dns_names),
        dhcp={**old.dhcp, **new.dhcp},
        ssdp=_union(old.ssdp, new.ssdp),
        user_agents=_union(old.user_agents, new.user_agents),
        tls_sni=_union(old.tls_sni, new.tls_sni),
        device_type=typed.device_type,
        type_confidence=typed.type_confidence,
        is_gateway=old.is_gateway or new.is_gateway,
        is_local=new.is_local,
        first_seen=min(seen_first) if seen_first else 0.0,
        last_seen=max(seen_last) if seen_last else 0.0,
        packets=int(old.packets) + int(new.packets),
        bytes=int(old.bytes) + int(new.bytes),
    )


def _device_from_row(row: sqlite3.Row) -> Device:
    extra = json.loads(row["extra"])
    return Device(
        device_id=row["device_id"],
        mac=row["mac"],
        ips=json.loads(row["ips"]),
        vendor=row["vendor"],
        names=json.loads(row["names"]),
        dns_names=list(extra.get("dns_names", [])),
        dhcp=json.loads(row["dhcp"]),
        ssdp=list(extra.get("ssdp", [])),
        user_agents=list(extra.get("user_agents", [])),
        tls_sni=list(extra.get("tls_sni", [])),
        device_type=row["device_type"],
        type_confidence=float(extra.get("type_confidence", 0.0)),
        is_gateway=bool(row["is_gateway"]),
        is_local=bool(extra.get("is_local", True)),
        first_seen=float(row["first_seen"]),
        last_seen=float(row["last_seen"]),
        packets=int(row["packets"]),
        bytes=int(row["bytes"]),
    )


def _device_params(d: Device) -> dict[str, Any]:
    extra: dict[str, Any] = {k: list(getattr(d, k)) for k in _DEVICE_EXTRA_LISTS}
    extra["type_confidence"] = float(d.type_confidence)
    extra["is_local"] = bool(d.is_local)
    return {
        "device_id": d.device_id,
        "mac": d.mac,
        "vendor": d.vendor,
        "device_type": d.device_type,
        "names": _dumps(list(d.names)),
        "ips": _dumps(list(d.ips)),
        "dhcp": _dumps(d.dhcp),
        "first_seen": float(d.first_seen),
        "last_seen": float(d.last_seen),
        "packets": int(d.packets),
        "bytes": int(d.bytes),
        "is_gateway": int(bool(d.is_gateway)),
        "extra": _dumps(extra),
    }


@dataclass(slots=True)
class StoredAlert:
    """An alert row: the alert plus what the store tracks about it.

    ``count``/``first_ts``/``last_ts`` cover every repeat merged into the row (also mirrored in
    ``alert.extra``); ``acknowledged``/``assignee`` are set by :meth:`Store.acknowledge`.
    """

    id: int
    run_id: int | None
    alert: Alert
    count: int
    first_ts: float
    last_ts: float
    acknowledged: bool
    assignee: str | None

    def to_dict(self) -> dict[str, Any]:
        """The EVE record plus the store's fields (JSON-ready)."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "count": self.count,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "acknowledged": self.acknowledged,
            "assignee": self.assignee,
            "eve": self.alert.to_eve(),
        }


def _stored_alert(row: sqlite3.Row) -> StoredAlert:
    eve = json.loads(row["eve"])
    sub = eve.get("alert", {})
    signature = str(sub.get("signature", ""))
    extra = dict(eve.get("iotsentry", {}))
    extra.update(count=int(row["count"]), first_ts=float(row["first_ts"]), last_ts=float(row["last_ts"]))
    alert = Alert(
        timestamp=float(row["ts"]),
        flow_id=int(row["flow_id"]),
        src_ip=row["src_ip"],
        src_port=int(row["src_port"]),
        dest_ip=row["dest_ip"],
        dest_port=int(row["dest_port"]),
        proto=row["proto"],
        device_id=row["device_id"],
        site_id=row["site_id"],
        detector=row["detector"],
        detector_version=row["detector_version"],
        score=float(row["score"]),
        threshold=float(row["threshold"]),
        severity=int(row["severity"]),
        category=row["category"],
        reason=row["reason"],
        signature="" if signature == row["category"] else signature,
        event_type=str(eve.get("event_type", "alert")),
        extra=extra,
    )
    return StoredAlert(
        id=int(row["id"]),
        run_id=row["run_id"],
        alert=alert,
        count=int(row["count"]),
        first_ts=float(row["first_ts"]),
        last_ts=float(row["last_ts"]),
        acknowledged=bool(row["acknowledged"]),
        assignee=row["assignee"],
    )


class Store:
    """The iotsentry SQLite database.

    Parameters
    ----------
    path
        A database file (created with its parent folders when missing) or ``":memory:"``.
    busy_timeout_s
        How long a write waits for another connection's write lock before failing.
    migrations
        The schema steps to bring the database to (tests pass longer lists).

    Raises
    ------
    InputError
        When ``path`` is not a SQLite database.
    SchemaTooNew
        When the database was written by a newer iotsentry.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        busy_timeout_s: float = 5.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self.journal_mode = str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            self._conn.execute("PRAGMA synchronous = FULL")
            self.version = migrate(self._conn, migrations)
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise InputError(self.path, f"cannot use as an iotsentry store: {err}") from err
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, command: str, inputs: Any = None) -> int:
        """Record the start of a run and return its id; ``inputs`` is stored as JSON."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO runs (started, command, inputs, status) VALUES (?, ?, ?, 'running')",
                (time.time(), command, _dumps([] if inputs is None else inputs)),
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str = "ok", stats: Mapping[str, Any] | None = None) -> None:
        """Record the end of a run with its status and statistics.

        Raises
        ------
        KeyError
            When there is no run ``run_id``.
        """
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET finished = ?, status = ?, stats = ? WHERE id = ?",
                (time.time(), status, _dumps(dict(stats or {})), int(run_id)),
            )
            if cur.rowcount != 1:
                raise KeyError(f"no run {run_id}")

    def get_runs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent runs first, as dictionaries with decoded JSON."""
        rows = self._query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (int(limit),))
        return [{**dict(r), "inputs": json.loads(r["inputs"]), "stats": json.loads(r["stats"])} for r in rows]

    # -- devices -------------------------------------------------------------------------------

    def upsert_devices(self, devices: Iterable[Device]) -> int:
        """Merge observed devices into the inventory (see :func:`merge_devices`).

        Counters are *added*, so pass each observation once (e.g. the inventory of one run).
        Returns the number of devices written.
        """
        merged: dict[str, Device] = {}
        with self._tx() as c:
            for dev in devices:
                old = merged.get(dev.device_id)
                if old is None:
                    row = c.execute("SELECT * FROM devices WHERE device_id = ?", (dev.device_id,)).fetchone()
                    old = _device_from_row(row) if row is not None else None
                merged[dev.device_id] = merge_devices(old, dev) if old is not None else dev
            for dev in merged.values():
                p = _device_params(dev)
                c.execute(
                    "INSERT INTO devices (device_id, mac, vendor, device_type, names, ips, dhcp, first_seen,"
                    " last_seen, packets, bytes, is_gateway, extra) VALUES (:device_id, :mac, :vendor,"
                    " :device_type, :names, :ips, :dhcp, :first_seen, :last_seen, :packets, :bytes,"
                    " :is_gateway, :extra) ON CONFLICT (device_id) DO UPDATE SET mac = excluded.mac,"
                    " vendor = excluded.vendor, device_type = excluded.device_type, names = excluded.names,"
                    " ips = excluded.ips, dhcp = excluded.dhcp, first_seen = excluded.first_seen,"
                    " last_seen = excluded.last_seen, packets = excluded.packets, bytes = excluded.bytes,"
                    " is_gateway = excluded.is_gateway, extra = excluded.extra",
                    p,
                )
        return len(merged)

    def get_devices(self) -> list[Device]:
        """Every device of the inventory, ordered by id."""
        return [_device_from_row(r) for r in self._query("SELECT * FROM devices ORDER BY device_id")]

    def get_device(self, device_id: str) -> Device | None:
        """One device, or ``None``."""
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return _device_from_row(rows[0]) if rows else None

    # -- baselines -----------------------------------------------------------------------------

    def save_baseline(
        self, device_id: str, run_id: int | None, profile: Mapping[str, Any], maturity: float, mature: bool
    ) -> None:
        """Store a device's profile for a run (replacing one saved earlier in the same run)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO baselines (device_id, run_id, profile, maturity, mature, updated)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, run_id) DO UPDATE SET"
                " profile = excluded.profile, maturity = excluded.maturity, mature = excluded.mature,"
                " updated = excluded.updated",
                (device_id, run_id, _dumps(dict(profile)), float(maturity), int(bool(mature)), time.time()),
            )

    def latest_baselines(self) -> dict[str, dict[str, Any]]:
        """The most recently saved baseline of every device.

        Returns
        -------
        dict
            ``device_id -> {"run_id", "profile", "maturity", "mature", "updated"}``.
        """
        rows = self._query(
            "SELECT device_id, run_id, profile, maturity, mature, updated FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY updated DESC, rowid DESC) AS rn"
            " FROM baselines) WHERE rn = 1 ORDER BY device_id"
        )
        return {
            r["device_id"]: {
                "run_id": r["run_id"],
                "profile": json.loads(r["profile"]),
                "maturity": float(r["maturity"]),
                "mature": bool(r["mature"]),
                "updated": float(r["updated"]),
            }
            for r in rows
        }

    # -- alerts --------------------------------------------------------------------------------

    def add_alerts(self, run_id: int | None, alerts: Iterable[Alert]) -> int:
        """Store alerts in one transaction, merging repeats; returns how many new rows were made.

        An alert whose de-duplication key (``extra["dedup_key"]``, else device, detector,
        category, destination IP and port) is already stored adds its ``extra["count"]`` (1 when
        absent) to the row's count and widens ``first_ts``/``last_ts``; if it is more severe, its
        score, threshold, severity, reason and EVE record replace the stored ones; if it is newer
        than the row's last activity, an acknowledged row is re-opened. Adding is not idempotent:
        store each kept alert once (e.g. ``AlertPolicy.alerts()`` at the end of a run).
        """
        new_rows = 0
        with self._tx() as c:
            for a in alerts:
                key = alert_dedup_key(a)
                count = int(a.extra.get("count", 1)) if a.extra else 1
                first = float(a.extra.get("first_ts", a.timestamp)) if a.extra else float(a.timestamp)
                last = float(a.extra.get("last_ts", a.timestamp)) if a.extra else float(a.timestamp)
                eve = _dumps(a.to_eve())
                row = c.execute(
                    "SELECT id, severity, last_ts FROM alerts WHERE dedup_key = ?", (key,)
                ).fetchone()
                if row is None:
                    c.execute(
                        "INSERT INTO alerts (run_id, ts, device_id, site_id, detector, detector_version,"
                        " category, severity, score, threshold, src_ip, src_port, dest_ip, dest_port, proto,"
                        " flow_id, reason, eve, dedup_key, count, first_ts, last_ts)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run_id, float(a.timestamp), a.device_id, a.site_id, a.detector,
                            a.detector_version, a.category, int(a.severity), float(a.score),
                            float(a.threshold), a.src_ip, int(a.src_port), a.dest_ip, int(a.dest_port),
                            a.proto, int(a.flow_id), a.reason, eve, key, count,
                            min(first, float(a.timestamp)), max(last, float(a.timestamp)),
                        ),
                    )  # fmt: skip
                    new_rows += 1
                    continue
                c.execute(
                    "UPDATE alerts SET count = count + ?, first_ts = MIN(first_ts, ?),"
                    " last_ts = MAX(last_ts, ?),"
                    " acknowledged = CASE WHEN ? > last_ts THEN 0 ELSE acknowledged END WHERE id = ?",
                    (count, first, last, last, row["id"]),
                )
                if int(a.severity) < int(row["severity"]):
                    c.execute(
                        "UPDATE alerts SET severity = ?, score = ?, threshold = ?, reason = ?, eve = ?,"
                        " run_id = COALESCE(?, run_id) WHERE id = ?",
                        (int(a.severity), float(a.score), float(a.threshold), a.reason, eve, run_id, row[0]),
                    )
        return new_rows

    def get_alerts(
        self,
        device_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        offset: int = 0,
        *,
        unacknowledged: bool = False,
    ) -> list[StoredAlert]:
        """Alerts, most recently active first.

        Parameters
        ----------
        device_id
            Only this device's alerts.
        since
            Only alerts active at or after this time (``last_ts >= since``).
        limit, offset
            Paging.
        unacknowledged
            Only alerts nobody acknowledged.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where: list[str] = []
        params: list[Any] = []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if since is not None:
            where.append("last_ts >= ?")
            params.append(float(since))
        if unacknowledged:
            where.append("acknowledged = 0")
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_ts DESC, id DESC LIMIT ? OFFSET ?"
        params += [int(limit), int(offset)]
        return [_stored_alert(r) for r in self._query(sql, params)]

    def acknowledge(self, alert_id: int, who: str) -> bool:
        """Mark an alert acknowledged by ``who``; returns whether the alert exists."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE alerts SET acknowledged = 1, assignee = ? WHERE id = ?", (who, int(alert_id))
            )
            return cur.rowcount == 1
