"""Exactly-once processing of the monitor's sources: the alerts of a batch and the source state
after it are one store transaction, and a restart resumes from the store.

A crash is provoked right after that commit, before the sinks see the batch: in process (a sink
raising a ``BaseException`` the monitor does not swallow) and as a real ``kill -9`` of a child
process (the :data:`~iotsentry.serve.monitor.KILL_AFTER_COMMITS_ENV` test hook). After a
restart nothing is read twice (every stored alert keeps ``count == 1``, no sink sees an alert
twice; the crashed batch's alerts reach the sinks from the outbox) and nothing is skipped
(every batch is ingested once over both runs, every alert is stored). Each check runs on
SQLite and, when a server is available, on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest

from iotsentry.schema import Alert, FlowBatch, PacketBatch
from iotsentry.serve.engine import EngineOutput, StreamEngine
from iotsentry.serve.monitor import KILL_AFTER_COMMITS_ENV, STATE_FILE, JsonLog, Monitor
from iotsentry.serve.sources import FakeSource
from iotsentry.store import MIGRATIONS, Store, open_store

N_BATCHES = 8
CRASH_AT = 3
"""0-based index of the batch whose alert is committed when the process dies."""
SIZES = [10 + i for i in range(N_BATCHES)]


class Tagged:
    """A stand-in batch: ``tag`` names it, ``len()`` is its packet count."""

    def __init__(self, tag: int, size: int) -> None:
        self.tag = tag
        self.size = size

    def __len__(self) -> int:
        return self.size


def batches() -> list[Tagged]:
    """The same input on every run (a source replays it from its restored position)."""
    return [Tagged(i, SIZES[i]) for i in range(N_BATCHES)]


def tag_alert(tag: int) -> Alert:
    """The one alert the engine raises for batch ``tag``: its own de-duplication key, and its own
    device, so each opens an incident (sinks get openings, never repeats)."""
    return Alert(
        timestamp=1000.0 + tag, flow_id=tag, src_ip="10.0.0.2", src_port=5000, dest_ip="203.0.113.9",
        dest_port=1000 + tag, proto="TCP", device_id=f"aa:bb:cc:dd:ee:{tag:02x}", site_id="s",
        detector="tagger", detector_version="1", score=2.0, threshold=1.0, severity=2, category="test",
        reason=f"batch {tag}",
    )  # fmt: skip


class TaggingEngine(StreamEngine):
    """Raises one alert per batch and records which batches it was given."""

    def __init__(self) -> None:
        super().__init__(60.0)
        self.seen: list[int] = []

    def ingest(self, batch: PacketBatch | FlowBatch) -> EngineOutput:
        tag = cast(Any, batch).tag
        self.seen.append(tag)
        return EngineOutput(alerts=[tag_alert(tag)], packets=len(batch))

    def flush(self) -> EngineOutput:
        return EngineOutput()


class Crash(BaseException):
    """Not an ``Exception``: the monitor's sink guard does not catch it (like a dying process)."""


class RecordingSink:
    """Remembers the tag of every alert it is given; raises :class:`Crash` on ``crash_on``."""

    def __init__(self, crash_on: int | None = None, path: Path | None = None) -> None:
        self.crash_on = crash_on
        self.path = path
        self.tags: list[int] = []

    def emit(self, alert: Alert) -> None:
        tag = alert.flow_id
        if tag == self.crash_on:
            raise Crash(f"crash while sending batch {tag}")
        self.tags.append(tag)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"{tag}\n")
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        pass


def monitor(target: str, state_dir: Path, sink: RecordingSink, log: IO[str] | None = None) -> Monitor:
    """A monitor over a fresh source replaying :func:`batches` and a fresh :class:`TaggingEngine`."""
    return Monitor(
        {"fake": FakeSource(cast(Any, batches()))},
        TaggingEngine(),
        open_store(target),
        state_dir,
        sinks=[sink],
        queue_size=2,
        poll_timeout_s=0.05,
        log=JsonLog(log or io.StringIO()),
    )


def stored_tags(target: str) -> dict[int, int]:
    """tag -> count of the stored alerts."""
    with open_store(target) as store:
        return {r.alert.flow_id: r.count for r in store.get_alerts(limit=10_000)}


