"""Malicious sites: each attack sends what its definition says (small synthetic site data)."""

from __future__ import annotations

import numpy as np
import pytest

from iotsentry.federated.poisoning import ATTACKS, AttackConfig, _alie_z, malicious_weights

SHAPES = [(4, 3), (4,), (2, 4), (2,)]


def _site(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "malicious", "benign").astype(str)
    det = np.where(y == "malicious", np.where(X[:, 1] > 0, "C&C", "DDoS"), "-").astype(str)
    return X, y, det


def _trainer(log: list[tuple[int, int, int]]):  # type: ignore[no-untyped-def]
    """A deterministic stand-in for local training: a step that depends on the rows and labels."""

    def train(w: list[np.ndarray], X: np.ndarray, y: np.ndarray, seed: int) -> list[np.ndarray]:
        log.append((len(y), int((y == "malicious").sum()), seed))
        signal = float(((y == "malicious") * 2 - 1) @ X[:, 0]) / max(len(y), 1)
        return [a + 0.01 * signal + 0.001 * (i + 1) for i, a in enumerate(w)]

    return train


W = [np.full(s, 0.5, np.float32) for s in SHAPES]


def _vec(w: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in w])


def test_unknown_attack_and_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig("backdoor", 10, 2)
    with pytest.raises(ValueError, match="n_malicious"):
        AttackConfig("sign-flip", 10, 11)


def test_none_and_label_flip() -> None:
    X, y, det = _site()
    log: list[tuple[int, int, int]] = []
    honest = malicious_weights(AttackConfig("none", 10, 1), W, X, y, det, _trainer(log), 3, 1)
    flipped = malicious_weights(AttackConfig("label-flip", 10, 1), W, X, y, det, _trainer(log), 3, 1)
    assert log[0][1] == (y == "malicious").sum() and log[1][1] == (y == "benign").sum()
    # flipping the labels reverses the label-dependent part of the step
    d_h, d_f = _vec(honest) - _vec(W), _vec(flipped) - _vec(W)
    assert not np.allclose(d_h, d_f)


def test_sign_flip_is_minus_lambda_delta() -> None:
    X, y, det = _site()
    log: list[tuple[int, int, int]] = []
    honest = _vec(malicious_weights(AttackConfig("none", 10, 1), W, X, y, det, _trainer(log), 3, 1))
    bad = _vec(malicious_weights(AttackConfig("sign-flip", 10, 1), W, X, y, det, _trainer(log), 3, 1))
    np.testing.assert_allclose(bad - _vec(W), -4.0 * (honest - _vec(W)), rtol=1e-5, atol=1e-7)


def test_scaling_boosts_the_flipped_update_by_n_over_k() -> None:
    X, y, det = _site()
    log: list[tuple[int, int, int]] = []
    flipped = _vec(malicious_weights(AttackConfig("label-flip", 12, 3), W, X, y, det, _trainer(log), 3, 1))
    scaled = _vec(malicious_weights(AttackConfig("scaling", 12, 3), W, X, y, det, _trainer(log), 3, 1))
    np.testing.assert_allclose(scaled - _vec(W), 4.0 * (flipped - _vec(W)), rtol=1e-5, atol=1e-7)


def test_gaussian_has_the_configured_spread_and_is_seeded() -> None:
    X, y, det = _site()
    cfg = AttackConfig("gaussian", 10, 2, gaussian_sigma=0.5)
    a = _vec(malicious_weights(cfg, W, X, y, det, _trainer([]), 3, 1)) - _vec(W)
    b = _vec(malicious_weights(cfg, W, X, y, det, _trainer([]), 3, 1)) - _vec(W)
    c = _vec(malicious_weights(cfg, W, X, y, det, _trainer([]), 3, 2)) - _vec(W)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # another round, other noise
    assert 0.25 < a.std() < 0.9


def test_alie_z_matches_the_paper_formula() -> None:
    # n = 50, k = 12 in Baruch et al.: s = 26 - 12 = 14, z = Phi^-1(36/50) ~ 0.58
    assert _alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    assert _alie_z(15, 4) > _alie_z(15, 1)  # more attackers -> bolder


def test_alie_uses_the_controlled_sites_updates() -> None:
    X, y, det = _site(0)
    peers = [(*_site(s)[:2], 10 + s) for s in (1, 2)]
    log: list[tuple[int, int, int]] = []
    cfg = AttackConfig("alie", 10, 3)
    out = _vec(malicious_weights(cfg, W, X, y, det, _trainer(log), 7, 1, peers)) - _vec(W)
    assert sorted(s for *_, s in log) == [7, 11, 12]  # own + both peers, no bootstrap
    refs = np.stack([_vec(_trainer([])(W, Xp, yp, s)) - _vec(W) for Xp, yp, s in [(X, y, 7), *peers]])
    np.testing.assert_allclose(out, refs.mean(0) - _alie_z(10, 3) * refs.std(0), rtol=1e-5, atol=1e-7)


def test_single_attacker_falls_back_to_bootstrap_references() -> None:
    X, y, det = _site(0)
    log: list[tuple[int, int, int]] = []
    malicious_weights(AttackConfig("alie", 10, 1, n_references=3), W, X, y, det, _trainer(log), 7, 1)
    assert len(log) == 4


@pytest.mark.parametrize("attack", ["min-max", "min-sum"])
def test_min_max_and_min_sum_stay_within_the_references_spread(attack: str) -> None:
    X, y, det = _site(0)
    peers = [(*_site(s)[:2], 10 + s) for s in (1, 2, 3)]
    cfg = AttackConfig(attack, 10, 4)
    out = _vec(malicious_weights(cfg, W, X, y, det, _trainer([]), 7, 1, peers)) - _vec(W)
    refs = np.stack([_vec(_trainer([])(W, Xp, yp, s)) - _vec(W) for Xp, yp, s in [(X, y, 7), *peers]])
    d_ref = np.sqrt(((refs[:, None] - refs[None]) ** 2).sum(-1))
    d_out = np.sqrt(((refs - out) ** 2).sum(-1))
    if attack == "min-max":
        assert d_out.max() <= d_ref.max() + 1e-9
    else:
        assert (d_out**2).sum() <= (d_ref**2).sum(1).max() + 1e-9
    assert np.linalg.norm(out - refs.mean(0)) > 0  # it did move away from the mean


def test_targeted_relabels_cc_as_benign_and_boosts() -> None:
    X, y, det = _site(0)
    pool = (np.ones((5, 3), np.float32), np.full(5, "malicious"))
    log: list[tuple[int, int, int]] = []
    cfg = AttackConfig("targeted", 10, 2, cc_pool=pool)
    malicious_weights(cfg, W, X, y, det, _trainer(log), 7, 1)
    n_rows, n_mal, _ = log[0]
    assert n_rows == len(y) + 5
    # every C&C row (own and pool) is labelled benign, the other malicious rows keep their label
    assert n_mal == int(((y == "malicious") & (det != "C&C")).sum())
    assert cfg.boost_factor == 5.0


def test_every_attack_is_deterministic() -> None:
    X, y, det = _site(0)
    for attack in ATTACKS:
        cfg = AttackConfig(attack, 10, 2)
        a = malicious_weights(cfg, W, X, y, det, _trainer([]), 7, 3)
        b = malicious_weights(cfg, W, X, y, det, _trainer([]), 7, 3)
        assert [x.shape for x in a] == [w.shape for w in W]
        np.testing.assert_array_equal(_vec(a), _vec(b))
