"""The command line: clear one-line errors, no tracebacks, outputs where it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest


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
