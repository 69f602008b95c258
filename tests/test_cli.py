"""The command line: clear one-line errors, no tracebacks, outputs where it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dpkt
import pytest

if TYPE_CHECKING:
    from iotsentry.schema import Alert


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotsentry.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _small_pcap(path: Path, n: int = 50) -> Path:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i in range(n):
            udp = dpkt.udp.UDP(sport=40000 + i, dport=53, data=b"x" * 20)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=bytes([192, 168, 1, 10]), dst=bytes([192, 168, 1, 1]), p=17, data=udp)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(
                src=b"\x00\x17\x88\x01\x02\x03", dst=b"\x00\x11\x22\x33\x44\x55", data=ip
            )
            w.writepkt(bytes(eth), ts=1_600_000_000 + i)
    return path


def test_not_a_capture_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "random.bin"
    bad.write_bytes(bytes(range(256)) * 8)
    r = _run("devices", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    r = _run("analyze", str(tmp_path / "nope.pcap"), cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_empty_file_is_an_empty_inventory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    r = _run("devices", str(empty), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_truncated_capture_warns_once_and_keeps_what_came_before(tmp_path: Path) -> None:
    full = _small_pcap(tmp_path / "full.pcap")
    cut = tmp_path / "cut.pcap"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) - 30])  # cut inside the last packet
    r = _run("score", str(cut), "--learn-seconds", "10", "--out", str(tmp_path / "s.csv"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and str(cut) in warnings[0]
    assert "Traceback" not in r.stderr
    rows = (tmp_path / "s.csv").read_text().strip().splitlines()
    assert rows[0] == "index,ts,device,score"
    assert [int(x.split(",")[0]) for x in rows[1:]] == list(range(49))


def test_score_writes_one_row_per_packet_in_file_order(tmp_path: Path) -> None:
    p = _small_pcap(tmp_path / "a.pcap", n=120)
    out = tmp_path / "scores.csv"
    r = _run("score", str(p), "--learn-seconds", "60", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = out.read_text().strip().splitlines()[1:]
    assert len(rows) == 120
    idx = [int(x.split(",")[0]) for x in rows]
    assert idx == list(range(120))
    devices = {x.split(",")[2] for x in rows}
    assert "00:17:88:01:02:03" in devices


@pytest.mark.parametrize("cmd", ["analyze", "devices"])
def test_directory_input_is_refused(tmp_path: Path, cmd: str) -> None:
    r = _run(cmd, str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr


# -- analyze: incidents; iotsentry incidents ---------------------------------------------------


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`iotsentry analyze` of the demo home (an infected camera) with an extra JSONL sink."""
    from iotsentry.cli import main
    from iotsentry.evaluation.synthetic_home import generate_home

    out = tmp_path_factory.mktemp("analyze")
    generate_home(out / "home.pcap", seed=7)
    sink = out / "sink.jsonl"
    assert main(["analyze", str(out / "home.pcap"), "--out-dir", str(out), "--sink", f"jsonl:{sink}"]) == 0
    return out


def _alert_of(eve: dict[str, Any]) -> Alert:
    """The alert an EVE record was written from (the fields folding looks at, and more)."""
    from datetime import datetime

    from iotsentry.schema import Alert

    sub = eve["alert"]
    return Alert(
        timestamp=datetime.fromisoformat(eve["timestamp"].replace("Z", "+00:00")).timestamp(),
        flow_id=eve["flow_id"], src_ip=eve["src_ip"], src_port=eve["src_port"], dest_ip=eve["dest_ip"],
        dest_port=eve["dest_port"], proto=eve["proto"], device_id=eve["device_id"], site_id=eve["site_id"],
        detector=sub["detector"], detector_version=sub["detector_version"], score=sub["score"],
        threshold=sub["threshold"], severity=sub["severity"], category=sub["category"], reason=sub["reason"],
        event_type=eve["event_type"], extra=dict(eve.get("iotsentry", {})),
    )  # fmt: skip


