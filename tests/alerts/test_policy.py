from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from iotsentry.alerts.policy import AlertPolicy, dedup_key, flow_id_for, score_ratio, severity_for
from iotsentry.schema import Alert

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def make(policy: AlertPolicy, **kw: Any) -> Alert | None:
    args: dict[str, Any] = {
        "ts": 1_700_000_000.0,
        "device_id": "aa:bb:cc:dd:ee:01",
        "detector": "kitsune",
        "detector_version": "1.2",
        "score": 2.0,
        "threshold": 1.0,
        "category": "anomaly",
        "reason": "packet rate 40x above baseline",
        "src_ip": "192.168.1.10",
        "src_port": 40000,
        "dest_ip": "203.0.113.5",
        "dest_port": 23,
        "proto": "TCP",
    }
    args.update(kw)
    return policy.make(**args)


@pytest.mark.parametrize(
    ("score", "threshold", "category", "expected"),
    [
        (1.2, 1.0, "anomaly", 3),
        (1.49, 1.0, "anomaly", 3),
        (1.5, 1.0, "anomaly", 2),
        (2.99, 1.0, "anomaly", 2),
        (3.0, 1.0, "anomaly", 1),
        (30.0, 10.0, "anomaly", 1),
        (1.2, 1.0, "scan", 2),
        (1.2, 1.0, "flood", 2),
        (1.6, 1.0, "scan", 1),
        (1.1, 1.0, "c2", 1),
        (0.5, 1.0, "anomaly", 3),
    ],
)
def test_severity_mapping(score: float, threshold: float, category: str, expected: int) -> None:
    alert = make(AlertPolicy(), score=score, threshold=threshold, category=category)
    assert alert is not None
    assert alert.severity == expected


def test_severity_for_and_ratio_with_nonpositive_thresholds() -> None:
    assert severity_for(3.0, "SCAN") == 1  # category match is case-insensitive
    assert score_ratio(4.0, 2.0) == 2.0
    # negative threshold: relative excess, -0.5 is 50 % beyond -1.0 -> ratio 1.5
    assert score_ratio(-0.5, -1.0) == pytest.approx(1.5)
    assert score_ratio(0.1, 0.0) == float("inf")
    assert score_ratio(0.0, 0.0) == 1.0


def test_min_severity_drops_less_severe() -> None:
    policy = AlertPolicy(min_severity=2)
    assert make(policy, score=1.1) is None
    assert make(policy, score=1.6, device_id="d2") is not None
    assert len(policy.alerts()) == 1


def test_eve_record_has_exactly_the_contract_fields() -> None:
    alert = make(AlertPolicy(site_id="lab"), ts=1_700_000_000.25)
    assert alert is not None
    eve = json.loads(json.dumps(alert.to_eve()))
    for key in (
        "timestamp",
        "event_type",
        "flow_id",
        "src_ip",
        "src_port",
        "dest_ip",
        "dest_port",
        "proto",
        "device_id",
        "site_id",
    ):
        assert key in eve
    assert RFC3339_Z.match(eve["timestamp"]), eve["timestamp"]
    assert eve["timestamp"] == "2023-11-14T22:13:20.250000Z"
    assert eve["event_type"] == "alert"
    assert eve["site_id"] == "lab"
    assert eve["device_id"] == "aa:bb:cc:dd:ee:01"
    assert (eve["src_ip"], eve["src_port"], eve["dest_ip"], eve["dest_port"], eve["proto"]) == (
        "192.168.1.10",
        40000,
        "203.0.113.5",
        23,
        "TCP",
    )
    sub = eve["alert"]
    assert {"detector", "detector_version", "score", "threshold", "severity", "category", "reason"} <= set(
        sub
    )
    assert sub["detector"] == "kitsune"
    assert sub["detector_version"] == "1.2"
    assert sub["score"] == 2.0
    assert sub["threshold"] == 1.0
    assert sub["severity"] == 2
    assert sub["category"] == "anomaly"
    assert sub["reason"] == "packet rate 40x above baseline"
    assert eve["iotsentry"]["dedup_key"] == dedup_key(
        "aa:bb:cc:dd:ee:01", "kitsune", "anomaly", "203.0.113.5", 23
    )


