"""Peer groups at fleet scale: the exact path gives what the original algorithm gave (a frozen copy
below), the bounded path recovers groups and outliers of a 20,000-device fleet in bounded memory,
and the batched profile vectors equal the per-device ones."""

from __future__ import annotations

import ipaddress
import re
import sys
import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import REPO, data_path
from iotsentry.baseline.peer_groups import (
    COMMON_SERVICES,
    IDENTITY_COLUMNS,
    MEDOID_SAMPLE,
    N_EXACT,
    PROFILE_FEATURES,
    PeerGroups,
    _exact_medoid,
    _sampled_medoid,
    profile_vector,
    profile_vectors,
)
from iotsentry.baseline.profile import Baseline, DeviceProfile
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.features.windows import WINDOW_FEATURES
from iotsentry.pipeline import AnalysisConfig, Analyzer

COL = {n: i for i, n in enumerate(PROFILE_FEATURES)}
SVC = [i for i, n in enumerate(PROFILE_FEATURES) if n.startswith("svc:")]
SHARES = [*SVC, COL["local_share"], COL["named_share"]]
VOLUMES = [i for i in range(len(PROFILE_FEATURES)) if i not in IDENTITY_COLUMNS]


# --- the algorithm before the bounded path (frozen copy: O(n²) clustering, m×m medoid, O(m²) LOO)


