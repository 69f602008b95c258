"""Alert policy: the only place that turns detector scores into :class:`~iotsentry.schema.Alert`.

The policy decides the severity of an alert (from how far the score exceeds its threshold and
from the category), drops alerts below the configured minimum severity, fills in a stable
``flow_id`` for correlation, and de-duplicates repeats: the same device, detector, category and
destination within ``dedup_window_s`` seconds of a kept alert is not a new alert; it updates the
kept alert's ``extra["count"]``, ``extra["first_ts"]`` and ``extra["last_ts"]`` instead.

Notices are not alerts: a verdict whose category is a notice category (``silence``,
``offline``: :data:`~iotsentry.alerts.incidents.NOTICE_CATEGORIES`) becomes a record with
``event_type == "notice"`` and severity 4 (info), is never dropped by ``min_severity``, is
de-duplicated like an alert, and is counted apart (:attr:`AlertPolicy.notices`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from iotsentry.alerts.incidents import NOTICE_CATEGORIES
from iotsentry.schema import Alert

HIGH, MEDIUM, LOW, INFO = 1, 2, 3, 4
"""Alert severities (EVE convention: 1 is the most severe); 4 (info) is for notices only."""

CATEGORY_BOOST: dict[str, int] = {"flood": 1, "scan": 1, "slow-scan": 1, "brute-force": 1, "c2": 2}
"""How many severity levels a category starts above the score-based level."""


def severity_for(ratio: float, category: str, boost: Mapping[str, int] = CATEGORY_BOOST) -> int:
    """Severity from the score/threshold ratio and the category.

    ``ratio >= 3`` is high (1), ``>= 1.5`` medium (2), anything else low (3); the category's
    boost (e.g. ``flood`` and ``scan`` one level, ``c2`` two) is then subtracted, never going
    above high.
    """
    base = HIGH if ratio >= 3.0 else MEDIUM if ratio >= 1.5 else LOW
    return max(HIGH, base - int(boost.get(category.lower(), 0)))


def score_ratio(score: float, threshold: float) -> float:
    """How far ``score`` is beyond ``threshold``: ``score / threshold`` for a positive threshold.

    For a threshold <= 0 (scores are not always positive) the same quantity is generalised as
    ``1 + (score - threshold) / |threshold|``; for a zero threshold any positive excess is
    infinite and anything else is 1.
    """
    if threshold > 0:
        return score / threshold
    if threshold == 0:
        return math.inf if score > 0 else 1.0
    return 1.0 + (score - threshold) / abs(threshold)


def dedup_key(device_id: str, detector: str, category: str, dest_ip: str, dest_port: int) -> str:
    """The de-duplication key of an alert: an unambiguous JSON list of its identifying fields."""
    enc = _json_str
    return f"[{enc(device_id)},{enc(detector)},{enc(category)},{enc(dest_ip)},{int(dest_port)}]"


_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
"""A string as ``json.dumps`` writes it (ASCII, quoted): the key without the encoder's overhead."""


def alert_dedup_key(alert: Alert) -> str:
    """``alert.extra["dedup_key"]`` when the policy set one, else :func:`dedup_key` of its fields."""
    key = alert.extra.get("dedup_key") if alert.extra else None
    if isinstance(key, str) and key:
        return key
    return dedup_key(alert.device_id, alert.detector, alert.category, alert.dest_ip, alert.dest_port)


