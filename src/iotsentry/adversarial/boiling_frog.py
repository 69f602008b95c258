"""Baseline poisoning ("boiling frog"): the attacker raises its activity slowly while the
detectors learn, then attacks inside the inflated limits.

An attacker already present on the infected device while iotsentry learns its baseline
replays copies of its own malicious packets (scan probes, C&C exchanges: the frames of the
real attack, byte for byte, so re-addressed exactly like the attack -- same infected host,
same targets / servers -- and with the checksums they already had) inside the learning period,
at a rate that ramps linearly from 0 at the first packet of the capture to ``r`` times the real
attack's packet rate at the end of learning. The real attack then follows unchanged.

:func:`poison_learning` builds the poisoned capture from a Q1 mix
(:func:`~iotsentry.evaluation.q1.build_recipe`); :func:`evaluate_boiling_frog` runs, for each
``r``:

* the profile detector exactly as :mod:`~iotsentry.adversarial.problem_eval` does (its
  :func:`~iotsentry.adversarial.problem_eval.analyze`, threshold at ``fpr`` of the benign
  capture analysed alone, same rows: detection rate of the real attack's packets after the
  learning period, device alert and latency, function and validity checks);
* the KitNET stream detector (:func:`~iotsentry.detectors.stream.score_capture_with_model`,
  learning the same ``learn_seconds``; threshold at ``fpr`` of the benign capture scored alone).

The injection stops before the profile detector's learning end (the splice aligned down to a
60 s window), which lies inside the stream detector's learning period too, so every injected
packet is learned by both and none is scored as detection traffic.

``python -m iotsentry.adversarial.boiling_frog --recipe D3 [--json out.json]`` prints the table.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.problem_core import US, AttackerSelector, Cost, finish, roles
from iotsentry.adversarial.problem_eval import (
    DEFAULT_FPR,
    _Context,
    _json_default,
    _threshold,
    analyze,
    prepare_recipe,
    recipe_parser,
)
from iotsentry.adversarial.problem_frames import (
    Fields,
    Packets,
    fix_checksums,
    header_fields,
    replace_frames,
)
from iotsentry.detectors.stream import score_capture_with_model
from iotsentry.evaluation.mix import Capture
from iotsentry.evaluation.q1 import RECIPES

__all__ = [
    "DEFAULT_FRACTIONS",
    "Injection",
    "attack_rate",
    "evaluate_boiling_frog",
    "main",
    "markdown_table",
    "poison_learning",
    "ramp_times",
    "real_attack_unchanged",
]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 1.0)
"""Final injection rate during learning, as a fraction of the real attack's packet rate."""


@dataclass(frozen=True)
class Injection:
    """What :func:`poison_learning` added."""

    packets: int
    """Frames injected into the learning period."""
    attack_rate_pps: float
    """The real attack's rate (its malicious frames over their time span)."""
    final_rate_pps: float
    """Injection rate reached at the end of learning (``fraction`` × ``attack_rate_pps``)."""
    start_us: int
    end_us: int
    """The injection window (microseconds, end excluded)."""


def attack_rate(pk: Packets, rows: npt.NDArray[np.int64]) -> float:
    """Packets per second of ``rows`` (count over first-to-last span; 1 s at least)."""
    if not len(rows):
        return 0.0
    ts = pk.ts_us[rows]
    span = max(float(ts.max() - ts.min()) / US, 1.0)
    return len(rows) / span


def ramp_times(start_us: int, end_us: int, n: int) -> npt.NDArray[np.int64]:
    """``n`` increasing times in ``(start_us, end_us)`` whose density ramps linearly from 0.

    The rate at ``t`` is proportional to ``t - start``; the ``k``-th time is the inverse of the
    cumulative count ``n ((t - start) / L)^2`` at ``k + 0.5``.
    """
    if n <= 0 or end_us - start_us < 2:
        return np.zeros(0, np.int64)
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    t = start_us + np.floor((end_us - start_us) * np.sqrt(u)).astype(np.int64)
    return np.clip(t, start_us + 1, end_us - 1)


