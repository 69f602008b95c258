"""Shared fixtures: where the real third-party data lives, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pg_server"]
"""A real PostgreSQL server for the store tests (``pg_dsn`` / ``pg_schema_dsn`` fixtures)."""

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IOTSENTRY_DATA", REPO.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Path under ../shared/data; skips the test with a clear reason when it is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (set IOTSENTRY_DATA or place ../shared/data)")
    return p


@pytest.fixture
def data_dir() -> Path:
    if not DATA.exists():
        pytest.skip(f"real data folder not available: {DATA}")
    return DATA
