"""Fleet size: per-packet cost of ``analyze`` at ~1 k, ~10 k and ~100 k devices (BENCHMARKS P1).

The same ~1 M real packets at every level: ``benchmarks/fleet.py`` repeats the IoTEnsemble
capture of 2020-11-23..26 in time (fresh devices per copy) and spreads each device's flows over
``K`` clones with fresh MACs and addresses; ``K`` is chosen per level as the smallest giving at
least the target number of devices, and the device counts actually obtained are reported (by the
generator, and as found by ``analyze``).

Then, each level in a fresh child process, after a JIT warm-up on a small fleet file::

    Analyzer([path], AnalysisConfig(learn_seconds=3600)).run()

reporting packets/s, devices, alerts, peak RSS (the child's ``VmHWM``), RSS per device (peak
minus the RSS after the warm-up, over the devices) and each level's throughput as a ratio to the
~1 k level of the same run (these machines are shared and noisy: ratios, not absolute figures).
A level that runs longer than ``--max-seconds`` is reported as timed out. Finally the whole
``iotsentry analyze FILE --learn-seconds 3600 --out-dir D`` process is timed at the ~1 k level
(wall clock, interpreter start-up and report writing included).

Targets (issue "Thousands of devices: cost linear in the fleet"): throughput at ~10 k devices
≥ 80 % of ~1 k; peak RSS ≤ 2 GB at ~100 k devices.

Run::

    .venv/bin/python benchmarks/bench_fleet.py                      # 1 M packets, 3 levels
    .venv/bin/python benchmarks/bench_fleet.py --work /tmp/fleet --json fleet.json
    .venv/bin/python benchmarks/bench_fleet.py --repeat 3      # fastest of 3 interleaved runs per level
    .venv/bin/python benchmarks/bench_fleet.py --levels 10000 --profile /tmp/prof   # cProfile too

``--work DIR`` keeps the built files (and reuses them when they exist with the same
parameters); ``--profile DIR`` adds a cProfile run of ``Analyzer.run`` per level (a separate
child: profiling slows it down) and prints its top entries by own time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet

LEVELS = (1_000, 10_000, 100_000)
WARMUP_PACKETS = 60_000
"""Warm-up file: the first 60 k packets of the source (2.5 h), so learning ends and detection runs."""


# ------------------------------------------------------------------------------ child side


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Deadline(Exception):
    """Raised in the child when ``--max-seconds`` is up."""


def run_level(
    path: Path, warm: Path, learn_seconds: float, max_seconds: float, profile: Path | None
) -> dict[str, Any]:
    """Warm up, then run and time the whole pipeline on ``path`` (in this process).

    The run stops at ``max_seconds`` (a timer signal) and reports how far it got; a profile is
    dumped either way.
    """
    import signal

    from iotsentry.pipeline import AnalysisConfig, Analyzer

    Analyzer([warm], AnalysisConfig(learn_seconds=600)).run()  # JIT warm-up (numba cache)
    rss0 = _status_mb("VmRSS")
    an = Analyzer([path], AnalysisConfig(learn_seconds=learn_seconds))
    done = {"analysis": 0}

    def progress(phase: str, n: int) -> None:
        done[phase] = n

    def expire(signum: int, frame: Any) -> None:
        raise _Deadline

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max_seconds)
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    try:
        res = an.run(progress=progress)
    except _Deadline:
        res = None
    dt = time.perf_counter() - t0
    signal.setitimer(signal.ITIMER_REAL, 0)
    if prof is not None:
        prof.disable()
        assert profile is not None
        prof.dump_stats(str(profile))
    out: dict[str, Any] = {
        "rss_after_warmup_mb": rss0,
        "peak_rss_mb": _status_mb("VmHWM"),
    }
    if res is None:
        out |= {"timed_out": max_seconds, "packets_done": done["analysis"], "seconds_so_far": dt}
        return out
    return out | {
        "packets": an.packets,
        "seconds": dt,
        "devices": len(res.devices),
        "alerts": len(res.alerts),
        "incidents": len(res.incidents),
        "flows": res.stats.get("flows"),
    }


def _child(kind: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script as a child; its last stdout line is JSON. The child stops itself at
    ``timeout``; it is killed (and reported as timed out) if it has not ended 120 s later."""
    cmd = [sys.executable, __file__, "--child", kind, *args]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 120)
    except subprocess.TimeoutExpired:  # subprocess.run killed the child
        return {"timed_out": timeout, "killed": True}
    if res.returncode != 0:
        return {
            "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        }
    out = dict(json.loads(res.stdout.strip().splitlines()[-1]))
    out["child_wall_s"] = time.perf_counter() - t0
    return out


def time_cli(path: Path, out_dir: Path, learn_seconds: float, timeout: float) -> dict[str, Any]:
    """Wall time of the whole ``iotsentry analyze`` process (start-up included)."""
    exe = Path(sys.executable).with_name("iotsentry")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from iotsentry.cli import main; main()"]
    cmd += ["analyze", str(path), "--learn-seconds", str(learn_seconds), "--out-dir", str(out_dir)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": timeout}
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1], "wall_s": wall}
    return {"wall_s": wall, "command": " ".join(cmd)}


