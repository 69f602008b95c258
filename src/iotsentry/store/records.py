"""Records and query descriptions of the store's read/write API used by the REST API.

They are plain dataclasses, independent of the database backend: the SQLite :class:`Store`
fills them today and a PostgreSQL backend will fill the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from iotsentry.alerts.incidents import Incident
from iotsentry.schema import Alert, Device

__all__ = [
    "FEEDBACK_SCOPES",
    "TOKEN_SCOPES",
    "AlertAction",
    "AlertCommit",
    "AlertQuery",
    "ApiToken",
    "BaselineFeedback",
    "CanaryResult",
    "DeviceQuery",
    "DeviceSummary",
    "IncidentAction",
    "IncidentQuery",
]

TOKEN_SCOPES = ("read", "admin")
"""The scopes an API token can have; ``admin`` implies ``read``."""

FEEDBACK_SCOPES = ("device", "group")
"""Where marking an incident expected absorbs its behaviour: the device's own baseline, or every
device of its type / peer group."""


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored API token (only the SHA-256 of the secret is kept, never the secret).

    Times are seconds since the epoch (UTC); ``expires_at``/``revoked_at``/``last_used_at`` are
    ``None`` when not set.
    """

    id: int
    name: str
    scope: str
    token_hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    def is_valid(self, now: float) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description without the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters of :meth:`Store.query_alerts`; every field left at its default does not filter.

    Parameters
    ----------
    device_id
        Only this device's alerts.
    severities, categories, detectors
        Only alerts whose value is one of these (empty: any).
    since, until
        Only alerts active in the range: ``last_ts >= since`` and ``first_ts <= until``.
    acknowledged
        ``True``/``False``: only acknowledged / open alerts.
    assigned
        ``True``/``False``: only alerts with / without an assignee.
    assignee
        Only alerts assigned to exactly this person.
    run_id
        Only alerts (last) written by this run.
    event_types
        Only alerts of these event types (``alert``, ``notice``, ``integrity``, ``canary``;
        empty: any).
    incident_id
        Only the alerts (last) folded into this incident.
    """

    device_id: str | None = None
    severities: Sequence[int] = ()
    categories: Sequence[str] = ()
    detectors: Sequence[str] = ()
    since: float | None = None
    until: float | None = None
    acknowledged: bool | None = None
    assigned: bool | None = None
    assignee: str | None = None
    run_id: int | None = None
    event_types: Sequence[str] = ()
    incident_id: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    """Filters of :meth:`StoreBase.query_incidents`; every field left at its default does not filter.

    Parameters
    ----------
    statuses
        Only incidents with one of these statuses (empty: any).
    device_id
        Only this device's incidents.
    causes
        Only these causes (empty: any).
    min_severity
        Only incidents at least this severe: ``severity <= min_severity`` (1 keeps only high).
    since, until
        Only incidents active in the range: ``last_ts >= since`` and ``first_ts <= until``.
    assignee
        Only incidents assigned to exactly this person.
    site_id
        Only this site's incidents.
    """

    statuses: Sequence[str] = ()
    device_id: str | None = None
    causes: Sequence[str] = ()
    min_severity: int | None = None
    since: float | None = None
    until: float | None = None
    assignee: str | None = None
    site_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters of :meth:`Store.query_devices`; defaults do not filter.

    Parameters
    ----------
    vendor
        Case-insensitive substring of the vendor name.
    device_type
        Exact device type (case-insensitive), e.g. ``camera``.
    mature
        ``True``/``False``: only devices whose latest baseline is / is not mature (a device
        without a baseline counts as not mature).
    min_maturity, max_maturity
        Range of the latest baseline's maturity score (devices without a baseline have none and
        are excluded by either bound).
    is_gateway
        Only gateways / only non-gateways.
    search
        Case-insensitive substring of the id, MAC, vendor, names or IP addresses.
    """

    vendor: str | None = None
    device_type: str | None = None
    mature: bool | None = None
    min_maturity: float | None = None
    max_maturity: float | None = None
    is_gateway: bool | None = None
    search: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """A device with its latest baseline's maturity, its alert counts (notices apart) and how
    many of its incidents are open or acknowledged."""

    device: Device
    maturity: float | None
    mature: bool
    baseline_run_id: int | None
    baseline_updated: float | None
    open_alerts: int
    alerts: int
    notices: int = 0
    open_incidents: int = 0


