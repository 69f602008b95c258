"""Pydantic models of the REST API's requests and responses (the JSON shapes of the OpenAPI schema).

All times are seconds since the Unix epoch (UTC, float); the embedded EVE record keeps its
RFC 3339 ``timestamp``. Severity follows eve.json: 1 = high, 2 = medium, 3 = low; 4 = info is
for notices. The ``/incidents`` models are in :mod:`iotsentry.api.incident_schemas`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotsentry.schema import SEVERITY_NAMES
from iotsentry.store.records import AlertAction, DeviceSummary
from iotsentry.store.sqlite import StoredAlert

__all__ = [
    "AckIn",
    "AlertActionOut",
    "AlertDetailOut",
    "AlertOut",
    "AlertPage",
    "AlertSummaryOut",
    "AssignIn",
    "BaselineOut",
    "CountOut",
    "DeviceDetailOut",
    "DeviceOut",
    "ErrorOut",
    "HealthOut",
    "ModelOut",
    "NoticeCountOut",
    "Page",
    "RunOut",
    "SignatureOut",
    "alert_out",
    "device_out",
]

T = TypeVar("T")


class ErrorOut(BaseModel):
    """Every error body."""

    error: str = Field(description="machine-readable code, e.g. not_found, validation_error")
    detail: Any = Field(description="human-readable message, or the list of validation problems")


class Page(BaseModel, Generic[T]):
    """A page of a list: ``items``, how many match in ``total``, and the paging used."""

    items: list[T]
    total: int = Field(description="how many items match the filters (ignores paging)")
    limit: int
    offset: int


class DeviceOut(BaseModel):
    """A device of the inventory with its latest baseline's maturity and its alert counts."""

    device_id: str
    mac: str | None
    ips: list[str]
    vendor: str | None
    names: list[str]
    dns_names: list[str]
    dhcp: dict[str, Any]
    ssdp: list[str]
    user_agents: list[str]
    tls_sni: list[str]
    device_type: str | None
    type_confidence: float
    is_gateway: bool
    is_local: bool
    first_seen: float
    last_seen: float
    packets: int
    bytes: int
    visibility: dict[str, Any] = Field(
        default_factory=dict,
        description="what the sensor can observe of this device's application fields "
        '(e.g. {"dns_names": "observed" | "truncated" | "not seen", "snaplen": 96}); empty: unknown',
    )
    label: str = Field(description="short human name: first host name, else the id")
    maturity: float | None = Field(description="latest baseline's maturity score in [0, 1]; null: none")
    mature: bool
    baseline_run_id: int | None
    baseline_updated: float | None
    alerts: int = Field(description="alert rows of this device (notices apart)")
    open_alerts: int = Field(description="alert rows not acknowledged (notices apart)")
    notices: int = Field(0, description="notice rows of this device (silence, offline)")
    open_incidents: int = Field(0, description="incidents of this device open or acknowledged")


class BaselineOut(BaseModel):
    """One saved baseline (a device's behavioural profile for one run)."""

    device_id: str
    run_id: int | None
    maturity: float
    mature: bool
    updated: float
    profile: dict[str, Any] | None = Field(description="the profile; null when include_profile=false")


class DeviceDetailOut(DeviceOut):
    """A device with its latest baseline (full profile)."""

    baseline: BaselineOut | None


class AlertOut(BaseModel):
    """An alert row: flattened key fields, the store's tracking fields and the EVE record."""

    id: int
    run_id: int | None
    device_id: str
    site_id: str
    timestamp: float = Field(description="time of the (most severe) alert")
    first_ts: float
    last_ts: float
    count: int = Field(description="repeats merged into this row")
    severity: int = Field(description="1 = high, 2 = medium, 3 = low, 4 = info (notices)")
    severity_name: str
    event_type: str = Field("alert", description="alert | notice | integrity | canary")
    incident_id: str | None = Field(None, description="the incident it was (last) folded into")
    category: str
    detector: str
    score: float
    threshold: float
    reason: str
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    proto: str
    acknowledged: bool
    acknowledged_by: str | None = Field(description="token name that acknowledged (null when open)")
    acknowledged_at: float | None
    assignee: str | None
    assigned_by: str | None = Field(description="token name that last (un)assigned")
    assigned_at: float | None
    eve: dict[str, Any] = Field(description="the eve.json-style record")


class AlertActionOut(BaseModel):
    """One entry of an alert's audit trail."""

    id: int
    action: str = Field(description="acknowledge | unacknowledge | assign | unassign")
    actor: str = Field(description="name of the token that did it")
    actor_token_id: int | None
    at: float
    value: str | None = Field(description="the assignee for assign")
    note: str | None


