"""Pydantic models of the ``/incidents`` routes (requests and responses).

Times are seconds since the Unix epoch (UTC, float). Severity follows eve.json: 1 = high,
2 = medium, 3 = low.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotsentry.alerts.incidents import Incident
from iotsentry.api.schemas import AlertOut, Page
from iotsentry.schema import SEVERITY_NAMES
from iotsentry.store.records import BaselineFeedback, IncidentAction

__all__ = [
    "EvidenceOut",
    "ExpectedIn",
    "FeedbackOut",
    "IncidentActionOut",
    "IncidentAssignIn",
    "IncidentCountOut",
    "IncidentDetailOut",
    "IncidentOut",
    "IncidentPage",
    "IncidentSummaryOut",
    "NoteIn",
    "feedback_out",
    "incident_action_out",
    "incident_out",
]


class EvidenceOut(BaseModel):
    """One evidence sample of an incident (what one of its alerts said)."""

    ts: float
    category: str
    detector: str
    reason: str
    dest_ip: str
    dest_port: int
    proto: str
    score: float
    severity: int | None = None
    feature: str | None = Field(None, description="the baseline feature that deviated, when known")


class IncidentOut(BaseModel):
    """An incident: alerts of one (site, device, cause) with what the SOC tracks about them."""

    incident_id: str
    site_id: str
    device_id: str
    cause: str = Field(description="cause family: scan, brute-force, c2, flood, novelty, ...")
    status: str = Field(description="open | acknowledged | expected | resolved")
    severity: int = Field(description="the most severe alert folded: 1 = high, 2 = medium, 3 = low")
    severity_name: str
    first_ts: float
    last_ts: float
    count: int = Field(description="alerts folded into it")
    categories: list[str]
    evidence_kinds: list[str] = Field(description="distinct category/feature kinds seen")
    evidence: list[EvidenceOut] = Field(description="at most 10 samples, oldest first")
    assignee: str | None
    previous_id: str | None = Field(description="the incident of the same key this one follows")
    updated: float


class IncidentActionOut(BaseModel):
    """One entry of an incident's audit trail."""

    id: int
    action: str = Field(description="acknowledge | expect | resolve | reopen | assign | unassign | escalate")
    actor: str = Field(description="name of the token that did it (iotsentry: the engine)")
    actor_token_id: int | None
    at: float
    value: str | None = Field(description="the assignee for assign, the scope for expect")
    note: str | None


class FeedbackOut(BaseModel):
    """A baseline feedback request made by marking the incident expected (or undoing it)."""

    id: int
    scope: str = Field(description="device | group")
    action: str = Field(description="absorb | revert")
    created: float
    created_by: str
    applied_at: float | None = Field(description="when the baseline applied it (null: pending)")
    result: str | None


class IncidentDetailOut(IncidentOut):
    """An incident with its alert rows, its audit trail and its baseline feedback."""

    alerts: list[AlertOut]
    history: list[IncidentActionOut]
    feedback: list[FeedbackOut]


class IncidentPage(Page[IncidentOut]):
    """A page of incidents; ``next_cursor`` fetches the following page (null: no more)."""

    next_cursor: str | None


class IncidentCountOut(BaseModel):
    """Incidents per value of a field (``active``: open or acknowledged)."""

    key: str | int
    total: int
    active: int


class IncidentSummaryOut(BaseModel):
    """Counts of the incidents matching the filters."""

    total: int
    active: int
    by_status: list[IncidentCountOut]
    by_severity: list[IncidentCountOut]
    by_cause: list[IncidentCountOut]
    by_device: list[IncidentCountOut]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoteIn(_Body):
    """Body of ``acknowledge``, ``resolve`` and ``reopen`` (optional)."""

    note: str | None = Field(None, max_length=2000)


class ExpectedIn(NoteIn):
    """Body of ``POST /incidents/{id}/expected``."""

    scope: Literal["device", "group"] = Field(
        "device", description="absorb into this device's baseline, or every device of its type / peer group"
    )


class IncidentAssignIn(_Body):
    """Body of ``POST /incidents/{id}/assign``; ``assignee`` null unassigns."""

    assignee: str | None = Field(..., min_length=1, max_length=200)
    note: str | None = Field(None, max_length=2000)

    @field_validator("assignee")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("assignee must be printable text")
        return v


def _sample(s: dict[str, Any]) -> EvidenceOut:
    return EvidenceOut(
        ts=float(s.get("ts", 0.0)),
        category=str(s.get("category", "")),
        detector=str(s.get("detector", "")),
        reason=str(s.get("reason", "")),
        dest_ip=str(s.get("dest_ip", "")),
        dest_port=int(s.get("dest_port", 0)),
        proto=str(s.get("proto", "")),
        score=float(s.get("score", 0.0)),
        severity=None if s.get("severity") is None else int(s["severity"]),
        feature=None if s.get("feature") is None else str(s["feature"]),
    )


def incident_out(i: Incident) -> IncidentOut:
    """The API shape of an incident."""
    return IncidentOut(
        incident_id=i.incident_id,
        site_id=i.site_id,
        device_id=i.device_id,
        cause=i.cause,
        status=i.status,
        severity=i.severity,
        severity_name=SEVERITY_NAMES.get(i.severity, str(i.severity)),
        first_ts=i.first_ts,
        last_ts=i.last_ts,
        count=i.count,
        categories=list(i.categories),
        evidence_kinds=list(i.evidence_kinds),
        evidence=[_sample(s) for s in i.evidence],
        assignee=i.assignee,
        previous_id=i.previous_id or None,
        updated=i.updated,
    )


def incident_action_out(x: IncidentAction) -> IncidentActionOut:
    """The API shape of an incident's audit-trail entry."""
    return IncidentActionOut(
        id=x.id,
        action=x.action,
        actor=x.actor,
        actor_token_id=x.actor_token_id,
        at=x.at,
        value=x.value,
        note=x.note,
    )


def feedback_out(f: BaselineFeedback) -> FeedbackOut:
    """The API shape of a baseline feedback row (its evidence is the incident's own)."""
    return FeedbackOut(
        id=f.id,
        scope=f.scope,
        action=f.action,
        created=f.created,
        created_by=f.created_by,
        applied_at=f.applied_at,
        result=f.result,
    )
