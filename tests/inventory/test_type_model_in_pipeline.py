"""A learned device-type model replaces the rule-based guess in the inventory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from iotsentry.evaluation.q3 import load_sentinel
from iotsentry.inventory.type_classifier import DeviceTypeClassifier
from iotsentry.pipeline import AnalysisConfig, Analyzer

TYPES = ["Aria", "TP-LinkPlugHS110", "D-LinkCam", "Withings"]


@pytest.mark.slow
def test_inventory_uses_the_type_model_on_a_held_out_capture(tmp_path: Path) -> None:
    root = data_path("iot-sentinel")
    ds = load_sentinel(root, types=TYPES)
    held = [i for i, f in enumerate(ds.files) if f.endswith("TP-LinkPlugHS110/Setup-C-9-STA.pcap")]
    assert len(held) == 1
    train = np.ones(len(ds.types), dtype=bool)
    train[held[0]] = False
    model = DeviceTypeClassifier(n_estimators=50).fit(ds.X[train], list(ds.types[train]))
    model.save(tmp_path / "types.npz")

    capture = root / "TP-LinkPlugHS110" / "Setup-C-9-STA.pcap"
    guessed = {d.device_id: d for d in Analyzer([capture]).inventory()}
    learned = {
        d.device_id: d
        for d in Analyzer([capture], AnalysisConfig(type_model=tmp_path / "types.npz")).inventory()
    }
    plug = "50:c7:bf:00:c7:03"
    assert guessed[plug].device_type == "plug"  # the rule-based guess from the DHCP host name
    assert learned[plug].device_type == "TP-LinkPlugHS110"
    assert 0.0 < learned[plug].type_confidence <= 1.0
    gw = [d for d in learned.values() if d.is_gateway]
    assert gw and gw[0].device_type == "gateway"  # the gateway is not classified
