"""Incidents: the folding rules on hand-built alerts (cause families, escalation, reopen, ids)."""

from __future__ import annotations

from typing import Any

import pytest

from iotsentry.alerts.incidents import (
    CAUSES,
    MAX_EVIDENCE,
    NOTICE_CATEGORIES,
    Incident,
    IncidentBook,
    cause_of,
    evidence_kind,
    fold,
    fold_all,
    forms_incident,
    incident_id_for,
    sink_alert,
)
from iotsentry.alerts.policy import AlertPolicy
from iotsentry.schema import Alert

DEV = "aa:bb:cc:dd:ee:01"


def alert(
    ts: float = 1000.0,
    *,
    category: str = "port-scan",
    severity: int = 2,
    device_id: str = DEV,
    site_id: str = "home",
    feature: str | None = "max_ports_per_peer",
    dest_port: int = 23,
    event_type: str = "alert",
) -> Alert:
    extra: dict[str, Any] = {"feature": feature} if feature else {}
    return Alert(
        timestamp=ts, flow_id=1, src_ip="10.0.0.5", src_port=40000, dest_ip="10.0.0.9", dest_port=dest_port,
        proto="TCP", device_id=device_id, site_id=site_id, detector="profile", detector_version="1",
        score=3.0, threshold=1.0, severity=severity, category=category, reason=f"{category} at {ts}",
        event_type=event_type, extra=extra,
    )  # fmt: skip


# -- causes ------------------------------------------------------------------------------------------


def test_cause_families_group_the_categories_in_use() -> None:
    assert {cause_of(c) for c in ("port-scan", "scan", "slow-scan", "fan-out")} == {"scan"}
    assert {cause_of(c) for c in ("brute-force", "repeated-attempts", "connection-burst")} == {"brute-force"}
    assert {cause_of(c) for c in ("flood", "volume")} == {"flood"}
    assert {cause_of(c) for c in ("new-peer", "new-service", "new-name")} == {"novelty"}
    assert cause_of("c2") == "c2" and cause_of("peer-outlier") == "peer-outlier"
    assert cause_of("baseline-drift") == "baseline-drift"
    # flow-model classes and IoT-23 label variants, case-insensitively
    assert cause_of("C&C") == cause_of("C&C-HeartBeat") == cause_of("C&C-Torii") == "c2"
    assert cause_of("PortScan") == cause_of("PartOfAHorizontalPortScan-Attack") == "scan"
    assert cause_of("DDoS") == "flood" and cause_of("FileDownload") == "download"
    # anything else is its own family, lower-cased
    assert [cause_of(c) for c in ("Okiru", "Attack", "unknown")] == ["okiru", "attack", "unknown"]
    assert all(k == k.lower() for k in CAUSES)


def test_notices_and_monitor_alerts_form_no_incident() -> None:
    assert {"silence", "offline"} == NOTICE_CATEGORIES
    assert forms_incident(alert())
    assert not forms_incident(alert(category="silence"))
    assert not forms_incident(alert(category="Offline"))
    assert not forms_incident(alert(event_type="notice"))
    assert not forms_incident(alert(event_type="integrity", category="detector-blind"))
    with pytest.raises(ValueError, match="forms no incident"):
        fold(None, alert(category="silence"))
    book = IncidentBook()
    assert book.fold(alert(category="silence", event_type="notice")) is None
    assert book.fold(alert(event_type="canary")) is None
    assert book.incidents() == [] and book.notices == 1


# -- folding -----------------------------------------------------------------------------------------


