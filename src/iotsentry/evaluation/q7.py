"""BENCHMARKS Q7: weeks of real traffic -- false alerts per device-day, and late infections.

Benign part
    The IoTEnsemble per-device daily captures of 2020-11-23..26 are merged into one capture
    (74 h, 19 devices) and analysed with every device learning on its own clock for 1 h and for
    1 day, on the full capture and on a headers-only copy (every frame cut to 96 bytes, original
    lengths kept, as ``editcap -F pcap -s 96`` writes it). **False alert-days per 100
    device-days** = distinct (device, UTC day) pairs with at least one security alert after the
    device's learning end, divided by the (device, UTC day) pairs in which the device sent or
    received traffic after its learning end, x 100. Notices (silence, offline) are not security
    alerts. Incidents per 100 device-days are reported beside it, with every alert behind an
    alert-day, and the per-device view.

Late infections
    Each Q1 attack (the infected host's traffic of the Q1 malware captures) is spliced with
    :func:`~iotsentry.evaluation.mix.mix_captures` onto each of several IoTEnsemble devices
    present for the whole window, on day 2 (2020-11-24 14:00 UTC, after a day of learning).
    Per (attack, victim, learning length): per-packet ROC AUC and TPR at 0.1 % FPR with the
    benign capture's own packets from the splice on as negatives, the device-alert latency
    (first malicious packet to first alert on the victim), and the other devices alerted after
    the splice.

Monitor parity
    The full capture is also cut into hourly files that appear in the pcap directory of a real
    ``iotsentry serve`` monitor (SQLite store); the incidents it stores must equal the batch
    analysis's.
"""

from __future__ import annotations

import struct
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.alerts.incidents import fold_all, is_notice
from iotsentry.evaluation.metrics import detection_latency, roc_auc, tpr_at_fpr
from iotsentry.evaluation.mix import Capture, read_capture, write_capture
from iotsentry.pipeline import AnalysisConfig, AnalysisResult, Analyzer
from iotsentry.schema import Alert

__all__ = [
    "LEARNING",
    "RECIPES_Q7",
    "SPLICE_UTC",
    "VICTIMS",
    "BenignRow",
    "LateRow",
    "false_alert_days",
    "headers_only",
    "merge_window",
    "q7_markdown",
    "run_q7",
]

WINDOW_GLOB = "*/2020-11-2[3-6].pcap"
"""The files of the 74-hour window (see the data folder's SOURCE.md)."""
LEARNING = {"1 h": 3600.0, "1 day": 86400.0}
SNAPLEN = 96
SPLICE_UTC = "2020-11-24T14:00:00"
"""Day 2, after a day of learning for the devices present from the start."""
VICTIMS = ("xiaomi_gateway", "aqara_gateway", "ihorn_gateway", "honyar_outlet")
RECIPES_Q7 = ("D1", "D2", "D3", "D4", "D5")
"""The Q1 attacks replayed (each onto each victim)."""
"""IoTEnsemble devices present for the whole window (their folders)."""


# -- captures -------------------------------------------------------------------------------------
def merge_window(data_dir: Path, out: Path) -> Path:
    """Merge the window's per-device files into one time-ordered pcap (kept if already there)."""
    files = sorted((data_dir / "iotensemble").glob(WINDOW_GLOB))
    if not files:
        raise FileNotFoundError(f"{data_dir / 'iotensemble'}: no {WINDOW_GLOB} captures")
    if out.exists() and out.stat().st_mtime >= max(f.stat().st_mtime for f in files):
        return out
    caps = [read_capture(f) for f in files]
    ts = np.concatenate([c.ts_us for c in caps])
    lens = np.concatenate([np.diff(c.off) for c in caps])
    buf = np.concatenate([c.buf for c in caps])
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    allcap = Capture(ts, buf, off, max(c.snaplen for c in caps))
    order = np.argsort(ts, kind="stable")
    merged = allcap.take(order)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_capture(out, merged.ts_us, merged, merged.snaplen)
    return out


def headers_only(src: Path, out: Path, snaplen: int = SNAPLEN) -> Path:
    """A copy of a pcap with every frame cut to ``snaplen`` bytes (original lengths kept)."""
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cap = read_capture(src)
    raw = cap.buf.tobytes()
    off = cap.off.tolist()
    with out.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        for i, t in enumerate(cap.ts_us.tolist()):
            frame = raw[off[i] : off[i + 1]]
            cut = frame[:snaplen]
            fh.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(cut), len(frame)))
            fh.write(cut)
    return out


