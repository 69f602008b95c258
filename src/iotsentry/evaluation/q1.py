"""BENCHMARKS Q1: infection replay on packet streams, scored per packet, alerted per device."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.evaluation.metrics import detection_latency, roc_auc, tpr_at_fpr
from iotsentry.pipeline import AnalysisConfig, AnalysisResult, Analyzer


@dataclass(frozen=True)
class Recipe:
    """One infection-replay recipe (paths relative to the data folder)."""

    name: str
    benign: str
    victim_ip: str
    attack: str
    attacker_ip: str
    at: float
    attack_log: str | None = None


RECIPES: dict[str, Recipe] = {
    "D1": Recipe(
        "D1",
        "iot23/pcap/CTU-Honeypot-Capture-4-1/2018-09-14-13-40-25-Philips-Hue-Bridge.pcap",
        "192.168.100.118",
        "iot23/pcap/CTU-IoT-Malware-Capture-42-1/2019-01-10-14-34-38-192.168.1.197.pcap",
        "192.168.1.197",
        0.8,
        "iot23/zeek/CTU-IoT-Malware-Capture-42-1/conn.log.labeled",
    ),
    "D2": Recipe(
        "D2",
        "iot23/pcap/CTU-Honeypot-Capture-7-1/Somfy-01/2019-07-03-15-15-47-first_start_somfy_gateway.pcap",
        "192.168.1.158",
        "iot23/pcap/CTU-IoT-Malware-Capture-34-1/2018-12-21-15-50-14-192.168.1.195.irc.pcap",
        "192.168.1.195",
        0.5,
        "iot23/zeek/CTU-IoT-Malware-Capture-34-1/conn.log.labeled",
    ),
    # IoT SENTINEL setup captures + scan / brute-force samples: every replayed packet is the attack
    "D3": Recipe(
        "D3",
        "iot-sentinel/D-LinkHomeHub/Setup-C-1-STA.pcap",
        "10.10.10.87",
        "scan-bruteforce-exfil-samples/esnet-curated-pcaps/attacks/scanners/masscan/tcp_0_1000_20190821.pcap",
        "172.31.15.102",
        0.5,
    ),
    "D4": Recipe(
        "D4",
        "iot-sentinel/WeMoLink/Setup-A-9-STA.pcap",
        "10.10.10.144",
        "scan-bruteforce-exfil-samples/esnet-curated-pcaps/attacks/scanners/nmap/nmap_80_all.pcap",
        "10.87.1.10",
        0.5,
    ),
    "D5": Recipe(
        "D5",
        "iot-sentinel/D-LinkCam/Setup-C-1-STA.pcap",
        "10.10.10.37",
        "scan-bruteforce-exfil-samples/stratosphere-slips/test19-malicious-ssh/malicious-ssh-bruteforce.pcap",
        "147.32.80.40",
        0.5,
    ),
}


@dataclass
class RecipeResult:
    """Q1 figures of one recipe."""

    recipe: str
    packets_after_splice: int
    malicious_packets: int
    auc_all: float
    tpr_at_0_1pct_all: float
    auc_benign_negatives: float
    tpr_at_0_1pct_benign_negatives: float
    latency_s: float | None
    infected_device_alerted: bool
    other_devices_alerted: list[str] = field(default_factory=list)
    alerts_on_infected: int = 0
    example_reason: str = ""


def _read_labels(
    path: Path,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    idx, tss, lab, att = [], [], [], []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            idx.append(int(row["index"]))
            tss.append(float(row["ts"]))
            lab.append(int(row["label"]))
            att.append(row.get("source", "") == "attack")
    order = np.argsort(np.array(idx, np.int64))
    return (
        np.array(idx, np.int64)[order],
        np.array(tss)[order],
        np.array(lab, np.int8)[order],
        np.array(att, bool)[order],
    )


def score_capture(
    path: Path, learn_seconds: float | None, learn_fraction: float = 0.5
) -> tuple[
    AnalysisResult, npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64], list[str]
]:
    """Analyze one capture; also return per-packet (index, ts, score) and the device ids."""
    # the protocol: every device learns only from traffic before the splice
    an = Analyzer(
        [path],
        AnalysisConfig(learn_seconds=learn_seconds, learn_fraction=learn_fraction, global_deadline=True),
    )
    parts: list[tuple[Any, Any, Any]] = []

    def sink(batch: Any, device: Any, scores: Any) -> None:
        parts.append((batch.index.copy(), batch.ts.copy(), scores.copy()))

    res = an.run(score_sink=sink)
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    ts = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    sc = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    return res, index, ts, sc, [d.device_id for d in an.devices]


@dataclass
class BuiltRecipe:
    """A mixed capture with its per-frame labels (arrays sorted by frame index)."""

    pcap: Path
    index: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    label: npt.NDArray[np.int8]
    from_attack: npt.NDArray[np.bool_]
    splice_ts: float
    learn_seconds: float
    """From the first packet to the splice: the only traffic a detector may learn from."""


def build_recipe(recipe: Recipe, data_dir: Path, work_dir: Path) -> BuiltRecipe:
    """Mix one recipe into ``work_dir`` and read back its labels."""
    from iotsentry.evaluation.mix import mix_captures

    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{recipe.name}.pcap"
    labels = work_dir / f"{recipe.name}.labels.csv"
    mix_captures(
        data_dir / recipe.benign,
        data_dir / recipe.attack,
        attacker_ip=recipe.attacker_ip,
        victim_ip=recipe.victim_ip,
        at_fraction=recipe.at,
        out=out,
        labels_out=labels,
        attack_log=(data_dir / recipe.attack_log) if recipe.attack_log else None,
        all_malicious=recipe.attack_log is None,
    )
    lidx, lts, lab, from_attack = _read_labels(labels)
    splice_ts = float(lts[np.flatnonzero(from_attack)[0]])
    return BuiltRecipe(out, lidx, lts, lab, from_attack, splice_ts, splice_ts - float(lts.min()))


def packet_metrics(built: BuiltRecipe, scores: npt.NDArray[np.float64], learn_end: float) -> dict[str, float]:
    """Q1 packet metrics of per-frame ``scores`` (aligned with ``built.index``) after ``learn_end``:
    all packets, and with negatives restricted to the benign capture's own packets."""
    after = built.ts >= learn_end
    y, s = built.label[after].astype(bool), scores[after]
    keep = (after & ~built.from_attack) | (after & (built.label == 1))
    y2, s2 = built.label[keep].astype(bool), scores[keep]
    return {
        "packets_after_splice": float(after.sum()),
        "malicious_packets": float(y.sum()),
        "auc_all": roc_auc(y, s),
        "tpr_at_0_1pct_all": tpr_at_fpr(y, s, 0.001),
        "auc_benign_negatives": roc_auc(y2, s2),
        "tpr_at_0_1pct_benign_negatives": tpr_at_fpr(y2, s2, 0.001),
    }


