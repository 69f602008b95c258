"""``/incidents``: the queue, one incident, and the operator's actions (audited); notices apart."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette 1.x warns that its TestClient wants httpx2
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.api.app import create_app
from iotsentry.api.incidents import decode_incident_cursor, encode_incident_cursor
from iotsentry.api.tokens import create_token
from iotsentry.integrity.audit import AuditLog, read_records, verify
from iotsentry.schema import Alert, Device
from iotsentry.store import Store

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")

CAM = "aa:bb:cc:dd:ee:01"
PLUG = "aa:bb:cc:dd:ee:02"
T0 = 1_700_000_000.0


def make(policy: AlertPolicy, i: int, device: str, category: str, score: float, feature: str) -> Alert:
    a = policy.make(
        ts=T0 + 300.0 * i, device_id=device, detector="profile", detector_version="1", score=score,
        threshold=1.0, category=category, reason=f"{category} #{i} <b>not markup</b>", src_ip="10.0.0.5",
        dest_ip="203.0.113.9", dest_port=1000 + i, proto="TCP", extra={"feature": feature},
    )  # fmt: skip
    assert a is not None
    return a


@dataclass
class Env:
    store: Store
    client: TestClient
    admin: str
    read: str
    audit_path: Path

    def get(self, path: str, token: str | None = None, **kw: Any) -> Any:
        r = self.client.get(path, headers={"Authorization": f"Bearer {token or self.read}"}, **kw)
        return r

    def post(self, path: str, body: Any = None, token: str | None = None) -> Any:
        return self.client.post(path, headers={"Authorization": f"Bearer {token or self.admin}"}, json=body)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    audit_path = tmp_path / "audit.jsonl"
    with Store(tmp_path / "s.db") as store, AuditLog(audit_path, actor="iotsentry-api") as log:
        store.upsert_devices(
            [
                Device(device_id=CAM, names=["cam"], device_type="camera",
                       visibility={"dns_names": "truncated", "snaplen": 96}),
                Device(device_id=PLUG, names=["plug"], device_type="plug"),
            ]
        )  # fmt: skip
        policy = AlertPolicy(site_id="home")
        alerts = [make(policy, i, CAM, "port-scan", 1.2, "max_ports_per_peer") for i in range(5)]
        alerts.append(make(policy, 5, CAM, "port-scan", 4.0, "max_ports_per_peer"))  # escalation
        alerts.append(make(policy, 6, CAM, "c2", 2.0, "beacon"))
        alerts.append(make(policy, 7, PLUG, "flood", 1.2, "packets"))
        notice = policy.make(
            ts=T0 + 10_000, device_id=PLUG, detector="profile", detector_version="1", score=1.2,
            threshold=1.0, category="silence", reason="check-ins stopped",
        )  # fmt: skip
        assert notice is not None
        for a in [*alerts, notice]:
            store.commit_alerts(None, [a])  # one commit per alert, as the monitor does
        admin, _ = create_token(store, "alice", "admin")
        read, _ = create_token(store, "viewer", "read")
        yield Env(store, TestClient(create_app(store, audit=log.append)), admin, read, audit_path)


def test_the_incident_queue_lists_filters_and_pages(env: Env) -> None:
    page = env.get("/incidents").json()
    assert page["total"] == 3 and page["next_cursor"] is None
    assert [(i["device_id"], i["cause"]) for i in page["items"]] == [
        (PLUG, "flood"),
        (CAM, "c2"),
        (CAM, "scan"),
    ]
    scan = page["items"][2]
    assert scan["count"] == 6 and scan["severity"] == 1 and scan["severity_name"] == "high"
    assert scan["status"] == "open" and scan["categories"] == ["port-scan"]
    assert scan["evidence_kinds"] == ["port-scan/max_ports_per_peer"]
    assert len(scan["evidence"]) == 6 and scan["evidence"][0]["feature"] == "max_ports_per_peer"
    assert scan["first_ts"] == T0 and scan["last_ts"] == T0 + 1500.0
    assert env.get("/incidents", params={"device_id": CAM}).json()["total"] == 2
    assert env.get("/incidents", params={"cause": "c2"}).json()["items"][0]["cause"] == "c2"
    assert env.get("/incidents", params={"min_severity": 1}).json()["total"] == 2  # scan, c2 (boosted)
    assert env.get("/incidents", params={"status": "acknowledged"}).json()["total"] == 0
    assert env.get("/incidents", params={"since": T0 + 1800.0}).json()["total"] == 2
    assert env.get("/incidents", params={"until": T0 + 1700.0}).json()["total"] == 1
    # cursor and offset paging agree
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        got = env.get("/incidents", params=params).json()
        seen += [i["incident_id"] for i in got["items"]]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["incident_id"] for i in page["items"]]
    assert [
        i["incident_id"] for i in env.get("/incidents", params={"limit": 2, "offset": 1}).json()["items"]
    ] == (seen[1:])
    assert decode_incident_cursor(encode_incident_cursor(12.5, "inc-x")) == (12.5, "inc-x")
    summary = env.get("/incidents/summary").json()
    assert summary["total"] == summary["active"] == 3
    assert {r["key"]: r["total"] for r in summary["by_cause"]} == {"c2": 1, "flood": 1, "scan": 1}


def test_one_incident_with_its_evidence_alerts_and_history(env: Env) -> None:
    scan = env.get("/incidents", params={"cause": "scan"}).json()["items"][0]
    detail = env.get(f"/incidents/{scan['incident_id']}").json()
    assert len(detail["alerts"]) == 6 and {a["incident_id"] for a in detail["alerts"]} == {
        scan["incident_id"]
    }
    assert all(a["eve"]["incident_id"] == scan["incident_id"] for a in detail["alerts"])
    assert detail["history"] == [] and detail["feedback"] == []
    assert detail["evidence"][0]["reason"] == "port-scan #0 <b>not markup</b>"  # data, verbatim
    assert env.get("/incidents/inc-0000000000000000").status_code == 404
    assert env.get("/incidents/bad%20id").status_code == 422


def test_operator_actions_are_recorded_audited_and_queue_baseline_feedback(env: Env) -> None:
    c2, scan = (env.get("/incidents", params={"cause": c}).json()["items"][0] for c in ("c2", "scan"))
    inc = scan["incident_id"]
    r = env.post(f"/incidents/{inc}/acknowledge", {"note": "looking"})
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    r = env.post(f"/incidents/{inc}/assign", {"assignee": "carol"})
    assert r.json()["assignee"] == "carol"
    r = env.post(f"/incidents/{inc}/expected", {"scope": "group", "note": "firmware update"})
    body = r.json()
    assert body["status"] == "expected"
    assert [(f["action"], f["scope"], f["created_by"], f["applied_at"]) for f in body["feedback"]] == [
        ("absorb", "group", "alice", None)
    ]
    (pending,) = env.store.pending_feedback()
    assert pending.device_id == CAM and pending.evidence["device_type"] == "camera"
    r = env.post(f"/incidents/{inc}/reopen")
    assert r.json()["status"] == "open"
    assert [f["action"] for f in r.json()["feedback"]] == ["absorb", "revert"]
    r = env.post(f"/incidents/{inc}/resolve", {"note": "patched"})
    assert r.json()["status"] == "resolved"
    assert env.post(f"/incidents/{c2['incident_id']}/expected").json()["feedback"][0]["scope"] == "device"
    history = env.get(f"/incidents/{inc}").json()["history"]
    assert [(h["action"], h["actor"], h["value"]) for h in history] == [
        ("acknowledge", "alice", None), ("assign", "alice", "carol"), ("expect", "alice", "group"),
        ("reopen", "alice", None), ("resolve", "alice", None),
    ]  # fmt: skip
    assert history[0]["note"] == "looking" and history[0]["actor_token_id"] is not None
    assert [i["status"] for i in env.get("/incidents", params={"status": "resolved"}).json()["items"]] == [
        "resolved"
    ]
    # refused and unknown changes leave no record
    assert env.post(f"/incidents/{inc}/acknowledge", token=env.read).status_code == 403
    assert env.post("/incidents/inc-0000000000000000/resolve").status_code == 404
    assert env.post(f"/incidents/{inc}/expected", {"scope": "everyone"}).status_code == 422
    assert env.post(f"/incidents/{inc}/assign", {"assignee": "x", "extra": 1}).status_code == 422
    assert env.post(f"/incidents/{inc}/acknowledge", {"note": "x" * 3000}).status_code == 422
    recs = list(read_records(env.audit_path))
    assert [(x.action, x.subject, x.actor) for x in recs] == [
        ("incident.ack", f"incident/{inc}", "alice"),
        ("incident.assign", f"incident/{inc}", "alice"),
        ("incident.expected", f"incident/{inc}", "alice"),
        ("incident.reopen", f"incident/{inc}", "alice"),
        ("incident.resolve", f"incident/{inc}", "alice"),
        ("incident.expected", f"incident/{c2['incident_id']}", "alice"),
    ]
    assert recs[2].details["scope"] == "group" and recs[2].details["note"] == "firmware update"
    assert recs[1].details["assignee"] == "carol"
    assert verify(env.audit_path).ok


def test_every_incident_route_needs_a_token_and_writes_need_admin(env: Env) -> None:
    inc = env.get("/incidents").json()["items"][0]["incident_id"]
    reads = ["/incidents", "/incidents/summary", f"/incidents/{inc}"]
    writes = [f"/incidents/{inc}/{w}" for w in ("acknowledge", "assign", "expected", "resolve", "reopen")]
    for path in reads:
        assert env.client.get(path).status_code == 401
        assert env.client.get(path, headers={"Authorization": "Bearer iots_nope"}).status_code == 401
        assert env.get(path).status_code == 200
    for path in writes:
        assert env.client.post(path, json={"assignee": "x"}).status_code == 401
        r = env.post(path, {"assignee": "x"}, token=env.read)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert env.get(f"/incidents/{inc}").json()["history"] == []  # nothing changed


def test_alerts_gain_an_event_type_filter_and_notices_are_counted_apart(env: Env) -> None:
    everything = env.get("/alerts", params={"limit": 1000}).json()
    assert everything["total"] == 9
    notices = env.get("/alerts", params={"event_type": "notice"}).json()
    assert notices["total"] == 1 and notices["items"][0]["severity_name"] == "info"
    assert notices["items"][0]["incident_id"] is None and notices["items"][0]["event_type"] == "notice"
    assert env.get("/alerts", params={"event_type": "alert"}).json()["total"] == 8
    assert env.get("/alerts", params={"severity": 4}).json()["total"] == 1
    assert env.get("/alerts", params={"event_type": "bogus"}).status_code == 422
    summary = env.get("/alerts/summary").json()
    assert summary["total"] == 8 and summary["notices"] == {"total": 1, "open": 1}
    assert 4 not in {r["key"] for r in summary["by_severity"]}
    scan = env.get("/incidents", params={"cause": "scan"}).json()["items"][0]["incident_id"]
    assert env.get("/alerts", params={"incident_id": scan}).json()["total"] == 6
    plug = env.get(f"/devices/{PLUG}").json()
    assert (plug["alerts"], plug["notices"], plug["open_incidents"]) == (1, 1, 1)


def test_devices_show_what_the_sensor_can_see(env: Env) -> None:
    cam = env.get(f"/devices/{CAM}").json()
    assert cam["visibility"] == {"dns_names": "truncated", "snaplen": 96}
    items = {d["device_id"]: d for d in env.get("/devices").json()["items"]}
    assert items[PLUG]["visibility"] == {} and items[CAM]["open_incidents"] == 2