def hourly_files(src: Path, out_dir: Path) -> list[Path]:
    """Cut a pcap into one file per clock hour (as ``tcpdump -G 3600`` writes them)."""
    cap = read_capture(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    hour = cap.ts_us // 3_600_000_000
    paths = []
    for h in np.unique(hour).tolist():
        sel = np.flatnonzero(hour == h)
        p = out_dir / f"capture-{datetime.fromtimestamp(h * 3600, UTC):%Y%m%d%H}.pcap"
        part = cap.take(sel)
        write_capture(p, part.ts_us, part, cap.snaplen)
        paths.append(p)
    return paths


# -- benign: false alert-days ---------------------------------------------------------------------
def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def security_alerts(res: AnalysisResult) -> list[Alert]:
    """Alerts that are not notices, raised after their device's learning end."""
    ends = {d: (b.get("learn_end") or 0.0) for d, b in res.baselines.items()}
    return [a for a in res.alerts if not is_notice(a) and a.timestamp >= ends.get(a.device_id, np.inf)]


def device_days(res: AnalysisResult) -> set[tuple[str, str]]:
    """(device, UTC day) pairs with traffic after the device's learning end."""
    out: set[tuple[str, str]] = set()
    for dev, tl in res.timelines.items():
        end = (res.baselines.get(dev) or {}).get("learn_end")
        if end is None:
            continue
        for t, p in zip(tl["t"], tl["packets"], strict=True):
            if p > 0 and t + 60.0 > end:
                out.add((dev, _day(max(t, end))))
    return out


def false_alert_days(res: AnalysisResult) -> dict[str, Any]:
    """The Q7 benign figures of one analysis (see module docstring)."""
    days = device_days(res)
    alerts = security_alerts(res)
    adays = {(a.device_id, _day(a.timestamp)) for a in alerts}
    book = fold_all(alerts)
    incidents = book.incidents()
    label = {d.device_id: d.label for d in res.devices}
    per_device: dict[str, dict[str, int]] = defaultdict(lambda: {"device_days": 0, "alert_days": 0})
    for dev, _ in days:
        per_device[dev]["device_days"] += 1
    for dev, _ in adays:
        per_device[dev]["alert_days"] += 1
    n = max(1, len(days))
    return {
        "device_days": len(days),
        "alert_days": len(adays),
        "alert_days_per_100": 100.0 * len(adays) / n,
        "incidents": len(incidents),
        "incidents_per_100": 100.0 * len(incidents) / n,
        "alerts": len(alerts),
        "notices": sum(1 for a in res.alerts if is_notice(a)),
        "absorbed": len(res.absorbed),
        "by_category": dict(Counter(a.category for a in alerts)),
        "alerts_behind": [
            {
                "day": _day(a.timestamp),
                "device": label.get(a.device_id, a.device_id),
                "category": a.category,
                "reason": a.reason,
            }
            for a in sorted(alerts, key=lambda a: a.timestamp)
        ],
        "per_device": dict(sorted(per_device.items())),
        "labels": label,
    }


@dataclass
class BenignRow:
    """False alert-days of one (capture, learning length)."""

    capture: str
    learning: str
    figures: dict[str, Any]
    seconds: float


def analyze(path: Path, learn_seconds: float, **cfg: Any) -> AnalysisResult:
    """The product's analysis of a capture: every device on its own learning clock."""
    return Analyzer([path], AnalysisConfig(learn_seconds=learn_seconds, **cfg)).run()


# -- late infections ------------------------------------------------------------------------------
@dataclass
class LateRow:
    """One attack spliced onto one device on day 2."""

    recipe: str
    victim: str
    learning: str
    packets_after_splice: int
    malicious: int
    auc: float
    tpr_at_0_1pct: float
    latency_s: float | None
    victim_alerted: bool
    first_reason: str = ""
    others_alerted: list[str] = field(default_factory=list)


def victim_ip(data_dir: Path, folder: str) -> str:
    """The IPv4 address a device uses most as a source in its own captures."""
    from iotsentry.capture.reader import read_packets
    from iotsentry.schema import ip_to_str

    counts: Counter[tuple[int, int]] = Counter()
    for f in sorted((data_dir / "iotensemble" / folder).glob("2020-11-2[3-6].pcap"))[:1]:
        for b in read_packets(f, batch_size=200_000):
            v4 = (b.ip_version == 4) & ((b.src_ip_lo & np.uint64(0xFFFF0000)) == np.uint64(0xC0A80000))
            hi, lo = b.src_ip_hi[v4], b.src_ip_lo[v4]
            counts.update(zip(hi.tolist(), lo.tolist(), strict=True))
    if not counts:
        raise ValueError(f"{folder}: no local IPv4 source address")
    (hi, lo), _ = counts.most_common(1)[0]
    return ip_to_str(hi, lo)


def _scores(path: Path, learn_seconds: float) -> tuple[AnalysisResult, dict[int, float]]:
    an = Analyzer([path], AnalysisConfig(learn_seconds=learn_seconds))
    got: dict[int, float] = {}

    def sink(batch: Any, device: Any, scores: Any) -> None:
        got.update(zip(batch.index.tolist(), scores.tolist(), strict=True))

    return an.run(score_sink=sink), got


def late_infection(
    merged: Path, recipe_name: str, victim: str, vip: str, learn_seconds: float, data_dir: Path, work: Path
) -> LateRow:
    """Splice one Q1 attack onto ``victim`` on day 2 and measure detection (module docstring)."""
    from iotsentry.evaluation.mix import mix_captures
    from iotsentry.evaluation.q1 import RECIPES, _read_labels

    r = RECIPES[recipe_name]
    cap_ts = read_capture(merged).ts_us
    t0, t1 = cap_ts[0] / 1e6, cap_ts[-1] / 1e6
    splice = datetime.fromisoformat(SPLICE_UTC).replace(tzinfo=UTC).timestamp()
    out = work / f"q7-{recipe_name}-{victim}.pcap"
    labels = work / f"q7-{recipe_name}-{victim}.labels.csv"
    if not out.exists():
        mix_captures(
            merged,
            data_dir / r.attack,
            attacker_ip=r.attacker_ip,
            victim_ip=vip,
            at_fraction=(splice - t0) / (t1 - t0),
            out=out,
            labels_out=labels,
            attack_log=(data_dir / r.attack_log) if r.attack_log else None,
            all_malicious=r.attack_log is None,
        )
    idx, ts, lab, from_attack = _read_labels(labels)
    res, got = _scores(out, learn_seconds)
    score = np.array([got.get(int(i), 0.0) for i in idx.tolist()])
    start = float(ts[np.flatnonzero(from_attack)[0]]) if from_attack.any() else splice
    after = ts >= start
    keep = after & (~from_attack | (lab == 1))
    y, s = lab[keep].astype(bool), score[keep]
    victim_id = next((d.device_id for d in res.devices if vip in d.ips), f"ip:{vip}")
    alerts = security_alerts(res)
    on_victim = [a for a in alerts if a.device_id == victim_id and a.timestamp >= start]
    # latency from the attack's first replayed packet (its first packets may be labelled benign)
    lat = detection_latency(start, [a.timestamp for a in on_victim]) if from_attack.any() else None
    label = {d.device_id: d.label for d in res.devices}
    others = sorted(
        {
            label.get(a.device_id, a.device_id)
            for a in alerts
            if a.device_id != victim_id and a.timestamp >= start
        }
    )
    return LateRow(
        recipe=recipe_name,
        victim=victim,
        learning="",
        packets_after_splice=int(after.sum()),
        malicious=int(y.sum()),
        auc=roc_auc(y, s),
        tpr_at_0_1pct=tpr_at_fpr(y, s, 0.001),
        latency_s=lat,
        victim_alerted=bool(on_victim),
        first_reason=on_victim[0].reason if on_victim else "",
        others_alerted=others,
    )


# -- monitor parity -------------------------------------------------------------------------------
def monitor_incidents(
    files: Sequence[Path], learn_seconds: float, work: Path
) -> list[tuple[str, str, float, int]]:
    """Incidents ``iotsentry serve`` stores when the files appear in its pcap directory (device,
    cause, first seen, alerts): the real monitor, with a SQLite store and a state folder."""
    import shutil

    from iotsentry.serve.config import load_config
    from iotsentry.serve.monitor import JsonLog, build_monitor
    from iotsentry.store import open_store

    if work.exists():
        shutil.rmtree(work)
    (work / "pcaps").mkdir(parents=True)
    cfg = work / "serve.toml"
    cfg.write_text(
        f"""
[store]
target = "{work / "store.db"}"

[[source]]
kind = "pcap-dir"
name = "lan"
path = "{work / "pcaps"}"
pattern = "*.pcap"
settle_s = 0.0

[learning]
seconds = {learn_seconds}

[state]
dir = "{work / "state"}"

[api]
enabled = false

[metrics]
enabled = false
"""
    )
    for f in files:
        shutil.copy(f, work / "pcaps" / f.name)

    class _Quiet:
        def write(self, s: str) -> None:
            pass

        def flush(self) -> None:
            pass

    mon = build_monitor(load_config(cfg), log=JsonLog(_Quiet()))  # type: ignore[arg-type]
    try:
        mon.run(handle_signals=False, idle_exit_s=2.0)
    finally:
        mon.close()
    with open_store(work / "store.db") as store:
        items, _ = store.query_incidents(limit=100_000)
    return sorted((i.device_id, i.cause, round(i.first_ts, 6), i.count) for i in items)


def _incident_keys(alerts: Sequence[Alert]) -> list[tuple[str, str, float, int]]:
    book = fold_all([a for a in alerts if not is_notice(a)])
    return sorted((i.device_id, i.cause, round(i.first_ts, 6), i.count) for i in book.incidents())


# -- the whole benchmark ----------------------------------------------------------------------------
def run_q7(
    data_dir: Path,
    work_dir: Path,
    recipes: Sequence[str] = RECIPES_Q7,
    victims: Sequence[str] = VICTIMS,
    late_learning: Sequence[str] = ("1 day",),
    parity: bool = True,
) -> dict[str, Any]:
    """Every Q7 figure (see module docstring); slow parts can be narrowed with the arguments."""
    work_dir.mkdir(parents=True, exist_ok=True)
    merged = merge_window(data_dir, work_dir / "iotensemble-2020-11-23-26.pcap")
    cut = headers_only(merged, work_dir / "iotensemble-2020-11-23-26-s96.pcap")
    benign: list[BenignRow] = []
    results: dict[tuple[str, str], AnalysisResult] = {}
    for cap_name, path in (("full payload", merged), (f"headers only ({SNAPLEN} B)", cut)):
        for lname, secs in LEARNING.items():
            t = time.perf_counter()
            res = analyze(path, secs)
            results[(cap_name, lname)] = res
            benign.append(BenignRow(cap_name, lname, false_alert_days(res), time.perf_counter() - t))
    late: list[LateRow] = []
    for lname in late_learning:
        for v in victims:
            vip = victim_ip(data_dir, v)
            for rn in recipes:
                row = late_infection(merged, rn, v, vip, LEARNING[lname], data_dir, work_dir)
                row.learning = lname
                late.append(row)
    out: dict[str, Any] = {"benign": benign, "late": late}
    if parity:
        files = hourly_files(merged, work_dir / "hourly")
        for lname, secs in LEARNING.items():
            batch = _incident_keys(results[("full payload", lname)].alerts)
            mon = monitor_incidents(files, secs, work_dir / f"serve-{int(secs)}")
            out.setdefault("parity", []).append(
                {
                    "capture": merged.name,
                    "learning": lname,
                    "batch": batch,
                    "monitor": mon,
                    "equal": batch == mon,
                }
            )
        # and with an infection in it, so that there are incidents to compare
        infected = work_dir / f"q7-D2-{victims[0]}.pcap"
        if infected.exists():
            files = hourly_files(infected, work_dir / "hourly-infected")
            batch = _incident_keys(analyze(infected, LEARNING["1 h"]).alerts)
            mon = monitor_incidents(files, LEARNING["1 h"], work_dir / "serve-infected")
            out["parity"].append(
                {
                    "capture": infected.name,
                    "learning": "1 h",
                    "batch": batch,
                    "monitor": mon,
                    "equal": batch == mon,
                }
            )
    return out


def q7_markdown(out: dict[str, Any]) -> str:
    """The Q7 tables (benign, per device, alerts behind alert-days, late infections, parity)."""
    lines = [
        "### Q7 — weeks of real traffic (IoTEnsemble 2020-11-23..26, 74 h, 19 devices)",
        "",
        "Every device learns on its own clock from its own first packet. Security alerts exclude "
        "notices (silence, offline); device-days count (device, UTC day) pairs with traffic after the "
        "device's learning end.",
        "",
        "| capture | learning | device-days | alert-days | **alert-days / 100 device-days** | incidents "
        "| incidents / 100 device-days | alerts | notices | absorbed | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["benign"]:
        f = r.figures
        lines.append(
            f"| {r.capture} | {r.learning} | {f['device_days']} | {f['alert_days']} | "
            f"**{f['alert_days_per_100']:.1f}** | {f['incidents']} | {f['incidents_per_100']:.1f} | "
            f"{f['alerts']} | {f['notices']} | {f['absorbed']} | {r.seconds:.0f} |"
        )
    behind = [(r, a) for r in out["benign"] for a in r.figures["alerts_behind"]]
    if behind:
        lines += [
            "",
            "Alerts behind the alert-days:",
            "",
            "| capture | learning | day | device | category | reason |",
        ]
        lines.append("|---|---|---|---|---|---|")
        seen: set[tuple[str, ...]] = set()
        for r, a in behind:
            k = (r.capture, r.learning, a["day"], a["device"], a["category"])
            if k in seen:
                continue
            seen.add(k)
            reason = a["reason"].replace("|", "/")
            lines.append(
                f"| {r.capture} | {r.learning} | {a['day']} | {a['device']} | {a['category']} | {reason} |"
            )
    lines += ["", "Per device (alert-days / device-days after its own learning end):", ""]
    devs = sorted({d for r in out["benign"] for d in r.figures["per_device"]})
    names: dict[str, str] = {}
    for r in out["benign"]:  # the most telling label any run found (headers-only captures hide names)
        for d, lab in r.figures["labels"].items():
            if lab != d or d not in names:
                names[d] = lab
    heads = [f"{r.capture}, {r.learning}" for r in out["benign"]]
    lines.append("| device | " + " | ".join(heads) + " |")
    lines.append("|---|" + "---:|" * len(heads))
    for d in devs:
        cells = []
        for r in out["benign"]:
            v = r.figures["per_device"].get(d)
            cells.append(f"{v['alert_days']}/{v['device_days']}" if v else "–")
        shown = names.get(d, d)
        lines.append(f"| {shown if shown == d else f'{shown} ({d})'} | " + " | ".join(cells) + " |")
    if out["late"]:
        lines += [
            "",
            f"Late infections: each Q1 attack spliced onto a device on day 2 ({SPLICE_UTC} UTC); "
            "negatives = the benign capture's packets from the splice on.",
            "",
            "| attack | victim | learning | packets after splice | malicious | AUC | TPR@0.1%FPR | "
            "latency (s) | victim alerted | other devices alerted | first alert on the victim |",
            "|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for x in out["late"]:
            lat = f"{x.latency_s:.1f}" if x.latency_s is not None else "never"
            lines.append(
                f"| {x.recipe} | {x.victim} | {x.learning} | {x.packets_after_splice} | {x.malicious} | "
                f"{x.auc:.4f} | {x.tpr_at_0_1pct:.4f} | {lat} | {x.victim_alerted} | "
                f"{', '.join(x.others_alerted) or 'none'} | {x.first_reason.replace('|', '/')[:160]} |"
            )
    if out.get("parity"):
        lines += [
            "",
            "Monitor parity: `iotsentry analyze` of a capture vs `iotsentry serve` reading the same "
            "capture as hourly files from its pcap directory (incidents compared by device, cause, "
            "first seen, count):",
            "",
            "| capture | learning | incidents (analyze) | incidents (serve) | same |",
            "|---|---|---:|---:|---|",
        ]
        for p in out["parity"]:
            lines.append(
                f"| {p['capture']} | {p['learning']} | {len(p['batch'])} | {len(p['monitor'])} | "
                f"{'yes' if p['equal'] else '**no**'} |"
            )
    return "\n".join(lines) + "\n"
