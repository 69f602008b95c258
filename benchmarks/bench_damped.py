"""Throughput of the damped packet statistics and of KitNET scoring on a large capture.

Builds a large pcap with ``bench_read.build`` (real captures concatenated with shifted times and
addresses), then, in this process and in the same run:

* the reader alone (``read_packets`` over the whole file) -- the baseline;
* the reader plus :class:`~iotsentry.features.damped.DampedStats` (feature extraction time is
  the extra time spent in ``transform``);
* KitNET scoring of those features (``score_samples`` per batch), after fitting on the features
  of the first ``--train`` packets;
* a plain per-packet Python implementation of the same statistics (dicts, one packet at a time)
  over the first ``--python-packets`` packets; its output is checked against the kernel.

JIT warm-up runs on a small file first. Figures are packets/s and ratios against the reader and
the Python loop measured here (shared machines are noisy; compare ratios, not absolutes).

Run: ``.venv/bin/python benchmarks/bench_damped.py --packets 2000000``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_read import build

MARK = 0xFFFF_FFFF_FFFF_FFFF


def _var(m2: float, mean: float) -> float:
    v = m2 - mean * mean
    return 0.0 if v <= 1e-9 * m2 else v


def python_features(b: Any, lams: tuple[float, ...] = (5.0, 3.0, 1.0, 0.1, 0.01), eps: float = 1e-3) -> Any:
    """The same statistics, per packet, with dicts of Python lists (the slow baseline)."""
    nl = len(lams)
    kmin = lams.index(min(lams))
    one: list[dict[Any, list[float]]] = [{}, {}]
    pairs: list[dict[Any, list[float]]] = [{}, {}]
    ts, size = b.ts.tolist(), b.wire_len.tolist()
    smac, dmac = b.src_mac.tolist(), b.dst_mac.tolist()
    sh, sl, dh, dl = b.src_ip_hi.tolist(), b.src_ip_lo.tolist(), b.dst_ip_hi.tolist(), b.dst_ip_lo.tolist()
    sp, dp, pr = b.src_port.tolist(), b.dst_port.tolist(), b.proto.tolist()
    rows = []
    now = -math.inf
    for i in range(len(ts)):
        t, v = ts[i], float(size[i])
        now = max(now, t)
        a, z = (sh[i], sl[i]), (dh[i], dl[i])
        if a == (0, 0) and z == (0, 0):
            a, z = (MARK, smac[i]), (MARK, dmac[i])
        row: list[float] = []
        for tab, key in ((one[0], (smac[i], *a)), (one[1], a)):
            e = tab.get(key)
            dt = 0.0
            if e is not None:
                dt = t - e[0]
                if now > e[0] and e[1 + 3 * kmin] * 2.0 ** (-lams[kmin] * (now - e[0])) < eps:
                    e = None
            if e is None:
                e = tab[key] = [t] + [0.0] * (3 * nl)
                dt = 0.0
            elif dt > 0:
                e[0] = t
            else:
                dt = 0.0
            for k in range(nl):
                f = 2.0 ** (-lams[k] * dt) if dt > 0 else 1.0
                c = 1 + 3 * k
                e[c], e[c + 1], e[c + 2] = e[c] * f + 1, e[c + 1] * f + v, e[c + 2] * f + v * v
                m = e[c + 1] / e[c]
                row += [e[c], m, math.sqrt(_var(e[c + 2] / e[c], m))]
        two: list[list[float]] = []
        for p, (ka, kz) in enumerate((((*a,), (*z,)), ((*a, sp[i]), (*z, dp[i], pr[i])))):
            if p == 1:
                ka, kz = (*a, sp[i]), (*z, dp[i])
            d = 1 if ka > kz else 0
            key = (kz, ka, pr[i]) if d else (ka, kz, pr[i])
            if p == 0:
                key = (kz, ka) if d else (ka, kz)
            base, blk, co = (3, 16, 12) if p == 0 else (1, 10, 6)
            tab = pairs[p]
            e = tab.get(key)
            dt = 0.0
            if e is not None:
                dt = t - e[0]
                if now > e[0] and e[base + blk * kmin + co + 1] * 2.0 ** (-lams[kmin] * (now - e[0])) < eps:
                    e = None
            if e is None:
                e = tab[key] = [t] + ([math.nan, math.nan] if p == 0 else []) + [0.0] * (blk * nl)
                dt = 0.0
            elif dt > 0:
                e[0] = t
            else:
                dt = 0.0
            jv = 0.0
            if p == 0:
                last = e[1 + d]
                if last != last:
                    e[1 + d] = t
                elif t > last:
                    jv, e[1 + d] = t - last, t
            feats, jits = [], []
            for k in range(nl):
                f = 2.0 ** (-lams[k] * dt) if dt > 0 else 1.0
                b0 = base + blk * k
                if f != 1.0:
                    e[b0 : b0 + blk] = [x * f for x in e[b0 : b0 + blk]]
                od, ob, cc = b0 + 3 * d, b0 + 3 * (1 - d), b0 + co
                e[od], e[od + 1], e[od + 2] = e[od] + 1, e[od + 1] + v, e[od + 2] + v * v
                m = e[od + 1] / e[od]
                var = _var(e[od + 2] / e[od], m)
                mo = varo = 0.0
                if e[ob] > 0:
                    mo = e[ob + 1] / e[ob]
                    varo = _var(e[ob + 2] / e[ob], mo)
                r = v - m
                e[cc] += r * e[cc + 3 - d]
                e[cc + 1] += 1
                e[cc + 2 + d] = r
                cov = e[cc] / e[cc + 1]
                sd = math.sqrt(var) * math.sqrt(varo)
                feats += [e[od], m, math.sqrt(var), math.hypot(m, mo), math.hypot(var, varo), cov]
                feats.append(cov / sd if sd > 0 else 0.0)
                if p == 0:
                    jd = b0 + 6 + 3 * d
                    e[jd], e[jd + 1], e[jd + 2] = e[jd] + 1, e[jd + 1] + jv, e[jd + 2] + jv * jv
                    jm = e[jd + 1] / e[jd]
                    jits += [e[jd], jm, math.sqrt(_var(e[jd + 2] / e[jd], jm))]
            two += [feats, jits]
        rows.append(row + two[0] + two[1] + two[2])
    return np.array(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--python-packets", type=int, default=30_000)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=262_144)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from iotsentry.capture.reader import read_all, read_packets
    from iotsentry.detectors.kitnet import KitNET
    from iotsentry.features.damped import DampedStats
    from iotsentry.schema import PacketBatch

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        big = work / "big.pcap"
        info = build(big, args.packets)
        warm = Path(info["warm"])
        out: dict[str, Any] = {"packets": info["packets"], "build_s": round(info["seconds"], 1)}

        # warm-up (JIT caches) and training on the first packets
        DampedStats().transform(read_all(warm))
        head = next(iter(read_packets(big, batch_size=args.train)))
        Xtrain = DampedStats().transform(head)
        t = time.perf_counter()
        model = KitNET().fit(Xtrain)
        out["kitnet_fit_s"] = round(time.perf_counter() - t, 2)
        model.score_samples(Xtrain[:1000])

        t = time.perf_counter()
        n = 0
        for b in read_packets(big, batch_size=args.batch_size):
            n += len(b)
        read_s = time.perf_counter() - t

        ds = DampedStats()
        feat_s = score_s = 0.0
        checksum = 0.0
        t = time.perf_counter()
        for b in read_packets(big, batch_size=args.batch_size):
            t0 = time.perf_counter()
            X = ds.transform(b)
            t1 = time.perf_counter()
            s = model.score_samples(X)
            score_s += time.perf_counter() - t1
            feat_s += t1 - t0
            checksum += float(s.sum())
        total_s = time.perf_counter() - t
        out.update(
            reader_pps=round(n / read_s),
            damped_pps=round(n / feat_s),
            kitnet_score_pps=round(n / score_s),
            read_damped_score_pps=round(n / total_s),
            damped_time_over_reader_time=round(feat_s / read_s, 3),
            score_time_over_reader_time=round(score_s / read_s, 3),
            table_capacity=list(ds.capacity()),
            table_entries=list(ds.entries()),
            evicted=ds.evicted,
            finite_scores=bool(np.isfinite(checksum)),
        )

        # plain per-packet Python on a prefix, checked against the kernel
        prefix: PacketBatch = next(iter(read_packets(big, batch_size=args.python_packets)))
        t = time.perf_counter()
        ref: npt.NDArray[np.float64] = python_features(prefix)
        py_s = time.perf_counter() - t
        t = time.perf_counter()
        got = DampedStats().transform(prefix)
        kern_prefix_s = time.perf_counter() - t
        scale = np.maximum(np.abs(ref).max(axis=0), 1.0)
        out.update(
            python_pps=round(len(prefix) / py_s),
            damped_over_python_speedup=round((n / feat_s) / (len(prefix) / py_s), 1),
            kernel_on_prefix_pps=round(len(prefix) / kern_prefix_s),
            python_matches_kernel=bool((np.abs(got - ref) / scale <= 1e-5).all()),
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
