"""Peer groups: grouping of similar devices, outliers with reasons, on generated and real captures."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import data_path
from iotsentry.baseline.peer_groups import (
    PROFILE_FEATURES,
    PeerGroups,
    peer_group_findings,
    profile_vector,
    profile_vectors,
)
from iotsentry.baseline.profile import Baseline
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.pipeline import AnalysisConfig, Analyzer

COL = {n: i for i, n in enumerate(PROFILE_FEATURES)}


def _fleet(seed: int = 0) -> tuple[list[str], np.ndarray, list[int]]:
    """Three device kinds (different service mixes), five devices each, small jitter."""
    rng = np.random.default_rng(seed)
    ids, rows, kinds = [], [], []
    for k, svc in enumerate(("svc:TCP/443", "svc:UDP/5353", "svc:TCP/80")):
        for j in range(5):
            v = np.zeros(len(PROFILE_FEATURES))
            v[COL[svc]] = 1.0
            v[COL["bytes_mean"]] = 4.0 + k + rng.normal(0, 0.01)
            v[COL["packets_mean"]] = 2.0 + k + rng.normal(0, 0.05)
            v[COL["local_share"]] = 0.5 * k
            ids.append(f"kind{k}-{j}")
            rows.append(v)
            kinds.append(k)
    return ids, np.vstack(rows), kinds


def test_groups_follow_kinds_and_the_deviant_is_named_with_its_feature() -> None:
    ids, X, kinds = _fleet()
    X[6, COL["bytes_mean"]] += np.log10(40.0)  # kind1-1 sends 40x the bytes per minute
    pg = PeerGroups().fit(ids, X)
    assert adjusted_rand_score(kinds, pg.labels_) == 1.0
    out = pg.outliers(labels={"kind1-1": "camera-2"})
    assert [o[0] for o in out] == ["kind1-1"]
    _dev, group, dist, reason = out[0]
    assert group == pg.labels_[6] and dist > 1.5
    assert re.match(
        r"camera-2 sends (3[6-9]|4[0-4])× the bytes per minute of its group \(5 devices\)", reason
    )
    summary = pg.group_summary()
    assert sorted(s["size"] for s in summary) == [5, 5, 5]
    assert sum(s["devices"].count("kind1-1") for s in summary) == 1


def test_assign_joins_the_nearest_group_or_opens_a_new_one() -> None:
    ids, X, _ = _fleet()
    pg = PeerGroups().fit(ids, X)
    near = X[11].copy()
    near[COL["bytes_mean"]] += 0.02
    assert pg.assign(near) == pg.labels_[11]
    far = np.zeros(len(PROFILE_FEATURES))
    far[COL["svc:TCP/23"]] = 1.0
    far[COL["svc:TCP/22"]] = 1.0
    assert pg.assign(far) == pg.n_groups == 3


def test_small_groups_have_no_outliers_and_fit_is_deterministic() -> None:
    ids, X, _ = _fleet()
    two = X[:2].copy()
    two[1, COL["bytes_mean"]] += 2.0  # 100x, but a group of two has no robust reference
    pg = PeerGroups().fit(ids[:2], two)
    assert pg.n_groups == 1 and pg.outliers() == []
    a, b = PeerGroups().fit(ids, X), PeerGroups().fit(ids, X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.distances_, b.distances_)


def _home_vectors(tmp: Path, seed: int, infect_at: float) -> dict[str, np.ndarray]:
    path = tmp / f"home{seed}-{infect_at}.pcap"
    truth = generate_home(path, seed=seed, duration_s=1200.0, infect_at=infect_at)
    an = Analyzer([path], AnalysisConfig(learn_seconds=1e9))
    an.run()
    assert isinstance(an.baseline, Baseline)
    kind = {d.mac: d.kind for d in truth.devices}
    ids, X = profile_vectors(an.baseline, min_windows=5)
    return {f"{kind[d]}-{seed}": v for d, v in zip(ids, X, strict=True) if d in kind}


def test_synthetic_homes_group_by_kind_and_the_infected_camera_leaves_its_group(tmp_path: Path) -> None:
    clean: dict[str, np.ndarray] = {}
    for seed in (1, 2, 3):
        clean.update(_home_vectors(tmp_path, seed, 1.0))
    ids = sorted(clean)
    X = np.vstack([clean[i] for i in ids])
    kinds = [i.rsplit("-", 1)[0] for i in ids]
    pg = PeerGroups(distance_threshold=0.3).fit(ids, X)
    ari = adjusted_rand_score(kinds, pg.labels_)
    assert ari > 0.8, ari
    assert pg.outliers() == []  # three clean homes: nobody leaves its group
    infected = _home_vectors(tmp_path, 3, 0.5)
    found = pg.check(list(infected), np.vstack(list(infected.values())))
    assert [f[0] for f in found] == ["camera-3"], found
    assert "camera-3" in found[0][3] and "of its group (3 devices)" in found[0][3]


def test_peer_group_findings_on_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "home.pcap"
    generate_home(path, seed=5, duration_s=900.0, infect_at=1.0)
    an = Analyzer([path], AnalysisConfig(learn_seconds=1e9))
    an.run()
    assert an.baseline is not None
    ids, X = profile_vectors(an.baseline, min_windows=5)
    assert X.shape == (len(ids), len(PROFILE_FEATURES)) and np.isfinite(X).all()
    # one device made to look like 3 twins of another with 50x its volumes -> findings name it
    prof = an.baseline.profiles[an.baseline.device_ids.index(ids[0])]
    assert np.array_equal(profile_vector(prof), X[0])
    for k in range(3):
        twin = an.baseline.add_device(f"twin-{k}")
        an.baseline.profiles[twin].windows = [w.copy() for w in prof.windows]
        an.baseline.profiles[twin].services = prof.services.copy()
        an.baseline.profiles[twin].peers = prof.peers.copy()
        an.baseline.profiles[twin].peer_names = dict(prof.peer_names)
    loud = an.baseline.add_device("loud")
    an.baseline.profiles[loud].windows = [w * 50.0 for w in prof.windows]
    an.baseline.profiles[loud].services = prof.services.copy()
    an.baseline.profiles[loud].peers = prof.peers.copy()
    an.baseline.profiles[loud].peer_names = dict(prof.peer_names)
    findings = peer_group_findings(an.baseline, labels={"loud": "camera-9"})
    assert [f["device_id"] for f in findings] == ["loud"], findings
    f = findings[0]
    assert f["score"] > 1.0 and f["threshold"] == 1.0 and f["group_size"] >= 5
    assert re.match(r"camera-9 (sends|contacts|opens) 5\d× the ", f["reason"]), f


@pytest.mark.slow
def test_iot_sentinel_devices_of_one_type_mostly_share_a_group() -> None:
    root = data_path("iot-sentinel")
    per: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (root / "index.csv").open() as fh:
        for r in csv.DictReader(fh):
            per[r["device_dir"]].append(r)
    ids, rows, types = [], [], []
    for d, rs in sorted(per.items()):
        for r in rs[:8]:
            an = Analyzer([root / d / r["file"]], AnalysisConfig(learn_seconds=1e9))
            an.run()
            assert an.baseline is not None
            prof = next(p for p in an.baseline.profiles if p.device_id == r["device_mac"])
            if prof.windows:
                ids.append(f"{d}/{r['file']}")
                rows.append(profile_vector(prof))
                types.append(re.sub(r"(?<=[a-z])[12]$", "", d))  # EdimaxCam1/2 -> one type
    assert len(set(types)) == 27
    pg = PeerGroups().fit(ids, np.vstack(rows))
    ari = adjusted_rand_score(types, pg.labels_)
    shuffled = adjusted_rand_score(np.random.default_rng(0).permutation(types), pg.labels_)
    print(f"IoT SENTINEL: {len(ids)} setups, {pg.n_groups} groups, ARI {ari:.3f} (shuffled {shuffled:.3f})")
    assert ari > 0.35 and shuffled < 0.05


@pytest.mark.parametrize("link", ["average", "complete", "single"])
def test_hierarchy_cut_is_the_partition_scikit_learn_gives(link: str) -> None:
    """The SciPy tree cut equals AgglomerativeClustering(distance_threshold=...): merges strictly
    below the threshold, on clustered, tied (rounded, duplicated) and boundary data."""
    from sklearn.cluster import AgglomerativeClustering

    rng = np.random.default_rng(3)
    pg = PeerGroups(linkage=link)
    cases = []
    for trial in range(60):
        n, k = int(rng.integers(2, 120)), int(rng.integers(1, 6))
        centers = rng.normal(0, 3, size=(k, 4))
        X = centers[rng.integers(0, k, n)] + rng.normal(0, float(rng.choice([0.0, 0.2, 1.0])), size=(n, 4))
        cases.append(np.round(X, 1) if trial % 2 else X)
    t = pg.distance_threshold
    cases.append(np.array([[0.0, 0.0], [t, 0.0], [5 * t, 0.0]]))  # a pair exactly at the threshold
    for X in cases:
        want = AgglomerativeClustering(n_clusters=None, distance_threshold=t, linkage=link).fit_predict(X)
        assert adjusted_rand_score(pg._agglomerative(X), want) == 1.0
