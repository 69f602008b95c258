"""A single self-contained, offline HTML report of one run.

The page holds a run summary, the device table, the incidents table (alerts folded per device
and cause), the alerts table with an alert timeline, the notices (a device fell silent or
offline) apart from the alerts, and a traffic timeline per device with its alerts marked.
plotly.js is inlined exactly once; every figure is drawn from JSON by ``Plotly.newPlot``.
Everything that came from the network (device names, vendors, DHCP fields, alert reasons...) is
attacker-controlled, so all text is escaped with :func:`html.escape` (plotly renders the
entities back as text), figure JSON is written with ``<``, ``>`` and ``&`` escaped, and a
Content-Security-Policy forbids any network access.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from iotsentry.alerts.incidents import Incident
from iotsentry.schema import SEVERITY_NAMES, Alert, Device

SEVERITY_COLORS = {1: "#c0392b", 2: "#e67e22", 3: "#f1c40f"}
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.flagged{background:#fdecea}td.num{text-align:right}
.sev1{color:#c0392b;font-weight:bold}.sev2{color:#d35400;font-weight:bold}.sev3{color:#9a7d0a}
.muted{color:#777}.plot{width:100%;height:360px}.kv th{width:14em}
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def _script_json(text: str) -> str:
    """JSON text made safe inside a ``<script>`` element."""
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _utc(ts: float) -> str:
    """Epoch seconds as a plotly-friendly UTC time string."""
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _utc_short(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


class _Figures:
    """Collects figures; emits the shared template once and one ``Plotly.newPlot`` per figure."""

    def __init__(self) -> None:
        self.template: str | None = None
        self.count = 0

    def render(self, fig: go.Figure, height: int = 360) -> str:
        fig.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 60, "t": 40, "b": 40})
        spec = fig.to_plotly_json()
        layout = dict(spec.get("layout", {}))
        template = layout.pop("template", None)
        parts: list[str] = []
        if self.template is None:
            self.template = _script_json(to_json_plotly(template or {}))
            parts.append(f"<script>var IOTS_TEMPLATE = {self.template};</script>")
        self.count += 1
        div = f"plot-{self.count}"
        data = _script_json(to_json_plotly(spec.get("data", [])))
        lay = _script_json(to_json_plotly(layout))
        parts.append(f'<div id="{div}" class="plot" style="height:{int(height)}px"></div>')
        parts.append(
            f"<script>(function(){{var l={lay};l.template=IOTS_TEMPLATE;"
            f'Plotly.newPlot("{div}",{data},l,{{displaylogo:false,responsive:true}});}})();</script>'
        )
        return "\n".join(parts)


def _device_label(dev: Device | None, device_id: str) -> str:
    return dev.label if dev is not None else device_id


def _row_label(dev: Device | None, device_id: str) -> str:
    """Unique per device: the name with the id, or the id alone."""
    label = _device_label(dev, device_id)
    return device_id if label == device_id else f"{label} ({device_id})"


def _alert_timeline(alerts: Sequence[Alert], by_id: Mapping[str, Device], figs: _Figures) -> str:
    fig = go.Figure()
    for sev in (3, 2, 1):
        chosen = [a for a in alerts if int(a.severity) == sev]
        if not chosen:
            continue
        fig.add_trace(
            go.Scatter(
                x=[_utc(a.timestamp) for a in chosen],
                y=[_e(_row_label(by_id.get(a.device_id), a.device_id)) for a in chosen],
                mode="markers",
                name=SEVERITY_NAMES.get(sev, str(sev)),
                marker={"color": SEVERITY_COLORS.get(sev, "#888"), "size": 9 + 3 * (3 - sev)},
                hoverinfo="text",
                hovertext=[
                    f"{_e(a.device_id)}<br>{_e(a.category)} ({_e(a.detector)})<br>{_e(a.reason)}"
                    for a in chosen
                ],
            )
        )
    fig.update_layout(xaxis_title="time (UTC)", yaxis={"type": "category"}, title="Alerts over time")
    n_devices = len({a.device_id for a in alerts})
    return figs.render(fig, height=max(300, min(900, 120 + 28 * n_devices)))


def _device_timeline(
    device_id: str, label: str, series: Mapping[str, Sequence[Any]], alerts: Sequence[Alert], figs: _Figures
) -> str:
    t = np.asarray(series.get("t", []), dtype=np.float64)
    packets = np.asarray(series.get("packets", np.zeros(len(t))), dtype=np.float64)
    nbytes = np.asarray(series.get("bytes", np.zeros(len(t))), dtype=np.float64)
    n = min(len(t), len(packets), len(nbytes))
    t, packets, nbytes = t[:n], packets[:n], nbytes[:n]
    order = np.argsort(t, kind="stable")
    t, packets, nbytes = t[order], packets[order], nbytes[order]
    times = [_utc(x) for x in t]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=times, y=packets, mode="lines", name="packets", line={"color": "#2c7fb8"}))
    fig.add_trace(
        go.Scatter(x=times, y=nbytes, mode="lines", name="bytes", yaxis="y2", line={"color": "#7fcdbb"})
    )
    if alerts:
        at = np.array([a.timestamp for a in alerts], dtype=np.float64)
        ay = np.interp(at, t, packets) if n else np.zeros(len(at))
        fig.add_trace(
            go.Scatter(
                x=[_utc(x) for x in at],
                y=ay,
                mode="markers",
                name="alerts",
                marker={
                    "symbol": "x",
                    "size": 12,
                    "color": [SEVERITY_COLORS.get(int(a.severity), "#888") for a in alerts],
                },
                hoverinfo="text",
                hovertext=[
                    f"{_e(SEVERITY_NAMES.get(int(a.severity), a.severity))}: "
                    f"{_e(a.category)}<br>{_e(a.reason)}"
                    for a in alerts
                ],
            )
        )
    fig.update_layout(
        title=_e(f"{label} ({device_id})" if label != device_id else device_id),
        xaxis_title="time (UTC)",
        yaxis={"title": "packets per window"},
        yaxis2={"title": "bytes per window", "overlaying": "y", "side": "right", "showgrid": False},
        legend={"orientation": "h"},
    )
    return figs.render(fig)


def _run_table(run_info: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt_value(v))}</td></tr>" for k, v in run_info.items())
    return f'<table class="kv">{rows}</table>'


def visibility_text(v: Mapping[str, Any] | None) -> str:
    """One line of what the sensor sees of a device: DNS answers, payload, direction, VLAN."""
    if not v:
        return "-"
    parts = [f"DNS names {v.get('dns_names', '?')}", f"payload {v.get('payload', '?')}"]
    if v.get("direction") and v["direction"] != "both":
        parts.append(str(v["direction"]))
    if v.get("vlan_tagged"):
        parts.append("VLAN-tagged")
    if v.get("names_evidence") is False:
        parts.append('"no DNS name" is no evidence here')
    return "; ".join(parts)


REPORT_DEVICES = 2000
"""Rows of the report's device table (the devices with most alerts first): a page a browser opens."""


