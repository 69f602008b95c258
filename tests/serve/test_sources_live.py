"""``iotsentry serve`` against real inputs: a NetFlow exporter (Debian's ``softflowd`` replaying
captures from ../shared/data), a live interface (a veth pair whose far end sits in a network
namespace the test creates), and a real PostgreSQL store.

The monitor runs in-process (:func:`build_monitor`, :meth:`Monitor.run` in a thread) with its
real sources built from the TOML configuration; it is stopped gracefully with
:meth:`Monitor.stop` (what SIGTERM does). Skips: no ``softflowd`` (``apt-get install -y
softflowd``), not root / no ``ip netns``, no PostgreSQL binaries, no real data.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servekit import config_text, cut_capture, home_capture, write_pcap

from conftest import data_path
from iotsentry.capture.netflow import NetFlowCollector
from iotsentry.capture.reader import read_all
from iotsentry.schema import FlowBatch, ip_to_str
from iotsentry.serve.config import load_config
from iotsentry.serve.monitor import JsonLog, Monitor, MonitorStats, build_monitor
from iotsentry.store import open_store
from netns import subnet, veth_pair

HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
MASSCAN = (
    "scan-bruteforce-exfil-samples",
    "esnet-curated-pcaps",
    "attacks",
    "scanners",
    "masscan",
    "tcp_0_1000_20190821.pcap",
)
SCANNER = "172.31.15.102"
"""The masscan capture's scanner (SYN scan of ports 0-1000 of one host)."""


# ------------------------------------------------------------------------------ helpers


class Lines:
    """A log stream that keeps the JSON lines (thread-safe enough: JsonLog writes under a lock)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, s: str) -> None:
        self.lines.extend(x for x in s.splitlines() if x)

    def flush(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines]


class Running:
    """A monitor built from a configuration file, running in a thread until :meth:`stop`."""

    def __init__(self, cfg: Path) -> None:
        self.log = Lines()
        self.mon: Monitor = build_monitor(load_config(cfg), log=JsonLog(self.log))  # type: ignore[arg-type]
        self.flow_batches: list[FlowBatch] = []
        self.packet_batch_sizes: list[int] = []
        ingest = self.mon.engine.ingest

        def recording(batch: Any) -> Any:  # what the engine was given, for the totals
            if isinstance(batch, FlowBatch):
                self.flow_batches.append(batch)
            else:
                self.packet_batch_sizes.append(len(batch))
            return ingest(batch)

        self.mon.engine.ingest = recording  # type: ignore[method-assign]
        self.stats: MonitorStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-monitor")

    def _run(self) -> None:
        try:
            self.stats = self.mon.run(handle_signals=False)
        except BaseException as e:
            self.error = e

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.error is None, self.error
            assert self.thread.is_alive(), "the monitor stopped"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {self.log.lines[-5:]}")
            time.sleep(0.05)

    def stop(self) -> MonitorStats:
        self.mon.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the monitor did not stop"
        assert self.error is None, self.error
        assert self.stats is not None
        return self.stats

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.mon.stop()
            self.thread.join(timeout=60)
        self.mon.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _softflowd() -> str:
    exe = shutil.which("softflowd")
    if exe is None:
        pytest.skip("softflowd not on PATH (apt-get install -y softflowd)")
    return exe


def _export(
    pcap: Path, port: int, version: int, tmp: Path, *, poll: Callable[[], object] | None = None
) -> int:
    """Replay ``pcap`` with softflowd to 127.0.0.1:``port``; returns the records softflowd says it
    exported (``-c none``: no control socket, ``-a``: capture timestamps)."""
    cmd = [_softflowd(), "-d", "-a", "-r", str(pcap), "-n", f"127.0.0.1:{port}", "-v", str(version),
           "-c", "none", "-p", str(tmp / f"softflowd-{port}.pid"), "-6"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        while proc.poll() is None:
            if poll is not None:
                poll()
            else:
                time.sleep(0.01)
        report = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, report
    m = re.search(r"Flows exported: \d+ \((\d+) records\) in (\d+) packets", report)
    assert m, report
    return int(m.group(1))


def _netflow_config(root: Path, port: int, *, learn_s: float = 3600.0, extra: str = "") -> Path:
    cfg = root / "serve.toml"
    cfg.write_text(
        f"""
