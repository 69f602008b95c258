"""A saved and loaded baseline detects exactly like the one that was learned; damage is refused."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import data_path
from iotsentry.alerts.policy import AlertPolicy
from iotsentry.baseline.persist import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    PROFILES_FILE,
    BaselineFileError,
    load_baseline,
    load_baseline_with_metadata,
    save_baseline,
)
from iotsentry.baseline.profile import Baseline
from iotsentry.detectors.profile import ProfileDetector
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, packet_context
from iotsentry.pipeline import AnalysisConfig, Analyzer, _split_at, iter_batches, window_aligned
from iotsentry.schema import PROTO_NAMES

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")


class Learned:
    """The batch pipeline's learning pass over ``path`` (as ``Analyzer.run`` does it)."""

    def __init__(self, path: Path, learn_s: float) -> None:
        an = Analyzer([path], AnalysisConfig(learn_seconds=learn_s))
        devices = an.inventory()
        gw = next((d.device_id for d in devices if d.is_gateway), None)
        self.an, self.devices = an, devices
        self.index = DeviceIndex([d.device_id for d in devices], gw)
        self.labels = [d.label for d in devices]
        self.t_end = an.learn_end()
        baseline = Baseline([d.device_id for d in devices])
        consumed = 0
        for b in window_aligned(iter_batches([path], an.config.batch_size)):
            positions = consumed + np.arange(len(b), dtype=np.int64)
            consumed += len(b)
            lb, rest = _split_at(b, self.t_end)
            if len(lb):
                rows = an._token_rows(positions[b.ts < self.t_end], self.index)
                baseline.learn(lb, packet_context(lb, self.index), an.tracker.ip_names, rows)
            if len(rest):
                break
        baseline.freeze()
        self.baseline = baseline
        self.path = path

    def detect(self, baseline: Baseline) -> tuple[list[np.ndarray], list[Any], list[dict[str, Any]]]:
        """Per-batch packet scores, findings and alerts of a detector fitted on ``baseline``."""
        det = ProfileDetector(baseline, labels=list(self.labels), token_text=self.an.tokens.text).fit()
        policy = AlertPolicy()
        names = self.an.tracker.ip_names
        scores, findings = [], []
        done = 0
        for b in window_aligned(iter_batches([self.path], self.an.config.batch_size)):
            ctx = packet_context(b, self.index)
            rows = self.an._token_rows(done + np.arange(len(b), dtype=np.int64), self.index)
            done += len(b)
            s, table, ws = det.evaluate(b, ctx, names, rows)
            scores.append(s)
            detect = (table.window * WINDOW_S) >= self.t_end
            if not detect.any():
                continue
            found = det.findings(b, ctx, table, np.where(detect, ws, 0.0))
            found += det.schedule_findings(b, ctx, names, self.t_end)
            for f in found:
                findings.append(asdict(f))
                dev = self.devices[f.device]
                policy.make(
                    ts=f.ts,
                    device_id=f.device_id,
                    detector=det.name,
                    detector_version=det.version,
                    score=f.score,
                    threshold=f.threshold,
                    category=f.category,
                    reason=f.reason,
                    src_ip=dev.ips[0] if dev.ips else "",
                    dest_ip=f.peer_ip,
                    dest_port=f.peer_port,
                    proto=PROTO_NAMES.get(f.proto, str(f.proto)),
                    extra={"feature": f.feature, "values": f.values},
                )
        return scores, findings, [a.to_eve() for a in policy.alerts()]


def state_of(b: Baseline) -> dict[str, Any]:
    """Everything detection reads from a frozen baseline, in comparable form."""
    return {
        "ids": b.device_ids,
        "frozen": b.frozen,
        "drift_guard": b.drift_guard,
        "profiles": [
            (
                p.device_id,
                list(p.peers.items()),
                p.peer_names,
                p.names,
                list(p.services.items()),
                [x.tolist() for x in p.windows],
                p.window_ts,
                p.discoveries,
                p.quarantined,
                p.capped,
                p.first_ts,
                p.last_ts,
                p.networks,
                p.domains,
                p.bare_services,
                p.high_networks,
                p.learn_start,
                p.learn_end,
                p.active,
                p.groups,
                p.history,
            )
            for p in b.profiles
        ],
        "known": b.known.array().tolist(),
        "group_known": b.group_known.array().tolist(),
        "names_evidence": b.names_evidence.tolist(),
        "peer_table": (b._peer_keys.tolist(), b._peer_counts.tolist(), b._peer_keys.dtype),
        "svc_table": (b._svc_keys.tolist(), b._svc_counts.tolist(), b._svc_keys.dtype),
        "peer_win": b._peer_win,
        "svc_win": b._svc_win,
        "names": {d: s for d, s in b._names.items() if s},
        "tokens": {d: s for d, s in b._tokens.items() if s},
        "schedules": [(k, asdict(s)) for k, s in b.periodicity.schedules.items()],
    }


