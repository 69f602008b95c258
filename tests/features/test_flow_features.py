"""Flow feature matrix: shapes, finiteness, no address features, originator context by hand."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.zeek import read_flows
from iotsentry.features.flow_features import FEATURE_NAMES, flow_matrix, originator_context
from iotsentry.schema import FlowBatch, ip_from_str


def _batch(rows: list[tuple[float, str, str, int, str]]) -> FlowBatch:
    """Flows from (ts, originator, responder, responder port, conn_state) tuples."""
    src = [ip_from_str(r[1]) for r in rows]
    dst = [ip_from_str(r[2]) for r in rows]
    return FlowBatch(
        {
            "ts": np.array([r[0] for r in rows]),
            "src_ip_hi": np.array([a[0] for a in src], dtype=np.uint64),
            "src_ip_lo": np.array([a[1] for a in src], dtype=np.uint64),
            "dst_ip_hi": np.array([a[0] for a in dst], dtype=np.uint64),
            "dst_ip_lo": np.array([a[1] for a in dst], dtype=np.uint64),
            "dst_port": np.array([r[3] for r in rows]),
            "src_port": np.full(len(rows), 40000),
            "proto": np.full(len(rows), 6),
            "src_pkts": np.arange(1, len(rows) + 1),
            "src_bytes": np.arange(1, len(rows) + 1) * 60,
            "conn_state": np.array([r[4] for r in rows], dtype=object),
            "history": np.array(["S" if r[4] == "S0" else "ShADadFf" for r in rows], dtype=object),
            "service": np.array(["", "dns,http", "http", "", "", "ssl", ""][: len(rows)], dtype=object),
        }
    )


A, B = "192.168.1.10", "192.168.1.20"
ROWS = [  # deliberately not in time order
    (100.0, A, "8.8.8.8", 53, "SF"),
    (130.0, A, "1.1.1.1", 80, "S0"),
    (50.0, A, "8.8.8.8", 53, "SF"),
    (150.0, B, "8.8.8.8", 53, "REJ"),
    (155.0, A, "1.1.1.1", 443, "S0"),
    (200.0, A, "9.9.9.9", 80, "SF"),
    (215.0, A, "1.1.1.1", 80, "SF"),
]


def test_context_known_answers() -> None:
    ctx = originator_context(_batch(ROWS), window=60.0)
    # columns: earlier flows in window, distinct responders, distinct ports, same responder, failed share
    expected = np.array(
        [
            [1, 1, 1, 1, 0.0],  # 100: sees 50 (8.8.8.8:53)
            [1, 1, 1, 0, 0.0],  # 130: sees 100 only (50 is 80 s back)
            [0, 0, 0, 0, 0.0],  # 50: first flow of A
            [0, 0, 0, 0, 0.0],  # B: other originator, A's flows do not count
            [2, 2, 2, 1, 0.5],  # 155: sees 100 (SF) and 130 (S0 to 1.1.1.1:80)
            [2, 1, 2, 0, 1.0],  # 200: sees 155 and 130? no: 130 < 140 -> sees 155 only ... see below
            [2, 2, 2, 1, 0.5],  # 215: sees 155 (S0, 1.1.1.1:443) and 200 (SF, 9.9.9.9:80)
        ]
    )
    # 200: window [140, 200] holds only 155 (S0, 1.1.1.1:443)
    expected[5] = [1, 1, 1, 0, 1.0]
    np.testing.assert_allclose(ctx, expected)


def test_context_is_order_invariant() -> None:
    b = _batch(ROWS)
    perm = np.array([6, 2, 0, 5, 1, 4, 3])
    np.testing.assert_allclose(originator_context(b.take(perm)), originator_context(b)[perm])


def test_matrix_on_hand_made_flows() -> None:
    X, names = flow_matrix(_batch(ROWS))
    assert names == FEATURE_NAMES and X.shape == (len(ROWS), len(names)) and X.dtype == np.float32
    col = {n: i for i, n in enumerate(names)}
    np.testing.assert_array_equal(X[:, col["state_S0"]], [0, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(X[:, col["state_REJ"]], [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(X[:, col["dport_dns"]], [1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(X[:, col["dport_web"]], [0, 1, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(X[:, col["service_http"]], [0, 0, 1, 0, 0, 0, 0])  # "dns,http" -> dns
    np.testing.assert_array_equal(X[:, col["service_dns"]], [0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(X[:, col["service_none"]], [1, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(X[:, col["hist_resp_d"]], [1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(X[:, col["resp_public"]], np.ones(len(ROWS)))
    np.testing.assert_allclose(X[:, col["log_src_pkts"]], np.log1p(np.arange(1, 8)), rtol=1e-6)
    np.testing.assert_allclose(X[:, col["ctx_flows_log"]], np.log1p([1, 1, 0, 0, 2, 1, 2]), rtol=1e-6)


def test_no_address_or_time_features() -> None:
    for n in FEATURE_NAMES:
        assert not set(n.split("_")) & {"ip", "mac", "addr", "address", "uid", "ts", "timestamp"}, n
    # moving every address and shifting time leaves the matrix unchanged
    b = _batch(ROWS)
    moved = FlowBatch(dict(b.columns))
    moved.columns["ts"] = b.ts + 1.0e9
    moved.columns["src_ip_lo"] = b.src_ip_lo + np.uint64(5)  # 192.168.1.15 / .25: still private
    moved.columns["dst_ip_lo"] = b.dst_ip_lo + np.uint64(1)  # other public addresses
    np.testing.assert_array_equal(flow_matrix(moved)[0], flow_matrix(b)[0])


def test_empty_batch() -> None:
    X, names = flow_matrix(FlowBatch.empty())
    assert X.shape == (0, len(names))


@pytest.mark.slow
def test_real_log_shapes_and_finiteness() -> None:
    flows = read_flows(data_path("iot23", "zeek", "CTU-IoT-Malware-Capture-42-1", "conn.log.labeled"))
    X, names = flow_matrix(flows)
    assert X.shape == (4426, len(names))  # SOURCE.md: 4,426 flows
    assert np.isfinite(X).all()
    col = {n: i for i, n in enumerate(names)}
    one_hot = X[:, [i for n, i in col.items() if n.startswith("state_")]]
    np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
    proto = X[:, [col["proto_tcp"], col["proto_udp"], col["proto_icmp"], col["proto_other"]]]
    np.testing.assert_array_equal(proto.sum(axis=1), 1.0)
    # Zeek's S0 means "attempt seen, no reply": such flows never have responder packets
    s0 = X[:, col["state_S0"]] == 1
    assert s0.any() and X[s0, col["no_response"]].min() == 1.0
