"""Byzantine-robust aggregation of federated model updates, as pure functions on numpy arrays.

A *model update* is a list of numpy arrays, one per layer; one federated round hands an aggregator
``updates: list[list[np.ndarray]]`` (one update per site, all with the same layer shapes) and, for
the averaging rules, optional per-site ``weights`` (e.g. numbers of training examples).

Every aggregator here is a pure function: no state, no I/O, no randomness except the explicitly
seeded noise of :func:`flame_filter`. Each returns a list of arrays with the layer shapes of the
inputs; the arithmetic is done in float64 and cast back to the layer dtype of the first update
(integer layers come back as float64, since an average of integers is not an integer).

Inputs are validated up front (non-empty, same layer count and shapes at every site, finite
values, parameters in range) and a :class:`ValueError` names what is wrong. Non-finite updates are
rejected rather than silently dropped: a strategy that wants to tolerate them should drop those
sites before calling an aggregator.

Ties (equal Krum scores) are broken without looking at the site order, so that results are
invariant to permuting the sites: first by the sorted list of distances to the other candidates
(the site whose next-nearest neighbours are closer wins), then by the lexicographic order of the
flattened update, and only for identical updates by the lower index.

References
----------
.. [1] McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
   Data", AISTATS 2017 (FedAvg).
.. [2] Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
   ICML 2018 (coordinate-wise median and trimmed mean).
.. [3] Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
   Descent", NeurIPS 2017 (Krum, Multi-Krum).
.. [4] El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
   ICML 2018 (Bulyan).
.. [5] Sun et al., "Can You Really Backdoor Federated Learning?", 2019 (norm clipping).
.. [6] Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
   NDSS 2021.
.. [7] Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from sklearn.cluster import HDBSCAN

__all__ = [
    "FlameResult",
    "KrumResult",
    "bulyan",
    "coordinate_median",
    "fedavg",
    "flame_filter",
    "flatten",
    "fltrust",
    "fltrust_trust_scores",
    "krum",
    "multi_krum",
    "norm_clip",
    "pairwise_sq_distances",
    "trimmed_mean",
    "unflatten",
    "validation_filter",
]

Array = npt.NDArray[Any]
"""One layer of a model update (any shape, floating dtype preferred)."""
Update = list[Array]
"""A model update: one array per layer."""

# Added to beta * n before flooring, so that e.g. 0.29 * 100 = 28.999999999999996 trims 29.
_TRIM_EPS = 1e-9
# Largest number of float64 values in one temporary block of pairwise differences.
_BLOCK_VALUES = 1 << 22


class KrumResult(NamedTuple):
    """Result of :func:`krum` and :func:`multi_krum`.

    Attributes
    ----------
    aggregate : list of numpy.ndarray
        The aggregated update (the selected update for Krum, the mean of the selected ones for
        Multi-Krum), with the layer shapes and dtypes of the inputs.
    selected : tuple of int
        Indices (into ``updates``) of the selected sites, best score first.
    scores : numpy.ndarray
        float64[n] Krum score of every site (lower is more central).
    """

    aggregate: Update
    selected: tuple[int, ...]
    scores: npt.NDArray[np.float64]


class FlameResult(NamedTuple):
    """Result of :func:`flame_filter`.

    Attributes
    ----------
    aggregate : list of numpy.ndarray
        The new global model (``reference`` plus the clipped, averaged, noised accepted deltas).
    accepted : tuple of int
        Indices (into ``updates``) of the sites kept by the clustering, ascending.
    clip_norm : float
        The clipping bound: the median L2 norm of all sites' deltas to ``reference``.
    """

    aggregate: Update
    accepted: tuple[int, ...]
    clip_norm: float


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def flatten(update: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
    """Concatenate the layers of one update into a float64 vector.

    Parameters
    ----------
    update : sequence of array_like
        One array per layer.

    Returns
    -------
    numpy.ndarray
        float64[sum of layer sizes], layers in order, each raveled in C order.
    """
    if len(update) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(layer, dtype=np.float64).ravel() for layer in update])


def _out_dtype(layer: Array) -> np.dtype[Any]:
    return layer.dtype if np.issubdtype(layer.dtype, np.floating) else np.dtype(np.float64)


def unflatten(vector: npt.ArrayLike, like: Sequence[Array]) -> Update:
    """Split a flat vector back into layers shaped like ``like``.

    Parameters
    ----------
    vector : array_like
        1-D vector whose length is the total size of ``like``.
    like : sequence of numpy.ndarray
        Template layers; their shapes and (floating) dtypes are used. Integer template layers
        give float64 layers.

    Returns
    -------
    list of numpy.ndarray
        New arrays (never views of ``vector``).

    Raises
    ------
    ValueError
        If ``vector`` is not 1-D or its length does not match the template.
    """
    vec = np.asarray(vector)
    if vec.ndim != 1:
        raise ValueError(f"unflatten expects a 1-D vector, got shape {vec.shape}")
    layers = [np.asarray(layer) for layer in like]
    total = sum(layer.size for layer in layers)
    if vec.size != total:
        raise ValueError(f"vector has {vec.size} values but the template layers hold {total}")
    out: Update = []
    start = 0
    for layer in layers:
        stop = start + layer.size
        out.append(vec[start:stop].reshape(layer.shape).astype(_out_dtype(layer), copy=True))
        start = stop
    return out


def pairwise_sq_distances(vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Squared Euclidean distances between all pairs of row vectors.

    Computed from explicit differences (not the Gram-matrix shortcut), so the result is exact up
    to float64 rounding, exactly symmetric, zero on the diagonal and never negative.

    Parameters
    ----------
    vectors : array_like
        (n, d) matrix, one row per site.

    Returns
    -------
    numpy.ndarray
        float64[n, n] matrix ``D`` with ``D[i, j] = ||x_i - x_j||^2``.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"pairwise_sq_distances expects an (n, d) matrix, got shape {x.shape}")
    n = x.shape[0]
    dist = np.zeros((n, n), dtype=np.float64)
    block = max(1, _BLOCK_VALUES // max(x.shape[1], 1))  # bounds the temporary to ~32 MB
    with np.errstate(over="ignore"):  # huge updates give inf distances, which rank last anyway
        for i in range(n - 1):
            for start in range(i + 1, n, block):
                stop = min(n, start + block)
                row = np.sum((x[start:stop] - x[i]) ** 2, axis=1)
                dist[i, start:stop] = row
                dist[start:stop, i] = row
    return dist


def _safe_norm(vec: npt.NDArray[np.float64]) -> float:
    """L2 norm that does not overflow for huge (but finite) entries."""
    scale = float(np.max(np.abs(vec))) if vec.size else 0.0
    if scale == 0.0:
        return 0.0
    return scale * float(np.linalg.norm(vec / scale))


def _stack(updates: Sequence[Sequence[npt.ArrayLike]], name: str) -> tuple[npt.NDArray[np.float64], Update]:
    """Validate a round's updates; return the (n, d) float64 matrix and the template layers."""
    if len(updates) == 0:
        raise ValueError(f"{name}: no updates to aggregate (empty list of sites)")
    like = [np.asarray(layer) for layer in updates[0]]
    if len(like) == 0:
        raise ValueError(f"{name}: site 0 sent an update with no layers")
    shapes = [layer.shape for layer in like]
    for s, update in enumerate(updates):
        if len(update) != len(like):
            raise ValueError(f"{name}: site {s} sent {len(update)} layers, site 0 sent {len(like)}")
        for k, layer in enumerate(update):
            shape = np.shape(layer)
            if shape != shapes[k]:
                raise ValueError(f"{name}: site {s} layer {k} has shape {shape}, site 0 has {shapes[k]}")
    matrix = np.stack([flatten(update) for update in updates])
    if not np.all(np.isfinite(matrix)):
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(matrix))[0]})
        raise ValueError(f"{name}: non-finite values (NaN or inf) in the updates of sites {bad}")
    return matrix, like


