"""`iotsentry redteam evasion`: JSON rows with the documented keys, report, verdict per model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import data_path

KEYS = {"model", "attack", "space", "realisable", "clean_detection_rate", "adversarial_detection_rate", "fpr"}


@pytest.mark.slow
def test_evasion_cli_small_run(tmp_path: Path) -> None:
    data = data_path()
    r = subprocess.run(
        [sys.executable, "-m", "iotsentry.cli", "redteam", "evasion", "--data", str(data),
         "--n-malicious", "20", "--n-blackbox", "4", "--recipes", "D1",
         "--json", str(tmp_path / "e.json"), "--report", str(tmp_path / "e.html")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "e.json").read_text())
    assert all(set(row) >= KEYS for row in rows)
    models = {row["model"] for row in rows}
    assert "default" in models and "mlp" in models and "profile" in models  # shipped + undefended
    assert {row["space"] for row in rows} == {"feature", "problem"}
    # the undefended MLP falls to unconstrained PGD, which is not realisable traffic
    pgd = [x for x in rows if x["model"] == "mlp" and x["attack"] == "pgd" and not x["realisable"]]
    assert pgd and pgd[0]["adversarial_detection_rate"] < 0.5 * pgd[0]["clean_detection_rate"]
    verdict = json.loads(r.stdout)
    assert "default" in verdict and 0.0 <= verdict["default"]["retained"] <= 1.0
    assert "Plotly.newPlot" in (tmp_path / "e.html").read_text()


def test_evasion_cli_missing_data(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "iotsentry.cli", "redteam", "evasion", "--data", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and "none" in r.stderr


def test_problem_rows_shape() -> None:
    from iotsentry.adversarial.redteam import problem_rows, strongest

    raw = [
        {"model": "profile", "attack": "D3", "transform": "clean", "clean_detection_rate": 0.99,
         "adversarial_detection_rate": 0.99, "fpr": 0.001, "fpr_measured": 0.0, "realisable": True},
        {"model": "profile", "attack": "D3", "transform": "mimic_baseline", "budget": "1x",
         "clean_detection_rate": 0.99, "adversarial_detection_rate": 0.0, "fpr": 0.001,
         "fpr_measured": 0.0, "realisable": True},
        {"model": "profile", "attack": "D3", "transform": "rate_limit", "budget": "x30",
         "clean_detection_rate": 0.99, "adversarial_detection_rate": 0.5, "fpr": 0.001,
         "fpr_measured": 0.0, "realisable": False},
    ]  # fmt: skip
    rows = problem_rows(raw)
    assert len(rows) == 2 and all(set(r) >= KEYS for r in rows)
    assert rows[0]["attack"] == "D3 mimic_baseline (1x)" and rows[0]["fpr"] == 0.0
    best = strongest(rows)["profile"]
    assert (
        best["attack"].startswith("D3 mimic") and best["meets_target"] is False
    )  # not-realisable row ignored