def test_first_alert_opens_an_incident_with_a_deterministic_id() -> None:
    a = alert(1000.1234567)
    inc, event = fold(None, a)
    assert event == "opened"
    assert inc.incident_id == a.incident_id == incident_id_for("home", DEV, "scan", 1000.1234567)
    assert inc.incident_id.startswith("inc-") and len(inc.incident_id) == 4 + 16
    assert inc.incident_id == incident_id_for("home", DEV, "scan", 1000.1234571)  # same microsecond
    assert inc.incident_id != incident_id_for("home", DEV, "scan", 1000.123458)
    assert inc.incident_id != incident_id_for("other", DEV, "scan", 1000.1234567)
    assert (inc.status, inc.severity, inc.count) == ("open", 2, 1)
    assert inc.first_ts == inc.last_ts == a.timestamp
    assert inc.categories == ["port-scan"] and inc.evidence_kinds == ["port-scan/max_ports_per_peer"]
    (sample,) = inc.evidence
    assert sample == {
        "ts": a.timestamp, "category": "port-scan", "detector": "profile", "reason": a.reason,
        "dest_ip": "10.0.0.9", "dest_port": 23, "proto": "TCP", "score": 3.0, "severity": 2,
        "feature": "max_ports_per_peer",
    }  # fmt: skip
    assert a.to_eve()["incident_id"] == inc.incident_id


def test_repeats_join_without_an_event_and_the_input_incident_is_not_changed() -> None:
    first, _ = fold(None, alert(1000.0))
    second, event = fold(first, alert(1300.0, dest_port=24))
    assert event is None
    assert (second.count, second.first_ts, second.last_ts) == (2, 1000.0, 1300.0)
    assert second.incident_id == first.incident_id
    assert first.count == 1 and len(first.evidence) == 1  # pure: the given incident is untouched
    earlier, _ = fold(second, alert(900.0))  # out of order: the span widens
    assert (earlier.first_ts, earlier.last_ts, earlier.count) == (900.0, 1300.0, 3)


def test_escalation_is_more_severe_or_a_new_evidence_kind() -> None:
    inc, _ = fold(None, alert(1000.0, severity=2))
    inc, ev = fold(inc, alert(1001.0, severity=3))  # less severe, same kind
    assert ev is None and inc.severity == 2
    inc, ev = fold(inc, alert(1002.0, severity=2))  # as severe: not strictly more
    assert ev is None
    inc, ev = fold(inc, alert(1003.0, severity=1))
    assert ev == "escalated" and inc.severity == 1
    inc, ev = fold(inc, alert(1004.0, severity=3, category="fan-out", feature="peers"))  # new kind
    assert ev == "escalated" and inc.severity == 1
    assert inc.categories == ["fan-out", "port-scan"]
    assert inc.evidence_kinds == ["fan-out/peers", "port-scan/max_ports_per_peer"]
    inc, ev = fold(inc, alert(1005.0, feature="syn_only"))  # same category, another feature: new kind
    assert ev == "escalated" and len(inc.evidence_kinds) == 3
    inc, ev = fold(inc, alert(1006.0, category="scan", feature=None))  # no feature: the category is the kind
    assert ev == "escalated" and "scan" in inc.evidence_kinds
    assert evidence_kind(alert(category="scan", feature=None)) == "scan"
    assert inc.count == 7


def test_an_escalation_reopens_an_acknowledged_incident_a_repeat_does_not() -> None:
    book = IncidentBook()
    book.fold(alert(1000.0))
    (inc,) = book.incidents()
    book.set_status(inc.incident_id, "acknowledged", "alice")
    assert book.fold(alert(1100.0)) is None
    assert book.get(inc.incident_id).status == "acknowledged"  # type: ignore[union-attr]
    assert book.fold(alert(1200.0, severity=1)) == "escalated"
    assert book.get(inc.incident_id).status == "open"  # type: ignore[union-attr]
    assert len(book.incidents()) == 1


