"""The store's incidents: folding inside the alerts' transaction, queries, status, feedback.

:func:`fold_in_tx` is what :meth:`~iotsentry.store.base.StoreBase.commit_alerts` runs inside its
write transaction: it reads the current incident of every key the alerts touch *from the
database* (so a status an operator set meanwhile wins over anything held in memory), folds the
alerts with an :class:`~iotsentry.alerts.incidents.IncidentBook` and writes the incidents back.
Writers are serialised (SQLite ``BEGIN IMMEDIATE``, PostgreSQL's advisory lock), so the fold and
an operator's status change never interleave.

:class:`IncidentStore` holds the public incident methods of the store (a base of
:class:`~iotsentry.store.base.StoreBase`); like every store method, each write is one
transaction. Marking an incident ``expected`` also queues a ``baseline_feedback`` row
(``absorb``) in the same transaction; moving an expected incident to any other status queues a
``revert`` of what was absorbed. The baseline stage consumes them
(:meth:`IncidentStore.pending_feedback`, :meth:`IncidentStore.mark_feedback_applied`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from iotsentry.alerts.incidents import (
    INCIDENT_STATUSES,
    Incident,
    IncidentBook,
    IncidentKey,
    forms_incident,
    incident_key,
)
from iotsentry.schema import Alert
from iotsentry.store.records import (
    FEEDBACK_SCOPES,
    BaselineFeedback,
    IncidentAction,
    IncidentQuery,
)
from iotsentry.store.rows import (
    Row,
    StoredAlert,
    dumps_json,
    feedback_from_row,
    incident_action_from_row,
    incident_from_row,
    incident_params,
    incident_where,
    stored_alert,
)

if TYPE_CHECKING:
    from iotsentry.store.base import Executor, Params

__all__ = ["ENGINE_ACTOR", "STATUS_ACTIONS", "IncidentStore", "fold_in_tx", "write_incidents"]

ENGINE_ACTOR = "iotsentry"
"""The actor recorded when folding (not an operator) changed an incident's status."""

STATUS_ACTIONS = {
    "acknowledged": "acknowledge",
    "expected": "expect",
    "resolved": "resolve",
    "open": "reopen",
}
"""The audit-trail action of each status an operator sets."""

_COLUMNS = (
    "id, site_id, device_id, cause, status, severity, first_ts, last_ts, count, categories, evidence,"
    " evidence_kinds, assignee, previous_id, updated"
)
_VALUES = (
    ":id, :site_id, :device_id, :cause, :status, :severity, :first_ts, :last_ts, :count, :categories,"
    " :evidence, :evidence_kinds, :assignee, :previous_id, :updated"
)
_FOLDED = (
    "severity = excluded.severity, first_ts = excluded.first_ts, last_ts = excluded.last_ts,"
    " count = excluded.count, categories = excluded.categories, evidence = excluded.evidence,"
    " evidence_kinds = excluded.evidence_kinds, updated = excluded.updated"
)


def write_incidents(c: Executor, incidents: Iterable[Incident], *, keep_status: bool) -> None:
    """Insert or update incidents by id.

    ``keep_status``: an existing row keeps its status and assignee (incidents folded by the
    caller, e.g. a batch analysis: the operator's status in the store wins); otherwise the
    status is written too (a fold against the stored row, which may have re-opened it).
    """
    update = _FOLDED if keep_status else f"{_FOLDED}, status = excluded.status"
    for inc in incidents:
        c.execute(
            f"INSERT INTO incidents ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (id) DO UPDATE SET {update}",
            incident_params(inc),
        )


_CURRENT = (
    "SELECT * FROM incidents WHERE site_id = ? AND device_id = ? AND cause = ?"
    " ORDER BY CASE WHEN status IN ('open', 'acknowledged') THEN 1 ELSE 0 END DESC,"
    " last_ts DESC, first_ts DESC, id DESC LIMIT 1"
)
"""The current incident of a key: its active one, else the latest (as IncidentBook picks it)."""


