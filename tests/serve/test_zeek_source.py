"""``iotsentry serve`` following a Zeek conn.log that grows, through a signed flow model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import data_path
from iotsentry.serve.config import load_config
from iotsentry.serve.monitor import JsonLog, build_monitor
from iotsentry.store import open_store

LOG = ("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled")


def _split(path: Path, frac: float) -> tuple[list[str], list[str], list[str]]:
    """(header lines, first rows, later rows) of a labeled TSV conn log."""
    lines = path.read_text().splitlines(keepends=True)
    header = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    rows = [x for x in lines if not x.startswith("#")]
    cut = int(len(rows) * frac)
    return header, rows[:cut], rows[cut:]


@pytest.mark.slow
def test_zeek_log_source_follows_appends_and_flags_the_malicious_flows(tmp_path: Path) -> None:
    from iotsentry.detectors.flow_models import train_flows
    from iotsentry.integrity.signing import load_keyring, rotate_key, sign_model_dir

    header, train_rows, later = _split(data_path(*LOG), 0.6)
    (tmp_path / "train.log").write_text("".join(header + train_rows))
    train_flows([tmp_path / "train.log"], tmp_path / "model", "hgb")
    keys = tmp_path / "keys"
    rotate_key(keys)
    active = load_keyring(keys).active
    assert active is not None
    sign_model_dir(tmp_path / "model", keys / f"{active.key_id}.key")

    live = tmp_path / "conn.log"
    live.write_text("".join(header))
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f"""
[store]
target = "{tmp_path / "store.db"}"
[[source]]
kind = "zeek-log"
name = "zeek"
path = "{live}"
[learning]
seconds = 60
[[sink]]
path = "{tmp_path / "alerts.jsonl"}"
[audit]
path = "{tmp_path / "audit.jsonl"}"
[state]
dir = "{tmp_path / "state"}"
[model]
dir = "{tmp_path / "model"}"
keyring = "{keys}"
"""
    )
    mon = build_monitor(load_config(cfg), log=JsonLog(open(tmp_path / "log.jsonl", "w")))  # noqa: SIM115
    assert mon.engine.flow_model is not None
    t = threading.Thread(target=lambda: mon.run(handle_signals=False))
    t.start()
    try:
        # the log grows in three appends, the last one ending inside a line
        chunks = [
            later[: len(later) // 3],
            later[len(later) // 3 : 2 * len(later) // 3],
            later[2 * len(later) // 3 :],
        ]
        text = "".join(chunks[2])
        pieces = ["".join(chunks[0]), "".join(chunks[1]), text[: len(text) // 2], text[len(text) // 2 :]]
        for p in pieces:
            with live.open("a") as fh:
                fh.write(p)
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while mon.metrics.flows.get("zeek", 0) < len(later) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        mon.stop()
        t.join(timeout=60)
        mon.close()
    assert not t.is_alive()
    # every appended row ingested once (the half line waited for its end)
    assert mon.metrics.flows["zeek"] == len(later)
    fields = [x.split("\t") for x in later]
    mal = {(f[4], int(f[5])) for f in fields if "Malicious" in f[-1]}
    ben = {(f[4], int(f[5])) for f in fields if "Malicious" not in f[-1]} - mal
    with open_store(tmp_path / "store.db") as store:
        alerts = [r.alert for r in store.get_alerts(limit=100_000)]
    flow_alerts = [a for a in alerts if a.detector.startswith("flow-")]
    assert flow_alerts
    # alerts are de-duplicated per destination: weigh each by the flows it stands for
    n = [int(a.extra.get("count", 1)) for a in flow_alerts]
    hits = sum(c for a, c in zip(flow_alerts, n, strict=True) if (a.dest_ip, a.dest_port) in mal)
    false = sum(c for a, c in zip(flow_alerts, n, strict=True) if (a.dest_ip, a.dest_port) in ben)
    assert hits / sum(n) >= 0.99 and false <= 0.01 * sum(n)
    assert {"C&C", "DDoS"} <= {a.category for a in flow_alerts}
    sent = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines() if x.strip()]
    # the sink gets what opened or escalated an incident (stored first); the store keeps every alert
    assert {(x["dest_ip"], x["dest_port"], x["alert"]["category"]) for x in sent} <= {
        (a.dest_ip, a.dest_port, a.category) for a in alerts
    }
    with open_store(tmp_path / "store.db") as store:
        incidents, _ = store.query_incidents(limit=10_000)
    assert {x["incident_id"] for x in sent} == {i.incident_id for i in incidents}
    assert len(sent) < sum(i.count for i in incidents)  # repeats were folded, not sent
    assert {"c2", "flood"} <= {i.cause for i in incidents}
    actions = [json.loads(x)["action"] for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert "model.load" in actions
