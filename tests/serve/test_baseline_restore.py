"""A restarted monitor resumes detection from the baseline it saved (signed), without relearning;
a saved baseline that does not verify is refused, reported, and learned again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from servekit import config_text, cut_capture, home_capture, write_pcap

from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.baseline.persist import ARRAYS_FILE, MANIFEST_FILE, load_baseline
from iotsentry.integrity.audit import read_records
from iotsentry.integrity.signing import SIGNATURE_FILE, generate_keypair, trust_key, verify_model_dir
from iotsentry.serve.config import load_config
from iotsentry.serve.monitor import BASELINE_DIR, JsonLog, Monitor, build_monitor
from iotsentry.store import open_store

CUT = 9
"""The first run reads 9 files of 300 s (learning ends at 1680 s, the infection starts at 2160 s)."""

Files = list[tuple[str, list[tuple[float, bytes]]]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("home")
    return cut_capture(home_capture(root / "home.pcap"), 300.0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    trust_key(d, generate_keypair(d))
    return d


def _setup(root: Path, keys: Path | None) -> Path:
    (root / "pcaps").mkdir()
    text = config_text(root)
    if keys is not None:  # the active key's private key sits in the keyring folder: it signs
        text = text.replace("[state]\n", f'[state]\nkeyring = "{keys}"\n')
    cfg = root / "serve.toml"
    cfg.write_text(text)
    return cfg


def _run(cfg: Path) -> Monitor:
    class Lines:
        def write(self, s: str) -> None:
            pass

        def flush(self) -> None:
            pass

    mon = build_monitor(load_config(cfg), log=JsonLog(Lines()))  # type: ignore[arg-type]
    try:
        mon.run(handle_signals=False, idle_exit_s=1.0)
    finally:
        mon.close()
    return mon


def _sent(root: Path) -> list[dict[str, Any]]:
    path = root / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _active_after(root: Path, cut: float) -> dict[str, str]:
    """Stored traffic alert rows active at or after ``cut``: de-duplication key -> category."""
    with open_store(root / "store.db") as store:
        rows = store.get_alerts(since=cut, limit=100_000)
    return {alert_dedup_key(r.alert): r.alert.category for r in rows if r.alert.event_type == "alert"}


def _incidents(root: Path) -> dict[str, tuple[str, str]]:
    """Stored incidents: id -> (device, cause)."""
    with open_store(root / "store.db") as store:
        items, _ = store.query_incidents(limit=10_000)
    return {i.incident_id: (i.device_id, i.cause) for i in items}


def _actions(root: Path) -> list[str]:
    return [r.action for r in read_records(root / "audit.jsonl")]


def _interrupted(root: Path, files: Files, keys: Path | None) -> tuple[Path, int]:
    """First run over ``files[:CUT]``, then the rest of the files appear; returns (config, sent)."""
    cfg = _setup(root, keys)
    for name, rows in files[:CUT]:
        write_pcap(root / "pcaps", name, rows)
    first = _run(cfg)
    assert not first.engine.learning and not first.engine.restored
    for name, rows in files[CUT:]:
        write_pcap(root / "pcaps", name, rows)
    return cfg, len(_sent(root))


def test_a_restart_resumes_detection_from_the_signed_baseline(
    tmp_path: Path, home: Files, keys: Path
) -> None:
    # one uninterrupted run over every file
    whole = tmp_path / "whole"
    whole.mkdir()
    cfg_whole = _setup(whole, None)
    for name, rows in home:
        write_pcap(whole / "pcaps", name, rows)
    _run(cfg_whole)
    # the same files, read by a monitor stopped after the first CUT files and started again
    root = tmp_path / "restart"
    root.mkdir()
    cfg, n_sent = _interrupted(root, home, keys)
    saved = root / "state" / BASELINE_DIR
    assert (saved / SIGNATURE_FILE).exists() and verify_model_dir(saved, keys).key_id
    assert load_baseline(saved).frozen
    second = _run(cfg)
    assert second.engine.restored and second.engine.t_end < home[CUT][1][0][0]
    actions = _actions(root)
    assert actions.count("serve.start") == 2 and actions.count("baseline.learned") == 1
    assert "baseline.restored" in actions and "baseline.reset" not in actions
    assert "baseline.refused" not in actions
    # the alerts of the second run (the new files) have the uninterrupted run's alert keys (the
    # stores hold every alert; sinks get only what opens or escalates an incident)
    cut = home[CUT][1][0][0]
    want, got = _active_after(whole, cut), _active_after(root, cut)
    assert want and got == want
    assert "c2" in got.values()  # the infection goes on after the restart
    # the restart continued the stored incidents: the same incidents as the uninterrupted run
    assert _incidents(root) == _incidents(whole)
    after = [e for e in _sent(root)[n_sent:] if e["event_type"] == "alert"]
    assert {e["incident_id"] for e in after} <= set(_incidents(root))
    # and no integrity alert about the baseline
    assert not any(e["alert"]["category"] == "baseline-integrity" for e in _sent(root))


def _tamper_arrays(saved: Path) -> None:
    data = bytearray((saved / ARRAYS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / ARRAYS_FILE).write_bytes(bytes(data))


def _tamper_manifest(saved: Path) -> None:
    m = json.loads((saved / MANIFEST_FILE).read_text())
    m["created"] = "2000-01-01T00:00:00.000000Z"
    (saved / MANIFEST_FILE).write_text(json.dumps(m))


def _unsign(saved: Path) -> None:
    (saved / SIGNATURE_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "keyed", "needle"),
    [
        (_tamper_arrays, True, "altered"),
        (_tamper_manifest, True, "manifest.json"),
        (_unsign, True, "unsigned"),
        (_tamper_arrays, False, "SHA-256"),
    ],
)
def test_a_tampered_saved_baseline_is_refused_then_learned_again(
    tmp_path: Path, home: Files, keys: Path, damage: Any, keyed: bool, needle: str
) -> None:
    cfg, _ = _interrupted(tmp_path, home, keys if keyed else None)
    saved = tmp_path / "state" / BASELINE_DIR
    damage(saved)
    second = _run(cfg)
    assert not second.engine.restored and not second.engine.learning  # learned again from the new files
    recs = list(read_records(tmp_path / "audit.jsonl"))
    actions = [r.action for r in recs]
    assert "baseline.refused" in actions and "baseline.restored" not in actions
    refused = next(r for r in recs if r.action == "baseline.refused")
    assert needle in str(refused.details["error"])
    assert actions.index("baseline.refused") < actions.index("baseline.reset")
    assert actions.count("baseline.learned") == 2 and actions.count("baseline.saved") == 2
    # an integrity alert was stored (and sent) about it
    integrity = [e for e in _sent(tmp_path) if e["event_type"] == "integrity"]
    assert any(e["alert"]["category"] == "baseline-integrity" for e in integrity)
    with open_store(tmp_path / "store.db") as store:
        assert any(r.alert.category == "baseline-integrity" for r in store.get_alerts(limit=100_000))
        assert all(alert_dedup_key(r.alert) for r in store.get_alerts(limit=100_000))
    # the relearned baseline replaced the damaged one, and verifies
    assert load_baseline(saved).frozen
    if keyed:
        verify_model_dir(saved, keys)
    shutil.rmtree(saved)