def _current_in_tx(c: Executor, key: IncidentKey) -> Incident | None:
    """The stored current incident of a key (read inside the writer's transaction)."""
    row = c.execute(_CURRENT, key).fetchone()
    return None if row is None else incident_from_row(row)


def _record_action(
    c: Executor,
    incident_id: str,
    action: str,
    actor: str,
    actor_token_id: int | None,
    at: float,
    value: str | None,
    note: str | None,
) -> None:
    c.execute(
        "INSERT INTO incident_actions (incident_id, action, actor, actor_token_id, at, value, note)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (incident_id, action, actor, actor_token_id, at, value, note),
    )


def fold_in_tx(
    c: Executor, alerts: Sequence[Alert]
) -> tuple[list[tuple[Alert, str | None]], list[Incident], list[Alert]]:
    """Fold ``alerts`` against the stored incidents and write them back.

    The alerts are folded in time order (ties: the given order), as a batch analysis folds a
    whole run, so an alert a detector reports late within a batch does not change which alert
    opened the incident (nor its id).

    Returns
    -------
    tuple
        ``(events, incidents written, alerts for the sinks)`` as in
        :class:`~iotsentry.store.records.AlertCommit`.
    """
    keys = list(dict.fromkeys(incident_key(a) for a in alerts if forms_incident(a)))
    stored = [inc for inc in (_current_in_tx(c, k) for k in keys) if inc is not None]
    before = {inc.incident_id: inc.status for inc in stored}
    book = IncidentBook(stored)
    events, to_sinks = book.fold_many(alerts)
    changed = book.changed()
    write_incidents(c, changed, keep_status=False)
    now = time.time()
    for inc in changed:
        if before.get(inc.incident_id) == "acknowledged" and inc.status == "open":
            _record_action(c, inc.incident_id, "escalate", ENGINE_ACTOR, None, now, "open",
                           "new evidence re-opened the acknowledged incident")  # fmt: skip
    return events, changed, to_sinks


