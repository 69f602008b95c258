"""A small real Flower simulation (Ray backend) of FlowMLP on IoT-23 sites."""

from __future__ import annotations

import math

import pytest

from conftest import data_path

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
def test_flower_fedavg_small_run_learns() -> None:
    from iotsentry.federated.simulate import simulate

    data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled")
    data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv")
    splits = {"34-1": 2, "21-1": 1, "44-1": 1, "5-1": 1}
    res = simulate(3, "fedavg", data_path(), splits=splits)

    assert len(res["sites"]) == 5
    assert len(res["federated"]["per_round_site_mean"]) == 3  # one evaluate round per round
    fed = res["federated"]["auc_site_mean"]
    local = res["local"]["auc_site_mean"]
    assert not math.isnan(fed)
    # the ClientApp-reported AUCs agree with a recomputation from the final global weights
    assert fed == pytest.approx(res["federated"]["auc_site_mean_recomputed"], abs=1e-9)
    assert fed > 0.6 or fed > local
    assert res["bytes_per_site_per_round"]["down"] > 0
