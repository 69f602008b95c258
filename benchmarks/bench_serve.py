"""Sustained ingest of ``iotsentry serve`` and API latency under load.

Builds the large real-data capture of ``bench_read.py`` (IoT captures concatenated, shifted per
copy), cuts it into rotating files (like ``tcpdump -G``) in a directory, then measures in this
process:

* the batch :class:`~iotsentry.pipeline.Analyzer` on the whole capture (the baseline, same
  learning seconds), after a JIT warm-up;
* the monitor (pcap-directory follower -> bounded queue -> streaming engine -> SQLite store ->
  JSONL sink, state persisted per batch) until every packet is ingested: packets/s and the
  ratio to the batch pipeline;
* ``GET /alerts`` latency (p50 / p95) with N concurrent httpx clients, first with the monitor
  idle, then while a second monitor run ingests the same files into a fresh state.

Run: ``.venv/bin/python benchmarks/bench_serve.py --packets 500000 --clients 8``
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_read import build


def split_pcap(src: Path, out_dir: Path, per_file: int) -> int:
    """Cut a little-endian pcap into files of ``per_file`` records; returns the file count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    header, pos, n, k = data[:24], 24, 0, 0
    start = pos
    while pos + 16 <= len(data):
        cap = struct.unpack_from("<I", data, pos + 8)[0]
        pos += 16 + cap
        n += 1
        if n == per_file:
            (out_dir / f"cap-{k:05d}.pcap").write_bytes(header + data[start:pos])
            k, n, start = k + 1, 0, pos
    if n:
        (out_dir / f"cap-{k:05d}.pcap").write_bytes(header + data[start:pos])
        k += 1
    return k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_monitor(pcaps: Path, root: Path, learn_s: float, batch: int, source: str = "bench") -> Any:
    from iotsentry.alerts.jsonl import JsonlSink
    from iotsentry.capture.appfields import keep_raw_for_app_fields
    from iotsentry.capture.follow import PcapDirFollower
    from iotsentry.serve.engine import StreamEngine
    from iotsentry.serve.monitor import JsonLog, Monitor
    from iotsentry.serve.sources import FollowerSource
    from iotsentry.store import open_store

    src = FollowerSource(
        PcapDirFollower(pcaps, "*.pcap", grace=0.1, batch_size=batch, with_raw=keep_raw_for_app_fields)
    )
    return Monitor(
        {source: src},
        StreamEngine(learn_s),
        open_store(root / "store.db"),
        root / "state",
        sinks=[JsonlSink(root / "alerts.jsonl")],
        queue_size=4,
        poll_timeout_s=0.2,
        inventory_interval_s=5.0,
        log=JsonLog(open(root / "serve.log", "w")),
    )


def ingest(mon: Any, total: int) -> float:
    """Seconds until the monitor has processed ``total`` packets (then stops it)."""
    t = threading.Thread(target=mon.run, kwargs={"handle_signals": False})
    t0 = time.perf_counter()
    t.start()
    last, last_change = -1, time.monotonic()
    while mon.stats.packets < total and t.is_alive():
        if mon.stats.packets != last:
            last, last_change = mon.stats.packets, time.monotonic()
        elif time.monotonic() - last_change > 60:
            mon.stop()
            raise RuntimeError(f"the monitor stalled at {last} of {total} packets")
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    mon.stop()
    t.join()
    return dt


def hammer(url: str, token: str, clients: int, stop: threading.Event, min_requests: int) -> list[float]:
    """Latencies (s) of GET ``url`` from ``clients`` threads until ``stop`` (and ``min_requests`` each)."""
    out: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            n = 0
            while not stop.is_set() or n < min_requests:
                t0 = time.perf_counter()
                r = c.get(url, params={"limit": 100})
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                with lock:
                    out.append(dt)
                n += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=500_000)
    ap.add_argument("--per-file", type=int, default=50_000, help="packets per rotating file")
    ap.add_argument("--batch", type=int, default=50_000, help="packets per batch")
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    from iotsentry.api.tokens import create_token
    from iotsentry.pipeline import AnalysisConfig, Analyzer
    from iotsentry.serve.cli import start_api
    from iotsentry.serve.config import ApiConfig, ServeConfig
    from iotsentry.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        info = build(root / "big.pcap", args.packets)
        nfiles = split_pcap(root / "big.pcap", root / "pcaps", args.per_file)
        total = int(info["packets"])
        print(
            f"capture: {total} packets in {nfiles} files of {args.per_file}, built in {info['seconds']:.1f} s"
        )

        Analyzer([Path(info["warm"])]).run()  # JIT warm-up
        t0 = time.perf_counter()
        an = Analyzer([root / "big.pcap"], AnalysisConfig(batch_size=args.batch))
        res = an.run()
        t_batch = time.perf_counter() - t0
        learn_s = float(res.stats["learn_end"] - res.stats["first_ts"])
        print(f"batch Analyzer: {t_batch:.2f} s, {total / t_batch:,.0f} packets/s, {len(res.alerts)} alerts")

        run1 = root / "run1"
        mon = make_monitor(root / "pcaps", run1, learn_s, args.batch)
        t_serve = ingest(mon, total)
        stored = mon.stats.alerts_stored
        mon.close()
        print(
            f"serve ingest: {t_serve:.2f} s, {total / t_serve:,.0f} packets/s "
            f"(ratio to batch {t_batch / t_serve:.2f}x), {stored} alerts stored, "
            f"max queue depth {mon.stats.max_queue_depth}"
        )

        # API latency: the store of run 1 is served; idle first, then under a second ingest
        port = _free_port()
        with open_store(run1 / "store.db") as s:
            token, _ = create_token(s, "bench", "read")
        cfg = ServeConfig(
            file=root / "x.toml",
            store=str(run1 / "store.db"),
            sources=[],
            api=ApiConfig(True, "127.0.0.1", port),
        )
        server, thread = start_api(cfg, None)
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/alerts"
        stop = threading.Event()
        stop.set()
        idle = hammer(url, token, args.clients, stop, 50)
        print(
            f"GET /alerts idle, {args.clients} clients: p50 {pct(idle, 50) * 1e3:.1f} ms, "
            f"p95 {pct(idle, 95) * 1e3:.1f} ms ({len(idle)} requests)"
        )
        # second ingest writes into the served store; another source name, so no offset is
        # committed for it yet (every file is read again)
        mon2 = make_monitor(root / "pcaps", run1, learn_s, args.batch, source="bench2")
        mon2.state_dir = root / "run2-state"
        stop = threading.Event()
        lat: list[float] = []
        hth = threading.Thread(target=lambda: lat.extend(hammer(url, token, args.clients, stop, 1)))
        hth.start()
        t_load = ingest(mon2, total)
        stop.set()
        hth.join()
        mon2.close()
        server.should_exit = True
        thread.join(timeout=5)
        print(
            f"serve ingest under API load: {t_load:.2f} s, {total / t_load:,.0f} packets/s "
            f"(ratio to batch {t_batch / t_load:.2f}x)"
        )
        print(
            f"GET /alerts during ingest, {args.clients} clients: p50 {pct(lat, 50) * 1e3:.1f} ms, "
            f"p95 {pct(lat, 95) * 1e3:.1f} ms ({len(lat)} requests, "
            f"{len(lat) / t_load:,.0f} req/s)"
        )


if __name__ == "__main__":
    main()
