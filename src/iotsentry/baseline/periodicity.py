"""Periodicity of connections: learned schedules, broken schedules, and new beacons.

IoT devices check in with their servers on a schedule. While learning, the start times of
connections per (device, peer, service) are kept (bounded); a series whose intervals are
regular (median absolute deviation small against the median) is a *schedule*. During
detection two things are reported:

* a learned schedule that stops while the device is otherwise active ("broken periodicity");
* a new peer contacted on a regular schedule ("beacon": the shape of C&C traffic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.features import _identity_kernels as RK
from iotsentry.features import _window_kernels as K
from iotsentry.features.device_context import PacketContext, mix_keys
from iotsentry.schema import PROTO_NAMES

SESSION_GAP_S = 5.0
"""Connection starts closer than this to the previous one of the same series are merged."""
MAX_TIMES = 256
MAX_NEW_SERIES = 4096
MIN_INTERVALS = 4
MAX_RELATIVE_MAD = 0.2
MIN_PERIOD_S = 10.0
SCHEDULE_MIN_STARTS = 9
SCHEDULE_MIN_SPAN_S = 1800.0
"""A learned schedule must have this many starts over this long before its silence is reported."""


@dataclass
class Schedule:
    """A regular series of connection starts."""

    device: int
    peer: str
    service: str
    period_s: float
    jitter_s: float
    last_ts: float
    count: int


@dataclass
class _Series:
    device: int
    peer: str
    service: str
    times: list[float] = field(default_factory=list)


@lru_cache(maxsize=65536)
def service_label(proto: int, port: int) -> str:
    """``TCP/443`` style label of a service key."""
    return f"{PROTO_NAMES.get(int(proto), str(int(proto)))}/{int(port)}"


def regular_period(times: list[float]) -> tuple[float, float] | None:
    """(median interval, MAD) when the series is regular enough, else None."""
    if len(times) < MIN_INTERVALS + 1:
        return None
    iv = np.diff(np.asarray(times))
    med = float(np.median(iv))
    if med < MIN_PERIOD_S:
        return None
    mad = float(np.median(np.abs(iv - med)))
    if mad > MAX_RELATIVE_MAD * med:
        return None
    return med, mad


def connection_starts(
    ts: npt.NDArray[np.float64], ctx: PacketContext, valid: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Keys (device, peer, service) and packet rows of connection starts in a batch.

    Outbound initiations (TCP SYN, UDP, ICMP echo) of the same series closer than
    ``SESSION_GAP_S`` to the previous one are merged into one start.
    """
    rows = np.flatnonzero(valid & ctx.initiation)
    if not len(rows):
        return np.zeros(0, np.uint64), rows
    key = mix_keys(
        ctx.device[rows].astype(np.uint64),
        ctx.peer_hi[rows],
        ctx.peer_lo[rows],
        (ctx.proto[rows].astype(np.uint64) << np.uint64(16)) | ctx.service[rows].astype(np.uint64),
    )
    order = np.lexsort((ts[rows], key))
    k, r = key[order], rows[order]
    t = ts[r]
    start = np.ones(len(k), dtype=bool)
    start[1:] = (k[1:] != k[:-1]) | (t[1:] - t[:-1] > SESSION_GAP_S)
    return k[start], r[start]


