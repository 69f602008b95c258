"""Non-IID federated sites built from the real IoT-23 flows.

Each IoT-23 scenario (a Zeek ``conn.log.labeled`` or a labelled CSV under
``<data_dir>/iot23``) is sorted by time and cut into contiguous time slices, one per site;
each site is then split by time *per class*: the first 80 % of its benign flows and the first
80 % of its malicious flows (in time order) train, the rest is held out. The per-class split
keeps the held-out part later than the train part within each class, and gives every site
with at least two malicious flows malicious flows on both sides (a plain time split leaves
most IoT-23 sites without a malicious held-out flow: their infections come in bursts).
Sites are non-IID by construction: different devices, malware families and malicious ratios
(the honeypot scenarios are benign only, 34-1 is mostly malicious, 42-1 has 6 malicious
flows among 4,426).

Each site also keeps the IoT-23 *detailed* label of every row (``C&C``, ``DDoS``,
``C&C-Torii``, ...; ``-`` for benign), used to measure targeted poisoning of one attack class
(:func:`is_cc`).

Features are :func:`iotsentry.features.flow_features.flow_matrix` rows, computed over the
whole scenario before splitting; labels are ``"malicious"`` / ``"benign"`` from the
``label`` column.

Shared scaler
-------------
All sites use one standardisation, :func:`pooled_scaler`: the mean and standard deviation
of the pooled *train* rows of all sites. It is computed from per-site sufficient statistics
``(n, sum x, sum x^2)`` only — the quantities a single secure-aggregation round would
reveal — so no raw flow leaves a site. (In the simulation these sums are added up in the
driver process, not sent through Flower messages.) The held-out rows never enter it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from iotsentry.capture.zeek import read_flows
from iotsentry.features.flow_features import flow_matrix

__all__ = [
    "CLASSES",
    "DEFAULT_SPLITS",
    "SPLITS",
    "Site",
    "build_sites",
    "class_time_split",
    "combine_moments",
    "is_cc",
    "load_sites",
    "moments",
    "pooled_scaler",
    "save_sites",
    "scenario_files",
    "time_slices",
]

CLASSES = ("benign", "malicious")
SPLITS = ("class-time", "time")

#: scenario id -> number of time-contiguous sites (8 scenarios -> 15 sites, 12 evaluable).
DEFAULT_SPLITS: dict[str, int] = {
    "34-1": 8,
    "42-1": 1,
    "20-1": 1,
    "21-1": 1,
    "44-1": 1,
    "4-1": 1,
    "5-1": 1,
    "7-1": 1,
}

F32 = npt.NDArray[np.float32]
Labels = npt.NDArray[np.str_]


@dataclass
class Site:
    """One federated site: a time slice of one scenario, split by time into train/held-out."""

    name: str
    X_train: F32
    y_train: Labels
    X_test: F32
    y_test: Labels
    d_train: Labels
    d_test: Labels

    @property
    def evaluable(self) -> bool:
        """True when the held-out part has both classes (so its AUC is defined)."""
        return len(set(self.y_test.tolist())) == 2


def is_cc(detailed: Labels) -> npt.NDArray[np.bool_]:
    """Rows whose IoT-23 detailed label is a command-and-control class (``C&C``, ``C&C-*``)."""
    return np.char.startswith(np.asarray(detailed, dtype=str), "C&C")


def time_slices(y: Labels, k: int) -> list[npt.NDArray[np.int64]]:
    """Cut time-ordered rows into ``k`` contiguous slices holding equal numbers of benign rows.

    Cutting at benign-count quantiles (rather than row counts) gives every slice of a
    scenario with benign traffic some benign rows, while the malicious rows fall where they
    happened: 34-1's DDoS hours land in one slice, so the malicious share varies from slice
    to slice (non-IID). Without benign rows the rows are cut into equal counts.
    """
    n = len(y)
    benign = np.flatnonzero(y == CLASSES[0])
    if k <= 1 or len(benign) < k:
        return list(np.array_split(np.arange(n, dtype=np.int64), max(k, 1)))
    cuts = [0, *(int(benign[round(j * len(benign) / k)]) for j in range(1, k)), n]
    return [np.arange(a, b, dtype=np.int64) for a, b in itertools.pairwise(cuts)]


def class_time_split(
    y: Labels, train_frac: float, ts: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of the train and held-out parts, split per class by time.

    For each class the first ``round(train_frac * n_class)`` rows (in time order: by ``ts``
    when given, else the rows are taken to be in time order already) train and the rest are
    held out; a class with at least two rows always keeps one row on each side. Both index
    arrays come back in time order.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    labels = np.asarray(y).astype(str)
    if ts is not None:
        t = np.asarray(ts, dtype=np.float64)
        if t.shape != labels.shape:
            raise ValueError(f"ts and y differ in shape: {t.shape} vs {labels.shape}")
        order = np.argsort(t, kind="stable")
        tr_o, te_o = class_time_split(labels[order], train_frac)
        return order[tr_o], order[te_o]
    y = labels
    tr: list[npt.NDArray[np.int64]] = []
    te: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        cut = round(train_frac * len(idx))
        if len(idx) >= 2:
            cut = min(max(cut, 1), len(idx) - 1)
        tr.append(idx[:cut])
        te.append(idx[cut:])
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(tr)) if tr else empty,
        np.sort(np.concatenate(te)) if te else empty,
    )


def scenario_files(data_dir: str | Path) -> dict[str, Path]:
    """Scenario id (e.g. ``"34-1"``) -> flow file under ``<data_dir>/iot23``."""
    root = Path(data_dir) / "iot23"
    out: dict[str, Path] = {}
    for p in sorted(root.glob("zeek/*/conn.log.labeled")):
        out[p.parent.name.rsplit("-", 2)[-2] + "-" + p.parent.name.rsplit("-", 1)[-1]] = p
    for p in sorted(root.glob("csv/*.csv")):
        stem = p.name.removesuffix("-labeled.csv")
        sid = stem.rsplit("-", 2)[-2] + "-" + stem.rsplit("-", 1)[-1]
        out.setdefault(sid, p)  # prefer the original Zeek log when both exist
    return out


def build_sites(
    data_dir: str | Path,
    splits: dict[str, int] | None = None,
    train_frac: float = 0.8,
    split: str = "class-time",
) -> list[Site]:
    """Read the scenarios, featurise, and cut them into time-ordered sites.

    ``split`` is ``"class-time"`` (default: per class, first ``train_frac`` of the rows in time
    order train) or ``"time"`` (the site's first ``train_frac`` of rows train, whatever their
    class: sites whose infection happens late have no malicious train row).

    Raises ``FileNotFoundError`` when a requested scenario file is missing.
    """
    splits = DEFAULT_SPLITS if splits is None else splits
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    files = scenario_files(data_dir)
    sites: list[Site] = []
    for sid, k in splits.items():
        if sid not in files:
            raise FileNotFoundError(f"IoT-23 scenario {sid} not found under {Path(data_dir) / 'iot23'}")
        flows = read_flows(files[sid])
        X, _ = flow_matrix(flows)
        y = np.where(np.asarray(flows.columns["label"]).astype(str) == "malicious", CLASSES[1], CLASSES[0])
        det = np.asarray(flows.columns.get("detailed_label", np.full(len(y), "-"))).astype(str)
        det = np.where(y == CLASSES[0], "-", det)
        order = np.argsort(np.asarray(flows.columns["ts"], dtype=np.float64), kind="stable")
        X, y, det = np.asarray(X, dtype=np.float32)[order], y[order], det[order]
        for j, idx in enumerate(time_slices(y, k)):
            if split == "class-time":
                tr_rel, te_rel = class_time_split(y[idx], train_frac)
            else:
                cut = round(train_frac * len(idx))
                tr_rel, te_rel = np.arange(cut), np.arange(cut, len(idx))
            tr, te = idx[tr_rel], idx[te_rel]
            sites.append(
                Site(f"{sid}/{j}", X[tr], y[tr].astype(str), X[te], y[te].astype(str), det[tr], det[te])
            )
    return sites


def moments(X: npt.ArrayLike) -> tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(n, sum, sum of squares)`` per feature of the rows of ``X`` (float64)."""
    A = np.asarray(X, dtype=np.float64)
    return len(A), A.sum(axis=0), (A**2).sum(axis=0)


