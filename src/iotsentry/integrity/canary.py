"""Canary replay: does the detector still see known attacks on a device's identity?

A canary is a short synthetic, clearly marked attack snippet per class (:data:`CANARY_CLASSES`:
port scan, C&C beacon to a new peer, SSH/telnet brute force, UDP flood, DNS-tunnel-like
queries), built as frames with the device's MAC and IPv4 address on one side and an address of
TEST-NET-3 (``203.0.113.0/24``, RFC 5737: never routed) on the other, IPv4 identification
:data:`CANARY_IP_ID` on every packet and :data:`CANARY_MARKER` in every payload. Frames are
only ever written to memory or a private temporary file to decode them: nothing is sent.

:func:`run_canaries` feeds each class as a :class:`CanaryCase` to a caller-supplied
``detect(case) -> Verdict``; :func:`profile_detect_fn` adapts the site's
:class:`~iotsentry.detectors.profile.ProfileDetector` (the path ``pipeline.py`` runs: evaluate,
findings, schedule findings) and scores each case on a deep copy, so neither the baseline nor
the detector's streaming state learns anything from a canary. With ``guard=`` (e.g. the
baseline) the run proves that: a digest of the guarded state is taken before and after, and a
change raises :class:`CanaryLeakError`. A class that is missed raises a ``detector-blind``
integrity alert (``event_type="integrity"``); verdicts on canary traffic are reported as alerts
with ``event_type="canary"`` and ``extra["canary"] = True``, never as ordinary alerts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
import math
import os
import random
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.alerts.policy import integrity_alert
from iotsentry.capture.reader import read_all
from iotsentry.detectors.profile import ProfileDetector
from iotsentry.errors import IotSentryError
from iotsentry.features.device_context import DeviceIndex, packet_context
from iotsentry.features.windows import WINDOW_FEATURES
from iotsentry.integrity.audit import AuditLog
from iotsentry.schema import Alert, Device, PacketBatch, ipv4_of, is_ipv4, mac_from_str

__all__ = [
    "CANARY_CLASSES",
    "CANARY_IP_ID",
    "CANARY_MARKER",
    "CANARY_NET",
    "CanaryCase",
    "CanaryLeakError",
    "CanaryReport",
    "ClassCoverage",
    "DetectFn",
    "DeviceIdentity",
    "Verdict",
    "canary_batch",
    "canary_frames",
    "canary_mask",
    "canary_pcap_bytes",
    "is_canary_alert",
    "profile_detect_fn",
    "run_canaries",
    "state_digest",
]

CANARY_NET = ipaddress.IPv4Network("203.0.113.0/24")
"""TEST-NET-3 (RFC 5737): every canary peer lives here."""
CANARY_MARKER = b"IOTSENTRY-CANARY"
CANARY_IP_ID = 0xCA9A
"""IPv4 identification of every canary packet."""
CANARY_CLASSES = ("port-scan", "c2-beacon", "brute-force", "flood", "dns-tunnel")
GATEWAY_MAC = "02:00:5e:00:71:01"
"""Next-hop MAC used when the caller knows no gateway (locally administered)."""

_PEER = {
    "port-scan": "203.0.113.10",
    "c2-beacon": "203.0.113.66",
    "brute-force": "203.0.113.22",
    "flood": "203.0.113.80",
    "dns-tunnel": "203.0.113.53",
}


class CanaryLeakError(IotSentryError):
    """A canary run changed state that must never learn from canaries (e.g. the baseline)."""


@dataclass(frozen=True)
class DeviceIdentity:
    """Who the canary impersonates: the device's MAC and IPv4 address, and its next hop."""

    device_id: str
    mac: str
    ip: str
    gateway_mac: str = GATEWAY_MAC

    @classmethod
    def from_device(cls, device: Device, gateway: Device | None = None) -> DeviceIdentity:
        """From inventory records (the device's first IPv4 address; the gateway's MAC)."""
        v4 = [a for a in device.ips if isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address)]
        if device.mac is None or not v4:
            raise ValueError(f"device {device.device_id} needs a MAC and an IPv4 address for canaries")
        gw = gateway.mac if gateway is not None and gateway.mac else GATEWAY_MAC
        return cls(device.device_id, device.mac, v4[0], gw)


