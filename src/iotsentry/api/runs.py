"""``/runs``: the analysis runs that filled the store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from iotsentry.api.auth import require_read
from iotsentry.api.deps import PagingDep, StoreDep
from iotsentry.api.errors import not_found
from iotsentry.api.schemas import ErrorOut, Page, RunOut

__all__ = ["router"]

router = APIRouter(
    prefix="/runs",
    tags=["runs"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)


@router.get("", response_model=Page[RunOut], summary="List runs")
def list_runs(
    store: StoreDep,
    page: PagingDep,
    status: Annotated[str | None, Query(pattern="^(running|ok|failed)$")] = None,
    command: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> Page[RunOut]:
    """Runs, most recent first."""
    items, total = store.query_runs(status=status, command=command, limit=page.limit, offset=page.offset)
    return Page[RunOut](items=[RunOut(**r) for r in items], total=total, limit=page.limit, offset=page.offset)


@router.get("/{run_id}", response_model=RunOut, summary="One run", responses={404: {"model": ErrorOut}})
def get_run(store: StoreDep, run_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> RunOut:
    """The run with its inputs and statistics."""
    run = store.get_run(run_id)
    if run is None:
        raise not_found(f"run {run_id}")
    return RunOut(**run)
