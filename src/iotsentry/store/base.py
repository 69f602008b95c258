"""The store's operations, written once for every backend.

:class:`StoreBase` holds every public method of the store (runs, the device inventory,
baselines, alerts, the REST API's queries and tokens). Its SQL is written in SQLite's spelling
and passed through the backend's :class:`~iotsentry.store.dialect.Dialect`; a backend
(:class:`~iotsentry.store.sqlite.Store`, :class:`~iotsentry.store.postgres.PostgresStore`)
supplies only the plumbing: a write transaction, a read, the schema version and ``close``.

Every public method that writes is one transaction committed before it returns. Only
parameterised queries are used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

from iotsentry.alerts.incidents import Incident
from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.schema import Alert, Device
from iotsentry.store.dialect import SQLITE, Dialect
from iotsentry.store.incidents import IncidentStore, fold_in_tx, write_incidents
from iotsentry.store.records import (
    TOKEN_SCOPES,
    AlertAction,
    AlertCommit,
    AlertQuery,
    ApiToken,
    CanaryResult,
    DeviceQuery,
    DeviceSummary,
)
from iotsentry.store.rows import (
    DEVICE_SUMMARY_COLUMNS,
    Row,
    StoredAlert,
    alert_from_record,
    alert_record,
    alert_where,
    api_token_from_row,
    baseline_dict,
    device_from_row,
    device_params,
    device_summary,
    dumps_json,
    like_pattern,
    merge_devices,
    run_dict,
    stored_alert,
)

__all__ = ["Cursor", "Executor", "StoreBase"]

Params = Sequence[Any] | Mapping[str, Any]


class Cursor(Protocol):
    """What a statement returns (``sqlite3.Cursor`` and psycopg's ``Cursor`` both qualify)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executor:
    """Runs the store's statements on one connection, translated by a dialect.

    Parameters
    ----------
    conn
        A DB-API-like connection with ``execute(sql, params)`` (``sqlite3`` and psycopg 3).
    dialect
        How the backend spells placeholders.
    """

    __slots__ = ("_conn", "_dialect")

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self._conn = conn
        self._dialect = dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Execute one statement (placeholders in SQLite style: ``?`` or ``:name``)."""
        cur: Cursor = self._conn.execute(self._dialect.sql(sql), params)
        return cur


class StoreBase(IncidentStore):
    """The store's public operations over a backend's plumbing (see the module docstring).

    The incident operations (:meth:`query_incidents`, :meth:`set_incident_status`,
    :meth:`pending_feedback`, ...) come from :class:`~iotsentry.store.incidents.IncidentStore`.

    Subclasses set :attr:`dialect` and implement :meth:`_tx`, :meth:`_query`,
    :meth:`_schema_version` and :meth:`close`.
    """

    dialect: ClassVar[Dialect] = SQLITE
    path: str
    """Where the data lives: the database file, or the DSN without its password."""
    version: int
    """The schema version after opening (the number of migration steps applied)."""

    # -- plumbing (per backend) ----------------------------------------------------------------

    def _tx(self) -> AbstractContextManager[Executor]:
        """One write transaction, committed on success and rolled back on any error."""
        raise NotImplementedError

    def _query(self, sql: str, params: Params = ()) -> list[Row]:
        """The rows of one read statement (placeholders in SQLite style)."""
        raise NotImplementedError

    def _schema_version(self) -> int:
        """The schema version recorded in the database (a round trip to it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection(s) (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
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
                "INSERT INTO runs (started, command, inputs, status) VALUES (?, ?, ?, 'running')"
                " RETURNING id",
                (time.time(), command, dumps_json([] if inputs is None else inputs)),
            )
            return int(cur.fetchall()[0]["id"])

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
                (time.time(), status, dumps_json(dict(stats or {})), int(run_id)),
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
                    old = device_from_row(row) if row is not None else None
                merged[dev.device_id] = merge_devices(old, dev) if old is not None else dev
            for dev in merged.values():
                p = device_params(dev)
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
        return [device_from_row(r) for r in self._query("SELECT * FROM devices ORDER BY device_id")]

    def get_device(self, device_id: str) -> Device | None:
        """One device, or ``None``."""
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return device_from_row(rows[0]) if rows else None

    # -- baselines -----------------------------------------------------------------------------

    def save_baseline(
        self, device_id: str, run_id: int | None, profile: Mapping[str, Any], maturity: float, mature: bool
    ) -> None:
        """Store a device's profile for a run (replacing one saved earlier in the same run)."""
        self.save_baselines(run_id, [(device_id, profile, maturity, mature)])

    def save_baselines(
        self, run_id: int | None, items: Iterable[tuple[str, Mapping[str, Any], float, bool]]
    ) -> None:
        """Store many devices' profiles ``(device_id, profile, maturity, mature)`` for a run in
        one transaction (all or none), as :meth:`save_baseline` does for one."""
        now = time.time()
        with self._tx() as c:
            for device_id, profile, maturity, mature in items:
                c.execute(
                    "INSERT INTO baselines (device_id, run_id, profile, maturity, mature, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, run_id) DO UPDATE SET"
                    " profile = excluded.profile, maturity = excluded.maturity, mature = excluded.mature,"
                    " updated = excluded.updated",
                    (device_id, run_id, dumps_json(dict(profile)), float(maturity), int(bool(mature)), now),
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
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY device_id"
            f" ORDER BY updated DESC, {self.dialect.baseline_tiebreak} DESC) AS rn"
            " FROM baselines) ranked WHERE rn = 1 ORDER BY device_id"
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

    def add_alerts(
        self,
        run_id: int | None,
        alerts: Iterable[Alert],
        source_state: Mapping[str, Mapping[str, Any]] | None = None,
        outbox: bool = False,
        *,
        incidents: bool | Sequence[Incident] = True,
    ) -> int:
        """Store alerts (and their incidents) in one transaction; returns how many new rows were made.

        The same as :meth:`commit_alerts`, which also tells what was folded and what the sinks get.
        """
        return self.commit_alerts(
            run_id, alerts, source_state=source_state, outbox=outbox, incidents=incidents
        ).new_rows

    def commit_alerts(
        self,
        run_id: int | None,
        alerts: Iterable[Alert],
        *,
        source_state: Mapping[str, Mapping[str, Any]] | None = None,
        outbox: bool = False,
        incidents: bool | Sequence[Incident] = True,
    ) -> AlertCommit:
        """Store alerts, fold them into incidents, and queue what sinks get: ONE transaction.

        An alert whose de-duplication key (``extra["dedup_key"]``, else device, detector,
        category, destination IP and port) is already stored adds its ``extra["count"]`` (1 when
        absent) to the row's count and widens ``first_ts``/``last_ts``; if it is more severe, its
        score, threshold, severity, reason and EVE record replace the stored ones; if it is newer
        than the row's last activity, an acknowledged row is re-opened. The row links to the
        alert's (latest) incident. Adding is not idempotent: store each kept alert once (e.g.
        ``AlertPolicy.alerts()`` at the end of a run).

        Parameters
        ----------
        run_id
            The run the alerts belong to (``None``: none).
        alerts
            The alerts to store (may be empty).
        source_state
            ``source name -> state`` (a JSON-ready mapping, e.g. a reader's offsets) written in the
            *same* transaction as the alerts, replacing each source's stored state: the alerts of a
            batch and the position after that batch are committed together or not at all, which
            makes a monitor's processing of its sources exactly-once (see
            :meth:`get_source_state`). ``None`` or empty: no state is written.
        outbox
            Also queue what the sinks get (:attr:`AlertCommit.to_sinks`: openings, escalations,
            notices and integrity alerts, never a repeat) in the outbox (same transaction) until
            :meth:`outbox_done` says every sink has it; :meth:`outbox_pending` lists what a crash
            left unsent, so sinks get every such record at least once.
        incidents
            ``True`` (default): fold the traffic alerts, in time order, into the incidents
            *stored* for their keys (:func:`~iotsentry.store.incidents.fold_in_tx`: the stored
            status wins over any copy in memory) and set each alert's ``incident_id``. A sequence
            of incidents: the caller folded the alerts already (their ``incident_id`` is set, e.g.
            by a batch analysis); these incidents are written by id, an existing row keeping its
            status and assignee; no alert counts as opening or escalating and ``to_sinks`` is empty
            (the caller, which folded, feeds its sinks). ``False``: no incidents, and every alert
            is for the sinks (the behaviour before incidents).

        Returns
        -------
        AlertCommit
            New rows, per-alert events, incidents written and the records for the sinks.
        """
        alerts = list(alerts)
        if outbox and not isinstance(incidents, bool):
            raise ValueError("outbox needs the store to fold (incidents=True) or no incidents (False)")
        result = AlertCommit()
        with self._tx() as c:
            if source_state:
                self._put_source_state(c, source_state)
            if isinstance(incidents, bool):
                if incidents:
                    result.events, result.incidents, result.to_sinks = fold_in_tx(c, alerts)
                else:
                    result.events, result.to_sinks = [(a, None) for a in alerts], list(alerts)
            else:
                result.incidents = list(incidents)
                write_incidents(c, result.incidents, keep_status=True)
                result.events = [(a, None) for a in alerts]
            if outbox:
                now = time.time()
                for a in result.to_sinks:
                    c.execute(
                        "INSERT INTO alert_outbox (queued, alert) VALUES (?, ?)",
                        (now, dumps_json(alert_record(a))),
                    )
            for a in alerts:
                result.new_rows += self._put_alert(c, run_id, a)
        return result

    def _put_alert(self, c: Executor, run_id: int | None, a: Alert) -> int:
        """Insert an alert row, or merge it into the row of its de-duplication key; 1 if new."""
        key = alert_dedup_key(a)
        count = int(a.extra.get("count", 1)) if a.extra else 1
        first = float(a.extra.get("first_ts", a.timestamp)) if a.extra else float(a.timestamp)
        last = float(a.extra.get("last_ts", a.timestamp)) if a.extra else float(a.timestamp)
        eve = dumps_json(a.to_eve())
        incident = a.incident_id or None
        row = c.execute("SELECT id, severity, last_ts FROM alerts WHERE dedup_key = ?", (key,)).fetchone()
        if row is None:
            c.execute(
                "INSERT INTO alerts (run_id, ts, device_id, site_id, detector, detector_version,"
                " category, severity, score, threshold, src_ip, src_port, dest_ip, dest_port, proto,"
                " flow_id, reason, eve, dedup_key, count, first_ts, last_ts, incident_id, event_type)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, float(a.timestamp), a.device_id, a.site_id, a.detector,
                    a.detector_version, a.category, int(a.severity), float(a.score),
                    float(a.threshold), a.src_ip, int(a.src_port), a.dest_ip, int(a.dest_port),
                    a.proto, int(a.flow_id), a.reason, eve, key, count,
                    min(first, float(a.timestamp)), max(last, float(a.timestamp)), incident,
                    a.event_type,
                ),
            )  # fmt: skip
            return 1
        c.execute(
            f"UPDATE alerts SET count = count + ?, first_ts = {self.dialect.least}(first_ts, ?),"
            f" last_ts = {self.dialect.greatest}(last_ts, ?),"
            " acknowledged = CASE WHEN ? > last_ts THEN 0 ELSE acknowledged END,"
            " incident_id = COALESCE(?, incident_id) WHERE id = ?",
            (count, first, last, last, incident, row["id"]),
        )
        if int(a.severity) < int(row["severity"]):
            c.execute(
                "UPDATE alerts SET severity = ?, score = ?, threshold = ?, reason = ?, eve = ?,"
                " run_id = COALESCE(?, run_id) WHERE id = ?",
                (int(a.severity), float(a.score), float(a.threshold), a.reason, eve, run_id, row["id"]),
            )
        return 0

    # -- source state (exactly-once offsets of a monitor's sources) ------------------------------

    @staticmethod
    def _put_source_state(c: Executor, source_state: Mapping[str, Mapping[str, Any]]) -> None:
        now = time.time()
        for name, state in source_state.items():
            c.execute(
                "INSERT INTO source_state (source, state, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (source) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                (str(name), dumps_json(dict(state)), now),
            )

    def outbox_pending(self, limit: int = 10_000) -> list[tuple[int, Alert]]:
        """Alerts stored with ``outbox=True`` that no sink confirmation has cleared yet, oldest
        first: ``(outbox id, alert)``."""
        rows = self._query("SELECT id, alert FROM alert_outbox ORDER BY id LIMIT ?", (int(limit),))
        return [(int(r["id"]), alert_from_record(json.loads(r["alert"]))) for r in rows]

    def outbox_done(self, upto_id: int | None = None) -> int:
        """Clear the outbox up to and including ``upto_id`` (``None``: all); returns rows cleared."""
        with self._tx() as c:
            if upto_id is None:
                cur = c.execute("DELETE FROM alert_outbox")
            else:
                cur = c.execute("DELETE FROM alert_outbox WHERE id <= ?", (int(upto_id),))
            return int(cur.rowcount or 0)

    def outbox_last_id(self) -> int:
        """The newest outbox id (0 when empty)."""
        rows = self._query("SELECT MAX(id) AS m FROM alert_outbox")
        return int(rows[0]["m"] or 0) if rows else 0

    def set_source_state(self, source_state: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the stored state of the given sources (one transaction, no alerts).

        Equivalent to ``add_alerts(None, [], source_state)``.
        """
        with self._tx() as c:
            self._put_source_state(c, source_state)

    def get_source_state(self) -> dict[str, dict[str, Any]]:
        """The committed state of every source, as written by :meth:`add_alerts`.

        Returns
        -------
        dict
            ``source name -> state`` (decoded JSON); empty when nothing was committed yet.
        """
        rows = self._query("SELECT source, state FROM source_state ORDER BY source")
        return {r["source"]: json.loads(r["state"]) for r in rows}

    # -- canary coverage ---------------------------------------------------------------------------

    def add_canary_results(self, results: Iterable[CanaryResult]) -> int:
        """Record the per-class outcomes of canary runs (one transaction); returns the rows written.

        A NaN score or threshold is stored as NULL (read back as ``None``); infinities are kept.
        """
        n = 0
        with self._tx() as c:
            for r in results:
                c.execute(
                    "INSERT INTO canary_runs (ts, detector, class, detected, score, threshold, device_id,"
                    " canary_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        float(r.ts),
                        r.detector,
                        r.attack_class,
                        int(bool(r.detected)),
                        _no_nan(r.score),
                        _no_nan(r.threshold),
                        r.device_id,
                        r.canary_run,
                    ),
                )
                n += 1
        return n

    def latest_canary_results(self) -> list[CanaryResult]:
        """The most recent result of every attack class (ordered by class).

        The latest is the one with the greatest ``ts``, then the greatest id.
        """
        rows = self._query(
            "SELECT * FROM (SELECT cr.*, ROW_NUMBER() OVER (PARTITION BY class ORDER BY ts DESC, id DESC)"
            " AS rn FROM canary_runs cr) ranked WHERE rn = 1 ORDER BY class"
        )
        return [_canary_result(r) for r in rows]

    def query_canary_results(
        self, *, attack_class: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[CanaryResult], int]:
        """Canary results, newest first (``ts``, then id), optionally of one class, and the total.

        Parameters
        ----------
        attack_class
            Only this class.
        limit, offset
            Paging.

        Returns
        -------
        tuple
            ``(results, total)``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        cond, params = "", []
        if attack_class is not None:
            cond, params = " WHERE class = ?", [attack_class]
        total = int(self._query(f"SELECT COUNT(*) AS n FROM canary_runs{cond}", params)[0]["n"])
        rows = self._query(
            f"SELECT * FROM canary_runs{cond} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [_canary_result(r) for r in rows], total

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
        return [stored_alert(r) for r in self._query(sql, params)]

    def acknowledge(self, alert_id: int, who: str) -> bool:
        """Mark an alert acknowledged by ``who``; returns whether the alert exists."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE alerts SET acknowledged = 1, assignee = ? WHERE id = ?", (who, int(alert_id))
            )
            return cur.rowcount == 1

    # -- REST API: queries with filters, totals and paging -----------------------------------------
    #
    # Backend-neutral SQL only (CTEs, window functions, LIKE ... ESCAPE, IN lists of placeholders):
    # both backends run the same statements after placeholder translation.

    def ping(self) -> int:
        """Check the database answers; return the schema version recorded in it."""
        return self._schema_version()

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
        where, params = alert_where(query or AlertQuery())
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
        return [stored_alert(r) for r in rows], total

    def get_alert(self, alert_id: int) -> StoredAlert | None:
        """One alert by id, or ``None``."""
        rows = self._query("SELECT * FROM alerts WHERE id = ?", (int(alert_id),))
        return stored_alert(rows[0]) if rows else None

    def alert_summary(self, query: AlertQuery | None = None) -> dict[str, Any]:
        """Counts of matching alerts: total, open, by severity, by category and by device.

        Notices are not security alerts: unless the query names event types, they are left out of
        these counts and counted apart in ``notices`` (``{"total", "open"}``, same filters).
        """
        q = query or AlertQuery()
        where, params = alert_where(q)
        base = " WHERE " + " AND ".join([*where, "event_type = 'notice'"])
        if not q.event_types:
            where = [*where, "event_type <> 'notice'"]
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
        notes = self._query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN acknowledged = 0 THEN 1 ELSE 0 END), 0) AS open_n"
            f" FROM alerts{base}",
            params,
        )[0]
        out["notices"] = {"total": int(notes["n"]), "open": int(notes["open_n"])}
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
        return stored_alert(row)

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
        return stored_alert(row)

    @staticmethod
    def _record_action(
        c: Executor,
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
            params.append(like_pattern(q.vendor))
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
            params += [like_pattern(q.search)] * len(cols)
        cond = " WHERE " + " AND ".join(where) if where else ""
        base = f" FROM devices d LEFT JOIN lb ON lb.device_id = d.device_id{cond}"
        total = int(self._query(f"{self._LATEST_BASELINE} SELECT COUNT(*) AS n{base}", params)[0]["n"])
        rows = self._query(
            f"{self._LATEST_BASELINE} {DEVICE_SUMMARY_COLUMNS}{base} ORDER BY d.device_id LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [device_summary(r) for r in rows], total

    def get_device_summary(self, device_id: str) -> DeviceSummary | None:
        """One device with its maturity and alert counts, or ``None``."""
        rows = self._query(
            f"{self._LATEST_BASELINE} {DEVICE_SUMMARY_COLUMNS}"
            " FROM devices d LEFT JOIN lb ON lb.device_id = d.device_id WHERE d.device_id = ?",
            (device_id,),
        )
        return device_summary(rows[0]) if rows else None

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
        return [baseline_dict(r, include_profile) for r in rows], total

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
        return [baseline_dict(r, include_profile) for r in rows], total

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
        return [run_dict(r) for r in rows], total

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One run (decoded like :meth:`get_runs`), or ``None``."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        return run_dict(rows[0]) if rows else None

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
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (name, token_hash, scope, when, expires_at),
            )
            token_id = int(cur.fetchall()[0]["id"])
        return ApiToken(token_id, name, scope, token_hash, when, expires_at)

    def get_api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The token with this hash (revoked and expired ones too), or ``None``."""
        rows = self._query("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return api_token_from_row(rows[0]) if rows else None

    def list_api_tokens(self, *, include_revoked: bool = True) -> list[ApiToken]:
        """Every token, oldest first."""
        cond = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [api_token_from_row(r) for r in self._query(f"SELECT * FROM api_tokens{cond} ORDER BY id")]

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


def _no_nan(x: float | None) -> float | None:
    """``x`` as a float, or ``None`` for ``None`` and NaN (stored as NULL)."""
    return None if x is None or math.isnan(float(x)) else float(x)


def _canary_result(r: Row) -> CanaryResult:
    return CanaryResult(
        ts=float(r["ts"]),
        detector=r["detector"],
        attack_class=r["class"],
        detected=bool(r["detected"]),
        score=None if r["score"] is None else float(r["score"]),
        threshold=None if r["threshold"] is None else float(r["threshold"]),
        device_id=r["device_id"],
        canary_run=r["canary_run"],
        id=int(r["id"]),
    )
