"""Malicious federated sites: what a poisoning site sends instead of its honest update.

A malicious site receives the global weights ``w`` like every site, and replies with weights
of its choosing. With ``Δ`` the honest update (weights after honest local training minus
``w``), ``n`` sites and ``k`` of them malicious:

==============  ================================================================================
``label-flip``  trains honestly on its data with benign and malicious labels swapped
``sign-flip``   sends ``w − λ·Δ`` (``λ = 4``)
``scaling``     model replacement (Bagdasaryan et al. 2020): trains on flipped labels and sends
                ``w + (n / k)·Δ_flip`` so that plain averaging lands on its model
``gaussian``    sends ``w + N(0, σ²)`` per coordinate (``σ = 1``)
``alie``        "a little is enough" (Baruch et al. 2019): ``μ − z·σ`` coordinate-wise, with
                ``z = Φ⁻¹((n − s) / n)``, ``s = ⌊n/2 + 1⌋ − k``
``min-max``     Shejwalkar & Houmansadr 2021: ``μ − γ·σ`` with the largest ``γ`` whose
                farthest distance to a reference update stays within the references' own
                largest pairwise distance
``min-sum``     same, bounding the sum of squared distances instead of the maximum
``targeted``    makes command-and-control flows pass as benign: trains on its own rows plus the
                C&C flows of its own malware (``cc_pool``), all C&C relabelled benign, and boosts
                the update by ``n / k`` (explicit boosting, Bhagoji et al. 2019). The other
                classes keep their labels, so overall metrics barely move
==============  ================================================================================

``μ`` and ``σ`` are the mean and standard deviation of *reference* updates the attacker can
compute without seeing any honest site's data: the attacker controls the ``k`` malicious sites,
so it has their data and computes each one's honest update itself (no collusion channel
needed). With a single malicious site, updates on bootstrap resamples of its own data
(``n_references``) stand in. An omniscient attacker who saw the honest sites' updates would be
stronger.

Malicious sites also lie about their size: they claim ``claimed_examples`` training examples
(default 20,000, a large but plausible site: the largest honest site trains on 13,850 flows).
FedAvg weights sites by that unauthenticated claim; the robust rules ignore it.

Every attack is deterministic given the seed, the round and the site.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from iotsentry.federated.names import ATTACKS

__all__ = ["ATTACKS", "AttackConfig", "Peer", "malicious_weights"]


Weights = list[np.ndarray]
#: ``train(global_weights, X, y, seed) -> new weights`` (honest local training on given rows).
Trainer = Callable[[Weights, npt.NDArray[np.float32], npt.NDArray[np.str_], int], Weights]


@dataclass(frozen=True)
class AttackConfig:
    """What the malicious sites do and know."""

    attack: str
    n_sites: int
    n_malicious: int
    seed: int = 0
    sign_scale: float = 4.0
    gaussian_sigma: float = 1.0
    n_references: int = 4
    boost: float | None = None
    claimed_examples: int | None = 20_000
    cc_pool: tuple[npt.NDArray[np.float32], npt.NDArray[np.str_]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; choose from {', '.join(ATTACKS)}")
        if not 0 <= self.n_malicious <= self.n_sites:
            raise ValueError(f"n_malicious must be in [0, n_sites], got {self.n_malicious}")

    @property
    def boost_factor(self) -> float:
        return float(self.boost) if self.boost is not None else self.n_sites / max(self.n_malicious, 1)


def _flip(y: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.where(y == "benign", "malicious", "benign").astype(str)


def _vec(w: Weights) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in w])


def _unvec(v: npt.NDArray[np.float64], like: Weights) -> Weights:
    out: Weights = []
    i = 0
    for a in like:
        out.append(v[i : i + a.size].reshape(a.shape).astype(a.dtype))
        i += a.size
    return out


Peer = tuple[npt.NDArray[np.float32], npt.NDArray[np.str_], int]
"""Another malicious site's train rows, labels and training seed."""