class PeriodicityTracker:
    """Learns schedules, then watches for broken schedules and new beacons."""

    def __init__(self) -> None:
        self._learn: dict[int, _Series] = {}
        self._new: dict[int, _Series] = {}
        self.schedules: dict[int, Schedule] = {}
        self._reported_beacons: set[int] = set()
        self._reported_broken: set[int] = set()
        self._svc_last: dict[tuple[int, str], float] = {}
        self._learn_of: dict[int, list[int]] = {}
        """Device -> keys of its learning series (a learning end touches only its own)."""
        self._sched_of: dict[int, list[int]] = {}
        self._indexed = 0
        """Device -> keys of its schedules, for the first ``_indexed`` schedules (they are only
        ever added, also by whoever loads a baseline)."""

    @staticmethod
    def _append(store: dict[int, _Series], key: int, series: _Series, t: float, limit: int | None) -> None:
        s = store.get(key)
        if s is None:
            if limit is not None and len(store) >= limit:
                return
            s = store[key] = series
        if s.times and t - s.times[-1] <= SESSION_GAP_S:
            return
        s.times.append(t)
        if len(s.times) > MAX_TIMES:
            del s.times[: len(s.times) - MAX_TIMES]

    def learn(
        self, keys: npt.NDArray[np.uint64], ts: list[float], labels: list[tuple[int, str, str]]
    ) -> None:
        """Record connection starts of the learning period."""
        for k, t, (dev, peer, svc) in zip(keys.tolist(), ts, labels, strict=True):
            if k not in self._learn:
                self._learn_of.setdefault(dev, []).append(k)
            self._append(self._learn, k, _Series(dev, peer, svc), t, None)

    def freeze(self) -> None:
        """Turn regular learned series into schedules (every device's learning ended)."""
        self.freeze_devices(None)

    def freeze_devices(self, devices: set[int] | None) -> None:
        """Turn the regular learned series of these devices (``None``: all) into schedules; their
        learning series are dropped."""
        if devices is None:
            done = list(self._learn)
            self._learn_of = {}
        else:
            done = [k for d in sorted(devices) for k in self._learn_of.pop(d, ()) if k in self._learn]
        for k in done:
            s = self._learn.pop(k)
            reg = regular_period(s.times)
            long_enough = (
                len(s.times) >= SCHEDULE_MIN_STARTS and s.times[-1] - s.times[0] >= SCHEDULE_MIN_SPAN_S
            )
            if reg is not None and long_enough:
                self.schedules[k] = Schedule(
                    s.device, s.peer, s.service, reg[0], reg[1], s.times[-1], len(s.times)
                )

    def learning_series(self) -> list[tuple[int, int, str, str, list[float]]]:
        """(key, device, peer, service, start times) of the series still learning."""
        return [(k, s.device, s.peer, s.service, list(s.times)) for k, s in self._learn.items()]

    def restore_learning(self, key: int, device: int, peer: str, service: str, times: list[float]) -> None:
        """Put back a learning series (a restored baseline whose device still learns)."""
        if int(key) not in self._learn:
            self._learn_of.setdefault(int(device), []).append(int(key))
        self._learn[int(key)] = _Series(int(device), peer, service, [float(t) for t in times][-MAX_TIMES:])

    def observe(
        self,
        keys: npt.NDArray[np.uint64],
        ts: list[float],
        labels: list[tuple[int, str, str]],
        known: list[bool],
    ) -> list[tuple[str, float, _Series | Schedule]]:
        """Account detection-time starts; returns new ``("beacon", ts, series)`` findings."""
        out: list[tuple[str, float, _Series | Schedule]] = []
        for k, t, (dev, peer, svc), kn in zip(keys.tolist(), ts, labels, known, strict=True):
            self._svc_last[(dev, svc)] = max(self._svc_last.get((dev, svc), t), t)
            sch = self.schedules.get(k)
            if sch is not None:
                sch.last_ts = max(sch.last_ts, t)
                continue
            if kn:
                continue
            self._append(self._new, k, _Series(dev, peer, svc), t, MAX_NEW_SERIES)
            s = self._new.get(k)
            if s is not None and k not in self._reported_beacons and regular_period(s.times) is not None:
                self._reported_beacons.add(k)
                out.append(("beacon", t, s))
        return out

    def observe_starts(
        self,
        keys: npt.NDArray[np.uint64],
        ts: npt.NDArray[np.float64],
        device: npt.NDArray[np.int32],
        proto: npt.NDArray[np.uint8],
        service: npt.NDArray[np.uint16],
        label: Callable[[int], tuple[int, str, str]],
        known: npt.NDArray[np.bool_],
    ) -> list[tuple[str, float, _Series | Schedule]]:
        """:meth:`observe` of a batch's starts given as columns (``label(j)``: the series label of
        start ``j``, asked only for the series it creates). Same state and findings: the last
        start per (device, service) and per schedule is a maximum, taken per distinct key; only
        the starts of unknown series are walked one by one, and a series' regularity is tested
        only when a start was added to it."""
        out: list[tuple[str, float, _Series | Schedule]] = []
        n = len(keys)
        if not n:
            return out
        psvc = (proto.astype(np.uint64) << np.uint64(16)) | service.astype(np.uint64)
        dev64 = device.astype(np.int64)
        inv, _, _, first = K.intern(dev64.view(np.uint64), psvc, True)
        last = RK.group_max(inv, ts, len(first))
        svc_last = self._svc_last
        for d, pr, sv, t in zip(
            dev64[first].tolist(), proto[first].tolist(), service[first].tolist(), last.tolist(), strict=True
        ):
            k2 = (d, service_label(pr, sv))
            svc_last[k2] = max(svc_last.get(k2, t), t)
        if self.schedules:
            kinv, uk, _, _ = K.intern(keys, keys, False)
            kmax = RK.group_max(kinv, ts, len(uk))
            for k, t in zip(uk.tolist(), kmax.tolist(), strict=True):
                sch = self.schedules.get(k)
                if sch is not None:
                    sch.last_ts = max(sch.last_ts, t)
        todo = np.flatnonzero(~known)
        if not len(todo):
            return out
        kl, tl = keys.tolist(), ts.tolist()
        store = self._new
        for j in todo.tolist():
            k = kl[j]
            if k in self.schedules:
                continue
            t = tl[j]
            s = store.get(k)
            if s is None:
                if len(store) >= MAX_NEW_SERIES:
                    continue
                dev, peer, svc = label(j)
                s = store[k] = _Series(dev, peer, svc)
            elif s.times and t - s.times[-1] <= SESSION_GAP_S:
                continue  # merged into the previous start: the series did not change
            s.times.append(t)
            if len(s.times) > MAX_TIMES:
                del s.times[: len(s.times) - MAX_TIMES]
            if k not in self._reported_beacons and regular_period(s.times) is not None:
                self._reported_beacons.add(k)
                out.append(("beacon", t, s))
        return out

    def broken(self, last_seen: Mapping[int, float]) -> list[tuple[str, float, Schedule]]:
        """Schedules silent for more than three periods (plus two minutes) on active devices.

        ``last_seen`` maps each device active in the batch to the time of its latest packet
        there: a schedule is broken when the device itself was still sending after the deadline,
        which does not depend on where a caller cuts its batches. Silence is judged per (device,
        service): a device that moves its check-ins to another server of the same service (NTP
        pools, CDNs) keeps its schedule.
        """
        out: list[tuple[str, float, Schedule]] = []
        for k in self._schedule_keys(set(last_seen)):
            sch = self.schedules[k]
            if k in self._reported_broken:
                continue
            now = last_seen[sch.device]
            last = max(sch.last_ts, self._svc_last.get((sch.device, sch.service), sch.last_ts))
            if now - last > 3.0 * sch.period_s + 120.0:
                self._reported_broken.add(k)
                out.append(("broken", now, sch))
        return out

    def _schedule_keys(self, devices: set[int]) -> list[int]:
        """Keys of the schedules of ``devices`` (by device; each device's in the order they were
        made)."""
        if self._indexed < len(self.schedules):
            for k, s in list(self.schedules.items())[self._indexed :]:
                self._sched_of.setdefault(s.device, []).append(k)
            self._indexed = len(self.schedules)
        return [k for d in sorted(devices) for k in self._sched_of.get(d, ())]

    def device_schedules(self, device: int) -> list[Schedule]:
        """The learned schedules of one device."""
        return [self.schedules[k] for k in self._schedule_keys({device})]


def last_packet_of_devices(
    ts: npt.NDArray[np.float64], device: npt.NDArray[np.signedinteger[Any]]
) -> dict[int, float]:
    """Each known device's latest packet time among ``ts`` (rows with device < 0 ignored)."""
    known = device >= 0
    if not known.any():
        return {}
    devs, inv = np.unique(device[known], return_inverse=True)
    last = np.full(len(devs), -np.inf)
    np.maximum.at(last, inv, ts[known])
    return dict(zip(devs.tolist(), last.tolist(), strict=True))
