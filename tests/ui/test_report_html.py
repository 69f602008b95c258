from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.schema import Alert, Device
from iotsentry.ui.report_html import write_report

EVIL = '<script>alert("pwned")</script>'


def _alerts() -> list[Alert]:
    policy = AlertPolicy()
    out = []
    for ts, dev, reason, cat, score in [
        (1_700_000_100.0, "aa:bb:cc:dd:ee:01", "telnet scan of 40 hosts > baseline (0)", "scan", 4.0),
        (1_700_000_050.0, "aa:bb:cc:dd:ee:02", f"odd DNS name {EVIL}", "anomaly", 1.2),
        (1_700_000_200.0, "ip:10.0.0.77", "bytes & packets 5x above <peer group>", "flood", 2.0),
    ]:
        a = policy.make(
            ts=ts,
            device_id=dev,
            detector="kitsune",
            detector_version="1",
            score=score,
            threshold=1.0,
            category=cat,
            reason=reason,
            dest_ip="203.0.113.1",
            dest_port=23,
            proto="TCP",
        )
        assert a is not None
        out.append(a)
    return out


def _write(tmp_path: Path, **overrides: Any) -> str:
    devices = [
        Device(
            device_id="aa:bb:cc:dd:ee:01",
            mac="aa:bb:cc:dd:ee:01",
            ips=["10.0.0.5"],
            vendor="Acme & Sons",
            names=["cam-1"],
            device_type="camera",
            type_confidence=0.9,
            packets=100,
            bytes=10_000,
            visibility={
                "dns_names": "truncated",
                "payload": "cut to 96 bytes in 100 % of frames",
                "names_evidence": False,
            },
        ),
        Device(
            device_id="aa:bb:cc:dd:ee:02", ips=["10.0.0.6"], names=[EVIL], vendor='"><img src=x onerror=1>'
        ),
        Device(device_id="aa:bb:cc:dd:ee:03", ips=["10.0.0.7"], names=["quiet-plug"]),
    ]
    t0 = 1_700_000_000.0
    timelines = {
        "aa:bb:cc:dd:ee:01": {
            "t": [t0 + 60 * i for i in range(6)],
            "packets": [5, 6, 50, 4, 5, 6],
            "bytes": [1] * 6,
        },
        "aa:bb:cc:dd:ee:02": {"t": [t0, t0 + 60], "packets": [1, 2], "bytes": [100, 200]},
    }
    args: dict[str, Any] = {
        "title": f"Run <1> {EVIL}",
        "devices": devices,
        "alerts": _alerts(),
        "timelines": timelines,
        "baselines": {"aa:bb:cc:dd:ee:01": {"maturity": 0.93, "mature": True}},
        "run_info": {"command": "analyze", "inputs": ["lab.pcap"], "note": EVIL},
    }
    args.update(overrides)
    out = tmp_path / "out" / "report.html"
    write_report(out, **args)
    return out.read_text(encoding="utf-8")


def test_report_contains_devices_and_escaped_reasons(tmp_path: Path) -> None:
    page = _write(tmp_path)
    assert page.startswith("<!DOCTYPE html>")
    for dev in ("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02", "aa:bb:cc:dd:ee:03", "ip:10.0.0.77"):
        assert dev in page
    for a in _alerts():
        assert html.escape(a.reason) in page
    assert "Acme &amp; Sons" in page
    assert "0.93 (mature)" in page
    # what the sensor sees of each device
    assert "DNS names truncated; payload cut to 96 bytes in 100 % of frames" in page
    assert "&quot;no DNS name&quot; is no evidence here" in page
    # two devices with alerts are highlighted (ip:10.0.0.77 has no inventory row)
    assert page.count('<tr class="flagged">') == 2


def test_attacker_controlled_text_never_unescaped(tmp_path: Path) -> None:
    page = _write(tmp_path).replace(get_plotlyjs(), "")
    assert EVIL not in page
    assert "<img src=x" not in page
    assert html.escape(EVIL) in page  # shown as text in the tables
    # the only <script> elements are ours: the plotly bundle, the template and one per figure
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert all(s == "<script>" for s in scripts)
    assert page.count("</script>") == len(scripts)
    assert "pwned" in page  # the text is there, just inert


