from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from iotsentry.alerts import (
    AlertPolicy,
    AlertSink,
    JsonlSink,
    MemorySink,
    SinkURIError,
    SyslogSink,
    WebhookSink,
    sink_from_uri,
)
from iotsentry.alerts.syslog import format_rfc5424
from iotsentry.schema import Alert

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<ver>1) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|\[(?:[^\]\\]|\\.)*\]) (?P<msg>\{.*\})$",
    re.S,
)


def _alert(
    score: float = 5.0, device: str = "aa:bb:cc:dd:ee:01", reason: str = "new peer on 23/tcp"
) -> Alert:
    policy = AlertPolicy(site_id="lab")
    alert = policy.make(
        ts=1_700_000_000.5,
        device_id=device,
        detector="kitsune",
        detector_version="1.0",
        score=score,
        threshold=1.0,
        category="scan",
        reason=reason,
        src_ip="192.168.1.10",
        src_port=40000,
        dest_ip="203.0.113.5",
        dest_port=23,
        proto="TCP",
    )
    assert alert is not None
    return alert


def test_every_sink_satisfies_the_protocol(tmp_path: Path) -> None:
    sinks = [
        MemorySink(),
        JsonlSink(tmp_path / "a.jsonl"),
        SyslogSink("127.0.0.1", 9),
        WebhookSink("http://127.0.0.1:9/x"),
    ]
    for s in sinks:
        assert isinstance(s, AlertSink)
        s.close()


def test_memory_sink_keeps_alerts_and_refuses_after_close() -> None:
    sink = MemorySink()
    a, b = _alert(), _alert(device="d2")
    sink.emit(a)
    sink.emit(b)
    assert sink.alerts == [a, b]
    assert [r["device_id"] for r in sink.records()] == ["aa:bb:cc:dd:ee:01", "d2"]
    sink.close()
    with pytest.raises(ValueError):
        sink.emit(a)


def test_jsonl_appends_lines_and_survives_reopen_and_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alerts.jsonl"
    sink = JsonlSink(path)
    sink.emit(_alert(device="d1"))
    # flushed per line: readable before close
    assert len(path.read_text().splitlines()) == 1
    sink.emit(_alert(device="d2"))
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError):
        sink.emit(_alert())
    # simulate a crash that left half a line, then reopen in append mode
    with open(path, "a") as fh:
        fh.write('{"timestamp": "trunc')
    sink2 = JsonlSink(path)
    sink2.emit(_alert(device="d3"))
    sink2.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    good = [json.loads(line) for line in (lines[0], lines[1], lines[3])]
    assert [g["device_id"] for g in good] == ["d1", "d2", "d3"]
    assert good[0]["alert"]["reason"] == "new peer on 23/tcp"
    assert good[0]["timestamp"] == "2023-11-14T22:13:20.500000Z"


# ---------------------------------------------------------------------------------------------
# syslog against real local receivers
# ---------------------------------------------------------------------------------------------


def _parse(frame: bytes) -> dict[str, Any]:
    m = RFC5424.match(frame)
    assert m is not None, frame[:200]
    out: dict[str, Any] = {k: v.decode() for k, v in m.groupdict().items()}
    out["json"] = json.loads(m.group("msg"))
    return out


def test_format_rfc5424_fields_and_sd_escaping() -> None:
    alert = _alert(device='x"]\\y')
    frame = format_rfc5424(alert, facility=16, app_name="iot sentry", hostname="h o", procid="7", now=0.0)
    p = _parse(frame)
    # local0 (16) * 8 + critical (2) for a high alert
    assert p["pri"] == str(16 * 8 + 2)
    assert p["ts"] == "1970-01-01T00:00:00.000000Z"
    assert (p["host"], p["app"], p["proc"], p["msgid"]) == ("ho", "iotsentry", "7", "alert")
    assert 'device_id="x\\"\\]\\\\y"' in p["sd"]
    assert p["json"]["device_id"] == 'x"]\\y'
    assert format_rfc5424(alert, sd_id=None, now=0.0).split(b" ")[6] == b"-"
    with pytest.raises(ValueError):
        format_rfc5424(alert, facility=24)


def test_syslog_udp_real_receiver() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    port = srv.getsockname()[1]
    sink = SyslogSink("127.0.0.1", port, "udp", app_name="iotsentry-test", facility="local3")
    try:
        low = AlertPolicy().make(
            ts=1.0,
            device_id="d9",
            detector="x",
            detector_version="0",
            score=1.1,
            threshold=1.0,
            category="anomaly",
            reason="r",
        )
        assert low is not None
        sink.emit(_alert())
        sink.emit(low)
        first, _ = srv.recvfrom(65535)
        second, _ = srv.recvfrom(65535)
    finally:
        sink.close()
        srv.close()
    p1, p2 = _parse(first), _parse(second)
    assert p1["pri"] == str(19 * 8 + 2)  # local3, critical
    assert p2["pri"] == str(19 * 8 + 5)  # local3, notice for a low alert
    assert p1["ver"] == "1"
    assert p1["app"] == "iotsentry-test"
    assert p1["proc"] == str(os.getpid())
    assert p1["ts"].endswith("Z")
    assert p1["json"]["alert"]["category"] == "scan"
    assert p1["json"]["flow_id"] == _alert().flow_id
    assert p2["json"]["device_id"] == "d9"
    assert sink.delivered == 2 and sink.failed == 0


