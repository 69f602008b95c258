from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from plotly.offline import get_plotlyjs

from iotsentry.evaluation.fl_report import q4_verdict, q5_cell_verdict, write_fl_report, write_poison_report

EVIL = '<script>alert("pwned")</script>'
NAN = float("nan")
MET, MISSED = '<span class="met">met</span>', '<span class="missed">missed</span>'


def _block(site_mean: float, per_site: list[float | None]) -> dict[str, Any]:
    return {
        "auc_site_mean": site_mean,
        "auc_cross_site_mean": NAN,
        "auc_per_site": per_site,
        "auc_pooled": 0.97,
        "f1": None,
        "targeted_recall": 0.8,
        "n_targeted": 12,
    }


def _sim(fed: float = 0.95, cen: float = 0.955) -> dict[str, Any]:
    site = {"n_train": 100, "n_test": 25, "malicious_train": 10, "malicious_test": 3, "evaluable": True}
    federated = _block(fed, [0.9, None, NAN])
    federated |= {
        "auc_site_mean_reported": fed,
        "per_round_site_mean": [0.7, NAN, fed],
        "per_round_per_site": [{0: 0.6, 1: None, 2: NAN}, {"0": 0.8}, {0: 0.9, 2: 1.0}],
    }
    return {
        "aggregator": "fedavg",
        "runtime": "local",
        "n_rounds": 3,
        "local_epochs": 1,
        "sites": [
            {"name": "34-1/0", **site},
            {"name": "5-1/0", **site, "malicious_test": 0, "evaluable": False},
            {"name": EVIL, **site},
        ],
        "federated": federated,
        "centralized": _block(cen, [0.95, None, 0.96]),
        "local": _block(0.9, [0.9, None]),  # one entry short: must not crash
        "bytes_per_site_per_round": {"down": 1000, "up": 1000},
        "seconds": {"total": 1.5, "federation": 1.0},
    }


def _cell(
    attack: str, agg: str, frac: float, recall: float, auc: float, loss: dict[str, float]
) -> dict[str, Any]:
    return {
        "attack": attack,
        "aggregator": agg,
        "fraction": frac,
        "n_malicious": 0 if attack == "none" else 1,
        "malicious_sites": [] if attack == "none" else [EVIL],
        "overall": {"auc_site_mean": auc, "auc_pooled": 0.9, "f1": 0.9},
        "targeted_recall": recall,
        "loss_vs_clean": loss,
        "per_round_site_mean": [auc],
        "accepted": [[0, 1]] if agg == "median" else None,
        "seconds": 0.5,
    }


def _matrix() -> dict[str, Any]:
    zero = {"auc_site_mean": 0.0, "f1": 0.0, "targeted_recall": 0.0}
    cells = [
        _cell("none", "fedavg", 0.0, 1.0, 0.99, zero),
        _cell(
            "targeted", "fedavg", 0.2, 0.1, 0.985, {"auc_site_mean": 0.005, "f1": 0.0, "targeted_recall": 0.9}
        ),
        _cell("targeted", "fedavg", 0.4, NAN, NAN, {"auc_site_mean": NAN, "f1": NAN, "targeted_recall": NAN}),
        _cell("none", "median", 0.0, 0.99, 0.98, zero),
        _cell(
            "targeted",
            "median",
            0.2,
            0.98,
            0.978,
            {"auc_site_mean": 0.002, "f1": 0.0, "targeted_recall": 0.01},
        ),
        _cell(
            "targeted", "median", 0.4, 0.5, 0.9, {"auc_site_mean": 0.08, "f1": 0.1, "targeted_recall": 0.49}
        ),
    ]
    clean = {"auc_site_mean": 0.99, "auc_pooled": 0.9, "f1": 0.9, "targeted_recall": 1.0}
    return {
        "default_aggregator": "median",
        "metric": {"overall": "per-site mean AUC <b>", "targeted_recall": "C&C recall"},
        "rounds": 2,
        "local_epochs": 1,
        "seed": 0,
        "sites": ["34-1/0", EVIL],
        "n_targeted": 12,
        "cells": cells,
        "summary": {
            "fedavg": {
                "clean": clean,
                "worst_targeted_loss": 0.9,
                "worst_overall_loss": 0.005,
                "worst_cell": "targeted",
                "meets_target": False,
            },
            "median": {
                "clean": clean,
                "worst_targeted_loss": 0.01,
                "worst_overall_loss": 0.002,
                "worst_cell": "targeted",
                "meets_target": True,
            },
        },
        "seconds": 3.0,
    }


def _check_page(page: str, n_plots: int) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert page.count(get_plotlyjs()[:200]) == 1 and page.count("plotly.js v") == 1
    assert page.count("Plotly.newPlot(") == n_plots
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';' in page
    rest = page.replace(get_plotlyjs(), "")
    assert EVIL not in rest and html.escape(EVIL) in rest
    assert "<script src" not in rest and "http://" not in rest and "https://" not in rest
    scripts = re.findall(r"<script\b[^>]*>", rest)
    assert all(s == "<script>" for s in scripts) and rest.count("</script>") == len(scripts)
    assert "NaN" not in rest  # NaN becomes null in the figure JSON (a bare NaN is invalid JSON)