def test_plotly_embedded_exactly_once_and_offline(tmp_path: Path) -> None:
    page = _write(tmp_path)
    head = get_plotlyjs()[:200]
    assert page.count(head) == 1
    assert page.count("plotly.js v") == 1
    # alert timeline + two device timelines
    assert page.count("Plotly.newPlot(") == 3
    rest = page.replace(get_plotlyjs(), "")
    assert "<script src" not in rest and "http://" not in rest and "https://" not in rest
    assert "Content-Security-Policy" in page


def test_alert_markers_on_device_timeline(tmp_path: Path) -> None:
    page = _write(tmp_path)
    assert page.count('"name":"alerts"') == 2  # one marker trace per device timeline with alerts


def test_empty_run_has_no_plotly(tmp_path: Path) -> None:
    page = _write(tmp_path, devices=[], alerts=[], timelines={}, baselines={})
    assert "No devices." in page and "No alerts." in page
    assert "plotly.js v" not in page
    assert not list((tmp_path / "out").glob("*.tmp"))


def _notice() -> Alert:
    n = AlertPolicy().make(
        ts=1_700_000_300.0, device_id="aa:bb:cc:dd:ee:02", detector="profile", detector_version="1",
        score=1.2, threshold=1.0, category="silence", reason=f"check-ins stopped {EVIL}",
    )  # fmt: skip
    assert n is not None and n.event_type == "notice"
    return n


def _section(page: str, title: str) -> str:
    """The HTML from ``<h2>title</h2>`` to the next ``<h2>``."""
    start = page.index(f"<h2>{title}</h2>")
    end = page.find("<h2>", start + 4)
    return page[start : end if end >= 0 else len(page)]


def test_incidents_table_and_notices_apart_from_alerts(tmp_path: Path) -> None:
    from iotsentry.alerts.incidents import fold_all

    alerts = _alerts()
    book = fold_all(alerts)
    page = _write(tmp_path, alerts=[*alerts, _notice()], incidents=book.incidents())
    incidents = _section(page, "Incidents")
    assert incidents.count("<tr><td>inc-") == len(book.incidents()) == 3
    for inc in book.incidents():
        assert inc.incident_id in incidents and f"<td>{inc.cause}</td>" in incidents
    notices = _section(page, "Notices")
    assert html.escape(f"check-ins stopped {EVIL}") in notices and "<td>silence</td>" in notices
    assert "check-ins stopped" not in _section(page, "Alerts")  # a notice is not an alert
    summary = _section(page, "Summary")
    assert "<th>Incidents</th><td>3</td>" in summary and "<th>Notices</th><td>1</td>" in summary
    assert "<th>Alerts</th><td>3</td>" in summary
    assert EVIL not in page.replace(get_plotlyjs(), "")


def test_incidents_are_folded_from_the_alerts_when_not_given(tmp_path: Path) -> None:
    alerts = _alerts()
    page = _write(tmp_path, alerts=alerts)
    assert _section(page, "Incidents").count("<tr><td>inc-") == 3
    assert all(a.incident_id == "" for a in alerts)  # the caller's alerts are not changed
    assert "No notices." in _section(page, "Notices")


def test_a_fleet_report_lists_the_most_alerted_devices_and_counts_the_rest(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The device table is capped (a page a browser opens); baselines are read only for the
    devices it lists, so a lazily built mapping is not walked for the whole fleet."""
    from iotsentry.ui import report_html

    monkeypatch.setattr(report_html, "REPORT_DEVICES", 2)
    read: list[str] = []

    class Counting(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            read.append(key)
            return super().get(key, default)

    page = _write(tmp_path, baselines=Counting({"aa:bb:cc:dd:ee:01": {"maturity": 0.93, "mature": True}}))
    assert "2 devices with the most alerts shown; 1 more are in the store" in page
    assert "quiet-plug" not in page  # the device without alerts is the one left out
    assert sorted(read) == ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"]