def run_recipe(recipe: Recipe, data_dir: Path, work_dir: Path) -> RecipeResult:
    """Mix, analyze (learning before the splice only), and measure one recipe."""
    built = build_recipe(recipe, data_dir, work_dir)
    res, index, ts, scores, _ids = score_capture(built.pcap, learn_seconds=built.learn_seconds)
    order = np.argsort(index)
    index, ts, scores = index[order], ts[order], scores[order]
    if not np.array_equal(index, built.index):
        raise RuntimeError(f"{built.pcap}: labels and scores do not cover the same frames")
    m = packet_metrics(built, scores, res.stats["learn_end"])
    victim = _victim_device(res, recipe.victim_ip)
    mal_ts = ts[built.label == 1]
    victim_alerts = [a for a in res.alerts if a.device_id == victim]
    lat = (
        detection_latency(float(mal_ts.min()), [a.timestamp for a in victim_alerts]) if len(mal_ts) else None
    )
    return RecipeResult(
        recipe=recipe.name,
        packets_after_splice=int(m["packets_after_splice"]),
        malicious_packets=int(m["malicious_packets"]),
        auc_all=m["auc_all"],
        tpr_at_0_1pct_all=m["tpr_at_0_1pct_all"],
        auc_benign_negatives=m["auc_benign_negatives"],
        tpr_at_0_1pct_benign_negatives=m["tpr_at_0_1pct_benign_negatives"],
        latency_s=lat,
        infected_device_alerted=bool(victim_alerts),
        other_devices_alerted=sorted({a.device_id for a in res.alerts if a.device_id != victim}),
        alerts_on_infected=len(victim_alerts),
        example_reason=victim_alerts[0].reason if victim_alerts else "",
    )


