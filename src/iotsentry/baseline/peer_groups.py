"""Peer groups of devices that behave alike, and devices that leave their group.

Each learned :class:`~iotsentry.baseline.profile.DeviceProfile` becomes a fixed-size profile
vector (:func:`profile_vector`, columns :data:`PROFILE_FEATURES`) on a fixed scale, so that
distances mean the same thing in every fleet: volume columns are ``log10`` of per-minute
rates (1 = a factor of ten), share columns are fractions in [0, 1] (1 = a whole service or all
peers swapped).

:class:`PeerGroups` clusters the vectors (average-linkage agglomerative clustering cut at
``distance_threshold``), by default on the *identity* columns (:data:`IDENTITY_COLUMNS`:
service mix, local and DNS-named peer shares, frame size), which say what kind of device it
is; a device whose *volumes* leave those of its group is what :meth:`PeerGroups.outliers`
reports. Its distance to the group's medoid, over all columns, is compared with a robust
threshold ``median + k · 1.4826 · MAD`` of the other members' distances (floored by
``min_distance``), and the reason names the columns that differ most, e.g. "camera-2 sends
40× the bytes per minute of its group (3 devices)".

:func:`peer_group_findings` runs all this on a baseline and returns plain dicts the pipeline
can turn into alerts.

**Fleet size.** Up to :data:`N_EXACT` devices the groups, medoids and thresholds are exact
(the full agglomerative clustering; the medoid's distances are summed in blocks). Above it the
cost per device stays about constant and the memory bounded: identical vectors are collapsed,
:class:`sklearn.cluster.Birch` sorts them into tight subclusters, a proportional sample of
about :data:`N_REPRESENTATIVES` representatives (at least one per subcluster, so small distinct
groups keep theirs; at most 1.5 times as many) is clustered exactly, and every device joins the
group of its nearest representative. These groups agree with the exact ones about as well as
the exact groups of 90 % of a fleet agree with those of all of it (adjusted Rand index about
0.85-1.0 on fleets of cloned real devices): a merge whose linkage distance is within a few per
cent of ``distance_threshold`` can go either way. A big group's medoid is the member closest
in sum to :data:`MEDOID_SAMPLE` evenly spread members. The leave-one-out thresholds are exact
at every size (sorted distances: O(m log m) per group). :func:`profile_vectors` computes the
volume statistics of all devices with the same number of windows in one call.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.baseline.profile import Baseline, DeviceProfile
from iotsentry.features.windows import WINDOW_FEATURES

__all__ = [
    "COMMON_SERVICES",
    "IDENTITY_COLUMNS",
    "MEDOID_SAMPLE",
    "N_EXACT",
    "N_REPRESENTATIVES",
    "PROFILE_FEATURES",
    "PeerGroups",
    "peer_group_findings",
    "profile_vector",
    "profile_vectors",
    "vector_findings",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

N_EXACT = 2000
"""Largest fleet that :meth:`PeerGroups.fit` clusters exactly (agglomerative clustering of every
device: O(n²) time and 4·n² bytes of pairwise distances, 16 MB here). Larger fleets take the
bounded path of the module docstring."""

N_REPRESENTATIVES = 2000
"""About how many representatives the bounded path clusters exactly (at most 1.5 times as many;
their pairwise distances take 8 bytes per pair, 36 MB at most here); the Birch subclusters are
made coarser until there are at most half as many."""

BIRCH_SHARE = 0.125
"""Radius of a Birch subcluster as a share of ``distance_threshold`` (doubled until there are at
most ``N_REPRESENTATIVES // 2`` subclusters)."""

BIRCH_PROBE = 8192
"""Evenly spread rows on which the Birch radius is first raised (see ``PeerGroups._subclusters``)."""

BIRCH_BLOCK = 8192
"""Rows given to Birch at a time (its subclusters are counted after each block)."""

MEDOID_SAMPLE = 512
"""A group of more members (on the bounded path) takes as medoid the member with the smallest
summed distance to this many evenly spread members rather than to all of them."""

_CHUNK_ELEMENTS = 1 << 22
"""Elements (8 bytes each) of one block of a chunked distance computation (32 MB)."""

VOLUME_FEATURES = ("packets", "bytes", "peers", "services", "initiations")
COMMON_SERVICES: tuple[str, ...] = (
    "UDP/53",
    "UDP/67",
    "UDP/123",
    "UDP/137",
    "UDP/1900",
    "UDP/5353",
    "UDP/5683",
    "TCP/22",
    "TCP/23",
    "TCP/80",
    "TCP/443",
    "TCP/554",
    "TCP/1883",
    "TCP/8080",
    "TCP/8443",
    "TCP/8883",
    "TCP/49153",
    "ICMP/0",
)
"""Services of the fixed-size service-mix part of the vector (plus one "other" column)."""

PROFILE_FEATURES: tuple[str, ...] = (
    *(f"{f}_{s}" for f in VOLUME_FEATURES for s in ("mean", "p90")),
    "frame_size",
    "peer_count",
    "service_count",
    "local_share",
    "named_share",
    *(f"svc:{s}" for s in COMMON_SERVICES),
    "svc:other",
)
"""Column names of a profile vector."""

IDENTITY_COLUMNS: tuple[int, ...] = tuple(
    i
    for i, n in enumerate(PROFILE_FEATURES)
    if n.startswith("svc:") or n in ("local_share", "named_share", "frame_size")
)
"""Columns that describe what kind of device it is (used to form the groups)."""

_PHRASES = {
    "packets_mean": "sends {r} the packets per minute",
    "packets_p90": "sends {r} the packets in its busy minutes (p90)",
    "bytes_mean": "sends {r} the bytes per minute",
    "bytes_p90": "sends {r} the bytes in its busy minutes (p90)",
    "peers_mean": "contacts {r} the peers per minute",
    "peers_p90": "contacts {r} the peers in its busy minutes (p90)",
    "services_mean": "uses {r} the services per minute",
    "services_p90": "uses {r} the services in its busy minutes (p90)",
    "initiations_mean": "opens {r} the connections per minute",
    "initiations_p90": "opens {r} the connections in its busy minutes (p90)",
    "frame_size": "sends frames {r} the size",
    "peer_count": "has {r} the distinct peers",
    "service_count": "has {r} the distinct services",
}


@functools.lru_cache(maxsize=1 << 16)
def _is_local_ip(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return True
    return bool(a.is_private or a.is_multicast or a.is_link_local or a.is_unspecified) or ip.endswith(".255")


def _volume_head(profiles: Sequence[DeviceProfile]) -> F64:
    """Volume part of the vectors, ``log10(1 + x)`` of: mean and p90 of each volume feature,
    frame size, peer count, service count (one row per device).

    Devices with the same number of windows are stacked into one ``(devices, windows,
    features)`` array, so there is one mean and one ``np.quantile`` per distinct window count;
    every statistic is computed along one axis of its own device's rows in the same order as on
    that device alone, so the values are identical to a per-device computation.
    """
    nv = len(VOLUME_FEATURES)
    raw = np.zeros((len(profiles), 2 * nv + 3))
    counts = np.fromiter((len(p.windows) for p in profiles), dtype=np.int64, count=len(profiles))
    idx = [WINDOW_FEATURES.index(f) for f in VOLUME_FEATURES]
    jb, jp = WINDOW_FEATURES.index("bytes"), WINDOW_FEATURES.index("packets")
    order = np.argsort(counts, kind="stable")
    values, starts = np.unique(counts[order], return_index=True)
    ends = np.r_[starts[1:], len(order)]
    for c, a, b in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if c == 0:
            continue
        sel = order[a:b]
        A = np.vstack([w for i in sel.tolist() for w in profiles[i].windows]).reshape(len(sel), c, -1)
        V = A[:, :, idx]
        raw[sel, 0 : 2 * nv : 2] = V.mean(axis=1)
        raw[sel, 1 : 2 * nv : 2] = np.quantile(V, 0.9, axis=1)
        packets = np.ascontiguousarray(A[:, :, jp]).sum(axis=1)
        raw[sel, 2 * nv] = np.ascontiguousarray(A[:, :, jb]).sum(axis=1) / np.maximum(packets, 1)
    raw[:, 2 * nv + 1] = [len(p.peers) for p in profiles]
    raw[:, 2 * nv + 2] = [len(p.services) for p in profiles]
    head: F64 = np.log10(1.0 + raw)
    return head


def _identity_part(profile: DeviceProfile) -> list[float]:
    """Shares of the vector: local peers, DNS-named remote peers, each common service, "other"."""
    # identity shares over recurrent peers / services (seen in two windows or more), so that a
    # short burst (a scan, a flood) changes the volumes, not what kind of device it looks like
    recurrent = [p for p, c in profile.peers.items() if c >= 2] or list(profile.peers)
    is_local = [_is_local_ip(p) for p in recurrent]
    remote = [p for p, loc in zip(recurrent, is_local, strict=True) if not loc]
    local_share = sum(is_local) / len(recurrent) if recurrent else 1.0
    named_share = sum(1 for p in remote if profile.peer_names.get(p)) / len(remote) if remote else 1.0
    n_win = max(len(profile.windows), 1)
    services = profile.services
    svc = [min(services.get(s, 0) / n_win, 1.0) for s in COMMON_SERVICES]
    other = max((c for s, c in services.items() if s not in COMMON_SERVICES), default=0)
    return [local_share, named_share, *svc, min(other / n_win, 1.0)]


def _vectors(profiles: Sequence[DeviceProfile]) -> F64:
    """Profile vectors of several devices, one row each (see :func:`profile_vector`)."""
    if not profiles:
        return np.zeros((0, len(PROFILE_FEATURES)))
    shares = np.array([_identity_part(p) for p in profiles], dtype=np.float64)
    return np.hstack([_volume_head(profiles), shares])


def profile_vector(profile: DeviceProfile) -> F64:
    """Fixed-size, fixed-scale profile vector of one device (columns :data:`PROFILE_FEATURES`)."""
    return _vectors([profile])[0]


def profile_vectors(
    baseline: Baseline, min_windows: int = 1, devices: Sequence[str] | None = None
) -> tuple[list[str], F64]:
    """(device ids, vectors) of the devices of a baseline with at least ``min_windows`` windows
    (only those in ``devices`` when given)."""
    keep = set(devices) if devices is not None else None
    chosen = [
        p
        for p in baseline.profiles
        if (keep is None or p.device_id in keep) and len(p.windows) >= min_windows
    ]
    return [p.device_id for p in chosen], _vectors(chosen)


def _ratio(d: float) -> str:
    r = 10.0**d
    if r >= 1.0:
        return f"{r:.0f}×" if r >= 10 else f"{r:.1f}×"
    return f"1/{1 / r:.0f} of" if r <= 0.1 else f"{r:.2f}×"


def _median_without(S: F64, r: I64) -> F64:
    """Median of the sorted array ``S`` without its element at rank ``r``, for each ``r``.

    Removing one element from a sorted array shifts the ones after it down by one place, so the
    median of the other ``len(S) - 1`` values is one of the neighbouring order statistics (or
    the mean of two of them); ``(a + b) / 2`` is what :func:`numpy.median` computes too.
    """
    k = len(S) - 1
    half = k // 2
    if k % 2:
        out: F64 = S[half + (half >= r)]
        return out
    return (S[half - 1 + (half - 1 >= r)] + S[half + (half >= r)]) / 2


def _sorted_members(X: F64, members: I64) -> F64:
    """Each column of the members' rows sorted on its own (for :func:`_median_without`)."""
    out: F64 = np.sort(X[members], axis=0)
    return out


def _chunk_rows(n_other: int, n_cols: int) -> int:
    """Rows per block of a chunked (rows × n_other × n_cols) computation."""
    return max(1, _CHUNK_ELEMENTS // max(n_other * n_cols, 1))


def _exact_medoid(Xm: F64) -> int:
    """Index (into ``Xm``) of the member with the smallest summed distance to all members.

    Computed in blocks of rows; every distance and every row sum is the same float as in one
    whole m × m matrix.
    """
    tot = np.empty(len(Xm))
    step = _chunk_rows(len(Xm), Xm.shape[1])
    for a in range(0, len(Xm), step):
        D = np.linalg.norm(Xm[a : a + step, None, :] - Xm[None, :, :], axis=2)
        tot[a : a + step] = D.sum(axis=1)
    return int(np.argmin(tot))


def _sampled_medoid(Xm: F64) -> int:
    """Index (into ``Xm``) of the member with the smallest summed distance to
    :data:`MEDOID_SAMPLE` evenly spread members (all of them in a smaller group): O(m) time and
    bounded memory. The first such member on ties."""
    from sklearn.metrics.pairwise import euclidean_distances

    m = len(Xm)
    spread = np.unique(np.linspace(0, m - 1, MEDOID_SAMPLE).round().astype(np.int64))
    ref = Xm if m <= MEDOID_SAMPLE else Xm[spread]
    ref_sq = np.einsum("ij,ij->i", ref, ref)[None, :]
    tot = np.empty(m)
    step = _chunk_rows(len(ref), 1)
    for a in range(0, m, step):
        tot[a : a + step] = euclidean_distances(Xm[a : a + step], ref, Y_norm_squared=ref_sq).sum(axis=1)
    return int(np.argmin(tot))


class PeerGroups:
    """Groups of similar devices; devices that leave their group (see module docstring).

    Parameters
    ----------
    distance_threshold
        Linkage distance at which clusters stop merging (on the clustering columns); also the
        distance beyond which :meth:`assign` opens a new group.
    cluster_columns
        Columns used to form groups (default :data:`IDENTITY_COLUMNS`; ``None`` in a call to
        the constructor with ``all_columns=True`` uses every column).
    k_mad
        Width of the robust outlier threshold in MADs.
    min_distance
        Floor of the outlier threshold (whole-vector distance; 1 = a factor of ten in one volume).
    linkage
        Agglomerative linkage: ``"average"``, ``"complete"``, ``"single"`` or ``"ward"``.
    min_group_size
        Smallest group in which :meth:`outliers` looks for a member that leaves it (the
        leave-one-out threshold then rests on at least two other members).
    random_state
        Kept for reproducibility of the interface (both paths of :meth:`fit` are deterministic).
    n_exact
        Largest number of devices clustered exactly (default :data:`N_EXACT`); more take the
        bounded path.
    n_representatives
        Representatives clustered exactly on the bounded path (default :data:`N_REPRESENTATIVES`).
    """

    def __init__(
        self,
        distance_threshold: float = 0.8,
        cluster_columns: Sequence[int] | None = IDENTITY_COLUMNS,
        k_mad: float = 3.0,
        min_distance: float = 1.0,
        linkage: str = "average",
        min_group_size: int = 4,
        random_state: int = 0,
        n_exact: int = N_EXACT,
        n_representatives: int = N_REPRESENTATIVES,
    ) -> None:
        self.linkage = linkage
        self.min_group_size = min_group_size
        self.distance_threshold = distance_threshold
        self.cluster_columns = None if cluster_columns is None else [int(c) for c in cluster_columns]
        self.k_mad = k_mad
        self.min_distance = min_distance
        self.random_state = random_state
        self.n_exact = n_exact
        self.n_representatives = n_representatives

    def _cols(self, X: F64) -> F64:
        return X if self.cluster_columns is None else X[:, self.cluster_columns]

    def _agglomerative(self, Xc: F64) -> I64:
        """Labels of the exact agglomerative clustering of the rows (at least two).

        Average, complete and single linkage go through SciPy's hierarchy (a quarter of the
        import time of scikit-learn's clustering, which every ``analyze`` and ``score`` paid):
        the tree cut where merges reach ``distance_threshold``, as scikit-learn's
        ``AgglomerativeClustering(distance_threshold=...)`` cuts it (merges strictly below the
        threshold; the partition is the same, the label numbers are renumbered by the caller).
        Ward linkage stays with scikit-learn.
        """
        if self.linkage in ("average", "complete", "single"):
            from scipy.cluster.hierarchy import fcluster, linkage

            tree = linkage(Xc, method=self.linkage, metric="euclidean")
            below = float(np.nextafter(self.distance_threshold, -np.inf))
            return np.asarray(fcluster(tree, t=below, criterion="distance"), dtype=np.int64)
        from sklearn.cluster import AgglomerativeClustering

        labels: I64 = AgglomerativeClustering(
            n_clusters=None,
            distance_threshold=self.distance_threshold,
            linkage=self.linkage,  # type: ignore[arg-type]
        ).fit_predict(Xc)
        return labels

    def _subclusters(self, rows: F64, most: int) -> I64:
        """Birch subcluster of each row, with at most ``most`` subclusters.

        The radius starts at ``BIRCH_SHARE · distance_threshold`` and doubles until the rows fit
        in ``most`` subclusters: first on evenly spread rows (:data:`BIRCH_PROBE` of them), then
        on all, fed in blocks so that a radius that is too small is given up as soon as the
        subclusters outnumber ``most`` (a Birch tree of very many subclusters is slow to build).
        Deterministic: the rows go in in their order.
        """
        from sklearn.cluster import Birch

        def fits(X: F64, radius: float) -> Birch | None:
            birch = Birch(threshold=radius, n_clusters=None, compute_labels=False)
            for a in range(0, len(X), BIRCH_BLOCK):
                birch.partial_fit(X[a : a + BIRCH_BLOCK])
                if len(birch.subcluster_centers_) > most:
                    return None
            return birch

        radius = BIRCH_SHARE * self.distance_threshold
        probe = rows[np.unique(np.linspace(0, len(rows) - 1, BIRCH_PROBE).round().astype(np.int64))]
        while fits(probe, radius) is None:
            radius *= 2.0
        while (birch := fits(rows, radius)) is None:
            radius *= 2.0
        labels: I64 = np.asarray(birch.predict(rows), dtype=np.int64)
        return labels

    def _bounded_labels(self, Xc: F64) -> I64:
        """Groups of a large fleet in bounded memory (the bounded path of the module docstring).

        1. Identical rows are collapsed; :class:`~sklearn.cluster.Birch` sorts the distinct
           rows into subclusters of radius ``BIRCH_SHARE · distance_threshold`` (doubled until
           there are at most ``n_representatives // 2``).
        2. Each subcluster of ``c`` devices (counted with repeats) gives
           ``max(1, round(c · n_representatives / n))`` representatives, evenly spread over its
           members in device order: a proportional sample, so that average distances between
           groups of representatives estimate those between the groups of all devices, and
           small subclusters are not lost.
        3. The representatives are clustered exactly (as on the exact path); every other device
           joins the group of its nearest representative.
        """
        from sklearn import config_context
        from sklearn.metrics import pairwise_distances_argmin

        n = len(Xc)
        budget = max(2, int(self.n_representatives))
        uniq, inverse = np.unique(Xc, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        if len(uniq) == 1:
            return np.zeros(n, np.int64)
        sub = self._subclusters(uniq, max(1, budget // 2))[inverse]
        order = np.argsort(sub, kind="stable")
        sizes = np.bincount(sub)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        picks: list[I64] = []
        for a, c in zip(starts.tolist(), sizes.tolist(), strict=True):
            if c:
                k = max(1, round(c * budget / n))
                picks.append(order[a + np.unique(np.linspace(0, c - 1, k).round().astype(np.int64))])
        reps = np.sort(np.concatenate(picks))
        rep_labels = self._agglomerative(Xc[reps]) if len(reps) >= 2 else np.zeros(len(reps), np.int64)
        with config_context(working_memory=64):
            nearest = pairwise_distances_argmin(uniq, Xc[reps])
        labels = np.asarray(rep_labels[nearest][inverse], dtype=np.int64)
        labels[reps] = rep_labels
        return labels

    def fit(
        self,
        device_ids: Sequence[str],
        vectors: npt.ArrayLike,
        feature_names: Sequence[str] = PROFILE_FEATURES,
    ) -> Self:
        """Cluster the devices and compute each group's medoid and outlier threshold.

        Exact up to ``n_exact`` devices; above, the bounded path (module docstring). Sets
        ``labels_``, ``medoids_``, ``distances_`` (to the group's medoid, all columns),
        ``thresholds_`` (per group), ``member_thresholds_`` (per device, leave-one-out) and
        ``exact_`` (whether the groups came from the exact clustering).
        """
        X = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if len(device_ids) != len(X):
            raise ValueError(f"{len(device_ids)} device ids for {len(X)} vectors")
        self.device_ids_ = np.asarray(list(device_ids), dtype=str)
        self.feature_names_ = np.asarray(list(feature_names), dtype=str)
        self.vectors_ = X
        self.exact_ = len(X) <= self.n_exact
        if len(X) < 2:
            raw = np.zeros(len(X), np.int64)
        elif self.exact_:
            raw = self._agglomerative(self._cols(X))
        else:
            raw = self._bounded_labels(self._cols(X))
        # group ids in order of first appearance (stable across sklearn versions)
        _, first, inv = np.unique(raw, return_index=True, return_inverse=True)
        relabel = np.argsort(np.argsort(first))
        self.labels_ = relabel[inv.ravel()].astype(np.int64)
        n_groups = int(self.labels_.max()) + 1 if len(X) else 0
        medoids = np.zeros(n_groups, np.int64)
        dist = np.zeros(len(X))
        thresholds = np.zeros(n_groups)
        member_thr = np.full(len(X), np.inf)
        pick = _exact_medoid if self.exact_ else _sampled_medoid
        for g, m in enumerate(self._members()):
            med = int(m[pick(X[m])])
            medoids[g] = med
            dist[m] = np.linalg.norm(X[m] - X[med], axis=1)
            others = m[m != med]
            thresholds[g] = self._threshold(dist[others])
            # leave-one-out: the device under test does not widen its own threshold
            member_thr[others] = self._loo_thresholds(dist[others])
        self.medoids_ = medoids
        self.distances_ = dist
        self.thresholds_ = thresholds
        self.member_thresholds_ = member_thr
        return self

    def _members(self) -> list[I64]:
        """Members of each group, in device order (one stable sort of the labels; every group
        number below the largest has members)."""
        order = np.argsort(self.labels_, kind="stable")
        ends = np.cumsum(np.bincount(self.labels_))
        return [order[a:b] for a, b in zip(np.r_[0, ends[:-1]].tolist(), ends.tolist(), strict=True)]

    def _threshold(self, d: F64) -> float:
        if len(d) == 0:
            return float("inf")
        med = float(np.median(d))
        mad = 1.4826 * float(np.median(np.abs(d - med)))
        return max(self.min_distance, med + self.k_mad * mad)

    def _loo_thresholds(self, d: F64) -> F64:
        """``_threshold`` of ``d`` without each of its elements in turn, in O(m log m).

        The median without element ``i`` is one of the neighbouring order statistics of the
        sorted distances (:func:`_median_without`), so it takes at most three values; for each
        of them the absolute deviations are sorted once and the MAD without element ``i`` is
        again a neighbouring order statistic. Exact: the same floats as ``_threshold`` of
        ``np.delete(d, i)``.
        """
        out = np.full(len(d), np.inf)
        if len(d) < 2:
            return out
        S = np.sort(d)
        med = _median_without(S, np.searchsorted(S, d))
        mad = np.empty(len(d))
        for v in np.unique(med).tolist():
            sel = med == v
            A = np.sort(np.abs(d - v))
            mad[sel] = _median_without(A, np.searchsorted(A, np.abs(d[sel] - v)))
        out[:] = np.maximum(self.min_distance, med + self.k_mad * (1.4826 * mad))
        return out

    @property
    def n_groups(self) -> int:
        """Number of groups found by :meth:`fit`."""
        return len(self.medoids_)

    def group_sizes(self) -> I64:
        """Number of devices in each group."""
        sizes: I64 = np.bincount(self.labels_, minlength=self.n_groups)
        return sizes

    def assign(self, vector: npt.ArrayLike) -> int:
        """Group of a new device: the nearest medoid's, or ``n_groups`` (a new group of its own)
        when every medoid is farther than ``distance_threshold`` (on the clustering columns)."""
        v = np.atleast_2d(np.asarray(vector, dtype=np.float64))
        if not self.n_groups:
            return 0
        d = np.linalg.norm(self._cols(self.vectors_[self.medoids_]) - self._cols(v), axis=1)
        g = int(np.argmin(d))
        return g if d[g] <= self.distance_threshold else self.n_groups

    def _reference(self, g: int, exclude: int | None, cache: dict[int, F64]) -> F64:
        """Column-wise median of the group's members other than ``exclude`` (the same floats as
        ``np.median(vectors_[members], axis=0)``), from the group's sorted columns."""
        S = cache.get(g)
        if S is None:
            S = cache[g] = _sorted_members(self.vectors_, np.flatnonzero(self.labels_ == g))
        if exclude is None or self.labels_[exclude] != g:
            ref: F64 = np.median(S, axis=0)
            return ref
        v = self.vectors_[exclude]
        ranks = np.array([np.searchsorted(S[:, j], v[j]) for j in range(S.shape[1])], dtype=np.int64)
        cols = np.arange(S.shape[1])
        k = len(S) - 1
        half = k // 2
        hi = S[half + (half >= ranks), cols]
        if k % 2:
            return hi
        lo = S[half - 1 + (half - 1 >= ranks), cols]
        both: F64 = (lo + hi) / 2
        return both

    def _reason(self, i: int, g: int, label: str, n: int, cache: dict[int, F64]) -> str:
        return self._reason_for(self.vectors_[i], g, label, n, exclude=i, cache=cache)

    def _reason_for(
        self, v: F64, g: int, label: str, n: int, exclude: int | None, cache: dict[int, F64] | None = None
    ) -> str:
        ref = self._reference(g, exclude, {} if cache is None else cache)
        diff = v - ref
        parts: list[str] = []
        for j in np.argsort(-np.abs(diff))[:2].tolist():
            if abs(diff[j]) < 0.05:
                break
            name = str(self.feature_names_[j])
            if name in _PHRASES:
                parts.append(_PHRASES[name].format(r=_ratio(float(diff[j]))) + " of its group")
            elif name.startswith("svc:"):
                parts.append(f"uses {name[4:]} in {v[j]:.0%} of its minutes vs {ref[j]:.0%} in its group")
            else:
                what = {"local_share": "local peers", "named_share": "remote peers reached by DNS name"}
                parts.append(f"has {v[j]:.0%} {what.get(name, name)} vs {ref[j]:.0%} in its group")
        if not parts:
            parts = ["differs from the rest of its group"]
        parts[0] += f" ({n} devices)"
        return f"{label} " + "; ".join(parts)

    def outliers(self, labels: Mapping[str, str] | None = None) -> list[tuple[str, int, float, str]]:
        """Devices farther from their group's medoid than the group's robust threshold.

        Returns
        -------
        list
            ``(device_id, group, distance, reason)``, farthest (relative to the threshold) first.
            Groups of fewer than ``min_group_size`` devices have no outliers (no robust reference).
        """
        size = self.group_sizes()[self.labels_]
        not_medoid = np.ones(len(self.labels_), bool)
        not_medoid[self.medoids_] = False
        found = np.flatnonzero(
            (size >= max(self.min_group_size, 3)) & not_medoid & (self.distances_ > self.member_thresholds_)
        )
        cache: dict[int, F64] = {}
        out: list[tuple[float, tuple[str, int, float, str]]] = []
        for i in found.tolist():
            g, n = int(self.labels_[i]), int(size[i])
            d = float(self.distances_[i])
            thr = float(self.member_thresholds_[i])
            dev = str(self.device_ids_[i])
            label = (labels or {}).get(dev, dev)
            out.append((d / thr, (dev, g, d, self._reason(i, g, label, n, cache))))
        return [x for _, x in sorted(out, key=lambda t: -t[0])]

    def check(
        self, device_ids: Sequence[str], vectors: npt.ArrayLike, labels: Mapping[str, str] | None = None
    ) -> list[tuple[str, int, float, str]]:
        """Later profile vectors checked against the fitted groups (same tuples as :meth:`outliers`).

        A known device is compared with the group it was fitted into, a new one with the group
        :meth:`assign` gives it; the threshold is the group's (from all non-medoid members'
        distances, floored by ``min_distance``), so groups of three fitted devices suffice.
        """
        V = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        known = {d: i for i, d in enumerate(self.device_ids_.tolist())}
        sizes = self.group_sizes()
        cache: dict[int, F64] = {}
        out: list[tuple[float, tuple[str, int, float, str]]] = []
        for dev, v in zip(device_ids, V, strict=True):
            i = known.get(dev)
            g = int(self.labels_[i]) if i is not None else self.assign(v)
            if g >= self.n_groups:
                continue
            n = int(sizes[g])
            thr = float(self.thresholds_[g])
            if n < 3 or not np.isfinite(thr):
                continue
            d = float(np.linalg.norm(v - self.vectors_[self.medoids_[g]]))
            if d > thr:
                label = (labels or {}).get(dev, dev)
                out.append((d / thr, (dev, g, d, self._reason_for(v, g, label, n, exclude=i, cache=cache))))
        return [x for _, x in sorted(out, key=lambda t: -t[0])]

    def group_summary(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per group: members, medoid, threshold and typical volumes."""
        out = []
        names = self.feature_names_.tolist()
        for g, m in enumerate(self._members()):
            med = self.vectors_[self.medoids_[g]]
            typical = {
                str(n): round(float(10.0 ** med[j] - 1.0), 1)
                for j, n in enumerate(names)
                if n in ("packets_mean", "bytes_mean", "peers_mean", "peer_count", "service_count")
            }
            services = [
                str(n)[4:]
                for j, n in enumerate(names)
                if str(n).startswith("svc:") and med[j] >= 0.5 and n != "svc:other"
            ]
            thr = float(self.thresholds_[g])
            out.append(
                {
                    "group": g,
                    "size": len(m),
                    "devices": self.device_ids_[m].tolist(),
                    "medoid": str(self.device_ids_[self.medoids_[g]]),
                    "threshold": thr if np.isfinite(thr) else None,
                    "typical": typical,
                    "common_services": services,
                }
            )
        return out

    def scores(self) -> F64:
        """Distance to the group medoid over the device's (leave-one-out) threshold; 0 where undefined."""
        thr = self.member_thresholds_
        size = np.bincount(self.labels_, minlength=self.n_groups)[self.labels_]
        ok = np.isfinite(thr) & (thr > 0) & (size >= max(self.min_group_size, 3))
        return np.where(ok, self.distances_ / np.where(ok, thr, 1.0), 0.0)


def peer_group_findings(
    baseline: Baseline,
    labels: Mapping[str, str] | None = None,
    min_windows: int = 5,
    groups: PeerGroups | None = None,
    devices: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Devices that leave their peer group, as dicts the pipeline can turn into alerts.

    Parameters
    ----------
    baseline
        Learned baselines (``Analyzer.baseline``).
    labels
        device_id -> human label used in the reasons (default: the device id).
    min_windows
        Devices with fewer learned windows are not grouped.
    groups
        An unfitted :class:`PeerGroups` with custom parameters (default ``PeerGroups()``).
    devices
        Only these devices (e.g. those whose learning has ended); default all.

    Returns
    -------
    list of dict
        ``device_id``, ``group``, ``reason``, ``score`` (distance / threshold, > 1) and
        ``threshold`` (1.0), ``distance``, ``group_size``.
    """
    ids, X = profile_vectors(baseline, min_windows=min_windows, devices=devices)
    return vector_findings(ids, X, labels, groups)


def vector_findings(
    ids: Sequence[str],
    X: F64,
    labels: Mapping[str, str] | None = None,
    groups: PeerGroups | None = None,
) -> list[dict[str, Any]]:
    """:func:`peer_group_findings` of precomputed profile vectors (e.g. gathered from workers)."""
    if len(ids) < 3:
        return []
    pg = (groups or PeerGroups()).fit(ids, X)
    out = []
    score = dict(zip(pg.device_ids_.tolist(), pg.scores().tolist(), strict=True))
    sizes = pg.group_sizes()
    for dev, g, d, reason in pg.outliers(labels):
        out.append(
            {
                "device_id": dev,
                "group": g,
                "reason": reason,
                "score": score[dev],
                "threshold": 1.0,
                "distance": d,
                "group_size": int(sizes[g]),
            }
        )
    return out