def _device_table(
    devices: Sequence[Device],
    baselines: Mapping[str, Mapping[str, Any]],
    per_device: Mapping[str, list[Alert]],
) -> str:
    head = (
        "<tr><th>Device</th><th>MAC</th><th>IP(s)</th><th>Vendor</th><th>Names</th><th>Type</th>"
        "<th>Maturity</th><th>Sensor sees</th><th>Alerts</th><th>Worst</th><th>Packets</th>"
        "<th>Bytes</th></tr>"
    )
    ordered = sorted(devices, key=lambda d: (-len(per_device.get(d.device_id, [])), d.device_id))
    rows: list[str] = []
    for d in ordered[:REPORT_DEVICES]:
        mine = per_device.get(d.device_id, [])
        base = baselines.get(d.device_id)
        mat = base.get("maturity") if base is not None else None
        if isinstance(mat, Mapping):  # the pipeline's Maturity.to_dict(): score plus its reason
            maturity = f"{float(mat.get('score', 0.0)):.2f}" + (
                " (mature)" if base and base.get("mature") else ""
            )
            if mat.get("reason"):
                maturity += f" — {mat['reason']}"
        elif mat is not None:
            maturity = f"{float(mat):.2f}" + (" (mature)" if base and base.get("mature") else "")
        else:
            maturity = "-"
        worst = min((int(a.severity) for a in mine), default=0)
        worst_cell = (
            f'<td class="sev{worst}">{_e(SEVERITY_NAMES.get(worst, ""))}</td>' if worst else "<td></td>"
        )
        kind = d.device_type or ""
        if kind and d.type_confidence:
            kind = f"{kind} ({d.type_confidence:.0%})"
        flags = " (gateway)" if d.is_gateway else ""
        cls = ' class="flagged"' if mine else ""
        rows.append(
            f"<tr{cls}><td>{_e(d.device_id)}{_e(flags)}</td>"
            f"<td>{_e(d.mac or '')}</td><td>{_e(', '.join(d.ips))}</td><td>{_e(d.vendor or '')}</td>"
            f"<td>{_e(', '.join(d.names))}</td><td>{_e(kind)}</td><td>{_e(maturity)}</td>"
            f"<td>{_e(visibility_text(d.visibility))}</td>"
            f'<td class="num">{len(mine)}</td>{worst_cell}<td class="num">{int(d.packets)}</td>'
            f'<td class="num">{int(d.bytes)}</td></tr>'
        )
    if not rows:
        return '<p class="muted">No devices.</p>'
    more = len(ordered) - len(rows)
    note = (
        f'<p class="muted">{len(rows):,} devices with the most alerts shown; {more:,} more are in '
        "the store (<code>iotsentry devices</code>, the API, the dashboard).</p>"
        if more > 0
        else ""
    )
    return f"{note}<table>{head}{''.join(rows)}</table>"