def combine_moments(parts: Iterable[tuple[int, npt.ArrayLike, npt.ArrayLike]]) -> tuple[F32, F32]:
    """Pooled mean and (population) standard deviation from per-site :func:`moments`."""
    items = list(parts)
    n = sum(int(p[0]) for p in items)
    if n == 0:
        raise ValueError("no training rows at any site")
    s1 = np.sum([np.asarray(p[1], dtype=np.float64) for p in items], axis=0)
    s2 = np.sum([np.asarray(p[2], dtype=np.float64) for p in items], axis=0)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def pooled_scaler(sites: list[Site]) -> tuple[F32, F32]:
    """Mean and std of the pooled train rows, from per-site ``(n, sum, sum of squares)``."""
    return combine_moments(moments(s.X_train) for s in sites)


def save_sites(sites: list[Site], path: str | Path) -> None:
    """Write the sites to one ``.npz`` (read by the ClientApp in the simulation workers)."""
    arrays: dict[str, npt.NDArray[np.generic]] = {"names": np.array([s.name for s in sites], dtype=str)}
    for i, s in enumerate(sites):
        arrays.update({f"Xtr{i}": s.X_train, f"ytr{i}": s.y_train, f"Xte{i}": s.X_test, f"yte{i}": s.y_test})
        arrays.update({f"dtr{i}": s.d_train, f"dte{i}": s.d_test})
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_sites(path: str | Path) -> list[Site]:
    """Read what :func:`save_sites` wrote."""
    with np.load(path, allow_pickle=False) as z:
        names = z["names"].tolist()
        return [
            Site(
                n,
                z[f"Xtr{i}"],
                z[f"ytr{i}"].astype(str),
                z[f"Xte{i}"],
                z[f"yte{i}"].astype(str),
                z[f"dtr{i}"].astype(str),
                z[f"dte{i}"].astype(str),
            )
            for i, n in enumerate(names)
        ]
