"""Incidents: alerts folded per (site, device, cause), with their status and evidence.

A SOC works on incidents, not on alert streams. Every traffic alert (``event_type == "alert"``)
belongs to exactly one incident, the one of its *key* ``(site_id, device_id, cause)`` where the
cause is the family of the alert's category (:data:`CAUSES`). Notices (:data:`NOTICE_CATEGORIES`,
``event_type == "notice"``) and the monitor's own integrity/canary alerts never form incidents.

This module is pure: no I/O, no clock. :func:`fold` is the one rule; :class:`IncidentBook` keeps
the incidents of a batch run (or of a test) in memory and is what the store folds with inside its
write transaction (seeded with the stored rows, so an operator's status change wins).

Causes
======

=================  ==================================================================
cause              categories (matched case-insensitively)
=================  ==================================================================
``scan``           ``port-scan``, ``scan``, ``slow-scan``, ``fan-out``; flow-model
                   ``PortScan`` and ``PartOfAHorizontalPortScan*``
``brute-force``    ``brute-force``, ``repeated-attempts``, ``connection-burst``
``c2``             ``c2``; flow-model ``C&C`` and every ``C&C-*`` label
``flood``          ``flood``, ``volume``; flow-model ``DDoS``
``novelty``        ``new-peer``, ``new-service``, ``new-name``
``peer-outlier``   ``peer-outlier``
``baseline-drift`` ``baseline-drift``
``download``       flow-model ``FileDownload``
anything else      its own lower-case name (e.g. ``okiru``, ``attack``, ``unknown``)
=================  ==================================================================

Folding rules
=============

* An alert joins the *current* incident of its key when that incident is ``open`` or
  ``acknowledged``. An ``expected`` or ``resolved`` incident is never reopened by the engine: a
  new incident is opened instead, linked to it by ``previous_id``.
* The alert *escalates* its incident when it is strictly more severe than the incident (a
  smaller severity number) or brings a new evidence kind (``category/feature``, or the category
  alone when the alert names no ``extra["feature"]``). An escalation of an ``acknowledged``
  incident sets it back to ``open``.
* ``count`` is the number of alerts folded (each alert the policy kept counts once; the
  policy's own within-window repeats are in the alert's ``extra["count"]``).
* ``incident_id`` is ``"inc-"`` + the blake2b (8 bytes, hex) of
  ``site|device|cause|first alert time in integer microseconds`` (``|previous_id`` appended for an
  incident that follows another one): a batch analysis and the streaming monitor fed the same
  traffic give the same ids.
* ``evidence`` keeps at most :data:`MAX_EVIDENCE` samples: the opening alert's sample always
  stays; when full, the oldest later sample whose kind is still shown by another sample makes
  room, so every kind keeps a sample while there are fewer kinds than places.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from iotsentry.schema import Alert

__all__ = [
    "ACTIVE_STATUSES",
    "CAUSES",
    "ESCALATED",
    "INCIDENT_STATUSES",
    "MAX_EVIDENCE",
    "NOTICE_CATEGORIES",
    "OPENED",
    "Incident",
    "IncidentAction",
    "IncidentBook",
    "IncidentKey",
    "cause_of",
    "evidence_kind",
    "evidence_sample",
    "fold",
    "fold_all",
    "forms_incident",
    "incident_id_for",
    "incident_key",
    "is_notice",
    "sink_alert",
]

CAUSES: dict[str, str] = {
    "port-scan": "scan",
    "scan": "scan",
    "slow-scan": "scan",
    "fan-out": "scan",
    "portscan": "scan",
    "brute-force": "brute-force",
    "repeated-attempts": "brute-force",
    "connection-burst": "brute-force",
    "c2": "c2",
    "c&c": "c2",
    "flood": "flood",
    "volume": "flood",
    "ddos": "flood",
    "new-peer": "novelty",
    "new-service": "novelty",
    "new-name": "novelty",
    "peer-outlier": "peer-outlier",
    "baseline-drift": "baseline-drift",
    "filedownload": "download",
}
"""Lower-case category -> cause family (see the module docstring's table)."""

_PREFIXES: tuple[tuple[str, str], ...] = (("c&c-", "c2"), ("partofahorizontalportscan", "scan"))
"""Families of label variants (IoT-23 detailed labels): lower-case prefix -> cause."""

NOTICE_CATEGORIES: frozenset[str] = frozenset({"silence", "offline"})
"""Categories that are notices (severity info, ``event_type == "notice"``), never incidents."""

INCIDENT_STATUSES: tuple[str, ...] = ("open", "acknowledged", "expected", "resolved")
"""Every status an incident can have."""
ACTIVE_STATUSES: frozenset[str] = frozenset({"open", "acknowledged"})
"""Statuses whose incident new alerts of its key join."""

OPENED, ESCALATED = "opened", "escalated"
"""The events :func:`fold` reports (``None``: a plain repeat)."""

MAX_EVIDENCE = 10
"""The most evidence samples an incident keeps."""

IncidentKey = tuple[str, str, str]
"""``(site_id, device_id, cause)``."""


def cause_of(category: str) -> str:
    """The cause family of an alert category (its own lower-case name when not in the table)."""
    c = category.strip().lower()
    if c in CAUSES:
        return CAUSES[c]
    for prefix, cause in _PREFIXES:
        if c.startswith(prefix):
            return cause
    return c


def is_notice(alert: Alert) -> bool:
    """Whether the alert is a notice (its event type, or a notice category)."""
    return alert.event_type == "notice" or alert.category.strip().lower() in NOTICE_CATEGORIES


def forms_incident(alert: Alert) -> bool:
    """Whether the alert belongs to an incident: a traffic alert that is not a notice."""
    return alert.event_type == "alert" and not is_notice(alert)


def incident_key(alert: Alert) -> IncidentKey:
    """The key ``(site_id, device_id, cause)`` an alert folds under."""
    return (alert.site_id, alert.device_id, cause_of(alert.category))


def incident_id_for(site_id: str, device_id: str, cause: str, first_ts: float, previous_id: str = "") -> str:
    """The deterministic id of the incident a key's alert at ``first_ts`` opens.

    ``"inc-"`` + hex blake2b (8 bytes) of ``site|device|cause|round(first_ts * 1e6)``, with
    ``|previous_id`` appended when the incident follows another one of the same key.
    """
    text = f"{site_id}|{device_id}|{cause}|{round(float(first_ts) * 1_000_000)}"
    if previous_id:
        text += f"|{previous_id}"
    return "inc-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def evidence_kind(alert: Alert) -> str:
    """``"category/feature"`` of an alert (the category alone when it names no feature)."""
    feature = alert.extra.get("feature") if alert.extra else None
    return f"{alert.category}/{feature}" if feature else alert.category


def evidence_sample(alert: Alert) -> dict[str, Any]:
    """What an incident keeps of one alert: time, category, detector, reason, destination, score."""
    sample: dict[str, Any] = {
        "ts": float(alert.timestamp),
        "category": alert.category,
        "detector": alert.detector,
        "reason": alert.reason,
        "dest_ip": alert.dest_ip,
        "dest_port": int(alert.dest_port),
        "proto": alert.proto,
        "score": float(alert.score),
        "severity": int(alert.severity),
    }
    feature = alert.extra.get("feature") if alert.extra else None
    if feature:
        sample["feature"] = str(feature)
    return sample


def _kind_of_sample(sample: Mapping[str, Any]) -> str:
    feature = sample.get("feature")
    return f"{sample.get('category', '')}/{feature}" if feature else str(sample.get("category", ""))


@dataclass(slots=True)
class Incident:
    """Alerts of one (site, device, cause), with what a SOC tracks about them.

    Attributes
    ----------
    incident_id
        Deterministic id (:func:`incident_id_for`).
    site_id, device_id, cause
        The key.
    status
        ``open``, ``acknowledged``, ``expected`` or ``resolved``.
    severity
        The most severe alert folded (1 high, 2 medium, 3 low).
    first_ts, last_ts
        Time of the earliest and latest alert folded (epoch seconds).
    count
        Alerts folded.
    categories
        Distinct alert categories, sorted.
    evidence
        At most :data:`MAX_EVIDENCE` samples (:func:`evidence_sample`), in folding order.
    evidence_kinds
        Distinct evidence kinds (:func:`evidence_kind`), sorted.
    assignee
        Who works on it (``None``: nobody).
    previous_id
        The incident of the same key this one follows (``""``: none).
    updated
        When it last changed: the latest folded alert's time, or the time of an operator action.
    """

    incident_id: str
    site_id: str
    device_id: str
    cause: str
    status: str = "open"
    severity: int = 3
    first_ts: float = 0.0
    last_ts: float = 0.0
    count: int = 0
    categories: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    evidence_kinds: list[str] = field(default_factory=list)
    assignee: str | None = None
    previous_id: str = ""
    updated: float = 0.0

    @property
    def key(self) -> IncidentKey:
        """``(site_id, device_id, cause)``."""
        return (self.site_id, self.device_id, self.cause)

    @property
    def active(self) -> bool:
        """Open or acknowledged: new alerts of its key join it."""
        return self.status in ACTIVE_STATUSES

    def copy(self) -> Incident:
        """A copy whose lists can be changed without touching this one."""
        return dataclasses.replace(
            self,
            categories=list(self.categories),
            evidence=[dict(s) for s in self.evidence],
            evidence_kinds=list(self.evidence_kinds),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (every field)."""
        return {
            "incident_id": self.incident_id,
            "site_id": self.site_id,
            "device_id": self.device_id,
            "cause": self.cause,
            "status": self.status,
            "severity": int(self.severity),
            "first_ts": float(self.first_ts),
            "last_ts": float(self.last_ts),
            "count": int(self.count),
            "categories": list(self.categories),
            "evidence": [dict(s) for s in self.evidence],
            "evidence_kinds": list(self.evidence_kinds),
            "assignee": self.assignee,
            "previous_id": self.previous_id,
            "updated": float(self.updated),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Incident:
        """Inverse of :meth:`to_dict` (unknown keys ignored).

        Raises
        ------
        ValueError
            For an unknown status.
        """
        status = str(d.get("status", "open"))
        if status not in INCIDENT_STATUSES:
            raise ValueError(f"unknown incident status {status!r}")
        return cls(
            incident_id=str(d["incident_id"]),
            site_id=str(d["site_id"]),
            device_id=str(d["device_id"]),
            cause=str(d["cause"]),
            status=status,
            severity=int(d.get("severity", 3)),
            first_ts=float(d.get("first_ts", 0.0)),
            last_ts=float(d.get("last_ts", 0.0)),
            count=int(d.get("count", 0)),
            categories=[str(c) for c in d.get("categories", [])],
            evidence=[dict(s) for s in d.get("evidence", [])],
            evidence_kinds=[str(k) for k in d.get("evidence_kinds", [])],
            assignee=None if d.get("assignee") is None else str(d["assignee"]),
            previous_id=str(d.get("previous_id") or ""),
            updated=float(d.get("updated", 0.0)),
        )


def _add_evidence(evidence: list[dict[str, Any]], sample: dict[str, Any], limit: int) -> None:
    """Append ``sample``, making room as the module docstring says."""
    if len(evidence) >= limit > 0:
        kinds = [_kind_of_sample(s) for s in evidence]
        drop = next(
            (i for i in range(1, len(evidence)) if kinds.count(kinds[i]) > 1),
            1 if len(evidence) > 1 else 0,
        )
        del evidence[drop]
    if limit > 0:
        evidence.append(sample)


def _opened_by(alert: Alert, previous_id: str, max_evidence: int) -> Incident:
    site, device, cause = incident_key(alert)
    ts = float(alert.timestamp)
    inc = Incident(
        incident_id=incident_id_for(site, device, cause, ts, previous_id),
        site_id=site,
        device_id=device,
        cause=cause,
        status="open",
        severity=int(alert.severity),
        first_ts=ts,
        last_ts=ts,
        count=1,
        categories=[alert.category],
        evidence_kinds=[evidence_kind(alert)],
        previous_id=previous_id,
        updated=ts,
    )
    _add_evidence(inc.evidence, evidence_sample(alert), max_evidence)
    return inc


def fold(
    incident: Incident | None, alert: Alert, *, max_evidence: int = MAX_EVIDENCE
) -> tuple[Incident, str | None]:
    """Fold one alert into the current incident of its key (see the module docstring).

    Parameters
    ----------
    incident
        The current incident of the alert's key (``None``: the key has none yet). Not changed.
    alert
        A traffic alert (:func:`forms_incident`); its ``incident_id`` is set.
    max_evidence
        The most evidence samples kept.

    Returns
    -------
    tuple
        ``(incident after the alert, event)``: the event is :data:`OPENED` for a new incident,
        :data:`ESCALATED` for a more severe alert or a new evidence kind, ``None`` for a repeat.

    Raises
    ------
    ValueError
        For a notice or a non-traffic alert, or an incident of another key.
    """
    if not forms_incident(alert):
        raise ValueError(f"a {alert.event_type} of category {alert.category!r} forms no incident")
    if incident is not None and incident.key != incident_key(alert):
        raise ValueError(f"alert of key {incident_key(alert)} folded into incident of key {incident.key}")
    if incident is None or not incident.active:
        new = _opened_by(alert, incident.incident_id if incident is not None else "", max_evidence)
        alert.incident_id = new.incident_id
        return new, OPENED
    inc = incident.copy()
    ts, sev, kind = float(alert.timestamp), int(alert.severity), evidence_kind(alert)
    escalated = sev < inc.severity or kind not in inc.evidence_kinds
    inc.count += 1
    inc.first_ts = min(inc.first_ts, ts)
    inc.last_ts = max(inc.last_ts, ts)
    inc.severity = min(inc.severity, sev)
    if alert.category not in inc.categories:
        inc.categories = sorted([*inc.categories, alert.category])
    if kind not in inc.evidence_kinds:
        inc.evidence_kinds = sorted([*inc.evidence_kinds, kind])
    if escalated or len(inc.evidence) < max_evidence:
        _add_evidence(inc.evidence, evidence_sample(alert), max_evidence)
    inc.updated = max(inc.updated, ts)
    if escalated and inc.status == "acknowledged":
        inc.status = "open"
    alert.incident_id = inc.incident_id
    return inc, ESCALATED if escalated else None


def sink_alert(alert: Alert, incident: Incident | None = None, event: str | None = None) -> Alert:
    """The alert as sinks get it: a copy whose ``extra["incident"]`` tells the incident's state.

    For an alert that opened or escalated ``incident``: ``extra["incident"] = {"id", "event",
    "status", "count", "severity", "cause", "first_ts", "last_ts"}`` (the EVE record's
    ``iotsentry`` object) and the top-level ``incident_id``. Without an incident (a notice, an
    integrity alert) the copy is the alert unchanged.
    """
    extra = dict(alert.extra)
    if incident is not None:
        extra["incident"] = {
            "id": incident.incident_id,
            "event": event,
            "status": incident.status,
            "count": int(incident.count),
            "severity": int(incident.severity),
            "cause": incident.cause,
            "first_ts": float(incident.first_ts),
            "last_ts": float(incident.last_ts),
        }
    return dataclasses.replace(alert, extra=extra)


@dataclass(frozen=True, slots=True)
class IncidentAction:
    """One operator action on an incident held by an :class:`IncidentBook`."""

    incident_id: str
    action: str
    actor: str
    at: float
    value: str | None = None


def _rank(inc: Incident) -> tuple[bool, float, float, str]:
    """Order of the candidates for a key's current incident: active first, then the latest."""
    return (inc.active, inc.last_ts, inc.first_ts, inc.incident_id)


class IncidentBook:
    """The incidents of a run, in memory (batch runs, tests; the store folds with one too).

    Parameters
    ----------
    incidents
        Incidents to start from (e.g. read back from a store after a restart). For each key the
        *current* incident is the active one, else the one with the latest ``last_ts``.
    max_evidence
        The most evidence samples an incident keeps.
    """

    def __init__(self, incidents: Iterable[Incident] = (), *, max_evidence: int = MAX_EVIDENCE) -> None:
        self.max_evidence = int(max_evidence)
        self._by_id: dict[str, Incident] = {}
        self._current: dict[IncidentKey, str] = {}
        self._changed: dict[str, None] = {}
        self.actions: list[IncidentAction] = []
        """Operator actions made through :meth:`set_status` and :meth:`assign`, oldest first."""
        self.notices = 0
        """Notices given to :meth:`fold` (they form no incident)."""
        self.events: dict[str, int] = {OPENED: 0, ESCALATED: 0}
        """How many alerts opened / escalated an incident."""
        for inc in incidents:
            self._by_id[inc.incident_id] = inc.copy()
        for inc in self._by_id.values():
            cur = self._by_id.get(self._current.get(inc.key, ""))
            if cur is None or _rank(inc) > _rank(cur):
                self._current[inc.key] = inc.incident_id

    def current(self, key: IncidentKey) -> Incident | None:
        """The incident new alerts of ``key`` are folded against (``None``: none yet)."""
        inc_id = self._current.get(key)
        return None if inc_id is None else self._by_id[inc_id]

    def fold(self, alert: Alert) -> str | None:
        """Fold one alert (see :func:`fold`); notices and non-traffic alerts are only counted.

        Returns
        -------
        str or None
            ``"opened"``, ``"escalated"`` or ``None``.
        """
        if not forms_incident(alert):
            if is_notice(alert):
                self.notices += 1
            return None
        key = incident_key(alert)
        inc, event = fold(self.current(key), alert, max_evidence=self.max_evidence)
        self._by_id[inc.incident_id] = inc
        self._current[key] = inc.incident_id
        self._changed[inc.incident_id] = None
        if event is not None:
            self.events[event] += 1
        return event

    def fold_many(self, alerts: Iterable[Alert]) -> tuple[list[tuple[Alert, str | None]], list[Alert]]:
        """Fold alerts in time order (ties: the given order), as a whole batch run is folded.

        Returns
        -------
        tuple
            ``(events, for_sinks)``: ``(alert, event)`` in the *given* order, and what alert
            sinks get, in time order: each alert that opened or escalated an incident as
            :func:`sink_alert` makes it, each notice and integrity/canary alert as it is; never a
            repeat.
        """
        given = list(alerts)
        events: dict[int, str | None] = {}
        for_sinks: list[Alert] = []
        for a in sorted(given, key=lambda x: x.timestamp):
            event = self.fold(a)
            events[id(a)] = event
            if not forms_incident(a):
                for_sinks.append(a)
            elif event is not None:
                for_sinks.append(sink_alert(a, self.incident_of(a), event))
        return [(a, events[id(a)]) for a in given], for_sinks

    def get(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        return self._by_id.get(incident_id)

    def incident_of(self, alert: Alert) -> Incident | None:
        """The incident an alert was folded into (by its ``incident_id``)."""
        return self._by_id.get(alert.incident_id) if alert.incident_id else None

    def incidents(self) -> list[Incident]:
        """Every incident, by first alert time (then id)."""
        return sorted(self._by_id.values(), key=lambda i: (i.first_ts, i.incident_id))

    def changed(self) -> list[Incident]:
        """Incidents changed by :meth:`fold`, :meth:`set_status` or :meth:`assign` since the
        book was made (or since :meth:`clear_changed`), in the order they first changed."""
        return [self._by_id[i] for i in self._changed]

    def clear_changed(self) -> None:
        """Forget which incidents changed."""
        self._changed.clear()

    def open_keys(self) -> list[IncidentKey]:
        """Keys whose current incident is open or acknowledged, sorted."""
        return sorted(k for k, i in self._current.items() if self._by_id[i].active)

    def _need(self, incident_id: str) -> Incident:
        inc = self._by_id.get(incident_id)
        if inc is None:
            raise KeyError(f"no incident {incident_id}")
        return inc

    def set_status(self, incident_id: str, status: str, who: str, at: float | None = None) -> Incident:
        """Set an incident's status as operator ``who`` (recorded in :attr:`actions`).

        ``at`` is the action's time (``updated``; default: unchanged, the book has no clock).

        Raises
        ------
        KeyError
            No such incident.
        ValueError
            An unknown status.
        """
        if status not in INCIDENT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(INCIDENT_STATUSES)}")
        inc = self._need(incident_id).copy()
        inc.status = status
        if at is not None:
            inc.updated = float(at)
        self._by_id[incident_id] = inc
        self._changed[incident_id] = None
        self.actions.append(IncidentAction(incident_id, status, who, inc.updated))
        return inc

    def assign(self, incident_id: str, assignee: str | None, who: str, at: float | None = None) -> Incident:
        """Set (``None``: clear) an incident's assignee as operator ``who``.

        Raises
        ------
        KeyError
            No such incident.
        """
        inc = self._need(incident_id).copy()
        inc.assignee = assignee
        if at is not None:
            inc.updated = float(at)
        self._by_id[incident_id] = inc
        self._changed[incident_id] = None
        self.actions.append(IncidentAction(incident_id, "assign", who, inc.updated, assignee))
        return inc


def fold_all(alerts: Iterable[Alert]) -> IncidentBook:
    """A fresh :class:`IncidentBook` with ``alerts`` folded in time order (ties: given order)."""
    book = IncidentBook()
    book.fold_many(alerts)
    return book