class AlertDetailOut(AlertOut):
    """An alert with its audit trail (oldest first)."""

    history: list[AlertActionOut]


class AlertPage(Page[AlertOut]):
    """A page of alerts; ``next_cursor`` fetches the following page (null: no more)."""

    next_cursor: str | None


class CountOut(BaseModel):
    """Alerts per value of a field."""

    key: str | int
    total: int
    open: int


class NoticeCountOut(BaseModel):
    """Notices matching the filters (counted apart from security alerts)."""

    total: int
    open: int


class AlertSummaryOut(BaseModel):
    """Counts of the alerts matching the filters (notices apart unless asked for by event type)."""

    total: int
    open: int
    by_severity: list[CountOut]
    by_category: list[CountOut]
    by_device: list[CountOut]
    notices: NoticeCountOut = Field(
        default_factory=lambda: NoticeCountOut(total=0, open=0),
        description="notices (silence, offline) with the same filters",
    )


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AckIn(_Body):
    """Body of ``POST /alerts/{id}/ack``."""

    acknowledged: bool = Field(True, description="false re-opens the alert")
    note: str | None = Field(None, max_length=2000)


class AssignIn(_Body):
    """Body of ``POST /alerts/{id}/assign``; ``assignee`` null unassigns."""

    assignee: str | None = Field(..., min_length=1, max_length=200)
    note: str | None = Field(None, max_length=2000)

    @field_validator("assignee")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("assignee must be printable text")
        return v


class RunOut(BaseModel):
    """One run of ``iotsentry analyze`` (or another command writing to the store)."""

    id: int
    started: float
    finished: float | None
    command: str
    inputs: Any
    status: str = Field(description="running | ok | failed")
    stats: dict[str, Any]


class SignatureOut(BaseModel):
    """Verification of a model directory's ``signature.json`` against the trusted keys."""

    status: str = Field(description="verified | unsigned | invalid | not_checked (no trust store)")
    key_id: str | None
    signed_at: str | None
    error: str | None


class ModelFileOut(BaseModel):
    """One file of a model directory."""

    name: str
    size: int


class ModelOut(BaseModel):
    """A model artifact directory: its manifest and its signature status."""

    name: str
    path: str
    manifest: dict[str, Any] | None
    manifest_error: str | None
    files: list[ModelFileOut]
    signature: SignatureOut


class HealthOut(BaseModel):
    """The API and its store."""

    status: str = Field(description="ok | degraded")
    store_reachable: bool
    schema_version: int | None
    expected_schema_version: int
    error: str | None


def alert_out(a: StoredAlert) -> AlertOut:
    """The API shape of a stored alert."""
    al = a.alert
    return AlertOut(
        id=a.id,
        run_id=a.run_id,
        device_id=al.device_id,
        site_id=al.site_id,
        timestamp=al.timestamp,
        first_ts=a.first_ts,
        last_ts=a.last_ts,
        count=a.count,
        severity=al.severity,
        severity_name=SEVERITY_NAMES.get(al.severity, str(al.severity)),
        event_type=al.event_type,
        incident_id=al.incident_id or None,
        category=al.category,
        detector=al.detector,
        score=al.score,
        threshold=al.threshold,
        reason=al.reason,
        src_ip=al.src_ip,
        src_port=al.src_port,
        dest_ip=al.dest_ip,
        dest_port=al.dest_port,
        proto=al.proto,
        acknowledged=a.acknowledged,
        acknowledged_by=a.acknowledged_by if a.acknowledged else None,
        acknowledged_at=a.acknowledged_at if a.acknowledged else None,
        assignee=a.assignee,
        assigned_by=a.assigned_by,
        assigned_at=a.assigned_at,
        eve=al.to_eve(),
    )


def action_out(x: AlertAction) -> AlertActionOut:
    """The API shape of an audit-trail entry."""
    return AlertActionOut(
        id=x.id,
        action=x.action,
        actor=x.actor,
        actor_token_id=x.actor_token_id,
        at=x.at,
        value=x.value,
        note=x.note,
    )


def device_out(s: DeviceSummary) -> dict[str, Any]:
    """The API fields of a device summary (a dict to build :class:`DeviceOut` and subclasses)."""
    d = s.device
    return {
        **d.to_dict(),
        "label": d.label,
        "maturity": s.maturity,
        "mature": s.mature,
        "baseline_run_id": s.baseline_run_id,
        "baseline_updated": s.baseline_updated,
        "alerts": s.alerts,
        "open_alerts": s.open_alerts,
        "notices": s.notices,
        "open_incidents": s.open_incidents,
    }
