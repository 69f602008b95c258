"""Shared route dependencies: the store, the caller and paging parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from iotsentry.api.auth import Principal, require_admin, require_read
from iotsentry.store.base import StoreBase as Store

__all__ = ["MAX_LIMIT", "Admin", "Paging", "Reader", "StoreDep", "get_store", "paging"]

MAX_LIMIT = 1000
"""The largest page any list route returns (``limit`` above it is a 422)."""


def get_store(request: Request) -> Store:
    """The store the app serves."""
    store: Store = request.app.state.store
    return store


@dataclass(frozen=True, slots=True)
class Paging:
    """``limit``/``offset`` of a list route."""

    limit: int
    offset: int


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size (1-{MAX_LIMIT})")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9, description="items to skip")] = 0,
) -> Paging:
    """Validated paging parameters."""
    return Paging(limit, offset)


StoreDep = Annotated[Store, Depends(get_store)]
Reader = Annotated[Principal, Depends(require_read)]
Admin = Annotated[Principal, Depends(require_admin)]
PagingDep = Annotated[Paging, Depends(paging)]
