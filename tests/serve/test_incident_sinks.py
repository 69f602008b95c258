"""Sinks see incidents, not alert streams: openings and escalations only, notices once each.

A stand-in engine raises, batch after batch, the same cause on one device (the policy re-alerts
every de-duplication window); the monitor stores every alert and folds it into the stored
incident, and a sink gets one opening plus the escalations. An operator's status change in the
store wins over the monitor's run, also across a restart.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import pytest

from iotsentry.alerts.memory import MemorySink
from iotsentry.alerts.policy import AlertPolicy
from iotsentry.schema import Alert, FlowBatch, PacketBatch
from iotsentry.serve.engine import EngineOutput, StreamEngine
from iotsentry.serve.monitor import JsonLog, Monitor
from iotsentry.serve.sources import FakeSource
from iotsentry.store import open_store

DEV = "aa:bb:cc:dd:ee:01"
N = 30


class Step:
    """A stand-in batch: ``i`` is its number, ``len()`` its packet count."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __len__(self) -> int:
        return 10


def severity_of(i: int) -> int:
    """Low for the first ten repeats, then medium, then high: two escalations."""
    return 3 if i < 10 else 2 if i < 20 else 1


class RepeatingEngine(StreamEngine):
    """Batch ``i`` raises one scan alert of :data:`DEV` (a new policy window each time) and, every
    ten batches, a silence notice; scores are chosen so the policy grades them as planned."""

    def __init__(self) -> None:
        super().__init__(60.0)
        self.policy = AlertPolicy(site_id="home", dedup_window_s=300.0)

    def ingest(self, batch: PacketBatch | FlowBatch) -> EngineOutput:
        i = cast(Any, batch).i
        ts = 1_700_000_000.0 + 300.0 * i  # one de-duplication window apart: the policy re-alerts
        ratio = {3: 1.2, 2: 2.0, 1: 4.0}[severity_of(i)]
        out: list[Alert] = []
        a = self.policy.make(
            ts=ts, device_id=DEV, detector="profile", detector_version="1", score=ratio, threshold=1.0,
            category="new-peer", reason=f"repeat {i}", src_ip="10.0.0.5", dest_ip="203.0.113.9",
            dest_port=443, proto="TCP", extra={"feature": "new_peers"},
        )  # fmt: skip
        assert a is not None and a.severity == severity_of(i)
        out.append(a)
        if i % 10 == 5:
            n = self.policy.make(
                ts=ts + 1, device_id=DEV, detector="profile", detector_version="1", score=1.2,
                threshold=1.0, category="silence", reason=f"check-ins stopped ({i})", dest_ip="198.51.100.1",
                dest_port=8883, proto="TCP",
            )  # fmt: skip
            assert n is not None
            out.append(n)
        return EngineOutput(alerts=out, packets=len(batch))

    def flush(self) -> EngineOutput:
        return EngineOutput()


def run(target: str, state: Path, steps: list[int], sink: MemorySink) -> Monitor:
    mon = Monitor(
        {"fake": FakeSource(cast(Any, [Step(i) for i in steps]))},
        RepeatingEngine(),
        open_store(target),
        state,
        sinks=[sink],
        queue_size=2,
        poll_timeout_s=0.05,
        log=JsonLog(io.StringIO()),
    )
    try:
        mon.run(idle_exit_s=0.5, handle_signals=False)
    finally:
        mon.store.close()
    return mon


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("pg_schema_dsn"))


def test_thirty_repeats_reach_a_sink_as_one_opening_and_the_escalations(target: str, tmp_path: Path) -> None:
    sink = MemorySink()
    mon = run(target, tmp_path / "state", list(range(N)), sink)
    recs = sink.records()
    alerts = [r for r in recs if r["event_type"] == "alert"]
    notices = [r for r in recs if r["event_type"] == "notice"]
    # one opening, then one record per escalation (medium at 10, high at 20): never a repeat
    assert [r["iotsentry"]["incident"]["event"] for r in alerts] == ["opened", "escalated", "escalated"]
    assert [r["alert"]["reason"] for r in alerts] == ["repeat 0", "repeat 10", "repeat 20"]
    assert [r["iotsentry"]["incident"]["count"] for r in alerts] == [1, 11, 21]
    assert [r["iotsentry"]["incident"]["severity"] for r in alerts] == [3, 2, 1]
    assert len({r["incident_id"] for r in alerts}) == 1
    assert all(r["iotsentry"]["incident"]["status"] == "open" for r in alerts)
    # notices: once each, as notices (severity info), never an incident
    assert [r["alert"]["reason"] for r in notices] == ["check-ins stopped (5)", "check-ins stopped (15)",
                                                       "check-ins stopped (25)"]  # fmt: skip
    assert all(r["alert"]["severity"] == 4 and "incident_id" not in r for r in notices)
    assert mon.stats.alerts_stored == N + 3 and mon.stats.alerts_sent == 6
    assert (mon.stats.incidents_opened, mon.stats.incidents_escalated, mon.stats.notices) == (1, 2, 3)
    # the store holds every alert and the one incident that counts them
    with open_store(target) as store:
        (inc,), total = store.query_incidents()
        assert total == 1 and inc.count == N and inc.severity == 1 and inc.cause == "novelty"
        assert inc.incident_id == alerts[0]["incident_id"]
        assert store.incident_alerts(inc.incident_id)[0].count == N  # one dedup row, N repeats
        assert store.alert_summary()["notices"]["total"] == 1  # one notice row (same key, merged)
        assert store.outbox_pending() == []


def test_the_operators_status_wins_across_a_restart(target: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    sink = MemorySink()
    run(target, state, list(range(N)), sink)
    first = [r for r in sink.records() if r["event_type"] == "alert"]
    with open_store(target) as store:
        (inc,), _ = store.query_incidents()
        # an operator acknowledges, then resolves it through the store (as the API does)
        store.set_incident_status(inc.incident_id, "acknowledged", "alice")
    later = MemorySink()
    more = list(range(N, N + 3))  # the restart resumes after the committed position (N)
    run(target, state, [*range(N), *more], later)
    recs = [r for r in later.records() if r["event_type"] == "alert"]
    assert recs == []  # acknowledged: high repeats of a known kind are not escalations
    with open_store(target) as store:
        got = store.get_incident(inc.incident_id)
        assert got is not None and got.status == "acknowledged" and got.count == N + 3
        store.set_incident_status(inc.incident_id, "resolved", "alice")
    last = MemorySink()
    run(target, state, [*range(N + 3), N + 3], last)
    (opening,) = [r for r in last.records() if r["event_type"] == "alert"]
    assert opening["iotsentry"]["incident"]["event"] == "opened"
    assert opening["incident_id"] not in (inc.incident_id, first[0]["incident_id"])
    with open_store(target) as store:
        new = store.get_incident(opening["incident_id"])
        assert new is not None and new.previous_id == inc.incident_id and new.count == 1
        assert store.get_incident(inc.incident_id).status == "resolved"  # type: ignore[union-attr]
