from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.errors import InputError
from iotsentry.schema import Alert, Device
from iotsentry.store import MIGRATIONS, Migration, SchemaTooNew, Store, merge_devices, migrate, schema_version


def _alert(policy: AlertPolicy | None = None, **kw: Any) -> Alert:
    args = _kw(**kw)
    alert = (policy or AlertPolicy()).make(**args)
    assert alert is not None
    return alert


# -- migrations ---------------------------------------------------------------------------------


def test_migrate_from_empty_creates_tables(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        assert store.version == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "s.db")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "devices", "baselines", "alerts"} <= names
    assert schema_version(conn) == len(MIGRATIONS)
    conn.close()


def test_older_db_gets_missing_steps_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        run = store.start_run("analyze", ["a.pcap"])
        store.add_alerts(run, [_alert()])
    v2 = Migration("add a notes column", ("ALTER TABLE alerts ADD COLUMN notes TEXT NOT NULL DEFAULT ''",))
    steps = (*MIGRATIONS, v2)
    with Store(path, migrations=steps) as store:
        assert store.version == len(MIGRATIONS) + 1
        assert len(store.get_alerts()) == 1
    conn = sqlite3.connect(path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(alerts)")]
    assert "notes" in cols
    assert schema_version(conn) == len(steps)
    # migrating again is a no-op
    conn.isolation_level = None
    assert migrate(conn, steps) == len(steps)
    conn.close()
    # the shorter (older) code now refuses the newer database with a clear error
    with pytest.raises(SchemaTooNew, match="newer than this iotsentry supports"):
        Store(path)


def test_failed_step_rolls_back_entirely(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path).close()
    bad = Migration("broken", ("CREATE TABLE extra_t (x INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises(InputError):  # sqlite errors surface as one clear InputError line
        Store(path, migrations=(*MIGRATIONS, bad))
    conn = sqlite3.connect(path)
    assert schema_version(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra_t'").fetchone() is None
    conn.close()


def test_not_a_database_is_input_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(InputError, match=r"junk\.db"):
        Store(junk)


def test_pragmas_wal_foreign_keys_busy_timeout(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", busy_timeout_s=2.5) as store:
        assert store.journal_mode == "wal"
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        with pytest.raises(sqlite3.IntegrityError):
            store.save_baseline("d", 999, {}, 0.1, False)  # no run 999


# -- runs, devices, baselines --------------------------------------------------------------------


def test_runs_round_trip() -> None:
    with Store() as store:
        run = store.start_run("analyze", {"inputs": ["a.pcap", "b.pcap"]})
        store.finish_run(run, "ok", {"packets": 12, "alerts": 3})
        (row,) = store.get_runs()
        assert row["id"] == run and row["command"] == "analyze" and row["status"] == "ok"
        assert row["inputs"] == {"inputs": ["a.pcap", "b.pcap"]}
        assert row["stats"] == {"packets": 12, "alerts": 3}
        assert row["finished"] >= row["started"] > 0
        with pytest.raises(KeyError):
            store.finish_run(run + 100, "ok", {})


def test_devices_round_trip_and_merge_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    d1 = Device(
        device_id="aa:bb:cc:dd:ee:01",
        mac="aa:bb:cc:dd:ee:01",
        ips=["10.0.0.2"],
        vendor="Acme",
        names=["cam-1"],
        dns_names=["cam.local"],
        dhcp={"hostname": "cam-1", "vendor_class": "udhcp"},
        device_type="camera",
        type_confidence=0.7,
        first_seen=100.0,
        last_seen=200.0,
        packets=10,
        bytes=1000,
    )
    with Store(path) as store:
        assert (
            store.upsert_devices([d1, Device(device_id="ip:10.0.0.9", ips=["10.0.0.9"], is_local=False)]) == 2
        )
        assert store.get_device("aa:bb:cc:dd:ee:01") == d1  # exact round trip of every field
    later = Device(
        device_id="aa:bb:cc:dd:ee:01",
        ips=["10.0.0.3", "10.0.0.2"],
        names=["cam-1", "<b>cam</b>"],
        dhcp={"hostname": "cam-renamed"},
        first_seen=50.0,
        last_seen=150.0,
        packets=5,
        bytes=500,
        is_gateway=True,
    )
    with Store(path) as store:  # a later run, after close/reopen
        store.upsert_devices([later])
        got = {d.device_id: d for d in store.get_devices()}
    dev = got["aa:bb:cc:dd:ee:01"]
    assert dev.ips == ["10.0.0.2", "10.0.0.3"]
    assert dev.names == ["cam-1", "<b>cam</b>"]
    assert (dev.first_seen, dev.last_seen) == (50.0, 200.0)
    assert (dev.packets, dev.bytes) == (15, 1500)
    assert dev.mac == "aa:bb:cc:dd:ee:01" and dev.vendor == "Acme"  # not erased by unknowns
    assert (dev.device_type, dev.type_confidence) == ("camera", 0.7)
    assert dev.dhcp == {"hostname": "cam-renamed", "vendor_class": "udhcp"}
    assert dev.dns_names == ["cam.local"] and dev.is_gateway
    assert got["ip:10.0.0.9"].is_local is False


def test_merge_devices_zero_times_are_unknown() -> None:
    a = Device(device_id="x", first_seen=0.0, last_seen=0.0)
    b = Device(device_id="x", first_seen=7.0, last_seen=9.0)
    m = merge_devices(a, b)
    assert (m.first_seen, m.last_seen) == (7.0, 9.0)


def test_same_device_twice_in_one_call_is_merged() -> None:
    with Store() as store:
        n = store.upsert_devices([Device(device_id="x", packets=1), Device(device_id="x", packets=2)])
        assert n == 1
        assert store.get_devices()[0].packets == 3


def test_baselines_latest_per_device() -> None:
    with Store() as store:
        r1 = store.start_run("analyze")
        r2 = store.start_run("analyze")
        store.save_baseline("a", r1, {"mean": [1.0, 2.0]}, 0.4, False)
        store.save_baseline("b", r1, {"mean": [0.0]}, 0.9, True)
        store.save_baseline("a", r2, {"mean": [1.5, 2.5]}, 0.8, True)
        store.save_baseline("a", r2, {"mean": [1.6, 2.6]}, 0.85, True)  # replaces within the run
        latest = store.latest_baselines()
        assert set(latest) == {"a", "b"}
        assert latest["a"]["run_id"] == r2 and latest["a"]["profile"] == {"mean": [1.6, 2.6]}
        assert latest["a"]["maturity"] == 0.85 and latest["a"]["mature"] is True
        assert latest["b"]["run_id"] == r1 and latest["b"]["mature"] is True
        n = store._conn.execute("SELECT COUNT(*) FROM baselines").fetchone()[0]
        assert n == 3


# -- alerts --------------------------------------------------------------------------------------


def test_alert_round_trip() -> None:
    with Store() as store:
        run = store.start_run("analyze")
        a = _alert(extra={"window": 3})
        assert store.add_alerts(run, [a]) == 1
        (stored,) = store.get_alerts()
        assert stored.run_id == run and stored.count == 1 and not stored.acknowledged
        assert stored.alert.to_eve() == a.to_eve()
        assert stored.to_dict()["eve"]["alert"]["reason"] == "rate above baseline"


def test_alert_dedup_increments_count_and_last_ts() -> None:
    with Store() as store:
        run = store.start_run("analyze")
        policy = AlertPolicy(dedup_window_s=10)
        first = _alert(policy, ts=1000.0)
        assert policy.make(**_kw(ts=1005.0)) is None  # folded by the policy: count 2 on `first`
        assert store.add_alerts(run, [first]) == 1
        again = _alert(AlertPolicy(), ts=2000.0)  # same key, later run of the policy
        other = _alert(AlertPolicy(), ts=2000.0, dest_port=80)
        assert store.add_alerts(run, [again, other]) == 1  # only `other` is a new row
        rows = {s.alert.dest_port: s for s in store.get_alerts()}
        assert len(rows) == 2
        kept = rows[443]
        assert kept.count == 3
        assert (kept.first_ts, kept.last_ts) == (1000.0, 2000.0)
        assert kept.alert.timestamp == 1000.0  # the row keeps its first occurrence
        assert kept.alert.extra["count"] == 3
        assert rows[80].count == 1


def _kw(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "ts": 1000.0,
        "device_id": "aa:bb:cc:dd:ee:01",
        "detector": "kitsune",
        "detector_version": "1",
        "score": 2.0,
        "threshold": 1.0,
        "category": "anomaly",
        "reason": "rate above baseline",
        "src_ip": "10.0.0.2",
        "src_port": 5000,
        "dest_ip": "203.0.113.9",
        "dest_port": 443,
        "proto": "TCP",
    }
    args.update(kw)
    return args


def test_more_severe_repeat_updates_row_and_newer_repeat_reopens() -> None:
    with Store() as store:
        store.add_alerts(None, [_alert(ts=10.0, score=1.1)])
        (row,) = store.get_alerts()
        assert store.acknowledge(row.id, "alice")
        assert store.get_alerts()[0].acknowledged
        store.add_alerts(None, [_alert(ts=5.0, score=1.2)])  # older: stays acknowledged
        assert store.get_alerts()[0].acknowledged
        store.add_alerts(None, [_alert(ts=20.0, score=9.0, reason="now 9x")])
        (row,) = store.get_alerts()
        assert not row.acknowledged and row.assignee == "alice"
        assert row.alert.severity == 1 and row.alert.reason == "now 9x" and row.alert.score == 9.0
        assert (row.count, row.first_ts, row.last_ts) == (3, 5.0, 20.0)


def test_get_alerts_filters_and_paging() -> None:
    with Store() as store:
        alerts = [
            _alert(ts=float(t), device_id=d, dest_port=t) for t, d in [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
        ]
        store.add_alerts(None, alerts)
        assert [s.alert.timestamp for s in store.get_alerts()] == [4.0, 3.0, 2.0, 1.0]
        assert [s.alert.timestamp for s in store.get_alerts(device_id="a")] == [3.0, 1.0]
        assert [s.alert.timestamp for s in store.get_alerts(since=2.5)] == [4.0, 3.0]
        assert [s.alert.timestamp for s in store.get_alerts(limit=2, offset=1)] == [3.0, 2.0]
        store.acknowledge(store.get_alerts()[0].id, "bob")
        assert [s.alert.timestamp for s in store.get_alerts(unacknowledged=True)] == [3.0, 2.0, 1.0]
        assert not store.acknowledge(999, "bob")
        # parameterised: hostile input is data, not SQL
        assert store.get_alerts(device_id="a' OR '1'='1") == []
        with pytest.raises(ValueError):
            store.get_alerts(limit=-1)


def test_add_alerts_is_one_transaction() -> None:
    with Store() as store:
        good = _alert()
        broken = _alert(dest_port=1)
        broken.extra["count"] = "not a number"  # fails while the transaction is open
        with pytest.raises(ValueError):
            store.add_alerts(None, [good, broken])
        assert store.get_alerts() == []  # the good one was rolled back too


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    run = store.start_run("analyze", ["x.pcap"])
    store.add_alerts(run, [_alert()])
    store.upsert_devices([Device(device_id="d", packets=4)])
    # no close(): what a call returned as stored is committed already
    other = Store(path)
    assert len(other.get_alerts()) == 1
    assert other.get_devices()[0].packets == 4
    other.close()
    store.close()
    with Store(path) as again:
        assert again.get_runs()[0]["inputs"] == ["x.pcap"]
        assert again.get_alerts()[0].alert.reason == "rate above baseline"


def test_reader_and_writer_do_not_block_each_other(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = Store(path, busy_timeout_s=0.2)
    reader = Store(path, busy_timeout_s=0.2)
    writer.add_alerts(None, [_alert(dest_port=1)])
    # a write transaction in progress does not block readers: they see the last commit
    writer._conn.execute("BEGIN IMMEDIATE")
    writer._conn.execute("UPDATE alerts SET reason = 'uncommitted'")
    rows = reader.get_alerts()
    assert len(rows) == 1 and rows[0].alert.reason == "rate above baseline"
    writer._conn.execute("COMMIT")
    assert reader.get_alerts()[0].alert.reason == "uncommitted"
    # an open read transaction does not block a commit (this needs WAL: with a rollback
    # journal the writer would time out on the reader's SHARED lock)
    reader._conn.execute("BEGIN")
    assert reader._conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1
    writer.add_alerts(None, [_alert(dest_port=2)])
    assert reader._conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1  # its snapshot
    reader._conn.execute("COMMIT")
    assert len(reader.get_alerts()) == 2
    writer.close()
    reader.close()


def test_concurrent_reader_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = Store(path)
    reader = Store(path)
    total = 200
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(total):
                writer.add_alerts(None, [_alert(ts=float(i), dest_port=i)])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    while thread.is_alive():
        seen.append(len(reader.get_alerts(limit=total)))
    thread.join(timeout=30)
    assert not errors
    assert seen == sorted(seen)  # committed rows only ever grow
    assert len(set(seen)) > 2  # the reads really interleaved with the writes
    assert len(reader.get_alerts(limit=total)) == total
    writer.close()
    reader.close()
