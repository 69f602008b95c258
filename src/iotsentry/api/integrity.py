"""``/integrity``: the monitor's self-checks, today the canary coverage per attack class.

The always-on monitor (``iotsentry serve``) replays synthetic canary attacks through its
detector (:mod:`iotsentry.integrity.canary`) and stores each run's outcome per class in the
store's ``canary_runs`` table; this router serves them.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from iotsentry.api.auth import require_read
from iotsentry.api.deps import PagingDep, StoreDep
from iotsentry.api.schemas import ErrorOut, Page
from iotsentry.store.records import CanaryResult

__all__ = ["CanaryCoverageOut", "CanaryResultOut", "canary_out", "router"]

router = APIRouter(
    prefix="/integrity",
    tags=["integrity"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)


class CanaryResultOut(BaseModel):
    """The outcome of one canary attack class in one canary run."""

    id: int
    ts: float = Field(description="when the canary run happened (epoch seconds)")
    detector: str
    attack_class: str = Field(description="the canary class, e.g. port-scan")
    detected: bool
    score: float | str | None = Field(description="the detector's score; 'inf'/'-inf' as text; null: NaN")
    threshold: float | str | None = Field(description="the detector's threshold, like score")
    device_id: str = Field(description="the device the canary impersonated")
    canary_run: str = Field(description="id shared by the classes replayed together")


class CanaryCoverageOut(BaseModel):
    """The latest result of every attack class and a page of the history (newest first)."""

    latest: list[CanaryResultOut] = Field(description="the most recent result per class, by class")
    history: Page[CanaryResultOut]


def _num(x: float | None) -> float | str | None:
    """A JSON-safe number: non-finite values as text (JSON has no infinity)."""
    if x is None:
        return None
    return float(x) if math.isfinite(x) else str(x)


def canary_out(r: CanaryResult) -> CanaryResultOut:
    """The API shape of a stored canary result."""
    return CanaryResultOut(
        id=int(r.id or 0),
        ts=r.ts,
        detector=r.detector,
        attack_class=r.attack_class,
        detected=r.detected,
        score=_num(r.score),
        threshold=_num(r.threshold),
        device_id=r.device_id,
        canary_run=r.canary_run,
    )


@router.get("/canaries", response_model=CanaryCoverageOut, summary="Canary coverage per attack class")
def canary_coverage(
    store: StoreDep,
    page: PagingDep,
    attack_class: Annotated[
        str | None, Query(min_length=1, max_length=100, description="history of this class only")
    ] = None,
) -> CanaryCoverageOut:
    """The latest canary result per attack class, and the history (paged, newest first)."""
    items, total = store.query_canary_results(attack_class=attack_class, limit=page.limit, offset=page.offset)
    return CanaryCoverageOut(
        latest=[canary_out(r) for r in store.latest_canary_results()],
        history=Page[CanaryResultOut](
            items=[canary_out(r) for r in items], total=total, limit=page.limit, offset=page.offset
        ),
    )
