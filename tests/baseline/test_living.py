"""Living baselines: what persists unalerted is absorbed (guarded, capped, recorded); what an
alert was made of never is; operators absorb and take back."""

from __future__ import annotations

import pytest

from iotsentry.baseline.living import MIN_HOURS, PER_DAY, Living, items_of_evidence
from iotsentry.baseline.profile import Baseline

DEV = "02:00:00:00:00:50"
H = 3600.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86400.0)  # a UTC midnight


def _living() -> Living:
    base = Baseline([DEV, "02:00:00:00:00:51"])
    base.profiles[0].active = base.profiles[1].active = True
    base.profiles[0].groups = base.profiles[1].groups = ["type:camera"]
    return Living(base)


def test_a_network_seen_in_three_separate_hours_is_absorbed_with_its_reason() -> None:
    lv = _living()
    for h in range(MIN_HOURS - 1):
        lv.observe(0, "network", "203.0.113.0/24", "203.0.113.0/24", T0 + h * H + 60.0)
    assert lv.tick(T0 + 3 * H) == []  # two hours only
    lv.observe(0, "network", "203.0.113.0/24", "203.0.113.0/24", T0 + 2.5 * H)
    recs = lv.tick(T0 + 4 * H)
    assert [(r["kind"], r["item"], r["source"]) for r in recs] == [("network", "203.0.113.0/24", "auto")]
    assert "3 separate hours" in recs[0]["reason"] and "never part of an alert" in recs[0]["reason"]
    assert lv.baseline.has_item(0, "network", "203.0.113.0/24")
    assert lv.baseline.profiles[0].history == recs
    # shared with the device's group once absorbed
    assert len(lv.baseline.group_known) > 0


def test_three_sightings_within_one_span_too_short_are_not_enough() -> None:
    lv = _living()
    for t in (0.9 * H, 1.1 * H, 2.05 * H):  # hours 0, 1, 2 but only 1.15 h apart
        lv.observe(0, "service", "TCP/8883", "TCP/8883", T0 + t)
    assert lv.tick(T0 + 3 * H) == []


def test_what_an_alert_was_made_of_is_never_absorbed_automatically() -> None:
    lv = _living()
    lv.observe(0, "network", "192.0.2.0/24", "192.0.2.0/24", T0 + 10.0)
    lv.observe(0, "service", "TCP/6667", "TCP/6667", T0 + 10.0)
    lv.observe(0, "domain", "unrelated.example", "unrelated.example", T0 + 2000.0)
    assert lv.block(0, T0, T0 + 59.0, "c2") == 2
    for h in range(1, 8):
        for kind, item in (
            ("network", "192.0.2.0/24"),
            ("service", "TCP/6667"),
            ("domain", "unrelated.example"),
        ):
            lv.observe(0, kind, item, item, T0 + h * H)
    recs = lv.tick(T0 + 9 * H)
    assert [(r["kind"], r["item"]) for r in recs] == [("domain", "unrelated.example")]
    assert not lv.baseline.has_item(0, "network", "192.0.2.0/24")
    assert len(lv.alerted) == 2  # remembered as alerted behaviour (packets continuing it weigh more)


def test_absorption_is_capped_per_device_and_day() -> None:
    lv = _living()
    n = PER_DAY + 5
    for i in range(n):
        for h in range(3):
            lv.observe(0, "network", f"198.51.{i}.0/24", "x", T0 + h * H + i)
    first = lv.tick(T0 + 5 * H)
    assert len(first) == PER_DAY
    assert lv.tick(T0 + 6 * H) == []  # same UTC day
    assert len(lv.tick(T0 + 24 * H + 1.0)) == n - PER_DAY


def test_kinds_a_baseline_does_not_hold_yet_are_still_being_learned() -> None:
    lv = _living()
    lv.observe(0, "network", "203.0.113.0/24", "x", T0 + 10.0, remote=True)
    lv.observe(0, "service", "UDP/5353", "x", T0 + 10.0, remote=False)  # a local service: judged as usual
    recs = lv.tick(T0 + H, young={0: frozenset({"network", "service"})})
    assert [(r["kind"], r["item"]) for r in recs] == [("network", "203.0.113.0/24")]
    assert "still learning them" in recs[0]["reason"]


def test_operator_expected_absorbs_the_evidence_and_revert_takes_it_back() -> None:
    lv = _living()
    evidence = [
        {
            "dest_ip": "192.0.2.7",
            "dest_port": 6667,
            "proto": "TCP",
            "reason": "contacted ... (dns:bot.example.net)",
        },
        {"dest_ip": "192.168.7.9", "dest_port": 23, "proto": "TCP", "reason": "brute force"},
    ]
    items = items_of_evidence(evidence, ["c2"])
    assert ("network", "192.0.2.0/24") in items and ("service", "TCP/6667") in items
    assert ("domain", "example.net") in items and ("high-network", "192.168.7.9") in items
    lv.observe(0, "network", "192.0.2.0/24", "x", T0)
    lv.block(0, T0 - 60.0, T0 + 60.0, "c2")
    recs = lv.expected([0, 1], items, T0 + H, "alice", "incident inc-1 marked expected")
    assert {r["device_id"] for r in recs} == {DEV, "02:00:00:00:00:51"}
    assert all(r["source"] == "operator" and r["reason"].startswith("alice: ") for r in recs)
    assert lv.baseline.has_item(0, "network", "192.0.2.0/24") and lv.baseline.has_item(
        1, "service", "TCP/6667"
    )
    assert ("network", "192.0.2.0/24") not in lv.candidates[0]  # the blocked candidate is released
    back = lv.revert(recs, T0 + 2 * H, "alice", "not expected after all")
    assert len(back) == len(recs) and all(r["action"] == "revert" for r in back)
    assert not lv.baseline.has_item(0, "network", "192.0.2.0/24")
    with pytest.raises(ValueError, match="kind"):
        lv.expected([0], [("bogus", "x")], T0, "alice", "x")
