"""``kill -9`` of a running ``iotsentry serve``: every alert it had stored survives, the store
opens cleanly, and no sink ever saw an alert the store did not hold."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servekit import config_text, cut_capture, home_capture, write_pcap

from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.store import open_store

WANT = 4


def _stored(db: Path) -> dict[str, tuple[int, int]]:
    """dedup key -> (id, count) of the stored alerts (read through the store API)."""
    if not db.exists():
        return {}
    try:
        with open_store(db) as store:
            return {alert_dedup_key(r.alert): (r.id, r.count) for r in store.get_alerts(limit=100_000)}
    except Exception:
        return {}  # not created / migrated yet


def _ident(eve: dict[str, object]) -> tuple[object, ...]:
    a = eve["alert"]
    assert isinstance(a, dict)
    return (
        eve["event_type"],
        eve["device_id"],
        a["detector"],
        a["category"],
        eve["dest_ip"],
        eve["dest_port"],
    )


@pytest.mark.slow
def test_kill_9_loses_nothing_that_was_stored(tmp_path: Path) -> None:
    files = cut_capture(home_capture(tmp_path / "home.pcap"), 300.0)
    (tmp_path / "pcaps").mkdir()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_text(tmp_path))
    db = tmp_path / "store.db"
    err = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "iotsentry.serve", "--config", str(cfg)], stderr=err)
    try:
        seen: dict[str, tuple[int, int]] = {}
        deadline = time.monotonic() + 120
        pending = list(files)
        while time.monotonic() < deadline:
            if pending:
                write_pcap(tmp_path / "pcaps", *pending.pop(0))
            seen = _stored(db)
            if len(seen) >= WANT:
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        assert len(seen) >= WANT, "the monitor did not store alerts in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == -signal.SIGKILL
    # the store opens cleanly and holds every alert seen stored (counts never went down)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    after = _stored(db)
    assert after, "store unreadable after kill -9"
    for key, (row_id, count) in seen.items():
        assert key in after and after[key][0] == row_id and after[key][1] >= count
    # a sink only ever got alerts that were stored first
    with open_store(db) as store:
        rows = {_ident(r.alert.to_eve()) for r in store.get_alerts(limit=100_000)}
    sent = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines() if x.strip()]
    assert sent
    assert {_ident(e) for e in sent} <= rows
    # and the logs are JSON lines
    for line in (tmp_path / "serve.log").read_text().splitlines():
        rec = json.loads(line)
        assert {"ts", "level", "event"} <= set(rec)