def test_fl_report(tmp_path: Path) -> None:
    out = write_fl_report(_sim(), tmp_path / "sub" / "fl.html")
    assert out == tmp_path / "sub" / "fl.html" and out.is_file()
    assert not list(out.parent.glob("*.tmp"))
    page = out.read_text(encoding="utf-8")
    _check_page(page, 2)  # per-round line plot + per-site bars
    assert page.count(MET) == 1 and MISSED not in page  # 0.955 - 0.95 <= 0.01
    assert "centralized − federated = +0.0050" in page
    assert "34-1/0" in page and "5-1/0" in page
    assert "1,000 B (1.0 KiB)" in page
    assert "18,000 B" in page  # (1000 + 1000) bytes x 3 sites x 3 rounds
    assert "n/a" in page  # NaN / None metrics


@pytest.mark.parametrize(
    ("fed", "cen", "expected"),
    [(0.95, 0.955, True), (0.96, 0.95, True), (0.94, 0.95, True), (0.93, 0.95, False), (NAN, 0.95, None)],
)
def test_q4_verdict(tmp_path: Path, fed: float, cen: float, expected: bool | None) -> None:
    res = _sim(fed, cen)
    assert q4_verdict(res) is expected
    page = write_fl_report(res, tmp_path / "fl.html").read_text(encoding="utf-8")
    assert (MET in page) is (expected is True)
    assert (MISSED in page) is (expected is False)


def test_fl_report_minimal_input(tmp_path: Path) -> None:
    page = write_fl_report({"aggregator": EVIL}, tmp_path / "fl.html").read_text(encoding="utf-8")
    assert "plotly.js v" not in page and "Plotly.newPlot(" not in page
    assert EVIL not in page and html.escape(EVIL) in page
    assert "No per-round evaluation." in page and "No evaluable site." in page
    assert MET not in page and MISSED not in page


def test_poison_report(tmp_path: Path) -> None:
    page = write_poison_report(_matrix(), tmp_path / "poison.html").read_text(encoding="utf-8")
    _check_page(page, 2)  # one heatmap pair per fraction (0.2 and 0.4)
    assert "20% malicious sites" in page and "40% malicious sites" in page
    assert page.count('<tr class="default"><td>median (default)</td>') == 1
    assert (
        page.count('<span class="met">yes</span>') == 1 and page.count('<span class="missed">no</span>') == 1
    )
    assert page.count('<tr class="flagged">') == 1  # fedavg targeted 20 %: recall loss 0.9
    assert "can look fine while the recall of exactly those flows collapses" in page
    assert "per-site mean AUC &lt;b&gt;" in page
    assert page.count("not judged") == 2  # the 40 % cells


def test_q5_cell_verdict() -> None:
    cells = _matrix()["cells"]
    assert [q5_cell_verdict(c) for c in cells] == [
        "clean",
        "broken",
        "not judged",
        "clean",
        "within",
        "not judged",
    ]
    nan_cell = {**cells[1], "loss_vs_clean": {"auc_site_mean": NAN, "f1": 0.0, "targeted_recall": 0.0}}
    assert q5_cell_verdict(nan_cell) == "n/a"
    assert q5_cell_verdict({**cells[4], "loss_vs_clean": {"auc_site_mean": 0.011, "f1": 0.0}}) == "n/a"


def test_poison_report_without_attacks(tmp_path: Path) -> None:
    m = _matrix()
    m["cells"] = [c for c in m["cells"] if c["attack"] == "none"]
    m.pop("summary")
    page = write_poison_report(m, tmp_path / "p.html").read_text(encoding="utf-8")
    assert "plotly.js v" not in page and "No attacked cells." in page


@pytest.mark.slow
def test_real_small_run_reports(tmp_path: Path) -> None:
    from conftest import data_path

    data = data_path()
    from iotsentry.federated.poison_matrix import run_matrix
    from iotsentry.federated.simulate import prepare, simulate

    setup = prepare(data, splits={"34-1": 2, "44-1": 1, "21-1": 1, "5-1": 1})
    res = simulate(3, "fedavg", data, runtime="local", setup=setup)
    res.pop("weights")
    json.dumps(res)  # the report input is the JSON-ready part
    page = write_fl_report(res, tmp_path / "fl.html").read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") == 2 and "34-1/0" in page
    fed, cen = res["federated"]["auc_site_mean"], res["centralized"]["auc_site_mean"]
    if math.isfinite(fed) and math.isfinite(cen):
        assert (MET if cen - fed <= 0.01 else MISSED) in page
    m = run_matrix(
        data,
        attacks=("none", "sign-flip", "targeted"),
        aggregators=("fedavg", "median"),
        fractions=(0.2, 0.4),
        rounds=2,
        setup=setup,
    )
    page = write_poison_report(m, tmp_path / "poison.html").read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") == 2
    assert page.count("<tr") >= len(m["cells"]) + len(m["summary"])
