"""Acknowledgements and assignments made through the API land in the hash-chained audit log."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette 1.x warns that its TestClient wants httpx2
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.api.app import create_app
from iotsentry.api.tokens import create_token
from iotsentry.integrity.audit import AuditLog, read_records, verify
from iotsentry.store import Store

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")


def test_ack_reopen_and_assign_are_audited_in_the_tokens_name(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with Store(tmp_path / "s.db") as store, AuditLog(log_path, actor="iotsentry-api") as log:
        policy = AlertPolicy()
        policy.make(
            ts=1_700_000_000.0, device_id="aa:bb:cc:dd:ee:ff", detector="profile", detector_version="1",
            score=3.0, threshold=1.0, category="scan", reason="probed 87 ports", dest_ip="198.51.100.7",
        )  # fmt: skip
        store.add_alerts(None, policy.alerts())
        alert_id = store.get_alerts()[0].id
        admin, _ = create_token(store, "alice", "admin")
        read, _ = create_token(store, "bob", "read")
        client = TestClient(create_app(store, audit=log.append))
        h = {"Authorization": f"Bearer {admin}"}
        assert client.post(f"/alerts/{alert_id}/ack", headers=h, json={"note": "checked"}).status_code == 200
        assert (
            client.post(f"/alerts/{alert_id}/ack", headers=h, json={"acknowledged": False}).status_code == 200
        )
        assert (
            client.post(f"/alerts/{alert_id}/assign", headers=h, json={"assignee": "carol"}).status_code
            == 200
        )
        # refused and unknown changes leave no record
        assert (
            client.post(f"/alerts/{alert_id}/ack", headers={"Authorization": f"Bearer {read}"}).status_code
            == 403
        )
        assert client.post("/alerts/999999/ack", headers=h).status_code == 404
    recs = list(read_records(log_path))
    assert [(r.action, r.subject, r.actor) for r in recs] == [
        ("alert.ack", f"alert/{alert_id}", "alice"),
        ("alert.reopen", f"alert/{alert_id}", "alice"),
        ("alert.assign", f"alert/{alert_id}", "alice"),
    ]
    assert recs[0].details["note"] == "checked" and recs[2].details["assignee"] == "carol"
    assert verify(log_path).ok
