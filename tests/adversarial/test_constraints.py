"""FlowConstraints: projection mirrors flow_matrix, is idempotent, and violations name each broken rule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import data_path
from iotsentry.adversarial.constraints import FlowConstraints
from iotsentry.capture.zeek import read_flows
from iotsentry.features.flow_features import FEATURE_NAMES, flow_matrix
from iotsentry.schema import FlowBatch, ip_from_str

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def synthetic_flows(n: int = 40, seed: int = 0) -> FlowBatch:
    """TCP flows with data both ways, a few unanswered SYNs (S0) and single-packet UDP flows."""
    rng = np.random.default_rng(seed)
    kind = np.array(["SF"] * (n - n // 4 - n // 8) + ["S0"] * (n // 4) + ["UDP"] * (n // 8), dtype=object)
    sf, s0, udp = kind == "SF", kind == "S0", kind == "UDP"
    sp = np.where(sf, rng.integers(4, 30, n), np.where(s0, rng.integers(1, 4, n), 1))
    dp = np.where(sf, rng.integers(3, 30, n), np.where(udp, 1, 0))
    spay = np.where(sf, sp * rng.integers(0, 400, n), np.where(udp, 40, 0))
    dpay = np.where(sf, dp * rng.integers(0, 900, n), np.where(udp, 80, 0))
    hdr = np.where(udp, 28, 40)
    src = ip_from_str("192.168.1.10")
    dst = [ip_from_str(f"203.0.113.{i % 7 + 1}") for i in range(n)]
    return FlowBatch(
        {
            "ts": np.sort(rng.uniform(0, 300, n)),
            "duration": np.where(sp + dp >= 2, rng.uniform(0, 20, n), 0.0),
            "src_ip_hi": np.full(n, src[0], dtype=np.uint64),
            "src_ip_lo": np.full(n, src[1], dtype=np.uint64),
            "dst_ip_hi": np.array([a[0] for a in dst], dtype=np.uint64),
            "dst_ip_lo": np.array([a[1] for a in dst], dtype=np.uint64),
            "src_port": rng.integers(30000, 60000, n),
            "dst_port": np.where(udp, 53, np.where(s0, 6667, 80)),
            "proto": np.where(udp, 17, 6),
            "src_pkts": sp,
            "dst_pkts": dp,
            "src_bytes": sp * hdr + spay,
            "dst_bytes": dp * hdr + dpay,
            "src_payload": spay,
            "dst_payload": dpay,
            "conn_state": np.where(udp, "SF", kind).astype(object),
            "history": np.where(sf, "ShADadfF", np.where(s0, "S", "Dd")).astype(object),
            "service": np.where(udp, "dns", np.where(sf, "http", "")).astype(object),
        }
    )


@pytest.fixture(scope="module")
def flows() -> FlowBatch:
    return synthetic_flows()


@pytest.fixture(scope="module")
def X(flows: FlowBatch) -> np.ndarray:
    return flow_matrix(flows)[0]


def test_roles_come_from_the_names() -> None:
    c = FlowConstraints()
    assert c.controlled == ["log_src_pkts", "log_src_bytes", "log_src_payload", "log_duration"]
    assert "log_dst_bytes" in c.fixed and "ctx_flows_log" in c.fixed and "proto_tcp" in c.fixed
    both = FlowConstraints(controls_responder=True, chaff=True)
    assert "log_dst_bytes" in both.controlled and "ctx_flows_log" in both.increasable
    assert "ctx_failed_frac" in both.controlled and "ctx_failed_frac" not in both.increasable
    assert set(both.derived).isdisjoint(both.controlled + both.fixed)
    with pytest.raises(ValueError, match="lack"):
        FlowConstraints(names=FEATURE_NAMES[:20])


@pytest.mark.parametrize("both", [False, True])
def test_projection_of_real_rows_is_the_identity(X: np.ndarray, both: bool) -> None:
    c = FlowConstraints(controls_responder=both, chaff=both)
    np.testing.assert_array_equal(c.project(X, X), X)
    assert c.violations(X, X) == [[] for _ in range(len(X))]


@pytest.mark.parametrize("responder", [False, True])
def test_derived_features_equal_flow_matrix_after_changing_raw_values(
    flows: FlowBatch, X: np.ndarray, responder: bool
) -> None:
    """Pad and add packets in the raw flows; projection recomputes the derived features identically."""
    alive = np.asarray(flows.src_payload) > 0
    more = FlowBatch(dict(flows.columns))
    extra = np.where(alive, 3, 0)
    pad = np.where(alive, 150, 0)
    more.columns["src_pkts"] = flows.src_pkts + extra.astype(np.uint64)
    more.columns["src_payload"] = flows.src_payload + pad.astype(np.uint64)
    more.columns["src_bytes"] = flows.src_bytes + (40 * extra + pad + 7).astype(np.uint64)
    more.columns["duration"] = flows.duration + np.where(alive, 2.5, 0.0)
    if responder:
        answered = np.asarray(flows.dst_payload) > 0
        more.columns["dst_pkts"] = flows.dst_pkts + np.where(answered, 2, 0).astype(np.uint64)
        more.columns["dst_bytes"] = flows.dst_bytes + np.where(answered, 80 + 1000, 0).astype(np.uint64)
        more.columns["dst_payload"] = flows.dst_payload + np.where(answered, 1000, 0).astype(np.uint64)
    X2 = flow_matrix(more)[0]
    c = FlowConstraints(controls_responder=responder)
    assert c.violations(X, X2) == [[] for _ in range(len(X))]
    np.testing.assert_array_equal(c.project(X, X2), X2)
    # only the raw columns moved: the projection must recompute every derived feature
    raw_only = X.copy()
    for name in c.controlled:
        raw_only[:, COL[name]] = X2[:, COL[name]]
    np.testing.assert_allclose(c.project(X, raw_only), X2, rtol=0, atol=2e-6)
    assert any("derived:" in v for row in c.violations(X, raw_only) for v in row)


@pytest.mark.parametrize("both", [False, True])
def test_projection_is_feasible_and_idempotent(X: np.ndarray, both: bool) -> None:
    c = FlowConstraints(controls_responder=both, chaff=both)
    rng = np.random.default_rng(1)
    for scale in (0.3, 3.0):
        A = X + rng.normal(0, scale, X.shape).astype(np.float32)
        P = c.project(X, A)
        assert (c.violation_counts(X, A) > 0).all()
        assert c.violations(X, P) == [[] for _ in range(len(X))]
        np.testing.assert_array_equal(c.project(X, P), P)
        relaxed = c.project(X, A, integral=False)
        np.testing.assert_array_equal(c.project(X, c.project(X, relaxed)), c.project(X, relaxed))


def test_projection_respects_monotonicity_and_silence(X: np.ndarray) -> None:
    c = FlowConstraints(controls_responder=True)
    P = c.project(X, X - 2.0)
    np.testing.assert_array_equal(P, X)  # nothing can be removed
    raw0, raw1 = c.decode(X), c.decode(c.project(X, X + 5.0))
    silent = raw0["dst_pkts"] == 0
    assert silent.any() and (raw1["dst_pkts"][silent] == 0).all()
    no_payload = raw0["src_payload"] == 0
    assert no_payload.any() and (raw1["src_payload"][no_payload] == 0).all()
    grew = raw1["src_pkts"] - raw0["src_pkts"]
    assert (grew > 0).any()
    assert (raw1["src_bytes"] - raw0["src_bytes"] >= 40 * grew - 1e-6).all()


def _violation_names(c: FlowConstraints, X: np.ndarray, row: int, name: str, value: float) -> list[str]:
    A = X.copy()
    A[row, COL[name]] = value
    return c.violations(X[row : row + 1], A[row : row + 1])[0]


def test_each_rule_is_reported(X: np.ndarray) -> None:
    c = FlowConstraints()
    raw = c.decode(X)
    sf = int(np.flatnonzero(raw["dst_payload"] > 0)[0])
    s0 = int(np.flatnonzero((raw["dst_pkts"] == 0) & (raw["src_pkts"] == 1))[0])
    x = X[sf]
    assert "fixed:proto_tcp" in _violation_names(c, X, sf, "proto_tcp", 0.0)
    assert "fixed:log_dst_bytes" in _violation_names(c, X, sf, "log_dst_bytes", x[COL["log_dst_bytes"]] + 1)
    got = _violation_names(c, X, sf, "log_src_bytes", x[COL["log_src_bytes"]] - 0.5)
    assert "monotone:log_src_bytes" in got and "derived:log_src_bytes_per_pkt" in got
    got = _violation_names(c, X, sf, "log_src_pkts", np.log1p(raw["src_pkts"][sf] + 0.5))
    assert "integer:log_src_pkts" in got
    # 1000 more packets but the same bytes: headers are missing
    got = _violation_names(c, X, sf, "log_src_pkts", np.log1p(raw["src_pkts"][sf] + 1000))
    assert "header_bytes:src" in got
    got = _violation_names(c, X, sf, "log_src_bytes", np.log1p(raw["src_bytes"][sf] * 5000))
    assert "mtu:src" in got
    got = _violation_names(c, X, s0, "log_src_payload", np.log1p(10.0))
    assert "new_payload:src" in got
    got = _violation_names(c, X, s0, "log_duration", 1.0)
    assert "duration_single_packet" in got
    both = FlowConstraints(controls_responder=True)
    got = _violation_names(both, X, s0, "log_dst_pkts", np.log1p(2.0))
    assert "silent_direction:dst" in got


def test_chaff_rules(X: np.ndarray) -> None:
    c = FlowConstraints(chaff=True, max_chaff=10)
    raw = c.decode(X)
    row = int(np.argmax(raw["ctx_flows"]))
    flows = raw["ctx_flows"][row]
    assert flows >= 2
    got = _violation_names(c, X, row, "ctx_responders_log", np.log1p(flows + 1))
    assert "context_bound:ctx_responders_log" in got
    got = _violation_names(c, X, row, "ctx_flows_log", np.log1p(flows + 11))
    assert "max_chaff" in got
    A = X.copy()
    A[:, COL["ctx_flows_log"]] += 3.0
    A[:, COL["ctx_failed_frac"]] = 0.37
    P = c.project(X, A)
    assert c.violations(X, P) == [[] for _ in range(len(X))]
    assert (c.decode(P)["ctx_flows"] - raw["ctx_flows"] <= 10).all()


def test_mask_excludes_silent_directions_and_derived(X: np.ndarray) -> None:
    c = FlowConstraints(controls_responder=True)
    m = c.mask(X)
    raw = c.decode(X)
    assert (m[raw["dst_pkts"] == 0][:, COL["log_dst_bytes"]] == 0).all()
    assert (m[raw["dst_pkts"] > 0][:, COL["log_dst_bytes"]] == 1).all()
    assert (m[:, [COL[n] for n in c.derived]] == 0).all()
    assert (m[:, [COL[n] for n in c.fixed]] == 0).all()


def test_import_does_not_load_torch_or_art() -> None:
    code = (
        "import sys, iotsentry.adversarial.constraints\n"
        "print(','.join(m for m in ('torch', 'art', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_real_rows_are_their_own_projection() -> None:
    flows = read_flows(data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled"))
    X = flow_matrix(flows)[0]
    c = FlowConstraints(controls_responder=True, chaff=True)
    np.testing.assert_array_equal(c.project(X, X), X)
    assert int(c.violation_counts(X, X).sum()) == 0
    P = c.project(X, X + np.random.default_rng(0).normal(0, 1, X.shape).astype(np.float32))
    assert int(c.violation_counts(X, P).sum()) == 0
    np.testing.assert_array_equal(c.project(X, P), P)
