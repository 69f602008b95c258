"""`iotsentry fl simulate` and `iotsentry redteam poison`: arguments, errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import data_path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotsentry.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["redteam", "poison", "--data", "nowhere"], ["nowhere", "iot23"]),
        (["fl", "simulate", "--data", "nowhere"], ["nowhere"]),
    ],
)
def test_missing_data_folder(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    _one_line_error(_run(*args, cwd=tmp_path), *needles)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--attacks", "sign-flip,backdoor"], ["--attacks", "backdoor"]),
        (["--aggregators", "fedsgd"], ["--aggregators", "fedsgd"]),
        (["--fractions", "0.1,1.5"], ["--fractions"]),
        (["--fractions", "a,b"], ["--fractions"]),
    ],
)
def test_poison_flags_are_validated(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "d" / "iot23").mkdir(parents=True)
    _one_line_error(_run("redteam", "poison", "--data", str(tmp_path / "d"), *args, cwd=tmp_path), *needles)


def test_attack_needs_a_fraction(tmp_path: Path) -> None:
    (tmp_path / "d" / "iot23").mkdir(parents=True)
    r = _run("fl", "simulate", "--data", str(tmp_path / "d"), "--attack", "sign-flip", cwd=tmp_path)
    _one_line_error(r, "--malicious")


@pytest.mark.slow
def test_poison_json_and_report(tmp_path: Path) -> None:
    data = data_path()
    r = _run(
        "redteam", "poison", "--data", str(data), "--attacks", "sign-flip", "--aggregators", "fedavg,median",
        "--fractions", "0.2", "--rounds", "2", "--sites", "9",
        "--json", str(tmp_path / "m.json"), "--report", str(tmp_path / "m.html"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["default_aggregator"] == m["default_aggregator"].lower()
    got = {(c["attack"], c["aggregator"], c["fraction"]) for c in m["cells"]}
    assert got == {
        ("none", "fedavg", 0.0),
        ("none", "median", 0.0),
        ("sign-flip", "fedavg", 0.2),
        ("sign-flip", "median", 0.2),
    }
    for c in m["cells"]:
        assert {"auc_site_mean", "f1"} <= set(c["overall"]) and "targeted_recall" in c
    assert len(m["sites"]) == 9
    assert "Plotly.newPlot" in (tmp_path / "m.html").read_text()
    assert "INFO" not in r.stderr  # Flower's per-round log is kept quiet


@pytest.mark.slow
def test_simulate_json_report_and_signed_model(tmp_path: Path) -> None:
    data = data_path()
    key = _run("keys", "generate", "--dir", str(tmp_path / "keys"), cwd=tmp_path)
    assert key.returncode == 0, key.stderr
    keyfile = next((tmp_path / "keys").glob("*.key"))
    r = _run(
        "fl", "simulate", "--data", str(data), "--rounds", "2", "--runtime", "local", "--sites", "9",
        "--json", str(tmp_path / "s.json"), "--report", str(tmp_path / "s.html"),
        "--model-out", str(tmp_path / "model"), "--signing-key", str(keyfile), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "s.json").read_text())
    for k in ("metric", "federated", "centralized", "local_only"):
        assert k in s
    assert s["sites"] == 9
    v = _run("model", "verify", str(tmp_path / "model"), "--keyring", str(tmp_path / "keys"), cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    from iotsentry.detectors.flow_models import load_flow_model

    model, manifest = load_flow_model(tmp_path / "model")
    assert manifest["model"] == "mlp" and manifest["training"]["federated"]["rounds"] == 2
    import numpy as np

    scores = model.evaluate(np.zeros((3, len(manifest["feature_names"])), np.float32))[0]
    assert scores.shape == (3,) and np.isfinite(scores).all()
    # tamper: one byte of the weights -> verification refuses it in one line
    w = tmp_path / "model" / "weights.npz"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 1
    w.write_bytes(bytes(raw))
    _one_line_error(
        _run("model", "verify", str(tmp_path / "model"), "--keyring", str(tmp_path / "keys"), cwd=tmp_path)
    )
