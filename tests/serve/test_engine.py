"""The streaming engine raises the batch pipeline's alerts, with bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servekit import LEARN_S, home_capture

from conftest import data_path
from iotsentry.capture.appfields import keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import Alert
from iotsentry.serve.engine import StreamEngine

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
SOMFY = (
    "iot23",
    "pcap",
    "CTU-Honeypot-Capture-7-1",
    "Somfy-01",
    "2019-07-03-15-15-47-first_start_somfy_gateway.pcap",
)


def _key(a: Alert) -> tuple[object, ...]:
    return (a.timestamp, a.device_id, a.detector, a.category, a.dest_ip, a.dest_port, a.severity, a.reason)


def _stream(paths: list[Path], learn_s: float, batch_size: int) -> tuple[StreamEngine, list[Alert]]:
    eng = StreamEngine(learn_s)
    alerts: list[Alert] = []
    for p in paths:
        for b in read_packets(p, batch_size=batch_size, with_raw=keep_raw_for_app_fields):
            alerts += eng.ingest(b).alerts
            # nothing but the open window is held back
            if eng.carried:
                assert eng._carry is not None
                w = np.floor(eng._carry.ts / 60.0)
                assert (w == w[-1]).all()
    alerts += eng.flush().alerts
    return eng, alerts


def _same_alerts(paths: list[Path], learn_s: float, batch_size: int) -> list[Alert]:
    batch = Analyzer(paths, AnalysisConfig(learn_seconds=learn_s)).run()
    _eng, streamed = _stream(paths, learn_s, batch_size)
    assert sorted(map(_key, streamed)) == sorted(map(_key, batch.alerts))
    return streamed


@pytest.mark.parametrize("batch_size", [997, 20_000])
def test_synthetic_home_gives_the_batch_pipelines_alerts(tmp_path: Path, batch_size: int) -> None:
    home = home_capture(tmp_path / "home.pcap")
    alerts = _same_alerts([home], LEARN_S, batch_size)
    assert {"scan", "c2", "flood"} <= {a.category for a in alerts}


@pytest.mark.slow
@pytest.mark.parametrize("learn_s", [60.0, 600.0])
def test_real_captures_give_the_batch_pipelines_alerts(learn_s: float) -> None:
    """Two IoT-23 honeypot captures one after the other: the Somfy devices appear long after
    the first learning ended (they are added to the baseline and the device index as they
    appear, and learn on their own clocks from their own first packets)."""
    hue, somfy = data_path(*HUE), data_path(*SOMFY)
    _same_alerts([hue], learn_s, 2_000)
    _same_alerts([hue, somfy], learn_s, 2_000)
    eng, _ = _stream([hue, somfy], learn_s, 2_000)
    assert eng.detector is not None
    late = [p for p in eng.baseline.profiles if p.learn_start > eng.t_end + 3600.0]
    assert late and len(eng.index) == len(eng.baseline.device_ids)
    for p in late:
        assert p.learn_end == np.floor((p.learn_start + learn_s) / 60.0) * 60.0
        assert p.windows and min(p.window_ts) >= np.floor(p.learn_start / 60.0) * 60.0


def test_learning_ends_at_the_window_aligned_learning_end_and_yields_baselines(tmp_path: Path) -> None:
    home = home_capture(tmp_path / "home.pcap", duration_s=1200.0, infect_at=0.9)
    eng = StreamEngine(300.0)
    learned_at = None
    for b in read_packets(home, batch_size=3_000, with_raw=keep_raw_for_app_fields):
        out = eng.ingest(b)
        if out.learned:
            learned_at = float(b.ts.max())
    assert eng.t_end == np.floor((eng.first_ts + 300.0) / 60.0) * 60.0
    assert learned_at is not None and learned_at >= eng.t_end
    base = eng.baselines()
    assert base and all(p["observed_s"] <= 300.0 for p in base.values())
    an = Analyzer([home], AnalysisConfig(learn_seconds=300.0))
    assert set(an.run().baselines) >= set(base)