# -- frames ------------------------------------------------------------------------------------------
class _Frames:
    """Builds Ethernet/IPv4 frames between the device and one canary peer."""

    def __init__(self, ident: DeviceIdentity, peer: str) -> None:
        self.dev_mac = mac_from_str(ident.mac).to_bytes(6, "big")
        self.gw_mac = mac_from_str(ident.gateway_mac).to_bytes(6, "big")
        self.dev_ip = ipaddress.IPv4Address(ident.ip).packed
        self.peer_ip = ipaddress.IPv4Address(peer).packed
        self.out: list[tuple[float, bytes]] = []

    def _ip(self, outbound: bool, proto: int, l4: bytes) -> bytes:
        src, dst = (self.dev_ip, self.peer_ip) if outbound else (self.peer_ip, self.dev_ip)
        hdr = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), CANARY_IP_ID, 0x4000, 64, proto, 0, src, dst
        )
        csum = _checksum(hdr)
        hdr = hdr[:10] + struct.pack(">H", csum) + hdr[12:]
        eth = (self.gw_mac + self.dev_mac) if outbound else (self.dev_mac + self.gw_mac)
        return eth + b"\x08\x00" + hdr + l4

    def tcp(self, t: float, outbound: bool, sport: int, dport: int, flags: int, payload: bytes = b"") -> None:
        l4 = struct.pack(">HHIIBBHHH", sport, dport, 1, 1 if flags & 0x10 else 0, 5 << 4, flags, 64240, 0, 0)
        self.out.append((t, self._ip(outbound, 6, l4 + payload)))

    def udp(self, t: float, outbound: bool, sport: int, dport: int, payload: bytes) -> None:
        l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
        self.out.append((t, self._ip(outbound, 17, l4)))

    def session(self, t: float, sport: int, dport: int, request: bytes, reply: bytes) -> float:
        """A short TCP session opened by the device; returns the time after it."""
        self.tcp(t, True, sport, dport, 0x02)
        self.tcp(t + 0.02, False, dport, sport, 0x12)
        self.tcp(t + 0.021, True, sport, dport, 0x10)
        self.tcp(t + 0.03, True, sport, dport, 0x18, request)
        self.tcp(t + 0.08, False, dport, sport, 0x18, reply)
        self.tcp(t + 0.09, True, sport, dport, 0x11)
        self.tcp(t + 0.11, False, dport, sport, 0x11)
        return t + 0.12


def _checksum(data: bytes) -> int:
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _dns_query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 16, 1)  # TXT


def canary_frames(
    attack_class: str, identity: DeviceIdentity, start_ts: float, seed: int = 0
) -> list[tuple[float, bytes]]:
    """The (timestamp, Ethernet frame) list of one canary class, in time order.

    Raises
    ------
    ValueError
        For an unknown class.
    """
    if attack_class not in _PEER:
        raise ValueError(f"unknown canary class {attack_class!r}; known: {', '.join(CANARY_CLASSES)}")
    rng = random.Random(f"{seed}:{attack_class}")
    f = _Frames(identity, _PEER[attack_class])
    t = float(start_ts)
    tag = CANARY_MARKER + f" {attack_class}".encode()
    if attack_class == "port-scan":  # SYN probes to 300 ports of one host in 15 s, unanswered
        for k, port in enumerate(rng.sample(range(1, 10000), 300)):
            f.tcp(t + 0.05 * k, True, 40000 + k % 20000, port, 0x02)
    elif attack_class == "c2-beacon":  # a new bare-IP peer contacted every 30 s for 10 min
        for k in range(20):
            f.session(t + 30.0 * k, 49152 + k, 8443, tag + f" beacon {k}".encode(), tag + b" task: none")
    elif attack_class == "brute-force":  # 90 SSH and 60 telnet logins to one host in about 75 s
        for k in range(150):
            port = 22 if k < 90 else 23
            guess = f" login root:{rng.randrange(10**6):06d}".encode()
            f.session(t + 0.5 * k, 50000 + k, port, tag + guess, b"Permission denied " + CANARY_MARKER)
    elif attack_class == "flood":  # 6000 UDP datagrams of 512 bytes in 20 s to one port
        body = (tag * 40)[:512]
        for k in range(6000):
            f.udp(t + k / 300.0, True, 53000 + k % 1000, 80, body)
    elif attack_class == "dns-tunnel":  # 400 TXT queries with long random labels in 60 s
        alphabet = "abcdefghijklmnopqrstuvwxyz234567"
        for k in range(400):
            label = "".join(rng.choice(alphabet) for _ in range(60))
            qid = rng.randrange(65536)
            name = f"{label}.{k}.iotsentry-canary.invalid"
            f.udp(t + 0.15 * k, True, 33000 + k, 53, _dns_query(qid, name))
            f.udp(t + 0.15 * k + 0.03, False, 53, 33000 + k, _dns_query(qid, name)[:12] + tag)
    return sorted(f.out, key=lambda x: x[0])