[store]
target = "{root / "store.db"}"

[[source]]
kind = "netflow"
name = "nf"
host = "127.0.0.1"
port = {port}

[learning]
seconds = {learn_s}

[[sink]]
path = "{root / "alerts.jsonl"}"

[audit]
path = "{root / "audit.jsonl"}"

[state]
dir = "{root / "state"}"

[monitor]
queue_size = 4
poll_timeout_s = 0.2
inventory_interval_s = 0.5
{extra}
"""
    )
    return cfg


def _ip_totals(pcap: Path) -> tuple[int, int]:
    """IP packets and their IP-level bytes (captured length minus the Ethernet header), what
    softflowd counts."""
    frames = read_all(pcap)
    ip = frames.ip_version > 0
    assert not frames.vlan.any()
    return int(ip.sum()), int((frames.cap_len[ip].astype(np.int64) - 14).sum())


# ------------------------------------------------------------------------------ 1. netflow


@pytest.mark.slow
@pytest.mark.parametrize("version", [9, 10])
def test_netflow_source_ingests_softflowd_exports(version: int, tmp_path: Path) -> None:
    pcap = data_path(*HUE)
    _softflowd()
    port = _free_udp_port()
    cfg = _netflow_config(tmp_path, port)
    with Running(cfg) as run:
        records = _export(pcap, port, version, tmp_path)
        run.wait_for(lambda: run.mon.metrics.flows["nf"] >= records, 20, f"{records} flows")
        time.sleep(0.5)  # nothing more arrives
        stats = run.stop()
        collector = run.mon.sources["nf"].reader  # type: ignore[attr-defined]
        assert collector.stats.malformed == 0 and collector.stats.dropped_sets == 0, collector.errors
        assert collector.stats.ipfix if version == 10 else collector.stats.v9
    # every record softflowd exported was ingested once: metrics, run stats, persisted counters
    assert run.mon.metrics.flows["nf"] == records == stats.flows
    assert stats.packets == 0
    assert run.mon.source_counters()["nf"]["flows"] == records
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["sources"]["nf"]["flows"] == records and state["sources"]["nf"]["state"] == {}
    assert f'iotsentry_flows_ingested_total{{source="nf"}} {records}' in run.mon.metrics.render()
    # and they carry the capture's packets and bytes
    flows = FlowBatch.concat(run.flow_batches)
    want_pkts, want_bytes = _ip_totals(pcap)
    assert (len(flows), int(flows.src_pkts.sum()), int(flows.src_bytes.sum())) == (
        records,
        want_pkts,
        want_bytes,
    )
    # a graceful stop: the run is closed "ok" in the store, audit and logs
    events = run.log.events()
    assert events[-1]["event"] == "serve.stop" and events[-1]["status"] == "ok"
    with open_store(tmp_path / "store.db") as store:
        runs = store.get_runs()
        assert [r["status"] for r in runs] == ["ok"]
        assert not store.get_alerts()  # no model, no packets: flows are only counted


HEADER = (
    "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,service,duration,orig_bytes,resp_bytes,"
    "conn_state,local_orig,local_resp,missed_bytes,history,orig_pkts,orig_ip_bytes,resp_pkts,"
    "resp_ip_bytes,tunnel_parents,label,detailed-label"
)
PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


def _labeled_csv(flows: FlowBatch, path: Path) -> Path:
    """The flows as an IoT-23-style labeled CSV (NetFlow's view: no state, history or payload);
    the scanner's flows are labeled a horizontal port scan, the others benign."""
    rows = [HEADER]
    for i in range(len(flows)):
        src = ip_to_str(flows.src_ip_hi[i], flows.src_ip_lo[i])
        dst = ip_to_str(flows.dst_ip_hi[i], flows.dst_ip_lo[i])
        label = "Malicious,PartOfAHorizontalPortScan" if src == SCANNER else "Benign,-"
        rows.append(
            f"{flows.ts[i]:.6f},N{i},{src},{flows.src_port[i]},{dst},{flows.dst_port[i]},"
            f"{PROTO.get(int(flows.proto[i]), 'other')},-,{flows.duration[i]:.6f},{flows.src_payload[i]},"
            f"{flows.dst_payload[i]},-,,,0,-,{flows.src_pkts[i]},{flows.src_bytes[i]},{flows.dst_pkts[i]},"
            f"{flows.dst_bytes[i]},-,{label}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def netflow_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(signed model dir, keyring): an hgb flow model trained on softflowd's view of the masscan
    scan (malicious) and the Philips Hue bridge (benign), signed like test_integrity_and_metrics."""
    from iotsentry.detectors.flow_models import train_flows
    from iotsentry.integrity.signing import load_keyring, rotate_key, sign_model_dir

    scan, hue = data_path(*MASSCAN), data_path(*HUE)
    _softflowd()
    root = tmp_path_factory.mktemp("nfmodel")
    parts: list[FlowBatch] = []
    with NetFlowCollector("127.0.0.1", 0) as col:
        port = col.address[1]
        for pcap, version in ((scan, 9), (hue, 10)):
            _export(pcap, port, version, root, poll=lambda: parts.append(col.poll(timeout=0.02)))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            parts.append(col.poll(timeout=0.1))
    flows = FlowBatch.concat(parts)
    csv = _labeled_csv(flows, root / "flows.csv")
    train_flows([csv], root / "model", "hgb")
    keys = root / "keys"
    rotate_key(keys)
    active = load_keyring(keys).active
    assert active is not None
    sign_model_dir(root / "model", keys / f"{active.key_id}.key")
    return root / "model", keys


@pytest.mark.slow
def test_netflow_flows_through_a_signed_model_become_stored_alerts(
    tmp_path: Path, netflow_model: tuple[Path, Path]
) -> None:
    model_dir, keys = netflow_model
    scan, hue = data_path(*MASSCAN), data_path(*HUE)
    port = _free_udp_port()
    cfg = _netflow_config(tmp_path, port, extra=f'[model]\ndir = "{model_dir}"\nkeyring = "{keys}"\n')
    with Running(cfg) as run:
        assert run.mon.engine.flow_model is not None
        records = _export(scan, port, 9, tmp_path)
        records += _export(hue, port, 10, tmp_path)
        run.wait_for(lambda: run.mon.metrics.flows["nf"] >= records, 20, f"{records} flows")
        time.sleep(0.5)
        stats = run.stop()
    assert stats.flows == records
    with open_store(tmp_path / "store.db") as store:
        rows = [r.alert for r in store.get_alerts(limit=100_000)]
    assert rows and stats.alerts_stored == len(rows)
    assert all(a.detector == "flow-hgb" and a.event_type == "alert" for a in rows)
    # the scan, and only the scan, was flagged: the scanned ports (0-1000) of the one target
    assert {a.src_ip for a in rows} == {SCANNER}
    flows = FlowBatch.concat(run.flow_batches)
    scan_rows = np.array(
        [ip_to_str(h, lo) == SCANNER for h, lo in zip(flows.src_ip_hi, flows.src_ip_lo, strict=True)]
    )
    scanned = {int(p) for p in flows.dst_port[scan_rows]}
    alerted = {a.dest_port for a in rows}
    assert alerted <= scanned and len(alerted) >= 0.95 * len(scanned)
    # stored before being sent: the JSONL sink got the opening (and escalations) of the scan's
    # incident, never one record per scanned port
    sent = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines() if x.strip()]
    with open_store(tmp_path / "store.db") as store:
        incidents, _ = store.query_incidents(limit=10_000)
    assert sent and len(sent) < len(rows)
    assert {x["incident_id"] for x in sent} == {i.incident_id for i in incidents}
    assert sent[0]["iotsentry"]["incident"]["event"] == "opened"
    assert {i.device_id for i in incidents} == {SCANNER}
    actions = [json.loads(x)["action"] for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert "model.load" in actions and actions[-1] == "serve.stop"


# ------------------------------------------------------------------------------ 2. interface

HOST_IP, NS_IP = subnet(232)
BATCH = 50
"""``batch_size`` of the interface source: smaller than the scan's burst of frames."""


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """(host-side interface, namespace name); everything is removed afterwards."""
    with veth_pair("iotsv", HOST_IP, NS_IP, quiet_ipv6=True) as pair:
        yield pair


DNS_LIKE = textwrap.dedent(
    """
    import os, socket, struct, sys, time
    dst, stop = sys.argv[1], sys.argv[2]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 40053))
    u.settimeout(0.2)
    k = 0
    while not os.path.exists(stop):
        qname = b"".join(bytes([len(p)]) + p for p in (b"time", b"example", b"org")) + b"\\0"
        u.sendto(struct.pack(">HHHHHH", k & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\\0\\1\\0\\1", (dst, 53))
        try:
            u.recv(512)
        except OSError:
            pass
        k += 1
        time.sleep(0.25)
    """
)

PORT_SCAN = textwrap.dedent(
    """
    import socket, sys
    dst, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    refused = 0
    for port in range(first, first + n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        refused += s.connect_ex((dst, port)) != 0
        s.close()
    print(refused)
    """
)


def _dns_responder(stop: threading.Event) -> threading.Thread:
    """A UDP/53 service on the host end answering every query (a DNS-like exchange)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST_IP, 53))
    sock.settimeout(0.1)

    def serve() -> None:
        with sock:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(512)
                except OSError:
                    continue
                sock.sendto(data[:2] + b"\x81\x80" + data[4:] + b"\xc0\x0c\x00\x01\x00\x01" + bytes(10), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_interface_source_learns_then_flags_a_port_scan(veth: tuple[str, str], tmp_path: Path) -> None:
    host_if, ns = veth
    # learning ends at the first 60-s window boundary >= 60 s after the first packet: start in the
    # first 40 s of a minute so that at least 20 s of the DNS-like pattern are learned
    if time.time() % 60 > 40:
        time.sleep(60.5 - time.time() % 60)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f"""
[store]
target = "{tmp_path / "store.db"}"

[[source]]
kind = "interface"
name = "lan"
interface = "{host_if}"
batch_size = {BATCH}

[learning]
seconds = 60

[[sink]]
path = "{tmp_path / "alerts.jsonl"}"

[state]
dir = "{tmp_path / "state"}"

[monitor]
poll_timeout_s = 0.2
inventory_interval_s = 0.5
"""
    )
    stop_dns, stop_file = threading.Event(), tmp_path / "stop-dns"
    _dns_responder(stop_dns)
    dns = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", DNS_LIKE, HOST_IP, str(stop_file)],
        stderr=subprocess.PIPE,
    )
    try:
        with Running(cfg) as run:
            # packets are processed by whole 60-s windows: the engine notices the learning end
            # only when the window after it closes; the scan waits for the wall clock to pass it
            # (the graceful stop scores its window)
            eng = run.mon.engine
            run.wait_for(lambda: time.time() > eng.t_end + 2.0, 90, "the learning end")
            assert eng.t_end - eng.first_ts >= 15.0  # the DNS-like pattern was learned
            scan = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", PORT_SCAN, HOST_IP, "20000", "200"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert scan.returncode == 0, scan.stderr
            assert int(scan.stdout) == 200  # every port refused (RST): a scan of closed ports
            time.sleep(1.5)
            stop_file.touch()
            assert dns.wait(timeout=10) == 0
            time.sleep(0.5)
            stats = run.stop()  # a graceful stop scores the open window (the scan's)
    finally:
        stop_file.touch()
        stop_dns.set()
        if dns.poll() is None:
            dns.kill()
            dns.wait()
    assert stats.packets > 400 and stats.flows == 0
    # the configured batch size bounds what one poll of the interface hands the engine
    sizes = run.packet_batch_sizes
    assert sum(sizes) == stats.packets and max(sizes) <= BATCH, sizes
    with open_store(tmp_path / "store.db") as store:
        devices = store.get_devices()
        alerts = [r.alert for r in store.get_alerts(limit=10_000)]
        baselines = store.latest_baselines()
    # the inventory holds both ends of the link, with the device's address
    by_ip = {ip: d for d in devices for ip in d.ips}
    assert NS_IP in by_ip and HOST_IP in by_ip
    dev = by_ip[NS_IP].device_id
    assert dev in baselines  # it was learned (the DNS-like exchange)
    # the scan was flagged for the scanning device, against the scanned host
    scans = [a for a in alerts if a.device_id == dev and a.category in ("port-scan", "scan")]
    assert scans, [(a.device_id, a.category, a.reason) for a in alerts]
    assert all(a.dest_ip in ("", HOST_IP) for a in scans)
    # and its DNS-like pattern was learned as normal: no novelty alert (new peer / service / name)
    # for the device, only the scan's shape (the alert's example port is the window's
    # representative packet, which may be a DNS one: the detector's choice, not the monitor's)
    assert {a.category for a in alerts if a.device_id == dev} <= {"port-scan", "scan", "slow-scan"}, [
        (a.category, a.dest_port, a.reason) for a in alerts
    ]


# ------------------------------------------------------------------------------ 3. PostgreSQL


def _alert_keys(target: str) -> set[tuple[str, str, str, int]]:
    with open_store(target) as store:
        return {
            (a.device_id, a.category, a.dest_ip, a.dest_port)
            for a in (r.alert for r in store.get_alerts(limit=100_000))
        }


def _run_to_idle(cfg: Path) -> tuple[Monitor, Lines]:
    log = Lines()
    mon = build_monitor(load_config(cfg), log=JsonLog(log))  # type: ignore[arg-type]
    try:
        mon.run(idle_exit_s=1.0, handle_signals=False)
    finally:
        mon.close()
    return mon, log


@pytest.mark.slow
def test_postgres_store_holds_what_sqlite_holds_and_a_restart_resumes(
    tmp_path: Path, pg_schema_dsn: str
) -> None:
    files = cut_capture(home_capture(tmp_path / "home.pcap"), 300.0)
    total = sum(len(r) for _, r in files)
    targets: dict[str, str] = {}
    keys: dict[str, list[set[tuple[str, str, str, int]]]] = {}
    packets: dict[str, list[int]] = {}
    for kind in ("sqlite", "postgres"):
        root = tmp_path / kind
        (root / "pcaps").mkdir(parents=True)
        text = config_text(root)
        if kind == "postgres":
            text = text.replace(f'target = "{root / "store.db"}"', f'target = "{pg_schema_dsn}"')
            assert pg_schema_dsn in text
        targets[kind] = pg_schema_dsn if kind == "postgres" else str(root / "store.db")
        cfg = root / "serve.toml"
        cfg.write_text(text)
        keys[kind], packets[kind] = [], []
        # two runs: the first over 9 files, the second (a restart) over the rest
        for part in (files[:9], files[9:]):
            for name, rows in part:
                write_pcap(root / "pcaps", name, rows)
            mon, log = _run_to_idle(cfg)
            packets[kind].append(mon.stats.packets)
            keys[kind].append(_alert_keys(targets[kind]))
        assert any(e["event"] == "source.resumed" for e in log.events())
        assert mon.source_counters()["lan"]["packets"] == total
    # the restart neither re-read nor skipped a packet, on either store
    assert (
        packets["sqlite"]
        == packets["postgres"]
        == [sum(len(r) for _, r in files[:9]), total - packets["sqlite"][0]]
    )
    # after each run, PostgreSQL holds the alerts SQLite holds
    assert keys["postgres"] == keys["sqlite"]
    assert keys["sqlite"][1] and keys["sqlite"][0] <= keys["sqlite"][1]
    with open_store(pg_schema_dsn) as pg, open_store(targets["sqlite"]) as lite:
        assert [r["status"] for r in pg.get_runs()] == ["ok", "ok"]
        assert {d.device_id: d.packets for d in pg.get_devices()} == {
            d.device_id: d.packets for d in lite.get_devices()
        }
