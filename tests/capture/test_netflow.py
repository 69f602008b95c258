"""Tests of the NetFlow v5 / v9 / IPFIX decoder and UDP collector.

Hand-built datagrams (struct, independent of the decoder) check the wire formats; a real
exporter (Debian's ``softflowd`` replaying a capture from ../shared/data) checks that totals
survive the round trip: CI needs ``apt-get install -y softflowd``.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.netflow import NetFlowCollector, NetFlowDecoder
from iotsentry.capture.reader import read_all
from iotsentry.schema import FlowBatch, ip_from_str, ip_to_str

EXPORT = 1_700_000_000
UPTIME = 50_000_000  # ms


def v4(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


# ------------------------------------------------------------------------------ builders


def v5_datagram(records: list[dict[str, int]], *, secs: int = EXPORT, nsecs: int = 0) -> bytes:
    head = struct.pack(">HHIIIIBBH", 5, len(records), UPTIME, secs, nsecs, 1, 0, 0, 0)
    body = b"".join(
        struct.pack(
            ">IIIHHIIIIHHBBBBHHBBH",
            r["src"], r["dst"], 0, 1, 2, r["pkts"], r["bytes"], r["first"], r["last"],
            r["sport"], r["dport"], 0, r.get("flags", 0), r["proto"], 0, 0, 0, 24, 24, 0,
        )
        for r in records
    )  # fmt: skip
    return head + body


def flowset(set_id: int, body: bytes, pad_to: int = 4) -> bytes:
    body += b"\x00" * (-(len(body) + 4) % pad_to)
    return struct.pack(">HH", set_id, len(body) + 4) + body


def v9_datagram(*sets: bytes, source_id: int = 7, secs: int = EXPORT) -> bytes:
    return struct.pack(">HHIIII", 9, len(sets), UPTIME, secs, 1, source_id) + b"".join(sets)


def ipfix_message(*sets: bytes, domain: int = 3, export: int = EXPORT, length: int | None = None) -> bytes:
    body = b"".join(sets)
    n = 16 + len(body) if length is None else length
    return struct.pack(">HHIII", 10, n, export, 1, domain) + body


def template_record(tid: int, fields: list[tuple[int, int]] | list[tuple[int, int, int]]) -> bytes:
    out = struct.pack(">HH", tid, len(fields))
    for f in fields:
        if len(f) == 3:
            out += struct.pack(">HHI", f[0] | 0x8000, f[1], f[2])
        else:
            out += struct.pack(">HH", f[0], f[1])
    return out


# IPv4 five-tuple with counters and v9 uptime timestamps
V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4)]


def v9_record(src: str, dst: str, sport: int, dport: int, proto: int, flags: int, pkts: int, octets: int,
              first: int, last: int) -> bytes:  # fmt: skip
    return struct.pack(">IIHHBBIIII", v4(src), v4(dst), sport, dport, proto, flags, pkts, octets, first, last)


def check_row(b: FlowBatch, i: int, src: str, dst: str, sport: int, dport: int, proto: int) -> None:
    assert ip_to_str(b.src_ip_hi[i], b.src_ip_lo[i]) == src
    assert ip_to_str(b.dst_ip_hi[i], b.dst_ip_lo[i]) == dst
    assert (int(b.src_port[i]), int(b.dst_port[i]), int(b.proto[i])) == (sport, dport, proto)


# ------------------------------------------------------------------------------ NetFlow v5


def test_v5_records_decode_with_uptime_timestamps() -> None:
    recs = [
        dict(src=v4("10.0.0.1"), dst=v4("8.8.8.8"), pkts=3, bytes=180, first=UPTIME - 5000,
             last=UPTIME - 2000, sport=40000, dport=53, proto=17),
        dict(src=v4("10.0.0.2"), dst=v4("1.1.1.1"), pkts=10, bytes=4000, first=UPTIME - 1500,
             last=UPTIME - 500, sport=51000, dport=443, proto=6, flags=0x1B),
        dict(src=v4("10.0.0.3"), dst=v4("10.0.0.1"), pkts=1, bytes=84, first=UPTIME, last=UPTIME,
             sport=0, dport=(8 << 8) | 0, proto=1),
    ]  # fmt: skip
    dec = NetFlowDecoder()
    assert dec.feed(v5_datagram(recs, nsecs=250_000_000)) == 3
    b = dec.flush()
    assert len(b) == 3 and dec.stats.v5 == 1 and dec.stats.malformed == 0
    check_row(b, 0, "10.0.0.1", "8.8.8.8", 40000, 53, 17)
    check_row(b, 1, "10.0.0.2", "1.1.1.1", 51000, 443, 6)
    check_row(b, 2, "10.0.0.3", "10.0.0.1", 8, 0, 1)  # ICMP echo request: type 8, code 0 like Zeek
    export = EXPORT + 0.25
    for i, r in enumerate(recs):
        assert b.ts[i] == pytest.approx(export - (UPTIME - r["first"]) / 1000)
        assert b.duration[i] == pytest.approx((r["last"] - r["first"]) / 1000)
        assert int(b.src_pkts[i]) == r["pkts"] and int(b.src_bytes[i]) == r["bytes"]
    assert int(b.src_flags[1]) == 0x1B
    assert not b.dst_pkts.any() and not b.src_payload.any()  # unidirectional, payload unknown
    assert (b.first_index == -1).all() and list(b.flow_id) == [0, 1, 2]
    assert b.has("conn_state") and set(b.conn_state) == {""}
    # the next flush continues the flow ids and is empty until more data arrives
    assert len(dec.flush()) == 0
    dec.feed(v5_datagram(recs[:1]))
    assert list(dec.flush().flow_id) == [3]


def test_v5_uptime_wraparound() -> None:
    # the flow started before the 32-bit millisecond uptime wrapped
    rec = dict(src=v4("10.0.0.1"), dst=v4("10.0.0.2"), pkts=1, bytes=60, first=2**32 - 1000,
               last=2**32 - 1000, sport=1, dport=2, proto=17)  # fmt: skip
    data = bytearray(v5_datagram([rec]))
    struct.pack_into(">I", data, 4, 3000)  # header uptime 3 s after the wrap
    dec = NetFlowDecoder()
    dec.feed(bytes(data))
    assert dec.flush().ts[0] == pytest.approx(EXPORT - 4.0)


def test_v5_truncated_datagram_is_counted_not_raised() -> None:
    rec = dict(src=1, dst=2, pkts=1, bytes=1, first=0, last=0, sport=1, dport=2, proto=6)
    dec = NetFlowDecoder()
    good = v5_datagram([rec, rec])
    assert dec.feed(good[:-10], exporter=("192.0.2.9", 9995)) == 0
    assert dec.feed(b"\x00\x05") == 0
    assert dec.feed(b"\x00\x07" + b"\x00" * 40) == 0
    assert dec.stats.malformed == 3 and len(dec.errors) == 3
    assert "truncated" in dec.errors[0] and "192.0.2.9" in dec.errors[0]
    assert "version 7" in dec.errors[2]
    assert all("\n" not in e for e in dec.errors)
    assert dec.feed(good) == 2  # still working afterwards
    assert len(dec.flush()) == 2


# ------------------------------------------------------------------------------ NetFlow v9


def test_v9_template_then_data_and_options_skipped() -> None:
    tmpl = flowset(0, template_record(260, V9_FIELDS))
    # options template 300: scope System (type 1, 4 bytes); options SAMPLING_INTERVAL, IF_NAME(16)
    opt = flowset(1, struct.pack(">HHH", 300, 4, 8) + struct.pack(">HHHHHH", 1, 4, 34, 4, 82, 16))
    opt_data = flowset(300, struct.pack(">II", 1, 100) + b"eth0".ljust(16, b"\x00"))
    recs = [
        v9_record("192.168.1.10", "93.184.216.34", 51515, 80, 6, 0x1A, 12, 9000, UPTIME - 3000, UPTIME - 100),
        v9_record("192.168.1.11", "192.168.1.1", 5353, 5353, 17, 0, 2, 300, UPTIME - 10, UPTIME),
    ]
    dec = NetFlowDecoder()
    n = dec.feed(v9_datagram(tmpl, opt, opt_data, flowset(260, b"".join(recs))))
    assert n == 2 and dec.stats.options_records == 1 and dec.stats.templates_received == 2
    b = dec.flush()
    check_row(b, 0, "192.168.1.10", "93.184.216.34", 51515, 80, 6)
    check_row(b, 1, "192.168.1.11", "192.168.1.1", 5353, 5353, 17)
    assert b.ts[0] == pytest.approx(EXPORT - 3.0) and b.duration[0] == pytest.approx(2.9)
    assert list(b.src_pkts) == [12, 2] and list(b.src_bytes) == [9000, 300]
    assert int(b.src_flags[0]) == 0x1A


def test_v9_data_before_template_is_buffered_then_decoded() -> None:
    data = flowset(256, v9_record("10.1.1.1", "10.1.1.2", 1000, 2000, 17, 0, 5, 500, UPTIME, UPTIME))
    dec = NetFlowDecoder()
    assert dec.feed(v9_datagram(data)) == 0
    assert dec.stats.pending_sets == 1 and len(dec.flush()) == 0
    # a template from another source id does not release it
    dec.feed(v9_datagram(flowset(0, template_record(256, V9_FIELDS)), source_id=99))
    assert dec.stats.pending_sets == 1
    assert dec.feed(v9_datagram(flowset(0, template_record(256, V9_FIELDS)))) == 1
    assert dec.stats.pending_sets == 0
    b = dec.flush()
    check_row(b, 0, "10.1.1.1", "10.1.1.2", 1000, 2000, 17)
    assert int(b.src_pkts[0]) == 5


def test_unknown_template_buffer_is_bounded() -> None:
    dec = NetFlowDecoder(max_pending_sets=5)
    data = flowset(400, b"\x01" * 24)
    for _ in range(12):
        dec.feed(v9_datagram(data))
    assert dec.stats.pending_sets == 5 and dec.stats.dropped_sets == 7
    dec2 = NetFlowDecoder(max_pending_age=0.0)
    dec2.feed(v9_datagram(data))
    time.sleep(0.01)
    dec2.feed(v9_datagram(data))
    assert dec2.stats.dropped_sets == 1


def test_templates_are_keyed_by_exporter() -> None:
    dec = NetFlowDecoder()
    short = [(8, 4), (12, 4)]
    dec.feed(v9_datagram(flowset(0, template_record(256, V9_FIELDS))), exporter=("10.9.9.1", 2055))
    dec.feed(v9_datagram(flowset(0, template_record(256, short))), exporter=("10.9.9.2", 2055))
    rec = v9_record("1.2.3.4", "5.6.7.8", 1, 2, 6, 0, 1, 40, UPTIME, UPTIME)
    assert dec.feed(v9_datagram(flowset(256, rec)), exporter=("10.9.9.1", 2055)) == 1
    assert (
        dec.feed(v9_datagram(flowset(256, rec)), exporter=("10.9.9.2", 2055))
        == (len(flowset(256, rec)) - 4) // 8
    )
    b = dec.flush()
    assert int(b.src_port[0]) == 1 and int(b.src_pkts[0]) == 1
    assert not b.src_pkts[1:].any()  # the second exporter's template has no counters


def test_v9_bad_set_length_counts_but_keeps_earlier_sets() -> None:
    tmpl = flowset(0, template_record(256, V9_FIELDS))
    rec = v9_record("1.2.3.4", "5.6.7.8", 1, 2, 6, 0, 1, 40, UPTIME, UPTIME)
    broken = struct.pack(">HH", 256, 200) + rec
    dec = NetFlowDecoder()
    assert dec.feed(v9_datagram(tmpl, flowset(256, rec), broken)) == 1
    assert dec.stats.malformed == 1 and "claims 200 bytes" in (dec.last_error or "")
    bad_tmpl = flowset(0, struct.pack(">HHHH", 256, 3, 8, 4))  # says 3 fields, holds 1
    dec.feed(v9_datagram(bad_tmpl))
    assert dec.stats.malformed == 2 and "cut short" in (dec.last_error or "")
    assert len(dec.flush()) == 1


# ------------------------------------------------------------------------------ IPFIX


def test_ipfix_options_init_time_ipv6_biflow_and_macs() -> None:
    # options template 256 (scope meteringProcessId) carrying systemInitTimeMilliseconds
    opt_t = flowset(3, struct.pack(">HHH", 256, 2, 1) + struct.pack(">HHHH", 143, 4, 160, 8))
    init_ms = (EXPORT - 3600) * 1000
    opt_d = flowset(256, struct.pack(">IQ", 1, init_ms))
    fields: list[tuple[int, int] | tuple[int, int, int]] = [
        (27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (22, 4), (21, 4), (1, 8), (2, 8),
        (56, 6), (80, 6), (1, 8, 29305), (2, 8, 29305), (6, 2),
    ]  # fmt: skip
    tmpl = flowset(2, template_record(300, fields))  # type: ignore[arg-type]
    src, dst = "2001:db8::10", "2001:db8:ffff::1"
    rec = (
        ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
        + struct.pack(">HHBIIQQ", 40001, 443, 6, 1_000_000, 1_004_000, 5000, 9)
        + bytes.fromhex("02aabbccddee") + bytes.fromhex("02ffeeddccbb")
        + struct.pack(">QQH", 70000, 11, 0x0112)
    )  # fmt: skip
    dec = NetFlowDecoder()
    assert dec.feed(ipfix_message(opt_t, opt_d, tmpl, flowset(300, rec + rec))) == 2
    assert dec.stats.options_records == 1 and dec.stats.ipfix == 1
    b = dec.flush()
    check_row(b, 0, src, dst, 40001, 443, 6)
    assert (int(b.src_ip_hi[0]), int(b.src_ip_lo[0])) == ip_from_str(src)
    assert b.ts[0] == pytest.approx(init_ms / 1000 + 1000.0) and b.duration[0] == pytest.approx(4.0)
    assert (int(b.src_bytes[0]), int(b.src_pkts[0]), int(b.dst_bytes[0]), int(b.dst_pkts[0])) == (
        5000, 9, 70000, 11)  # fmt: skip
    assert int(b.src_mac[0]) == 0x02AABBCCDDEE and int(b.dst_mac[0]) == 0x02FFEEDDCCBB
    assert int(b.src_flags[0]) == 0x12


def test_ipfix_variable_length_fields_and_absolute_times() -> None:
    # sourceIPv4, interfaceName (variable), destinationIPv4, ports, proto, flowStart/EndMilliseconds,
    # octetDeltaCount in reduced-size encoding (3 bytes) and an enterprise-specific variable field
    fields = [(8, 4), (82, 65535), (12, 4), (7, 2), (11, 2), (4, 1), (152, 8), (153, 8), (1, 3),
              (999, 65535, 12345)]  # fmt: skip
    tmpl = flowset(2, template_record(512, fields))  # type: ignore[arg-type]
    start_ms = EXPORT * 1000 - 7250

    def rec(name: bytes, extra: bytes, octets: int, sport: int) -> bytes:
        head = bytes([len(name)]) if len(name) < 255 else b"\xff" + struct.pack(">H", len(name))
        ext = bytes([len(extra)]) if len(extra) < 255 else b"\xff" + struct.pack(">H", len(extra))
        return (
            struct.pack(">I", v4("172.16.0.5")) + head + name + struct.pack(">I", v4("172.16.0.9"))
            + struct.pack(">HHBQQ", sport, 8883, 6, start_ms, start_ms + 1500)
            + octets.to_bytes(3, "big") + ext + extra
        )  # fmt: skip

    body = rec(b"eth0", b"", 70000, 1) + rec(b"x" * 300, b"y" * 1000, 12, 2) + rec(b"", b"z", 1, 3)
    dec = NetFlowDecoder()
    assert dec.feed(ipfix_message(tmpl, flowset(512, body))) == 3
    b = dec.flush()
    assert dec.stats.malformed == 0
    for i in range(3):
        check_row(b, i, "172.16.0.5", "172.16.0.9", i + 1, 8883, 6)
        assert b.ts[i] == pytest.approx(EXPORT - 7.25) and b.duration[i] == pytest.approx(1.5)
    assert list(b.src_bytes) == [70000, 12, 1]
    # a variable-length field running past the set end is malformed, not a crash
    assert dec.feed(ipfix_message(tmpl, flowset(512, rec(b"eth0", b"", 1, 1)[:-3] + b"\x09"))) == 0
    assert dec.stats.malformed == 1 and "overruns" in (dec.last_error or "")


def test_ipfix_truncated_message_and_template_withdrawal() -> None:
    fields = [(8, 4), (12, 4), (2, 4), (1, 4)]
    tmpl = flowset(2, template_record(256, fields))
    rec = struct.pack(">IIII", v4("10.0.0.1"), v4("10.0.0.2"), 2, 120)
    msg = ipfix_message(tmpl, flowset(256, rec * 3))
    dec = NetFlowDecoder()
    assert dec.feed(msg[:-8]) == 0  # the data set is cut: only the template is used
    assert dec.stats.malformed == 1 and "only" in (dec.last_error or "")
    assert dec.feed(ipfix_message(flowset(256, rec))) == 1  # template survived
    dec.feed(ipfix_message(flowset(2, struct.pack(">HH", 256, 0))))  # withdraw template 256
    assert dec.feed(ipfix_message(flowset(256, rec))) == 0 and dec.stats.pending_sets == 1
    assert dec.feed(struct.pack(">HHIII", 10, 8, EXPORT, 0, 0)) == 0
    assert "shorter than the header" in (dec.last_error or "")
    assert len(dec.flush()) == 1


def test_collector_over_udp_counts_malformed_and_never_crashes() -> None:
    with NetFlowCollector("127.0.0.1", 0) as col:
        host, port = col.address
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rec = dict(src=v4("10.0.0.1"), dst=v4("10.0.0.2"), pkts=4, bytes=400, first=UPTIME,
                   last=UPTIME, sport=1234, dport=80, proto=6)  # fmt: skip
        for k in range(20):
            tx.sendto(v5_datagram([rec] * 10), (host, port))
            if k % 5 == 0:
                tx.sendto(b"garbage" * k, (host, port))
        tx.close()
        got: list[FlowBatch] = []
        deadline = time.monotonic() + 5
        while sum(map(len, got)) < 200 and time.monotonic() < deadline:
            got.append(col.poll(timeout=0.2))
        b = FlowBatch.concat(got)
        assert len(b) == 200 and int(b.src_bytes.sum()) == 200 * 400
        assert list(b.flow_id) == list(range(200))
        assert col.stats.malformed == 4 and len(col.errors) == 4
        assert col.errors[0].startswith("('127.0.0.1'")
        assert len(col.poll(timeout=0.05)) == 0


def test_collector_bind_error_is_one_line() -> None:
    from iotsentry.errors import InputError

    with NetFlowCollector("127.0.0.1", 0) as col, pytest.raises(InputError, match="cannot bind"):
        NetFlowCollector("127.0.0.1", col.address[1])


# ------------------------------------------------------------------------------ softflowd

PCAP = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")


@pytest.mark.parametrize("version", [5, 9, 10])
def test_softflowd_replay_totals_match_capture(version: int, tmp_path: Path) -> None:
    exe = shutil.which("softflowd")
    if exe is None:
        pytest.skip("softflowd not on PATH (apt-get install -y softflowd)")
    pcap = data_path(*PCAP)
    frames = read_all(pcap)
    ip = frames.ip_version == (4 if version == 5 else frames.ip_version)
    ip &= frames.ip_version > 0
    want_pkts = int(ip.sum())
    want_bytes = int((frames.cap_len[ip].astype(np.int64) - 14).sum())  # softflowd: captured IP bytes
    assert not frames.vlan.any()
    with NetFlowCollector("127.0.0.1", 0) as col:
        # "-c none": no control socket (softflowd can block in accept() on it after EOF)
        cmd = [exe, "-d", "-a", "-r", str(pcap), "-n", f"127.0.0.1:{col.address[1]}", "-v", str(version),
               "-c", "none", "-p", str(tmp_path / "pid")]  # fmt: skip
        if version != 5:
            cmd.append("-6")
        got: list[FlowBatch] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            while proc.poll() is None:  # read while softflowd sends, so the socket never overflows
                got.append(col.poll(timeout=0.05))
            report = proc.stdout.read() if proc.stdout else ""
        deadline = time.monotonic() + 2
        m = re.search(r"Flows exported: \d+ \((\d+) records\) in (\d+) packets", report)
        assert m, report
        records, datagrams = int(m.group(1)), int(m.group(2))
        while col.stats.datagrams < datagrams and time.monotonic() < deadline:
            got.append(col.poll(timeout=0.1))
        b = FlowBatch.concat(got)
        assert col.stats.malformed == 0 and col.stats.dropped_sets == 0, col.errors
    assert col.stats.datagrams == datagrams
    assert len(b) == records
    assert int(b.src_pkts.sum()) == want_pkts
    assert int(b.src_bytes.sum()) == want_bytes
    # every flow lies within the capture (v9 export times have one-second resolution)
    slack = 1.0 if version == 9 else 0.01
    assert b.ts.min() >= frames.ts[0] - slack
    assert (b.ts + b.duration).max() <= frames.ts[-1] + slack
    # the flows' addresses and ports are those of the capture's packets
    pkt_keys = set(zip(frames.src_ip_lo[ip].tolist(), frames.src_port[ip].tolist(), strict=True))
    tcp_udp = (b.proto == 6) | (b.proto == 17)
    flow_keys = set(zip(b.src_ip_lo[tcp_udp].tolist(), b.src_port[tcp_udp].tolist(), strict=True))
    assert flow_keys <= pkt_keys
    if version != 5:
        assert (b.src_ip_hi != 0).any()  # IPv6 flows came through the IPv6 templates