def _with_checksums(pk: Packets, f: Fields, rows: npt.NDArray[np.int64]) -> Capture:
    """The frames ``rows`` of ``pk`` with every IPv4 checksum recomputed: a source capture
    with checksum offloading has wrong ones, and a copy must not."""
    cap = pk.cap.take(rows)
    ipv4 = np.flatnonzero(f.ipv4[rows] & (f.ip_off[rows] >= 0))
    frames: list[bytes] = []
    for j in ipv4.tolist():
        frame = bytearray(cap.frame(j))
        fix_checksums(frame, int(f.ip_off[rows[j]] - pk.cap.off[rows[j]]))
        frames.append(bytes(frame))
    return replace_frames(cap, ipv4.tolist(), frames)


def poison_learning(
    pk: Packets,
    attacker: AttackerSelector,
    learn_end_us: int,
    fraction: float,
    *,
    max_packets: int = 500_000,
) -> tuple[Packets, Cost, Injection]:
    """Inject copies of the attacker's malicious frames into ``[first packet, learn_end_us)``.

    The source frames are the attacker's own malicious traffic (both directions: probes and
    answers, C&C requests and replies) at or after ``learn_end_us``, replayed in their order,
    cycling, at a rate ramping linearly to ``fraction`` × the attack's rate. Copies are
    labelled malicious, flagged ``attack`` and have ``origin`` -1; frame bytes are unchanged.
    """
    f = header_fields(pk.cap)
    ro = roles(pk, f, attacker)
    src = np.flatnonzero(ro.involved & (pk.label == 1) & (pk.ts_us >= learn_end_us)).astype(np.int64)
    src = src[np.argsort(pk.ts_us[src], kind="stable")]
    start_us = int(pk.ts_us.min()) if len(pk) else 0
    rate = attack_rate(pk, src)
    span_s = max(0, learn_end_us - start_us) / US
    n = min(max_packets, round(fraction * rate * span_s / 2)) if len(src) else 0
    when = ramp_times(start_us, learn_end_us, n)
    n = len(when)
    info = Injection(n, rate, fraction * rate, start_us, learn_end_us)
    if not n:
        return pk, Cost(), info
    copies = _with_checksums(pk, f, src).take(np.arange(n, dtype=np.int64) % len(src))
    cap = Capture(when, copies.buf, copies.off, copies.snaplen, copies.truncated)
    extra = Packets(cap, np.ones(n, np.int8), np.ones(n, bool), np.full(n, -1, np.int64))
    new, cost = finish(pk, pk.cap, attacker, extra)
    return new, cost, info


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _stream_scores(
    path: Path, learn_seconds: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """KitNET scores and timestamps per frame, in file order."""
    index, ts, scores = score_capture_with_model(path, learn_seconds, "kitnet")
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(index))):
        raise RuntimeError(f"{path}: stream scores do not cover every frame")
    return scores[order], ts[order]


def _stream_row(
    ctx: _Context,
    r: float,
    new: Packets,
    scores: npt.NDArray[np.float64],
    tau: float,
    clean_rate: float,
    learn_end: float,
    info: Injection,
) -> dict[str, Any]:
    after = new.ts_us / 1e6 >= learn_end
    mal = after & (new.label == 1) & (new.origin >= 0)
    neg = after & ~new.attack & (new.label == 0)
    injected_after = after & (new.origin < 0)
    tau2 = _threshold(scores[neg], ctx.fpr) if neg.any() else math.inf
    return {
        "model": "kitnet",
        "attack": ctx.name,
        "attack_kind": ctx.kind,
        "r": r,
        "injected_packets": info.packets,
        "injected_after_learning": int(injected_after.sum()),
        "attack_rate_pps": info.attack_rate_pps,
        "clean_detection_rate": clean_rate,
        "poisoned_detection_rate": float(np.mean(scores[mal] > tau)) if mal.any() else math.nan,
        "poisoned_detection_rate_recalibrated": float(np.mean(scores[mal] > tau2)) if mal.any() else math.nan,
        "fpr": ctx.fpr,
        "fpr_measured": float(np.mean(scores[neg] > tau)) if neg.any() else math.nan,
        "threshold": tau,
        "learn_end": learn_end,
        "malicious_packets": int(mal.sum()),
        "alert_fires": None,
        "alerts": None,
        "latency_s": None,
        "realisable": None,
    }


