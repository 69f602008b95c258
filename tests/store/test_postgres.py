"""The same behavioural checks against both store backends: SQLite and a real PostgreSQL.

The ``backend`` fixture opens an empty store of each kind (``[sqlite]`` / ``[postgres]`` in
the test ids); the PostgreSQL one lives in a fresh schema of the session's server (see
conftest.py), so every test also migrates from empty. PostgreSQL-only checks (DSN errors,
column types, lost connections, the pool) follow.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.errors import InputError
from iotsentry.schema import Alert, Device
from iotsentry.store import (
    MIGRATIONS,
    AlertQuery,
    DeviceQuery,
    Migration,
    PostgresStore,
    SchemaTooNew,
    Store,
    StoreConnectionError,
    is_postgres_dsn,
    open_store,
    redact_dsn,
    sqlite_path,
)
from iotsentry.store.base import StoreBase
from iotsentry.store.dialect import POSTGRES, SQLITE, to_pyformat


class Backend:
    """Opens stores on one empty database of one backend; closes them all at the end."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target
        self.opened: list[StoreBase] = []

    def open(self, migrations: Sequence[Migration] = MIGRATIONS) -> StoreBase:
        store = open_store(self.target, migrations=migrations)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()

    def integrity_errors(self) -> tuple[type[BaseException], ...]:
        if self.name == "sqlite":
            return (sqlite3.IntegrityError,)
        import psycopg

        return (psycopg.IntegrityError,)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "store.db"))
    else:
        b = Backend("postgres", request.getfixturevalue("pg_schema_dsn"))
    try:
        yield b
    finally:
        b.close_all()


@pytest.fixture
def store(backend: Backend) -> StoreBase:
    return backend.open()


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


def _alert(policy: AlertPolicy | None = None, **kw: Any) -> Alert:
    alert = (policy or AlertPolicy()).make(**_kw(**kw))
    assert alert is not None
    return alert


# -- migrations ---------------------------------------------------------------------------------


def test_migrations_from_empty_upgrade_and_refuse_newer(backend: Backend) -> None:
    store = backend.open()
    assert store.version == len(MIGRATIONS) and store.ping() == len(MIGRATIONS)
    assert isinstance(store, PostgresStore) == (backend.name == "postgres")
    run = store.start_run("analyze", ["a.pcap"])
    store.add_alerts(run, [_alert()])
    store.close()
    again = backend.open()  # opening a migrated store applies nothing and keeps the data
    assert again.version == len(MIGRATIONS) and len(again.get_alerts()) == 1
    again.close()
    notes = Migration("add a notes column", ("ALTER TABLE alerts ADD COLUMN notes TEXT NOT NULL DEFAULT ''",))
    newer = backend.open(migrations=(*MIGRATIONS, notes))
    assert newer.version == newer.ping() == len(MIGRATIONS) + 1
    assert newer.get_alerts()[0].alert.reason == "rate above baseline"
    newer.close()
    with pytest.raises(SchemaTooNew, match="newer than this iotsentry supports"):
        backend.open()


