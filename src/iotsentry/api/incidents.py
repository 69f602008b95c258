"""``/incidents``: the SOC's queue. Filtered, paged incidents; one incident with its evidence,
alerts, audit trail and baseline feedback; acknowledge, assign, mark expected, resolve, reopen.

Paging: ``limit`` with ``offset`` or with ``cursor`` (the ``next_cursor`` of the previous page, a
keyset cursor stable while new alerts arrive). Every change needs the ``admin`` scope, is recorded
in the incident's audit trail with the token's name, and in the hash-chained audit log when the
app was given one (``create_app(audit=...)``). Marking an incident expected asks the baseline to
absorb its behaviour (``scope``: the device, or every device of its type / peer group); moving
it away from expected asks to revert that.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from iotsentry.alerts.incidents import INCIDENT_STATUSES
from iotsentry.api.alerts import _epoch
from iotsentry.api.auth import Principal, require_read
from iotsentry.api.deps import Admin, PagingDep, StoreDep
from iotsentry.api.errors import ApiError, not_found
from iotsentry.api.incident_schemas import (
    ExpectedIn,
    IncidentAssignIn,
    IncidentDetailOut,
    IncidentPage,
    IncidentSummaryOut,
    NoteIn,
    feedback_out,
    incident_action_out,
    incident_out,
)
from iotsentry.api.schemas import ErrorOut, alert_out
from iotsentry.store.base import StoreBase as Store
from iotsentry.store.records import IncidentQuery

__all__ = ["decode_incident_cursor", "encode_incident_cursor", "incident_filters", "router"]

router = APIRouter(
    prefix="/incidents",
    tags=["incidents"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)

IncidentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
_Strs = Annotated[list[str] | None, Query(max_length=50)]


def _bad(field: str, msg: str) -> ApiError:
    return ApiError(422, "validation_error", [{"loc": ["query", field], "msg": msg, "type": "value_error"}])


def encode_incident_cursor(last_ts: float, incident_id: str) -> str:
    """The opaque cursor that continues after the incident ``(last_ts, id)``."""
    raw = json.dumps([float(last_ts), str(incident_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_incident_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_incident_cursor`.

    Raises
    ------
    ValueError
        Not a cursor made by :func:`encode_incident_cursor`.
    """
    try:
        ts, incident_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError("malformed cursor")
    if not isinstance(incident_id, str) or len(incident_id) > 64:
        raise ValueError("malformed cursor")
    return float(ts), incident_id