def _alert_table(alerts: Sequence[Alert], by_id: Mapping[str, Device], max_rows: int) -> str:
    if not alerts:
        return '<p class="muted">No alerts.</p>'
    head = (
        "<tr><th>Time (UTC)</th><th>Device</th><th>Severity</th><th>Category</th><th>Detector</th>"
        "<th>Score / threshold</th><th>Destination</th><th>Count</th><th>Reason</th></tr>"
    )
    rows: list[str] = []
    for a in alerts[:max_rows]:
        label = _device_label(by_id.get(a.device_id), a.device_id)
        who = _e(a.device_id) + (f' <span class="muted">{_e(label)}</span>' if label != a.device_id else "")
        dest = f"{a.dest_ip}:{a.dest_port}" if a.dest_ip else ""
        sev = int(a.severity)
        count = int(a.extra.get("count", 1)) if a.extra else 1
        rows.append(
            f"<tr><td>{_e(_utc_short(a.timestamp))}</td><td>{who}</td>"
            f'<td class="sev{sev}">{_e(SEVERITY_NAMES.get(sev, sev))}</td><td>{_e(a.category)}</td>'
            f"<td>{_e(a.detector)} {_e(a.detector_version)}</td>"
            f'<td class="num">{a.score:.3g} / {a.threshold:.3g}</td><td>{_e(dest)} {_e(a.proto)}</td>'
            f'<td class="num">{count}</td><td>{_e(a.reason)}</td></tr>'
        )
    note = ""
    if len(alerts) > max_rows:
        note = f'<p class="muted">Showing the first {max_rows} of {len(alerts)} alerts.</p>'
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _incident_table(incidents: Sequence[Incident], by_id: Mapping[str, Device]) -> str:
    """One row per incident, most severe first, then the most recently active."""
    if not incidents:
        return '<p class="muted">No incidents.</p>'
    head = (
        "<tr><th>Incident</th><th>Device</th><th>Severity</th><th>Cause</th><th>Status</th>"
        "<th>Alerts</th><th>First seen (UTC)</th><th>Last seen (UTC)</th><th>Categories</th>"
        "<th>Evidence</th></tr>"
    )
    rows: list[str] = []
    for i in sorted(incidents, key=lambda i: (i.severity, -i.last_ts, i.incident_id)):
        label = _device_label(by_id.get(i.device_id), i.device_id)
        who = _e(i.device_id) + (f' <span class="muted">{_e(label)}</span>' if label != i.device_id else "")
        sample = i.evidence[-1] if i.evidence else {}
        rows.append(
            f"<tr><td>{_e(i.incident_id)}</td><td>{who}</td>"
            f'<td class="sev{int(i.severity)}">{_e(SEVERITY_NAMES.get(int(i.severity), i.severity))}</td>'
            f"<td>{_e(i.cause)}</td><td>{_e(i.status)}</td>"
            f'<td class="num">{int(i.count)}</td><td>{_e(_utc_short(i.first_ts))}</td>'
            f"<td>{_e(_utc_short(i.last_ts))}</td><td>{_e(', '.join(i.categories))}</td>"
            f"<td>{_e(sample.get('reason', ''))}</td></tr>"
        )
    return f'<table id="incidents">{head}{"".join(rows)}</table>'


