"""Rows of the store's tables to and from records, for every backend.

A row is whatever the backend's cursor returns that can be indexed by column name
(``sqlite3.Row``, or the ``dict`` of psycopg's ``dict_row``); JSON columns hold
``json.dumps`` text on both backends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from iotsentry.alerts.incidents import Incident
from iotsentry.schema import Alert, Device
from iotsentry.store.records import (
    AlertQuery,
    ApiToken,
    BaselineFeedback,
    DeviceSummary,
    IncidentAction,
    IncidentQuery,
)

__all__ = [
    "DEVICE_SUMMARY_COLUMNS",
    "Row",
    "StoredAlert",
    "alert_from_record",
    "alert_record",
    "alert_where",
    "api_token_from_row",
    "baseline_dict",
    "device_from_row",
    "device_params",
    "device_summary",
    "dumps_json",
    "feedback_from_row",
    "incident_action_from_row",
    "incident_from_row",
    "incident_params",
    "incident_where",
    "like_pattern",
    "merge_devices",
    "run_dict",
    "stored_alert",
]


class Row(Protocol):
    """A result row: column values by name (``sqlite3.Row`` and ``dict`` both qualify)."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Any: ...


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


def dumps_json(value: Any) -> str:
    """Compact JSON text of ``value`` (numpy values, sets, tuples and paths allowed)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def alert_record(a: Alert) -> dict[str, Any]:
    """Every field of an alert, JSON-ready (for the outbox; :func:`alert_from_record` inverts it)."""
    return {f.name: getattr(a, f.name) for f in fields(Alert)}


def alert_from_record(rec: dict[str, Any]) -> Alert:
    """The alert :func:`alert_record` described (unknown keys ignored)."""
    names = {f.name for f in fields(Alert)}
    return Alert(**{k: v for k, v in rec.items() if k in names})


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Items of both, first-seen order, without repeats."""
    return list(dict.fromkeys([*first, *second]))


