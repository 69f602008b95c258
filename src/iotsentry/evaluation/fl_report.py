"""Self-contained offline HTML reports of the federated-learning runs (BENCHMARKS Q4 and Q5).

:func:`write_fl_report` renders the dict of :func:`iotsentry.federated.simulate.simulate`
(``iotsentry fl simulate``): federated vs centralized vs local-only with the Q4 verdict, the AUC
per round and per site, the sites and the communication cost. :func:`write_poison_report` renders
the dict of :func:`iotsentry.federated.poison_matrix.run_matrix` (``iotsentry redteam poison``):
the Q5 summary per aggregator, attack × aggregator heatmaps per malicious fraction, every cell.

The pages follow :mod:`iotsentry.ui.report_html`: plotly.js inlined once, figures drawn from
escaped JSON, all text through :func:`html.escape` (site names come from the data), a
Content-Security-Policy forbidding network access, and an atomic write. Missing keys, ``None``
and NaN are shown as ``n/a``; a verdict that cannot be computed is ``n/a``, never "met".
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from iotsentry.ui.report_html import CSP, CSS, _e, _Figures, _utc_short

__all__ = ["Q4_TOLERANCE", "q4_verdict", "q5_cell_verdict", "write_fl_report", "write_poison_report"]

Q4_TOLERANCE = 0.01  # "federated within 1 point of centralized on the per-site mean AUC"
Q5_MAX_FRACTION = 0.3  # Q5 judges the attacks with at most 30 % malicious sites ...
Q5_TARGETED, Q5_OVERALL = 0.02, 0.01  # ... on their losses against the aggregator's clean run
EXTRA_CSS = """
tr.default{background:#eaf4fb;font-weight:bold}.met{color:#1e8449;font-weight:bold}
.missed{color:#c0392b;font-weight:bold}
.note{background:#fff8e1;border-left:4px solid #f1c40f;padding:.4em 1em}
"""
METRICS = (
    ("auc_site_mean", "Per-site mean AUC"),
    ("auc_cross_site_mean", "Cross-site mean AUC"),
    ("auc_pooled", "Pooled AUC"),
    ("f1", "F1 (pooled)"),
    ("targeted_recall", "Targeted (C&C) recall"),
)
MODELS = (("federated", "Federated"), ("centralized", "Centralized"), ("local", "Local-only"))
SIZE_KEYS = ("n_train", "n_test", "malicious_train", "malicious_test")
LOSS_KEYS = ("auc_site_mean", "f1", "targeted_recall")
COLORS = {"federated": "#2c7fb8", "centralized": "#e67e22", "local": "#7f8c8d"}


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, None, NaN, inf, not a number)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(value: Any, digits: int = 4, sign: bool = False) -> str:
    x = _num(value)
    return "n/a" if x is None else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def _get(d: Any, *keys: Any) -> Any:
    """``d[k1][k2]...``, or None when a level is missing."""
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _pe(value: Any) -> str:
    """Text for a plotly label: ``<``, ``>`` and ``&`` escaped (no tag can form; plotly shows them back)."""
    return html.escape(str(value), quote=False)


def _verdict(ok: bool | None, yes: str = "met", no: str = "missed") -> str:
    if ok is None:
        return '<span class="muted">n/a</span>'
    return f'<span class="met">{yes}</span>' if ok else f'<span class="missed">{no}</span>'


def _kv(items: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _table(head: str, rows: Sequence[str]) -> str:
    """A table; ``head`` is the column titles separated by ``|``."""
    titles = "".join(f"<th>{_e(h)}</th>" for h in head.split("|"))
    return f"<table><tr>{titles}</tr>{''.join(rows)}</table>"


def _td(value: Any, digits: int = 4, sign: bool = False) -> str:
    return f'<td class="num">{_e(_fmt(value, digits, sign))}</td>'


def _write_page(path: str | Path, title: str, sections: Sequence[str], figs: _Figures) -> Path:
    plotly_js = f"<script>{get_plotlyjs()}</script>" if figs.count else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{CSS}{EXTRA_CSS}</style>{plotly_js}</head>\n<body>\n"
        f'<h1>{_e(title)}</h1>\n<p class="muted">Generated {_e(_utc_short(time.time()))} UTC.</p>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # meant to be read by others (mkstemp creates 0600)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# -- fl simulate -----------------------------------------------------------------------------------
def q4_verdict(result: Mapping[str, Any]) -> bool | None:
    """Q4: federated per-site mean AUC at most ``Q4_TOLERANCE`` below centralized (None: unknown)."""
    fed = _num(_get(result, "federated", "auc_site_mean"))
    cen = _num(_get(result, "centralized", "auc_site_mean"))
    return None if fed is None or cen is None else cen - fed <= Q4_TOLERANCE + 1e-12


def _bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n:,.0f} B ({n / 1024:,.1f} KiB)"


def _per_round_plot(result: Mapping[str, Any], names: list[str], figs: _Figures) -> str:
    means = [_num(v) for v in _get(result, "federated", "per_round_site_mean") or []]
    if not means:
        return '<p class="muted">No per-round evaluation.</p>'
    rounds = list(range(1, len(means) + 1))
    per_site: dict[str, list[float | None]] = {}
    for i, row in enumerate((_get(result, "federated", "per_round_per_site") or [])[: len(rounds)]):
        for key, auc in (row or {}).items():  # keys: partition ids, int (or str after JSON)
            per_site.setdefault(str(key), [None] * len(rounds))[i] = _num(auc)
    fig = go.Figure()
    for k in sorted(per_site, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)):
        name, ys = names[int(k)] if k.isdigit() and int(k) < len(names) else k, per_site[k]
        if any(y is not None for y in ys):
            fig.add_scatter(
                x=rounds, y=ys, name=_pe(name), line={"width": 1, "dash": "dot"}, visible="legendonly"
            )
    fig.add_scatter(x=rounds, y=means, name="federated", line={"color": COLORS["federated"], "width": 3})
    for key, label in MODELS[1:]:
        level = _num(_get(result, key, "auc_site_mean"))
        if level is not None:
            line = {"color": COLORS[key], "dash": "dash"}
            fig.add_scatter(x=[1, rounds[-1]], y=[level, level], mode="lines", name=label.lower(), line=line)
    fig.update_layout(
        title="Per-site mean AUC per round (click a site in the legend to show it)",
        xaxis={"title": "round", "dtick": 1},
        yaxis={"title": "AUC"},
    )
    return figs.render(fig, height=400)


def _site_bars(result: Mapping[str, Any], sites: list[Mapping[str, Any]], figs: _Figures) -> str:
    idx = [i for i, s in enumerate(sites) if s.get("evaluable", True)]
    if not idx:
        return '<p class="muted">No evaluable site.</p>'
    fig = go.Figure()
    for key, label in MODELS:
        aucs = list(_get(result, key, "auc_per_site") or [])
        y = [_num(aucs[i]) if i < len(aucs) else None for i in idx]
        fig.add_bar(x=[_pe(sites[i].get("name", i)) for i in idx], y=y, name=label, marker_color=COLORS[key])
    fig.update_layout(
        title="Held-out AUC per evaluable site",
        barmode="group",
        yaxis={"title": "AUC", "range": [0, 1.05]},
        xaxis={"type": "category"},
    )
    return figs.render(fig)


def write_fl_report(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report of one ``simulate`` result (without ``weights``) to ``path``; returns it."""
    sites = [s if isinstance(s, Mapping) else {"name": s} for s in result.get("sites") or []]
    figs = _Figures()
    fed = _num(_get(result, "federated", "auc_site_mean"))
    cen = _num(_get(result, "centralized", "auc_site_mean"))
    gap = "not computable" if fed is None or cen is None else f"centralized − federated = {cen - fed:+.4f}"
    rows = [
        f"<tr><th>{_e(label)}</th>{''.join(_td(_get(result, m, key)) for m, _ in MODELS)}</tr>"
        for key, label in METRICS
    ]
    secs = result.get("seconds")
    secs = secs if isinstance(secs, Mapping) else {"total": secs}
    bw = result.get("bytes_per_site_per_round") or {}
    down, up, n_rounds = _num(bw.get("down")), _num(bw.get("up")), _num(result.get("n_rounds"))
    total = None if None in (down, up, n_rounds) else (down + up) * len(sites) * n_rounds  # type: ignore[operator]
    site_rows = []
    for i, s in enumerate(sites):
        sizes = "".join(f'<td class="num">{_e(s.get(k, "n/a"))}</td>' for k in SIZE_KEYS)
        aucs = [list(_get(result, m, "auc_per_site") or [])[i : i + 1] or [None] for m, _ in MODELS]
        site_rows.append(
            f"<tr><td>{_e(s.get('name', i))}</td>{sizes}<td>{'yes' if s.get('evaluable', True) else 'no'}"
            + "</td>"
            + "".join(_td(a[0]) for a in aucs)
            + "</tr>"
        )
    n_eval = sum(1 for s in sites if s.get("evaluable", True))
    n_t = _get(result, "federated", "n_targeted")
    sections = [
        "<h2>Run</h2>",
        _kv(
            [
                ("Aggregator", result.get("aggregator", "n/a")),
                ("Runtime", result.get("runtime", "n/a")),
                ("Rounds", result.get("n_rounds", "n/a")),
                ("Local epochs per round", result.get("local_epochs", "n/a")),
                ("Sites (evaluable)", f"{len(sites)} ({n_eval})"),
                *((f"Seconds ({k})", _fmt(v, 1)) for k, v in secs.items()),
            ]
        ),
        "<h2>Summary</h2>",
        _table("Metric|Federated|Centralized|Local-only", rows),
        f"<p><b>Q4 target</b> — federated within 1 point ({Q4_TOLERANCE}) of centralized on the per-site "
        f"mean AUC: {_verdict(q4_verdict(result))} ({_e(gap)}).</p>",
        f'<p class="muted">Targeted recall is over {_e("n/a" if n_t is None else n_t)} held-out C&amp;C '
        "flows. Per-site mean of the last round as reported by the ClientApps: "
        f"{_e(_fmt(_get(result, 'federated', 'auc_site_mean_reported')))}.</p>",
        "<h2>AUC per round</h2>",
        _per_round_plot(result, [str(s.get("name", i)) for i, s in enumerate(sites)], figs),
        "<h2>AUC per site</h2>",
        _site_bars(result, sites, figs),
        "<h2>Sites</h2>",
        _table(
            "Site|Train rows|Test rows|Malicious train|Malicious test|Evaluable|AUC federated|AUC centralized"
            "|AUC local-only",
            site_rows,
        ),
        "<h2>Communication</h2>",
        _kv(
            [
                ("Down per site per round", _bytes(down)),
                ("Up per site per round", _bytes(up)),
                ("Whole run (all sites, both ways)", _bytes(total)),
            ]
        ),
        '<p class="muted">Weights payload only, without gRPC framing.</p>',
    ]
    title = f"Federated learning simulation — {result.get('aggregator', '?')}"
    return _write_page(path, title, sections, figs)


# -- redteam poison --------------------------------------------------------------------------------
def q5_cell_verdict(cell: Mapping[str, Any]) -> str:
    """``clean`` | ``within`` | ``broken`` (Q5 limits at <= 30 % malicious: targeted recall and
    AUC, as :func:`iotsentry.federated.poison_matrix.summarise`) | ``not judged`` | ``n/a``."""
    if cell.get("attack") == "none":
        return "clean"
    frac = _num(cell.get("fraction"))
    if frac is None or frac > Q5_MAX_FRACTION + 1e-9:
        return "not judged"
    lt, la = (_num(_get(cell, "loss_vs_clean", k)) for k in ("targeted_recall", "auc_site_mean"))
    lp = _num(_get(cell, "loss_vs_clean", "auc_pooled"))
    if lt is None or la is None:
        return "n/a"
    return "broken" if lt > Q5_TARGETED or max(la, lp or 0.0) > Q5_OVERALL else "within"


def _heatmaps(
    cells: list[Mapping[str, Any]], aggs: list[str], default: Any, frac: float, figs: _Figures
) -> str:
    attacks = ["none", *dict.fromkeys(str(c.get("attack")) for c in cells if c.get("attack") != "none")]
    at = {
        (c.get("attack"), c.get("aggregator")): c
        for c in cells
        if c.get("attack") == "none" or _num(c.get("fraction")) == frac
    }
    titles = (
        f"Targeted (C&amp;C) recall at {frac:.0%} malicious",
        f"Per-site mean AUC at {frac:.0%} malicious",
    )
    fig = make_subplots(1, 2, horizontal_spacing=0.12, subplot_titles=titles)
    for col, metric in enumerate(("targeted_recall", "auc_site_mean"), 1):
        z: list[list[float | None]] = [[None] * len(aggs) for _ in attacks]
        text = [[""] * len(aggs) for _ in attacks]
        hover = [[""] * len(aggs) for _ in attacks]
        for r, att in enumerate(attacks):
            for c, agg in enumerate(aggs):
                if (cell := at.get((att, agg))) is None:
                    continue
                v = _num(cell.get(metric) if col == 1 else _get(cell, "overall", metric))
                z[r][c], text[r][c] = v, _fmt(v, 3)
                loss = _fmt(_get(cell, "loss_vs_clean", metric), sign=True)
                bad = ", ".join(map(str, cell.get("malicious_sites") or [])) or "none"
                hover[r][c] = _pe(f"{att} × {agg}: {_fmt(v)} (loss vs clean {loss}); malicious sites: {bad}")
        x = [_pe(f"{a} (default)" if a == default else a) for a in aggs]
        y = [_pe("none (clean)"), *map(_pe, attacks[1:])]
        heat = go.Heatmap(z=z, x=x, y=y, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text")
        fig.add_trace(heat.update(coloraxis="coloraxis"), row=1, col=col)
    fig.update_layout(coloraxis={"colorscale": "RdYlGn", "cmin": 0, "cmax": 1})
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    head = f"<h3>{frac:.0%} malicious sites</h3>"
    return head + figs.render(fig, height=max(260, 100 + 50 * len(attacks)))


def write_poison_report(matrix: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report of one ``run_matrix`` result to ``path``; returns it."""
    cells = [c for c in matrix.get("cells") or [] if isinstance(c, Mapping)]
    default, summary = matrix.get("default_aggregator"), matrix.get("summary") or {}
    aggs = list(dict.fromkeys([*(str(c.get("aggregator")) for c in cells), *map(str, summary)]))
    figs = _Figures()
    sum_rows = []
    for agg in aggs:
        s = summary.get(agg) or {}
        clean = s.get("clean") or {}
        cls, label = (' class="default"', f"{agg} (default)") if agg == default else ("", agg)
        ok = bool(s["meets_target"]) if "meets_target" in s else None
        ok_f1 = bool(s["meets_target_with_f1"]) if "meets_target_with_f1" in s else None
        sum_rows.append(
            f"<tr{cls}><td>{_e(label)}</td>"
            + "".join(_td(clean.get(k)) for k in ("auc_site_mean", "auc_pooled", "f1", "targeted_recall"))
            + _td(s.get("worst_targeted_loss"), sign=True)
            + _td(s.get("worst_auc_loss", s.get("worst_overall_loss")), sign=True)
            + _td(s.get("worst_f1_loss"), sign=True)
            + f"<td>{_e(s.get('worst_cell') or 'n/a')}</td><td>{_verdict(ok, 'yes', 'no')}</td>"
            + f"<td>{_verdict(ok_f1, 'yes', 'no')}</td></tr>"
        )
    fractions = sorted(
        {f for c in cells if c.get("attack") != "none" and (f := _num(c.get("fraction"))) is not None}
    )
    cell_rows = []
    for c in cells:
        judged = q5_cell_verdict(c)
        flag = ' class="flagged"' if judged == "broken" else ""
        acc = c.get("accepted")
        acc_text = " | ".join(",".join(map(str, r)) for r in acc) if isinstance(acc, list) else ""
        cell_rows.append(
            f"<tr{flag}><td>{_e(c.get('attack'))}</td>"
            f"<td>{_e(c.get('aggregator'))}</td>{_td(c.get('fraction'), 2)}"
            f'<td class="num">{_e(c.get("n_malicious", "n/a"))}</td>'
            f"<td>{_e(', '.join(map(str, c.get('malicious_sites') or [])))}</td>"
            + "".join(_td(_get(c, "overall", k)) for k in ("auc_site_mean", "auc_pooled", "f1"))
            + _td(c.get("targeted_recall"))
            + "".join(_td(_get(c, "loss_vs_clean", k), sign=True) for k in LOSS_KEYS)
            + f"<td>{_e(judged)}</td><td>{_e(acc_text)}</td>{_td(c.get('seconds'), 1)}</tr>"
        )
    metric = matrix.get("metric") if isinstance(matrix.get("metric"), Mapping) else {}
    sections = [
        "<h2>Run</h2>",
        _kv(
            [
                ("Default aggregator", "n/a" if default is None else default),
                ("Rounds", matrix.get("rounds", "n/a")),
                ("Local epochs per round", matrix.get("local_epochs", "n/a")),
                ("Seed", matrix.get("seed", "n/a")),
                ("Sites", ", ".join(map(str, matrix.get("sites") or []))),
                ("Held-out C&C flows (targeted)", matrix.get("n_targeted", "n/a")),
                ("Cells", len(cells)),
                ("Seconds", _fmt(matrix.get("seconds"), 1)),
                *((f"Metric: {k}", v) for k, v in (metric or {}).items()),
            ]
        ),
        '<p class="note"><b>Read the targeted recall first.</b> A targeted attack aims at the '
        "command-and-control flows only, a small share of the held-out rows: per-site mean AUC, pooled AUC "
        "and F1 can look fine while the recall of exactly those flows collapses.</p>",
        "<h2>Summary per aggregator</h2>",
        _table(
            "Aggregator|Clean per-site mean AUC|Clean pooled AUC|Clean F1|Clean targeted recall|"
            "Worst targeted-recall loss (≤ 30 %)|Worst AUC loss (≤ 30 %)|Worst F1 loss (≤ 30 %)|"
            "Worst attack|Meets Q5|Also F1 ≤ 1 point",
            sum_rows,
        ),
        f'<p class="muted">Q5 target: with at most {Q5_MAX_FRACTION:.0%} malicious sites, no attack costs '
        f"more than {Q5_TARGETED} targeted recall nor more than {Q5_OVERALL} per-site mean or pooled AUC "
        "against the same aggregator's clean run; the last column also holds the pooled F1 at the fixed 0.5 "
        "decision to that limit. Losses are clean minus attacked (positive = worse).</p>",
        "<h2>Attack × aggregator</h2>",
        '<p class="muted">Per malicious fraction; the first row is each aggregator\'s clean run, the colour '
        "scale is 0 (red) to 1 (green); hover a cell for its loss against the clean run.</p>",
        *(_heatmaps(cells, aggs, default, f, figs) for f in fractions),
        "" if fractions else '<p class="muted">No attacked cells.</p>',
        "<h2>All cells</h2>",
        _table(
            "Attack|Aggregator|Fraction|Malicious|Malicious sites|Per-site mean AUC|Pooled AUC|F1|"
            "Targeted recall|Loss AUC|Loss F1|Loss targeted recall|Q5 limits|Accepted sites per round"
            "|Seconds",
            cell_rows,
        ),
    ]
    return _write_page(path, "Poisoning red-team matrix", sections, figs)
