"""Two local Ray workers give the same alerts, incidents and baselines as one engine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, data_path
from iotsentry.engine import DetectionEngine, shard_of
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.pipeline import AnalysisConfig, AnalysisResult, Analyzer

sys.path.insert(0, str(REPO / "benchmarks"))

import fleet

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def _canon(r: AnalysisResult) -> dict[str, Any]:
    """Everything a run produced, in a form that compares exactly."""
    return {
        "alerts": [a.to_eve() for a in r.alerts],
        "incidents": sorted(json.dumps(i.to_dict(), sort_keys=True, default=str) for i in r.incidents),
        "baselines": json.dumps(dict(r.baselines), sort_keys=True, default=str),
        "absorbed": sorted(json.dumps(x, sort_keys=True, default=str) for x in r.absorbed),
        "timelines": json.dumps(r.timelines, sort_keys=True),
        "devices": [json.dumps(d.to_dict(), sort_keys=True, default=str) for d in r.devices],
        "groups": json.dumps(r.peer_groups, sort_keys=True, default=str),
        "stats": {k: v for k, v in r.stats.items() if k != "workers"},
    }


def _compare(path: Path, learn_seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    one = _canon(Analyzer([path], AnalysisConfig(learn_seconds=learn_seconds)).run())
    two = _canon(Analyzer([path], AnalysisConfig(learn_seconds=learn_seconds, workers=2)).run())
    for key in one:
        assert one[key] == two[key], key
    return one, two


def test_shard_of_is_stable_and_spreads_devices() -> None:
    ids = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(2000)]
    shares = [sum(shard_of(d, 2) == k for d in ids) for k in range(2)]
    assert shares[0] + shares[1] == 2000 and min(shares) > 900
    assert [shard_of(d, 3) for d in ids[:50]] == [shard_of(d, 3) for d in ids[:50]]


def test_a_worker_judges_only_its_devices_and_keeps_every_clock(tmp_path: Path) -> None:
    path = tmp_path / "home.pcap"
    generate_home(path, seed=4, duration_s=1800.0, infect_at=0.6)
    from iotsentry.capture.appfields import keep_raw_for_app_fields
    from iotsentry.pipeline import iter_batches

    engines = [DetectionEngine(600.0, shard=(k, 2)) for k in range(2)]
    for b in iter_batches([path], 5_000, with_raw=keep_raw_for_app_fields):
        for e in engines:
            e.ingest(b)
    for e in engines:
        e.flush()
    owned = [e.owned_ids() for e in engines]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    for e, mine in zip(engines, owned, strict=True):
        assert {a.device_id for a in e.policy.alerts()} <= mine
        assert set(e.baselines()) <= mine
        # every device's clock runs on every worker (learning ends fall at the same times)
        starts = e.baseline.clocks()[0]
        assert all(s < float("inf") for s in starts.tolist())


@pytest.mark.slow
def test_two_workers_equal_one_engine_on_an_infected_home(tmp_path: Path) -> None:
    path = tmp_path / "home.pcap"
    generate_home(path, seed=9, duration_s=3 * 3600.0, infect_at=0.8)
    one, _ = _compare(path, 1800.0)
    assert any(a["alert"]["category"] in ("scan", "c2", "flood") for a in one["alerts"] if "alert" in a)


@pytest.mark.slow
def test_two_workers_equal_one_engine_on_a_fleet_of_real_devices(tmp_path: Path) -> None:
    """Clones of real IoTEnsemble devices share types and vendors: their group knowledge crosses
    the workers at every clock hour, their absorption and offline notices happen on both."""
    folder = data_path("iotensemble")
    paths = sorted(folder.glob("*/2020-11-2[34].pcap"))
    if not paths:
        pytest.skip(f"no 2020-11-23/24 captures under {folder}")
    src = fleet.analyse(fleet.load_frames(paths))
    out = tmp_path / "fleet.pcap"
    fleet.write_fleet(out, src, clones=3, seed=1)
    one, _ = _compare(out, 3600.0)
    assert len(one["alerts"]) > 10 and one["absorbed"]