def merge_devices(old: Device, new: Device) -> Device:
    """Merge a newly observed ``new`` into the stored ``old`` entry of the same device.

    Lists (names, IPs, DNS names, ...) are unioned; ``first_seen`` is the earliest and
    ``last_seen`` the latest non-zero time; packet and byte counters are added; MAC, vendor and
    device type take the new value when it has one (the type with its confidence); DHCP fields
    are merged with the new values winning; ``is_gateway`` stays true once seen; ``visibility``
    is merged field by field, the new values winning.
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
        visibility={**old.visibility, **new.visibility},
    )


def device_from_row(row: Row) -> Device:
    """A ``devices`` row as a :class:`Device`."""
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
        visibility=dict(extra.get("visibility", {})),
    )


def device_params(d: Device) -> dict[str, Any]:
    """The named parameters of a ``devices`` row for ``d``."""
    extra: dict[str, Any] = {k: list(getattr(d, k)) for k in _DEVICE_EXTRA_LISTS}
    extra["type_confidence"] = float(d.type_confidence)
    extra["is_local"] = bool(d.is_local)
    if d.visibility:
        extra["visibility"] = dict(d.visibility)
    return {
        "device_id": d.device_id,
        "mac": d.mac,
        "vendor": d.vendor,
        "device_type": d.device_type,
        "names": dumps_json(list(d.names)),
        "ips": dumps_json(list(d.ips)),
        "dhcp": dumps_json(d.dhcp),
        "first_seen": float(d.first_seen),
        "last_seen": float(d.last_seen),
        "packets": int(d.packets),
        "bytes": int(d.bytes),
        "is_gateway": int(bool(d.is_gateway)),
        "extra": dumps_json(extra),
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
            "incident_id": self.alert.incident_id or None,
            "eve": self.alert.to_eve(),
        }


def stored_alert(row: Row) -> StoredAlert:
    """An ``alerts`` row as a :class:`StoredAlert`."""
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
        incident_id=str(_get(row, "incident_id") or ""),
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
        **{k: row[k] for k in _AUDIT_COLUMNS if k in row.keys()},  # noqa: SIM118 (Row)
    )


def _get(row: Row, key: str) -> Any:
    """``row[key]``, or ``None`` when the row has no such column."""
    return row[key] if key in row.keys() else None  # noqa: SIM118 (Row)


DEVICE_SUMMARY_COLUMNS = (  # the select list of DeviceSummary rows (devices d, latest baselines lb)
    "SELECT d.*, lb.maturity AS lb_maturity, lb.mature AS lb_mature, lb.run_id AS lb_run_id,"
    " lb.updated AS lb_updated,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.device_id = d.device_id AND a.event_type <> 'notice')"
    " AS n_alerts,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.device_id = d.device_id AND a.acknowledged = 0"
    " AND a.event_type <> 'notice') AS n_open,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.device_id = d.device_id AND a.event_type = 'notice')"
    " AS n_notices,"
    " (SELECT COUNT(*) FROM incidents i WHERE i.device_id = d.device_id"
    " AND i.status IN ('open', 'acknowledged')) AS n_incidents"
)


def device_summary(r: Row) -> DeviceSummary:
    """A row selected with :data:`DEVICE_SUMMARY_COLUMNS` as a :class:`DeviceSummary`."""
    return DeviceSummary(
        device=device_from_row(r),
        maturity=None if r["lb_maturity"] is None else float(r["lb_maturity"]),
        mature=bool(r["lb_mature"]),
        baseline_run_id=r["lb_run_id"],
        baseline_updated=None if r["lb_updated"] is None else float(r["lb_updated"]),
        open_alerts=int(r["n_open"]),
        alerts=int(r["n_alerts"]),
        notices=int(r["n_notices"]),
        open_incidents=int(r["n_incidents"]),
    )


def like_pattern(text: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``text`` as a lower-case substring."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def alert_where(q: AlertQuery) -> tuple[list[str], list[Any]]:
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
    if q.event_types:
        where.append(f"event_type IN ({', '.join('?' for _ in q.event_types)})")
        params += list(q.event_types)
    if q.incident_id is not None:
        where.append("incident_id = ?")
        params.append(q.incident_id)
    return where, params


def incident_where(q: IncidentQuery) -> tuple[list[str], list[Any]]:
    """WHERE conditions and parameters for an :class:`IncidentQuery`."""
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("status", q.statuses), ("cause", q.causes)):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    for column, value in (("device_id", q.device_id), ("assignee", q.assignee), ("site_id", q.site_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if q.min_severity is not None:
        where.append("severity <= ?")
        params.append(int(q.min_severity))
    if q.since is not None:
        where.append("last_ts >= ?")
        params.append(float(q.since))
    if q.until is not None:
        where.append("first_ts <= ?")
        params.append(float(q.until))
    return where, params


def incident_params(inc: Incident) -> dict[str, Any]:
    """The named parameters of an ``incidents`` row for ``inc``."""
    return {
        "id": inc.incident_id,
        "site_id": inc.site_id,
        "device_id": inc.device_id,
        "cause": inc.cause,
        "status": inc.status,
        "severity": int(inc.severity),
        "first_ts": float(inc.first_ts),
        "last_ts": float(inc.last_ts),
        "count": int(inc.count),
        "categories": dumps_json(list(inc.categories)),
        "evidence": dumps_json(list(inc.evidence)),
        "evidence_kinds": dumps_json(list(inc.evidence_kinds)),
        "assignee": inc.assignee,
        "previous_id": inc.previous_id or None,
        "updated": float(inc.updated),
    }


def incident_from_row(r: Row) -> Incident:
    """An ``incidents`` row as an :class:`~iotsentry.alerts.incidents.Incident`."""
    return Incident(
        incident_id=r["id"],
        site_id=r["site_id"],
        device_id=r["device_id"],
        cause=r["cause"],
        status=r["status"],
        severity=int(r["severity"]),
        first_ts=float(r["first_ts"]),
        last_ts=float(r["last_ts"]),
        count=int(r["count"]),
        categories=list(json.loads(r["categories"])),
        evidence=list(json.loads(r["evidence"])),
        evidence_kinds=list(json.loads(r["evidence_kinds"])),
        assignee=r["assignee"],
        previous_id=r["previous_id"] or "",
        updated=float(r["updated"]),
    )


def incident_action_from_row(r: Row) -> IncidentAction:
    """An ``incident_actions`` row as an :class:`IncidentAction`."""
    return IncidentAction(
        id=int(r["id"]),
        incident_id=r["incident_id"],
        action=r["action"],
        actor=r["actor"],
        actor_token_id=r["actor_token_id"],
        at=float(r["at"]),
        value=r["value"],
        note=r["note"],
    )


def feedback_from_row(r: Row) -> BaselineFeedback:
    """A ``baseline_feedback`` row as a :class:`BaselineFeedback`."""
    return BaselineFeedback(
        id=int(r["id"]),
        incident_id=r["incident_id"],
        device_id=r["device_id"],
        scope=r["scope"],
        action=r["action"],
        evidence=dict(json.loads(r["evidence"])),
        created=float(r["created"]),
        created_by=r["created_by"],
        applied_at=None if r["applied_at"] is None else float(r["applied_at"]),
        result=r["result"],
    )


def baseline_dict(r: Row, include_profile: bool) -> dict[str, Any]:
    """A ``baselines`` row as the dictionary of the REST API's baseline queries."""
    return {
        "device_id": r["device_id"],
        "run_id": r["run_id"],
        "maturity": float(r["maturity"]),
        "mature": bool(r["mature"]),
        "updated": float(r["updated"]),
        "profile": json.loads(r["profile"]) if include_profile else None,
    }


def run_dict(r: Row) -> dict[str, Any]:
    """A ``runs`` row with its JSON columns decoded."""
    return {**dict(r), "inputs": json.loads(r["inputs"]), "stats": json.loads(r["stats"])}


def api_token_from_row(r: Row) -> ApiToken:
    """An ``api_tokens`` row as an :class:`ApiToken`."""
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
