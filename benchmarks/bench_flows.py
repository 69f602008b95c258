"""P1 flow-metering throughput: iotsentry FlowMeter vs nfstream, measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_flows.py [--packets 5000000] [--nfstream-packets 1000000]``

1. A pcap of ``--nfstream-packets`` packets is written to a temp dir (the real captures
   repeated with shifted timestamps; frames unchanged). nfstream
   (``statistical_analysis=False, n_dissections=0``) is timed on it, and so are FlowMeter on
   the same packets (read beforehand) and reader + FlowMeter end to end.
2. The real captures of ``../shared/data/iot23/pcap`` are read once (project reader) and
   repeated in memory, each copy shifted in time (after the previous one) and in address (the
   2nd/3rd octet of IPv4 addresses, the low bits of IPv6 ones) until ``--packets`` packets;
   :meth:`FlowMeter.update` is timed on that stream in 1M-packet batches after a JIT warm-up.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import dpkt
import numpy as np

from iotsentry.capture.reader import read_all
from iotsentry.features.flowmeter import FlowMeter
from iotsentry.schema import PacketBatch, is_ipv4

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iot23" / "pcap"
BATCH = 1_000_000


def sources() -> list[Path]:
    files = sorted(DATA.rglob("*.pcap"))
    if not files:
        raise SystemExit(f"no captures under {DATA}")
    return files


def base_stream(files: list[Path]) -> PacketBatch:
    """All captures back to back, each shifted to start 1 s after the previous one ends."""
    parts, t_end = [], 0.0
    for f in files:
        b = read_all(f)
        ts = b.ts - b.ts.min() + t_end + 1.0
        t_end = float(ts.max())
        cols = dict(b.columns)
        cols["ts"] = ts
        parts.append(PacketBatch(cols))
    return PacketBatch.concat(parts)


def repeat_stream(base: PacketBatch, n_packets: int) -> PacketBatch:
    """Copies of ``base`` shifted in time and address until ``n_packets``."""
    span = float(base.ts.max() - base.ts.min()) + 1.0
    copies = -(-n_packets // len(base))
    v4s, v4d = is_ipv4(base.src_ip_hi, base.src_ip_lo), is_ipv4(base.dst_ip_hi, base.dst_ip_lo)
    parts = []
    for k in range(copies):
        cols = dict(base.columns)
        cols["ts"] = base.ts + k * span
        cols["index"] = base.index + k * len(base)
        shift = np.uint64(k << 8)  # 3rd/2nd octet of IPv4 (bits 8..23), same low bits of IPv6
        for side, v4 in (("src", v4s), ("dst", v4d)):
            lo = base.columns[f"{side}_ip_lo"]
            cols[f"{side}_ip_lo"] = np.where(v4 | (base.ip_version == 6), lo ^ shift, lo)
        parts.append(PacketBatch(cols))
    big = PacketBatch.concat(parts)
    return big.take(np.arange(n_packets))


def meter_rate(stream: PacketBatch, batch: int = BATCH) -> tuple[float, int, FlowMeter]:
    """Seconds to meter ``stream`` in batches (plus flush) and the number of flows."""
    fm = FlowMeter()
    chunks = [stream.take(np.arange(i, min(i + batch, len(stream)))) for i in range(0, len(stream), batch)]
    n_flows = 0
    t0 = time.perf_counter()
    for c in chunks:
        n_flows += len(fm.update(c))
    n_flows += len(fm.flush())
    return time.perf_counter() - t0, n_flows, fm


def write_pcap(files: list[Path], n_packets: int, out: Path) -> int:
    """The captures repeated with shifted timestamps (frames unchanged) up to ``n_packets``."""
    recs: list[tuple[float, bytes]] = []
    t_end = 0.0
    for f in files:
        with open(f, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = list(dpkt.pcap.Reader(fh))
        t0 = rows[0][0]
        recs.extend((ts - t0 + t_end + 1.0, buf) for ts, buf in rows)
        t_end = recs[-1][0]
    span = t_end + 1.0
    written = 0
    with open(out, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        k = 0
        while written < n_packets:
            for ts, buf in recs:
                if written >= n_packets:
                    break
                w.writepkt(buf, ts=ts + k * span)
                written += 1
            k += 1
    return written


def nfstream_rate(path: Path) -> tuple[float, int]:
    from nfstream import NFStreamer

    t0 = time.perf_counter()
    n = sum(1 for _ in NFStreamer(source=str(path), statistical_analysis=False, n_dissections=0))
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--nfstream-packets", type=int, default=1_000_000)
    args = ap.parse_args()
    files = sources()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 42-1 capture ends with a truncated packet
        base = base_stream(files)
    # JIT warm-up (loads the cached machine code; compiles on the very first run)
    t0 = time.perf_counter()
    FlowMeter().update(base.take(np.arange(min(len(base), 10_000))))
    print(f"warm-up (JIT load/compile): {time.perf_counter() - t0:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "bench_flows.pcap"
        t0 = time.perf_counter()
        n_written = write_pcap(files, args.nfstream_packets, pcap)
        print(f"wrote {n_written:,}-packet pcap for nfstream in {time.perf_counter() - t0:.1f} s")
        nf_secs, nf_flows = nfstream_rate(pcap)
        nf_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # before the 5M stream
        t0 = time.perf_counter()
        pb = read_all(pcap)
        read_secs = time.perf_counter() - t0
        m_secs, m_flows, _ = meter_rate(pb)
        del pb
    print(f"same {n_written:,}-packet pcap:")
    print(
        f"  nfstream          {n_written / nf_secs:>12,.0f} packets/s  ({nf_secs:.2f} s), {nf_flows:,} flows"
        f", peak RSS of its processes {nf_rss:,.0f} MiB"
    )
    print(f"  FlowMeter         {n_written / m_secs:>12,.0f} packets/s  ({m_secs:.2f} s), {m_flows:,} flows")
    print(
        f"  reader+FlowMeter  {n_written / (read_secs + m_secs):>12,.0f} packets/s  "
        f"({read_secs + m_secs:.2f} s)"
    )
    print(
        f"ratio FlowMeter / nfstream: {nf_secs / m_secs:.1f}x metering only, "
        f"{nf_secs / (read_secs + m_secs):.1f}x with reading"
    )
    big = repeat_stream(base, args.packets)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs, n_flows, fm = meter_rate(big)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_mb = (fm._U.nbytes + fm._F.nbytes + fm._I.nbytes + fm._tbl.nbytes) / 2**20
    print(f"FlowMeter, {len(big):,} packets in memory ({len(files)} captures repeated, shifted):")
    print(f"  {len(big) / secs:,.0f} packets/s  ({secs:.2f} s), {n_flows:,} flows")
    print(
        f"  peak RSS {rss1:,.0f} MiB (before metering {rss0:,.0f} MiB, mostly the input batch); "
        f"meter state {state_mb:.2f} MiB, capacity {fm.capacity:,} slots"
    )

    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