@pytest.mark.parametrize("status", ["expected", "resolved"])
def test_expected_or_resolved_is_never_reopened_a_new_incident_is_opened(status: str) -> None:
    book = IncidentBook()
    book.fold(alert(1000.0))
    (old,) = book.incidents()
    book.set_status(old.incident_id, status, "alice", at=5000.0)
    a = alert(6000.0)
    assert book.fold(a) == "opened"
    assert a.incident_id != old.incident_id
    new = book.get(a.incident_id)
    assert new is not None and new.previous_id == old.incident_id and new.status == "open" and new.count == 1
    assert book.get(old.incident_id).status == status  # type: ignore[union-attr]
    assert new.incident_id == incident_id_for("home", DEV, "scan", 6000.0, old.incident_id)
    assert book.open_keys() == [("home", DEV, "scan")]
    # even an alert at the very same time as the old incident's first one gets its own id
    again = IncidentBook([*book.incidents()])
    again.set_status(new.incident_id, "resolved", "alice")
    b = alert(1000.0)
    assert again.fold(b) == "opened" and b.incident_id not in (old.incident_id, new.incident_id)


def test_keys_are_site_device_and_cause() -> None:
    book = IncidentBook()
    events = [
        book.fold(alert(1.0)),
        book.fold(alert(2.0, category="scan", feature="syn_only")),  # same cause: joins
        book.fold(alert(3.0, category="flood", feature="packets")),  # another cause
        book.fold(alert(4.0, device_id="aa:bb:cc:dd:ee:02")),  # another device
        book.fold(alert(5.0, site_id="office")),  # another site
    ]
    assert events == ["opened", "escalated", "opened", "opened", "opened"]
    assert len(book.incidents()) == 4
    with pytest.raises(ValueError, match="key"):
        fold(book.incidents()[0], alert(6.0, category="flood"))


def test_evidence_is_bounded_keeps_the_opening_sample_and_every_kind() -> None:
    inc, _ = fold(None, alert(0.0, feature="f0"))
    for i in range(1, 40):
        inc, _ = fold(inc, alert(float(i), feature=f"f{i % 4}"))  # 4 kinds over and over
    assert len(inc.evidence) == MAX_EVIDENCE and inc.count == 40
    assert inc.evidence[0]["ts"] == 0.0  # the opening alert's sample stays
    assert {s["feature"] for s in inc.evidence} == {"f0", "f1", "f2", "f3"}
    for i in range(4, 20):  # 16 new kinds: every one escalates and gets a sample
        inc, ev = fold(inc, alert(100.0 + i, feature=f"g{i}"))
        assert ev == "escalated" and inc.evidence[-1]["feature"] == f"g{i}"
        assert len(inc.evidence) == MAX_EVIDENCE and inc.evidence[0]["ts"] == 0.0
    assert len(inc.evidence_kinds) == 20


def test_to_dict_from_dict_round_trip_and_a_book_rebuilt_from_stored_incidents() -> None:
    book = fold_all([alert(1.0), alert(2.0, severity=1), alert(3.0, category="c2", feature="beacon")])
    for inc in book.incidents():
        assert Incident.from_dict(inc.to_dict()) == inc
    with pytest.raises(ValueError, match="status"):
        Incident.from_dict({**book.incidents()[0].to_dict(), "status": "closed"})
    # a restart: a new book from the stored incidents folds the next alerts the same way
    restarted = IncidentBook(Incident.from_dict(i.to_dict()) for i in book.incidents())
    whole = fold_all([alert(1.0), alert(2.0, severity=1), alert(3.0, category="c2", feature="beacon")])
    assert restarted.fold(alert(4.0)) is whole.fold(alert(4.0)) is None
    assert [i.to_dict() for i in restarted.incidents()] == [i.to_dict() for i in whole.incidents()]
    assert restarted.open_keys() == [("home", DEV, "c2"), ("home", DEV, "scan")]


def test_a_book_picks_the_active_incident_of_a_key_as_current() -> None:
    book = IncidentBook()
    book.fold(alert(1.0))
    (old,) = book.incidents()
    book.set_status(old.incident_id, "resolved", "bob")
    book.fold(alert(10.0))
    stored = book.incidents()
    for order in (stored, stored[::-1]):
        again = IncidentBook(order)
        cur = again.current(("home", DEV, "scan"))
        assert cur is not None and cur.status == "open" and cur.previous_id == old.incident_id


