"""``/health``: whether the store answers and its schema version (needs a token like every route)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from iotsentry.api.auth import require_read
from iotsentry.api.deps import StoreDep
from iotsentry.api.schemas import ErrorOut, HealthOut
from iotsentry.store.migrations import MIGRATIONS

__all__ = ["router"]

router = APIRouter(
    tags=["health"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)


@router.get("/health", response_model=HealthOut, summary="Store reachable, schema version")
def health(store: StoreDep) -> HealthOut:
    """``ok`` when the store answers with the schema version this code expects, else ``degraded``."""
    expected = len(MIGRATIONS)
    try:
        version = store.ping()
    except Exception as e:  # report, do not fail: this is what health checks are for
        return HealthOut(
            status="degraded",
            store_reachable=False,
            schema_version=None,
            expected_schema_version=expected,
            error=f"{type(e).__name__}: {e}",
        )
    ok = version == expected
    return HealthOut(
        status="ok" if ok else "degraded",
        store_reachable=True,
        schema_version=version,
        expected_schema_version=expected,
        error=None if ok else f"schema version {version}, expected {expected}",
    )
