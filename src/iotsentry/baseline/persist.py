"""Saving and loading a frozen :class:`~iotsentry.baseline.profile.Baseline` (JSON + npz, no pickle).

A saved baseline is a flat directory:

``manifest.json``
    ``{"format": "iotsentry-baseline", "version": 1, "created": RFC 3339 UTC, "device_ids": [...],
    "window_features": [...], "counts": {...}, "files": {name: {"sha256", "size"}}}``: what the
    data files hold and their SHA-256 digests.
``profiles.json``
    Per device (in device-number order): peers and services (``[key, windows]`` pairs in their
    counting order), peer names, names, quarantined entries, capped features, its remote
    identity (networks, domains, bare-IP services, high-UDP networks), its learning clock (start,
    end, whether learning ended), its groups and its history of absorbed behaviour; the learned
    (device, name) pairs; the labels (peer, service) of the learned schedules; the connection
    series of devices still learning; whether a bare IP is evidence per device; ``drift_guard``.
``arrays.npz``
    The numeric state (``np.savez``, loaded with ``allow_pickle=False``): window feature rows
    with their device and time, discovery times, first / last packet time per device, the sorted
    (device, peer) and (device, service) lookup tables, the application token sets, the
    learned schedules (key, device, period, jitter, last start, count).
``metadata.json``
    The caller's JSON object (the streaming engine keeps its learning end, labels, DNS names...).

A living baseline is saved as it is at any time: devices whose learning ended, devices still
learning (with their connection series, so learning resumes after a restore) and what was
absorbed since. The drift guard's histograms are not kept: a device still learning when the
baseline is saved resumes learning without them. Detection moves the schedules' last start
times, which are saved as they are.

Loading checks everything before building anything: the file set, every digest and size, the
format version, the array names, dtypes and shapes, the JSON types, and that the parts agree
with each other; any problem is a :class:`BaselineFileError` naming the file and the problem
in one line. A directory may also hold ``signature.json`` (see
:func:`iotsentry.integrity.signing.sign_model_dir`), which this module ignores: verifying it is
the caller's job (``load_verified(directory, keyring, load_baseline_with_metadata)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.baseline.keysets import CountTable
from iotsentry.baseline.periodicity import Schedule
from iotsentry.baseline.profile import Baseline, DeviceProfile
from iotsentry.errors import InputError
from iotsentry.features.windows import WINDOW_FEATURES
from iotsentry.schema import ip_from_str

__all__ = [
    "ARRAYS_FILE",
    "DATA_FILES",
    "FORMAT",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "PROFILES_FILE",
    "VERSION",
    "BaselineFileError",
    "encode_baseline",
    "load_baseline",
    "load_baseline_with_metadata",
    "save_baseline",
    "write_baseline_files",
]

FORMAT = "iotsentry-baseline"
VERSION = 2
MANIFEST_FILE = "manifest.json"
PROFILES_FILE = "profiles.json"
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "metadata.json"
DATA_FILES = (PROFILES_FILE, ARRAYS_FILE, METADATA_FILE)
IGNORED_FILES = frozenset({"signature.json"})
"""Files a baseline directory may hold besides its own (the signature is checked by the caller)."""

_ARRAYS: dict[str, tuple[str, int]] = {
    # name -> (dtype, number of dimensions)
    "windows": ("float64", 2),
    "window_device": ("int64", 1),
    "window_ts": ("float64", 1),
    "discoveries": ("float64", 1),
    "discovery_device": ("int64", 1),
    "first_ts": ("float64", 1),
    "last_ts": ("float64", 1),
    "peer_keys": ("uint64", 1),
    "peer_counts": ("float64", 1),
    "service_keys": ("uint64", 1),
    "service_counts": ("float64", 1),
    "token_device": ("int64", 1),
    "token_hash": ("uint64", 1),
    "schedule_key": ("uint64", 1),
    "schedule_device": ("int64", 1),
    "schedule_period": ("float64", 1),
    "schedule_jitter": ("float64", 1),
    "schedule_last": ("float64", 1),
    "schedule_count": ("int64", 1),
}


class BaselineFileError(InputError):
    """A saved baseline that cannot be used; the message is one line: ``PATH: PROBLEM``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        one_line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)
        super().__init__(path, one_line)


