"""Compressed captures (gzip, xz, bzip2, zstd): told by content, read in bounded chunks, and a
cut stream keeps every packet before the cut."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from pcapgen import epb, eth, idb, ipv4, pcap_bytes, shb, udp

from conftest import data_path
from iotsentry.capture.compressed import StreamDamaged, compression_of_file, fill, text_lines
from iotsentry.capture.reader import capture_format, read_all, read_packets
from iotsentry.capture.zeek import read_conn_log, read_flows
from iotsentry.errors import CaptureDamaged, InputError, LogDamaged
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import FlowBatch, PacketBatch


def _zstd_streamed(data: bytes) -> bytes:
    """Zstandard as a streaming writer makes it (several blocks: a cut keeps the first ones)."""
    c = zstandard.ZstdCompressor().compressobj()
    return b"".join(c.compress(data[i : i + 8192]) for i in range(0, len(data), 8192)) + c.flush()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
    "zstd": _zstd_streamed,
}


def _frames(n: int, seed: int = 1) -> list[tuple[int, int, bytes]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 200)))
        frame = eth(ipv4(udp(40000 + i % 500, 53, payload), 17, src="192.168.1.10", dst="203.0.113.7"))
        out.append((1_700_000_000 + i, i % 1_000_000, frame))
    return out


def _pcapng(frames: list[tuple[int, int, bytes]]) -> bytes:
    return shb() + idb(1) + b"".join(epb(0, s * 1_000_000 + us, d) for s, us, d in frames)


def _same(a: PacketBatch, b: PacketBatch) -> bool:
    assert a.raw is not None and b.raw is not None
    return (
        len(a) == len(b)
        and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)
        and np.array_equal(a.raw, b.raw)
    )


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_compressed_capture_reads_as_the_plain_one(tmp_path: Path, kind: str, fmt: str) -> None:
    frames = _frames(3000)
    plain = pcap_bytes(frames) if fmt == "pcap" else _pcapng(frames)
    p, c = tmp_path / f"x.{fmt}", tmp_path / "x.bin"  # the name says nothing: content decides
    p.write_bytes(plain)
    c.write_bytes(COMPRESSORS[kind](plain))
    assert compression_of_file(c) == kind and compression_of_file(p) is None
    assert capture_format(c) == fmt
    assert _same(read_all(c, with_raw=True), read_all(p, with_raw=True))
    batches = list(read_packets(c, batch_size=700, with_raw=True))
    assert [len(b) for b in batches] == [700, 700, 700, 700, 200]
    assert [int(b.index[0]) for b in batches] == [0, 700, 1400, 2100, 2800]


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_a_cut_compressed_stream_keeps_the_packets_before_the_cut(tmp_path: Path, kind: str) -> None:
    frames = _frames(6000, seed=2)
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(pcap_bytes(frames))
    data = COMPRESSORS[kind](whole.read_bytes())
    cut = tmp_path / "cut.pcap.z"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_all(cut, with_raw=True)
    damage = [w for w in caught if issubclass(w.category, CaptureDamaged)]
    assert len(damage) == 1 and str(cut) in str(damage[0].message) and kind in str(damage[0].message)
    ref = read_all(whole, with_raw=True)
    assert 0 < len(got) < len(ref)
    assert _same(got, ref.take(np.arange(len(got))))  # a prefix, byte for byte


def test_damaged_or_foreign_compressed_input_is_one_clear_error(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.pcap.bz2"  # cut inside bzip2's first block: nothing can be decoded
    data = bz2.compress(pcap_bytes(_frames(200)))
    tiny.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"tiny\.pcap\.bz2: damaged bzip2 stream"):
        read_all(tiny)
    text = tmp_path / "notes.gz"
    text.write_bytes(gzip.compress(b"this is not a capture\n"))
    with pytest.raises(InputError, match=r"notes\.gz: not a pcap or pcapng capture \(gzip-compressed\)"):
        read_all(text)
    empty = tmp_path / "empty.pcap.gz"
    empty.write_bytes(gzip.compress(b""))
    assert capture_format(empty) == "empty" and len(read_all(empty)) == 0


def test_analysis_of_a_compressed_real_capture_equals_the_plain_one(tmp_path: Path) -> None:
    src = data_path("iotensemble", "gree_plug", "2020-11-25.pcap")
    packed = tmp_path / "day.pcap.xz"
    packed.write_bytes(lzma.compress(src.read_bytes()))
    cfg = AnalysisConfig(learn_seconds=3600.0)
    a, b = Analyzer([src], cfg).run(), Analyzer([packed], cfg).run()
    assert a.stats["packets"] == b.stats["packets"] > 1000
    assert [x.to_eve() for x in a.alerts] == [x.to_eve() for x in b.alerts]
    assert [d.to_dict() for d in a.devices] == [d.to_dict() for d in b.devices]
    assert dict(a.baselines) == dict(b.baselines)


# ------------------------------------------------------------------------------ flow logs


def _flows_equal(a: FlowBatch, b: FlowBatch) -> bool:
    return len(a) == len(b) and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
@pytest.mark.parametrize(
    "parts",
    [
        ("iot23", "zeek", "CTU-Honeypot-Capture-4-1", "conn.log.labeled"),  # Zeek TSV, labeled
        ("iot23", "csv", "CTU-Honeypot-Capture-5-1-labeled.csv"),  # IoT-23 flow CSV
    ],
    ids=["zeek-tsv", "flow-csv"],
)
def test_compressed_flow_logs_read_as_the_plain_ones(
    tmp_path: Path, kind: str, parts: tuple[str, ...]
) -> None:
    src = data_path(*parts)
    packed = tmp_path / "flows.bin"
    packed.write_bytes(COMPRESSORS[kind](src.read_bytes()))
    plain = read_flows(src)
    assert len(plain) > 100 and _flows_equal(read_flows(packed), plain)


def test_a_cut_compressed_zeek_log_keeps_the_rows_before_the_cut(tmp_path: Path) -> None:
    src = data_path("iot23", "zeek", "CTU-Honeypot-Capture-4-1", "conn.log.labeled")
    data = gzip.compress(src.read_bytes())
    cut = tmp_path / "conn.log.gz"
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_conn_log(cut)
    damage = [w for w in caught if issubclass(w.category, LogDamaged)]
    assert len(damage) == 1 and "conn.log.gz: compressed stream damaged" in str(damage[0].message)
    whole = read_conn_log(src)
    assert 0 < len(got) < len(whole)
    assert all(np.array_equal(got.columns[k], whole.columns[k][: len(got)]) for k in got.columns)


def test_a_bad_bzip2_block_is_damage_not_a_crash(tmp_path: Path) -> None:
    """bzip2 reports a bad block as a bare OSError: readers see it as stream damage."""

    class BadBlock(io.BufferedIOBase):
        def readinto1(self, b: Any) -> int:
            raise OSError("Invalid data stream")

    with pytest.raises(StreamDamaged, match="Invalid data stream"):
        fill(BadBlock(), np.empty(64, dtype=np.uint8), "bzip2")

    def lines() -> Iterator[str]:
        yield "first\n"
        raise OSError("Invalid data stream")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(text_lines(lines(), tmp_path / "conn.log.bz2"))
    assert got == [(1, "first\n")]
    log = tmp_path / "conn.log.bz2"
    want = f"{log}: read failed (Invalid data stream) after line 1; kept the lines before it"
    assert [str(w.message) for w in caught] == [want]
