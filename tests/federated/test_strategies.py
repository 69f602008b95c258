"""Flower strategies: the built-ins agree with robust.py, and the wired-in rules do what they say."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from iotsentry.federated import robust
from iotsentry.federated.strategies import AGGREGATORS, RobustFedAvg, make_strategy

SHAPES = [(3, 4), (3,), (2, 3), (2,)]


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1


def _updates(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(n)]


def _replies(updates: list[list[np.ndarray]], examples: list[int] | None = None) -> list[Message]:
    out = []
    for i, u in enumerate(updates):
        content = RecordDict(
            {
                "arrays": ArrayRecord([a.copy() for a in u]),
                "metrics": MetricRecord(
                    {"num-examples": (examples or [10] * len(updates))[i], "partition-id": i}
                ),
            }
        )
        out.append(Message(content, dst_node_id=1001 + i, message_type="train"))
    return out


def _flower(strategy: Any, updates: list[list[np.ndarray]]) -> list[np.ndarray]:
    arrays, _ = strategy.aggregate_train(1, _replies(updates))
    assert arrays is not None
    return [np.asarray(a, dtype=np.float64) for a in arrays.to_numpy_ndarrays()]


def _close(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=tol, rtol=tol)


@pytest.mark.parametrize("n", [5, 7, 11])
def test_flower_median_agrees_with_ours(n: int) -> None:
    u = _updates(n, n)
    _close(_flower(FedMedian(), u), robust.coordinate_median(u))


@pytest.mark.parametrize("beta", [0.1, 0.2, 0.3])
def test_flower_trimmed_mean_agrees_with_ours(beta: float) -> None:
    u = _updates(10, 3)
    _close(_flower(FedTrimmedAvg(beta=beta), u), robust.trimmed_mean(u, beta))


@pytest.mark.parametrize("f", [1, 2])
def test_flower_krum_agrees_with_ours(f: int) -> None:
    u = _updates(9, 4)
    u[0] = [a * 50 for a in u[0]]  # an outlier Krum must not pick
    ours = robust.krum(u, f)
    assert 0 not in ours.selected
    _close(_flower(Krum(num_malicious_nodes=f), u), ours.aggregate)


def test_flower_multi_krum_agrees_with_ours_at_equal_weights() -> None:
    u = _updates(9, 5)
    ours = robust.multi_krum(u, f=2, m=5)
    _close(_flower(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=5), u), ours.aggregate)


def test_flower_bulyan_agrees_with_ours_when_selections_coincide() -> None:
    u = _updates(7, 7)
    _close(_flower(Bulyan(num_malicious_nodes=1), u), robust.bulyan(u, 1).aggregate)


def test_flower_bulyan_selects_by_one_shot_multi_krum() -> None:
    """Flower's Bulyan picks the theta best first-round Krum scores at once; ours (as in the
    paper) re-runs Krum after each pick. Same aggregation step after the selection."""
    f = 2
    u = _updates(4 * f + 3, 8)
    n, theta = len(u), len(u) - 2 * f
    beta = theta - 2 * f
    sel = robust.multi_krum(u, f, theta).selected
    chosen = np.sort(np.stack([robust.flatten(u[i]) for i in sel]), axis=0)
    med = np.median(chosen, axis=0)
    idx = np.argsort(np.abs(chosen - med), axis=0, kind="stable")[:beta]
    expected = robust.unflatten(np.take_along_axis(chosen, idx, axis=0).mean(axis=0), u[0])
    _close(_flower(Bulyan(num_malicious_nodes=f), u), expected)
    assert n == 11


def _robust_strategy(name: str, global_w: list[np.ndarray], **kw: Any) -> RobustFedAvg:
    out: dict[str, Any] = {}
    strat = make_strategy(name, 6, out, **kw)
    assert isinstance(strat, RobustFedAvg)
    strat._global = [np.asarray(w) for w in global_w]  # what configure_train records
    return strat


def test_norm_clip_strategy_bounds_a_scaled_update_by_the_median_norm() -> None:
    g = [np.zeros(s, np.float32) for s in SHAPES]
    u = _updates(6, 8)
    u[2] = [a * 1000 for a in u[2]]  # model-replacement-sized update
    strat = _robust_strategy("norm-clip", g)
    got = _flower(strat, u)
    norms = [float(np.linalg.norm(robust.flatten(x))) for x in u]
    expected = robust.norm_clip(u, float(np.median(norms)), reference=g)
    _close(got, expected)
    assert np.linalg.norm(robust.flatten(got)) <= np.median(norms) + 1e-6


def test_fltrust_strategy_drops_a_sign_flipped_site() -> None:
    g = [np.ones(s, np.float32) for s in SHAPES]
    honest = _updates(1, 9)[0]
    u = [[gi + h * (1 + 0.1 * k) for gi, h in zip(g, honest, strict=True)] for k in range(5)]
    u.append([gi - 4 * h for gi, h in zip(g, honest, strict=True)])  # sign flipped
    strat = _robust_strategy(
        "fltrust", g, server_update=lambda w, rnd: [h.astype(np.float64) for h in honest]
    )
    got = _flower(strat, u)
    assert strat.out["accepted"][-1] == [0, 1, 2, 3, 4]
    # the aggregate moves the global model along the server's direction, by the server's norm
    step = robust.flatten(got) - robust.flatten(g)
    np.testing.assert_allclose(np.linalg.norm(step), np.linalg.norm(robust.flatten(honest)), rtol=1e-5)
    assert float(step @ robust.flatten(honest)) > 0


def test_flame_strategy_rejects_the_minority_direction() -> None:
    rng = np.random.default_rng(1)
    g = [np.zeros(s, np.float32) for s in SHAPES]
    base = _updates(1, 2)[0]
    u = [[b + 0.05 * rng.normal(size=b.shape).astype(np.float32) for b in base] for _ in range(5)]
    u += [[-3 * b for b in base] for _ in range(2)]
    out: dict[str, Any] = {}
    strat = make_strategy("flame", 7, out, flame_noise=0.0)
    assert isinstance(strat, RobustFedAvg)
    strat._global = g
    _flower(strat, u)
    accepted = out["accepted"][-1]
    # a majority, all of it honest (HDBSCAN may call an honest site noise, as FLAME can)
    assert len(accepted) >= 4 and set(accepted) <= {0, 1, 2, 3, 4}


def test_every_aggregator_builds_and_unknown_is_refused() -> None:
    extra: dict[str, dict[str, Any]] = {
        "fltrust": {"server_update": lambda w, r: w},
        "guarded": {"validate": lambda w: np.zeros(2)},
    }
    for name in AGGREGATORS:
        assert make_strategy(name, 15, {}, **extra.get(name, {})) is not None
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_strategy("fedsgd", 15, {})
    with pytest.raises(ValueError, match="root-dataset"):
        make_strategy("fltrust", 15, {})
    with pytest.raises(ValueError, match="root-dataset"):
        make_strategy("guarded", 15, {})


def test_bulyan_f_is_capped_to_what_n_sites_allow() -> None:
    strat = make_strategy("bulyan", 15, {}, assumed_malicious=6)
    assert isinstance(strat, Bulyan)
    assert strat.num_malicious_nodes == 3  # 4f + 3 <= 15


def test_robust_strategy_skips_non_finite_updates() -> None:
    g = [np.zeros(s, np.float32) for s in SHAPES]
    u = _updates(5, 11)
    u[1][0][0, 0] = np.nan
    strat = _robust_strategy("norm-clip", g)
    got = _flower(strat, u)
    assert all(np.isfinite(a).all() for a in got)
    assert 1 not in strat.out["accepted"][-1]


def test_configure_train_records_the_global_weights() -> None:
    from iotsentry.federated.local_grid import LocalGrid

    g = [np.full(s, 2.0, np.float32) for s in SHAPES]
    strat = make_strategy("norm-clip", 3, {})
    assert isinstance(strat, RobustFedAvg)

    class _NoClient:
        def __call__(self, *a: Any) -> None:  # pragma: no cover - never called here
            raise AssertionError

    grid = LocalGrid(_NoClient(), 3)  # type: ignore[arg-type]
    msgs = list(strat.configure_train(1, ArrayRecord(g), ConfigRecord({}), grid))
    assert len(msgs) == 3
    assert strat._global is not None
    _close(strat._global, g)


def test_guarded_strategy_drops_a_model_that_gives_up_one_class() -> None:
    g = [np.zeros(s, np.float32) for s in SHAPES]
    u = _updates(7, 12)
    u = [[a * 0.01 for a in x] for x in u]
    marker = 5  # site 5's model sacrifices group 1 (e.g. C&C) on the server's data

    def validate(w: list[np.ndarray]) -> np.ndarray:
        is_marked = bool(np.allclose(w[0], u[marker][0]))
        return np.array([0.3, 3.0 if is_marked else 0.3 + 0.01 * float(np.abs(w[0]).mean())])

    strat = _robust_strategy("guarded", g, validate=validate)
    got = _flower(strat, u)
    kept = strat.out["accepted"][-1]
    assert marker not in kept and len(kept) == 6
    norms = [float(np.linalg.norm(robust.flatten(x))) for x in u]
    _close(got, robust.norm_clip([u[i] for i in kept], float(np.median(norms)), reference=g))
