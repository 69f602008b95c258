"""``/alerts``: filtered, paged alerts; one alert with its audit trail; acknowledge; assign.

Alerts are the raw records; the SOC's queue is ``/incidents`` (alerts folded per device and
cause). Notices (``event_type=notice``: a device fell silent or offline) are listed here too and
counted apart from security alerts by ``/alerts/summary``.

Paging: ``limit`` with ``offset`` or with ``cursor`` (the ``next_cursor`` of the previous
page: a keyset cursor, stable while new alerts arrive). ``total`` counts every alert matching the
filters, whatever the page. Acknowledging and assigning need the ``admin`` scope and are
recorded with the token's name and the time.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from iotsentry.api.auth import require_read
from iotsentry.api.deps import Admin, PagingDep, StoreDep
from iotsentry.api.errors import ApiError, not_found
from iotsentry.api.schemas import (
    AckIn,
    AlertDetailOut,
    AlertPage,
    AlertSummaryOut,
    AssignIn,
    ErrorOut,
    action_out,
    alert_out,
)
from iotsentry.store.base import StoreBase as Store
from iotsentry.store.records import AlertQuery

__all__ = ["alert_filters", "decode_cursor", "encode_cursor", "router"]

router = APIRouter(
    prefix="/alerts",
    tags=["alerts"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)

AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_Strs = Annotated[list[str] | None, Query(max_length=50)]


def encode_cursor(last_ts: float, alert_id: int) -> str:
    """The opaque cursor that continues after the alert ``(last_ts, id)``."""
    raw = json.dumps([float(last_ts), int(alert_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """Inverse of :func:`encode_cursor`.

    Raises
    ------
    ValueError
        Not a cursor made by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, alert_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError("malformed cursor")
    if not isinstance(alert_id, int) or isinstance(alert_id, bool) or alert_id < 0:
        raise ValueError("malformed cursor")
    return float(ts), alert_id


def _epoch(t: datetime | None) -> float | None:
    if t is None:
        return None
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def alert_filters(
    device_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    severity: Annotated[
        list[Annotated[int, Field(ge=1, le=4)]] | None,
        Query(description="1 = high, 2 = medium, 3 = low, 4 = info (notices); repeat", max_length=4),
    ] = None,
    category: _Strs = None,
    detector: _Strs = None,
    since: Annotated[
        datetime | None, Query(description="active at or after (RFC 3339 or epoch seconds; UTC if no zone)")
    ] = None,
    until: Annotated[datetime | None, Query(description="first seen at or before")] = None,
    acknowledged: bool | None = None,
    assigned: Annotated[bool | None, Query(description="has an assignee or not")] = None,
    assignee: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    run_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    event_type: Annotated[
        list[Annotated[str, Field(pattern=r"^(alert|notice|integrity|canary)$")]] | None,
        Query(description="alert | notice | integrity | canary; repeat for several", max_length=4),
    ] = None,
    incident_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> AlertQuery:
    """The alert filters of the query string."""
    lo, hi = _epoch(since), _epoch(until)
    if lo is not None and hi is not None and lo > hi:
        raise ApiError(422, "validation_error", [{"loc": ["query", "until"], "msg": "until is before since",
                                                  "type": "value_error"}])  # fmt: skip
    return AlertQuery(
        device_id=device_id,
        severities=tuple(severity or ()),
        categories=tuple(category or ()),
        detectors=tuple(detector or ()),
        since=lo,
        until=hi,
        acknowledged=acknowledged,
        assigned=assigned,
        assignee=assignee,
        run_id=run_id,
        event_types=tuple(event_type or ()),
        incident_id=incident_id,
    )


Filters = Annotated[AlertQuery, Depends(alert_filters)]


@router.get("", response_model=AlertPage, summary="List alerts")
def list_alerts(
    store: StoreDep,
    query: Filters,
    page: PagingDep,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page (offset must be 0)")
    ] = None,
) -> AlertPage:
    """Alerts matching the filters, most recently active first."""
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError as e:
            raise ApiError(
                422, "validation_error", [{"loc": ["query", "cursor"], "msg": str(e), "type": "value_error"}]
            ) from None
        if page.offset:
            raise ApiError(
                422,
                "validation_error",
                [{"loc": ["query", "offset"], "msg": "use either offset or cursor", "type": "value_error"}],
            )
    rows, total = store.query_alerts(query, limit=page.limit + 1, offset=page.offset, after=after)
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    next_cursor = encode_cursor(rows[-1].last_ts, rows[-1].id) if more and rows else None
    return AlertPage(
        items=[alert_out(a) for a in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_cursor=next_cursor,
    )


@router.get("/summary", response_model=AlertSummaryOut, summary="Alert counts")
def alert_summary(store: StoreDep, query: Filters) -> AlertSummaryOut:
    """How many alerts match the filters, how many are open, by severity, category and device.

    Notices are not security alerts: unless ``event_type`` is given they are left out of these
    counts and counted apart in ``notices``."""
    return AlertSummaryOut(**store.alert_summary(query))


def _detail(store: Store, alert_id: int) -> AlertDetailOut:
    alert = store.get_alert(alert_id)
    if alert is None:
        raise not_found(f"alert {alert_id}")
    history = [action_out(x) for x in store.alert_actions(alert_id)]
    return AlertDetailOut(**alert_out(alert).model_dump(), history=history)


@router.get(
    "/{alert_id}", response_model=AlertDetailOut, summary="One alert", responses={404: {"model": ErrorOut}}
)
def get_alert(store: StoreDep, alert_id: AlertId) -> AlertDetailOut:
    """The alert with its audit trail (acknowledgements and assignments, oldest first)."""
    return _detail(store, alert_id)


@router.post(
    "/{alert_id}/ack",
    response_model=AlertDetailOut,
    summary="Acknowledge (or re-open) an alert [admin]",
    responses={404: {"model": ErrorOut}},
)
def acknowledge_alert(
    request: Request, store: StoreDep, who: Admin, alert_id: AlertId, body: AckIn | None = None
) -> AlertDetailOut:
    """Mark the alert acknowledged (``{"acknowledged": false}`` re-opens it); recorded with the token name."""
    b = body or AckIn(acknowledged=True, note=None)
    done = store.set_alert_acknowledged(
        alert_id, who.name, acknowledged=b.acknowledged, note=b.note, actor_token_id=who.token_id
    )
    if done is None:
        raise not_found(f"alert {alert_id}")
    action = "alert.ack" if b.acknowledged else "alert.reopen"
    _audit(request, action, alert_id, who, {"note": b.note})
    return _detail(store, alert_id)


def _audit(request: Request, action: str, alert_id: int, who: Any, details: dict[str, Any]) -> None:
    """Record a change in the audit log the app was given (if any), in the token's name."""
    hook = getattr(request.app.state, "audit", None)
    if hook is not None:
        hook(action, f"alert/{alert_id}", {**details, "token_id": who.token_id}, actor=who.name)


@router.post(
    "/{alert_id}/assign",
    response_model=AlertDetailOut,
    summary="Assign an alert to a person [admin]",
    responses={404: {"model": ErrorOut}},
)
def assign_alert(
    request: Request, store: StoreDep, who: Admin, alert_id: AlertId, body: AssignIn
) -> AlertDetailOut:
    """Set (or with ``null`` clear) the assignee; recorded with the token name."""
    done = store.assign_alert(alert_id, body.assignee, who.name, note=body.note, actor_token_id=who.token_id)
    if done is None:
        raise not_found(f"alert {alert_id}")
    _audit(request, "alert.assign", alert_id, who, {"assignee": body.assignee, "note": body.note})
    return _detail(store, alert_id)