def test_flow_id_derived_stable_positive_and_direction_free() -> None:
    a = make(AlertPolicy())
    b = make(AlertPolicy())
    assert a is not None and b is not None
    assert a.flow_id == b.flow_id
    assert 0 < a.flow_id < 2**63
    assert a.flow_id == flow_id_for("TCP", "192.168.1.10", 40000, "203.0.113.5", 23)
    assert flow_id_for("TCP", "203.0.113.5", 23, "192.168.1.10", 40000) == a.flow_id
    assert flow_id_for("TCP", "192.168.1.10", 40001, "203.0.113.5", 23) != a.flow_id
    assert flow_id_for("UDP", "192.168.1.10", 40000, "203.0.113.5", 23) != a.flow_id
    explicit = make(AlertPolicy(), flow_id=12345)
    assert explicit is not None and explicit.flow_id == 12345
    # a device-level alert without addresses has no flow
    none = make(AlertPolicy(), src_ip="", dest_ip="", src_port=0, dest_port=0, proto="")
    assert none is not None and none.flow_id == 0


def test_dedup_within_window_updates_kept_alert() -> None:
    policy = AlertPolicy(dedup_window_s=300.0)
    first = make(policy, ts=1000.0)
    assert first is not None
    assert make(policy, ts=1100.0) is None
    assert make(policy, ts=1299.0, score=2.5) is None
    assert first.extra["count"] == 3
    assert first.extra["first_ts"] == 1000.0
    assert first.extra["last_ts"] == 1299.0
    assert first.extra["max_score"] == 2.5
    assert policy.suppressed == 2
    # window is fixed from the kept alert: 300 s later is a new alert
    second = make(policy, ts=1300.0)
    assert second is not None and second.extra["count"] == 1
    assert [a.timestamp for a in policy.alerts()] == [1000.0, 1300.0]


def test_dedup_distinguishes_device_detector_category_and_destination() -> None:
    policy = AlertPolicy()
    assert make(policy) is not None
    assert make(policy, device_id="aa:bb:cc:dd:ee:02") is not None
    assert make(policy, detector="iforest") is not None
    assert make(policy, category="scan") is not None
    assert make(policy, dest_ip="203.0.113.6") is not None
    assert make(policy, dest_port=2323) is not None
    assert make(policy, src_port=40001) is None  # source port is not part of the key
    assert len(policy.alerts()) == 6


def test_more_severe_repeat_is_not_folded() -> None:
    policy = AlertPolicy()
    low = make(policy, ts=10.0, score=1.1)
    high = make(policy, ts=20.0, score=5.0)
    assert low is not None and high is not None
    assert (low.severity, high.severity) == (3, 1)
    # and later low repeats fold into the newer, high one
    assert make(policy, ts=30.0, score=1.1) is None
    assert high.extra["count"] == 2 and low.extra["count"] == 1


def test_alerts_in_time_order_and_extra_not_shared() -> None:
    policy = AlertPolicy()
    extra = {"window": 5}
    make(policy, ts=50.0, device_id="b", extra=extra)
    make(policy, ts=10.0, device_id="a", extra=extra)
    make(policy, ts=30.0, device_id="c")
    assert [a.device_id for a in policy.alerts()] == ["a", "c", "b"]
    assert extra == {"window": 5}
    assert policy.alerts()[0].extra["window"] == 5


def test_caller_dedup_key_is_used() -> None:
    policy = AlertPolicy()
    assert make(policy, extra={"dedup_key": "custom"}, dest_port=1) is not None
    assert make(policy, extra={"dedup_key": "custom"}, dest_port=2) is None


def test_rejects_non_finite_and_bad_config() -> None:
    with pytest.raises(ValueError):
        make(AlertPolicy(), score=float("nan"))
    with pytest.raises(ValueError):
        AlertPolicy(min_severity=4)
    with pytest.raises(ValueError):
        AlertPolicy(dedup_window_s=-1)


def test_dedup_key_is_the_json_list_of_its_fields() -> None:
    """The stored key format: exactly ``json.dumps`` of the fields, for any text (quotes,
    control characters, non-ASCII names)."""
    rnd = random.Random(7)
    alphabet = 'ab"\\\n\t\x00\x1f\u00e9\u4e2d\U0001f600/:.'
    for _ in range(2000):
        f = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8))) for _ in range(4)]
        port = rnd.randint(0, 65535)
        assert dedup_key(*f, port) == json.dumps([*f, port], separators=(",", ":"))