def stored_incidents(target: str) -> dict[str, int]:
    """device -> count of its stored incident (each tag's alert opens one)."""
    with open_store(target) as store:
        items, total = store.query_incidents(limit=10_000)
    assert total == len({i.device_id for i in items})  # one incident per device, never a second
    return {i.device_id: i.count for i in items}


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store: a SQLite file, or a fresh schema of the test PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield request.getfixturevalue("pg_schema_dsn")


def check_restart_is_exactly_once(target: str, state_dir: Path, first_sink_tags: list[int]) -> None:
    """Restart after a crash at :data:`CRASH_AT`: nothing re-read, nothing skipped."""
    # the crash left: alerts 0..CRASH_AT stored once each (with their incidents) and the position
    # after CRASH_AT committed
    assert stored_tags(target) == {t: 1 for t in range(CRASH_AT + 1)}
    assert stored_incidents(target) == {tag_alert(t).device_id: 1 for t in range(CRASH_AT + 1)}
    with open_store(target) as store:
        committed = store.get_source_state()["fake"]
    assert committed["state"] == {"pos": CRASH_AT + 1}
    assert committed["batches"] == CRASH_AT + 1 and committed["packets"] == sum(SIZES[: CRASH_AT + 1])
    # state.json (written after the sinks) is one batch behind: resuming from it would re-read
    mirror = json.loads((state_dir / STATE_FILE).read_text())["sources"]["fake"]
    assert mirror["state"] == {"pos": CRASH_AT}
    assert first_sink_tags == list(range(CRASH_AT))  # died before sending batch CRASH_AT

    log = io.StringIO()
    sink = RecordingSink()
    mon = monitor(target, state_dir, sink, log)
    engine = cast(TaggingEngine, mon.engine)
    try:
        stats = mon.run(idle_exit_s=0.5, handle_signals=False)
    finally:
        mon.close()
    # nothing re-read: the restart starts at the batch after the committed one ...
    assert engine.seen == list(range(CRASH_AT + 1, N_BATCHES))
    assert stats.batches == N_BATCHES - CRASH_AT - 1
    resumed = [json.loads(x) for x in log.getvalue().splitlines() if '"source.resumed"' in x]
    assert resumed and resumed[0]["origin"] == "store"
    # ... no stored alert grew, none is missing, and neither did any incident ...
    assert stored_tags(target) == {t: 1 for t in range(N_BATCHES)}
    assert stored_incidents(target) == {tag_alert(t).device_id: 1 for t in range(N_BATCHES)}
    # ... and the sinks saw every opening exactly once: the batch of the crash was in the outbox
    # (committed with it) and was handed to the sinks first on restart
    sent = first_sink_tags + sink.tags
    assert len(sent) == len(set(sent))
    assert sorted(sent) == list(range(N_BATCHES))
    assert sink.tags[0] == CRASH_AT
    resent = [json.loads(x) for x in log.getvalue().splitlines() if '"outbox.resent"' in x]
    assert resent and resent[0]["count"] == 1
    with open_store(target) as store:
        assert store.outbox_pending() == []
    # the counters committed with the offsets add up to the input, exactly once
    with open_store(target) as store:
        final = store.get_source_state()["fake"]
    assert final["batches"] == N_BATCHES and final["packets"] == sum(SIZES)
    assert final["state"] == {"pos": N_BATCHES}
    assert mon.source_counters()["fake"]["packets"] == sum(SIZES)