def _round_trip_detects_identically(learned: Learned, tmp_path: Path) -> None:
    target = save_baseline(learned.baseline, tmp_path / "baseline", metadata={"t_end": learned.t_end})
    loaded, meta = load_baseline_with_metadata(target)
    assert meta == {"t_end": learned.t_end}
    assert loaded.frozen
    assert state_of(loaded) == state_of(learned.baseline)
    s1, f1, a1 = learned.detect(learned.baseline)
    s2, f2, a2 = learned.detect(loaded)
    assert len(s1) == len(s2) and all(np.array_equal(x, y) for x, y in zip(s1, s2, strict=True))
    assert f1 == f2
    assert a1 == a2
    return None


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Learned:
    path = tmp_path_factory.mktemp("home") / "home.pcap"
    # learning long enough for schedules (>= 30 min of check-ins), the infection after it
    generate_home(path, seed=3, duration_s=7200.0, infect_at=0.6)
    return Learned(path, 2400.0)


def test_synthetic_home_round_trip_scores_and_alerts_identically(home: Learned, tmp_path: Path) -> None:
    b = home.baseline
    # the capture exercises every part of the state
    assert b.periodicity.schedules and any(b._tokens.values()) and any(b._names.values())
    assert len(b._peer_keys) and len(b._svc_keys)
    _round_trip_detects_identically(home, tmp_path)
    _s, f, a = home.detect(load_baseline(tmp_path / "baseline"))
    assert f and a  # the infection is found (not a vacuous comparison)


@pytest.mark.slow
def test_real_capture_round_trip_scores_and_alerts_identically(tmp_path: Path) -> None:
    learned = Learned(data_path(*HUE), 600.0)
    assert learned.baseline._peer_keys.size
    _round_trip_detects_identically(learned, tmp_path)


def test_quarantine_and_drift_guard_round_trip(home: Learned, tmp_path: Path) -> None:
    b = Baseline(["02:00:00:00:00:01", "02:00:00:00:00:02"])
    b.drift_guard = True
    b.profiles[0].quarantined.append(
        {"kind": "peer", "key": "1.2.3.4", "first_half": 1.0, "second_half": 90.0}
    )
    b.profiles[1].capped.append("syn_only")
    b.freeze()
    loaded = load_baseline(save_baseline(b, tmp_path / "b"))
    assert state_of(loaded) == state_of(b)
    assert loaded.profiles[0].first_ts == float("inf") and loaded.profiles[0].last_ts == float("-inf")


def test_a_baseline_still_learning_round_trips_and_learns_on(home: Learned, tmp_path: Path) -> None:
    """A living baseline is saved at any time: a device still learning keeps its clock and its
    connection series, and its learning goes on after the load."""
    b = Baseline(list(home.baseline.device_ids))
    done = 0
    for batch in window_aligned(iter_batches([home.path], home.an.config.batch_size)):
        ctx = packet_context(batch, home.index)
        rows = home.an._token_rows(done + np.arange(len(batch), dtype=np.int64), home.index)
        done += len(batch)
        b.learn(batch, ctx, home.an.tracker.ip_names, rows)
        if done > 5000:
            break
    b.start_clock(0, 1.0e9, 3600.0)
    b.profiles[1].networks.add("203.0.113.0/24")
    b.profiles[1].history.append({"id": "abs-1", "kind": "network", "item": "203.0.113.0/24"})
    b.rebuild_identity()
    assert not b.frozen and b.periodicity.learning_series()
    target = save_baseline(b, tmp_path / "b")
    loaded = load_baseline(target)
    assert not loaded.frozen
    assert state_of(loaded) == state_of(b)
    assert loaded.periodicity.learning_series() == b.periodicity.learning_series()
    assert loaded.profiles[0].learn_start == 1.0e9 and not loaded.profiles[0].active
    assert loaded.has_item(1, "network", "203.0.113.0/24")
    loaded.freeze()
    b.freeze()
    assert [(k, asdict(x)) for k, x in loaded.periodicity.schedules.items()] == [
        (k, asdict(x)) for k, x in b.periodicity.schedules.items()
    ]


def test_save_replaces_atomically(home: Learned, tmp_path: Path) -> None:
    target = tmp_path / "baseline"
    save_baseline(home.baseline, target, metadata={"n": 1})
    save_baseline(home.baseline, target, metadata={"n": 2})
    assert load_baseline_with_metadata(target)[1] == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]  # no temporary left over

    def boom(_d: Path) -> None:
        raise RuntimeError("signing failed")

    with pytest.raises(RuntimeError):
        save_baseline(home.baseline, target, metadata={"n": 3}, finalize=boom)
    assert load_baseline_with_metadata(target)[1] == {"n": 2}  # the old one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]