def test_a_failed_step_rolls_back_entirely(backend: Backend) -> None:
    backend.open().close()
    bad = Migration("broken", ("CREATE TABLE extra_t (x INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises(InputError, match="cannot use as an iotsentry store"):
        backend.open(migrations=(*MIGRATIONS, bad))
    store = backend.open()
    assert store.version == len(MIGRATIONS)
    good = Migration("table", ("CREATE TABLE extra_t (x INTEGER)",))  # extra_t was not left behind
    assert backend.open(migrations=(*MIGRATIONS, good)).version == len(MIGRATIONS) + 1


# -- runs, devices, baselines --------------------------------------------------------------------


def test_runs(store: Store) -> None:
    run = store.start_run("analyze", {"inputs": ["a.pcap", "b.pcap"]})
    other = store.start_run("eval")
    assert other > run
    store.finish_run(run, "ok", {"packets": 12, "alerts": 3})
    rows = store.get_runs()
    assert [r["id"] for r in rows] == [other, run]
    row = rows[1]
    assert row["command"] == "analyze" and row["status"] == "ok"
    assert row["inputs"] == {"inputs": ["a.pcap", "b.pcap"]} and row["stats"] == {"packets": 12, "alerts": 3}
    assert row["finished"] >= row["started"] > 0
    assert rows[0]["finished"] is None and rows[0]["inputs"] == [] and rows[0]["status"] == "running"
    with pytest.raises(KeyError):
        store.finish_run(run + 100, "ok", {})
    found, total = store.query_runs(status="ok")
    assert total == 1 and found[0]["id"] == run
    assert store.query_runs(command="eval", limit=1)[1] == 1
    assert store.get_run(run) == row and store.get_run(run + 100) is None


def test_devices_upsert_merge_and_order(store: Store) -> None:
    cam = Device(
        device_id="aa:bb:cc:dd:ee:01", mac="aa:bb:cc:dd:ee:01", ips=["10.0.0.2"], vendor="Acme",
        names=["cam-1"], dns_names=["cam.local"], dhcp={"hostname": "cam-1"}, device_type="camera",
        type_confidence=0.7, first_seen=100.0, last_seen=200.0, packets=10, bytes=3_000_000_000,
    )  # fmt: skip
    assert store.upsert_devices([cam]) == 1
    assert store.get_device(cam.device_id) == cam
    later = Device(
        device_id=cam.device_id, ips=["10.0.0.7"], names=["cam-1", "front door"], dhcp={"vendor_class": "x"},
        first_seen=50.0, last_seen=300.0, packets=5, bytes=2_000_000_000, is_gateway=True,
    )  # fmt: skip
    store.upsert_devices([later])
    got = store.get_device(cam.device_id)
    assert got is not None
    assert got.ips == ["10.0.0.2", "10.0.0.7"] and got.names == ["cam-1", "front door"]
    assert got.dhcp == {"hostname": "cam-1", "vendor_class": "x"} and got.dns_names == ["cam.local"]
    assert (got.first_seen, got.last_seen) == (50.0, 300.0)
    assert (got.packets, got.bytes) == (15, 5_000_000_000)  # beyond 32 bits on both backends
    assert got.vendor == "Acme" and got.device_type == "camera" and got.type_confidence == 0.7
    assert got.is_gateway
    assert store.upsert_devices([Device(device_id="x", packets=1), Device(device_id="x", packets=2)]) == 1
    assert store.get_device("x") is not None and store.get_device("x").packets == 3  # type: ignore[union-attr]
    assert store.get_device("nope") is None
    store.upsert_devices([Device(device_id=i) for i in ("b", "B", "_z", "Zed", "a-1")])
    ids = [d.device_id for d in store.get_devices()]
    assert ids == sorted(ids)  # byte order on both backends (PostgreSQL columns are COLLATE "C")


def test_query_devices_with_filters_and_summaries(store: Store) -> None:
    run = store.start_run("analyze")
    store.upsert_devices(
        [
            Device(device_id="d1", vendor="Acme Cams", device_type="camera", names=["front_door"]),
            Device(device_id="d2", vendor="Hue", device_type="bulb", ips=["10.0.0.9"]),
            Device(device_id="gw", vendor="Router Co", is_gateway=True),
        ]
    )
    store.save_baseline("d1", run, {"m": 1}, 0.9, True)
    store.save_baseline("d2", run, {"m": 2}, 0.2, False)
    store.add_alerts(run, [_alert(device_id="d1"), _alert(device_id="d1", dest_port=80)])
    store.acknowledge(store.get_alerts()[0].id, "bob")
    items, total = store.query_devices()
    assert total == 3 and [s.device.device_id for s in items] == ["d1", "d2", "gw"]
    d1 = items[0]
    assert (d1.maturity, d1.mature, d1.baseline_run_id, d1.alerts, d1.open_alerts) == (0.9, True, run, 2, 1)
    assert items[2].maturity is None and not items[2].mature
    ids = lambda q: [s.device.device_id for s in store.query_devices(q)[0]]  # noqa: E731
    assert ids(DeviceQuery(vendor="acme")) == ["d1"]
    assert ids(DeviceQuery(device_type="BULB")) == ["d2"]
    assert ids(DeviceQuery(mature=False)) == ["d2", "gw"]
    assert ids(DeviceQuery(min_maturity=0.5)) == ["d1"] and ids(DeviceQuery(max_maturity=0.5)) == ["d2"]
    assert ids(DeviceQuery(is_gateway=True)) == ["gw"]
    assert ids(DeviceQuery(search="10.0.0.9")) == ["d2"]
    assert ids(DeviceQuery(search="t_d")) == ["d1"]  # "_" is literal, not a wildcard
    assert ids(DeviceQuery(search="%")) == []
    page, total = store.query_devices(limit=1, offset=1)
    assert total == 3 and [s.device.device_id for s in page] == ["d2"]
    summary = store.get_device_summary("d2")
    assert summary is not None and summary.maturity == 0.2 and summary.alerts == 0
    assert store.get_device_summary("nope") is None


def test_baselines(backend: Backend, store: Store) -> None:
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
    items, total = store.query_latest_baselines()
    assert total == 2 and [i["device_id"] for i in items] == ["a", "b"] and items[0]["run_id"] == r2
    items, total = store.query_latest_baselines(mature=True, include_profile=False)
    assert total == 2 and items[0]["profile"] is None
    history, total = store.baseline_history("a")
    assert total == 2 and [h["run_id"] for h in history] == [r2, r1]
    with pytest.raises(backend.integrity_errors()):
        store.save_baseline("c", r2 + 100, {}, 0.1, False)  # no such run: foreign key
    assert "c" not in store.latest_baselines()


# -- alerts --------------------------------------------------------------------------------------


def test_alerts_add_dedupe_and_acknowledge(store: Store) -> None:
    run = store.start_run("analyze")
    policy = AlertPolicy(dedup_window_s=10)
    first = _alert(policy, ts=1000.0, extra={"window": 3})
    assert policy.make(**_kw(ts=1005.0)) is None  # folded by the policy: count 2 on `first`
    assert store.add_alerts(run, [first]) == 1
    (stored,) = store.get_alerts()
    assert stored.run_id == run and stored.count == 2 and not stored.acknowledged
    assert stored.alert.to_eve()["alert"] == first.to_eve()["alert"]
    again = _alert(ts=2000.0)  # same key, later run of the policy
    other = _alert(ts=2000.0, dest_port=80)
    assert store.add_alerts(run, [again, other]) == 1  # only `other` is a new row
    rows = {s.alert.dest_port: s for s in store.get_alerts()}
    kept = rows[443]
    assert (kept.count, kept.first_ts, kept.last_ts) == (3, 1000.0, 2000.0)
    assert kept.alert.timestamp == 1000.0 and kept.alert.extra["count"] == 3
    # acknowledged; an older repeat keeps it so, a newer more severe one re-opens and replaces
    assert store.acknowledge(kept.id, "alice") and not store.acknowledge(kept.id + 100, "alice")
    store.add_alerts(None, [_alert(ts=500.0, score=1.2)])
    assert store.get_alert(kept.id).acknowledged  # type: ignore[union-attr]
    store.add_alerts(None, [_alert(ts=3000.0, score=9.0, reason="now 9x")])
    row = store.get_alert(kept.id)
    assert row is not None and not row.acknowledged and row.assignee == "alice"
    assert row.alert.severity == 1 and row.alert.reason == "now 9x" and row.alert.score == 9.0
    assert (row.count, row.first_ts, row.last_ts) == (5, 500.0, 3000.0)
    assert row.run_id == run  # a repeat without a run keeps the row's run


def test_get_alerts_filters_paging_and_hostile_input(store: Store) -> None:
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
    assert store.get_alerts(device_id="a' OR '1'='1") == []
    assert store.get_alerts(device_id="100% ?x :y") == []
    with pytest.raises(ValueError):
        store.get_alerts(limit=-1)


def test_add_alerts_is_one_transaction(store: Store) -> None:
    broken = _alert(dest_port=1)
    broken.extra["count"] = "not a number"  # fails while the transaction is open
    with pytest.raises(ValueError):
        store.add_alerts(None, [_alert(), broken])
    assert store.get_alerts() == []  # the good one was rolled back too
    assert store.add_alerts(None, [_alert()]) == 1  # and the store is still usable


def test_query_alerts_paging_cursor_and_filters(store: Store) -> None:
    r1 = store.start_run("analyze")
    r2 = store.start_run("analyze")
    for i in range(12):
        alert = _alert(
            ts=100.0 + i // 2, dest_port=i, device_id=f"d{i % 3}", score=1.2 if i % 4 else 9.0,
            category="scan" if i % 3 == 0 else "anomaly", detector="kitsune" if i < 6 else "iforest",
        )  # fmt: skip
        store.add_alerts(r1 if i % 2 else r2, [alert])
    everything, total = store.query_alerts(limit=100)
    assert total == 12 and len(everything) == 12
    keys = [(a.last_ts, a.id) for a in everything]
    assert keys == sorted(keys, reverse=True)
    by_offset = [a.id for off in range(0, 12, 5) for a in store.query_alerts(limit=5, offset=off)[0]]
    by_cursor: list[int] = []
    after: tuple[float, int] | None = None
    while True:
        page, page_total = store.query_alerts(limit=5, after=after)
        assert page_total == 12
        if not page:
            break
        by_cursor += [a.id for a in page]
        after = (page[-1].last_ts, page[-1].id)
    assert by_offset == by_cursor == [a.id for a in everything]

    def count(**kw: Any) -> int:
        return store.query_alerts(AlertQuery(**kw), limit=0)[1]

    assert count(device_id="d0") == 4
    severities = {a.alert.severity for a in everything}
    assert sum(count(severities=[s]) for s in severities) == 12 and count(severities=sorted(severities)) == 12
    assert count(categories=["scan"]) == 4 and count(categories=["scan", "anomaly"]) == 12
    assert count(detectors=["iforest"]) == 6
    assert count(since=104.0) == 4 and count(until=100.5) == 2 and count(since=101.0, until=101.0) == 2
    assert count(run_id=r1) == 6
    first = everything[0].id
    assert store.set_alert_acknowledged(first, "alice") is not None
    assert store.assign_alert(everything[1].id, "bob", "alice") is not None
    assert count(acknowledged=True) == 1 and count(acknowledged=False) == 11
    assert count(assigned=True) == 1 and count(assigned=False) == 11 and count(assignee="bob") == 1
    assert count(device_id="d0' OR 1=1 --") == 0
    summary = store.alert_summary()
    assert summary["total"] == 12 and summary["open"] == 11
    assert {g["key"]: g["total"] for g in summary["by_category"]} == {"anomaly": 8, "scan": 4}
    assert [g["key"] for g in summary["by_device"]] == ["d0", "d1", "d2"]
    assert store.alert_summary(AlertQuery(device_id="d1"))["total"] == 4
    with pytest.raises(ValueError):
        store.query_alerts(limit=-1)


def test_acknowledge_assign_and_audit_trail(store: Store) -> None:
    store.add_alerts(None, [_alert()])
    (row,) = store.get_alerts()
    acked = store.set_alert_acknowledged(row.id, "alice", note="seen", actor_token_id=7, at=50.0)
    assert acked is not None and acked.acknowledged and acked.acknowledged_by == "alice"
    assert acked.acknowledged_at == 50.0 and acked.assignee is None
    assigned = store.assign_alert(row.id, "bob", "alice", at=60.0)
    assert assigned is not None and assigned.assignee == "bob" and assigned.assigned_at == 60.0
    reopened = store.set_alert_acknowledged(row.id, "carol", acknowledged=False, at=70.0)
    assert reopened is not None and not reopened.acknowledged
    unassigned = store.assign_alert(row.id, None, "carol", at=80.0)
    assert unassigned is not None and unassigned.assignee is None
    trail = store.alert_actions(row.id)
    assert [(a.action, a.actor, a.at) for a in trail] == [
        ("acknowledge", "alice", 50.0), ("assign", "alice", 60.0),
        ("unacknowledge", "carol", 70.0), ("unassign", "carol", 80.0),
    ]  # fmt: skip
    assert trail[0].note == "seen" and trail[0].actor_token_id == 7 and trail[1].value == "bob"
    assert store.set_alert_acknowledged(row.id + 100, "x") is None
    assert store.assign_alert(row.id + 100, "x", "y") is None
    assert store.alert_actions(row.id + 100) == []


# -- API tokens ----------------------------------------------------------------------------------


def test_api_tokens(backend: Backend, store: Store) -> None:
    tok = store.create_api_token("alice", "admin", "h1", at=10.0, expires_at=1000.0)
    assert tok.id > 0 and (tok.name, tok.scope, tok.created_at, tok.expires_at) == (
        "alice",
        "admin",
        10.0,
        1000.0,
    )
    with pytest.raises(ValueError, match="exists"):
        store.create_api_token("alice", "read", "h2")
    with pytest.raises(ValueError, match="scope"):
        store.create_api_token("bob", "root", "h3")
    with pytest.raises(ValueError, match="empty"):
        store.create_api_token("  ", "read", "h3")
    with pytest.raises(backend.integrity_errors()):
        store.create_api_token("bob", "read", "h1")  # the hash is unique
    assert store.get_api_token_by_hash("h1") == tok and store.get_api_token_by_hash("nope") is None
    store.touch_api_token(tok.id, at=20.0)
    assert store.get_api_token_by_hash("h1").last_used_at == 20.0  # type: ignore[union-attr]
    assert store.revoke_api_token(tok.id, at=30.0) and store.revoke_api_token(tok.id, at=40.0)
    assert not store.revoke_api_token(tok.id + 100)
    revoked = store.get_api_token_by_hash("h1")
    assert revoked is not None and revoked.revoked_at == 30.0 and not revoked.is_valid(31.0)
    again = store.create_api_token("alice", "read", "h4")  # the name is free again
    assert again.id > tok.id
    assert [t.id for t in store.list_api_tokens()] == [tok.id, again.id]
    assert [t.id for t in store.list_api_tokens(include_revoked=False)] == [again.id]


# -- persistence and concurrency ------------------------------------------------------------------


def test_committed_data_is_visible_to_another_store_at_once(backend: Backend) -> None:
    writer = backend.open()
    reader = backend.open()
    run = writer.start_run("analyze", ["x.pcap"])
    writer.add_alerts(run, [_alert()])
    writer.upsert_devices([Device(device_id="d", packets=4)])
    assert len(reader.get_alerts()) == 1 and reader.get_devices()[0].packets == 4
    writer.close()
    assert reader.get_runs()[0]["inputs"] == ["x.pcap"]


def _in_threads(n: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_one_store_shared_by_threads(store: Store) -> None:
    def work(i: int) -> None:
        for j in range(15):
            store.upsert_devices([Device(device_id="shared", packets=1, ips=[f"10.0.{i}.{j}"])])
            store.add_alerts(None, [_alert(ts=float(j))])
            store.get_alerts()
            store.query_devices()

    _in_threads(6, work)
    dev = store.get_device("shared")
    assert dev is not None and dev.packets == 90 and len(dev.ips) == 90  # no lost update
    (row,) = store.get_alerts()
    assert row.count == 90


def test_two_stores_writing_at_once_lose_nothing(backend: Backend) -> None:
    stores = [backend.open(), backend.open()]

    def work(i: int) -> None:
        for _ in range(20):
            stores[i % 2].upsert_devices([Device(device_id="d", packets=1)])

    _in_threads(4, work)
    assert stores[0].get_device("d").packets == 80  # type: ignore[union-attr]


# -- targets, DSNs and the dialect (no server needed) --------------------------------------------


def test_open_store_picks_the_backend_from_the_target(tmp_path: Path) -> None:
    with open_store(tmp_path / "a.db") as a:
        assert type(a) is Store and a.path == str(tmp_path / "a.db")
    with open_store(str(tmp_path / "b.db")) as b:
        assert type(b) is Store
    with open_store(f"sqlite:///{tmp_path / 'c.db'}") as c:  # sqlite:/// + absolute path
        assert type(c) is Store and c.path == str(tmp_path / "c.db")
    assert (tmp_path / "c.db").is_file()
    assert (
        sqlite_path("sqlite:///rel/x.db") == "rel/x.db" and sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    )
    assert sqlite_path("sqlite://") == ":memory:" and sqlite_path(":memory:") == ":memory:"
    assert sqlite_path("postgresql://h/db") is None and sqlite_path(Path("postgresql:/x")) is not None
    with pytest.raises(InputError, match="SQLite URL"):
        sqlite_path("sqlite:/x.db")
    assert is_postgres_dsn("postgres://h/db") and is_postgres_dsn("PostgreSQL://h/db")
    assert not is_postgres_dsn("store.db") and not is_postgres_dsn(Path("postgresql://h/db"))


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://iot:s3cr:et@db.example:5432/iotsentry") == (
        "postgresql://iot:***@db.example:5432/iotsentry"
    )
    assert redact_dsn("postgresql://iot@db/x?sslmode=require&password=s3cret&sslpassword=k") == (
        "postgresql://iot@db/x?sslmode=require&password=***&sslpassword=***"
    )
    assert redact_dsn("postgresql://a:p%40ss@h1:5432,h2:5433/db") == "postgresql://a:***@h1:5432,h2:5433/db"
    assert redact_dsn("postgresql:///db") == "postgresql:///db"
    assert redact_dsn(Path("/var/iotsentry.db")) == "/var/iotsentry.db"


def _one_line_without_password(err: BaseException, shown: str) -> None:
    text = str(err)
    assert "\n" not in text and "s3cret" not in text and shown in text, text


def test_a_bad_dsn_is_one_clear_line_without_the_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreConnectionError) as err:
        open_store("postgresql://iot:s3cret@127.0.0.1:notaport/db")
    _one_line_without_password(err.value, "postgresql://iot:***@127.0.0.1:notaport/db")
    assert isinstance(err.value, InputError)


def test_a_server_that_is_down_is_one_clear_line_without_the_password() -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreConnectionError, match="cannot connect to PostgreSQL") as err:
        open_store(f"postgresql://iot:s3cret@127.0.0.1:{port}/db?connect_timeout=2")
    _one_line_without_password(err.value, f"postgresql://iot:***@127.0.0.1:{port}/db")