def incident_filters(
    status: Annotated[
        list[str] | None, Query(description="open | acknowledged | expected | resolved; repeat", max_length=4)
    ] = None,
    device_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    cause: _Strs = None,
    min_severity: Annotated[
        int | None, Query(ge=1, le=3, description="at least this severe: 1 = high only, 2 = high and medium")
    ] = None,
    since: Annotated[
        datetime | None, Query(description="active at or after (RFC 3339 or epoch seconds; UTC if no zone)")
    ] = None,
    until: Annotated[datetime | None, Query(description="first seen at or before")] = None,
    assignee: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> IncidentQuery:
    """The incident filters of the query string."""
    bad = [s for s in status or () if s not in INCIDENT_STATUSES]
    if bad:
        raise _bad("status", f"unknown status {bad[0]!r}; choose from {', '.join(INCIDENT_STATUSES)}")
    lo, hi = _epoch(since), _epoch(until)
    if lo is not None and hi is not None and lo > hi:
        raise _bad("until", "until is before since")
    return IncidentQuery(
        statuses=tuple(status or ()),
        device_id=device_id,
        causes=tuple(cause or ()),
        min_severity=min_severity,
        since=lo,
        until=hi,
        assignee=assignee,
    )


Filters = Annotated[IncidentQuery, Depends(incident_filters)]


@router.get("", response_model=IncidentPage, summary="List incidents")
def list_incidents(
    store: StoreDep,
    query: Filters,
    page: PagingDep,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page (offset must be 0)")
    ] = None,
) -> IncidentPage:
    """Incidents matching the filters, most recently active first."""
    after = None
    if cursor is not None:
        try:
            after = decode_incident_cursor(cursor)
        except ValueError as e:
            raise _bad("cursor", str(e)) from None
        if page.offset:
            raise _bad("offset", "use either offset or cursor")
    rows, total = store.query_incidents(query, limit=page.limit + 1, offset=page.offset, after=after)
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    next_cursor = encode_incident_cursor(rows[-1].last_ts, rows[-1].incident_id) if more and rows else None
    return IncidentPage(
        items=[incident_out(i) for i in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_cursor=next_cursor,
    )


@router.get("/summary", response_model=IncidentSummaryOut, summary="Incident counts")
def incident_summary(store: StoreDep, query: Filters) -> IncidentSummaryOut:
    """How many incidents match the filters, how many are active, by status, severity, cause, device."""
    return IncidentSummaryOut(**store.incident_summary(query))


def _detail(store: Store, incident_id: str) -> IncidentDetailOut:
    inc = store.get_incident(incident_id)
    if inc is None:
        raise not_found(f"incident {incident_id}")
    return IncidentDetailOut(
        **incident_out(inc).model_dump(),
        alerts=[alert_out(a) for a in store.incident_alerts(incident_id)],
        history=[incident_action_out(x) for x in store.incident_actions(incident_id)],
        feedback=[feedback_out(f) for f in store.baseline_feedback(incident_id)],
    )


@router.get(
    "/{incident_id}",
    response_model=IncidentDetailOut,
    summary="One incident",
    responses={404: {"model": ErrorOut}},
)
def get_incident(store: StoreDep, incident_id: IncidentId) -> IncidentDetailOut:
    """The incident with its evidence samples, its alert rows, audit trail and baseline feedback."""
    return _detail(store, incident_id)


def _audit(request: Request, action: str, incident_id: str, who: Principal, details: dict[str, Any]) -> None:
    """Record a change in the audit log the app was given (if any), in the token's name."""
    hook = getattr(request.app.state, "audit", None)
    if hook is not None:
        hook(action, f"incident/{incident_id}", {**details, "token_id": who.token_id}, actor=who.name)


def _set_status(
    request: Request,
    store: Store,
    who: Principal,
    incident_id: str,
    status: str,
    note: str | None,
    scope: str | None = None,
) -> IncidentDetailOut:
    done = store.set_incident_status(
        incident_id, status, who.name, scope, note=note, actor_token_id=who.token_id
    )
    if done is None:
        raise not_found(f"incident {incident_id}")
    details: dict[str, Any] = {"status": status, "note": note}
    if scope is not None:
        details["scope"] = scope
    _audit(request, f"incident.{_AUDIT[status]}", incident_id, who, details)
    return _detail(store, incident_id)


_AUDIT = {"acknowledged": "ack", "expected": "expected", "resolved": "resolve", "open": "reopen"}
"""The audit-log action (``incident.<name>``) of each status set through the API."""
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


@router.post(
    "/{incident_id}/acknowledge",
    response_model=IncidentDetailOut,
    summary="Acknowledge an incident [admin]",
    responses=_404,
)
def acknowledge_incident(
    request: Request, store: StoreDep, who: Admin, incident_id: IncidentId, body: NoteIn | None = None
) -> IncidentDetailOut:
    """Someone is on it: repeats stay quiet; an escalation re-opens it."""
    return _set_status(request, store, who, incident_id, "acknowledged", (body or NoteIn(note=None)).note)


@router.post(
    "/{incident_id}/expected",
    response_model=IncidentDetailOut,
    summary="Mark an incident expected behaviour [admin]",
    responses=_404,
)
def mark_expected(
    request: Request, store: StoreDep, who: Admin, incident_id: IncidentId, body: ExpectedIn | None = None
) -> IncidentDetailOut:
    """The behaviour is legitimate: the baseline absorbs it (``scope`` device or group); the
    incident is closed and the behaviour, if it goes on, no longer alerts once absorbed."""
    b = body or ExpectedIn(scope="device", note=None)
    return _set_status(request, store, who, incident_id, "expected", b.note, b.scope)


@router.post(
    "/{incident_id}/resolve",
    response_model=IncidentDetailOut,
    summary="Resolve an incident [admin]",
    responses=_404,
)
def resolve_incident(
    request: Request, store: StoreDep, who: Admin, incident_id: IncidentId, body: NoteIn | None = None
) -> IncidentDetailOut:
    """Dealt with: the next alert of its device and cause opens a new incident."""
    return _set_status(request, store, who, incident_id, "resolved", (body or NoteIn(note=None)).note)


@router.post(
    "/{incident_id}/reopen",
    response_model=IncidentDetailOut,
    summary="Re-open an incident [admin]",
    responses=_404,
)
def reopen_incident(
    request: Request, store: StoreDep, who: Admin, incident_id: IncidentId, body: NoteIn | None = None
) -> IncidentDetailOut:
    """Back to open (from expected: the baseline is asked to revert what it absorbed)."""
    return _set_status(request, store, who, incident_id, "open", (body or NoteIn(note=None)).note)


@router.post(
    "/{incident_id}/assign",
    response_model=IncidentDetailOut,
    summary="Assign an incident to a person [admin]",
    responses=_404,
)
def assign_incident(
    request: Request, store: StoreDep, who: Admin, incident_id: IncidentId, body: IncidentAssignIn
) -> IncidentDetailOut:
    """Set (or with ``null`` clear) the assignee; recorded with the token name."""
    done = store.assign_incident(
        incident_id, body.assignee, who.name, note=body.note, actor_token_id=who.token_id
    )
    if done is None:
        raise not_found(f"incident {incident_id}")
    _audit(request, "incident.assign", incident_id, who, {"assignee": body.assignee, "note": body.note})
    return _detail(store, incident_id)
