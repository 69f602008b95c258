"""The poisoning red-team on real IoT-23 sites (small matrix, in-process Flower grid)."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest

from conftest import data_path

pytest.importorskip("flwr")

SPLITS = {"34-1": 3, "44-1": 1, "21-1": 1, "20-1": 1, "5-1": 1, "4-1": 1}


@pytest.fixture(scope="module")
def matrix() -> dict[str, Any]:
    from iotsentry.federated.poison_matrix import run_matrix
    from iotsentry.federated.simulate import prepare

    setup = prepare(data_path(), SPLITS)
    return run_matrix(
        data_path(),
        attacks=("none", "sign-flip", "targeted"),
        aggregators=("fedavg", "median", "guarded"),
        fractions=(0.25,),
        rounds=4,
        setup=setup,
    )


def _cell(m: dict[str, Any], attack: str, agg: str) -> dict[str, Any]:
    return next(c for c in m["cells"] if c["attack"] == attack and c["aggregator"] == agg)


def test_malicious_sets_are_nested_and_sized() -> None:
    from iotsentry.federated.poison_matrix import malicious_sites

    sets = [malicious_sites(15, f) for f in (0.1, 0.2, 0.3, 0.4)]
    assert [len(s) for s in sets] == [2, 3, 4, 6]  # round(f * n), at least 1
    assert all(a <= b for a, b in itertools.pairwise(sets))
    assert malicious_sites(15, 0.0) == frozenset()
    assert malicious_sites(5, 0.1) and len(malicious_sites(5, 0.1)) == 1


@pytest.mark.slow
def test_matrix_shape_and_json(matrix: dict[str, Any]) -> None:
    assert matrix["default_aggregator"] in ("fedavg", "median", "guarded", "norm-clip", "fltrust")
    cells = matrix["cells"]
    assert len(cells) == 3 * (1 + 2)  # a clean run per aggregator + attacks x fractions
    for c in cells:
        assert set(c) >= {"attack", "aggregator", "fraction", "overall", "targeted_recall", "loss_vs_clean"}
        assert c["aggregator"] == c["aggregator"].lower()
        assert (c["attack"] == "none") == (c["fraction"] == 0.0) == (c["n_malicious"] == 0)
    json.dumps(matrix)  # JSON-ready


@pytest.mark.slow
def test_fedavg_visibly_fails_where_robust_rules_hold(matrix: dict[str, Any]) -> None:
    clean = _cell(matrix, "none", "fedavg")["overall"]["auc_site_mean"]
    flipped = _cell(matrix, "sign-flip", "fedavg")["overall"]["auc_site_mean"]
    assert clean - flipped > 0.2  # sign flipping wrecks plain averaging
    for agg in ("median", "guarded"):
        assert _cell(matrix, "sign-flip", agg)["loss_vs_clean"]["auc_site_mean"] < 0.05


@pytest.mark.slow
def test_targeted_attack_hits_the_target_class(matrix: dict[str, Any]) -> None:
    fed = _cell(matrix, "targeted", "fedavg")
    assert fed["loss_vs_clean"]["targeted_recall"] > 0.5
    guarded = _cell(matrix, "targeted", "guarded")
    assert guarded["loss_vs_clean"]["targeted_recall"] < 0.05
    assert not math.isnan(guarded["targeted_recall"])


@pytest.mark.slow
def test_summary_flags_fedavg(matrix: dict[str, Any]) -> None:
    s = matrix["summary"]
    assert s["fedavg"]["meets_target"] is False
    assert s["fedavg"]["worst_targeted_loss"] > 0.5