def test_dialect_translation() -> None:
    sql = "SELECT '?', \"a?b\", x FROM t WHERE a = ? AND b LIKE '100%' AND c = :name AND d::text = ?"
    assert to_pyformat(sql) == (
        "SELECT '?', \"a?b\", x FROM t WHERE a = %s AND b LIKE '100%%' AND c = %(name)s AND d::text = %s"
    )
    assert SQLITE.sql(sql) == sql and SQLITE.ddl("id INTEGER PRIMARY KEY AUTOINCREMENT") == (
        "id INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    ddl = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, x REAL, s TEXT DEFAULT 'REAL TEXT')"
    )
    assert POSTGRES.ddl(ddl) == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT,"
        " x DOUBLE PRECISION, s TEXT COLLATE \"C\" DEFAULT 'REAL TEXT')"
    )
    assert POSTGRES.ddl("CREATE TABLE t (text TEXT, real REAL)") == (
        'CREATE TABLE t (text TEXT COLLATE "C", real DOUBLE PRECISION)'
    )


# -- PostgreSQL only ------------------------------------------------------------------------------


def test_postgres_schema_types_and_version_table(pg_schema_dsn: str) -> None:
    import psycopg

    with open_store(pg_schema_dsn):
        pass
    with psycopg.connect(pg_schema_dsn) as c:
        types = {
            (t, col): (dtype, ident, coll)
            for t, col, dtype, ident, coll in c.execute(
                "SELECT table_name, column_name, data_type, is_identity, collation_name"
                " FROM information_schema.columns WHERE table_schema = current_schema()"
            )
        }
        version = c.execute("SELECT version FROM schema_version").fetchall()
    assert types[("alerts", "id")][:2] == ("bigint", "YES")
    assert types[("alerts", "score")][0] == "double precision"
    assert types[("devices", "bytes")][0] == "bigint"
    assert types[("alerts", "eve")] == ("text", "NO", "C")
    assert version == [(len(MIGRATIONS),)]