def canary_pcap_bytes(frames: Sequence[tuple[float, bytes]]) -> bytes:
    """A libpcap file (Ethernet, microseconds) holding ``frames``."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data in frames:
        sec = math.floor(ts)
        usec = min(round((ts - sec) * 1e6), 999_999)
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    return b"".join(out)


def canary_batch(attack_class: str, identity: DeviceIdentity, start_ts: float, seed: int = 0) -> PacketBatch:
    """The canary of one class decoded by the ordinary capture reader (with raw bytes)."""
    data = canary_pcap_bytes(canary_frames(attack_class, identity, start_ts, seed))
    fd, tmp = tempfile.mkstemp(prefix="iotsentry-canary-", suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return read_all(tmp, with_raw=True)
    finally:
        os.unlink(tmp)


def canary_mask(batch: PacketBatch) -> npt.NDArray[np.bool_]:
    """Rows of ``batch`` that are canary packets (a TEST-NET-3 endpoint), to keep them out of
    anything that learns (baselines, drift references, allow-lists)."""
    net = int(CANARY_NET.network_address)
    out = np.zeros(len(batch), dtype=bool)
    for hi, lo in ((batch.src_ip_hi, batch.src_ip_lo), (batch.dst_ip_hi, batch.dst_ip_lo)):
        out |= is_ipv4(hi, lo) & ((ipv4_of(lo) & np.uint32(0xFFFFFF00)) == np.uint32(net))
    return out


def is_canary_alert(alert: Alert) -> bool:
    """Whether an alert is a verdict on canary traffic (never to be mixed with real alerts)."""
    return alert.event_type == "canary" or bool(alert.extra.get("canary"))


# -- running -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryCase:
    """One canary class injected on one device: what a detection function is given."""

    attack_class: str
    identity: DeviceIdentity
    batch: PacketBatch
    start_ts: float
    end_ts: float
    canary_rows: npt.NDArray[np.bool_]
    """Rows of ``batch`` that are canary packets (all of them unless background was mixed in)."""


@dataclass(frozen=True)
class Verdict:
    """A detector's answer on a case: detected when ``score > threshold`` unless ``detected`` is set."""

    score: float
    threshold: float
    detected: bool | None = None
    category: str = ""
    reason: str = ""

    @property
    def hit(self) -> bool:
        """Whether the canary was detected."""
        return bool(self.score > self.threshold) if self.detected is None else self.detected


DetectFn = Callable[[CanaryCase], Verdict]


@dataclass(frozen=True)
class ClassCoverage:
    """Outcome for one canary class."""

    attack_class: str
    detected: bool
    score: float
    threshold: float
    category: str = ""
    reason: str = ""
    packets: int = 0