@pytest.fixture
def tcp_receiver() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP syslog receiver that reads octet-counted frames until the peer closes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)
    frames: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(5)
        buf = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    n = int(length)
                    if len(rest) < n:
                        break
                    frames.append(rest[:n])
                    buf = rest[n:]
        assert buf == b""

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], frames
    thread.join(timeout=5)
    srv.close()


def test_syslog_tcp_octet_counting(tcp_receiver: tuple[int, list[bytes]]) -> None:
    port, frames = tcp_receiver
    sink = SyslogSink("127.0.0.1", port, transport="tcp")
    # a reason with spaces, newline and non-ASCII must not break the framing
    sink.emit(_alert(reason="burst\nof 4000 pkts ü"))
    sink.emit(_alert(device="d2"))
    sink.close()
    deadline = time.monotonic() + 5
    while len(frames) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(frames) == 2
    p1, p2 = _parse(frames[0]), _parse(frames[1])
    assert p1["pri"] == str(16 * 8 + 2)
    assert p1["app"] == "iotsentry"
    assert p1["json"]["alert"]["reason"] == "burst\nof 4000 pkts ü"
    assert p2["json"]["device_id"] == "d2"
    assert sink.delivered == 2


def test_syslog_tcp_receiver_down_counts_failure_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    sink = SyslogSink("127.0.0.1", port, transport="tcp", timeout_s=1)
    with caplog.at_level(logging.WARNING):
        sink.emit(_alert())
    assert (sink.delivered, sink.failed) == (0, 1)
    assert "not delivered" in caplog.text
    sink.close()


# ---------------------------------------------------------------------------------------------
# webhook against a real local http.server
# ---------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.gets: list[str] = []


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, _Recorder]]:
    rec = _Recorder([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.bodies.append(body)
            rec.headers.append(dict(self.headers.items()))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:
            rec.gets.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/SECRET-TOKEN", rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_webhook_retries_5xx_then_delivers(webhook_server: tuple[str, _Recorder]) -> None:
    url, rec = webhook_server
    rec.statuses[:] = [500, 503]
    sleeps: list[float] = []
    sink = WebhookSink(
        url, retries=3, backoff_s=0.01, timeout_s=5, headers={"X-Token": "t"}, sleep=sleeps.append
    )
    sink.emit(_alert())
    assert (sink.delivered, sink.failed, sink.attempts) == (1, 0, 3)
    assert sleeps == [0.01, 0.02]  # exponential backoff
    assert len(rec.bodies) == 3
    body = json.loads(rec.bodies[-1])
    assert body["alert"]["detector"] == "kitsune"
    assert body["device_id"] == "aa:bb:cc:dd:ee:01"
    assert rec.headers[-1]["Content-Type"] == "application/json"
    assert rec.headers[-1]["X-Token"] == "t"


def test_webhook_gives_up_after_retries_and_on_4xx(
    webhook_server: tuple[str, _Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    url, rec = webhook_server
    rec.statuses[:] = [500, 500, 500]
    sink = WebhookSink(url, retries=2, backoff_s=0.0)
    with caplog.at_level(logging.WARNING):
        sink.emit(_alert())
    assert (sink.delivered, sink.failed, sink.attempts) == (0, 1, 3)
    assert "SECRET-TOKEN" not in caplog.text  # the URL path may be a credential
    rec.statuses[:] = [400]
    sink.emit(_alert())
    assert (sink.failed, sink.attempts) == (2, 4)  # a 4xx is not retried
    rec.statuses[:] = [302]
    sink.emit(_alert())
    assert (sink.failed, sink.attempts) == (3, 5)  # redirects are not followed
    assert rec.gets == []  # no body-less GET to /elsewhere either


def test_webhook_server_down_counts_failure_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sink = WebhookSink(f"http://127.0.0.1:{port}/x", retries=2, backoff_s=0.01, timeout_s=1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        sink.emit(_alert())
    assert time.monotonic() - started < 5
    assert (sink.delivered, sink.failed, sink.attempts) == (0, 1, 3)
    assert "giving up" in caplog.text
    sink.close()
    with pytest.raises(ValueError):
        sink.emit(_alert())


def test_webhook_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError):
        WebhookSink("file:///etc/passwd")


# ---------------------------------------------------------------------------------------------
# sink_from_uri
# ---------------------------------------------------------------------------------------------


def test_sink_from_uri(tmp_path: Path) -> None:
    j = sink_from_uri(f"jsonl:{tmp_path / 'x.jsonl'}")
    assert isinstance(j, JsonlSink) and j.path == tmp_path / "x.jsonl"
    j.close()
    j2 = sink_from_uri(f"jsonl://{tmp_path / 'y.jsonl'}")
    assert isinstance(j2, JsonlSink) and j2.path == tmp_path / "y.jsonl"
    j2.close()
    u = sink_from_uri("syslog+udp://127.0.0.1:5514")
    assert isinstance(u, SyslogSink) and (u.host, u.port, u.transport) == ("127.0.0.1", 5514, "udp")
    t = sink_from_uri("syslog+tcp://[::1]")
    assert isinstance(t, SyslogSink) and (t.host, t.port, t.transport) == ("::1", 514, "tcp")
    w = sink_from_uri("https://example.org/hook?k=1")
    assert isinstance(w, WebhookSink) and w.url == "https://example.org/hook?k=1"
    assert isinstance(sink_from_uri("memory:"), MemorySink)
    for bad in ("ftp://x", "nothing", "jsonl:", "syslog+udp://:514", "syslog+tcp://h:99999"):
        with pytest.raises(SinkURIError):
            sink_from_uri(bad)