def flow_id_for(proto: str, src_ip: str, src_port: int, dest_ip: str, dest_port: int) -> int:
    """A stable, positive 63-bit flow id from the 5-tuple (blake2b, 8 bytes).

    The two endpoints are ordered first, so both directions of a conversation share the id.
    Returns 0 when neither address is known (a device-level alert has no flow).
    """
    if not src_ip and not dest_ip:
        return 0
    a = f"{src_ip}|{int(src_port)}"
    b = f"{dest_ip}|{int(dest_port)}"
    lo, hi = sorted((a, b))
    digest = hashlib.blake2b(f"{proto.upper()}|{lo}|{hi}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
    return value or 1


class AlertPolicy:
    """Turns detector verdicts into de-duplicated, graded alerts.

    Parameters
    ----------
    site_id
        Written into every alert.
    dedup_window_s
        A repeat of a kept alert (same device, detector, category, destination) whose time is
        within this many seconds of the kept alert's timestamp is folded into it. The window is
        fixed from the kept alert (not sliding), so a persistent behaviour re-alerts once per
        window. A repeat that is *more severe* than the kept alert is never folded.
    min_severity
        Alerts whose severity number is above this (less severe) are dropped: 3 keeps all,
        2 keeps medium and high, 1 keeps only high. Notices are never dropped.
    category_boost
        Per-category severity boost (defaults to :data:`CATEGORY_BOOST`).
    """

    def __init__(
        self,
        site_id: str = "default",
        dedup_window_s: float = 300.0,
        min_severity: int = 3,
        category_boost: Mapping[str, int] | None = None,
    ) -> None:
        if dedup_window_s < 0:
            raise ValueError("dedup_window_s must be >= 0")
        if min_severity not in (HIGH, MEDIUM, LOW):
            raise ValueError("min_severity must be 1, 2 or 3")
        self.site_id = site_id
        self.dedup_window_s = float(dedup_window_s)
        self.min_severity = int(min_severity)
        boost = CATEGORY_BOOST if category_boost is None else category_boost
        self.category_boost: dict[str, int] = {k.lower(): int(v) for k, v in boost.items()}
        self._kept: list[Alert] = []
        self._latest: dict[str, Alert] = {}
        self.suppressed = 0
        """How many alerts were folded into a kept one."""
        self.notices = 0
        """How many notices were kept (they are in :meth:`alerts` too, with ``event_type "notice"``)."""

    def make(
        self,
        *,
        ts: float,
        device_id: str,
        detector: str,
        detector_version: str,
        score: float,
        threshold: float,
        category: str,
        reason: str,
        src_ip: str = "",
        src_port: int = 0,
        dest_ip: str = "",
        dest_port: int = 0,
        proto: str = "",
        flow_id: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> Alert | None:
        """Grade and de-duplicate one verdict.

        Returns
        -------
        Alert or None
            The new alert (a notice for a notice category), or ``None`` when it was below
            ``min_severity`` or folded into an earlier alert (whose ``extra["count"]`` /
            ``extra["last_ts"]`` were updated).

        Raises
        ------
        ValueError
            When ``ts``, ``score`` or ``threshold`` is not finite.
        """
        ts, score, threshold = float(ts), float(score), float(threshold)
        if not (math.isfinite(ts) and math.isfinite(score) and math.isfinite(threshold)):
            raise ValueError(f"alert from {detector} needs finite ts, score and threshold")
        notice = category.strip().lower() in NOTICE_CATEGORIES
        if notice:
            severity = INFO
        else:
            severity = severity_for(score_ratio(score, threshold), category, self.category_boost)
            if severity > self.min_severity:
                return None
        info: dict[str, Any] = dict(extra or {})
        key = info.get("dedup_key")
        if not isinstance(key, str) or not key:
            key = dedup_key(device_id, detector, category, dest_ip, dest_port)
        kept = self._latest.get(key)
        if kept is not None and abs(ts - kept.timestamp) < self.dedup_window_s and severity >= kept.severity:
            kept.extra["count"] = int(kept.extra.get("count", 1)) + 1
            kept.extra["first_ts"] = min(float(kept.extra.get("first_ts", kept.timestamp)), ts)
            kept.extra["last_ts"] = max(float(kept.extra.get("last_ts", kept.timestamp)), ts)
            kept.extra["max_score"] = max(float(kept.extra.get("max_score", kept.score)), score)
            self.suppressed += 1
            return None
        if not flow_id:
            flow_id = flow_id_for(proto, src_ip, src_port, dest_ip, dest_port)
        info.update(dedup_key=key, count=1, first_ts=ts, last_ts=ts, max_score=score)
        alert = Alert(
            timestamp=ts,
            flow_id=int(flow_id),
            src_ip=src_ip,
            src_port=int(src_port),
            dest_ip=dest_ip,
            dest_port=int(dest_port),
            proto=proto,
            device_id=device_id,
            site_id=self.site_id,
            detector=detector,
            detector_version=detector_version,
            score=score,
            threshold=threshold,
            severity=severity,
            category=category,
            reason=reason,
            event_type="notice" if notice else "alert",
            extra=info,
        )
        if notice:
            self.notices += 1
        self._kept.append(alert)
        self._latest[key] = alert
        return alert

    def alerts(self) -> list[Alert]:
        """The kept alerts in time order (ties: by device, then in creation order -- the order a
        device's alerts take is the same whether one engine or several workers made them)."""
        return sorted(self._kept, key=lambda a: (a.timestamp, a.device_id))


def integrity_alert(
    category: str,
    reason: str,
    *,
    ts: float,
    device_id: str = "",
    detector: str = "integrity",
    detector_version: str = "1",
    score: float = 1.0,
    threshold: float = 0.0,
    site_id: str = "default",
    event_type: str = "integrity",
    extra: Mapping[str, Any] | None = None,
) -> Alert:
    """An alert about the monitor itself (detector blind, drift, ...), never a traffic alert.

    Its ``event_type`` (``"integrity"``, or ``"canary"`` for verdicts on canary traffic) keeps
    it apart from detection alerts (``"alert"``); ``extra["integrity"]`` is ``True``. Severity
    follows :func:`severity_for` on ``score`` / ``threshold`` (a positive score over a zero
    threshold is high). No de-duplication: the caller decides when to raise one.

    Raises
    ------
    ValueError
        When ``ts``, ``score`` or ``threshold`` is not finite.
    """
    ts, score, threshold = float(ts), float(score), float(threshold)
    if not (math.isfinite(ts) and math.isfinite(score) and math.isfinite(threshold)):
        raise ValueError(f"integrity alert from {detector} needs finite ts, score and threshold")
    info: dict[str, Any] = dict(extra or {})
    info["integrity"] = True
    info.setdefault(
        "dedup_key", json.dumps([event_type, device_id, detector, category], separators=(",", ":"))
    )
    return Alert(
        timestamp=ts,
        flow_id=0,
        src_ip="",
        src_port=0,
        dest_ip="",
        dest_port=0,
        proto="",
        device_id=device_id,
        site_id=site_id,
        detector=detector,
        detector_version=detector_version,
        score=score,
        threshold=threshold,
        severity=severity_for(score_ratio(score, threshold), category),
        category=category,
        reason=reason,
        signature=f"iotsentry {event_type}: {category}",
        event_type=event_type,
        extra=info,
    )