def _notice_table(notices: Sequence[Alert], by_id: Mapping[str, Device]) -> str:
    if not notices:
        return '<p class="muted">No notices.</p>'
    head = "<tr><th>Time (UTC)</th><th>Device</th><th>Category</th><th>Count</th><th>Reason</th></tr>"
    rows: list[str] = []
    for a in notices:
        label = _device_label(by_id.get(a.device_id), a.device_id)
        who = _e(a.device_id) + (f' <span class="muted">{_e(label)}</span>' if label != a.device_id else "")
        count = int(a.extra.get("count", 1)) if a.extra else 1
        rows.append(
            f"<tr><td>{_e(_utc_short(a.timestamp))}</td><td>{who}</td><td>{_e(a.category)}</td>"
            f'<td class="num">{count}</td><td>{_e(a.reason)}</td></tr>'
        )
    return f'<table id="notices">{head}{"".join(rows)}</table>'


def _peer_group_section(groups: list[dict[str, Any]] | None, devices: list[Device]) -> list[str]:
    """Devices that behave alike, one row per group (empty when grouping did not run)."""
    if not groups:
        return []
    names = {d.device_id: d.label for d in devices}
    rows = []
    for g in groups:
        members = ", ".join(f"{names.get(m, m)} ({m})" if names.get(m, m) != m else m for m in g["devices"])
        typical = ", ".join(f"{k} {v}" for k, v in sorted(g.get("typical", {}).items()))
        rows.append(
            f"<tr><td>{_e(g['group'])}</td><td>{_e(g['size'])}</td><td>{_e(members)}</td>"
            f"<td>{_e(', '.join(g.get('common_services', [])))}</td><td>{_e(typical)}</td></tr>"
        )
    return [
        "<h2>Peer groups</h2>",
        '<p class="muted">Devices clustered by behaviour (service mix, local/named peer shares, frame '
        "size); a device that leaves its group is alerted.</p>",
        "<table><tr><th>Group</th><th>Size</th><th>Devices</th><th>Common services</th>"
        "<th>Typical per minute</th></tr>" + "".join(rows) + "</table>",
    ]