class IncidentStore:
    """The incident operations of the store (see the module docstring)."""

    def _tx(self) -> AbstractContextManager[Executor]:
        raise NotImplementedError

    def _query(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    # -- reads ---------------------------------------------------------------------------------

    def query_incidents(
        self,
        query: IncidentQuery | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        after: tuple[float, str] | None = None,
    ) -> tuple[list[Incident], int]:
        """Incidents matching ``query``, most recently active first, and how many match in total.

        Parameters
        ----------
        query
            The filters (``None``: every incident).
        limit, offset
            Paging; ``offset`` counts from the start or from ``after``.
        after
            Keyset cursor ``(last_ts, id)`` of the last incident of the previous page. The total
            ignores the cursor and the offset.

        Returns
        -------
        tuple
            ``(incidents, total)``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where, params = incident_where(query or IncidentQuery())
        cond = " WHERE " + " AND ".join(where) if where else ""
        total = int(self._query(f"SELECT COUNT(*) AS n FROM incidents{cond}", params)[0]["n"])
        if after is not None:
            where = [*where, "(last_ts < ? OR (last_ts = ? AND id < ?))"]
            params = [*params, float(after[0]), float(after[0]), str(after[1])]
        cond = " WHERE " + " AND ".join(where) if where else ""
        rows = self._query(
            f"SELECT * FROM incidents{cond} ORDER BY last_ts DESC, id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [incident_from_row(r) for r in rows], total

    def incident_summary(self, query: IncidentQuery | None = None) -> dict[str, Any]:
        """Counts of matching incidents: total, by status, by severity, by cause and by device.

        Each group is a list of ``{"key", "total", "active"}`` (``active``: open or acknowledged).
        """
        where, params = incident_where(query or IncidentQuery())
        cond = " WHERE " + " AND ".join(where) if where else ""
        active = "SUM(CASE WHEN status IN ('open', 'acknowledged') THEN 1 ELSE 0 END)"
        sql = f"SELECT COUNT(*) AS n, COALESCE({active}, 0) AS a FROM incidents{cond}"
        head = self._query(sql, params)[0]
        out: dict[str, Any] = {"total": int(head["n"]), "active": int(head["a"])}
        for key, column in (
            ("by_status", "status"),
            ("by_severity", "severity"),
            ("by_cause", "cause"),
            ("by_device", "device_id"),
        ):
            rows = self._query(
                f"SELECT {column} AS k, COUNT(*) AS n, {active} AS a FROM incidents{cond}"
                f" GROUP BY {column} ORDER BY {column}",
                params,
            )
            out[key] = [{"key": r["k"], "total": int(r["n"]), "active": int(r["a"])} for r in rows]
        return out

    def get_incident(self, incident_id: str) -> Incident | None:
        """One incident, or ``None``."""
        rows = self._query("SELECT * FROM incidents WHERE id = ?", (str(incident_id),))
        return incident_from_row(rows[0]) if rows else None

    def current_incidents(self, keys: Iterable[IncidentKey]) -> list[Incident]:
        """The stored current incident (active, else latest) of each key that has one."""
        out: list[Incident] = []
        for key in keys:
            out += [incident_from_row(r) for r in self._query(_CURRENT, tuple(key))]
        return out

    def incident_alerts(self, incident_id: str, limit: int = 1000) -> list[StoredAlert]:
        """The alert rows (last) folded into an incident, most recently active first.

        An alert row merges the repeats of one de-duplication key; a key whose incident was
        resolved and whose behaviour came back links to the newer incident (the older one keeps
        its evidence samples).
        """
        rows = self._query(
            "SELECT * FROM alerts WHERE incident_id = ? ORDER BY last_ts DESC, id DESC LIMIT ?",
            (str(incident_id), int(limit)),
        )
        return [stored_alert(r) for r in rows]

    def incident_actions(self, incident_id: str) -> list[IncidentAction]:
        """The audit trail of an incident, oldest first."""
        rows = self._query(
            "SELECT * FROM incident_actions WHERE incident_id = ? ORDER BY at, id", (str(incident_id),)
        )
        return [incident_action_from_row(r) for r in rows]

    # -- operator actions ------------------------------------------------------------------------

    def set_incident_status(
        self,
        incident_id: str,
        status: str,
        who: str,
        scope: str | None = None,
        *,
        note: str | None = None,
        actor_token_id: int | None = None,
        at: float | None = None,
    ) -> Incident | None:
        """Set an incident's status as ``who``, recorded in its audit trail (one transaction).

        Parameters
        ----------
        incident_id
            The incident.
        status
            ``acknowledged``, ``expected``, ``resolved`` or ``open``.
        who
            The operator (a token's name, a CLI user).
        scope
            With ``expected``: absorb into the device's baseline (``device``, the default) or
            into every device of its type / peer group (``group``). Ignored otherwise.
        note, actor_token_id
            Recorded with the action.
        at
            The action's time (default: now).

        Returns
        -------
        Incident or None
            The updated incident, or ``None`` when there is no such incident.

        Raises
        ------
        ValueError
            An unknown status or scope.

        Notes
        -----
        ``expected`` queues a ``baseline_feedback`` ``absorb`` row (scope, the incident's
        evidence); marking an expected incident expected again with another scope queues a
        ``revert`` of the old scope and an ``absorb`` of the new one (the same scope: nothing);
        moving an expected incident to another status queues a ``revert``.
        """
        if status not in INCIDENT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(INCIDENT_STATUSES)}")
        if scope is not None and scope not in FEEDBACK_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(FEEDBACK_SCOPES)}")
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            row = c.execute("SELECT * FROM incidents WHERE id = ?", (str(incident_id),)).fetchone()
            if row is None:
                return None
            inc = incident_from_row(row)
            old = inc.status
            absorbed = self._absorbed_scope(c, inc.incident_id) if old == "expected" else None
            new_scope = (scope or "device") if status == "expected" else None
            c.execute(
                "UPDATE incidents SET status = ?, updated = ? WHERE id = ?", (status, when, inc.incident_id)
            )
            inc.status, inc.updated = status, when
            action = STATUS_ACTIONS[status]
            _record_action(c, inc.incident_id, action, who, actor_token_id, when, new_scope, note)
            if absorbed is not None and absorbed != new_scope:
                self._feedback(c, inc, absorbed, "revert", who, when)
            if new_scope is not None and new_scope != absorbed:
                self._feedback(c, inc, new_scope, "absorb", who, when)
        return inc

    @staticmethod
    def _absorbed_scope(c: Executor, incident_id: str) -> str | None:
        """The scope of the incident's latest feedback if it is an ``absorb`` (else ``None``)."""
        row = c.execute(
            "SELECT scope, action FROM baseline_feedback WHERE incident_id = ? ORDER BY id DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        return str(row["scope"]) if row is not None and row["action"] == "absorb" else None

    @staticmethod
    def _feedback(c: Executor, inc: Incident, scope: str, action: str, who: str, when: float) -> None:
        dev = c.execute("SELECT device_type FROM devices WHERE device_id = ?", (inc.device_id,)).fetchone()
        evidence = {
            "site_id": inc.site_id,
            "cause": inc.cause,
            "categories": list(inc.categories),
            "evidence_kinds": list(inc.evidence_kinds),
            "evidence": list(inc.evidence),
            "severity": int(inc.severity),
            "count": int(inc.count),
            "first_ts": float(inc.first_ts),
            "last_ts": float(inc.last_ts),
            "device_type": None if dev is None else dev["device_type"],
        }
        c.execute(
            "INSERT INTO baseline_feedback (incident_id, device_id, scope, action, evidence, created,"
            " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (inc.incident_id, inc.device_id, scope, action, dumps_json(evidence), when, who),
        )

    def assign_incident(
        self,
        incident_id: str,
        assignee: str | None,
        who: str,
        *,
        note: str | None = None,
        actor_token_id: int | None = None,
        at: float | None = None,
    ) -> Incident | None:
        """Assign an incident to ``assignee`` (``None``: unassign), recorded in its audit trail.

        Returns the updated incident, or ``None`` when there is no such incident.
        """
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE incidents SET assignee = ?, updated = ? WHERE id = ?",
                (assignee, when, str(incident_id)),
            )
            if cur.rowcount != 1:
                return None
            action = "assign" if assignee is not None else "unassign"
            _record_action(c, str(incident_id), action, who, actor_token_id, when, assignee, note)
            row = c.execute("SELECT * FROM incidents WHERE id = ?", (str(incident_id),)).fetchone()
        return incident_from_row(row)

    # -- baseline feedback ---------------------------------------------------------------------------

    def pending_feedback(self, limit: int = 1000) -> list[BaselineFeedback]:
        """Feedback rows the baseline stage has not applied yet, oldest first."""
        rows = self._query(
            "SELECT * FROM baseline_feedback WHERE applied_at IS NULL ORDER BY id LIMIT ?", (int(limit),)
        )
        return [feedback_from_row(r) for r in rows]

    def baseline_feedback(self, incident_id: str | None = None, limit: int = 1000) -> list[BaselineFeedback]:
        """Feedback rows (applied or not), oldest first; only one incident's when given."""
        if incident_id is None:
            rows = self._query("SELECT * FROM baseline_feedback ORDER BY id LIMIT ?", (int(limit),))
        else:
            rows = self._query(
                "SELECT * FROM baseline_feedback WHERE incident_id = ? ORDER BY id LIMIT ?",
                (str(incident_id), int(limit)),
            )
        return [feedback_from_row(r) for r in rows]

    def mark_feedback_applied(self, feedback_id: int, result: str, *, at: float | None = None) -> bool:
        """Record that the baseline stage applied a feedback row and what it reported.

        Returns whether the row exists and was pending (applying twice changes nothing).
        """
        when = time.time() if at is None else float(at)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE baseline_feedback SET applied_at = ?, result = ? WHERE id = ? AND applied_at IS NULL",
                (when, str(result), int(feedback_id)),
            )
            return cur.rowcount == 1
