"""Tests of the rotating-pcap directory follower and the Zeek conn.log follower."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pcapgen import eth, ipv4, pcap_bytes, udp

from conftest import data_path
from iotsentry.capture.follow import PcapDirFollower, PcapFollowState, ZeekFollowState, ZeekLogFollower
from iotsentry.capture.zeek import read_conn_log
from iotsentry.errors import CaptureDamaged
from iotsentry.schema import FlowBatch, PacketBatch

HEADER = pcap_bytes([])


def record(k: int) -> bytes:
    """pcap record of packet ``k``: UDP source port ``1000 + k``, payload of k % 50 bytes."""
    frame = eth(ipv4(udp(1000 + k, 53, b"p" * (k % 50)), 17))
    return pcap_bytes([(1_700_000_000 + k, k, frame)])[len(HEADER) :]


def ports(batches: list[PacketBatch]) -> list[int]:
    return [int(p) - 1000 for b in batches for p in b.src_port]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


# ------------------------------------------------------------------------------ pcaps


def test_rotating_pcaps_each_packet_once_across_state_restore(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n_files, per_file = 6, 37
    stream = [(f, k) for f in range(n_files) for k in range(f * per_file, (f + 1) * per_file)]
    follower = PcapDirFollower(tmp_path, "cap-*.pcap", grace=3600)
    state_file = tmp_path / "state.json"
    got: list[PacketBatch] = []
    pending = b""
    current = -1
    for step, (f, k) in enumerate(stream):
        path = tmp_path / f"cap-{f:03d}.pcap"
        if f != current:
            if pending:  # finish the previous file before the next appears (as tcpdump does)
                append(tmp_path / f"cap-{current:03d}.pcap", pending)
                pending = b""
            append(path, HEADER)
            current = f
        data = pending + record(k)
        cut = int(rng.integers(0, len(data) + 1))  # the writer may stop mid-record
        append(path, data[:cut])
        pending = data[cut:]
        if step % 5 == 0:
            got.append(follower.poll())
        if step == len(stream) // 2:  # restart mid-stream from the saved state
            follower.state.save(state_file)
            follower = PcapDirFollower(
                tmp_path, "cap-*.pcap", grace=3600, state=PcapFollowState.load(state_file)
            )
    append(tmp_path / f"cap-{current:03d}.pcap", pending)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damage anywhere
        got.extend(follower.follow(interval=0.01, timeout=0.05))
    assert ports(got) == [k for _, k in stream]
    batch = PacketBatch.concat(got)
    assert list(batch.index) == list(range(len(stream)))
    assert list(batch.payload_len) == [k % 50 for _, k in stream]
    assert (batch.ts == 1_700_000_000 + np.arange(len(stream)) + np.arange(len(stream)) / 1e6).all()
    marks = follower.state.files
    assert sorted(marks) == [f"cap-{f:03d}.pcap" for f in range(n_files)]
    assert all(m.packets == per_file for m in marks.values())
    assert all(m.closed for name, m in marks.items() if name != f"cap-{n_files - 1:03d}.pcap")
    json.loads(state_file.read_text())  # the state is plain JSON


def test_half_written_record_waits_and_old_damage_is_reported(tmp_path: Path) -> None:
    a = tmp_path / "a.pcap"
    a.write_bytes(HEADER + record(0) + record(1) + record(2)[:20])
    f = PcapDirFollower(tmp_path, "*.pcap")
    assert ports([f.poll()]) == [0, 1]
    assert len(f.poll()) == 0  # the cut record is not consumed
    append(a, record(2)[20:30])
    assert len(f.poll()) == 0
    append(a, record(2)[30:] + record(3)[:5])  # completed; the next one just started
    assert ports([f.poll()]) == [2]
    # the writer moves on: a's cut record can never complete any more
    (tmp_path / "b.pcap").write_bytes(HEADER + record(4))
    with pytest.warns(CaptureDamaged, match="a.pcap: file ends inside the header"):
        b = f.poll()
    assert ports([b]) == [4] and list(b.index) == [3]
    assert len(f.poll()) == 0


def test_idle_file_is_released_and_resumed_when_it_grows(tmp_path: Path) -> None:
    a = tmp_path / "x.pcap"
    a.write_bytes(HEADER + record(0))
    old = time.time() - 100
    os.utime(a, (old, old))
    f = PcapDirFollower(tmp_path, grace=10)
    assert ports([f.poll()]) == [0]
    assert f.state.files["x.pcap"].closed
    append(a, record(1))
    assert ports([f.poll()]) == [1]
    # a file replaced under the same name (new inode) is read from its start
    a.unlink()
    a.write_bytes(HEADER + record(9))
    assert ports([f.poll()]) == [9]


def test_follow_sleeps_instead_of_spinning(tmp_path: Path) -> None:
    f = PcapDirFollower(tmp_path)
    calls = 0
    original = f.poll

    def counting() -> PacketBatch:
        nonlocal calls
        calls += 1
        return original()

    f.poll = counting  # type: ignore[method-assign]
    t0 = time.monotonic()
    assert list(f.follow(interval=0.05, timeout=0.3)) == []
    assert 0.25 <= time.monotonic() - t0 < 2 and calls <= 10


def test_a_file_created_before_its_header_is_written_is_waited_for(tmp_path: Path) -> None:
    """The writer creates the file, then writes: an empty newest file is not an error."""
    path = tmp_path / "dump-00.pcap"
    path.touch()
    f = PcapDirFollower(tmp_path, "dump-*.pcap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(f.poll()) == 0
        append(path, HEADER[:2])
        assert len(f.poll()) == 0
        append(path, HEADER[2:] + record(0) + record(1))
        assert ports([f.poll()]) == [0, 1]


def test_concurrent_writer_with_rotation(tmp_path: Path) -> None:
    total = 300
    stop = threading.Event()

    def writer() -> None:
        fh = None
        for k in range(total):
            if k % 60 == 0:
                if fh:
                    fh.close()
                fh = open(tmp_path / f"dump-{k // 60:02d}.pcap", "wb")  # noqa: SIM115
                fh.write(HEADER)
            rec = record(k)
            assert fh is not None
            fh.write(rec[:9])
            fh.flush()
            fh.write(rec[9:])
            fh.flush()
            if k % 7 == 0:
                time.sleep(0.002)
        assert fh is not None
        fh.close()
        stop.set()

    t = threading.Thread(target=writer)
    f = PcapDirFollower(tmp_path, "dump-*.pcap", batch_size=50)
    t.start()
    got = list(f.follow(interval=0.005, timeout=0.5))
    t.join()
    assert stop.is_set()
    assert ports(got) == list(range(total))
    assert max(len(b) for b in got) <= 50


# ------------------------------------------------------------------------------ Zeek


TSV_HEAD = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\t"
    "orig_bytes\tresp_bytes\tconn_state\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\t"
    "count\tcount\tcount\tcount\n"
)


def tsv_row(k: int) -> str:
    cols = [f"{1_600_000_000 + k}.5", f"C{k:05d}", f"10.0.0.{k % 200 + 1}", str(2000 + k), "8.8.8.8", "53",
            "udp", "dns", "0.1", "30", "60", "SF", "1", "58", "1", "88"]  # fmt: skip
    return "\t".join(cols) + "\n"


def json_row(k: int) -> str:
    rec = {"ts": 1_600_000_000 + k + 0.5, "uid": f"J{k}", "id.orig_h": "10.1.0.1", "id.orig_p": 3000 + k,
           "id.resp_h": "10.1.0.2", "id.resp_p": 80, "proto": "tcp", "conn_state": "SF",
           "orig_pkts": k, "orig_ip_bytes": 40 * k}  # fmt: skip
    return json.dumps(rec) + "\n"


def test_zeek_tsv_appended_in_pieces_with_restore(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    text = TSV_HEAD + "".join(tsv_row(k) for k in range(50))
    rng = np.random.default_rng(3)
    cuts = [*sorted(set(rng.integers(1, len(text), 25).tolist())), len(text)]
    fol = ZeekLogFollower(log)
    got: list[FlowBatch] = []
    prev = 0
    for i, c in enumerate(cuts):
        with log.open("a") as f:
            f.write(text[prev:c])  # cuts fall inside lines and inside the header
        prev = c
        got.append(fol.poll())
        if i == len(cuts) // 2:
            fol.state.save(tmp_path / "z.json")
            fol = ZeekLogFollower(log, state=ZeekFollowState.load(tmp_path / "z.json"))
    b = FlowBatch.concat(got)
    assert list(b.uid) == [f"C{k:05d}" for k in range(50)]
    assert list(b.flow_id) == list(range(50))
    assert list(b.src_port) == [2000 + k for k in range(50)]
    assert fol.skipped == 0


def test_zeek_truncation_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    log.write_text(TSV_HEAD + tsv_row(0) + tsv_row(1))
    fol = ZeekLogFollower(log)
    assert list(fol.poll().uid) == ["C00000", "C00001"]
    log.write_text(TSV_HEAD + tsv_row(2))  # truncated and rewritten in place: smaller
    assert list(fol.poll().uid) == ["C00002"]
    with log.open("a") as f:
        f.write(tsv_row(3) + tsv_row(4)[:10])
    assert list(fol.poll().uid) == ["C00003"]
    with log.open("a") as f:
        f.write(tsv_row(4)[10:] + tsv_row(5) + "#close\t2024-01-01-00-00-00\n")
    log.rename(tmp_path / "conn.2024-01-01.log")  # Zeek rotates: new file, same name, JSON now
    log.write_text(json_row(6) + json_row(7)[:15])
    b1 = fol.poll()  # the rest of the rotated file first
    assert list(b1.uid) == ["C00004", "C00005"]
    b2 = fol.poll()
    assert list(b2.uid) == ["J6"] and list(b2.flow_id) == [6]
    with log.open("a") as f:
        f.write(json_row(7)[15:] + "{not json}\n" + json_row(8))
    b3 = fol.poll()
    assert list(b3.uid) == ["J7", "J8"] and list(b3.flow_id) == [7, 8]
    assert list(b3.src_pkts) == [7, 8]
    assert fol.skipped == 1 and "conn.log: line 3: not a conn log JSON row" in fol.errors[-1]
    fol.close()


def test_zeek_follow_of_real_labeled_log_matches_reader(tmp_path: Path) -> None:
    src = data_path("iot23", "zeek", "CTU-Honeypot-Capture-4-1", "conn.log.labeled")
    data = src.read_bytes()
    log = tmp_path / "conn.log.labeled"
    log.write_bytes(b"")
    fol = ZeekLogFollower(log)
    rng = np.random.default_rng(11)
    got: list[FlowBatch] = []
    pos = 0
    while pos < len(data):
        step = int(rng.integers(1, 4096))
        append(log, data[pos : pos + step])
        pos += step
        got.append(fol.poll())
    followed = FlowBatch.concat(got)
    whole = read_conn_log(src)
    assert len(followed) == len(whole) > 0
    for col in whole.columns:
        assert np.array_equal(followed.columns[col], whole.columns[col]), col