def _check_f(f: int, name: str) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"{name}: f (number of Byzantine sites) must be an integer >= 0, got {f!r}")


def _check_weights(weights: Sequence[float] | None, n: int, name: str) -> npt.NDArray[np.float64] | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name}: expected {n} weights (one per site), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name}: weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"{name}: weights sum to zero; at least one site must have weight > 0")
    return w


def _mean(
    rows: npt.NDArray[np.float64], weights: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.float64]:
    with np.errstate(over="ignore"):
        if weights is None:
            return np.asarray(rows.mean(axis=0), dtype=np.float64)
        return np.asarray((weights[:, None] * rows).sum(axis=0) / weights.sum(), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# averaging and coordinate-wise rules
# --------------------------------------------------------------------------------------------


def fedavg(updates: Sequence[Sequence[npt.ArrayLike]], weights: Sequence[float] | None = None) -> Update:
    """Weighted average of the updates (FedAvg, McMahan et al. 2017).

    Not robust: a single site can move the result arbitrarily far. It is the baseline the robust
    rules are compared against.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    weights : sequence of float, optional
        Per-site weights (typically numbers of examples), finite and >= 0 with a positive sum.
        Equal weights when omitted.

    Returns
    -------
    list of numpy.ndarray
        ``sum_i w_i u_i / sum_i w_i``.
    """
    matrix, like = _stack(updates, "fedavg")
    w = _check_weights(weights, matrix.shape[0], "fedavg")
    return unflatten(_mean(matrix, w), like)


def coordinate_median(updates: Sequence[Sequence[npt.ArrayLike]]) -> Update:
    """Coordinate-wise median of the updates (Yin et al. 2018).

    With an even number of sites the median of each coordinate is the mean of the two middle
    values. Robust while fewer than half of the sites are Byzantine.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.

    Returns
    -------
    list of numpy.ndarray
        The per-coordinate median.
    """
    matrix, like = _stack(updates, "coordinate_median")
    return unflatten(np.median(matrix, axis=0), like)


def trimmed_mean(updates: Sequence[Sequence[npt.ArrayLike]], beta: float) -> Update:
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    For every coordinate, the ``k = floor(beta * n)`` largest and ``k`` smallest values are
    dropped and the remaining ``n - 2k`` values are averaged. ``beta = 0`` is the plain mean.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    beta : float
        Fraction trimmed at each end, ``0 <= beta < 0.5``.

    Returns
    -------
    list of numpy.ndarray
        The per-coordinate trimmed mean.

    Raises
    ------
    ValueError
        If ``beta`` is outside ``[0, 0.5)``.
    """
    if not (isinstance(beta, int | float | np.floating) and 0.0 <= float(beta) < 0.5):
        raise ValueError(f"trimmed_mean: beta must satisfy 0 <= beta < 0.5, got {beta!r}")
    matrix, like = _stack(updates, "trimmed_mean")
    n = matrix.shape[0]
    k = min(math.floor(float(beta) * n + _TRIM_EPS), (n - 1) // 2)
    kept = np.sort(matrix, axis=0)[k : n - k]
    return unflatten(_mean(kept), like)


# --------------------------------------------------------------------------------------------
# Krum family
# --------------------------------------------------------------------------------------------


def _krum_scores(dist: npt.NDArray[np.float64], f: int) -> npt.NDArray[np.float64]:
    """Krum score of each row of a (sub)matrix of squared distances.

    The score of site i is the sum of its ``n - f - 2`` smallest squared distances to the other
    sites. When ``n - f - 2 < 1`` (the last rounds of Bulyan's repeated Krum), the single nearest
    neighbour is used, as in Flower's implementation.
    """
    n = dist.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.float64)
    k = min(max(n - f - 2, 1), n - 1)
    others = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)[:, : n - 1]
    with np.errstate(over="ignore"):
        return np.asarray(others[:, :k].sum(axis=1), dtype=np.float64)


def _rank(
    scores: npt.NDArray[np.float64], dist: npt.NDArray[np.float64], vectors: npt.NDArray[np.float64]
) -> list[int]:
    """Order sites by Krum score, breaking ties independently of the site order.

    Ties are broken by the sorted list of distances to the other sites (lexicographically), then
    by the lexicographic order of the update vectors, then (identical updates) by index.
    """
    n = scores.shape[0]
    rows = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)[:, : n - 1]

    def compare(i: int, j: int) -> int:
        if scores[i] != scores[j]:
            return -1 if scores[i] < scores[j] else 1
        diff = np.nonzero(rows[i] != rows[j])[0]
        if diff.size:
            c = diff[0]
            return -1 if rows[i, c] < rows[j, c] else 1
        diff = np.nonzero(vectors[i] != vectors[j])[0]
        if diff.size:
            c = diff[0]
            return -1 if vectors[i, c] < vectors[j, c] else 1
        return -1 if i < j else (1 if i > j else 0)

    return sorted(range(n), key=functools.cmp_to_key(compare))


def krum(updates: Sequence[Sequence[npt.ArrayLike]], f: int) -> KrumResult:
    """Krum (Blanchard et al. 2017): the single most central update.

    Each site's score is the sum of squared Euclidean distances from its update to its
    ``n - f - 2`` nearest other updates; the update with the lowest score is returned unchanged.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    f : int
        Number of Byzantine sites tolerated; requires ``n > 2f + 2``.

    Returns
    -------
    KrumResult
        ``(aggregate, selected, scores)`` with ``selected`` holding the one chosen index.

    Raises
    ------
    ValueError
        If ``f`` is negative or ``n <= 2f + 2``.
    """
    return multi_krum(updates, f, 1)


def multi_krum(updates: Sequence[Sequence[npt.ArrayLike]], f: int, m: int) -> KrumResult:
    """Multi-Krum (Blanchard et al. 2017): the mean of the ``m`` lowest-scoring updates.

    Scores are those of :func:`krum`, computed once over all sites; the ``m`` sites with the
    lowest scores are averaged with equal weights. ``m = 1`` is Krum; ``m = n`` is FedAvg.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    f : int
        Number of Byzantine sites tolerated; requires ``n > 2f + 2``.
    m : int
        Number of updates averaged, ``1 <= m <= n`` (``m <= n - f`` for the robustness bound).

    Returns
    -------
    KrumResult
        ``(aggregate, selected, scores)``; ``selected`` lists the ``m`` indices, best first.

    Raises
    ------
    ValueError
        If ``f`` is negative, ``n <= 2f + 2`` or ``m`` is outside ``[1, n]``.
    """
    _check_f(f, "multi_krum")
    matrix, like = _stack(updates, "multi_krum")
    n = matrix.shape[0]
    if n <= 2 * f + 2:
        raise ValueError(f"krum: needs n > 2f + 2 sites, got n={n} with f={f} (at least {2 * f + 3})")
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= n:
        raise ValueError(f"multi_krum: m must be an integer with 1 <= m <= n={n}, got {m!r}")
    dist = pairwise_sq_distances(matrix)
    scores = _krum_scores(dist, f)
    selected = tuple(_rank(scores, dist, matrix)[: int(m)])
    return KrumResult(unflatten(_mean(matrix[list(selected)]), like), selected, scores)


def bulyan(updates: Sequence[Sequence[npt.ArrayLike]], f: int) -> KrumResult:
    """Bulyan (El Mhamdi et al. 2018): repeated Krum, then a median-centred trimmed mean.

    1. Selection: ``theta = n - 2f`` updates are chosen one at a time; each time Krum (with the
       same ``f``) is run on the remaining candidates and its winner moves to the selection.
       When fewer than ``f + 3`` candidates remain, a score uses the single nearest neighbour.
    2. Aggregation: for every coordinate, the ``beta = theta - 2f`` selected values closest to
       the coordinate-wise median of the selection are averaged. Ties in distance to the median
       at the boundary keep the smaller value.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    f : int
        Number of Byzantine sites tolerated; requires ``n >= 4f + 3``.

    Returns
    -------
    KrumResult
        ``(aggregate, selected, scores)``: ``selected`` lists the ``theta`` indices in the order
        the repeated Krum chose them; ``scores`` are the first-round Krum scores of all sites.

    Raises
    ------
    ValueError
        If ``f`` is negative or ``n < 4f + 3``.
    """
    _check_f(f, "bulyan")
    matrix, like = _stack(updates, "bulyan")
    n = matrix.shape[0]
    if n < 4 * f + 3:
        raise ValueError(f"bulyan: needs n >= 4f + 3 sites, got n={n} with f={f} (at least {4 * f + 3})")
    dist = pairwise_sq_distances(matrix)
    first_scores = _krum_scores(dist, f)
    theta = n - 2 * f
    remaining = list(range(n))
    selected: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]
        scores = _krum_scores(sub, f)
        best = remaining[_rank(scores, sub, matrix[remaining])[0]]
        selected.append(best)
        remaining.remove(best)
    beta = theta - 2 * f
    chosen = np.sort(matrix[selected], axis=0)  # sorting first makes the ties rule value-based
    median = np.median(chosen, axis=0)
    closest = np.argsort(np.abs(chosen - median), axis=0, kind="stable")[:beta]
    kept = np.take_along_axis(chosen, closest, axis=0)
    return KrumResult(unflatten(_mean(kept), like), tuple(selected), first_scores)


# --------------------------------------------------------------------------------------------
# norm-based rules
# --------------------------------------------------------------------------------------------


def norm_clip(
    updates: Sequence[Sequence[npt.ArrayLike]],
    max_norm: float,
    reference: Sequence[npt.ArrayLike] | None = None,
    weights: Sequence[float] | None = None,
) -> Update:
    """Norm clipping, then averaging (Sun et al. 2019).

    Each site's delta ``d_i = u_i - reference`` (or ``u_i`` itself when no reference is given) is
    scaled by ``min(1, max_norm / ||d_i||)``, with the L2 norm taken over all layers together;
    the clipped deltas are averaged (weighted when ``weights`` is given) and added back to
    ``reference``. Bounds how far any one site can move the model.

    Parameters
    ----------
    updates : sequence of updates
        One update (list of layer arrays) per site.
    max_norm : float
        Largest L2 norm a site's delta may have, > 0.
    reference : sequence of array_like, optional
        The current global model, when ``updates`` are full models rather than deltas.
    weights : sequence of float, optional
        Per-site weights for the average (equal when omitted).

    Returns
    -------
    list of numpy.ndarray
        ``reference + mean_i clip(d_i)`` (or ``mean_i clip(u_i)`` without reference).

    Raises
    ------
    ValueError
        If ``max_norm`` is not a finite positive number or ``reference`` does not match.
    """
    if not (isinstance(max_norm, int | float | np.number) and math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"norm_clip: max_norm must be a finite number > 0, got {max_norm!r}")
    matrix, like = _stack(updates, "norm_clip")
    w = _check_weights(weights, matrix.shape[0], "norm_clip")
    ref = _reference(reference, like, "norm_clip")
    deltas = matrix - ref
    norms = np.array([_safe_norm(d) for d in deltas])
    scale = np.minimum(1.0, max_norm / np.where(norms > 0, norms, 1.0))
    return unflatten(ref + _mean(deltas * scale[:, None], w), like)


def _reference(
    reference: Sequence[npt.ArrayLike] | None, like: Update, name: str, what: str = "reference"
) -> npt.NDArray[np.float64]:
    """Validate a reference update against the template layers; return it flattened."""
    size = sum(layer.size for layer in like)
    if reference is None:
        return np.zeros(size, dtype=np.float64)
    shapes = [np.shape(r) for r in reference]
    if shapes != [layer.shape for layer in like]:
        raise ValueError(
            f"{name}: {what} layer shapes {shapes} do not match the updates' {[lay.shape for lay in like]}"
        )
    ref = flatten(reference)
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"{name}: {what} contains non-finite values (NaN or inf)")
    return ref


def _unit_rows(matrix: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Rows scaled to unit L2 norm (zero rows stay zero) and the row norms, overflow-safe."""
    norms = np.array([_safe_norm(row) for row in matrix])
    peak = np.max(np.abs(matrix), axis=1) if matrix.shape[1] else np.zeros(matrix.shape[0])
    unit = np.zeros_like(matrix)
    for i, (row, norm, p) in enumerate(zip(matrix, norms, peak, strict=True)):
        if norm > 0:
            scaled = row / p  # dividing by the peak first keeps huge entries from overflowing
            unit[i] = scaled / np.linalg.norm(scaled)
    return unit, norms


def fltrust_trust_scores(
    updates: Sequence[Sequence[npt.ArrayLike]], server_update: Sequence[npt.ArrayLike]
) -> npt.NDArray[np.float64]:
    """FLTrust trust scores: ``ReLU(cos(u_i, g0))`` for each site (Cao et al. 2021).

    Parameters
    ----------
    updates : sequence of updates
        One update (delta to the current global model) per site.
    server_update : sequence of array_like
        The server's own update ``g0``, computed on its small clean root dataset.

    Returns
    -------
    numpy.ndarray
        float64[n] in ``[0, 1]``; 0 for updates pointing away from (or orthogonal to) ``g0`` and
        for all-zero updates (whose cosine is undefined).
    """
    matrix, like = _stack(updates, "fltrust")
    server = _reference(server_update, like, "fltrust", "server_update")
    unit, _ = _unit_rows(matrix)
    return _trust(unit, server)


def _trust(unit: npt.NDArray[np.float64], server: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """ReLU of the cosine between each unit-norm row and the server update."""
    server_unit, _ = _unit_rows(server[None, :])
    cos = np.clip(unit @ server_unit[0], -1.0, 1.0)
    return np.asarray(np.maximum(cos, 0.0), dtype=np.float64)


def fltrust(updates: Sequence[Sequence[npt.ArrayLike]], server_update: Sequence[npt.ArrayLike]) -> Update:
    """FLTrust aggregation (Cao et al. 2021).

    Each site's update ``u_i`` gets the trust score ``TS_i = ReLU(cos(u_i, g0))`` against the
    server update ``g0``; it is rescaled to the norm of ``g0`` (``u_i * ||g0|| / ||u_i||``), and the
    result is ``sum_i TS_i * rescaled_i / sum_i TS_i``. Rescaling stops scaled (model replacement)
    updates; the ReLU drops sign-flipped ones.

    When every trust score is zero (no site agrees with the server, or ``g0`` is all zeros) the
    paper's formula is 0/0; this function then returns a copy of ``server_update`` itself, the
    only update the server can vouch for (all zeros when ``g0`` is all zeros).

    Parameters
    ----------
    updates : sequence of updates
        One update (delta to the current global model, not the full model) per site.
    server_update : sequence of array_like
        The server's update ``g0`` from its clean root dataset, with the same layers.

    Returns
    -------
    list of numpy.ndarray
        The trust-weighted average of the rescaled updates (norm at most ``||g0||``).
    """
    matrix, like = _stack(updates, "fltrust")
    server = _reference(server_update, like, "fltrust", "server_update")
    unit, _ = _unit_rows(matrix)
    trust = _trust(unit, server)
    if trust.sum() <= 0:
        return unflatten(server, like)
    server_norm = _safe_norm(server)
    combined = (trust[:, None] * unit).sum(axis=0) / trust.sum()
    return unflatten(server_norm * combined, like)


# --------------------------------------------------------------------------------------------
# clustering-based filtering
# --------------------------------------------------------------------------------------------


def _cosine_distances(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cosine distances ``1 - cos`` in ``[0, 2]``; an all-zero row is at distance 1 from the rest."""
    unit, norms = _unit_rows(matrix)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    zero = norms == 0
    dist[zero, :] = 1.0
    dist[:, zero] = 1.0
    dist[np.ix_(zero, zero)] = 0.0
    dist = (dist + dist.T) / 2.0
    np.fill_diagonal(dist, 0.0)
    return np.asarray(dist, dtype=np.float64)


def _majority_sites(dist: npt.NDArray[np.float64]) -> list[int]:
    """Sites in the largest HDBSCAN cluster of a cosine-distance matrix (see flame_filter)."""
    n = dist.shape[0]
    if n <= 2:
        return list(range(n))
    min_size = n // 2 + 1
    labels = (
        HDBSCAN(
            min_cluster_size=min_size,
            min_samples=1,
            allow_single_cluster=True,
            metric="precomputed",
            copy=True,
        )
        .fit(dist)
        .labels_
    )
    clusters = [int(c) for c in np.unique(labels) if c >= 0]
    if clusters:
        sizes = {c: int(np.sum(labels == c)) for c in clusters}
        best = max(clusters, key=lambda c: (sizes[c], -c))
        return [int(i) for i in np.nonzero(labels == best)[0]]
    # Fallback (HDBSCAN labelled every site as noise): the min_size sites nearest the medoid.
    medoid = int(np.argmin(np.sort(dist, axis=1).sum(axis=1)))
    order = np.argsort(dist[medoid], kind="stable")
    return sorted(int(i) for i in order[:min_size])


def flame_filter(
    updates: Sequence[Sequence[npt.ArrayLike]],
    reference: Sequence[npt.ArrayLike],
    noise_sigma: float = 0.0,
    rng: np.random.Generator | int | None = None,
    *,
    noise_relative: bool = False,
) -> FlameResult:
    """Clustering-based filtering in the style of FLAME (Nguyen et al. 2022).

    1. Deltas ``d_i = u_i - reference`` are compared by cosine distance and clustered with
       HDBSCAN (``min_cluster_size = n // 2 + 1``, ``min_samples = 1``,
       ``allow_single_cluster=True``, as in the FLAME reference code); only the largest cluster
       is accepted, so any accepted set is a majority. Sites HDBSCAN marks as noise are
       rejected, which can drop some honest sites. Documented fallbacks: with ``n <= 2`` every
       site is accepted (no majority can be told apart); if HDBSCAN finds no cluster at all, the
       ``n // 2 + 1`` sites nearest (in cosine distance) to the medoid are accepted.
    2. The clipping bound ``S`` is the median of ``||d_i||`` over *all* sites; accepted deltas
       are scaled by ``min(1, S / ||d_i||)``.
    3. The clipped accepted deltas are averaged with equal weights and added to ``reference``.
    4. Gaussian noise ``N(0, sigma^2)`` is added to every coordinate, with
       ``sigma = noise_sigma`` or, when ``noise_relative`` is true, ``sigma = noise_sigma * S``
       (the paper's ``lambda * S``, with ``lambda = 0.001`` for image classification).

    Parameters
    ----------
    updates : sequence of updates
        One full local model (or update) per site.
    reference : sequence of array_like
        The current global model; clustering and clipping act on the deltas to it.
    noise_sigma : float, default 0.0
        Standard deviation of the added noise (absolute, or relative to ``S``), >= 0. The default
        adds no noise, so the result is deterministic.
    rng : numpy.random.Generator or int, optional
        Generator or seed for the noise; only drawn from when ``noise_sigma > 0``.
    noise_relative : bool, default False
        Interpret ``noise_sigma`` as a multiple of the clipping bound ``S``.

    Returns
    -------
    FlameResult
        ``(aggregate, accepted, clip_norm)``.

    Raises
    ------
    ValueError
        On empty or mismatched input, or a negative or non-finite ``noise_sigma``.
    """
    if (
        not (isinstance(noise_sigma, int | float | np.number) and math.isfinite(noise_sigma))
        or noise_sigma < 0
    ):
        raise ValueError(f"flame_filter: noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
    matrix, like = _stack(updates, "flame_filter")
    ref = _reference(reference, like, "flame_filter")
    deltas = matrix - ref
    accepted = _majority_sites(_cosine_distances(deltas))
    norms = np.array([_safe_norm(d) for d in deltas])
    clip_norm = float(np.median(norms))
    kept = deltas[accepted]
    kept_norms = norms[accepted]
    scale = np.where(kept_norms > clip_norm, clip_norm / np.where(kept_norms > 0, kept_norms, 1.0), 1.0)
    aggregate = ref + _mean(kept * scale[:, None])
    sigma = float(noise_sigma) * (clip_norm if noise_relative else 1.0)
    if sigma > 0:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        aggregate = aggregate + generator.normal(0.0, sigma, size=aggregate.shape)
    return FlameResult(unflatten(aggregate, like), tuple(accepted), clip_norm)


# --------------------------------------------------------------------------------------------
# validation on the server's root dataset
# --------------------------------------------------------------------------------------------


def validation_filter(losses: npt.ArrayLike, kappa: float = 3.0, floor: float = 0.05) -> list[int]:
    """Sites whose model is not an outlier for the worse on any group of the server's data.

    ``losses[i, g]`` is the validation loss of site ``i``'s proposed model on group ``g`` of the
    server's clean root dataset (e.g. one group per attack class). For each group the median
    ``m_g`` and the scaled median absolute deviation ``s_g = 1.4826 * MAD_g`` over the sites
    are computed; site ``i`` is kept when ``losses[i, g] <= m_g + kappa * max(s_g, floor * |m_g|,
    1e-6)`` for every group. Only *higher* losses reject (a site may be better than the rest),
    and the test is per group, so an update that keeps the overall loss flat while
    sacrificing one class (a targeted attack) is still caught. Robust while fewer than half
    of the sites are malicious: median and MAD then describe the honest sites.

    Parameters
    ----------
    losses : array_like, shape (n_sites, n_groups)
        Finite validation losses.
    kappa : float, default 3.0
        Tolerance in robust standard deviations, > 0.
    floor : float, default 0.05
        Smallest tolerated spread relative to the median loss (stops a group on which all
        sites agree exactly from rejecting everyone over rounding noise).

    Returns
    -------
    list of int
        Indices of the kept sites, ascending.
    """
    L = np.asarray(losses, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] == 0:
        raise ValueError(
            f"validation_filter: losses must be a non-empty (sites, groups) matrix, got {L.shape}"
        )
    if not np.isfinite(L).all():
        raise ValueError("validation_filter: losses must be finite")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"validation_filter: kappa must be a finite number > 0, got {kappa!r}")
    med = np.median(L, axis=0)
    spread = 1.4826 * np.median(np.abs(L - med), axis=0)
    tol = kappa * np.maximum(np.maximum(spread, floor * np.abs(med)), 1e-6)
    return [int(i) for i in np.flatnonzero((med + tol >= L).all(axis=1))]