# -- saving ---------------------------------------------------------------------------------------
def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _profile_doc(p: DeviceProfile) -> dict[str, Any]:
    return {
        "device_id": p.device_id,
        "peers": [[ip, int(n)] for ip, n in p.peers.items()],
        "peer_names": [[ip, name] for ip, name in p.peer_names.items()],
        "names": sorted(p.names),
        "services": [[s, int(n)] for s, n in p.services.items()],
        "quarantined": list(p.quarantined),
        "capped": list(p.capped),
        "networks": sorted(p.networks),
        "domains": sorted(p.domains),
        "bare_services": sorted(p.bare_services),
        "high_networks": sorted(p.high_networks),
        "learn_start": _finite_or_none(p.learn_start),
        "learn_end": _finite_or_none(p.learn_end),
        "active": bool(p.active),
        "groups": list(p.groups),
        "history": list(p.history),
        "limit_overrides": {k: float(v) for k, v in sorted(p.limit_overrides.items())},
    }


def encode_baseline(baseline: Baseline, metadata: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a saved baseline (name -> bytes), manifest included.

    Parameters
    ----------
    baseline
        The baseline (devices may still be learning).
    metadata
        A JSON-ready object stored as ``metadata.json`` (finite numbers only).

    Raises
    ------
    ValueError
        ``metadata`` is not JSON-ready.
    """
    n_dev = len(baseline.profiles)
    nf = len(WINDOW_FEATURES)
    win_rows: list[npt.NDArray[np.float64]] = []
    win_dev: list[int] = []
    win_ts: list[float] = []
    disc: list[float] = []
    disc_dev: list[int] = []
    for d, p in enumerate(baseline.profiles):
        win_rows.extend(np.asarray(x, dtype=np.float64).reshape(nf) for x in p.windows)
        win_dev.extend([d] * len(p.windows))
        win_ts.extend(float(t) for t in p.window_ts)
        disc.extend(float(t) for t in p.discoveries)
        disc_dev.extend([d] * len(p.discoveries))
    tok_dev: list[int] = []
    tok_hash: list[int] = []
    for d in sorted(baseline._tokens):
        hashes = sorted(baseline._tokens[d])
        tok_dev.extend([d] * len(hashes))
        tok_hash.extend(hashes)
    sched = list(baseline.periodicity.schedules.items())
    arrays: dict[str, npt.NDArray[Any]] = {
        "windows": np.vstack(win_rows) if win_rows else np.zeros((0, nf)),
        "window_device": np.array(win_dev, dtype=np.int64),
        "window_ts": np.array(win_ts, dtype=np.float64),
        "discoveries": np.array(disc, dtype=np.float64),
        "discovery_device": np.array(disc_dev, dtype=np.int64),
        "first_ts": np.array([p.first_ts for p in baseline.profiles], dtype=np.float64),
        "last_ts": np.array([p.last_ts for p in baseline.profiles], dtype=np.float64),
        "peer_keys": np.asarray(baseline._peer_keys, dtype=np.uint64),
        "peer_counts": np.asarray(baseline._peer_counts, dtype=np.float64),
        "service_keys": np.asarray(baseline._svc_keys, dtype=np.uint64),
        "service_counts": np.asarray(baseline._svc_counts, dtype=np.float64),
        "token_device": np.array(tok_dev, dtype=np.int64),
        "token_hash": np.array(tok_hash, dtype=np.uint64),
        "schedule_key": np.array([k for k, _ in sched], dtype=np.uint64),
        "schedule_device": np.array([s.device for _, s in sched], dtype=np.int64),
        "schedule_period": np.array([s.period_s for _, s in sched], dtype=np.float64),
        "schedule_jitter": np.array([s.jitter_s for _, s in sched], dtype=np.float64),
        "schedule_last": np.array([s.last_ts for _, s in sched], dtype=np.float64),
        "schedule_count": np.array([s.count for _, s in sched], dtype=np.int64),
    }
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    profiles = {
        "device_ids": list(baseline.device_ids),
        "drift_guard": bool(baseline.drift_guard),
        "profiles": [_profile_doc(p) for p in baseline.profiles],
        "learned_names": [[int(d), sorted(names)] for d, names in sorted(baseline._names.items()) if names],
        "schedule_labels": [[s.peer, s.service] for _, s in sched],
        "learning_series": [
            [str(k), int(d), peer, svc, [float(t) for t in times]]
            for k, d, peer, svc, times in baseline.periodicity.learning_series()
        ],
        "names_evidence": [bool(x) for x in baseline.names_evidence[: len(baseline.device_ids)].tolist()],
    }
    try:
        files = {
            PROFILES_FILE: _json_bytes(profiles),
            ARRAYS_FILE: buf.getvalue(),
            METADATA_FILE: _json_bytes(dict(metadata or {})),
        }
    except (TypeError, ValueError) as e:
        raise ValueError(f"baseline metadata is not JSON-ready ({e})") from None
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "device_ids": list(baseline.device_ids),
        "window_features": list(WINDOW_FEATURES),
        "counts": {
            "devices": n_dev,
            "windows": len(win_dev),
            "discoveries": len(disc),
            "peer_keys": len(arrays["peer_keys"]),
            "service_keys": len(arrays["service_keys"]),
            "tokens": len(tok_hash),
            "schedules": len(sched),
        },
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in files.items()
        },
    }
    files[MANIFEST_FILE] = _json_bytes(manifest)
    return files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_baseline_files(
    files: Mapping[str, bytes], directory: str | Path, *, finalize: Callable[[Path], object] | None = None
) -> Path:
    """Write the files of :func:`encode_baseline` as ``directory``, atomically.

    The files are written into a temporary sibling directory, ``finalize`` (e.g. signing) runs
    on it, and it is renamed to ``directory``; a previous ``directory`` is moved aside first and
    removed after. A crash leaves either the old directory, the new one, or none (never a
    half-written one under the final name).
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old: Path | None = None
    try:
        for name, data in files.items():
            if "/" in name or name.startswith(".") or name in IGNORED_FILES:
                raise ValueError(f"invalid baseline file name {name!r}")
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if finalize is not None:
            finalize(tmp)
        os.chmod(tmp, 0o755)
        _fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / target.name).exists():
            with contextlib.suppress(OSError):
                os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def save_baseline(
    baseline: Baseline,
    directory: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    finalize: Callable[[Path], object] | None = None,
) -> Path:
    """Save a frozen baseline as ``directory`` (see the module docstring for the format).

    Parameters
    ----------
    baseline
        The frozen baseline.
    directory
        Where it is saved (replaced atomically if it exists).
    metadata
        JSON-ready object kept as ``metadata.json`` (device labels, learning end, ...).
    finalize
        Called on the complete temporary directory before it is renamed (e.g. to sign it with
        :func:`iotsentry.integrity.signing.sign_model_dir`).

    Returns
    -------
    Path
        ``directory``.
    """
    return write_baseline_files(encode_baseline(baseline, metadata), directory, finalize=finalize)