def test_analyze_writes_incidents_next_to_one_eve_line_per_alert(analysed: Path) -> None:
    from iotsentry.alerts.incidents import Incident, IncidentBook, incident_id_for
    from iotsentry.store import Store

    eve = [json.loads(x) for x in (analysed / "alerts.jsonl").read_text().splitlines()]
    incidents = [Incident.from_dict(d) for d in json.loads((analysed / "incidents.json").read_text())]
    traffic = [e for e in eve if e["event_type"] == "alert"]
    assert traffic and incidents
    # every alert keeps its EVE shape and names its incident; the counts add up
    assert all(e["incident_id"] in {i.incident_id for i in incidents} for e in traffic)
    assert sum(i.count for i in incidents) == len(traffic)
    assert all({"timestamp", "flow_id", "src_ip", "dest_ip", "alert", "device_id"} <= set(e) for e in eve)
    # the extra sink got the openings and escalations only, each naming its incident's state
    sent = [json.loads(x) for x in (analysed / "sink.jsonl").read_text().splitlines()]
    sent_traffic = [e for e in sent if e["event_type"] == "alert"]
    assert {e["iotsentry"]["incident"]["event"] for e in sent_traffic} <= {"opened", "escalated"}
    assert sum(e["iotsentry"]["incident"]["event"] == "opened" for e in sent_traffic) == len(incidents)
    # exactly the records that opened or escalated an incident when the run's alerts are folded
    book = IncidentBook()
    _, for_sinks = book.fold_many(_alert_of(e) for e in traffic)
    assert [(e["timestamp"], e["alert"]["category"]) for e in sent_traffic] == [
        (a.to_eve()["timestamp"], a.category) for a in for_sinks
    ]
    assert [i.to_dict() for i in book.incidents()] == [i.to_dict() for i in incidents]
    # the store holds the same incidents (ids and counts) as incidents.json
    with Store(analysed / "iotsentry.db") as store:
        stored = {i.incident_id: i.count for i in store.query_incidents(limit=1000)[0]}
    assert stored == {i.incident_id: i.count for i in incidents}
    # deterministic ids: site|device|cause|first alert time (the streaming monitor gets the same)
    assert all(
        i.incident_id == incident_id_for(i.site_id, i.device_id, i.cause, i.first_ts) for i in incidents
    )


def test_incidents_cli_lists_shows_and_changes_with_an_audit_trail(analysed: Path, tmp_path: Path) -> None:
    import shutil

    from iotsentry.integrity.audit import read_records, verify
    from iotsentry.store import Store

    db = tmp_path / "s.db"
    shutil.copy(analysed / "iotsentry.db", db)
    audit = tmp_path / "audit.jsonl"
    listed = _run("incidents", "list", "--db", str(db), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["total"] == len(doc["items"]) > 0
    inc = doc["items"][0]["incident_id"]
    table = _run("incidents", "list", "--db", str(db), "--status", "open", cwd=tmp_path)
    assert inc in table.stdout and "open" in table.stdout
    common = ["--db", str(db), "--audit-log", str(audit), "--as", "carol"]
    for args in (["ack", inc], ["assign", inc, "dave"], ["expect", inc, "--scope", "group"], ["reopen", inc],
                 ["resolve", inc, "--note", "patched"]):  # fmt: skip
        r = _run("incidents", *args, *common, cwd=tmp_path)
        assert r.returncode == 0 and inc in r.stdout, (args, r.stderr)
    shown = _run("incidents", "show", inc, "--db", str(db), cwd=tmp_path)
    assert "resolved" in shown.stdout and "baseline feedback" in shown.stdout and "by carol" in shown.stdout
    detail = json.loads(_run("incidents", "show", inc, "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert [h["action"] for h in detail["history"]] == [
        "acknowledge",
        "assign",
        "expect",
        "reopen",
        "resolve",
    ]
    assert [(f["action"], f["scope"]) for f in detail["feedback"]] == [
        ("absorb", "group"),
        ("revert", "group"),
    ]
    with Store(db) as store:
        got = store.get_incident(inc)
        assert got is not None and got.status == "resolved" and got.assignee == "dave"
    recs = list(read_records(audit))
    assert [(x.action, x.actor) for x in recs] == [
        ("incident.ack", "carol"), ("incident.assign", "carol"), ("incident.expected", "carol"),
        ("incident.reopen", "carol"), ("incident.resolve", "carol"),
    ]  # fmt: skip
    assert recs[2].details["scope"] == "group" and verify(audit).ok
    # user errors: one line, exit 2
    missing = _run("incidents", "ack", "inc-0000000000000000", "--db", str(db), cwd=tmp_path)
    assert missing.returncode == 2 and "no incident" in missing.stderr and "Traceback" not in missing.stderr
    nodb = _run("incidents", "list", "--db", str(tmp_path / "nope.db"), cwd=tmp_path)
    assert nodb.returncode == 2 and "no such store" in nodb.stderr
    assert not (tmp_path / "nope.db").exists()


def test_analyze_summary_lists_the_most_alerted_devices_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet does not fit a terminal: the table keeps the devices with most alerts, says how
    many it left out, and the store still holds every device and baseline."""
    from iotsentry import cli
    from iotsentry.evaluation.synthetic_home import generate_home
    from iotsentry.store import Store

    generate_home(tmp_path / "home.pcap", seed=7)
    monkeypatch.setattr(cli, "SUMMARY_DEVICES", 2)
    assert cli.main(["analyze", str(tmp_path / "home.pcap"), "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    with Store(tmp_path / "iotsentry.db") as store:
        devices = store.get_devices()
        baselines = store.latest_baselines()
    eve = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    alerted = {e["device_id"] for e in eve if e["event_type"] == "alert"}
    assert len(devices) > 2 and baselines
    assert f"... and {len(devices) - 2:,} more devices" in out
    table = out.split("Devices (top 2 by alerts)")[1].split("more devices")[0]
    listed = [d.device_id for d in devices if d.device_id in table]
    assert len(listed) == 2 and alerted and set(listed) & alerted
