"""``GET /integrity/canaries``: canary coverage per attack class (latest + paged history)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette 1.x warns that its TestClient wants httpx2
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from test_rest_api import _endpoints

from iotsentry.api.app import create_app
from iotsentry.api.tokens import create_token
from iotsentry.store import CanaryResult, Store

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s.db") as s:
        yield s


def _results() -> list[CanaryResult]:
    """Two canary runs: port-scan detected then missed, flood detected twice, one odd score."""
    return [
        CanaryResult(100.0, "profile", "port-scan", True, 5.0, 1.0, "dev-a", "run1"),
        CanaryResult(100.0, "profile", "flood", True, 9.0, 1.0, "dev-a", "run1"),
        CanaryResult(200.0, "profile", "port-scan", False, 0.5, 1.0, "dev-b", "run2"),
        CanaryResult(200.0, "profile", "flood", True, float("inf"), float("nan"), "dev-b", "run2"),
        CanaryResult(200.0, "profile", "dns-tunnel", False, 0.0, 2.0, "dev-b", "run2"),
    ]


def test_canary_route_latest_per_class_history_and_paging(store: Store) -> None:
    assert store.add_canary_results(_results()) == 5
    read, _ = create_token(store, "viewer", "read")
    client = TestClient(create_app(store))
    h = {"Authorization": f"Bearer {read}"}
    assert ("GET", "/integrity/canaries") in _endpoints(client.app)  # type: ignore[arg-type]

    assert client.get("/integrity/canaries").status_code == 401  # a token is needed
    r = client.get("/integrity/canaries", headers=h)  # the read scope is enough
    assert r.status_code == 200, r.text
    body = r.json()
    latest = {c["attack_class"]: c for c in body["latest"]}
    assert list(latest) == ["dns-tunnel", "flood", "port-scan"]  # ordered by class
    assert latest["port-scan"]["detected"] is False and latest["port-scan"]["ts"] == 200.0
    assert latest["port-scan"]["device_id"] == "dev-b" and latest["port-scan"]["canary_run"] == "run2"
    assert latest["flood"]["score"] == "inf" and latest["flood"]["threshold"] is None  # JSON-safe
    assert latest["dns-tunnel"]["score"] == 0.0 and latest["dns-tunnel"]["threshold"] == 2.0

    hist = body["history"]
    assert hist["total"] == 5 and hist["limit"] == 100 and hist["offset"] == 0
    assert [c["ts"] for c in hist["items"]] == [200.0, 200.0, 200.0, 100.0, 100.0]  # newest first
    ids = [c["id"] for c in hist["items"]]
    p1 = client.get("/integrity/canaries?limit=2", headers=h).json()["history"]
    p2 = client.get("/integrity/canaries?limit=2&offset=2", headers=h).json()["history"]
    p3 = client.get("/integrity/canaries?limit=2&offset=4", headers=h).json()["history"]
    assert [c["id"] for c in p1["items"] + p2["items"] + p3["items"]] == ids
    assert p1["total"] == p3["total"] == 5 and len(p3["items"]) == 1

    only = client.get("/integrity/canaries?attack_class=port-scan", headers=h).json()
    assert only["history"]["total"] == 2
    assert [c["detected"] for c in only["history"]["items"]] == [False, True]
    assert len(only["latest"]) == 3  # the latest view always covers every class

    for bad in ("limit=0", "limit=5000", "offset=-1", "attack_class="):
        r = client.get(f"/integrity/canaries?{bad}", headers=h)
        assert r.status_code == 422 and r.json()["error"] == "validation_error", bad


def test_canary_route_on_an_empty_store(store: Store) -> None:
    read, _ = create_token(store, "viewer", "read")
    client = TestClient(create_app(store))
    body = client.get("/integrity/canaries", headers={"Authorization": f"Bearer {read}"}).json()
    assert body == {"latest": [], "history": {"items": [], "total": 0, "limit": 100, "offset": 0}}
