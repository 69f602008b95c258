"""Incidents in the store, on SQLite and on a real PostgreSQL (``[sqlite]`` / ``[postgres]``).

Folding happens inside the alerts' transaction against the stored rows; operator actions are
audited; marking expected queues baseline feedback (absorb / revert); notices stay apart; an
older store migrates and keeps its data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotsentry.alerts.incidents import IncidentBook, fold_all, incident_id_for
from iotsentry.alerts.policy import AlertPolicy
from iotsentry.schema import Alert, Device
from iotsentry.store import MIGRATIONS, AlertQuery, IncidentQuery, Store, open_store
from iotsentry.store.base import StoreBase

DEV = "aa:bb:cc:dd:ee:01"
DEV2 = "aa:bb:cc:dd:ee:02"


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield request.getfixturevalue("pg_schema_dsn")


@pytest.fixture
def store(target: str) -> Iterator[StoreBase]:
    with open_store(target) as s:
        yield s


def alert(
    ts: float,
    *,
    category: str = "port-scan",
    severity: int = 2,
    device_id: str = DEV,
    feature: str | None = "max_ports_per_peer",
    dest_port: int = 23,
    event_type: str = "alert",
) -> Alert:
    extra: dict[str, Any] = {"feature": feature} if feature else {}
    return Alert(
        timestamp=ts, flow_id=1, src_ip="10.0.0.5", src_port=40000, dest_ip="10.0.0.9", dest_port=dest_port,
        proto="TCP", device_id=device_id, site_id="home", detector="profile", detector_version="1",
        score=3.0, threshold=1.0, severity=severity, category=category, reason=f"{category} at {ts}",
        event_type=event_type, extra=extra,
    )  # fmt: skip


def test_alerts_fold_into_stored_incidents_in_the_same_transaction(store: StoreBase) -> None:
    first = store.commit_alerts(None, [alert(1000.0), alert(1001.0, dest_port=24)])
    assert [e for _, e in first.events] == ["opened", None]
    (inc,) = first.incidents
    assert inc.count == 2 and inc.incident_id == incident_id_for("home", DEV, "scan", 1000.0)
    assert [a.incident_id for a in first.to_sinks] == [inc.incident_id]
    assert first.to_sinks[0].extra["incident"]["event"] == "opened"
    # the next commit folds against the stored row
    second = store.commit_alerts(None, [alert(1300.0, dest_port=25), alert(1400.0, severity=1, dest_port=26)])
    assert [e for _, e in second.events] == [None, "escalated"]
    stored = store.get_incident(inc.incident_id)
    assert stored is not None and stored.count == 4 and stored.severity == 1 and stored.last_ts == 1400.0
    assert [a.alert.incident_id for a in store.get_alerts()] == [inc.incident_id] * 4
    linked = store.incident_alerts(inc.incident_id)
    assert sorted(a.alert.dest_port for a in linked) == [23, 24, 25, 26]
    assert store.get_alerts()[0].alert.to_eve()["incident_id"] == inc.incident_id
    assert [r.alert.dest_port for r in store.query_alerts(AlertQuery(incident_id=inc.incident_id))[0]] == [
        26, 25, 24, 23,
    ]  # fmt: skip


def test_a_failed_commit_leaves_no_incident(store: StoreBase) -> None:
    broken = alert(2.0, dest_port=99)
    broken.extra["count"] = "not a number"
    with pytest.raises(ValueError):
        store.add_alerts(None, [alert(1.0), broken], source_state={"s": {"pos": 1}})
    assert store.query_incidents()[1] == 0 and store.get_alerts() == [] and store.get_source_state() == {}


def test_the_stored_status_wins_over_a_stale_copy(store: StoreBase) -> None:
    commit = store.commit_alerts(None, [alert(1000.0)])
    (inc,) = commit.incidents
    stale = IncidentBook(commit.incidents)  # what a monitor might hold in memory
    assert store.set_incident_status(inc.incident_id, "resolved", "alice") is not None
    assert stale.fold(alert(1100.0)) is None  # the stale copy would join the resolved incident ...
    later = store.commit_alerts(None, [alert(1100.0)])  # ... the store opens a new one
    assert [e for _, e in later.events] == ["opened"]
    (new,) = later.incidents
    assert new.incident_id != inc.incident_id and new.previous_id == inc.incident_id
    assert store.get_incident(inc.incident_id).status == "resolved"  # type: ignore[union-attr]
    # acknowledged: repeats join quietly, an escalation re-opens it (recorded in its trail)
    store.set_incident_status(new.incident_id, "acknowledged", "alice")
    assert [e for _, e in store.commit_alerts(None, [alert(1200.0)]).events] == [None]
    assert store.get_incident(new.incident_id).status == "acknowledged"  # type: ignore[union-attr]
    assert [e for _, e in store.commit_alerts(None, [alert(1300.0, severity=1)]).events] == ["escalated"]
    assert store.get_incident(new.incident_id).status == "open"  # type: ignore[union-attr]
    trail = [(x.action, x.actor) for x in store.incident_actions(new.incident_id)]
    assert trail == [("acknowledge", "alice"), ("escalate", "iotsentry")]


def test_thirty_repeats_reach_the_outbox_as_one_opening_and_the_escalations(store: StoreBase) -> None:
    for i in range(30):  # one batch per repeat, as the monitor commits them
        sev = 3 if i < 10 else 2 if i < 20 else 1
        store.commit_alerts(None, [alert(300.0 * i, severity=sev, dest_port=1000 + i)], outbox=True)
    pending = [a for _, a in store.outbox_pending()]
    assert [a.extra["incident"]["event"] for a in pending] == ["opened", "escalated", "escalated"]
    assert [a.timestamp for a in pending] == [0.0, 3000.0, 6000.0]
    assert [a.extra["incident"]["count"] for a in pending] == [1, 11, 21]
    assert len({a.incident_id for a in pending}) == 1
    (inc,), total = store.query_incidents()
    assert total == 1 and inc.count == 30 and inc.severity == 1


def test_notices_and_integrity_alerts_go_to_the_outbox_once_each_and_stay_apart(store: StoreBase) -> None:
    policy = AlertPolicy(site_id="home")
    notice = policy.make(ts=5.0, device_id=DEV, detector="profile", detector_version="1", score=1.2,
                         threshold=1.0, category="silence", reason="stopped its check-ins")  # fmt: skip
    assert notice is not None
    integrity = alert(6.0, category="detector-blind", event_type="integrity")
    commit = store.commit_alerts(None, [alert(1.0), notice, integrity], outbox=True)
    assert [e for _, e in commit.events] == ["opened", None, None]
    assert [a.event_type for _, a in store.outbox_pending()] == ["alert", "notice", "integrity"]
    assert store.query_incidents()[1] == 1
    summary = store.alert_summary()
    assert summary["total"] == 2 and summary["notices"] == {"total": 1, "open": 1}
    assert {r["key"] for r in summary["by_category"]} == {"port-scan", "detector-blind"}
    only = store.alert_summary(AlertQuery(event_types=("notice",)))
    assert only["total"] == 1 and only["by_severity"] == [{"key": 4, "total": 1, "open": 1}]
    rows, total = store.query_alerts(AlertQuery(event_types=("notice",)))
    assert total == 1 and rows[0].alert.event_type == "notice" and rows[0].alert.incident_id == ""
    store.upsert_devices([Device(device_id=DEV)])
    dev = store.get_device_summary(DEV)
    assert dev is not None and (dev.alerts, dev.notices, dev.open_incidents) == (2, 1, 1)  # scan + integrity


def test_query_incidents_filters_paging_and_cursor(store: StoreBase) -> None:
    spec = [("port-scan", 3, DEV), ("flood", 1, DEV), ("c2", 2, DEV2), ("new-peer", 3, DEV2),
            ("brute-force", 2, DEV)]  # fmt: skip
    batch = [
        alert(100.0 + i, category=cat, severity=sev, device_id=dev, feature=None)
        for i, (cat, sev, dev) in enumerate(spec)
    ]
    store.add_alerts(None, batch)
    items, total = store.query_incidents()
    assert total == 5 and [i.cause for i in items] == ["brute-force", "novelty", "c2", "flood", "scan"]
    assert store.query_incidents(IncidentQuery(device_id=DEV2))[1] == 2
    severe = store.query_incidents(IncidentQuery(min_severity=2))[0]
    assert {i.cause for i in severe} == {"flood", "c2", "brute-force"}
    assert [i.cause for i in store.query_incidents(IncidentQuery(causes=("c2", "scan")))[0]] == ["c2", "scan"]
    assert store.query_incidents(IncidentQuery(since=102.0, until=103.0))[1] == 2
    c2 = store.query_incidents(IncidentQuery(causes=("c2",)))[0][0]
    store.set_incident_status(c2.incident_id, "acknowledged", "alice")
    assert store.query_incidents(IncidentQuery(statuses=("acknowledged",)))[0] == [
        store.get_incident(c2.incident_id)
    ]
    store.assign_incident(c2.incident_id, "carol", "alice")
    carols = store.query_incidents(IncidentQuery(assignee="carol"))[0]
    assert [i.incident_id for i in carols] == [c2.incident_id]
    # keyset paging walks every incident once, newest first
    seen: list[str] = []
    after = None
    while True:
        page, n = store.query_incidents(limit=2, after=after)
        assert n == 5
        if not page:
            break
        seen += [i.incident_id for i in page]
        after = (page[-1].last_ts, page[-1].incident_id)
    assert seen == [i.incident_id for i in items]
    assert [i.incident_id for i in store.query_incidents(limit=2, offset=3)[0]] == seen[3:]
    summary = store.incident_summary()
    assert summary["total"] == 5 and summary["active"] == 5
    assert {r["key"]: r["total"] for r in summary["by_status"]} == {"acknowledged": 1, "open": 4}
    with pytest.raises(ValueError):
        store.query_incidents(limit=-1)


def test_marking_expected_queues_absorb_and_moving_away_queues_revert(store: StoreBase) -> None:
    store.upsert_devices([Device(device_id=DEV, device_type="camera")])
    two_kinds = [alert(1.0), alert(2.0, category="fan-out", feature="peers")]
    (inc,) = store.commit_alerts(None, two_kinds).incidents
    assert store.pending_feedback() == []
    done = store.set_incident_status(inc.incident_id, "expected", "alice", "group", note="firmware update",
                                     actor_token_id=7, at=100.0)  # fmt: skip
    assert done is not None and done.status == "expected" and done.updated == 100.0
    (fb,) = store.pending_feedback()
    assert (fb.incident_id, fb.device_id, fb.scope, fb.action, fb.created, fb.created_by) == (
        inc.incident_id, DEV, "group", "absorb", 100.0, "alice",
    )  # fmt: skip
    assert fb.evidence["categories"] == ["fan-out", "port-scan"] and fb.evidence["cause"] == "scan"
    assert fb.evidence["device_type"] == "camera" and len(fb.evidence["evidence"]) == 2
    assert fb.evidence["evidence_kinds"] == ["fan-out/peers", "port-scan/max_ports_per_peer"]
    assert fb.applied_at is None and fb.result is None
    # the same scope again: nothing new; another scope: revert the old, absorb the new
    store.set_incident_status(inc.incident_id, "expected", "alice", "group", at=101.0)
    assert len(store.pending_feedback()) == 1
    store.set_incident_status(inc.incident_id, "expected", "alice", "device", at=102.0)
    assert [(f.action, f.scope) for f in store.pending_feedback()] == [
        ("absorb", "group"), ("revert", "group"), ("absorb", "device"),
    ]  # fmt: skip
    # the baseline stage applies them in order
    for f in store.pending_feedback():
        assert store.mark_feedback_applied(f.id, f"applied {f.action}", at=200.0)
        assert not store.mark_feedback_applied(f.id, "twice")
    assert store.pending_feedback() == []
    # reversible: back to open queues a revert of what was absorbed; the behaviour alerts again
    store.set_incident_status(inc.incident_id, "open", "bob", at=300.0)
    (rev,) = store.pending_feedback()
    assert (rev.action, rev.scope, rev.created_by) == ("revert", "device", "bob")
    store.set_incident_status(inc.incident_id, "resolved", "bob", at=301.0)
    assert len(store.pending_feedback()) == 1  # it was not expected any more: nothing to revert
    trail = [(x.action, x.actor, x.value) for x in store.incident_actions(inc.incident_id)]
    assert trail == [
        ("expect", "alice", "group"), ("expect", "alice", "group"), ("expect", "alice", "device"),
        ("reopen", "bob", None), ("resolve", "bob", None),
    ]  # fmt: skip
    assert store.incident_actions(inc.incident_id)[0].note == "firmware update"
    assert store.incident_actions(inc.incident_id)[0].actor_token_id == 7
    history = store.baseline_feedback(inc.incident_id)
    assert [f.applied_at for f in history] == [200.0, 200.0, 200.0, None]
    assert [f.result for f in history][:1] == ["applied absorb"]
    with pytest.raises(ValueError):
        store.set_incident_status(inc.incident_id, "closed", "bob")
    with pytest.raises(ValueError):
        store.set_incident_status(inc.incident_id, "expected", "bob", "everyone")
    assert store.set_incident_status("inc-missing", "resolved", "bob") is None
    assert store.assign_incident("inc-missing", "x", "bob") is None


def test_incidents_given_by_the_caller_are_written_as_they_are(store: StoreBase) -> None:
    alerts = [alert(1.0), alert(2.0, severity=1), alert(3.0, category="c2", feature="beacon")]
    book = fold_all(alerts)
    commit = store.commit_alerts(None, alerts, incidents=book.incidents())
    assert [e for _, e in commit.events] == [None, None, None] and commit.to_sinks == []
    assert sorted(i.incident_id for i in store.query_incidents()[0]) == sorted(
        i.incident_id for i in book.incidents()
    )
    for inc in book.incidents():
        assert store.get_incident(inc.incident_id) == inc
    # an operator's status survives the same incidents written again (e.g. a re-analysis)
    scan = next(i for i in book.incidents() if i.cause == "scan")
    store.set_incident_status(scan.incident_id, "acknowledged", "alice", at=9.0)
    store.add_alerts(None, [], incidents=book.incidents())
    assert store.get_incident(scan.incident_id).status == "acknowledged"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="outbox"):
        store.commit_alerts(None, alerts, outbox=True, incidents=book.incidents())
    # no incidents at all: the behaviour before incidents (every alert for the sinks)
    plain = store.commit_alerts(None, [alert(50.0, dest_port=1)], incidents=False)
    assert plain.incidents == [] and len(plain.to_sinks) == 1


def test_device_visibility_round_trips_and_merges(store: StoreBase) -> None:
    store.upsert_devices([Device(device_id=DEV, visibility={"dns_names": "truncated", "snaplen": 96})])
    store.upsert_devices([Device(device_id=DEV, visibility={"dns_names": "observed"})])
    dev = store.get_device(DEV)
    assert dev is not None and dev.visibility == {"dns_names": "observed", "snaplen": 96}
    store.upsert_devices([Device(device_id=DEV2)])
    assert store.get_device(DEV2).visibility == {}  # type: ignore[union-attr]


def test_an_older_store_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    """A store of schema 4 (before incidents) with alerts, an integrity alert and a silence alert."""
    path = tmp_path / "old.db"
    policy = AlertPolicy(site_id="home")
    with Store(path, migrations=MIGRATIONS[:4]) as old:
        assert old.version == 4
        run = old.start_run("analyze", ["a.pcap"])
        old.upsert_devices([Device(device_id=DEV, names=["cam"])])
        scan = policy.make(ts=1.0, device_id=DEV, detector="profile", detector_version="1", score=3.0,
                           threshold=1.0, category="scan", reason="probed 80 ports")  # fmt: skip
        assert scan is not None
        silence = alert(2.0, category="silence", feature="schedule")  # as an old policy made it
        blind = alert(3.0, category="detector-blind", event_type="integrity")
        with old._tx() as c:  # the schema-4 insert (no incident_id / event_type columns yet)
            for a in (scan, silence, blind):
                c.execute(
                    "INSERT INTO alerts (run_id, ts, device_id, site_id, detector, detector_version,"
                    " category, severity, score, threshold, eve, dedup_key, first_ts, last_ts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run, a.timestamp, a.device_id, a.site_id, a.detector, a.detector_version, a.category,
                     a.severity, a.score, a.threshold, json.dumps(a.to_eve(), separators=(",", ":")),
                     f"k{a.timestamp}", a.timestamp, a.timestamp),
                )  # fmt: skip
        old.set_alert_acknowledged(1, "alice", at=10.0)
    with Store(path) as store:
        assert store.version == len(MIGRATIONS)
        rows = {r.alert.category: r for r in store.get_alerts()}
        assert set(rows) == {"scan", "silence", "detector-blind"}
        assert rows["scan"].acknowledged and rows["scan"].acknowledged_by == "alice"
        assert [r.alert.event_type for r in store.query_alerts(AlertQuery(event_types=("notice",)))[0]] == [
            "alert"  # the EVE record is kept as it was; the row is now counted as a notice
        ]
        assert store.alert_summary()["notices"]["total"] == 1
        assert store.query_alerts(AlertQuery(event_types=("integrity",)))[1] == 1
        assert store.get_device(DEV).names == ["cam"]  # type: ignore[union-attr]
        assert store.get_runs()[0]["command"] == "analyze"
        assert store.query_incidents()[1] == 0  # old alerts are not folded retroactively
        # and it works as a new store from now on
        assert store.commit_alerts(run, [alert(5.0)]).events[0][1] == "opened"
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"incidents", "incident_actions", "baseline_feedback"} <= tables
    conn.close()
