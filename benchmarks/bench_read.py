"""Throughput of the pcap reader against a plain dpkt decode loop.

Builds a large pcap (default 5,000,000 packets) by concatenating the real captures of
``../shared/data/iot23/pcap`` and ``../shared/data/iot-sentinel`` again and again; each copy
has its timestamps shifted and its private IPv4 addresses (third octet) and unicast MACs
(fifth byte) shifted, so copies do not look like the same hosts. Checksums are not
recomputed (neither reader verifies them).

Then, each in a fresh child process (so peak RSS belongs to the reader alone):

* ``read_packets`` over the whole file, after a JIT warm-up on a small file;
* a dpkt loop (``dpkt.pcap.Reader`` -> Ethernet -> IP/IP6 -> TCP/UDP, extracting the same
  fields) over a prefix of the file (``--dpkt-packets``, default 500,000), extrapolated.

Finally both readers' fields are compared on every packet of the prefix.

Run: ``.venv/bin/python benchmarks/bench_read.py --packets 5000000``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IOTSENTRY_DATA", REPO.parent / "shared" / "data"))
FIELDS = (
    "ts",
    "cap_len",
    "src_mac",
    "dst_mac",
    "src_ip",
    "dst_ip",
    "proto",
    "src_port",
    "dst_port",
    "tcp_flags",
    "ttl",
)


# ------------------------------------------------------------------------------ building


def source_files() -> list[Path]:
    """Real Ethernet pcaps to concatenate."""
    files = sorted((DATA / "iot23" / "pcap").rglob("*.pcap"))
    files += sorted((DATA / "iot-sentinel").rglob("*.pcap"))
    if not files:
        sys.exit(f"no source captures under {DATA} (set IOTSENTRY_DATA)")
    return files


def build_template(files: list[Path]) -> dict[str, Any]:
    """All complete records of ``files`` as one little-endian microsecond pcap body."""
    from iotsentry.capture.reader import read_all
    from iotsentry.schema import PacketBatch

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncated IoT-23 file: complete packets only
        for f in files:
            parts.append(read_all(f, with_raw=True))
    b = PacketBatch.concat(parts)
    b = b.take(np.argsort(b.ts, kind="stable"))  # one time-ordered capture (copies follow in time)
    assert b.raw is not None and b.raw_off is not None
    n = len(b)
    cap = b.cap_len.astype(np.int64)
    rec_len = 16 + cap
    rec_off = np.zeros(n, dtype=np.int64)
    np.cumsum(rec_len[:-1], out=rec_off[1:])
    size = int(rec_off[-1] + rec_len[-1])
    body = np.empty(size, dtype=np.uint8)
    sec = np.floor(b.ts).astype(np.int64)
    usec = np.rint((b.ts - sec) * 1e6).astype(np.int64)
    carry = usec >= 1_000_000
    sec[carry] += 1
    usec[carry] -= 1_000_000
    hdr = np.stack([sec, usec, cap, b.wire_len.astype(np.int64)], axis=1).astype("<u4")
    body[rec_off[:, None] + np.arange(16)] = hdr.view(np.uint8).reshape(n, 16)
    data_pos = np.repeat(rec_off + 16 - b.raw_off[:-1], cap) + np.arange(int(b.raw_off[-1]))
    body[data_pos] = b.raw
    frame = rec_off + 16
    # positions to shift per copy
    is_v4 = (b.ethertype == 0x0800) & (b.vlan == 0) & (cap >= 34)
    ip_pos = []
    for rel in (26, 30):  # IPv4 source / destination in an untagged Ethernet frame
        pos = frame[is_v4] + rel
        a0, a1 = body[pos], body[pos + 1]
        private = (a0 == 10) | ((a0 == 172) & ((a1 & 0xF0) == 16)) | ((a0 == 192) & (a1 == 168))
        ip_pos.append(pos[private] + 2)  # third octet
    mac_pos = []
    for rel in (0, 6):
        ok = cap >= rel + 6
        pos = frame[ok] + rel
        unicast = (body[pos] & 1) == 0
        mac_pos.append(pos[unicast] + 4)
    span = int(sec.max() - sec.min()) + 1
    return {
        "body": body,
        "n": n,
        "sec_pos": rec_off,
        "sec": sec,
        "span": span,
        "ip_pos": np.concatenate(ip_pos),
        "mac_pos": np.concatenate(mac_pos),
        "rec_off": rec_off,
    }


def write_big_pcap(out: Path, packets: int, tpl: dict[str, Any]) -> int:
    """Write ``packets`` records (whole template copies plus a prefix); returns the count."""
    body: npt.NDArray[np.uint8] = tpl["body"]
    n: int = tpl["n"]
    written = 0
    with open(out, "wb") as f:
        f.write(
            np.array([0xA1B2C3D4], "<u4").tobytes()
            + np.array([2, 4], "<u2").tobytes()
            + np.array([0, 0, 262144, 1], "<u4").tobytes()
        )
        k = 0
        while written < packets:
            take = min(n, packets - written)
            copy = body.copy()
            sec = (tpl["sec"] + k * tpl["span"]).astype("<u4")
            copy[tpl["sec_pos"][:, None] + np.arange(4)] = sec.view(np.uint8).reshape(n, 4)
            shift = np.uint8(k % 256)
            copy[tpl["ip_pos"]] += shift
            copy[tpl["mac_pos"]] += shift
            end = int(tpl["rec_off"][take]) if take < n else len(copy)
            f.write(copy[:end].tobytes())
            written += take
            k += 1
    return written


def build(out: Path, packets: int) -> dict[str, Any]:
    """Write the big capture and a small warm-up capture next to it."""
    t0 = time.perf_counter()
    tpl = build_template(source_files())
    total = write_big_pcap(out, packets, tpl)
    warm = out.with_name(out.stem + "-warmup.pcap")
    write_big_pcap(warm, 1000, tpl)
    return {"packets": total, "template": tpl["n"], "warm": str(warm), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------ measuring


def measure_reader(path: Path, warm: Path) -> dict[str, Any]:
    from iotsentry.capture.reader import read_packets

    for _ in read_packets(warm):  # JIT warm-up (loads the numba cache)
        pass
    t0 = time.perf_counter()
    n = 0
    for b in read_packets(path):
        n += len(b)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"packets": n, "seconds": dt, "maxrss_mb": rss}


def dpkt_fields(path: Path, limit: int) -> tuple[dict[str, list[Any]], float]:
    """Decode the first ``limit`` packets with dpkt; returns fields and seconds taken."""
    import dpkt

    out: dict[str, list[Any]] = {k: [] for k in FIELDS}
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for i, (ts, buf) in enumerate(dpkt.pcap.Reader(fh)):
            if i >= limit:
                break
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            sip = dip = b""
            proto = sport = dport = flags = ttl = 0
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                sip, dip, proto = ip.src, ip.dst, ip.p
                ttl = ip.ttl if isinstance(ip, dpkt.ip.IP) else ip.hlim
                l4 = ip.data
                if isinstance(l4, dpkt.tcp.TCP):
                    sport, dport, flags = l4.sport, l4.dport, l4.flags
                elif isinstance(l4, dpkt.udp.UDP):
                    sport, dport = l4.sport, l4.dport
                elif isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
                    sport, dport = l4.type, l4.code  # as Zeek (and PacketBatch) do
            elif isinstance(ip, dpkt.arp.ARP):
                sip, dip = ip.spa, ip.tpa
            out["ts"].append(ts)
            out["cap_len"].append(len(buf))
            out["src_mac"].append(int.from_bytes(eth.src, "big"))
            out["dst_mac"].append(int.from_bytes(eth.dst, "big"))
            out["src_ip"].append(sip)
            out["dst_ip"].append(dip)
            out["proto"].append(proto)
            out["src_port"].append(sport)
            out["dst_port"].append(dport)
            out["tcp_flags"].append(flags)
            out["ttl"].append(ttl)
    return out, time.perf_counter() - t0


def measure_dpkt(path: Path, limit: int) -> dict[str, Any]:
    fields, dt = dpkt_fields(path, limit)
    return {
        "packets": len(fields["ts"]),
        "seconds": dt,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(kind: str, path: Path, arg: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, str(path), arg]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def compare_prefix(path: Path, limit: int) -> tuple[int, list[str]]:
    """Packets of the prefix on which both readers agree on every field; mismatching fields."""
    from iotsentry.capture.reader import read_packets

    ref, _ = dpkt_fields(path, limit)
    ours = next(iter(read_packets(path, batch_size=limit)))
    n = len(ref["ts"])
    bad: list[str] = []
    ok = np.ones(n, dtype=bool)

    def check(name: str, got: npt.NDArray[Any], want: npt.NDArray[Any]) -> None:
        eq = got == want
        if not eq.all():
            bad.append(f"{name} differs on {int((~eq).sum())} packets (first {int(np.flatnonzero(~eq)[0])})")
        ok[:] &= eq

    check("ts", ours.ts[:n], np.array(ref["ts"]))
    for name in ("cap_len", "src_mac", "dst_mac", "proto", "src_port", "dst_port", "tcp_flags", "ttl"):
        check(name, ours.columns[name][:n].astype(np.int64), np.array(ref[name], dtype=np.int64))
    for side in ("src", "dst"):
        hi = np.zeros(n, dtype=np.uint64)
        lo = np.zeros(n, dtype=np.uint64)
        for i, a in enumerate(ref[f"{side}_ip"]):
            if len(a) == 4:
                lo[i] = 0xFFFF00000000 | int.from_bytes(a, "big")
            elif len(a) == 16:
                hi[i], lo[i] = int.from_bytes(a[:8], "big"), int.from_bytes(a[8:], "big")
        same = (ours.columns[f"{side}_ip_hi"][:n] == hi) & (ours.columns[f"{side}_ip_lo"][:n] == lo)
        check(f"{side}_ip", same, np.ones(n, dtype=bool))
    return int(ok.sum()), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000, help="packets in the big capture")
    ap.add_argument("--dpkt-packets", type=int, default=500_000, help="prefix timed with dpkt")
    ap.add_argument("--out", type=Path, help="write the big capture here (kept); default: temp dir")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, arg = args.child
        if kind == "build":
            res = build(Path(path), int(arg))
        elif kind == "reader":
            res = measure_reader(Path(path), Path(arg))
        else:
            res = measure_dpkt(Path(path), int(arg))
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as tmp:
        big = args.out or Path(tmp) / "big.pcap"
        built = child("build", big, str(args.packets))
        total = built["packets"]
        warm = Path(built["warm"])
        size = big.stat().st_size
        print(
            f"built {big} : {total:,} packets, {size / 1e9:.2f} GB from a {built['template']:,}-packet "
            f"template in {built['seconds']:.1f} s"
        )
        r = child("reader", big, str(warm))
        d = child("dpkt", big, str(args.dpkt_packets))
        agree, bad = compare_prefix(big, args.dpkt_packets)

    rps = r["packets"] / r["seconds"]
    dps = d["packets"] / d["seconds"]
    print()
    print(f"{'reader':<34}{'packets':>12}{'seconds':>10}{'packets/s':>14}{'MB/s':>9}{'peak RSS MB':>13}")
    print(
        f"{'iotsentry read_packets (numba)':<34}{r['packets']:>12,}{r['seconds']:>10.2f}{rps:>14,.0f}"
        f"{size / r['seconds'] / 1e6:>9.0f}{r['maxrss_mb']:>13.0f}"
    )
    print(
        f"{'dpkt loop (prefix, extrapolated)':<34}{d['packets']:>12,}{d['seconds']:>10.2f}{dps:>14,.0f}"
        f"{'':>9}{d['maxrss_mb']:>13.0f}"
    )
    print(
        f"dpkt on the whole file would take ~{total / dps:.0f} s (extrapolated from the first "
        f"{d['packets']:,} packets)"
    )
    print(f"speed-up: {rps / dps:.1f}x   (page cache warm; JIT warm-up excluded; one core)")
    print(
        f"field check on the first {d['packets']:,} packets: {agree:,} identical on "
        f"{', '.join(FIELDS)}" + ("" if not bad else "; MISMATCH: " + "; ".join(bad))
    )
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
