"""Signed models (a tampered one is refused, with an integrity alert and an audit record) and
the token-protected ``/metrics``."""

from __future__ import annotations

import io
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from servekit import config_text

from iotsentry.api.tokens import create_token
from iotsentry.capture.zeek import read_flows
from iotsentry.integrity.audit import read_records
from iotsentry.integrity.signing import load_keyring, rotate_key, sign_model_dir
from iotsentry.serve.cli import start_api
from iotsentry.serve.config import load_config
from iotsentry.serve.monitor import JsonLog, build_monitor
from iotsentry.serve.sources import FakeSource
from iotsentry.store import open_store

HEADER = (
    "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,service,duration,orig_bytes,resp_bytes,"
    "conn_state,local_orig,local_resp,missed_bytes,history,orig_pkts,orig_ip_bytes,resp_pkts,"
    "resp_ip_bytes,tunnel_parents,label,detailed-label"
)


def _flow_csv(path: Path) -> Path:
    """IoT-23-style labeled flows: benign TLS sessions and a malicious telnet scan."""
    rng = np.random.default_rng(0)
    rows = [HEADER]
    for i in range(60):
        ts = f"{1_600_000_000 + 2.5 * i:.6f}"
        if i % 3 == 0:
            rows.append(
                f"{ts},C{i:05d},192.168.1.50,{40000 + i},203.0.113.{i % 7 + 1},23,tcp,,0.0001,0,0,S0,,,0,"
                "S,1,60,0,0,,Malicious,PartOfAHorizontalPortScan"
            )
        else:
            rows.append(
                f"{ts},C{i:05d},192.168.1.20,{50000 + i},198.51.100.{i % 5 + 1},443,tcp,ssl,"
                f"{rng.uniform(0.5, 3):.4f},{rng.integers(300, 900)},{rng.integers(2000, 9000)},SF,,,0,"
                f"ShADadFf,{rng.integers(8, 20)},1200,{rng.integers(8, 20)},9000,,Benign,-"
            )
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(signed model dir, keyring dir, training CSV)."""
    from iotsentry.detectors.flow_models import train_flows

    root = tmp_path_factory.mktemp("model")
    csv = _flow_csv(root / "flows.csv")
    train_flows([csv], root / "model", "hgb")
    keys = root / "keys"
    rotate_key(keys)
    active = load_keyring(keys).active
    assert active is not None
    sign_model_dir(root / "model", keys / f"{active.key_id}.key")
    return root / "model", keys, csv


def _monitor(tmp_path: Path, model_dir: Path, keys: Path, **kw: object):  # type: ignore[no-untyped-def]
    (tmp_path / "pcaps").mkdir(exist_ok=True)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_text(tmp_path, extra=f'[model]\ndir = "{model_dir}"\nkeyring = "{keys}"\n', **kw))  # type: ignore[arg-type]
    return build_monitor(load_config(cfg), log=JsonLog(io.StringIO()))


def test_a_tampered_model_is_refused_with_an_integrity_alert_and_an_audit_record(
    tmp_path: Path, model: tuple[Path, Path, Path]
) -> None:
    signed, keys, _csv = model
    tampered = tmp_path / "tampered"
    shutil.copytree(signed, tampered)
    w = tampered / "weights.npz"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    mon = _monitor(tmp_path, tampered, keys)
    assert mon.engine.flow_model is None
    mon.run(idle_exit_s=0.3, handle_signals=False)
    mon.close()
    with open_store(tmp_path / "store.db") as store:
        rows = [r.alert for r in store.get_alerts()]
    assert [(a.event_type, a.category) for a in rows] == [("integrity", "model-integrity")]
    assert "altered" in rows[0].reason and str(tampered) in rows[0].reason
    recs = [r for r in read_records(tmp_path / "audit.jsonl") if r.action == "model.refused"]
    assert len(recs) == 1 and recs[0].subject == str(tampered)


def test_a_signed_model_is_loaded_audited_and_scores_flow_batches(
    tmp_path: Path, model: tuple[Path, Path, Path]
) -> None:
    signed, keys, csv = model
    mon = _monitor(tmp_path, signed, keys)
    assert mon.engine.flow_model is not None
    flows = read_flows(csv)
    mon.sources = {"zeek": FakeSource([flows])}
    stats = mon.run(idle_exit_s=0.3, handle_signals=False)
    mon.close()
    assert stats.flows == len(flows) and stats.packets == 0
    with open_store(tmp_path / "store.db") as store:
        rows = [r.alert for r in store.get_alerts(limit=1000)]
    assert rows and all(a.detector == "flow-hgb" and a.src_ip == "192.168.1.50" for a in rows)
    assert "model.load" in [r.action for r in read_records(tmp_path / "audit.jsonl")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_need_a_token_and_expose_the_counters(tmp_path: Path, model: tuple[Path, Path, Path]) -> None:
    _signed, _keys, csv = model
    port = _free_port()
    (tmp_path / "pcaps").mkdir()
    cfg_path = tmp_path / "serve.toml"
    cfg_path.write_text(config_text(tmp_path, api=f"[api]\nenabled = true\nport = {port}\n"))
    cfg = load_config(cfg_path)
    mon = build_monitor(cfg, log=JsonLog(io.StringIO()))
    flows = read_flows(csv)
    mon.sources["zeek"] = FakeSource([flows])
    mon.run(idle_exit_s=0.3, handle_signals=False)
    with open_store(cfg.store) as store:
        token, _ = create_token(store, "prometheus", "read")
    server, thread = start_api(cfg, mon.metrics)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer iots_wrong"}).status_code == 401
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert f'iotsentry_flows_ingested_total{{source="zeek"}} {len(flows)}' in text
        assert 'iotsentry_batches_total{source="zeek"} 1' in text
        for name in (
            "iotsentry_alerts_stored_total",
            "iotsentry_queue_depth",
            "iotsentry_learning 1",
            "iotsentry_canary_coverage",
            "iotsentry_last_batch_latency_seconds",
        ):
            assert name in text
        # the API's own routes are served by the same app
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/alerts", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        mon.close()