def test_batch_and_stream_folding_give_the_same_incidents() -> None:
    alerts = [alert(float(t), severity=1 + t % 3, feature=f"f{t % 5}") for t in range(60)]
    whole = fold_all([alert(float(t), severity=1 + t % 3, feature=f"f{t % 5}") for t in range(60)])
    streamed = IncidentBook()
    for i in range(0, 60, 7):  # the monitor: batches, the book rebuilt from "stored" rows each time
        streamed = IncidentBook(streamed.incidents())
        for a in alerts[i : i + 7]:
            streamed.fold(a)
    assert [i.to_dict() for i in streamed.incidents()] == [i.to_dict() for i in whole.incidents()]


def test_thirty_repeats_make_one_opening_and_the_escalations_only() -> None:
    book = IncidentBook()
    events = [book.fold(alert(300.0 * i, severity=3 if i < 10 else 2 if i < 20 else 1)) for i in range(30)]
    assert events.count("opened") == 1 and events.count("escalated") == 2
    assert [i for i, e in enumerate(events) if e] == [0, 10, 20]
    (inc,) = book.incidents()
    assert inc.count == 30 and inc.severity == 1


def test_book_status_and_assignment_are_recorded() -> None:
    book = fold_all([alert(1.0)])
    (inc,) = book.incidents()
    book.clear_changed()
    book.assign(inc.incident_id, "carol", "alice", at=50.0)
    book.set_status(inc.incident_id, "expected", "alice", at=60.0)
    assert [(a.action, a.actor, a.value) for a in book.actions] == [
        ("assign", "alice", "carol"),
        ("expected", "alice", None),
    ]
    got = book.get(inc.incident_id)
    assert got is not None and got.assignee == "carol" and got.updated == 60.0
    assert [i.incident_id for i in book.changed()] == [inc.incident_id]
    with pytest.raises(ValueError):
        book.set_status(inc.incident_id, "closed", "alice")
    with pytest.raises(KeyError):
        book.set_status("inc-nope", "resolved", "alice")


def test_sink_alert_carries_the_incident_state_in_its_eve_record() -> None:
    book = IncidentBook()
    a = alert(1.0)
    book.fold(a)
    inc = book.incident_of(a)
    assert inc is not None
    out = sink_alert(a, inc, "opened")
    eve = out.to_eve()
    assert eve["incident_id"] == inc.incident_id
    assert eve["iotsentry"]["incident"] == {
        "id": inc.incident_id, "event": "opened", "status": "open", "count": 1, "severity": 2,
        "cause": "scan", "first_ts": 1.0, "last_ts": 1.0,
    }  # fmt: skip
    assert "incident" not in a.extra  # the alert itself is not changed
    # every key of the EVE record keeps its meaning; incident_id only appears when set
    base = alert(1.0).to_eve()
    assert "incident_id" not in base
    assert set(eve) == set(base) | {"incident_id", "iotsentry"}
    assert eve["alert"] == base["alert"]


def test_the_policy_turns_notice_categories_into_info_notices() -> None:
    policy = AlertPolicy(min_severity=1)  # would drop anything but high alerts
    n = policy.make(ts=1.0, device_id=DEV, detector="profile", detector_version="1", score=1.2,
                    threshold=1.0, category="silence", reason="stopped its check-ins")  # fmt: skip
    low = policy.make(ts=1.0, device_id=DEV, detector="profile", detector_version="1", score=1.2,
                      threshold=1.0, category="new-peer", reason="new peer")  # fmt: skip
    assert low is None  # below min_severity
    assert n is not None and n.event_type == "notice" and n.severity == 4
    assert n.to_eve()["event_type"] == "notice" and n.to_eve()["alert"]["severity"] == 4
    assert policy.notices == 1
    # de-duplicated like an alert
    again = policy.make(ts=2.0, device_id=DEV, detector="profile", detector_version="1", score=1.2,
                        threshold=1.0, category="silence", reason="stopped its check-ins")  # fmt: skip
    assert again is None and policy.notices == 1 and n.extra["count"] == 2
    assert IncidentBook().fold(n) is None
