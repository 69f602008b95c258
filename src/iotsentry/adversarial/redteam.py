"""``iotsentry redteam evasion``: the feature-space and problem-space evasion runs in one report.

Rows come from :func:`iotsentry.adversarial.evaluate.run_evasion` (flow models on IoT-23 flows:
the undefended ``mlp`` and ``hgb``, the defences, and ``default`` — the hardened flow model
iotsentry ships) and from :func:`iotsentry.adversarial.problem_eval.evaluate_recipe` (the
``profile`` packet detector on transformed Q1 captures). Every row carries at least ``model``,
``attack``, ``space`` (``feature`` | ``problem``), ``realisable``, ``clean_detection_rate``,
``adversarial_detection_rate`` and ``fpr``, the keys of ``--json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from iotsentry.evaluation.fl_report import _fmt, _kv, _table, _td, _write_page
from iotsentry.ui.report_html import _e, _Figures

__all__ = ["RETAIN_TARGET", "problem_rows", "strongest", "write_evasion_report"]

RETAIN_TARGET = 0.85
"""Q6: the hardened default keeps at least this share of its clean detection rate."""


def problem_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Problem-space rows in the common shape: ``attack`` names recipe, transformation and
    budget; ``fpr`` is the false-positive rate measured on the benign packets of the run (the
    threshold was set at ``fpr_target`` on the benign capture alone); the clean rows are dropped
    (their rate is each row's ``clean_detection_rate``)."""
    out = []
    for r in rows:
        if r.get("transform") == "clean":
            continue
        row = dict(r)
        row.update(
            {
                "model": r.get("model", "profile"),
                "attack": f"{r.get('attack')} {r.get('transform')} ({r.get('budget', '')})",
                "space": "problem",
                "realisable": bool(r.get("realisable")),
                "fpr": r.get("fpr_measured", r.get("fpr")),
                "fpr_target": r.get("fpr"),
            }
        )
        out.append(row)
    return out


def _retained(r: Mapping[str, Any]) -> float:
    c, a = r.get("clean_detection_rate"), r.get("adversarial_detection_rate")
    if not isinstance(c, int | float) or not isinstance(a, int | float) or c <= 0 or math.isnan(c):
        return float("nan")
    return float(a) / float(c)


def strongest(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: the realisable attack that keeps the least of its clean detection rate."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        mine = [
            r for r in rows if r["model"] == model and r.get("realisable") and not math.isnan(_retained(r))
        ]
        if not mine:
            continue
        worst = min(mine, key=_retained)
        out[model] = {
            "attack": worst["attack"],
            "space": worst["space"],
            "clean_detection_rate": worst["clean_detection_rate"],
            "adversarial_detection_rate": worst["adversarial_detection_rate"],
            "retained": _retained(worst),
            "meets_target": _retained(worst) >= RETAIN_TARGET,
        }
    return out


def _bars(rows: Sequence[Mapping[str, Any]], space: str, figs: _Figures) -> str:
    mine = [r for r in rows if r["space"] == space]
    if not mine:
        return ""
    labels = [
        f"{r['model']} · {r['attack']}{'' if r.get('realisable') else ' (not realisable)'}" for r in mine
    ]
    fig = go.Figure(
        [
            go.Bar(name="clean", x=labels, y=[r.get("clean_detection_rate") for r in mine]),
            go.Bar(name="under attack", x=labels, y=[r.get("adversarial_detection_rate") for r in mine]),
        ]
    )
    fig.update_layout(barmode="group", yaxis={"title": "detection rate", "range": [0, 1.05]})
    return figs.render(fig, height=460)


def write_evasion_report(result: Mapping[str, Any], path: str | Path) -> Path:
    """One offline HTML page: verdicts, bar plots per space, every row."""
    rows = list(result.get("rows", []))
    figs = _Figures()
    best = strongest(rows)
    verdict_rows = [
        f"<tr><td>{_e(m)}</td><td>{_e(b['space'])}</td><td>{_e(b['attack'])}</td>"
        + _td(b["clean_detection_rate"], 3)
        + _td(b["adversarial_detection_rate"], 3)
        + _td(b["retained"], 3)
        + f"<td>{'yes' if b['meets_target'] else 'no'}</td></tr>"
        for m, b in best.items()
    ]
    table_rows = [
        f"<tr><td>{_e(r['model'])}</td><td>{_e(r['space'])}</td><td>{_e(r['attack'])}</td>"
        f"<td>{'yes' if r.get('realisable') else 'no'}</td>"
        + _td(r.get("clean_detection_rate"), 3)
        + _td(r.get("adversarial_detection_rate"), 3)
        + _td(r.get("fpr"), 4)
        + f"<td>{_e(r.get('violations_unconstrained', ''))}</td></tr>"
        for r in rows
    ]
    sections = [
        "<h2>Run</h2>",
        _kv([(k, json.dumps(v, default=str)) for k, v in (result.get("meta") or {}).items()]),
        "<h2>Strongest realisable attack per model</h2>",
        _table(
            "Model|Space|Attack|Clean detection|Under attack|Kept|≥ 85 % kept",
            verdict_rows,
        ),
        f'<p class="muted">Q6: the hardened default keeps at least {RETAIN_TARGET:.0%} of its clean '
        "detection rate under the strongest realisable attack, at the same threshold (calibrated on benign "
        "traffic before any attack). Unconstrained feature-space rows are shown for comparison; they are "
        "not traffic an attacker can send.</p>",
        "<h2>Feature space (flow models)</h2>",
        _bars(rows, "feature", figs),
        "<h2>Problem space (transformed captures, profile detector)</h2>",
        _bars(rows, "problem", figs),
        "<h2>Every row</h2>",
        _table(
            "Model|Space|Attack|Realisable|Clean|Under attack|FPR|Unconstrained rows violating", table_rows
        ),
        f'<p class="muted">{_e(_fmt(len(rows), 0))} rows.</p>',
    ]
    return _write_page(path, "iotsentry evasion red-team", sections, figs)
