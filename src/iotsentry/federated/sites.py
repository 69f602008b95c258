"""Non-IID federated sites built from the real IoT-23 flows.

Each IoT-23 scenario (a Zeek ``conn.log.labeled`` or a labelled CSV under
``<data_dir>/iot23``) is sorted by time and cut into contiguous time slices, one per site;
each site is then split by time into its first 80 % (train) and last 20 % (held-out).
Sites are therefore non-IID by construction: different devices, malware families and
malicious ratios (some honeypot scenarios are benign only, 34-1 is mostly malicious).

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from iotsentry.capture.zeek import read_flows
from iotsentry.features.flow_features import flow_matrix

__all__ = [
    "CLASSES",
    "DEFAULT_SPLITS",
    "Site",
    "build_sites",
    "load_sites",
    "pooled_scaler",
    "save_sites",
    "scenario_files",
]

CLASSES = ("benign", "malicious")

#: scenario id -> number of time-contiguous sites (10 scenarios-splits -> 13 sites).
DEFAULT_SPLITS: dict[str, int] = {
    "34-1": 3,
    "42-1": 2,
    "20-1": 2,
    "21-1": 2,
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

    @property
    def evaluable(self) -> bool:
        """True when the held-out part has both classes (so its AUC is defined)."""
        return len(set(self.y_test.tolist())) == 2


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
) -> list[Site]:
    """Read the scenarios, featurise, and cut them into time-ordered sites.

    Raises ``FileNotFoundError`` when a requested scenario file is missing.
    """
    splits = DEFAULT_SPLITS if splits is None else splits
    files = scenario_files(data_dir)
    sites: list[Site] = []
    for sid, k in splits.items():
        if sid not in files:
            raise FileNotFoundError(f"IoT-23 scenario {sid} not found under {Path(data_dir) / 'iot23'}")
        flows = read_flows(files[sid])
        X, _ = flow_matrix(flows)
        y = np.where(np.asarray(flows.columns["label"]).astype(str) == "malicious", CLASSES[1], CLASSES[0])
        order = np.argsort(np.asarray(flows.columns["ts"], dtype=np.float64), kind="stable")
        X, y = np.asarray(X, dtype=np.float32)[order], y[order]
        for j, idx in enumerate(np.array_split(np.arange(len(y)), k)):
            cut = round(train_frac * len(idx))
            tr, te = idx[:cut], idx[cut:]
            sites.append(Site(f"{sid}/{j}", X[tr], y[tr].astype(str), X[te], y[te].astype(str)))
    return sites


def pooled_scaler(sites: list[Site]) -> tuple[F32, F32]:
    """Mean and std of the pooled train rows, from per-site ``(n, sum, sum of squares)``."""
    n = sum(len(s.X_train) for s in sites)
    s1 = sum(s.X_train.astype(np.float64).sum(axis=0) for s in sites)
    s2 = sum((s.X_train.astype(np.float64) ** 2).sum(axis=0) for s in sites)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def save_sites(sites: list[Site], path: str | Path) -> None:
    """Write the sites to one ``.npz`` (read by the ClientApp in the simulation workers)."""
    arrays: dict[str, npt.NDArray[np.generic]] = {"names": np.array([s.name for s in sites], dtype=str)}
    for i, s in enumerate(sites):
        arrays.update({f"Xtr{i}": s.X_train, f"ytr{i}": s.y_train, f"Xte{i}": s.X_test, f"yte{i}": s.y_test})
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_sites(path: str | Path) -> list[Site]:
    """Read what :func:`save_sites` wrote."""
    with np.load(path) as z:
        names = z["names"].tolist()
        return [
            Site(n, z[f"Xtr{i}"], z[f"ytr{i}"].astype(str), z[f"Xte{i}"], z[f"yte{i}"].astype(str))
            for i, n in enumerate(names)
        ]