def test_crash_in_the_sink_after_the_commit_reads_nothing_twice(target: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    sink = RecordingSink(crash_on=CRASH_AT)
    mon = monitor(target, state_dir, sink)
    with pytest.raises(Crash):
        mon.run(idle_exit_s=2.0, handle_signals=False)
    mon.close()
    check_restart_is_exactly_once(target, state_dir, sink.tags)


CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_exactly_once as t
sink = t.RecordingSink(path=Path({sent!r}))
mon = t.monitor({target!r}, Path({state!r}), sink, sys.stderr)
try:
    mon.run(idle_exit_s=0.5, handle_signals=False)
finally:
    mon.close()
"""


def test_kill_9_right_after_the_commit_reads_nothing_twice(target: str, tmp_path: Path) -> None:
    state_dir, sent = tmp_path / "state", tmp_path / "sent.txt"
    code = CHILD.format(tests=str(Path(__file__).parent), sent=str(sent), target=target, state=str(state_dir))
    env = {**os.environ, KILL_AFTER_COMMITS_ENV: str(CRASH_AT + 1)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert b'"test.kill"' in proc.stderr
    first = [int(x) for x in sent.read_text().split()] if sent.exists() else []
    check_restart_is_exactly_once(target, state_dir, first)


def test_a_store_without_source_state_resumes_from_state_json(tmp_path: Path) -> None:
    """Upgrade path: an older iotsentry kept positions only in state.json; the store has none."""
    db = tmp_path / "store.db"
    with Store(db, migrations=MIGRATIONS[:2]) as old:  # the schema before source_state
        assert old.version == 2
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    legacy = {"packets": sum(SIZES[:2]), "flows": 0, "batches": 2, "state": {"pos": 2}}
    (state_dir / STATE_FILE).write_text(json.dumps({"version": 1, "sources": {"fake": legacy}}))
    log = io.StringIO()
    mon = monitor(str(db), state_dir, RecordingSink(), log)
    engine = cast(TaggingEngine, mon.engine)
    try:
        mon.run(idle_exit_s=0.5, handle_signals=False)
    finally:
        mon.close()
    assert engine.seen == list(range(2, N_BATCHES))
    resumed = [json.loads(x) for x in log.getvalue().splitlines() if '"source.resumed"' in x]
    assert resumed[0]["origin"] == STATE_FILE
    with open_store(db) as store:  # from now on the store holds the state
        assert store.version == len(MIGRATIONS)
        assert store.get_source_state()["fake"]["batches"] == N_BATCHES
        assert store.get_source_state()["fake"]["packets"] == sum(SIZES)


def test_alerts_and_source_state_roll_back_together(target: str) -> None:
    """The store method itself: a failing alert leaves the previous source state in place."""
    with open_store(target) as store:
        store.add_alerts(None, [tag_alert(0)], source_state={"a": {"pos": 1}, "b": {"pos": 7}})
        assert store.get_source_state() == {"a": {"pos": 1}, "b": {"pos": 7}}
        broken = tag_alert(1)
        broken.extra["count"] = "not a number"  # fails inside the transaction
        with pytest.raises(ValueError):
            store.add_alerts(None, [tag_alert(2), broken], source_state={"a": {"pos": 2}})
        assert store.get_source_state() == {"a": {"pos": 1}, "b": {"pos": 7}}
        assert [r.alert.flow_id for r in store.get_alerts()] == [0]
        assert store.add_alerts(None, [], source_state={"a": {"pos": 3}}) == 0  # offsets only
        store.set_source_state({"b": {"pos": 8}})
        assert store.get_source_state() == {"a": {"pos": 3}, "b": {"pos": 8}}
        assert store.add_alerts(None, [tag_alert(3)]) == 1  # existing call sites: no state written
        assert store.get_source_state() == {"a": {"pos": 3}, "b": {"pos": 8}}


@pytest.mark.slow
def test_the_monitor_stores_each_canary_run_per_class(tmp_path: Path) -> None:
    """Canary coverage visible: every periodic canary run leaves one row per attack class."""
    from servekit import LEARN_S, home_capture

    from iotsentry.capture.appfields import keep_raw_for_app_fields
    from iotsentry.capture.reader import read_packets
    from iotsentry.integrity.canary import CANARY_CLASSES

    src = home_capture(tmp_path / "home.pcap", duration_s=3600.0)
    packets = list(read_packets(src, batch_size=5_000, with_raw=keep_raw_for_app_fields))
    mon = Monitor(
        {"fake": FakeSource(packets)},
        StreamEngine(LEARN_S),
        open_store(tmp_path / "s.db"),
        tmp_path / "state",
        canary_interval_s=0.01,
        log=JsonLog(io.StringIO()),
    )
    try:
        stats = mon.run(idle_exit_s=0.5, handle_signals=False)
    finally:
        mon.close()
    assert stats.canary_runs >= 1
    with open_store(tmp_path / "s.db") as store:
        latest = store.latest_canary_results()
        history, total = store.query_canary_results(limit=10_000)
    assert sorted(r.attack_class for r in latest) == sorted(CANARY_CLASSES)
    assert total == len(history) == stats.canary_runs * len(CANARY_CLASSES)
    assert all(r.detector == "profile" and r.device_id and r.canary_run for r in latest)
    assert len({r.canary_run for r in history}) == stats.canary_runs
    assert len({r.ts for r in latest}) == 1  # one run, one time