def code_version() -> str:
    """The commit measured, and whether ``src/`` had uncommitted changes (of the package that is
    imported: a ``PYTHONPATH`` checkout other than this repository is named by its path)."""
    import importlib.util

    spec = importlib.util.find_spec("iotsentry")
    pkg = Path(spec.origin).resolve().parents[1] if spec and spec.origin else None
    repo = Path(__file__).resolve().parents[1]
    if pkg is not None and pkg != repo / "src":
        return f"iotsentry from {pkg}"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def top_entries(prof: Path, n: int) -> str:
    """The ``n`` top functions by own time (``tottime``) of a cProfile dump, as text."""
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(prof), stream=buf)
    st.strip_dirs().sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


# ------------------------------------------------------------------------------ building


def build_levels(
    work: Path, levels: list[int], packets: int, seed: int, sources: list[Path] | None
) -> tuple[list[dict[str, Any]], Path]:
    """Build one fleet file per level (reused when already built with the same parameters)."""
    t0 = time.perf_counter()
    src = fleet.analyse(fleet.load_frames(sources or fleet.default_sources()))
    print(
        f"source: {len(src.frames):,} packets, {src.devices} devices, gateway {fleet._mac_str(src.gateway)} "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    warm = work / "warmup.pcap"
    if not warm.exists():
        fleet.write_fleet(warm, src, clones=1, packets=min(WARMUP_PACKETS, len(src.frames)), seed=seed)
    out = []
    for target in levels:
        k = fleet.choose_clones(src, target, packets, seed)
        path = work / f"fleet-{target}-K{k}-n{packets}-s{seed}.pcap"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            summary = json.loads(meta.read_text())
            summary["devices"] = fleet.count_devices(src, k, packets, seed)  # the current rule
        else:
            summary = asdict(fleet.write_fleet(path, src, clones=k, packets=packets, seed=seed))
            meta.write_text(json.dumps(summary, indent=2))
        print(
            f"built {path.name}: {summary['packets']:,} packets, {summary['devices']:,} devices "
            f"({src.devices} x {summary['copies']} copies x K={k}) in {summary['seconds']:.1f} s",
            flush=True,
        )
        out.append({"target": target, "clones": k, "path": str(path), "fleet": summary})
    return out, warm


# ------------------------------------------------------------------------------ report


def _level(target: int) -> str:
    """``~1 k``, ``~10 k``, ``~100 k``; small targets as they are."""
    return f"~{target // 1000:,} k" if target >= 1000 and target % 1000 == 0 else f"~{target:,}"


def report(figs: dict[str, Any]) -> str:
    """The markdown table and the targets."""
    rows = figs["levels"]
    first = _level(rows[0]["target"]) if rows else "-"
    base = rows[0]["run"] if rows and "seconds" in rows[0]["run"] else None
    base_rate = base["packets"] / base["seconds"] if base else None
    lines = [
        f"Fleet benchmark: {figs['packets']:,} packets (IoTEnsemble 2020-11-23..26, repeated in time, "
        f"devices cloned), learn_seconds={figs['learn_seconds']:g}, seed {figs['seed']}; code "
        f"{figs.get('code', 'unknown')}, {figs.get('cpu_count')} CPUs",
        "",
        "| level | K | devices (fleet) | devices (analyze) | alerts | seconds | packets/s "
        f"| ratio to {first} | peak RSS MB | RSS/device KB | marginal KB/device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_mem = None
    for r in rows:
        run = r["run"]
        lvl = _level(r["target"])
        if "seconds" not in run:
            if "timed_out" in run:
                why = f"timed out after {run['timed_out']:.0f} s"
                if run.get("packets_done"):
                    why += f" ({run['packets_done']:,} packets done)"
            else:
                why = run.get("error", "failed")
            lines.append(
                f"| {lvl} | {r['clones']} | {r['fleet']['devices']:,} | - | - | {why} | - | - | - | - | - |"
            )
            continue
        rate = run["packets"] / run["seconds"]
        ratio = f"{rate / base_rate:.2f}" if base_rate else "-"
        grown = run["peak_rss_mb"] - run["rss_after_warmup_mb"]
        per_dev = grown * 1024 / max(run["devices"], 1)
        marginal = "-"
        if base_mem is None:
            base_mem = (run["peak_rss_mb"], run["devices"])
        elif run["devices"] > base_mem[1]:
            marginal = f"{(run['peak_rss_mb'] - base_mem[0]) * 1024 / (run['devices'] - base_mem[1]):.1f}"
        r["ratio"] = rate / base_rate if base_rate else None
        secs = [x["seconds"] for x in r.get("runs", [run]) if "seconds" in x]
        shown = f"{run['seconds']:.1f}" + (f" ({min(secs):.1f}–{max(secs):.1f})" if len(secs) > 1 else "")
        lines.append(
            f"| {lvl} | {r['clones']} | {r['fleet']['devices']:,} | {run['devices']:,} | {run['alerts']:,} "
            f"| {shown} | {rate:,.0f} | {ratio} | {run['peak_rss_mb']:,.0f} | {per_dev:.1f} "
            f"| {marginal} |"
        )
    lines += [
        "",
        "RSS/device = (peak RSS − RSS after the warm-up) / devices; marginal = growth of peak RSS over the "
        f"{first} level per added device. With --repeat, the fastest run of each level counts (range of "
        "seconds in brackets).",
    ]
    cli = figs.get("cli")
    if cli:
        if "wall_s" in cli and "error" not in cli:
            lines.append(
                f"Whole CLI at {first} (`iotsentry analyze FILE --learn-seconds {figs['learn_seconds']:g} "
                f"--out-dir D`, start-up and report included): {cli['wall_s']:.1f} s wall, "
                f"{figs['packets'] / cli['wall_s']:,.0f} packets/s"
            )
        else:
            lines.append(f"Whole CLI at {first}: {cli}")
    lines += ["", "Targets (ratios in this run):"]
    by = {r["target"]: r for r in rows}
    r10 = by.get(10_000)
    if r10 is not None:
        ratio = r10.get("ratio")
        state = "not measured" if ratio is None else ("met" if ratio >= 0.8 else "missed")
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        lines.append(f"- throughput at ~10 k devices ≥ 80 % of {first}: {shown} → {state}")
    r100 = by.get(100_000)
    if r100 is not None:
        run = r100["run"]
        if "peak_rss_mb" in run:
            state = "met" if run["peak_rss_mb"] <= 2048 else "missed"
            if "timed_out" in run:
                state = ("so far within" if state == "met" else "missed") + " (the run timed out)"
            lines.append(f"- peak RSS ≤ 2 GB at ~100 k devices: {run['peak_rss_mb']:,.0f} MB → {state}")
        else:
            lines.append("- peak RSS ≤ 2 GB at ~100 k devices: not measured (" + ", ".join(run) + ")")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets in every level's file")
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="target device counts")
    ap.add_argument("--learn-seconds", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="timeout of each child run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per level (interleaved); the fastest counts")
    ap.add_argument("--work", type=Path, help="keep (and reuse) the built files here")
    ap.add_argument("--source", type=Path, nargs="+", help="source captures (default: IoTEnsemble)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the iotsentry analyze process")
    ap.add_argument("--profile", type=Path, help="also profile Analyzer.run per level; .prof files here")
    ap.add_argument("--top", type=int, default=25, help="profile entries to print")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "warm":
            from iotsentry.pipeline import AnalysisConfig, Analyzer

            Analyzer([Path(rest[0])], AnalysisConfig(learn_seconds=600)).run()
            print(json.dumps({"warm": rest[0]}))
            return
        path, warm, learn, limit, *prof_arg = rest
        prof = Path(prof_arg[0]) if prof_arg else None
        print(json.dumps(run_level(Path(path), Path(warm), float(learn), float(limit), prof)))
        return

    code = code_version()
    with tempfile.TemporaryDirectory() as td:
        work = a.work or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        levels, warm = build_levels(work, sorted(a.levels), a.packets, a.seed, a.source)
        # compile / load the numba cache once, so no level's child pays for compiling
        _child("warm", [str(warm)], a.max_seconds)
        for rep in range(a.repeat):  # levels interleaved, so drift on a shared machine hits them all
            for r in levels:
                print(f"running ~{r['target']:,} devices (run {rep + 1} of {a.repeat}) ...", flush=True)
                res = _child(
                    "run", [r["path"], str(warm), str(a.learn_seconds), str(a.max_seconds)], a.max_seconds
                )
                print(f"  {json.dumps(res)}", flush=True)
                r.setdefault("runs", []).append(res)
        for r in levels:  # the fastest run of each level
            done = [x for x in r["runs"] if "seconds" in x]
            r["run"] = min(done, key=lambda x: x["seconds"]) if done else r["runs"][0]
        figs: dict[str, Any] = {
            "packets": a.packets,
            "learn_seconds": a.learn_seconds,
            "seed": a.seed,
            "cpu_count": os.cpu_count(),
            "code": code if code_version() == code else f"{code} at the start, {code_version()} at the end",
            "levels": levels,
        }
        if not a.no_cli and levels:
            out_dir = work / "cli-out"
            figs["cli"] = time_cli(Path(levels[0]["path"]), out_dir, a.learn_seconds, a.max_seconds)
        text = report(figs)
        print()
        print(text)
        if a.profile:
            a.profile.mkdir(parents=True, exist_ok=True)
            for r in levels:
                prof = a.profile / f"analyze-{r['target']}.prof"
                args = [r["path"], str(warm), str(a.learn_seconds), str(a.max_seconds), str(prof)]
                res = _child("run", args, a.max_seconds)
                r["profile"] = {"file": str(prof), **res}
                print(f"\ncProfile of Analyzer.run at ~{r['target']:,} devices ({res}):")
                if prof.exists() and "error" not in res:
                    print(top_entries(prof, a.top))
        if a.json:
            a.json.write_text(json.dumps(figs, indent=2, default=str))


if __name__ == "__main__":
    main()
