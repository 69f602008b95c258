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
from iotsentry.store.records import (
    TOKEN_SCOPES,
    AlertAction,
    AlertQuery,
    ApiToken,
    DeviceQuery,
    DeviceSummary,
)

_DEVICE_EXTRA_LISTS = ("dns_names", "ssdp", "user_agents", "tls_sni")
_AUDIT_COLUMNS = ("acknowledged_by", "acknowledged_at", "assigned_by", "assigned_at")


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
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    assigned_by: str | None = None
    assigned_at: float | None = None

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
        **{k: row[k] for k in _AUDIT_COLUMNS if k in row.keys()},  # noqa: SIM118 (sqlite3.Row)
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

    # -- REST API: queries with filters, totals and paging -----------------------------------------
    #
    # Backend-neutral SQL only (CTEs, window functions, LIKE ... ESCAPE, IN lists of placeholders),
    # so a PostgreSQL backend can run the same statements after placeholder translation.

    def ping(self) -> int:
        """Check the database answers; return the schema version recorded in it."""
        with self._lock:
            self._conn.execute("SELECT 1").fetchone()
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def query_alerts(
        self,
        query: AlertQuery | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        after: tuple[float, int] | None = None,
    ) -> tuple[list[StoredAlert], int]:
        """Alerts matching ``query``, most recently active first, and how many match in total.

        Parameters
        ----------
        query
            The filters (``None``: every alert).
        limit, offset
            Paging; ``offset`` counts from the start or from ``after``.
        after
            Keyset cursor ``(last_ts, id)`` of the last alert of the previous page: only alerts
            ordered after it are returned. The total ignores the cursor and the offset.

        Returns
        -------
        tuple
            ``(alerts, total)``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where, params = _alert_where(query or AlertQuery())
        cond = " WHERE " + " AND ".join(where) if where else ""
        total = int(self._query(f"SELECT COUNT(*) AS n FROM alerts{cond}", params)[0]["n"])
        page_where, page_params = list(where), list(params)
        if after is not None:
            page_where.append("(last_ts < ? OR (last_ts = ? AND id < ?))")
            page_params += [float(after[0]), float(after[0]), int(after[1])]
        cond = " WHERE " + " AND ".join(page_where) if page_where else ""
        rows = self._query(
            f"SELECT * FROM alerts{cond} ORDER BY last_ts DESC, id DESC LIMIT ? OFFSET ?",
            [*page_params, int(limit), int(offset)],
        )
        return [_stored_alert(r) for r in rows], total

    def get_alert(self, alert_id: int) -> StoredAlert | None:
        """One alert by id, or ``None``."""
        rows = self._query("SELECT * FROM alerts WHERE id = ?", (int(alert_id),))
        return _stored_alert(rows[0]) if rows else None

    def alert_summary(self, query: AlertQuery | None = None) -> dict[str, Any]:
        """Counts of matching alerts: total, open, by severity, by category and by device."""
        where, params = _alert_where(query or AlertQuery())
        cond = " WHERE " + " AND ".join(where) if where else ""
        head = self._query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN acknowledged = 0 THEN 1 ELSE 0 END), 0) AS open_n"
            f" FROM alerts{cond}",
            params,
        )[0]
        out: dict[str, Any] = {"total": int(head["n"]), "open": int(head["open_n"])}
        groups = (("by_severity", "severity"), ("by_category", "category"), ("by_device", "device_id"))
        for key, column in groups:
            rows = self._query(
                f"SELECT {column} AS k, COUNT(*) AS n,"
                " SUM(CASE WHEN acknowledged = 0 THEN 1 ELSE 0 END) AS open_n"
                f" FROM alerts{cond} GROUP BY {column} ORDER BY {column}",
                params,
            )
            out[key] = [{"key": r["k"], "total": int(r["n"]), "open": int(r["open_n"])} for r in rows]
        return out

    def set_alert_acknowledged(
        self,
        alert_id: int,
        actor: str,
        *,
        acknowledged: bool = True,
        note: str | None = None,
        actor_token_id: int | None = None,
        at: float | None = None,
    ) -> StoredAlert | None:
        """Acknowledge (or re-open) an alert, recording who did it and when in its audit trail.

        Unlike :meth:`acknowledge`, the assignee is left alone. Returns the updated alert, or
        ``None`` when there is no alert ``alert_id``.
        """
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            if acknowledged:
                cur = c.execute(
                    "UPDATE alerts SET acknowledged = 1, acknowledged_by = ?, acknowledged_at = ?"
                    " WHERE id = ?",
                    (actor, when, int(alert_id)),
                )
            else:
                cur = c.execute("UPDATE alerts SET acknowledged = 0 WHERE id = ?", (int(alert_id),))
            if cur.rowcount != 1:
                return None
            self._record_action(
                c, alert_id, "acknowledge" if acknowledged else "unacknowledge", actor, actor_token_id, when,
                None, note,
            )  # fmt: skip
            row = c.execute("SELECT * FROM alerts WHERE id = ?", (int(alert_id),)).fetchone()
        return _stored_alert(row)

    def assign_alert(
        self,
        alert_id: int,
        assignee: str | None,
        actor: str,
        *,
        note: str | None = None,
        actor_token_id: int | None = None,
        at: float | None = None,
    ) -> StoredAlert | None:
        """Assign an alert to ``assignee`` (``None``: unassign), recording who did it and when.

        Returns the updated alert, or ``None`` when there is no alert ``alert_id``.
        """
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE alerts SET assignee = ?, assigned_by = ?, assigned_at = ? WHERE id = ?",
                (assignee, actor, when, int(alert_id)),
            )
            if cur.rowcount != 1:
                return None
            action = "assign" if assignee is not None else "unassign"
            self._record_action(c, alert_id, action, actor, actor_token_id, when, assignee, note)
            row = c.execute("SELECT * FROM alerts WHERE id = ?", (int(alert_id),)).fetchone()
        return _stored_alert(row)

    @staticmethod
    def _record_action(
        c: sqlite3.Connection,
        alert_id: int,
        action: str,
        actor: str,
        actor_token_id: int | None,
        at: float,
        value: str | None,
        note: str | None,
    ) -> None:
        c.execute(
            "INSERT INTO alert_actions (alert_id, action, actor, actor_token_id, at, value, note)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (int(alert_id), action, actor, actor_token_id, at, value, note),
        )

    def alert_actions(self, alert_id: int) -> list[AlertAction]:
        """The audit trail of an alert, oldest first."""
        rows = self._query("SELECT * FROM alert_actions WHERE alert_id = ? ORDER BY at, id", (int(alert_id),))
        return [
            AlertAction(
                id=int(r["id"]),
                alert_id=int(r["alert_id"]),
                action=r["action"],
                actor=r["actor"],
                actor_token_id=r["actor_token_id"],
                at=float(r["at"]),
                value=r["value"],
                note=r["note"],
            )
            for r in rows
        ]

    _LATEST_BASELINE = (
        "WITH lb AS (SELECT device_id, run_id, maturity, mature, updated FROM ("
        " SELECT device_id, run_id, maturity, mature, updated, ROW_NUMBER() OVER ("
        "  PARTITION BY device_id ORDER BY updated DESC, COALESCE(run_id, 0) DESC) AS rn"
        " FROM baselines) ranked WHERE rn = 1)"
    )

    def query_devices(
        self, query: DeviceQuery | None = None, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[DeviceSummary], int]:
        """Devices matching ``query`` ordered by id with their maturity and alert counts, and the total."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        q = query or DeviceQuery()
        where: list[str] = []
        params: list[Any] = []
        if q.vendor:
            where.append("LOWER(COALESCE(d.vendor, '')) LIKE ? ESCAPE '\\'")
            params.append(_like(q.vendor))
        if q.device_type:
            where.append("LOWER(COALESCE(d.device_type, '')) = ?")
            params.append(q.device_type.lower())
        if q.mature is not None:
            where.append("COALESCE(lb.mature, 0) = ?")
            params.append(int(q.mature))
        if q.min_maturity is not None:
            where.append("lb.maturity >= ?")
            params.append(float(q.min_maturity))
        if q.max_maturity is not None:
            where.append("lb.maturity <= ?")
            params.append(float(q.max_maturity))
        if q.is_gateway is not None:
            where.append("d.is_gateway = ?")
            params.append(int(q.is_gateway))
        if q.search:
            cols = ("d.device_id", "d.mac", "d.vendor", "d.names", "d.ips")
            like = " OR ".join(f"LOWER(COALESCE({c}, '')) LIKE ? ESCAPE '\\'" for c in cols)
            where.append(f"({like})")
            params += [_like(q.search)] * len(cols)
        cond = " WHERE " + " AND ".join(where) if where else ""
        base = f" FROM devices d LEFT JOIN lb ON lb.device_id = d.device_id{cond}"
        total = int(self._query(f"{self._LATEST_BASELINE} SELECT COUNT(*) AS n{base}", params)[0]["n"])
        rows = self._query(
            f"{self._LATEST_BASELINE} {_DEVICE_SUMMARY_COLUMNS}{base} ORDER BY d.device_id LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [_device_summary(r) for r in rows], total

    def get_device_summary(self, device_id: str) -> DeviceSummary | None:
        """One device with its maturity and alert counts, or ``None``."""
        rows = self._query(
            f"{self._LATEST_BASELINE} {_DEVICE_SUMMARY_COLUMNS}"
            " FROM devices d LEFT JOIN lb ON lb.device_id = d.device_id WHERE d.device_id = ?",
            (device_id,),
        )
        return _device_summary(rows[0]) if rows else None

    def query_latest_baselines(
        self,
        *,
        mature: bool | None = None,
        include_profile: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """The latest baseline of every device (ordered by device id) and the total.

        Each item is ``{"device_id", "run_id", "maturity", "mature", "updated", "profile"}``
        (``profile`` is ``None`` unless ``include_profile``).
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        cond, params = "", []
        if mature is not None:
            cond, params = " WHERE mature = ?", [int(mature)]
        ranked = (
            "SELECT * FROM (SELECT b.*, ROW_NUMBER() OVER (PARTITION BY device_id"
            " ORDER BY updated DESC, COALESCE(run_id, 0) DESC) AS rn FROM baselines b) ranked WHERE rn = 1"
        )
        total = int(self._query(f"SELECT COUNT(*) AS n FROM ({ranked}) latest{cond}", params)[0]["n"])
        rows = self._query(
            f"SELECT * FROM ({ranked}) latest{cond} ORDER BY device_id LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [_baseline_dict(r, include_profile) for r in rows], total

    def baseline_history(
        self, device_id: str, *, include_profile: bool = True, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Every saved baseline of one device, newest first, and the total.

        Items are shaped as in :meth:`query_latest_baselines`.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        total = int(
            self._query("SELECT COUNT(*) AS n FROM baselines WHERE device_id = ?", (device_id,))[0]["n"]
        )
        rows = self._query(
            "SELECT * FROM baselines WHERE device_id = ? ORDER BY updated DESC, COALESCE(run_id, 0) DESC"
            " LIMIT ? OFFSET ?",
            (device_id, int(limit), int(offset)),
        )
        return [_baseline_dict(r, include_profile) for r in rows], total

    def query_runs(
        self, *, status: str | None = None, command: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Runs, most recent first (like :meth:`get_runs`), with filters, paging and the total."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if command is not None:
            where.append("command = ?")
            params.append(command)
        cond = " WHERE " + " AND ".join(where) if where else ""
        total = int(self._query(f"SELECT COUNT(*) AS n FROM runs{cond}", params)[0]["n"])
        rows = self._query(
            f"SELECT * FROM runs{cond} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, int(limit), int(offset)]
        )
        return [_run_dict(r) for r in rows], total

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One run (decoded like :meth:`get_runs`), or ``None``."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        return _run_dict(rows[0]) if rows else None

    # -- REST API: tokens ------------------------------------------------------------------------

    def create_api_token(
        self,
        name: str,
        scope: str,
        token_hash: str,
        *,
        expires_at: float | None = None,
        at: float | None = None,
    ) -> ApiToken:
        """Store a new token (its hash only).

        Raises
        ------
        ValueError
            Unknown scope, empty name, or a non-revoked token with the same name exists.
        """
        if scope not in TOKEN_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(TOKEN_SCOPES)}")
        if not name or not name.strip():
            raise ValueError("token name must not be empty")
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            clash = c.execute(
                "SELECT id FROM api_tokens WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if clash is not None:
                raise ValueError(f"a token named {name!r} exists (revoke it first)")
            cur = c.execute(
                "INSERT INTO api_tokens (name, token_hash, scope, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, token_hash, scope, when, expires_at),
            )
            token_id = int(cur.lastrowid or 0)
        return ApiToken(token_id, name, scope, token_hash, when, expires_at)

    def get_api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The token with this hash (revoked and expired ones too), or ``None``."""
        rows = self._query("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return _api_token(rows[0]) if rows else None

    def list_api_tokens(self, *, include_revoked: bool = True) -> list[ApiToken]:
        """Every token, oldest first."""
        cond = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [_api_token(r) for r in self._query(f"SELECT * FROM api_tokens{cond} ORDER BY id")]

    def revoke_api_token(self, token_id: int, *, at: float | None = None) -> bool:
        """Revoke a token (idempotent); returns whether the token exists."""
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            c.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (when, int(token_id)),
            )
            return c.execute("SELECT 1 FROM api_tokens WHERE id = ?", (int(token_id),)).fetchone() is not None

    def touch_api_token(self, token_id: int, at: float | None = None) -> None:
        """Record that a token was used at ``at`` (default now)."""
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            c.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (when, int(token_id)))


_DEVICE_SUMMARY_COLUMNS = (
    "SELECT d.*, lb.maturity AS lb_maturity, lb.mature AS lb_mature, lb.run_id AS lb_run_id,"
    " lb.updated AS lb_updated,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.device_id = d.device_id) AS n_alerts,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.device_id = d.device_id AND a.acknowledged = 0) AS n_open"
)


def _device_summary(r: sqlite3.Row) -> DeviceSummary:
    return DeviceSummary(
        device=_device_from_row(r),
        maturity=None if r["lb_maturity"] is None else float(r["lb_maturity"]),
        mature=bool(r["lb_mature"]),
        baseline_run_id=r["lb_run_id"],
        baseline_updated=None if r["lb_updated"] is None else float(r["lb_updated"]),
        open_alerts=int(r["n_open"]),
        alerts=int(r["n_alerts"]),
    )


def _like(text: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``text`` as a lower-case substring."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _alert_where(q: AlertQuery) -> tuple[list[str], list[Any]]:
    """WHERE conditions and parameters for an :class:`AlertQuery`."""
    where: list[str] = []
    params: list[Any] = []
    if q.device_id is not None:
        where.append("device_id = ?")
        params.append(q.device_id)
    for column, values in (("severity", q.severities), ("category", q.categories), ("detector", q.detectors)):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    if q.since is not None:
        where.append("last_ts >= ?")
        params.append(float(q.since))
    if q.until is not None:
        where.append("first_ts <= ?")
        params.append(float(q.until))
    if q.acknowledged is not None:
        where.append("acknowledged = ?")
        params.append(int(q.acknowledged))
    if q.assigned is not None:
        where.append("assignee IS NOT NULL" if q.assigned else "assignee IS NULL")
    if q.assignee is not None:
        where.append("assignee = ?")
        params.append(q.assignee)
    if q.run_id is not None:
        where.append("run_id = ?")
        params.append(int(q.run_id))
    return where, params


def _baseline_dict(r: sqlite3.Row, include_profile: bool) -> dict[str, Any]:
    return {
        "device_id": r["device_id"],
        "run_id": r["run_id"],
        "maturity": float(r["maturity"]),
        "mature": bool(r["mature"]),
        "updated": float(r["updated"]),
        "profile": json.loads(r["profile"]) if include_profile else None,
    }


def _run_dict(r: sqlite3.Row) -> dict[str, Any]:
    return {**dict(r), "inputs": json.loads(r["inputs"]), "stats": json.loads(r["stats"])}


def _api_token(r: sqlite3.Row) -> ApiToken:
    return ApiToken(
        id=int(r["id"]),
        name=r["name"],
        scope=r["scope"],
        token_hash=r["token_hash"],
        created_at=float(r["created_at"]),
        expires_at=r["expires_at"],
        revoked_at=r["revoked_at"],
        last_used_at=r["last_used_at"],
    )
