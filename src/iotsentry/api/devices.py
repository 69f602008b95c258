"""``/devices``: the inventory with filters and paging, and one device with its latest baseline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from iotsentry.api.auth import require_read
from iotsentry.api.deps import PagingDep, StoreDep
from iotsentry.api.errors import not_found
from iotsentry.api.schemas import BaselineOut, DeviceDetailOut, DeviceOut, ErrorOut, Page, device_out
from iotsentry.store.records import DeviceQuery

__all__ = ["router"]

router = APIRouter(
    prefix="/devices",
    tags=["devices"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)

_Text = Annotated[str | None, Query(min_length=1, max_length=200)]


@router.get("", response_model=Page[DeviceOut], summary="List devices")
def list_devices(
    store: StoreDep,
    page: PagingDep,
    vendor: Annotated[_Text, Query(description="case-insensitive substring of the vendor")] = None,
    device_type: Annotated[_Text, Query(alias="type", description="device type, e.g. camera")] = None,
    mature: Annotated[bool | None, Query(description="latest baseline mature or not")] = None,
    min_maturity: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    max_maturity: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    is_gateway: bool | None = None,
    q: Annotated[_Text, Query(description="substring of id, MAC, vendor, names or IPs")] = None,
) -> Page[DeviceOut]:
    """Devices ordered by id, with their latest baseline's maturity and alert counts."""
    query = DeviceQuery(
        vendor=vendor,
        device_type=device_type,
        mature=mature,
        min_maturity=min_maturity,
        max_maturity=max_maturity,
        is_gateway=is_gateway,
        search=q,
    )
    items, total = store.query_devices(query, limit=page.limit, offset=page.offset)
    return Page[DeviceOut](
        items=[DeviceOut(**device_out(s)) for s in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get(
    "/{device_id}",
    response_model=DeviceDetailOut,
    summary="One device with its latest baseline",
    responses={404: {"model": ErrorOut}},
)
def get_device(store: StoreDep, device_id: str) -> DeviceDetailOut:
    """The device, its maturity and alert counts, and its latest baseline with the full profile."""
    summary = store.get_device_summary(device_id)
    if summary is None:
        raise not_found(f"device {device_id!r}")
    history, _ = store.baseline_history(device_id, limit=1)
    baseline = BaselineOut(**history[0]) if history else None
    return DeviceDetailOut(**device_out(summary), baseline=baseline)