@dataclass(frozen=True, slots=True)
class AlertAction:
    """One entry of an alert's audit trail (acknowledge, unacknowledge, assign, unassign)."""

    id: int
    alert_id: int
    action: str
    actor: str
    actor_token_id: int | None
    at: float
    value: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "id": self.id,
            "alert_id": self.alert_id,
            "action": self.action,
            "actor": self.actor,
            "actor_token_id": self.actor_token_id,
            "at": self.at,
            "value": self.value,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """The outcome of one canary attack class in one canary run (a row of ``canary_runs``).

    Attributes
    ----------
    ts
        When the canary run happened (seconds since the epoch, UTC).
    detector
        The detector the canary was replayed through.
    attack_class
        The canary class (e.g. ``"port-scan"``; the ``class`` column).
    detected
        Whether the detector flagged it.
    score, threshold
        The detector's score and threshold; ``None`` when not a finite number.
    device_id
        The device the canary impersonated (``""`` when unknown).
    canary_run
        The id of the canary run (shared by the classes replayed together).
    id
        The row id (``None`` before it is stored).
    """

    ts: float
    detector: str
    attack_class: str
    detected: bool
    score: float | None
    threshold: float | None
    device_id: str = ""
    canary_run: str = ""
    id: int | None = None


@dataclass(frozen=True, slots=True)
class IncidentAction:
    """One entry of an incident's audit trail (acknowledge, expect, resolve, reopen, assign,
    unassign; ``escalate`` when new evidence re-opened an acknowledged incident)."""

    id: int
    incident_id: str
    action: str
    actor: str
    actor_token_id: int | None
    at: float
    value: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "action": self.action,
            "actor": self.actor,
            "actor_token_id": self.actor_token_id,
            "at": self.at,
            "value": self.value,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class BaselineFeedback:
    """A request to absorb (or stop absorbing) an incident's behaviour into a baseline.

    Written by :meth:`StoreBase.set_incident_status`: ``absorb`` when an operator marks an
    incident expected, ``revert`` when an expected incident is moved to another status. The
    baseline stage applies pending rows (:meth:`StoreBase.pending_feedback`) and records the
    outcome (:meth:`StoreBase.mark_feedback_applied`).

    Attributes
    ----------
    id
        Row id (applied in id order).
    incident_id, device_id
        The incident and its device.
    scope
        ``device`` (its own baseline) or ``group`` (every device of its type / peer group).
    action
        ``absorb`` or ``revert``.
    evidence
        ``{"cause", "categories", "evidence_kinds", "evidence", "severity", "count", "first_ts",
        "last_ts", "site_id", "device_type"}``: what the incident saw (``evidence`` is its list
        of samples, each with ``ts``, ``category``, ``detector``, ``reason``, ``dest_ip``,
        ``dest_port``, ``proto``, ``score``, ``severity`` and ``feature`` when known).
    created, created_by
        When and by whom (the token's name, or the CLI user).
    applied_at, result
        When the baseline stage applied it and what it reported (``None`` while pending).
    """

    id: int
    incident_id: str
    device_id: str
    scope: str
    action: str
    evidence: dict[str, Any]
    created: float
    created_by: str
    applied_at: float | None = None
    result: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "device_id": self.device_id,
            "scope": self.scope,
            "action": self.action,
            "evidence": self.evidence,
            "created": self.created,
            "created_by": self.created_by,
            "applied_at": self.applied_at,
            "result": self.result,
        }


@dataclass(slots=True)
class AlertCommit:
    """What :meth:`StoreBase.commit_alerts` stored in its one transaction.

    Attributes
    ----------
    new_rows
        New alert rows (repeats merge into existing rows).
    events
        ``(alert, event)`` for every alert given, in the given order (they are folded in time
        order): ``"opened"`` / ``"escalated"`` when it
        opened or escalated an incident, ``None`` otherwise (a repeat, a notice, an integrity
        alert, or incidents given by the caller).
    incidents
        The incidents written, in the order they first changed (their state after the commit).
    to_sinks
        What alert sinks get (and what the outbox queued): each alert that opened or escalated an
        incident (:func:`~iotsentry.alerts.incidents.sink_alert`: with the incident's id,
        status and count), each notice and each integrity/canary alert once; never a repeat;
        in time order.
    """

    new_rows: int = 0
    events: list[tuple[Alert, str | None]] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    to_sinks: list[Alert] = field(default_factory=list)