def _victim_device(res: AnalysisResult, ip: str) -> str:
    for d in res.devices:
        if ip in d.ips:
            return d.device_id
    return f"ip:{ip}"


def benign_false_alerts(data_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Devices alerted on captures with no infection: every IoT SENTINEL capture, Hue, Somfy."""
    out: dict[str, Any] = {}
    for rec in RECIPES.values():
        if not rec.benign.startswith("iot23/"):
            continue  # the IoT SENTINEL captures are all checked below
        res, *_ = score_capture(data_dir / rec.benign, learn_seconds=None, learn_fraction=rec.at)
        out[Path(rec.benign).name] = sorted({a.device_id for a in res.alerts})
    sentinel = sorted((data_dir / "iot-sentinel").glob("*/*.pcap"))
    alerted: dict[str, list[str]] = {}
    for p in sentinel:
        an = Analyzer([p])
        res = an.run()
        if res.alerts:
            alerted[f"{p.parent.name}/{p.name}"] = sorted({a.device_id for a in res.alerts})
    out["iot-sentinel captures"] = len(sentinel)
    out["iot-sentinel captures with alerts"] = alerted
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "never"
    if isinstance(x, float) and np.isnan(x):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def run_q1(
    recipes: Sequence[str] | None, data_dir: Path, results: Path, work_dir: Path
) -> list[RecipeResult]:
    """Run the recipes and the benign false-alert check; append a section to ``results``."""
    names = list(recipes) if recipes else list(RECIPES)
    t0 = time.perf_counter()
    rows = [run_recipe(RECIPES[n], data_dir, work_dir) for n in names]
    benign = benign_false_alerts(data_dir, work_dir)
    lines = [
        f"\n## Q1 — infection replay, profile detector ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
        "\n",
        f"Command: `iotsentry eval q1{''.join(' --recipe ' + n for n in (recipes or []))}` "
        f"({time.perf_counter() - t0:.0f} s)\n",
        "| recipe | packets after splice | malicious | AUC (all) | TPR@0.1%FPR (all) "
        "| AUC (benign-capture negatives) | TPR@0.1%FPR (benign-capture negatives) | latency (s) "
        "| infected alerted | other devices alerted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.recipe} | {r.packets_after_splice} | {r.malicious_packets} | {_fmt(r.auc_all)} | "
            f"{_fmt(r.tpr_at_0_1pct_all)} | {_fmt(r.auc_benign_negatives)} | "
            f"{_fmt(r.tpr_at_0_1pct_benign_negatives)} | {_fmt(r.latency_s)} | {r.infected_device_alerted} "
            f"({r.alerts_on_infected}) | {', '.join(r.other_devices_alerted) or 'none'} |"
        )
    for r in rows:
        if r.example_reason:
            lines.append(f'\n{r.recipe} first alert on the infected device: "{r.example_reason}"')
    n_sent = benign["iot-sentinel captures"]
    bad = benign["iot-sentinel captures with alerts"]
    lines.append(
        f"\nFalse device alerts on benign captures: IoT SENTINEL {len(bad)} of {n_sent} captures alerted"
        + (f" ({', '.join(sorted(bad))})" if bad else "")
        + "; "
        + "; ".join(f"{k}: {', '.join(v) if v else 'none'}" for k, v in benign.items() if isinstance(v, list))
        + "\n"
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps([asdict(r) for r in rows], indent=2, default=str))
    return rows
