"""Throughput and peak memory of the whole ``analyze`` pipeline (BENCHMARKS P1).

Builds the same large capture as ``bench_read.py`` (real captures concatenated, timestamps,
IPv4 addresses and MACs shifted per copy), then, each in a fresh child process:

* the whole pipeline (inventory pass with application parsing, learning pass, detection
  pass with flow metering, alerts) via :class:`iotsentry.pipeline.Analyzer`, after a JIT
  warm-up on a small file, at two sizes so growth with packets (and devices) shows;
* the whole ``iotsentry analyze`` command (process wall time, start-up and outputs included),
  in one process and with ``--workers N`` Ray workers;
* a plain dpkt loop parsing every packet (Ethernet -> IP -> TCP/UDP) on a prefix;
* nfstream on a prefix, when it is installed (``requirements-bench.txt``).

Ratios are against the baselines measured in the same run.
Run: ``.venv/bin/python benchmarks/bench_analyze.py --packets 5000000``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_read import build


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ``ru_maxrss`` is not used: after fork + exec it can
    report the parent's peak (the parent holds the big capture while building it)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_pipeline(path: Path, warm: Path) -> dict[str, Any]:
    from iotsentry.pipeline import Analyzer

    Analyzer([warm]).run()  # JIT warm-up (loads the numba cache)
    t0 = time.perf_counter()
    an = Analyzer([path])
    res = an.run()
    dt = time.perf_counter() - t0
    rss = _peak_rss_mb()
    return {
        "packets": an.packets,
        "seconds": dt,
        "maxrss_mb": rss,
        "devices": len(res.devices),
        "alerts": len(res.alerts),
        "flows": res.stats["flows"],
    }


def measure_dpkt(path: Path, limit: int) -> dict[str, Any]:
    import dpkt

    t0 = time.perf_counter()
    n = 0
    with path.open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                l4 = ip.data
                if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                    _ = (l4.sport, l4.dport)
            n += 1
            if n >= limit:
                break
    return {"packets": n, "seconds": time.perf_counter() - t0}


def measure_nfstream(path: Path, limit: int, tmp: Path) -> dict[str, Any]:
    try:
        from nfstream import NFStreamer
    except ImportError:
        return {"skipped": "nfstream not installed (pip install -r requirements-bench.txt)"}
    import dpkt

    prefix = tmp / "prefix.pcap"
    with path.open("rb") as fi, prefix.open("wb") as fo:
        r = dpkt.pcap.Reader(fi)
        w = dpkt.pcap.Writer(fo, snaplen=262144)
        for i, (ts, buf) in enumerate(r):
            if i >= limit:
                break
            w.writepkt(buf, ts=ts)
    t0 = time.perf_counter()
    flows = sum(1 for _ in NFStreamer(source=str(prefix), statistical_analysis=False, n_dissections=0))
    return {"packets": limit, "seconds": time.perf_counter() - t0, "flows": flows}


def measure_cli(path: Path, out_dir: Path, workers: int) -> dict[str, Any]:
    """Wall time of the whole ``iotsentry analyze`` process: interpreter start-up, imports,
    reading, analysis, store, report (what a user waits for)."""
    argv = ["analyze", str(path), "--out-dir", str(out_dir), "--json"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    # the command's own entry point, its peak RSS (VmHWM) printed last on stderr: ru_maxrss of a
    # child can report this parent's peak (it held the big capture while building it)
    code = (
        "import sys\nfrom iotsentry.cli import main\nrc = main(sys.argv[1:])\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)\n"
        "sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, *argv]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        return {"skipped": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    out = json.loads(res.stdout)
    hwm = res.stderr.strip().splitlines()[-1].split()
    return {
        "packets": int(out["stats"]["packets"]),
        "seconds": dt,
        "maxrss_mb": int(hwm[1]) / 1024,
        "devices": len(out["devices"]),
        "alerts": len(out["alerts"]),
        "flows": out["stats"]["flows"],
        "command": "iotsentry " + " ".join(argv),
    }


def child(kind: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--small", type=int, default=1_000_000, help="second size, for growth")
    ap.add_argument("--baseline-packets", type=int, default=500_000, help="prefix for dpkt / nfstream")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers of the scale-out CLI run")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "pipeline":
            print(json.dumps(measure_pipeline(Path(rest[0]), Path(rest[1]))))
        elif kind == "dpkt":
            print(json.dumps(measure_dpkt(Path(rest[0]), int(rest[1]))))
        else:
            print(json.dumps(measure_nfstream(Path(rest[0]), int(rest[1]), Path(rest[2]))))
        return
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        big, small = tmp / "big.pcap", tmp / "small.pcap"
        info = build(big, a.packets)
        build(small, a.small)
        warm = Path(info["warm"])
        rows = {
            f"analyze ({a.small:,})": child("pipeline", str(small), str(warm)),
            f"analyze ({a.packets:,})": child("pipeline", str(big), str(warm)),
            f"CLI ({a.packets:,}, 1 process)": measure_cli(big, tmp / "cli1", 1),
            f"CLI ({a.packets:,}, {a.workers} Ray workers)": measure_cli(big, tmp / "cliw", a.workers),
            "dpkt loop": child("dpkt", str(big), str(a.baseline_packets)),
            "nfstream": child("nfstream", str(big), str(a.baseline_packets), td),
        }
    base = rows["dpkt loop"]["packets"] / rows["dpkt loop"]["seconds"]
    nf = rows["nfstream"]
    nf_rate = nf["packets"] / nf["seconds"] if "seconds" in nf else None
    print(
        f"{'run':<24} {'packets':>10} {'seconds':>8} {'pkts/s':>11} {'x dpkt':>7} "
        f"{'x nfstream':>10} {'RSS MB':>7}"
    )
    for name, r in rows.items():
        if "seconds" not in r:
            print(f"{name:<24} {r.get('skipped', '')}")
            continue
        rate = r["packets"] / r["seconds"]
        xnf = f"{rate / nf_rate:10.1f}" if nf_rate else f"{'-':>10}"
        rss = f"{r['maxrss_mb']:7.0f}" if "maxrss_mb" in r else f"{'-':>7}"
        print(
            f"{name:<24} {r['packets']:>10,} {r['seconds']:8.2f} {rate:11,.0f} {rate / base:7.1f} {xnf} {rss}"
        )
    for name, r in rows.items():
        if "devices" in r:
            print(f"{name}: {r['devices']:,} devices, {r['flows']:,} flows, {r['alerts']} alerts")
    one = rows[f"CLI ({a.packets:,}, 1 process)"]
    many = rows[f"CLI ({a.packets:,}, {a.workers} Ray workers)"]
    if "seconds" in one and "seconds" in many:
        print(
            f"whole CLI, {a.workers} Ray workers vs 1 process: x{one['seconds'] / many['seconds']:.2f} "
            f"(target >= 1.7 on 2 cores); 1 process {one['packets'] / one['seconds']:,.0f} packets/s "
            f"(target >= 500,000)"
        )


if __name__ == "__main__":
    main()