def _references(
    train: Trainer,
    w: Weights,
    own: Peer,
    peers: Sequence[Peer],
    cfg: AttackConfig,
    seed: int,
) -> npt.NDArray[np.float64]:
    """Honest updates of every malicious site (or bootstrap resamples of one), as delta rows."""
    base = _vec(w)
    rows = [_vec(train(w, X, y, s)) - base for X, y, s in [own, *peers] if len(y)]
    if len(rows) < 2:
        X, y, s = own
        rng = np.random.default_rng(seed)
        for b in range(cfg.n_references):
            idx = rng.integers(0, len(y), size=len(y))
            rows.append(_vec(train(w, X[idx], y[idx], s + 1 + b)) - base)
    return np.stack(rows)


def _alie_z(n: int, k: int) -> float:
    s = n // 2 + 1 - k
    p = (n - s) / n
    return float(NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6)))


def _min_max_gamma(
    refs: npt.NDArray[np.float64], mu: npt.NDArray[np.float64], p: npt.NDArray[np.float64], use_sum: bool
) -> float:
    d = np.sqrt(((refs[:, None, :] - refs[None, :, :]) ** 2).sum(-1))
    bound = float((d**2).sum(1).max()) if use_sum else float(d.max())

    def ok(g: float) -> bool:
        m = mu + g * p
        dist = np.sqrt(((refs - m) ** 2).sum(1))
        return float((dist**2).sum()) <= bound if use_sum else float(dist.max()) <= bound

    lo, hi = 0.0, 50.0
    if ok(hi):
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def malicious_weights(
    cfg: AttackConfig,
    w: Sequence[np.ndarray],
    X: npt.NDArray[np.float32],
    y: npt.NDArray[np.str_],
    detailed: npt.NDArray[np.str_],
    train: Trainer,
    site_seed: int,
    server_round: int,
    peers: Sequence[Peer] = (),
) -> Weights:
    """The weights a malicious site replies with (see the module docstring).

    Parameters
    ----------
    cfg
        The attack and what the attacker knows.
    w
        The global weights received this round.
    X, y, detailed
        The site's own train rows, labels and IoT-23 detailed labels.
    train
        Honest local training (same optimiser and epochs as the honest sites).
    site_seed, server_round
        Make the attack deterministic per site and round.
    peers
        The other malicious sites' train rows, labels and seeds (for ``alie``, ``min-max``,
        ``min-sum``).
    """
    glob = [np.asarray(a) for a in w]
    base = _vec(glob)
    seed = int(site_seed) * 1000 + int(server_round)
    a = cfg.attack
    if a == "none":
        return train(glob, X, y, site_seed)
    if a == "label-flip":
        return train(glob, X, _flip(y), site_seed)
    if a == "sign-flip":
        delta = _vec(train(glob, X, y, site_seed)) - base
        return _unvec(base - cfg.sign_scale * delta, glob)
    if a == "scaling":
        delta = _vec(train(glob, X, _flip(y), site_seed)) - base
        return _unvec(base + cfg.boost_factor * delta, glob)
    if a == "gaussian":
        rng = np.random.default_rng(seed)
        return _unvec(base + rng.normal(0.0, cfg.gaussian_sigma, size=base.shape), glob)
    if a == "targeted":
        from iotsentry.federated.sites import is_cc

        Xp, yp = X, y.copy()
        yp[is_cc(detailed)] = "benign"
        if cfg.cc_pool is not None and len(cfg.cc_pool[1]):
            Xp = np.concatenate([X, cfg.cc_pool[0]])
            yp = np.concatenate([yp, np.full(len(cfg.cc_pool[1]), "benign")])
        delta = _vec(train(glob, Xp, yp, site_seed)) - base
        return _unvec(base + cfg.boost_factor * delta, glob)
    refs = _references(train, glob, (X, y, site_seed), peers, cfg, seed)
    mu, sd = refs.mean(0), refs.std(0)
    if a == "alie":
        return _unvec(base + mu - _alie_z(cfg.n_sites, cfg.n_malicious) * sd, glob)
    if a in ("min-max", "min-sum"):
        gamma = _min_max_gamma(refs, mu, -sd, use_sum=a == "min-sum")
        return _unvec(base + mu - gamma * sd, glob)
    raise AssertionError(a)  # unreachable: checked in AttackConfig
