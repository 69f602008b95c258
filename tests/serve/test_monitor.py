"""The monitor loop end to end: pcap directory -> store (first) -> JSONL sink; restart; backpressure."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servekit import LEARN_S, config_text, cut_capture, home_capture, write_pcap

from iotsentry.alerts.incidents import IncidentBook
from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.capture.appfields import keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.integrity.audit import read_records
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import FlowBatch, PacketBatch
from iotsentry.serve.config import load_config
from iotsentry.serve.engine import EngineOutput, StreamEngine
from iotsentry.serve.monitor import JsonLog, Monitor, build_monitor
from iotsentry.serve.sources import FakeSource
from iotsentry.store import open_store


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[tuple[str, list[tuple[float, bytes]]]]]:
    root = tmp_path_factory.mktemp("home")
    src = home_capture(root / "home.pcap")
    return src, cut_capture(src, 300.0)


def _setup(tmp_path: Path, **kw: Any) -> Path:
    (tmp_path / "pcaps").mkdir()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_text(tmp_path, **kw))
    return cfg


def _run(cfg: Path, log_lines: list[str], **kw: Any) -> Monitor:
    class Lines:
        def write(self, s: str) -> None:
            log_lines.extend(x for x in s.splitlines() if x)

        def flush(self) -> None:
            pass

    mon = build_monitor(load_config(cfg), log=JsonLog(Lines()))  # type: ignore[arg-type]
    try:
        mon.run(handle_signals=False, **kw)
    finally:
        mon.close()
    return mon


def _feed(
    directory: Path, files: list[tuple[str, list[tuple[float, bytes]]]], pause: float
) -> threading.Thread:
    def go() -> None:
        for name, rows in files:
            write_pcap(directory, name, rows)
            time.sleep(pause)

    t = threading.Thread(target=go)
    t.start()
    return t


@pytest.mark.slow
def test_files_appearing_over_time_become_stored_then_sent_alerts(tmp_path: Path, home: Any) -> None:
    src, files = home
    cfg = _setup(tmp_path, extra="[canary]\ninterval_s = 1.0")
    writer = _feed(tmp_path / "pcaps", files, 0.05)
    lines: list[str] = []
    mon = _run(cfg, lines, idle_exit_s=2.0)
    writer.join()
    batch = Analyzer([src], AnalysisConfig(learn_seconds=LEARN_S)).run()
    # every packet was read once
    total = sum(len(rows) for _, rows in files)
    assert mon.source_counters()["lan"]["packets"] == total == batch.stats["packets"]
    # the store holds the batch pipeline's alerts (repeats merged into one row per key) ...
    with open_store(tmp_path / "store.db") as store:
        rows = store.get_alerts(limit=10_000)
        traffic = [r.alert for r in rows if r.alert.event_type == "alert"]
        assert {alert_dedup_key(a) for a in traffic} == {alert_dedup_key(a) for a in batch.alerts}
        assert store.latest_baselines()  # saved at the learning end
        assert store.get_devices()
        incidents = {i.incident_id: i for i in store.query_incidents(limit=10_000)[0]}
    # ... and the JSONL sink got what opened or escalated an incident: the batch pipeline's alerts
    # folded in time order give the same openings and escalations (never one record per repeat)
    sent = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    sent_traffic = [e for e in sent if e["event_type"] == "alert"]
    book = IncidentBook()
    folded = [a for a in sorted(batch.alerts, key=lambda a: a.timestamp) if book.fold(a) is not None]
    want = sorted((a.to_eve()["timestamp"], a.device_id, a.category) for a in folded)
    assert sorted((e["timestamp"], e["device_id"], e["alert"]["category"]) for e in sent_traffic) == want
    assert sorted(incidents) == sorted(i.incident_id for i in book.incidents())  # the same ids
    assert {e["incident_id"] for e in sent_traffic} == set(incidents)
    assert len(sent) == mon.stats.alerts_sent <= mon.stats.alerts_stored  # nothing sent unstored
    # canaries ran through the fitted detector; audit and logs tell the story
    assert mon.stats.canary_runs >= 1
    actions = [r.action for r in read_records(tmp_path / "audit.jsonl")]
    assert {"serve.start", "baseline.learned", "canary.result", "serve.stop"} <= set(actions)
    events = [json.loads(x) for x in lines]
    assert all({"ts", "level", "event"} <= set(e) for e in events)
    assert {"serve.start", "baseline.learned", "alerts.stored", "serve.stop"} <= {e["event"] for e in events}


def test_a_restart_resumes_where_the_stored_state_says(tmp_path: Path, home: Any) -> None:
    src, files = home
    cfg = _setup(tmp_path)
    pcaps = tmp_path / "pcaps"
    for name, rows in files[:9]:
        write_pcap(pcaps, name, rows)
    first = _run(cfg, [], idle_exit_s=1.0)
    n1 = first.stats.packets
    assert n1 == sum(len(r) for _, r in files[:9])
    for name, rows in files[9:]:
        write_pcap(pcaps, name, rows)
    lines: list[str] = []
    second = _run(cfg, lines, idle_exit_s=1.0)
    total = sum(len(r) for _, r in files)
    # no packet read twice, none skipped
    assert second.stats.packets == total - n1
    assert second.source_counters()["lan"]["packets"] == total
    assert any(json.loads(x)["event"] == "source.resumed" for x in lines)
    # the inventory's counters add up over the two runs
    batch = Analyzer([src], AnalysisConfig(learn_seconds=LEARN_S))
    batch.inventory()
    with open_store(tmp_path / "store.db") as store:
        stored = {d.device_id: d.packets for d in store.get_devices()}
    want = {d.device_id: d.packets for d in batch.tracker.devices()}
    assert stored == want
    # the second run started from the baseline the first one saved (no relearning) and said so
    actions = [r.action for r in read_records(tmp_path / "audit.jsonl")]
    assert actions.count("serve.start") == 2 and "baseline.restored" in actions
    assert actions.count("baseline.learned") == 1 and "baseline.reset" not in actions


class SlowEngine(StreamEngine):
    """An engine that takes its time, and watches the queue while it does."""

    monitor: Monitor | None = None
    source: FakeSource | None = None

    def __init__(self) -> None:
        super().__init__(60.0)
        self.depths: list[int] = []
        self.lead: list[int] = []
        self.done = 0

    def ingest(self, batch: PacketBatch | FlowBatch) -> EngineOutput:
        assert self.monitor is not None and self.source is not None
        time.sleep(0.02)
        self.depths.append(self.monitor.queue.qsize())
        self.lead.append(self.source.pos - self.done)
        self.done += 1
        return super().ingest(batch)


def test_backpressure_bounds_the_queue_and_drops_nothing(tmp_path: Path, home: Any) -> None:
    src, _files = home
    batches = list(read_packets(src, batch_size=2_000, with_raw=keep_raw_for_app_fields))
    source = FakeSource(batches)
    eng = SlowEngine()
    store = open_store(tmp_path / "s.db")
    mon = Monitor({"fake": source}, eng, store, tmp_path / "state", queue_size=3, log=JsonLog(io.StringIO()))
    eng.monitor, eng.source = mon, source
    stats = mon.run(idle_exit_s=0.5, handle_signals=False)
    mon.close()
    assert max(eng.depths) <= 3
    # the source is never more than the queue (+ the batch in the reader's hand) ahead
    assert max(eng.lead) <= 3 + 1 + 1
    assert stats.batches == len(batches) and eng.packets == sum(len(b) for b in batches)
    assert source.polls < len(batches) + 100  # the reader waited instead of polling on


def test_alerts_are_in_the_store_before_any_sink_sees_them(tmp_path: Path, home: Any) -> None:
    src, _ = home
    store = open_store(tmp_path / "s.db")
    seen: list[int] = []

    class Probe:
        def emit(self, alert: Any) -> None:
            seen.append(len(store.get_alerts(limit=10_000)))

        def close(self) -> None:
            pass

    batches = list(read_packets(src, batch_size=5_000, with_raw=keep_raw_for_app_fields))
    mon = Monitor(
        {"fake": FakeSource(batches)},
        StreamEngine(LEARN_S),
        store,
        tmp_path / "state",
        sinks=[Probe()],
        log=JsonLog(io.StringIO()),
    )
    mon.run(idle_exit_s=0.5, handle_signals=False)
    mon.close()
    assert seen and all(n >= 1 for n in seen)
    assert np.all(np.diff(seen) >= 0)