# -- damage ------------------------------------------------------------------------------------------
@pytest.fixture
def saved(home: Learned, tmp_path: Path) -> Path:
    return save_baseline(home.baseline, tmp_path / "baseline", metadata={"k": "v"})


def _refused(d: Path, *needles: str) -> str:
    with pytest.raises(BaselineFileError) as e:
        load_baseline(d)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def _rewrite_manifest(d: Path, edit: Any) -> None:
    m = json.loads((d / MANIFEST_FILE).read_text())
    edit(m)
    (d / MANIFEST_FILE).write_text(json.dumps(m))


def _redigest(d: Path, name: str) -> None:
    data = (d / name).read_bytes()

    def edit(m: dict[str, Any]) -> None:
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    _rewrite_manifest(d, edit)


@pytest.mark.parametrize("name", [PROFILES_FILE, ARRAYS_FILE, METADATA_FILE])
def test_an_altered_data_file_is_refused(saved: Path, name: str) -> None:
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / name).write_bytes(bytes(data))
    _refused(saved, name, "SHA-256")


def test_a_truncated_or_missing_or_extra_file_is_refused(saved: Path) -> None:
    (saved / "extra.bin").write_bytes(b"x")
    _refused(saved, "extra.bin", "unexpected file")
    (saved / "extra.bin").unlink()
    (saved / ARRAYS_FILE).write_bytes((saved / ARRAYS_FILE).read_bytes()[:-10])
    _refused(saved, ARRAYS_FILE, "size")
    (saved / PROFILES_FILE).unlink()
    _refused(saved, PROFILES_FILE, "missing")
    (saved / MANIFEST_FILE).unlink()
    _refused(saved, MANIFEST_FILE, "not a saved baseline")


def test_a_tampered_manifest_is_refused(saved: Path) -> None:
    original = (saved / MANIFEST_FILE).read_text()
    _rewrite_manifest(saved, lambda m: m.update(version=1))
    _refused(saved, MANIFEST_FILE, "version 1 is not supported")
    (saved / MANIFEST_FILE).write_text(original)
    _rewrite_manifest(saved, lambda m: m["device_ids"].reverse())
    _refused(saved, PROFILES_FILE, "device_ids differ")
    (saved / MANIFEST_FILE).write_text(original)
    _rewrite_manifest(saved, lambda m: m["files"][ARRAYS_FILE].update(sha256="0" * 64))
    _refused(saved, ARRAYS_FILE, "SHA-256")
    (saved / MANIFEST_FILE).write_text(original)
    _rewrite_manifest(saved, lambda m: m["counts"].update(windows=m["counts"]["windows"] + 1))
    _refused(saved, ARRAYS_FILE, "windows")
    (saved / MANIFEST_FILE).write_text(original[:-20])
    _refused(saved, MANIFEST_FILE, "not valid JSON")
    (saved / MANIFEST_FILE).write_text(original)
    assert load_baseline(saved).frozen


def test_a_consistent_but_inconsistent_profiles_file_is_refused(saved: Path) -> None:
    doc = json.loads((saved / PROFILES_FILE).read_text())
    doc["profiles"][0]["peers"] = [["1.2.3.4", "many"]]
    (saved / PROFILES_FILE).write_text(json.dumps(doc))
    _redigest(saved, PROFILES_FILE)
    _refused(saved, PROFILES_FILE, "profiles[0].peers")


def _npz_with(saved: Path, replace: dict[str, np.ndarray]) -> None:
    with np.load(saved / ARRAYS_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # allow_pickle defaults to True on save: the crafted file pickles
    (saved / ARRAYS_FILE).write_bytes(buf.getvalue())
    _redigest(saved, ARRAYS_FILE)


class Bomb:
    """Unpickling this would run code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (pytest.fail, ("the baseline loader unpickled an object array",))


def test_an_object_array_is_refused_never_unpickled(saved: Path) -> None:
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = Bomb(), Bomb()
    _npz_with(saved, {"peer_keys": obj})
    with zipfile.ZipFile(saved / ARRAYS_FILE) as z:  # the crafted member really holds a pickle
        assert pickle.PROTO in z.read("peer_keys.npy")
    _refused(saved, ARRAYS_FILE, "peer_keys", "pickle")


def test_wrong_dtypes_and_unsorted_tables_are_refused(saved: Path) -> None:
    with np.load(saved / ARRAYS_FILE, allow_pickle=False) as z:
        keys = z["peer_keys"].copy()
    _npz_with(saved, {"peer_keys": keys.astype(np.int64)})
    _refused(saved, ARRAYS_FILE, "peer_keys", "uint64")
    _npz_with(saved, {"peer_keys": keys[::-1].copy()})
    _refused(saved, ARRAYS_FILE, "not sorted")
    _npz_with(saved, {"peer_keys": keys, "extra": np.zeros(1)})
    _refused(saved, ARRAYS_FILE, "unexpected array 'extra'")
