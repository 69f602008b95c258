"""Robust federated aggregation: hand-computed vectors, properties, validation and robustness.

Every expected number below is derived by hand in the comments next to it, never by calling the
function under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from iotsentry.federated.robust import (
    FlameResult,
    KrumResult,
    bulyan,
    coordinate_median,
    fedavg,
    flame_filter,
    flatten,
    fltrust,
    fltrust_trust_scores,
    krum,
    multi_krum,
    norm_clip,
    pairwise_sq_distances,
    trimmed_mean,
    unflatten,
    validation_filter,
)

Update = list[npt.NDArray[Any]]


def two_layer(x: float, y: float) -> Update:
    """An update with two layers: a (1,) 'weight' holding x and a (1, 1) 'bias' holding y."""
    return [np.array([x], dtype=np.float64), np.array([[y]], dtype=np.float64)]


def scalar(v: float) -> Update:
    return [np.array([v], dtype=np.float64)]


def vec(update: Update) -> list[float]:
    return [float(a) for a in flatten(update)]


# Five sites, flattened as (x, y); s4 is the outlier.
#   s0 = (1, 0)   s1 = (2, 1)   s2 = (3, 1)   s3 = (2, -2)   s4 = (100, 50)
FIVE = [two_layer(1, 0), two_layer(2, 1), two_layer(3, 1), two_layer(2, -2), two_layer(100, 50)]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def test_flatten_unflatten_round_trip() -> None:
    like = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7.0, 8.0], dtype=np.float32)]
    flat = flatten(like)
    assert flat.dtype == np.float64
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    back = unflatten(flat, like)
    assert [b.shape for b in back] == [(2, 3), (2,)]
    assert all(b.dtype == np.float32 for b in back)
    assert all(np.array_equal(a, b) for a, b in zip(like, back, strict=True))
    with pytest.raises(ValueError, match="hold 8"):
        unflatten(np.zeros(7), like)


def test_pairwise_sq_distances_hand() -> None:
    # rows a=(0,0), b=(3,4), c=(1,1): |a-b|^2 = 9+16 = 25, |a-c|^2 = 2, |b-c|^2 = 4+9 = 13
    d = pairwise_sq_distances(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]))
    assert d.tolist() == [[0, 25, 2], [25, 0, 13], [2, 13, 0]]


# --------------------------------------------------------------------------------------------
# hand-computed aggregates on FIVE
# --------------------------------------------------------------------------------------------


def test_fedavg_hand() -> None:
    # x: (1+2+3+2+100)/5 = 108/5 = 21.6 ; y: (0+1+1-2+50)/5 = 50/5 = 10
    assert vec(fedavg(FIVE)) == pytest.approx([21.6, 10.0])
    # weights (2,1,1,0,0): x = (2*1+2+3)/4 = 7/4 ; y = (0+1+1)/4 = 1/2
    assert vec(fedavg(FIVE, weights=[2, 1, 1, 0, 0])) == pytest.approx([1.75, 0.5])


def test_coordinate_median_hand() -> None:
    # x sorted: 1,2,2,3,100 -> 2 ; y sorted: -2,0,1,1,50 -> 1
    assert vec(coordinate_median(FIVE)) == [2.0, 1.0]
    # even n: x of s0..s3 sorted 1,2,2,3 -> (2+2)/2 = 2 ; y sorted -2,0,1,1 -> (0+1)/2 = 0.5
    assert vec(coordinate_median(FIVE[:4])) == [2.0, 0.5]


def test_trimmed_mean_hand() -> None:
    # beta = 0.2, n = 5 -> k = floor(1.0) = 1 dropped at each end, per coordinate
    # x: drop 1 and 100 -> (2+2+3)/3 = 7/3 ; y: drop -2 and 50 -> (0+1+1)/3 = 2/3
    assert vec(trimmed_mean(FIVE, 0.2)) == pytest.approx([7 / 3, 2 / 3])
    # beta = 0 is the plain mean
    assert vec(trimmed_mean(FIVE, 0.0)) == pytest.approx([21.6, 10.0])
    # beta = 0.1, n = 5 -> k = floor(0.5) = 0: nothing trimmed
    assert vec(trimmed_mean(FIVE, 0.1)) == pytest.approx([21.6, 10.0])


# Krum on FIVE with f = 1: n = 5 > 2f + 2 = 4, each score sums the n - f - 2 = 2 nearest.
# Squared distances:
#   s0-s1: 1+1 = 2      s0-s2: 4+1 = 5     s0-s3: 1+4 = 5     s0-s4: 99²+50² = 9801+2500 = 12301
#   s1-s2: 1+0 = 1      s1-s3: 0+9 = 9     s1-s4: 98²+49² = 9604+2401 = 12005
#   s2-s3: 1+9 = 10     s2-s4: 97²+49² = 9409+2401 = 11810
#   s3-s4: 98²+52² = 9604+2704 = 12308
# Scores: s0 = 2+5 = 7, s1 = 1+2 = 3, s2 = 1+5 = 6, s3 = 5+9 = 14, s4 = 11810+12005 = 23815
# Ranking: s1 (3) < s2 (6) < s0 (7) < s3 (14) < s4 (23815)
KRUM_SCORES = [7.0, 3.0, 6.0, 14.0, 23815.0]


def test_krum_hand() -> None:
    result = krum(FIVE, f=1)
    assert isinstance(result, KrumResult)
    assert result.selected == (1,)
    assert result.scores.tolist() == KRUM_SCORES
    assert vec(result.aggregate) == [2.0, 1.0]  # s1 unchanged


def test_multi_krum_hand() -> None:
    # m = 3 best: s1, s2, s0 -> x = (2+3+1)/3 = 2 ; y = (1+1+0)/3 = 1/3 * 2 = 2/3
    aggregate, selected, scores = multi_krum(FIVE, f=1, m=3)
    assert selected == (1, 2, 0)
    assert scores.tolist() == KRUM_SCORES
    assert vec(aggregate) == pytest.approx([2.0, 2 / 3])


# Bulyan, n = 7, f = 1 (n >= 4f + 3 = 7): theta = n - 2f = 5 picked by repeated Krum,
# then beta = theta - 2f = 3 values closest to the median averaged.
# Sites (scalars): s0=0, s1=1, s2=3, s3=4, s4=6, s5=10, s6=100 (the attacker).
# Round 1, 7 candidates, k = 7-1-2 = 4 nearest squared distances:
#   s0: 1,9,16,36 -> 62     s1: 1,4,9,25 -> 39     s2: 1,4,9,9 -> 23     s3: 1,4,9,16 -> 30
#   s4: 4,9,16,25 -> 54     s5: 16,36,49,81 -> 182  s6: 8100+8836+9216+9409 = 35561   -> s2 (3)
# Round 2, {0,1,4,6,10,100}, k = 3:
#   s0: 1,16,36 -> 53   s1: 1,9,25 -> 35   s3: 4,9,16 -> 29   s4: 4,16,25 -> 45
#   s5: 16,36,81 -> 133   s6: 8100+8836+9216 = 26152                                  -> s3 (4)
# Round 3, {0,1,6,10,100}, k = 2:
#   s0: 1,36 -> 37   s1: 1,25 -> 26   s4: 16,25 -> 41   s5: 16,81 -> 97   s6: 16936     -> s1 (1)
# Round 4, {0,6,10,100}, k = max(4-3, 1) = 1 (nearest neighbour only):
#   s0: 36   s4: 16   s5: 16   s6: 8100. Tie s4/s5 broken by the sorted distance lists:
#   s4 (16, 36, 8836) < s5 (16, 100, 8100)                                                -> s4 (6)
# Round 5, {0,10,100}, k = 1: s0: 100, s5: 100, s6: 8100. Tie broken by sorted distances:
#   s0 (100, 10000) vs s5 (100, 8100) -> s5 wins                                          -> s5 (10)
# Selected values 3,4,1,6,10 -> sorted 1,3,4,6,10, median 4; |v-4| = 3,1,0,2,6:
# the 3 closest are 4,3,6 -> (4+3+6)/3 = 13/3.
BULYAN_SITES = [0.0, 1.0, 3.0, 4.0, 6.0, 10.0, 100.0]


def test_bulyan_hand() -> None:
    result = bulyan([scalar(v) for v in BULYAN_SITES], f=1)
    assert result.selected == (2, 3, 1, 4, 5)
    assert 6 not in result.selected
    assert vec(result.aggregate) == pytest.approx([13 / 3])
    # first-round Krum scores, from round 1 above
    assert result.scores.tolist() == [62, 39, 23, 30, 54, 182, 35561]


def test_bulyan_two_layers_constant_second_layer() -> None:
    # Same sites with a second layer equal to 5 everywhere: distances are unchanged, so the
    # first layer gives 13/3 again and the second layer's closest-to-median values are all 5.
    sites = [[np.array([v]), np.array([5.0, 5.0])] for v in BULYAN_SITES]
    result = bulyan(sites, f=1)
    assert result.aggregate[0].tolist() == pytest.approx([13 / 3])
    assert result.aggregate[1].tolist() == [5.0, 5.0]


def test_norm_clip_hand() -> None:
    # deltas (3,4) |5|, (0.6,0.8) |1|, (0,-2) |2|; max_norm = 2:
    #   (3,4) * 2/5 = (1.2, 1.6); (0.6,0.8) unchanged; (0,-2) unchanged (norm == bound)
    #   mean = ((1.2+0.6+0)/3, (1.6+0.8-2)/3) = (0.6, 0.4/3 = 2/15)
    deltas = [(3.0, 4.0), (0.6, 0.8), (0.0, -2.0)]
    assert vec(norm_clip([two_layer(*d) for d in deltas], 2.0)) == pytest.approx([0.6, 2 / 15])
    # the same deltas around a reference (1, 1): the result is reference + (0.6, 2/15)
    ref = two_layer(1.0, 1.0)
    full = [two_layer(1 + dx, 1 + dy) for dx, dy in deltas]
    assert vec(norm_clip(full, 2.0, reference=ref)) == pytest.approx([1.6, 1 + 2 / 15])
    # weights (1, 0, 1): ((1.2+0)/2, (1.6-2)/2) = (0.6, -0.2)
    assert vec(norm_clip([two_layer(*d) for d in deltas], 2.0, weights=[1, 0, 1])) == pytest.approx(
        [0.6, -0.2]
    )


# FLTrust with server update g0 = (0, 2), |g0| = 2:
#   u0 = (0, 4):   cos = 1   -> trust 1,   rescaled to |g0|: (0, 2)
#   u1 = (3, 4):   cos = 8/(5*2) = 0.8 -> trust 0.8, rescaled (3,4)*2/5 = (1.2, 1.6)
#   u2 = (0, -10): sign-flipped, cos = -1 -> trust 0
#   u3 = (5, 0):   orthogonal, cos = 0 -> trust 0
#   u4 = (0, 400): scaled (model replacement), cos = 1 -> trust 1, rescaled to (0, 2)
# aggregate = (1*(0,2) + 0.8*(1.2,1.6) + 1*(0,2)) / (1+0.8+1) = (0.96, 5.28)/2.8 = (12/35, 66/35)
FLTRUST_UPDATES = [two_layer(0, 4), two_layer(3, 4), two_layer(0, -10), two_layer(5, 0), two_layer(0, 400)]
SERVER = two_layer(0, 2)


def test_fltrust_hand() -> None:
    trust = fltrust_trust_scores(FLTRUST_UPDATES, SERVER)
    assert trust.tolist() == pytest.approx([1.0, 0.8, 0.0, 0.0, 1.0])
    assert vec(fltrust(FLTRUST_UPDATES, SERVER)) == pytest.approx([12 / 35, 66 / 35])


def test_fltrust_all_zero_trust_returns_server_update() -> None:
    # every site opposes g0 -> all trust 0 -> the documented fallback: g0 itself
    flipped = [two_layer(0, -1), two_layer(-1, -3)]
    out = fltrust(flipped, SERVER)
    assert vec(out) == [0.0, 2.0]
    assert out[1].shape == (1, 1)
    # an all-zero update has an undefined cosine and gets trust 0
    assert fltrust_trust_scores([two_layer(0, 0), two_layer(0, 1)], SERVER).tolist() == [0.0, 1.0]


# FLAME around reference r = (0.5, -0.5), deltas d_i = u_i - r:
#   honest h0 = (1, 0), h1 = (2, 0), h2 = (0.8, 0.6), h3 = (0.8, -0.6)        (norms 1, 2, 1, 1)
#   malicious m0 = (-30, 0) (scaled sign flip), m1 = (-40, 30) (scaled, other direction; norm 50)
# Cosine distances 1 - cos: honest pairs at most 1 - (0.64 - 0.36) = 0.72 (h2-h3), h0-h2 = 0.2;
# malicious to honest at least 1 - (-32+18)/50 = 1.28 (m1-h2); m0-m1 = 1 - 0.8 = 0.2.
# min_cluster_size = 6//2 + 1 = 4: the malicious pair cannot be a cluster; the honest four are.
# Clip bound S = median(1, 2, 1, 1, 30, 50) = (1+2)/2 = 1.5: h1 -> (1.5, 0), the others unchanged.
# aggregate = r + ((1+1.5+0.8+0.8)/4, (0+0+0.6-0.6)/4) = r + (1.025, 0) = (1.525, -0.5)
FLAME_REF = two_layer(0.5, -0.5)
FLAME_DELTAS = [(1.0, 0.0), (2.0, 0.0), (0.8, 0.6), (0.8, -0.6), (-30.0, 0.0), (-40.0, 30.0)]
FLAME_UPDATES = [two_layer(0.5 + dx, -0.5 + dy) for dx, dy in FLAME_DELTAS]


def test_flame_rejects_scaled_malicious_updates() -> None:
    result = flame_filter(FLAME_UPDATES, FLAME_REF)
    assert isinstance(result, FlameResult)
    assert result.accepted == (0, 1, 2, 3)
    assert result.clip_norm == pytest.approx(1.5)
    assert vec(result.aggregate) == pytest.approx([1.525, -0.5])


def test_flame_clips_a_scaled_update_in_the_honest_direction() -> None:
    # A model-replacement update 100 * h0 has cosine distance 0 to h0, so clustering cannot
    # reject it; clipping bounds it. Deltas: h0..h3 as above plus m = 100*h0 = (100, 0); n = 5.
    # min_cluster_size = 5//2 + 1 = 3. h0, h1 and m lie at cosine distance 0 from one another:
    # a group of 3 at infinite density, which is the single cluster HDBSCAN selects; h2 and h3
    # (0.2 away) leave it earlier and are labelled noise. Accepted: sites 0, 1, 4.
    # S = median(1, 2, 1, 1, 100) = 1; clipped accepted deltas: (1,0), (1,0), (1,0)
    # mean = (1, 0) -> aggregate (0.5 + 1, -0.5 + 0) = (1.5, -0.5)
    # (plain FedAvg of the accepted sites would give x = 0.5 + 103/3 = 34.83)
    deltas = [*FLAME_DELTAS[:4], (100.0, 0.0)]
    ups = [two_layer(0.5 + dx, -0.5 + dy) for dx, dy in deltas]
    result = flame_filter(ups, FLAME_REF)
    assert result.accepted == (0, 1, 4)
    assert result.clip_norm == pytest.approx(1.0)
    assert vec(result.aggregate) == pytest.approx([1.5, -0.5])


def test_flame_noise_is_seeded() -> None:
    a = flame_filter(FLAME_UPDATES, FLAME_REF, noise_sigma=0.1, rng=7)
    b = flame_filter(FLAME_UPDATES, FLAME_REF, noise_sigma=0.1, rng=np.random.default_rng(7))
    c = flame_filter(FLAME_UPDATES, FLAME_REF, noise_sigma=0.1, rng=8)
    assert vec(a.aggregate) == vec(b.aggregate)
    assert vec(a.aggregate) != vec(c.aggregate)
    assert vec(a.aggregate) != pytest.approx([1.525, -0.5], abs=1e-9)
    # relative noise: sigma = 0.1 * S = 0.15, i.e. the same draws scaled by 1.5
    rel = flame_filter(FLAME_UPDATES, FLAME_REF, noise_sigma=0.1, rng=7, noise_relative=True)
    noise_abs = np.array(vec(a.aggregate)) - [1.525, -0.5]
    noise_rel = np.array(vec(rel.aggregate)) - [1.525, -0.5]
    assert noise_rel == pytest.approx(1.5 * noise_abs)


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------


def random_updates(n: int, seed: int) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [
        [
            rng.normal(1.0, 0.3, size=(2, 3)).astype(np.float32),
            rng.normal(-1.0, 0.3, size=4).astype(np.float32),
        ]
        for _ in range(n)
    ]


AGGREGATORS: dict[str, Callable[[list[Update]], Update]] = {
    "fedavg": fedavg,
    "fedavg_weighted": lambda u: fedavg(u, weights=list(range(1, len(u) + 1))),
    "median": coordinate_median,
    "trimmed_mean": lambda u: trimmed_mean(u, 0.2),
    "krum": lambda u: krum(u, 2).aggregate,
    "multi_krum": lambda u: multi_krum(u, 2, 4).aggregate,
    "bulyan": lambda u: bulyan(u, 2).aggregate,
    "norm_clip": lambda u: norm_clip(u, 1.5),
    "norm_clip_ref": lambda u: norm_clip(u, 0.5, reference=u[0]),
    "fltrust": lambda u: fltrust(u, u[0]),
    "flame": lambda u: flame_filter(u, [np.zeros((2, 3)), np.zeros(4)]).aggregate,
}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_shapes_and_dtypes_preserved(name: str) -> None:
    ups = random_updates(11, seed=1)
    out = AGGREGATORS[name](ups)
    assert [a.shape for a in out] == [(2, 3), (4,)]
    assert [a.dtype for a in out] == [np.float32, np.float32]
    assert all(np.all(np.isfinite(a)) for a in out)


def test_integer_layers_come_back_as_float64() -> None:
    ups = [[np.array([1, 2])], [np.array([2, 3])], [np.array([4, 4])]]
    out = fedavg(ups)
    assert out[0].dtype == np.float64
    assert out[0].tolist() == pytest.approx([7 / 3, 3.0])


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_permutation_invariance(name: str) -> None:
    ups = random_updates(11, seed=2)
    perm = [3, 10, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    permuted = [ups[i] for i in perm]
    if name in ("fedavg_weighted", "norm_clip_ref", "fltrust"):
        # weights / reference / server update travel with the site, so fix them to site 0
        if name == "fedavg_weighted":
            w = list(range(1, 12))
            a, b = fedavg(ups, w), fedavg(permuted, [w[i] for i in perm])
        elif name == "norm_clip_ref":
            a, b = norm_clip(ups, 0.5, reference=ups[0]), norm_clip(permuted, 0.5, reference=ups[0])
        else:
            a, b = fltrust(ups, ups[0]), fltrust(permuted, ups[0])
    else:
        a, b = AGGREGATORS[name](ups), AGGREGATORS[name](permuted)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_selection_follows_the_permutation() -> None:
    ups = random_updates(11, seed=3)
    perm = [3, 10, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    permuted = [ups[i] for i in perm]
    for fn in (lambda u: krum(u, 2), lambda u: multi_krum(u, 2, 5), lambda u: bulyan(u, 2)):
        original, shuffled = fn(ups), fn(permuted)
        assert [perm[i] for i in shuffled.selected] == list(original.selected)


def test_krum_ties_do_not_depend_on_site_order() -> None:
    # Unit square plus an outlier o = (0.5, 50), f = 1, k = 2 nearest:
    #   every corner has two neighbours at squared distance 1 -> all four corners score 2.
    #   Sorted distance lists: (0,0) and (1,0): (1, 1, 2, 0.25+2500 = 2500.25);
    #                          (0,1) and (1,1): (1, 1, 2, 0.25+2401 = 2401.25) -> these two lead,
    #   and still tie; the lexicographic order of the vectors picks (0,1) < (1,1).
    pts = [(1, 1), (0, 0), (0.5, 50), (1, 0), (0, 1)]
    ups = [two_layer(*p) for p in pts]
    for perm in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        assert vec(krum([ups[i] for i in perm], 1).aggregate) == [0.0, 1.0]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fedavg([]), "no updates"),
        (lambda: coordinate_median([]), "no updates"),
        (lambda: krum([], 0), "no updates"),
        (lambda: trimmed_mean(FIVE, 0.5), "beta"),
        (lambda: trimmed_mean(FIVE, -0.1), "beta"),
        (lambda: krum(FIVE[:4], 1), r"n > 2f \+ 2"),
        (lambda: krum(FIVE, -1), "f"),
        (lambda: multi_krum(FIVE, 1, 0), "m must"),
        (lambda: multi_krum(FIVE, 1, 6), "m must"),
        (lambda: bulyan([scalar(v) for v in BULYAN_SITES[:6]], 1), r"n >= 4f \+ 3"),
        (lambda: fedavg([two_layer(1, 2), [np.array([1.0])]]), "site 1 sent 1 layers"),
        (lambda: fedavg([two_layer(1, 2), [np.array([1.0]), np.array([2.0])]]), "site 1 layer 1 has shape"),
        (lambda: fedavg([two_layer(1, 2), two_layer(np.nan, 2)]), r"non-finite.*\[1\]"),
        (lambda: fedavg(FIVE, weights=[1, 2]), "expected 5 weights"),
        (lambda: fedavg(FIVE, weights=[1, 1, 1, 1, -1]), ">= 0"),
        (lambda: fedavg(FIVE, weights=[0, 0, 0, 0, 0]), "sum to zero"),
        (lambda: norm_clip(FIVE, 0.0), "max_norm"),
        (lambda: norm_clip(FIVE, 1.0, reference=[np.zeros(1)]), "reference layer shapes"),
        (lambda: fltrust(FIVE, [np.zeros(3), np.zeros((1, 1))]), "server_update layer shapes"),
        (lambda: flame_filter(FIVE, two_layer(0, 0), noise_sigma=-1.0), "noise_sigma"),
    ],
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------
# robustness: 2 of 10 sites send huge values
# --------------------------------------------------------------------------------------------


def poisoned(n: int, seed: int, attack: tuple[float, float]) -> tuple[list[Update], np.ndarray, np.ndarray]:
    """n sites, the last two replaced by huge values; returns updates and the honest min/max."""
    ups = random_updates(n, seed)
    honest = np.stack([flatten(u) for u in ups[:-2]])
    for k, value in enumerate(attack):
        ups[n - 2 + k] = [np.full((2, 3), value, np.float32), np.full(4, value, np.float32)]
    return ups, honest.min(axis=0), honest.max(axis=0)


@pytest.mark.parametrize("attack", [(1e6, 1e6), (1e6, -3e5), (3e30, 3e30)])
def test_robust_rules_stay_in_the_honest_range(attack: tuple[float, float]) -> None:
    ups, lo, hi = poisoned(10, seed=4, attack=attack)
    robust = {
        "median": coordinate_median(ups),
        "trimmed_mean": trimmed_mean(ups, 0.2),
        "krum": krum(ups, 2).aggregate,
        "multi_krum": multi_krum(ups, 2, 5).aggregate,
        "bulyan_f1": bulyan(ups, 1).aggregate,
    }
    for name, out in robust.items():
        flat = flatten(out)
        assert np.all(flat >= lo - 1e-6) and np.all(flat <= hi + 1e-6), name
    assert not set(krum(ups, 2).selected) & {8, 9}
    assert not set(multi_krum(ups, 2, 5).selected) & {8, 9}
    # FedAvg is dragged far outside the honest range
    assert np.all(flatten(fedavg(ups)) > hi + 1e4)


@pytest.mark.parametrize("attack", [(1e6, 2e6), (1e6, 1e6)])
def test_bulyan_with_f_matching_the_attackers(attack: tuple[float, float]) -> None:
    # n = 11 >= 4*2 + 3: two attackers within the declared f = 2.
    ups, lo, hi = poisoned(11, seed=5, attack=attack)
    result = bulyan(ups, 2)
    if attack[0] != attack[1]:
        assert not set(result.selected) & {9, 10}
    # Identical colluding attackers are at distance 0 from each other, so in the last selection
    # rounds (nearest-neighbour scores) they are selected; the median-centred trimmed mean
    # (beta = 7 - 4 = 3 of theta = 7) still removes them.
    flat = flatten(result.aggregate)
    assert np.all(flat >= lo) and np.all(flat <= hi)


def test_norm_based_rules_bound_the_attack() -> None:
    ups, _, _ = poisoned(10, seed=6, attack=(1e6, 1e6))
    # norm clipping: the average of vectors of norm <= 2 has norm <= 2
    assert np.linalg.norm(flatten(norm_clip(ups, 2.0))) <= 2.0 + 1e-6
    # FLTrust with an honest server update: the result's norm is at most |g0|
    server = random_updates(1, seed=60)[0]
    assert np.linalg.norm(flatten(fltrust(ups, server))) <= np.linalg.norm(flatten(server)) * (1 + 1e-6)
    # FLAME: the two identical huge updates are a minority and are rejected
    result = flame_filter(ups, [np.zeros((2, 3)), np.zeros(4)])
    assert not set(result.accepted) & {8, 9}
    assert len(result.accepted) >= 6


# -- validation_filter ------------------------------------------------------------------------


def test_validation_filter_hand_computed() -> None:
    # group 0: median 1.0, |dev| = 0,0,0,.1,.1,2 -> MAD 0.05, spread 0.07413, limit 1.2224
    # group 1: median 2.0, MAD 0 -> floor 0.05 * 2.0 = 0.1, limit 2.0 + 0.3 = 2.3
    losses = [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.1, 2.29], [0.9, 2.5], [3.0, 2.0]]
    assert validation_filter(losses) == [0, 1, 2, 3]  # 4 is worse on group 1, 5 on group 0
    assert validation_filter(losses, kappa=10) == [0, 1, 2, 3, 4]  # 2.5 <= 2.0 + 10 * 0.1
    # better than the others is never a reason to reject
    assert validation_filter([[1.0], [1.0], [1.0], [0.0]]) == [0, 1, 2, 3]


def test_validation_filter_catches_one_sacrificed_class() -> None:
    rng = np.random.default_rng(0)
    honest = 0.3 + 0.02 * rng.normal(size=(8, 3))
    targeted = np.array([[0.28, 0.31, 3.0]] * 3)  # overall flat, one class given up
    kept = validation_filter(np.vstack([honest, targeted]))
    assert kept == list(range(8))


@pytest.mark.parametrize("bad", [np.zeros((0, 2)), np.zeros(3), [[1.0, np.nan]]])
def test_validation_filter_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ValueError, match="validation_filter"):
        validation_filter(bad)  # type: ignore[arg-type]


def test_validation_filter_rejects_bad_kappa() -> None:
    with pytest.raises(ValueError, match="kappa"):
        validation_filter([[1.0]], kappa=0)
