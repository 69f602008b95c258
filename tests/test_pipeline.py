"""End to end on the generated smart home and on real captures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import data_path
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.pipeline import AnalysisConfig, Analyzer


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    p = tmp_path_factory.mktemp("home") / "home.pcap"
    truth = generate_home(p, seed=11)
    return p, truth


def test_only_the_infected_device_is_flagged_with_reasons(home: tuple[Path, object]) -> None:
    path, truth = home
    res = Analyzer([path]).run()
    infected = truth.infected_mac  # type: ignore[attr-defined]
    flagged = {a.device_id for a in res.alerts}
    assert flagged == {infected}
    cats = {a.category for a in res.alerts}
    assert {"scan", "flood", "c2"} <= cats, cats
    # alerts come after the infection, and every reason names the device and its baseline
    t0 = truth.infection_ts  # type: ignore[attr-defined]
    assert all(a.timestamp >= t0 for a in res.alerts)
    assert all("baseline" in a.reason for a in res.alerts)
    scan = next(a for a in res.alerts if a.category == "scan")
    assert "port 23" in scan.reason
    # the inventory found every generated device with its vendor
    found = {d.device_id: d for d in res.devices}
    for dev in truth.devices:  # type: ignore[attr-defined]
        assert dev.mac in found
    assert found[truth.gateway["mac"]].is_gateway  # type: ignore[attr-defined]


def test_per_packet_scores_rank_malicious_packets_first(home: tuple[Path, object]) -> None:
    import numpy as np

    from iotsentry.evaluation.metrics import roc_auc

    path, truth = home
    parts = []
    an = Analyzer([path], AnalysisConfig(learn_seconds=truth.infection_ts - truth.ts[0]))  # type: ignore[attr-defined]
    an.run(score_sink=lambda b, d, s: parts.append((b.index.copy(), s.copy())))
    idx = np.concatenate([p[0] for p in parts])
    sc = np.concatenate([p[1] for p in parts])
    labels = np.asarray(truth.labels, bool)[idx]  # type: ignore[attr-defined]
    after = np.asarray(truth.ts)[idx] >= truth.infection_ts  # type: ignore[attr-defined]
    assert roc_auc(labels[after], sc[after]) > 0.95


def test_baselines_are_learned_only_before_the_learning_end(home: tuple[Path, object]) -> None:
    path, _truth = home
    an = Analyzer([path], AnalysisConfig(learn_seconds=600))
    res = an.run()
    for prof in res.baselines.values():
        if prof["observed_s"]:
            assert prof["observed_s"] <= 600
    # ten minutes is enough for the chatty devices to mature, not for a 300 s sensor schedule
    assert res.stats["learn_end"] <= res.stats["first_ts"] + 600


@pytest.mark.slow
def test_benign_iot23_captures_raise_no_alert_when_learning_until_the_recipe_splice() -> None:
    hue = data_path(
        "iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap"
    )
    res = Analyzer([hue], AnalysisConfig(learn_fraction=0.8)).run()
    assert res.alerts == []
    assert any(d.device_id == "00:17:88:75:b3:82" for d in res.devices)