# -- loading ---------------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise BaselineFileError(path, f"cannot read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BaselineFileError(path, "not a regular file")
        return f.read()


def _parse_json(path: Path, data: bytes) -> Any:
    def no_constant(c: str) -> Any:
        raise ValueError(f"non-finite number {c}")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise BaselineFileError(path, f"not valid JSON ({e})") from None


class _Check:
    """Type checks of parsed JSON that raise :class:`BaselineFileError` for one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> BaselineFileError:
        return BaselineFileError(self.path, problem)

    def obj(self, v: Any, what: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(f"{what}: expected an object")
        return v

    def lst(self, v: Any, what: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(f"{what}: expected a list")
        return v

    def str_(self, v: Any, what: str) -> str:
        if not isinstance(v, str):
            raise self.fail(f"{what}: expected a string")
        return v

    def int_(self, v: Any, what: str, lo: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.fail(f"{what}: expected an integer >= {lo}")
        return v

    def strs(self, v: Any, what: str) -> list[str]:
        return [self.str_(x, what) for x in self.lst(v, what)]

    def pairs_int(self, v: Any, what: str) -> list[tuple[str, int]]:
        out = []
        for x in self.lst(v, what):
            if not isinstance(x, list) or len(x) != 2:
                raise self.fail(f"{what}: expected [text, count] pairs")
            out.append((self.str_(x[0], what), self.int_(x[1], what, 1)))
        return out

    def pairs_str(self, v: Any, what: str) -> list[tuple[str, str]]:
        out = []
        for x in self.lst(v, what):
            if not isinstance(x, list) or len(x) != 2:
                raise self.fail(f"{what}: expected [text, text] pairs")
            out.append((self.str_(x[0], what), self.str_(x[1], what)))
        return out


def _manifest(directory: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The checked manifest and the data files' bytes (each matching its digest)."""
    if not directory.is_dir():
        raise BaselineFileError(directory, "not a saved baseline (no such directory)")
    mpath = directory / MANIFEST_FILE
    if not mpath.exists():
        raise BaselineFileError(mpath, "missing: not a saved baseline")
    c = _Check(mpath)
    m = c.obj(_parse_json(mpath, _read(mpath)), "manifest")
    if m.get("format") != FORMAT:
        raise c.fail(f"format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise c.fail(f"format version {m.get('version')!r} is not supported (this iotsentry reads {VERSION})")
    c.str_(m.get("created"), "created")
    device_ids = c.strs(m.get("device_ids"), "device_ids")
    if len(set(device_ids)) != len(device_ids):
        raise c.fail("device_ids: duplicate device id")
    if c.strs(m.get("window_features"), "window_features") != list(WINDOW_FEATURES):
        raise c.fail(
            "window_features differ from this iotsentry's window features (saved by another version)"
        )
    counts = c.obj(m.get("counts"), "counts")
    for k in ("devices", "windows", "discoveries", "peer_keys", "service_keys", "tokens", "schedules"):
        c.int_(counts.get(k), f"counts.{k}")
    if counts["devices"] != len(device_ids):
        raise c.fail(f"counts.devices is {counts['devices']}, but {len(device_ids)} device ids are listed")
    files = c.obj(m.get("files"), "files")
    if set(files) != set(DATA_FILES):
        raise c.fail(f"files: expected exactly {', '.join(sorted(DATA_FILES))}")
    present = set()
    with os.scandir(directory) as it:
        for e in it:
            if e.name in IGNORED_FILES or e.name == MANIFEST_FILE:
                continue
            if e.name not in DATA_FILES:
                raise BaselineFileError(directory / e.name, "unexpected file in a saved baseline")
            present.add(e.name)
    blobs: dict[str, bytes] = {}
    for name in DATA_FILES:
        path = directory / name
        if name not in present:
            raise BaselineFileError(path, "missing (listed in the manifest)")
        entry = c.obj(files[name], f"files.{name}")
        want = c.str_(entry.get("sha256"), f"files.{name}.sha256")
        size = c.int_(entry.get("size"), f"files.{name}.size")
        data = _read(path)
        if len(data) != size:
            raise BaselineFileError(path, f"size {len(data)} differs from the manifest's {size} bytes")
        if hashlib.sha256(data).hexdigest() != want:
            raise BaselineFileError(path, "content differs from the manifest's SHA-256 (altered or damaged)")
        blobs[name] = data
    return m, blobs


def _arrays(path: Path, data: bytes, m: dict[str, Any]) -> dict[str, npt.NDArray[Any]]:
    """The checked arrays of ``arrays.npz`` (never unpickled)."""
    out: dict[str, npt.NDArray[Any]] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names = set(z.files)
            if names != set(_ARRAYS):
                extra, missing = sorted(names - set(_ARRAYS)), sorted(set(_ARRAYS) - names)
                what = f"unexpected array {extra[0]!r}" if extra else f"missing array {missing[0]!r}"
                raise BaselineFileError(path, what)
            for name, (dtype, ndim) in _ARRAYS.items():
                try:
                    a = z[name]
                except ValueError as e:  # object arrays: numpy refuses to unpickle them
                    raise BaselineFileError(
                        path, f"array {name!r} cannot be loaded without pickle ({e})"
                    ) from None
                if a.dtype != np.dtype(dtype) or a.ndim != ndim:
                    raise BaselineFileError(
                        path, f"array {name!r} is {a.dtype}[{a.ndim}d], expected {dtype}[{ndim}d]"
                    )
                out[name] = np.ascontiguousarray(a)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BaselineFileError(path, f"not a readable npz archive ({e})") from None
    except ValueError as e:
        raise BaselineFileError(path, f"not a readable npz archive ({e})") from None
    counts = m["counts"]
    n_dev = counts["devices"]

    def same_len(names: tuple[str, ...], count: str) -> None:
        for nm in names:
            if len(out[nm]) != counts[count]:
                raise BaselineFileError(
                    path, f"array {nm!r} has {len(out[nm])} rows, the manifest counts {counts[count]} {count}"
                )

    same_len(("windows", "window_device", "window_ts"), "windows")
    same_len(("discoveries", "discovery_device"), "discoveries")
    same_len(("first_ts", "last_ts"), "devices")
    same_len(("peer_keys", "peer_counts"), "peer_keys")
    same_len(("service_keys", "service_counts"), "service_keys")
    same_len(("token_device", "token_hash"), "tokens")
    sched = ("schedule_key", "schedule_device", "schedule_period", "schedule_jitter", "schedule_last")
    same_len((*sched, "schedule_count"), "schedules")
    if out["windows"].shape[1] != len(WINDOW_FEATURES):
        raise BaselineFileError(
            path, f"windows have {out['windows'].shape[1]} features, expected {len(WINDOW_FEATURES)}"
        )
    for nm in ("window_device", "discovery_device", "token_device", "schedule_device"):
        a = out[nm]
        if len(a) and (a.min() < 0 or a.max() >= n_dev):
            raise BaselineFileError(path, f"array {nm!r} refers to a device beyond the {n_dev} listed")
        if nm != "schedule_device" and len(a) > 1 and np.any(np.diff(a) < 0):
            raise BaselineFileError(path, f"array {nm!r} is not grouped by device")
    finite = ("windows", "window_ts", "discoveries", "peer_counts", "service_counts", *sched[2:])
    for nm in finite:
        if not np.all(np.isfinite(out[nm])):
            raise BaselineFileError(path, f"array {nm!r} holds non-finite values")
    for nm in ("first_ts", "last_ts"):
        if np.any(np.isnan(out[nm])):
            raise BaselineFileError(path, f"array {nm!r} holds NaN")
    for nm in ("peer_keys", "service_keys"):
        if len(out[nm]) > 1 and not np.all(out[nm][1:] > out[nm][:-1]):
            raise BaselineFileError(path, f"lookup table {nm!r} is not sorted and unique")
    for nm in ("peer_counts", "service_counts"):
        if np.any(out[nm] <= 0) or np.any(out[nm] != np.round(out[nm])):
            raise BaselineFileError(path, f"array {nm!r} must hold positive window counts")
    if np.any(out["schedule_count"] < 0) or np.any(out["schedule_period"] <= 0):
        raise BaselineFileError(path, "schedules must have positive periods and counts")
    if len(np.unique(out["schedule_key"])) != len(out["schedule_key"]):
        raise BaselineFileError(path, "array 'schedule_key' holds duplicate keys")
    return out


def _build(
    m: dict[str, Any], prof_path: Path, prof_doc: Any, arrays: dict[str, npt.NDArray[Any]]
) -> Baseline:
    c = _Check(prof_path)
    doc = c.obj(prof_doc, "profiles file")
    device_ids = c.strs(doc.get("device_ids"), "device_ids")
    if device_ids != m["device_ids"]:
        raise c.fail("device_ids differ from the manifest's")
    drift_guard = doc.get("drift_guard")
    if not isinstance(drift_guard, bool):
        raise c.fail("drift_guard: expected true or false")
    profiles = c.lst(doc.get("profiles"), "profiles")
    if len(profiles) != len(device_ids):
        raise c.fail(f"{len(profiles)} profiles for {len(device_ids)} devices")
    b = Baseline(device_ids)
    b.drift_guard = drift_guard
    for d, raw in enumerate(profiles):
        what = f"profiles[{d}]"
        e = c.obj(raw, what)
        if c.str_(e.get("device_id"), f"{what}.device_id") != device_ids[d]:
            raise c.fail(f"{what}.device_id differs from device {d} of the manifest")
        p = b.profiles[d]
        p.peers = Counter(dict(c.pairs_int(e.get("peers"), f"{what}.peers")))
        p.peer_names = dict(c.pairs_str(e.get("peer_names"), f"{what}.peer_names"))
        p.names = set(c.strs(e.get("names"), f"{what}.names"))
        p.services = Counter(dict(c.pairs_int(e.get("services"), f"{what}.services")))
        quarantined = c.lst(e.get("quarantined"), f"{what}.quarantined")
        p.quarantined = [c.obj(q, f"{what}.quarantined") for q in quarantined]
        p.capped = c.strs(e.get("capped"), f"{what}.capped")
        if not set(p.capped) <= set(WINDOW_FEATURES):
            raise c.fail(f"{what}.capped names an unknown window feature")
        p.first_ts = float(arrays["first_ts"][d])
        p.last_ts = float(arrays["last_ts"][d])
        for attr in ("networks", "domains", "bare_services", "high_networks"):
            setattr(p, attr, set(c.strs(e.get(attr), f"{what}.{attr}")))
        for attr in ("learn_start", "learn_end"):
            v = e.get(attr)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise c.fail(f"{what}.{attr}: expected a number or null")
            setattr(p, attr, float(v) if v is not None else float("inf"))
        active = e.get("active")
        if not isinstance(active, bool):
            raise c.fail(f"{what}.active: expected true or false")
        p.active = active
        p.groups = c.strs(e.get("groups"), f"{what}.groups")
        overrides = c.obj(e.get("limit_overrides"), f"{what}.limit_overrides")
        for k, v in overrides.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
                raise c.fail(f"{what}.limit_overrides.{k}: expected a positive number")
        p.limit_overrides = {str(k): float(v) for k, v in overrides.items()}
        p.history = [c.obj(h, f"{what}.history") for h in c.lst(e.get("history"), f"{what}.history")]
        for x in p.networks | p.high_networks:
            try:
                ip_from_str(x.split("/")[0])
            except ValueError:
                raise c.fail(f"{what}: {x!r} is not an address or network") from None
        for x in p.bare_services:
            proto, _, port = x.partition("/")
            if not proto or not port.isdigit():
                raise c.fail(f"{what}.bare_services: {x!r} is not a service")
    # windows and discoveries, grouped by device in their original order
    wd, X, wts = arrays["window_device"], arrays["windows"], arrays["window_ts"]
    for d in np.unique(wd).tolist():
        sel = np.flatnonzero(wd == d)
        b.profiles[d].windows = [X[i].copy() for i in sel.tolist()]
        b.profiles[d].window_ts = wts[sel].tolist()
    dd, disc = arrays["discovery_device"], arrays["discoveries"]
    for d in np.unique(dd).tolist():
        b.profiles[d].discoveries = disc[dd == d].tolist()
    # lookup tables (the dictionaries they are built from)
    pk, pc = arrays["peer_keys"], arrays["peer_counts"]
    sk, sc = arrays["service_keys"], arrays["service_counts"]
    b._peer_win = CountTable(dict(zip(pk.tolist(), (int(x) for x in pc.tolist()), strict=True)))
    b._svc_win = CountTable(dict(zip(sk.tolist(), (int(x) for x in sc.tolist()), strict=True)))
    b.rebuild_identity()
    b.reset_clocks()
    names: defaultdict[int, set[str]] = defaultdict(set)
    for raw in c.lst(doc.get("learned_names"), "learned_names"):
        if not isinstance(raw, list) or len(raw) != 2:
            raise c.fail("learned_names: expected [device, [names]] pairs")
        d = c.int_(raw[0], "learned_names")
        if d >= len(device_ids):
            raise c.fail("learned_names: refers to a device beyond those listed")
        names[d] = set(c.strs(raw[1], "learned_names"))
    b._names = names
    tokens: defaultdict[int, set[int]] = defaultdict(set)
    for d, h in zip(arrays["token_device"].tolist(), arrays["token_hash"].tolist(), strict=True):
        tokens[d].add(h)
    b._tokens = tokens
    labels = c.lst(doc.get("schedule_labels"), "schedule_labels")
    if len(labels) != len(arrays["schedule_key"]):
        raise c.fail(f"{len(labels)} schedule labels for {len(arrays['schedule_key'])} schedules")
    pairs = c.pairs_str(labels, "schedule_labels")
    for i, (peer, service) in enumerate(pairs):
        b.periodicity.schedules[int(arrays["schedule_key"][i])] = Schedule(
            device=int(arrays["schedule_device"][i]),
            peer=peer,
            service=service,
            period_s=float(arrays["schedule_period"][i]),
            jitter_s=float(arrays["schedule_jitter"][i]),
            last_ts=float(arrays["schedule_last"][i]),
            count=int(arrays["schedule_count"][i]),
        )
    for raw in c.lst(doc.get("learning_series"), "learning_series"):
        if not isinstance(raw, list) or len(raw) != 5 or not isinstance(raw[4], list):
            raise c.fail("learning_series: expected [key, device, peer, service, [times]] entries")
        key = c.str_(raw[0], "learning_series")
        dev = c.int_(raw[1], "learning_series")
        if not key.isdigit() or dev >= len(device_ids):
            raise c.fail("learning_series: bad key or device")
        times = [float(t) for t in raw[4] if isinstance(t, int | float) and not isinstance(t, bool)]
        if len(times) != len(raw[4]) or not all(np.isfinite(times)):
            raise c.fail("learning_series: times must be finite numbers")
        b.periodicity.restore_learning(
            int(key), dev, c.str_(raw[2], "learning_series"), c.str_(raw[3], "learning_series"), times
        )
    evidence = c.lst(doc.get("names_evidence"), "names_evidence")
    if len(evidence) != len(device_ids) or not all(isinstance(x, bool) for x in evidence):
        raise c.fail("names_evidence: expected one true / false per device")
    b.names_evidence = np.array(evidence, dtype=bool)
    b.rebuild_groups()
    return b


def load_baseline_with_metadata(directory: str | Path) -> tuple[Baseline, dict[str, Any]]:
    """Load a saved baseline and its ``metadata.json`` object, after checking everything.

    Raises
    ------
    BaselineFileError
        Missing, extra, altered or malformed file, unsupported version (one line: file and problem).
    """
    d = Path(directory)
    m, blobs = _manifest(d)
    arrays = _arrays(d / ARRAYS_FILE, blobs[ARRAYS_FILE], m)
    baseline = _build(m, d / PROFILES_FILE, _parse_json(d / PROFILES_FILE, blobs[PROFILES_FILE]), arrays)
    meta = _parse_json(d / METADATA_FILE, blobs[METADATA_FILE])
    if not isinstance(meta, dict):
        raise BaselineFileError(d / METADATA_FILE, "expected a JSON object")
    return baseline, meta


def load_baseline(directory: str | Path) -> Baseline:
    """Load a saved baseline (devices whose learning ended are ready for detection).

    Raises
    ------
    BaselineFileError
        As :func:`load_baseline_with_metadata`.
    """
    return load_baseline_with_metadata(directory)[0]