def _old_is_local_ip(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return True
    return bool(a.is_private or a.is_multicast or a.is_link_local or a.is_unspecified) or ip.endswith(".255")


def _old_profile_vector(profile: DeviceProfile) -> np.ndarray:
    X = profile.matrix()
    idx = [WINDOW_FEATURES.index(f) for f in ("packets", "bytes", "peers", "services", "initiations")]
    if len(X):
        V = X[:, idx]
        vol = np.column_stack([V.mean(axis=0), np.quantile(V, 0.9, axis=0)]).ravel()
        frame = X[:, WINDOW_FEATURES.index("bytes")].sum() / max(
            X[:, WINDOW_FEATURES.index("packets")].sum(), 1
        )
    else:
        vol = np.zeros(10)
        frame = 0.0
    recurrent = [p for p, c in profile.peers.items() if c >= 2] or list(profile.peers)
    local = [p for p in recurrent if _old_is_local_ip(p)]
    remote = [p for p in recurrent if not _old_is_local_ip(p)]
    local_share = len(local) / len(recurrent) if recurrent else 1.0
    named_share = sum(1 for p in remote if profile.peer_names.get(p)) / len(remote) if remote else 1.0
    n_win = max(len(profile.windows), 1)
    svc = [min(profile.services.get(s, 0) / n_win, 1.0) for s in COMMON_SERVICES]
    other = max((c for s, c in profile.services.items() if s not in COMMON_SERVICES), default=0)
    head = np.log10(1.0 + np.r_[vol, frame, len(profile.peers), len(profile.services)])
    return np.r_[head, local_share, named_share, svc, min(other / n_win, 1.0)].astype(np.float64)


class _OldPeerGroups(PeerGroups):
    """``fit``, ``outliers``, ``check`` and the reasons exactly as they were (the rest inherited)."""

    def fit(
        self, device_ids: Sequence[str], vectors: Any, feature_names: Sequence[str] = PROFILE_FEATURES
    ) -> _OldPeerGroups:
        from sklearn.cluster import AgglomerativeClustering

        X = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        self.device_ids_ = np.asarray(list(device_ids), dtype=str)
        self.feature_names_ = np.asarray(list(feature_names), dtype=str)
        self.vectors_ = X
        if len(X) >= 2:
            raw = AgglomerativeClustering(
                n_clusters=None,
                distance_threshold=self.distance_threshold,
                linkage=self.linkage,  # type: ignore[arg-type]
            ).fit_predict(self._cols(X))
        else:
            raw = np.zeros(len(X), np.int64)
        _, first, inv = np.unique(raw, return_index=True, return_inverse=True)
        relabel = np.argsort(np.argsort(first))
        self.labels_ = relabel[inv.ravel()].astype(np.int64)
        n_groups = int(self.labels_.max()) + 1 if len(X) else 0
        medoids = np.zeros(n_groups, np.int64)
        dist = np.zeros(len(X))
        thresholds = np.zeros(n_groups)
        for g in range(n_groups):
            m = np.flatnonzero(self.labels_ == g)
            D = np.linalg.norm(X[m, None, :] - X[None, m, :], axis=2)
            med = int(m[np.argmin(D.sum(axis=1))])
            medoids[g] = med
            dist[m] = np.linalg.norm(X[m] - X[med], axis=1)
        self.medoids_ = medoids
        self.distances_ = dist
        member_thr = np.full(len(X), np.inf)
        for g in range(n_groups):
            m = np.flatnonzero(self.labels_ == g)
            others = m[m != medoids[g]]
            thresholds[g] = self._threshold(dist[others])
            for i in others.tolist():
                member_thr[i] = self._threshold(dist[others[others != i]])
        self.thresholds_ = thresholds
        self.member_thresholds_ = member_thr
        return self

    def _old_reason_for(self, v: np.ndarray, g: int, label: str, n: int, exclude: int | None) -> str:
        members = np.flatnonzero((self.labels_ == g) & (np.arange(len(self.labels_)) != exclude))
        ref = np.median(self.vectors_[members], axis=0)
        # the phrasing is shared: compare the reference, then let the current code word it
        assert np.array_equal(ref, self._reference(g, exclude, {})), (g, exclude)
        return self._reason_for(v, g, label, n, exclude=exclude)

    def outliers(self, labels: Mapping[str, str] | None = None) -> list[tuple[str, int, float, str]]:
        out: list[tuple[float, tuple[str, int, float, str]]] = []
        for i, g in enumerate(self.labels_.tolist()):
            n = int((self.labels_ == g).sum())
            if n < max(self.min_group_size, 3) or i == self.medoids_[g]:
                continue
            d = float(self.distances_[i])
            thr = float(self.member_thresholds_[i])
            if d > thr:
                dev = str(self.device_ids_[i])
                label = (labels or {}).get(dev, dev)
                out.append((d / thr, (dev, g, d, self._old_reason_for(self.vectors_[i], g, label, n, i))))
        return [x for _, x in sorted(out, key=lambda t: -t[0])]

    def check(
        self, device_ids: Sequence[str], vectors: Any, labels: Mapping[str, str] | None = None
    ) -> list[tuple[str, int, float, str]]:
        V = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        known = {d: i for i, d in enumerate(self.device_ids_.tolist())}
        out: list[tuple[float, tuple[str, int, float, str]]] = []
        for dev, v in zip(device_ids, V, strict=True):
            i = known.get(dev)
            g = int(self.labels_[i]) if i is not None else self.assign(v)
            if g >= self.n_groups:
                continue
            n = int((self.labels_ == g).sum())
            thr = float(self.thresholds_[g])
            if n < 3 or not np.isfinite(thr):
                continue
            d = float(np.linalg.norm(v - self.vectors_[self.medoids_[g]]))
            if d > thr:
                label = (labels or {}).get(dev, dev)
                out.append((d / thr, (dev, g, d, self._old_reason_for(v, g, label, n, i))))
        return [x for _, x in sorted(out, key=lambda t: -t[0])]


def _old_group_summary(pg: PeerGroups) -> list[tuple[int, list[str], str]]:
    return [
        (
            len(m := np.flatnonzero(pg.labels_ == g)),
            pg.device_ids_[m].tolist(),
            str(pg.device_ids_[pg.medoids_[g]]),
        )
        for g in range(pg.n_groups)
    ]


def _assert_same_as_before(ids: list[str], X: np.ndarray, **params: Any) -> PeerGroups:
    """The current fit (exact path) and the frozen one agree bit for bit, and so do their outputs."""
    old = _OldPeerGroups(**params).fit(ids, X)
    new = PeerGroups(n_exact=max(N_EXACT, len(ids)), **params).fit(ids, X)
    assert new.exact_
    for name in ("labels_", "medoids_", "distances_", "thresholds_", "member_thresholds_"):
        a, b = getattr(old, name), getattr(new, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert new.outliers() == old.outliers()
    assert [(s["size"], s["devices"], s["medoid"]) for s in new.group_summary()] == _old_group_summary(old)
    assert new.scores().tobytes() == old.scores().tobytes()
    later = X[::5] + np.linspace(-0.4, 0.6, X.shape[1])
    assert new.check(ids[::5], later) == old.check(ids[::5], later)
    fresh = [f"new-{i}" for i in range(len(later))]
    assert new.check(fresh, later) == old.check(fresh, later)
    return new


# --- fleets


def _prototype_fleet(
    n: int, kinds: int = 8, seed: int = 0, identity_noise: float = 0.03, volume_noise: float = 0.1
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` devices of ``kinds`` well-separated kinds (three services each, their own shares,
    frame size and volumes), kind sizes ~ 1/rank, Gaussian noise on every column."""
    rng = np.random.default_rng(seed)
    P = np.zeros((kinds, len(PROFILE_FEATURES)))
    for k in range(kinds):
        P[k, rng.choice(SVC, size=3, replace=False)] = 1.0
        P[k, COL["local_share"]] = rng.uniform(0, 1)
        P[k, COL["named_share"]] = rng.uniform(0, 1)
        P[k, COL["frame_size"]] = np.log10(1 + rng.uniform(60, 1400))
        P[k, VOLUMES] = rng.uniform(0.5, 4.0, size=len(VOLUMES))
    w = 1.0 / np.arange(1, kinds + 1)
    kind = rng.choice(kinds, size=n, p=w / w.sum())
    X = P[kind]
    X[:, list(IDENTITY_COLUMNS)] += rng.normal(0, identity_noise, size=(n, len(IDENTITY_COLUMNS)))
    X[:, VOLUMES] += rng.normal(0, volume_noise, size=(n, len(VOLUMES)))
    X[:, SHARES] = X[:, SHARES].clip(0, 1)
    return [f"dev-{i}" for i in range(n)], X, kind


def _tied_fleet(seed: int) -> tuple[list[str], np.ndarray]:
    """A few dozen devices on a coarse grid (many equal distances and duplicate vectors)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    X = rng.integers(0, 3, size=(n, len(PROFILE_FEATURES))).astype(float) * rng.choice([0.1, 0.25, 1.0])
    if seed % 2:
        X = X[rng.integers(0, max(1, n // 3), n)]
    return [f"d{i}" for i in range(n)], X


# --- exact path


@pytest.mark.parametrize("seed", range(40))
def test_exact_path_on_tied_fleets_is_what_it_was(seed: int) -> None:
    ids, X = _tied_fleet(seed)
    rng = np.random.default_rng(seed)
    _assert_same_as_before(
        ids,
        X,
        distance_threshold=float(rng.choice([0.3, 0.8, 2.0])),
        min_distance=float(rng.choice([0.1, 1.0])),
        k_mad=float(rng.choice([2.0, 3.0])),
    )


@pytest.mark.parametrize(
    "params",
    [{}, {"distance_threshold": 0.3, "k_mad": 2.0, "min_distance": 0.5}, {"linkage": "complete"}],
)
def test_exact_path_on_a_1500_device_fleet_is_what_it_was(params: dict[str, Any]) -> None:
    ids, X, _ = _prototype_fleet(1500, kinds=5, seed=3, volume_noise=0.4)
    X[::97, COL["bytes_mean"]] += 2.0  # some devices 100x louder than their kind
    pg = _assert_same_as_before(ids, X, **params)
    assert max(np.bincount(pg.labels_)) > 400  # the medoid is computed in several blocks
    if not params:
        assert len(pg.outliers()) >= 5


def test_leave_one_out_thresholds_equal_the_direct_computation() -> None:
    rng = np.random.default_rng(5)
    pg = PeerGroups(k_mad=2.5, min_distance=0.05)
    for m in [*range(0, 40), 199, 200, 201, 1000]:
        for d in (rng.exponential(1.0, m), rng.integers(0, 4, m) * 0.5, np.zeros(m)):
            loo = pg._loo_thresholds(d)
            direct = [pg._threshold(np.delete(d, i)) for i in range(m)]
            assert loo.tobytes() == np.asarray(direct, dtype=np.float64).tobytes(), (m, d)


def test_the_medoid_in_blocks_is_the_whole_matrix_one() -> None:
    _, X, _ = _prototype_fleet(700, kinds=1, seed=2)  # 700 x 700 x 34 distances: 4 blocks
    D = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)
    assert _exact_medoid(X) == int(np.argmin(D.sum(axis=1)))


# --- bounded path


@pytest.fixture(scope="module")
def big_fleet() -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """20,000 devices of eight kinds; one device of the largest kind sends 100x the bytes."""
    ids, X, kind = _prototype_fleet(20_000, kinds=8, seed=0)
    loud = int(np.flatnonzero(kind == np.bincount(kind).argmax())[1234])
    X[loud, COL["bytes_mean"]] += 2.0
    X[loud, COL["bytes_p90"]] += 2.0
    return ids, X, kind, loud


def test_bounded_path_recovers_the_kinds_and_the_loud_device(
    big_fleet: tuple[list[str], np.ndarray, np.ndarray, int],
) -> None:
    ids, X, kind, loud = big_fleet
    pg = PeerGroups().fit(ids, X)
    assert not pg.exact_
    assert adjusted_rand_score(kind, pg.labels_) >= 0.95
    assert pg.n_groups == 8
    out = pg.outliers(labels={ids[loud]: "plug-7"})
    assert out[0][0] == ids[loud], out[:3]
    assert len(out) <= 5, out
    size = int(np.bincount(pg.labels_)[pg.labels_[loud]])
    assert re.match(rf"plug-7 sends \d+× the bytes .*of its group \({size} devices\)", out[0][3]), out[0]
    summary = pg.group_summary()
    assert sum(s["size"] for s in summary) == len(ids)
    assert max(s["size"] for s in summary) > MEDOID_SAMPLE  # the sampled medoid was used
    again = PeerGroups().fit(ids, X)  # deterministic
    for name in ("labels_", "medoids_", "distances_", "member_thresholds_"):
        assert np.array_equal(getattr(pg, name), getattr(again, name)), name


def test_bounded_path_stays_in_bounded_memory(
    big_fleet: tuple[list[str], np.ndarray, np.ndarray, int],
) -> None:
    ids, X, _, _ = big_fleet
    PeerGroups().fit(ids[:3000], X[:3000])  # imports and first-call allocations outside the trace
    tracemalloc.start()
    try:
        PeerGroups().fit(ids, X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the exact path would hold n²/2 pairwise distances (1.6 GB here); the bounded one is linear
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_the_sampled_medoid_is_nearly_central() -> None:
    _, X, _ = _prototype_fleet(3000, kinds=1, seed=4, identity_noise=0.1, volume_noise=0.5)
    total = np.array([np.linalg.norm(X - x, axis=1).sum() for x in X])
    assert len(X) > MEDOID_SAMPLE and total[_sampled_medoid(X)] <= 1.01 * total.min()
    small = np.array([np.linalg.norm(X[:300] - x, axis=1).sum() for x in X[:300]])
    assert small[_sampled_medoid(X[:300])] <= (1 + 1e-9) * small.min()  # all members: the medoid


# --- profile vectors


def _profile(rng: np.random.Generator, i: int, n_win: int) -> DeviceProfile:
    p = DeviceProfile(f"dev-{i}")
    W = rng.lognormal(2.0, 2.0, size=(n_win, len(WINDOW_FEATURES)))
    W[rng.random(W.shape) < 0.3] = 0.0
    p.windows = list(W)
    for _ in range(int(rng.integers(0, 12))):
        ip = ".".join(str(x) for x in (rng.choice([10, 8, 192, 52]), *rng.integers(0, 256, size=3)))
        p.peers[ip] = int(rng.integers(1, 5))
        if rng.random() < 0.5:
            p.peer_names[ip] = "example.com"
    for s in rng.choice([*COMMON_SERVICES, "TCP/9999", "UDP/40000"], size=int(rng.integers(0, 6))):
        p.services[str(s)] = int(rng.integers(1, n_win + 2))
    return p


def test_profile_vectors_equal_the_per_device_computation() -> None:
    rng = np.random.default_rng(11)
    counts = [0, 0, 1, 1, 2, 3, 7, 8, 9, 16, 60, 127, 128, 129, 300, 300, 1000]
    profiles = [_profile(rng, i, int(c)) for i, c in enumerate(counts * 3)]
    b = Baseline([p.device_id for p in profiles])
    b.profiles = profiles
    for min_windows in (0, 1, 5):
        ids, X = profile_vectors(b, min_windows=min_windows)
        keep = [p for p in profiles if len(p.windows) >= min_windows]
        assert ids == [p.device_id for p in keep]
        old = np.vstack([_old_profile_vector(p) for p in keep])
        assert X.tobytes() == old.tobytes()
    assert all(profile_vector(p).tobytes() == _old_profile_vector(p).tobytes() for p in profiles)
    ids, X = profile_vectors(b, devices=["dev-4", "dev-40", "nobody"])
    assert ids == ["dev-4", "dev-40"] and X.shape == (2, len(PROFILE_FEATURES))
    assert profile_vectors(Baseline([]))[1].shape == (0, len(PROFILE_FEATURES))


def test_profile_vectors_of_a_home_equal_the_per_device_computation(tmp_path: Path) -> None:
    path = tmp_path / "home.pcap"
    generate_home(path, seed=7, duration_s=600.0, infect_at=0.5)
    an = Analyzer([path], AnalysisConfig(learn_seconds=1e9))
    an.run()
    assert isinstance(an.baseline, Baseline)
    ids, X = profile_vectors(an.baseline)
    old = np.vstack([_old_profile_vector(p) for p in an.baseline.profiles if p.windows])
    assert len(ids) >= 5 and X.tobytes() == old.tobytes()


# --- a real-ish fleet: IoTEnsemble devices cloned by benchmarks/fleet.py


@pytest.fixture(scope="module")
def realish_fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray, Baseline]:
    data_path("iotensemble")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fleet

    paths = fleet.default_sources()
    if not paths:
        pytest.skip("real data not available: IoTEnsemble 2020-11-23..26 captures")
    out = tmp_path_factory.mktemp("realish") / "fleet.pcap"
    fleet.write_fleet(out, fleet.analyse(fleet.load_frames(paths)), clones=32, packets=1_000_000)
    an = Analyzer([out], AnalysisConfig(learn_seconds=3600.0))
    an.run()
    assert isinstance(an.baseline, Baseline)
    ids, X = profile_vectors(an.baseline, min_windows=5)
    return ids, X, an.baseline


@pytest.mark.slow
def test_realish_fleet_exact_and_bounded_paths_agree(
    realish_fleet: tuple[list[str], np.ndarray, Baseline],
) -> None:
    ids, X, baseline = realish_fleet
    assert 1000 <= len(ids) <= N_EXACT, len(ids)
    by_id = {p.device_id: p for p in baseline.profiles}
    assert X.tobytes() == np.vstack([_old_profile_vector(by_id[d]) for d in ids]).tobytes()
    exact = _assert_same_as_before(ids, X)
    # the bounded path on the same devices, with a quarter as many representatives as devices
    bounded = PeerGroups(n_exact=0, n_representatives=len(ids) // 4).fit(ids, X)
    ari = adjusted_rand_score(exact.labels_, bounded.labels_)
    found = {o[0] for o in exact.outliers()}
    common = found & {o[0] for o in bounded.outliers()}
    print(
        f"real-ish fleet: {len(ids)} devices, {exact.n_groups} exact / {bounded.n_groups} bounded groups, "
        f"ARI {ari:.3f}; outliers {len(found)} exact, {len(common)} of them also bounded"
    )
    assert ari >= 0.85, ari
    assert len(common) >= 0.8 * len(found)
