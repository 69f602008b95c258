"""When is a baseline mature enough to trust?

A device's baseline is mature when it has been observed long enough and the discovery of new
peers and services has flattened: few of all discoveries happened in the most recent quarter of
the observation. Alerts that need a trusted baseline (new peer, new service, volume beyond the
learned range) are raised only for mature devices; absolute rules (scans, floods) always apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_OBSERVED_S = 600.0
MIN_WINDOWS = 5
RECENT_SHARE = 0.25
MAX_RECENT_FRACTION = 0.1
UNIFORM_FRACTION = RECENT_SHARE
MATURE_AT = 0.7


@dataclass(frozen=True, slots=True)
class Maturity:
    """Maturity of one device's baseline (``score`` in [0, 1], ``mature`` when ≥ 0.7)."""

    score: float
    mature: bool
    observed_s: float
    windows: int
    discoveries: int
    recent_discoveries: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the fields in order; built directly: one per device summary)."""
        return {
            "score": self.score,
            "mature": self.mature,
            "observed_s": self.observed_s,
            "windows": self.windows,
            "discoveries": self.discoveries,
            "recent_discoveries": self.recent_discoveries,
            "reason": self.reason,
        }


def maturity_of(first_ts: float, last_ts: float, discoveries: list[float], windows: int) -> Maturity:
    """Score the maturity from the observed span and the times of first sightings."""
    if windows == 0 or last_ts < first_ts:
        return Maturity(0.0, False, 0.0, 0, 0, 0, "never observed")
    span = last_ts - first_ts
    total = len(discoveries)
    cutoff = last_ts - RECENT_SHARE * span
    recent = sum(1 for t in discoveries if t >= cutoff)
    time_part = min(1.0, span / MIN_OBSERVED_S) * min(1.0, windows / MIN_WINDOWS)
    frac = recent / total if total else 0.0
    # a steady discovery rate puts RECENT_SHARE of discoveries in the recent part: score 0 there
    slope = UNIFORM_FRACTION - MAX_RECENT_FRACTION
    flat_part = 1.0 if frac <= MAX_RECENT_FRACTION else max(0.0, 1.0 - (frac - MAX_RECENT_FRACTION) / slope)
    score = round(time_part * flat_part, 3)
    mature = score >= MATURE_AT and span >= MIN_OBSERVED_S and windows >= MIN_WINDOWS
    if span < MIN_OBSERVED_S:
        reason = f"observed {span:.0f} s of the {MIN_OBSERVED_S:.0f} s needed"
    elif windows < MIN_WINDOWS:
        reason = f"{windows} active windows of the {MIN_WINDOWS} needed"
    elif not mature:
        reason = f"still discovering: {recent} of {total} peers/services first seen in the last quarter"
    else:
        reason = f"discovery flattened: {recent} of {total} peers/services in the last quarter"
    return Maturity(score, mature, span, windows, total, recent, reason)
