"""Flower federations of FlowMLP on IoT-23 sites: the Simulation Runtime (Ray) and LocalGrid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import data_path

pytest.importorskip("flwr")
pytest.importorskip("ray")

SPLITS = {"34-1": 2, "21-1": 1, "44-1": 1, "5-1": 1}


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    from iotsentry.federated.simulate import prepare

    data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled")
    data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv")
    return prepare(data_path(), SPLITS)


@pytest.mark.slow
def test_flower_simulation_runtime_learns_and_matches_local_grid(setup) -> None:  # type: ignore[no-untyped-def]
    from iotsentry.federated.simulate import simulate

    res = simulate(3, "fedavg", data_path(), setup=setup, runtime="ray")
    assert len(res["sites"]) == 5
    assert len(res["federated"]["per_round_site_mean"]) == 3  # one evaluate round per round
    fed = res["federated"]["auc_site_mean"]
    assert not math.isnan(fed)
    # the ClientApp-reported AUCs agree with a recomputation from the final global weights
    assert fed == pytest.approx(res["federated"]["auc_site_mean_reported"], abs=1e-9)
    assert fed > 0.6
    assert res["bytes_per_site_per_round"]["down"] > 0

    # the same apps through the in-process grid end with the same global model
    local = simulate(3, "fedavg", data_path(), setup=setup, runtime="local")
    for a, b in zip(res["weights"], local["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_per_class_split_makes_every_infected_scenario_evaluable() -> None:
    from iotsentry.federated.sites import build_sites

    sites = build_sites(data_path())
    assert len(sites) == 15
    ev = [s.name for s in sites if s.evaluable]
    assert len(ev) >= 10
    for scen in ("42-1", "20-1", "21-1", "44-1"):  # only a handful of malicious flows each
        assert any(n.startswith(scen) for n in ev)
    for s in sites:
        for cls in ("benign", "malicious"):  # held-out rows come after train rows of the class
            tr = s.X_train[s.y_train == cls]
            assert len(tr) or not (s.y_test == cls).any() or (s.y_test == cls).sum() == 1


def test_class_time_split_keeps_both_sides_and_order() -> None:
    from iotsentry.federated.sites import class_time_split

    y = np.array(["benign"] * 10 + ["malicious"] * 2 + ["benign"] * 5 + ["malicious"] * 3)
    tr, te = class_time_split(y, 0.8)
    assert sorted([*tr, *te]) == list(range(len(y)))
    for c in ("benign", "malicious"):
        a, b = tr[y[tr] == c], te[y[te] == c]
        assert len(a) and len(b) and a.max() < b.min()
    assert class_time_split(np.array(["benign"]), 0.8)[0].tolist() == [0]


def test_time_slices_cut_at_benign_quantiles() -> None:
    from iotsentry.federated.sites import time_slices

    y = np.array(["benign"] * 4 + ["malicious"] * 100 + ["benign"] * 4)
    parts = time_slices(y, 2)
    assert [int((y[p] == "benign").sum()) for p in parts] == [4, 4]
    assert np.concatenate(parts).tolist() == list(range(len(y)))


@pytest.mark.slow
def test_local_runtime_fedavg_close_to_centralized(setup) -> None:  # type: ignore[no-untyped-def]
    from iotsentry.federated.simulate import simulate

    res = simulate(5, "fedavg", data_path(), setup=setup, runtime="local")
    assert res["centralized"]["auc_site_mean"] - res["federated"]["auc_site_mean"] < 0.05
    # each local-only model is weaker on other sites' traffic than on its own
    assert res["local"]["auc_cross_site_mean"] < res["local"]["auc_site_mean"]


@pytest.mark.slow
def test_federated_autoencoder_trains_on_benign_rows_only() -> None:
    from iotsentry.federated.models import n_train_rows
    from iotsentry.federated.simulate import prepare, simulate

    setup = prepare(data_path(), SPLITS, kind="ae")
    res = simulate(4, "fedavg", data_path(), setup=setup, runtime="local", local_epochs=2)
    assert res["model"] == "ae"
    # FedAvg weights: the benign rows a site trains on, not all its rows
    assert n_train_rows("ae", ["benign", "malicious", "benign"]) == 2
    assert res["federated"]["auc_site_mean"] > 0.8
    assert res["federated"]["auc_site_mean"] == pytest.approx(
        res["federated"]["auc_site_mean_reported"], abs=1e-9
    )
