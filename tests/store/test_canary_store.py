"""The store's canary coverage history (``canary_runs``) and source state, on both backends."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotsentry.store import MIGRATIONS, CanaryResult, open_store
from iotsentry.store.base import StoreBase


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBase]:
    target = str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_schema_dsn")
    with open_store(target) as s:
        yield s


def test_canary_results_latest_per_class_history_and_odd_numbers(store: StoreBase) -> None:
    assert store.version == len(MIGRATIONS)
    assert store.latest_canary_results() == [] and store.query_canary_results() == ([], 0)
    written = store.add_canary_results(
        [
            CanaryResult(10.0, "profile", "flood", True, 5.0, 1.0, "d1", "r1"),
            CanaryResult(20.0, "profile", "flood", False, float("nan"), float("inf"), "d2", "r2"),
            CanaryResult(20.0, "profile", "flood", True, 2.0, 1.0, "d2", "r2b"),  # same ts: later id wins
            CanaryResult(15.0, "profile", "port-scan", False, -float("inf"), 1.0),
        ]
    )
    assert written == 4
    latest = store.latest_canary_results()
    assert [(r.attack_class, r.canary_run) for r in latest] == [("flood", "r2b"), ("port-scan", "")]
    scan = latest[1]
    assert scan.score == -math.inf and scan.threshold == 1.0 and not scan.detected and scan.device_id == ""
    items, total = store.query_canary_results(limit=10)
    assert total == 4 and [r.ts for r in items] == [20.0, 20.0, 15.0, 10.0]
    assert items[1].score is None and items[1].threshold == math.inf  # NaN -> NULL, infinity kept
    page, total = store.query_canary_results(attack_class="flood", limit=1, offset=1)
    assert total == 3 and [r.canary_run for r in page] == ["r2"]
    with pytest.raises(ValueError):
        store.query_canary_results(limit=-1)


def test_source_state_round_trip(store: StoreBase) -> None:
    assert store.get_source_state() == {}
    store.set_source_state({"lan": {"state": {"files": {"a.pcap": 24}}, "packets": 3}})
    store.add_alerts(None, [], source_state={"zeek": {"state": {"offset": 9}}})
    assert store.get_source_state() == {
        "lan": {"state": {"files": {"a.pcap": 24}}, "packets": 3},
        "zeek": {"state": {"offset": 9}},
    }