@dataclass
class CanaryReport:
    """Per-class coverage of one run, the integrity alerts it raised and its marked canary alerts."""

    run_id: str
    device_id: str
    ts: float
    coverage: dict[str, ClassCoverage]
    alerts: list[Alert] = field(default_factory=list)
    """``detector-blind`` integrity alerts (one per missed class)."""
    canary_alerts: list[Alert] = field(default_factory=list)
    """Verdicts on canary traffic (``event_type="canary"``): never real alerts."""
    guard_digest: str | None = None

    @property
    def missed(self) -> list[str]:
        """Classes the detector did not detect."""
        return [c for c, v in self.coverage.items() if not v.detected]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{class: {"detected", "score", "threshold"}}`` (JSON-ready; infinities as strings)."""
        return {
            c: {"detected": v.detected, "score": _num(v.score), "threshold": _num(v.threshold)}
            for c, v in self.coverage.items()
        }

    def audit_details(self) -> dict[str, Any]:
        """Details for an ``canary.result`` audit record."""
        return {
            "run_id": self.run_id,
            "device_id": self.device_id,
            "missed": self.missed,
            "coverage": self.as_dict(),
        }


def _num(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(x)


def inject(background: PacketBatch | None, canary: PacketBatch) -> tuple[PacketBatch, npt.NDArray[np.bool_]]:
    """``canary`` mixed into ``background`` in time order, and which rows are canary packets."""
    if background is None or not len(background):
        return canary, np.ones(len(canary), dtype=bool)
    bg = background if (background.raw is None) == (canary.raw is None) else PacketBatch(background.columns)
    cn = canary if bg.raw is not None or canary.raw is None else PacketBatch(canary.columns)
    both = PacketBatch.concat([bg, cn])
    mark = np.concatenate([np.zeros(len(bg), bool), np.ones(len(cn), bool)])
    order = np.argsort(both.ts, kind="stable")
    return both.take(order), mark[order]


def run_canaries(
    detect: DetectFn,
    identity: DeviceIdentity,
    *,
    start_ts: float | None = None,
    classes: Sequence[str] = CANARY_CLASSES,
    background: PacketBatch | None = None,
    guard: object | None = None,
    site_id: str = "default",
    detector_name: str = "detector",
    audit: AuditLog | None = None,
    seed: int = 0,
) -> CanaryReport:
    """Replay each canary class on ``identity`` through ``detect`` and report its coverage.

    Parameters
    ----------
    detect
        ``detect(case) -> Verdict``; must not learn from the case (see :func:`profile_detect_fn`).
    identity
        The device the canaries impersonate.
    start_ts
        Time of the first canary packet of each class (default: now).
    classes
        Which classes to replay.
    background
        Real traffic to mix each canary into (optional).
    guard
        State that must not change (e.g. the :class:`~iotsentry.baseline.profile.Baseline`);
        checked with :func:`state_digest` before and after the run.
    site_id, detector_name
        Written into the alerts.
    audit
        When given, the result is appended as a ``canary.result`` record.
    seed
        Seed of the random parts of the canaries (ports, labels).

    Raises
    ------
    CanaryLeakError
        ``guard`` changed during the run.
    """
    t0 = time.time() if start_ts is None else float(start_ts)
    before = state_digest(guard) if guard is not None else None
    run_id = uuid.uuid4().hex[:16]
    report = CanaryReport(run_id, identity.device_id, t0, {}, guard_digest=before)
    for cls in classes:
        canary = canary_batch(cls, identity, t0, seed)
        batch, rows = inject(background, canary)
        case = CanaryCase(cls, identity, batch, t0, float(canary.ts.max()), rows)
        v = detect(case)
        hit = v.hit
        report.coverage[cls] = ClassCoverage(
            cls, hit, float(v.score), float(v.threshold), v.category, v.reason, len(canary)
        )
        marks = {"canary": True, "canary_class": cls, "canary_run": run_id}
        if hit:
            report.canary_alerts.append(
                integrity_alert(
                    v.category or cls,
                    f"canary {cls} on {identity.device_id} detected: {v.reason or f'score {v.score:.3g}'}",
                    ts=t0,
                    device_id=identity.device_id,
                    detector=detector_name,
                    score=_finite(v.score),
                    threshold=_finite(v.threshold),
                    site_id=site_id,
                    event_type="canary",
                    extra=marks,
                )
            )
        else:
            why = (
                f"{detector_name} missed the {cls} canary injected on {identity.device_id}: "
                f"score {v.score:.3g} not above threshold {v.threshold:.3g}; the detector is blind "
                f"to this attack class on this device"
            )
            report.alerts.append(
                integrity_alert(
                    "detector-blind",
                    why,
                    ts=t0,
                    device_id=identity.device_id,
                    detector="canary",
                    score=1.0,
                    threshold=0.0,
                    site_id=site_id,
                    extra={
                        **marks,
                        "canary": False,
                        "detector": detector_name,
                        "detector_score": _num(v.score),
                        "detector_threshold": _num(v.threshold),
                    },
                )
            )
    if guard is not None:
        after = state_digest(guard)
        if after != before:
            raise CanaryLeakError(f"canary run {run_id} changed the guarded state ({type(guard).__name__})")
    if audit is not None:
        audit.append("canary.result", identity.device_id, report.audit_details(), ts=t0)
    return report


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float(np.sign(x) * np.finfo(np.float64).max)


# -- the profile detector ------------------------------------------------------------------------------
def profile_detect_fn(
    detector: ProfileDetector,
    index: DeviceIndex,
    ip_names: Mapping[str, str] | None = None,
    *,
    threshold: float = 1.0,
) -> DetectFn:
    """A detection function running the site's fitted profile detector as ``pipeline.py`` does.

    Each case is scored on a deep copy of ``detector`` (so its baseline, periodicity and
    slow-scan state never see the canary): ``evaluate`` -> window ``findings`` + ``schedule_findings``.
    The verdict's score is the largest window score of the device's canary windows or, for
    findings about the canary (a TEST-NET-3 peer, or a window finding), score / threshold of
    the finding; ``threshold`` (1: the detector's own limit) decides detection.
    """
    names = dict(ip_names or {})
    window_feats = set(WINDOW_FEATURES)

    def detect(case: CanaryCase) -> Verdict:
        det = copy.deepcopy(detector)
        dev = index.ids.index(case.identity.device_id)
        ctx = packet_context(case.batch, index)
        _scores, table, wscores = det.evaluate(case.batch, ctx, names)
        canary_windows = set(ctx.window[case.canary_rows & (ctx.device == dev)].tolist())
        mine = np.array(
            [
                int(d) == dev and int(w) in canary_windows
                for d, w in zip(table.device.tolist(), table.window.tolist(), strict=True)
            ],
            bool,
        )
        best = float(wscores[mine].max()) if mine.any() else 0.0
        found = det.findings(case.batch, ctx, table, np.where(mine, wscores, 0.0))
        found += det.schedule_findings(case.batch, ctx, names, case.start_ts)
        ours = [
            f for f in found if f.device == dev and (f.feature in window_feats or _in_canary_net(f.peer_ip))
        ]
        category, reason = "", ""
        for fd in ours:
            s = fd.score / fd.threshold if fd.threshold > 0 else fd.score
            if s >= best or not category:
                best, category, reason = max(best, s), fd.category, fd.reason
        return Verdict(score=best, threshold=threshold, category=category, reason=reason)

    return detect


def _in_canary_net(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in CANARY_NET
    except ValueError:
        return False


# -- state digests -----------------------------------------------------------------------------------
def state_digest(obj: object) -> str:
    """SHA-256 over the whole reachable state of ``obj`` (attributes, containers, arrays).

    Dictionaries and sets are hashed independently of their order; cycles are cut.
    """
    h = hashlib.sha256()
    _feed(h, obj, set())
    return h.hexdigest()


def _feed(h: Any, o: object, active: set[int]) -> None:
    if o is None or isinstance(o, bool | int | float | complex | str | bytes):
        h.update(f"{type(o).__name__}:{o!r};".encode())
        return
    if isinstance(o, np.generic):
        h.update(f"np:{o.dtype}:{o.item()!r};".encode())
        return
    if (callable(o) and not hasattr(o, "__dict__")) or isinstance(o, type):
        h.update(f"callable:{getattr(o, '__qualname__', type(o).__name__)};".encode())
        return
    if id(o) in active:
        h.update(b"<cycle>;")
        return
    active.add(id(o))
    try:
        if isinstance(o, np.ndarray):
            h.update(f"nd:{o.dtype}:{o.shape};".encode())
            if o.dtype == object:
                for x in o.ravel().tolist():
                    _feed(h, x, active)
            else:
                h.update(np.ascontiguousarray(o).tobytes())
        elif isinstance(o, Mapping):
            h.update(f"map:{type(o).__name__}:{len(o)};".encode())
            for kd, vd in sorted((_sub(k, active), _sub(v, active)) for k, v in o.items()):
                h.update(kd.encode() + vd.encode())
        elif isinstance(o, set | frozenset):
            h.update(f"set:{len(o)};".encode())
            for d in sorted(_sub(x, active) for x in o):
                h.update(d.encode())
        elif isinstance(o, list | tuple) or type(o).__name__ == "deque":
            h.update(f"seq:{type(o).__name__}:{len(o)};".encode())  # type: ignore[arg-type]
            for x in o:  # type: ignore[attr-defined]
                _feed(h, x, active)
        else:
            h.update(f"obj:{type(o).__qualname__};".encode())
            state: dict[str, Any] = {}
            if dataclasses.is_dataclass(o):
                state.update({f.name: getattr(o, f.name) for f in dataclasses.fields(o)})
            state.update(getattr(o, "__dict__", {}))
            for cls in type(o).__mro__:
                for s in getattr(cls, "__slots__", ()):
                    if hasattr(o, s):
                        state[s] = getattr(o, s)
            for k in sorted(state):
                h.update(k.encode() + b"=")
                _feed(h, state[k], active)
    finally:
        active.discard(id(o))


def _sub(o: object, active: set[int]) -> str:
    h = hashlib.sha256()
    _feed(h, o, active)
    return h.hexdigest()