def real_attack_unchanged(before: Packets, after: Packets) -> bool:
    """Every frame of ``before`` is in ``after`` (``origin``), same bytes and time."""
    keep = np.flatnonzero(after.origin >= 0)
    if not np.array_equal(np.sort(after.origin[keep]), np.arange(len(before))):
        return False
    kept = after.take(keep[np.argsort(after.origin[keep], kind="stable")])
    return bool(
        np.array_equal(kept.ts_us, before.ts_us)
        and np.array_equal(np.diff(kept.cap.off), np.diff(before.cap.off))
        and np.array_equal(kept.cap.buf, before.cap.buf)
    )


def _realisable(before: Packets, after: Packets, checks: dict[str, Any]) -> bool:
    """The poisoned capture is well formed, every scan probe is still sent and answered, and the
    original frames (the real attack among them) are untouched. problem_eval's per-connection
    C&C check is kept in ``checks`` but not required: the copies replay the attack's own
    5-tuples (masscan's fixed source port, the bot's connections), so they merge with the real
    connections there."""
    ok = bool(checks["valid_capture"]["ok"])
    scan = checks.get("scan_targets")
    if scan is not None:
        ok = ok and bool(scan["ok"])
    return ok and real_attack_unchanged(before, after)


def evaluate_boiling_frog(
    name: str,
    data_dir: Path,
    work_dir: Path,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fpr: float = DEFAULT_FPR,
    stream: bool = True,
    drift_guard: bool = False,
) -> list[dict[str, Any]]:
    """Rows per (detector, r) of one Q1 recipe; ``r = 0`` is the unpoisoned capture.

    With ``drift_guard`` the profile detector's baseline refuses what ramps up while it learns
    (model ``profile+guard``; the threshold is recalibrated on the benign capture with the guard).
    """
    recipe = RECIPES[name]
    ctx, clean = prepare_recipe(name, data_dir, work_dir, fpr, drift_guard)
    kind, built, pk, attacker = ctx.kind, ctx.built, ctx.pk, ctx.attacker
    learn_end, tau = ctx.learn_end, ctx.tau
    benign_path = data_dir / recipe.benign

    first_s = float(pk.ts_us.min()) / US
    stream_end = first_s + built.learn_seconds
    if stream:
        b_scores, b_ts = _stream_scores(benign_path, built.learn_seconds)
        if abs(float(b_ts.min()) - first_s) > 1e-6:
            raise RuntimeError(f"{recipe.benign}: first packet differs from the mixed capture's")
        tau_s = _threshold(b_scores[b_ts >= stream_end], fpr)
        c_scores, _ = _stream_scores(built.pcap, built.learn_seconds)
        mal_c = (pk.ts_us / 1e6 >= stream_end) & (pk.label == 1)
        clean_s = float(np.mean(c_scores[mal_c] > tau_s)) if mal_c.any() else math.nan

    learn_end_us = round(learn_end * US)
    rows: list[dict[str, Any]] = []
    for r in (0.0, *fractions):
        t0 = time.perf_counter()
        if r == 0.0:
            new, cost, info = pk, Cost(), Injection(0, 0.0, 0.0, 0, learn_end_us)
            out, run = built.pcap, clean
        else:
            new, cost, info = poison_learning(pk, attacker, learn_end_us, r)
            out = work_dir / f"{name}.boiling_frog.r{r:g}.pcap"
            new.write(out, work_dir / f"{name}.boiling_frog.r{r:g}.labels.csv")
            run = analyze(out, built.learn_seconds, drift_guard)
            if float(run.result.stats["learn_end"]) != learn_end:
                raise RuntimeError(f"{out}: the learning period moved")
        row = ctx.row("clean" if r == 0.0 else "boiling_frog", f"r={r:g}", new, cost, run, out)
        realisable = _realisable(pk, new, row["checks"])
        prof = {
            "model": "profile+guard" if drift_guard else "profile",
            "attack": name,
            "attack_kind": kind,
            "r": r,
            "injected_packets": info.packets,
            "injected_after_learning": int(row["chaff_packets"]),
            "attack_rate_pps": info.attack_rate_pps,
            "clean_detection_rate": row["clean_detection_rate"],
            "poisoned_detection_rate": row["adversarial_detection_rate"],
            "poisoned_detection_rate_recalibrated": row["adversarial_detection_rate_recalibrated"],
            "fpr": fpr,
            "fpr_measured": row["fpr_measured"],
            "threshold": tau,
            "learn_end": learn_end,
            "malicious_packets": row["malicious_packets"],
            "alert_fires": row["alert_fires"],
            "alerts": row["alerts"],
            "latency_s": row["latency_s"],
            "first_alert_category": row["first_alert_category"],
            "realisable": realisable,
            "checks": row["checks"],
            "bytes_added": cost.bytes_added,
        }
        prof["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(prof)
        if stream:
            t1 = time.perf_counter()
            s_scores = c_scores if r == 0.0 else _stream_scores(out, built.learn_seconds)[0]
            srow = _stream_row(ctx, r, new, s_scores, tau_s, clean_s, stream_end, info)
            srow["realisable"] = realisable
            srow["seconds"] = round(time.perf_counter() - t1, 1)
            rows.append(srow)
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{nd}f}"
    return str(x)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| attack | detector | r | injected (learning) | clean DR | poisoned DR | poisoned DR (recal.) "
        "| FPR meas. | alert | latency (s) | realisable |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        alert = "—" if x["alert_fires"] is None else f"{'yes' if x['alert_fires'] else 'no'} ({x['alerts']})"
        lat = (
            "—"
            if not x["model"].startswith("profile")
            else ("never" if x["latency_s"] is None else _f(x["latency_s"], 1))
        )
        real = "—" if x["realisable"] is None else ("yes" if x["realisable"] else "NO")
        lines.append(
            f"| {x['attack']} ({x['attack_kind']}) | {x['model']} | {x['r']:g} | {x['injected_packets']} | "
            f"{_f(x['clean_detection_rate'])} | {_f(x['poisoned_detection_rate'])} | "
            f"{_f(x['poisoned_detection_rate_recalibrated'])} | {_f(x['fpr_measured'], 4)} | {alert} | "
            f"{lat} | {real} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iotsentry.adversarial.boiling_frog``."""
    ap = recipe_parser("iotsentry-boiling-frog", __doc__, "iotsentry-out/boiling-frog")
    ap.add_argument(
        "--r", type=float, action="append", help="final injection rate / attack rate (repeatable)"
    )
    ap.add_argument("--no-stream", action="store_true", help="profile detector only")
    ap.add_argument(
        "--drift-guard", action="store_true", help="profile baseline refuses what ramps up while learning"
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.recipe or ["D3"]:
        rows += evaluate_boiling_frog(
            name,
            args.data,
            args.work_dir / name,
            fractions=tuple(args.r or DEFAULT_FRACTIONS),
            fpr=args.fpr,
            stream=not args.no_stream,
            drift_guard=args.drift_guard,
        )
    print(markdown_table(rows))
    print(
        f"\n({time.perf_counter() - t0:.0f} s; thresholds at {args.fpr:.1%} FPR of the benign capture "
        "analysed alone; DR = share of the real attack's packets after learning above it)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2, default=_json_default))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
