"""``/baselines``: the latest baseline of every device, and one device's baseline history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from iotsentry.api.auth import require_read
from iotsentry.api.deps import PagingDep, StoreDep
from iotsentry.api.errors import not_found
from iotsentry.api.schemas import BaselineOut, ErrorOut, Page

__all__ = ["router"]

router = APIRouter(
    prefix="/baselines",
    tags=["baselines"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)

_Profile = Annotated[bool, Query(description="include the (large) profile of each baseline")]


@router.get("", response_model=Page[BaselineOut], summary="Latest baseline of every device")
def list_baselines(
    store: StoreDep,
    page: PagingDep,
    mature: bool | None = None,
    include_profile: _Profile = False,
) -> Page[BaselineOut]:
    """The most recently saved baseline of each device, ordered by device id."""
    items, total = store.query_latest_baselines(
        mature=mature, include_profile=include_profile, limit=page.limit, offset=page.offset
    )
    return Page[BaselineOut](
        items=[BaselineOut(**b) for b in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get(
    "/{device_id}",
    response_model=Page[BaselineOut],
    summary="Baseline history of one device",
    responses={404: {"model": ErrorOut}},
)
def device_baselines(
    store: StoreDep, page: PagingDep, device_id: str, include_profile: _Profile = True
) -> Page[BaselineOut]:
    """Every baseline saved for the device, newest first (404 if the device is unknown)."""
    items, total = store.baseline_history(
        device_id, include_profile=include_profile, limit=page.limit, offset=page.offset
    )
    if total == 0 and store.get_device(device_id) is None:
        raise not_found(f"device {device_id!r}")
    return Page[BaselineOut](
        items=[BaselineOut(**b) for b in items], total=total, limit=page.limit, offset=page.offset
    )