def write_report(
    path: str | Path,
    *,
    title: str,
    devices: list[Device],
    alerts: list[Alert],
    timelines: dict[str, dict[str, list[Any]]],
    baselines: Mapping[str, Mapping[str, Any]],
    run_info: dict[str, Any],
    max_alert_rows: int = 5000,
    max_device_plots: int = 60,
    peer_groups: list[dict[str, Any]] | None = None,
    incidents: Sequence[Incident] | None = None,
) -> None:
    """Write the HTML report of one run to ``path`` (atomically: a temporary file is renamed).

    Parameters
    ----------
    path
        Output file; parent folders are created.
    title
        Page title.
    devices
        The inventory.
    alerts
        The alerts of the run (any order; shown in time order).
    timelines
        ``device_id -> {"t": [epoch s], "packets": [...], "bytes": [...]}`` per time window.
    baselines
        ``device_id -> {"maturity": float, "mature": bool, ...}`` (e.g. ``Store.latest_baselines()``).
    run_info
        Free-form facts about the run (command, inputs, duration...), shown as a table.
    max_alert_rows
        At most this many rows in the alerts table (all alerts are still counted and plotted).
    max_device_plots
        At most this many per-device timelines: devices with alerts first, then the busiest.
    peer_groups
        Groups of devices that behave alike (``None``/empty: no section).
    incidents
        The run's incidents (``None``: folded here from ``alerts`` with an
        :class:`~iotsentry.alerts.incidents.IncidentBook` over copies, the alerts untouched).
        Notices (``event_type == "notice"``) are listed apart from the alerts.
    """
    if incidents is None:
        from iotsentry.alerts.incidents import fold_all

        incidents = fold_all(dataclasses.replace(a) for a in alerts).incidents()
    notices = sorted(
        (a for a in alerts if a.event_type == "notice"), key=lambda a: (a.timestamp, a.device_id)
    )
    alerts = [a for a in alerts if a.event_type != "notice"]
    alerts_sorted = sorted(alerts, key=lambda a: (a.timestamp, a.device_id))
    by_id = {d.device_id: d for d in devices}
    per_device: dict[str, list[Alert]] = {}
    for a in alerts_sorted:
        per_device.setdefault(a.device_id, []).append(a)
    severities = Counter(int(a.severity) for a in alerts_sorted)
    figs = _Figures()

    summary_items = [
        ("Devices", str(len(devices))),
        ("Devices with alerts", str(sum(1 for d in devices if d.device_id in per_device))),
        ("Incidents", str(len(incidents))),
        ("Open incidents", str(sum(1 for i in incidents if i.active))),
        ("Alerts", str(len(alerts_sorted))),
        *((f"{SEVERITY_NAMES.get(s, s)} severity", str(severities[s])) for s in sorted(severities)),
        ("Notices", str(len(notices))),
    ]
    if alerts_sorted:
        summary_items.append(
            (
                "Alert span (UTC)",
                f"{_utc_short(alerts_sorted[0].timestamp)} - {_utc_short(alerts_sorted[-1].timestamp)}",
            )
        )
    summary = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary_items)

    sections: list[str] = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Generated {_e(_utc_short(time.time()))} UTC by iotsentry.</p>',
        "<h2>Summary</h2>",
        f'<table class="kv">{summary}</table>',
        "<h2>Run</h2>",
        _run_table(run_info),
        "<h2>Devices</h2>",
        _device_table(devices, baselines, per_device),
        *_peer_group_section(peer_groups, devices),
        "<h2>Incidents</h2>",
        '<p class="muted">Alerts folded per device and cause: the queue to work on.</p>',
        _incident_table(incidents, by_id),
        "<h2>Alerts</h2>",
    ]
    if alerts_sorted:
        sections.append(_alert_timeline(alerts_sorted, by_id, figs))
    sections.append(_alert_table(alerts_sorted, by_id, max_alert_rows))
    sections += [
        "<h2>Notices</h2>",
        '<p class="muted">Not security alerts: devices that fell silent or went offline.</p>',
        _notice_table(notices, by_id),
    ]

    plot_ids = [k for k in timelines if len(timelines[k].get("t", [])) > 0]
    plot_ids.sort(
        key=lambda k: (
            -len(per_device.get(k, [])),
            -float(np.sum(np.asarray(timelines[k].get("packets", []), dtype=np.float64))),
            k,
        )
    )
    sections.append("<h2>Traffic per device</h2>")
    if not plot_ids:
        sections.append('<p class="muted">No traffic timelines.</p>')
    for device_id in plot_ids[:max_device_plots]:
        label = _device_label(by_id.get(device_id), device_id)
        sections.append(
            _device_timeline(device_id, label, timelines[device_id], per_device.get(device_id, []), figs)
        )
    if len(plot_ids) > max_device_plots:
        sections.append(f'<p class="muted">{len(plot_ids) - max_device_plots} more devices not plotted.</p>')

    plotly_js = f"<script>{get_plotlyjs()}</script>" if figs.count else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{CSS}</style>{plotly_js}</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # a report is meant to be read by others (mkstemp creates 0600)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
