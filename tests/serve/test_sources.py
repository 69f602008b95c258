"""Source adapters: the capture followers resume from the state the monitor persisted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servekit import config_text, cut_capture, home_capture, write_pcap

from conftest import data_path
from iotsentry.schema import FlowBatch, PacketBatch
from iotsentry.serve.config import SourceConfig
from iotsentry.serve.sources import FakeSource, Source, make_source


def test_pcap_dir_source_resumes_from_its_json_state(tmp_path: Path) -> None:
    files = cut_capture(home_capture(tmp_path / "home.pcap", duration_s=900.0), 300.0)
    pcaps = tmp_path / "pcaps"
    pcaps.mkdir()
    for name, rows in files:
        write_pcap(pcaps, name, rows)
    total = sum(len(r) for _, r in files)
    cfg = SourceConfig("pcap-dir", "lan", path=pcaps, pattern="*.pcap", settle_s=0.1, batch_size=1000)
    a = make_source(cfg)
    assert isinstance(a, Source)
    first = [a.poll(0.5) for _ in range(5)]
    assert all(isinstance(b, PacketBatch) and b.raw is not None for b in first)
    saved = json.loads(json.dumps(a.state()))
    a.close()
    b = make_source(cfg)
    b.restore(saved)
    rest = 0
    while (batch := b.poll(0.3)) is not None:
        rest += len(batch)
    assert sum(len(x) for x in first if x is not None) + rest == total


def test_zeek_log_source_reads_flows_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    shutil.copy(data_path("iot23", "zeek", "CTU-Honeypot-Capture-4-1", "conn.log.labeled"), log)
    cfg = SourceConfig(kind="zeek-log", name="zeek", path=log)
    src = make_source(cfg)
    got = src.poll(0.5)
    assert isinstance(got, FlowBatch) and len(got)
    again = make_source(cfg)
    again.restore(json.loads(json.dumps(src.state())))
    assert again.poll(0.2) is None  # nothing new: nothing re-read


def test_fake_source_state_round_trip() -> None:
    src = FakeSource([PacketBatch.empty(), PacketBatch.empty()])
    src.poll(0.0)
    other = FakeSource(src.batches)
    other.restore(src.state())
    assert other.pos == 1


@pytest.mark.slow
def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    files = cut_capture(home_capture(tmp_path / "home.pcap", duration_s=1200.0), 300.0)
    (tmp_path / "pcaps").mkdir()
    for name, rows in files:
        write_pcap(tmp_path / "pcaps", name, rows)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_text(tmp_path, learn_s=300.0))
    with (tmp_path / "serve.log").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "iotsentry.serve", "--config", str(cfg)], stderr=err)
        deadline = time.monotonic() + 60
        state = tmp_path / "state" / "state.json"
        total = sum(len(r) for _, r in files)
        while time.monotonic() < deadline:
            lan = json.loads(state.read_text())["sources"].get("lan", {}) if state.exists() else {}
            if lan.get("packets") == total:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    events = [json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines()]
    assert events[-1]["event"] == "serve.stop" and events[-1]["status"] == "ok"
    assert any(e["event"] == "signal" and e["signal"] == "SIGTERM" for e in events)