def test_postgres_recovers_after_losing_its_connections(pg_schema_dsn: str) -> None:
    import psycopg

    with open_store(pg_schema_dsn) as store:
        store.add_alerts(None, [_alert()])
        with psycopg.connect(pg_schema_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'iotsentry' AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreConnectionError, match="connection lost") as err:
            store.get_alerts()
        assert "\n" not in str(err.value)
        assert len(store.get_alerts()) == 1  # the broken connection was dropped, a new one made
        assert store.ping() == len(MIGRATIONS)
    with pytest.raises(StoreConnectionError, match="closed"):
        store.get_alerts()


def test_postgres_pool_bounds_connections(pg_schema_dsn: str) -> None:
    store = PostgresStore(pg_schema_dsn, pool_size=2)
    try:
        seen: list[int] = []

        def work(i: int) -> None:
            for _ in range(10):
                store.upsert_devices([Device(device_id=f"d{i}", packets=1)])
                seen.append(store._pool.size)

        _in_threads(6, work)
        assert max(seen) <= 2
        assert [d.packets for d in store.get_devices()] == [10] * 6
    finally:
        store.close()


def test_statements_with_literal_percent_and_question_marks(store: Store) -> None:
    rows = store._query("SELECT '100%' AS a, '?' AS q, ? AS b", (1,))
    assert [dict(r) for r in rows] == [{"a": "100%", "q": "?", "b": 1}]
    rows = store._query("SELECT ':y%' AS a, :x AS b", {"x": 2})
    assert [dict(r) for r in rows] == [{"a": ":y%", "b": 2}]


def test_postgres_writers_wait_for_the_write_lock_readers_do_not(pg_schema_dsn: str) -> None:
    import psycopg

    from iotsentry.store.migrations import POSTGRES_LOCK_KEY

    store = PostgresStore(pg_schema_dsn, lock_timeout_s=0.3)
    try:
        store.add_alerts(None, [_alert()])
        with psycopg.connect(pg_schema_dsn) as other, other.transaction():
            other.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_LOCK_KEY,))  # a writer elsewhere
            assert len(store.get_alerts()) == 1  # reads go on
            with pytest.raises(psycopg.errors.LockNotAvailable):
                store.add_alerts(None, [_alert(dest_port=1)])
        assert store.add_alerts(None, [_alert(dest_port=1)]) == 1  # lock released: writes go on
        assert len(store.get_alerts()) == 2
    finally:
        store.close()
