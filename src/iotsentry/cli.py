"""The ``iotsentry`` command. Heavy libraries are imported inside the subcommands that need them."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotsentry.errors import CaptureDamaged, IotSentryError

if TYPE_CHECKING:
    from iotsentry.alerts.incidents import Incident
    from iotsentry.pipeline import AnalysisResult, Progress

DEFAULT_OUT = Path("iotsentry-out")


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr)


_WARNED: set[str] = set()
"""Warnings already printed: a damaged input is read once per pass, and is reported once."""


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = f"warning: {message}"
    if text not in _WARNED:
        _WARNED.add(text)
        _eprint(text)


class _ProgressBar:
    """A rich progress display on stderr for long inputs; silent when stderr is not a terminal."""

    def __init__(self, total_bytes: int) -> None:
        self.enabled = sys.stderr.isatty() and total_bytes > 20_000_000
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,} packets"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def __call__(self, phase: str, done: int) -> None:
        if self._progress is None:
            return
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=None)
        self._progress.update(self._tasks[phase], completed=done)


def _total_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def _type_model(args: argparse.Namespace) -> Path | None:
    value = getattr(args, "type_model", None)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise IotSentryError(f"{path}: no such device-type model file")
    return path


def _check_inputs(paths: Sequence[str]) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise IotSentryError(f"{p}: no such file")
        if path.is_dir():
            raise IotSentryError(f"{p}: is a directory, expected a capture file")
        out.append(path)
    return out


# -- analyze -------------------------------------------------------------------------------------
def _run_analysis(args: argparse.Namespace, progress: Progress | None) -> AnalysisResult:
    from iotsentry.pipeline import AnalysisConfig, Analyzer

    workers = int(getattr(args, "workers", 1) or 1)
    if workers < 1:
        raise IotSentryError(f"--workers {workers}: expected 1 or more")
    cfg = AnalysisConfig(
        learn_seconds=args.learn_seconds,
        site_id=args.site,
        type_model=_type_model(args),
        living=not getattr(args, "static_baseline", False),
        workers=workers,
        ray_address=getattr(args, "ray_address", None),
    )
    return Analyzer(_check_inputs(args.inputs), cfg).run(progress=progress)


def cmd_analyze(args: argparse.Namespace) -> int:
    from iotsentry.alerts.jsonl import JsonlSink
    from iotsentry.alerts.sinks import sink_from_uri
    from iotsentry.store import open_store, redact_dsn
    from iotsentry.ui.report_html import write_report

    paths = _check_inputs(args.inputs)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db_path = redact_dsn(args.db) if args.db else out / "iotsentry.db"  # shown: a DSN without password
    alerts_path = Path(args.alerts) if args.alerts else out / "alerts.jsonl"
    incidents_path = alerts_path.with_name("incidents.json")  # next to the alerts
    report_path = Path(args.report) if args.report else out / "report.html"
    t0 = time.perf_counter()
    store = open_store(args.db or db_path)
    run_id = store.start_run("analyze", [str(p) for p in paths])
    try:
        with _ProgressBar(_total_bytes(paths)) as bar:
            res = _run_analysis(args, bar)
    except BaseException:
        store.finish_run(run_id, "failed", {})
        store.close()
        raise
    elapsed = time.perf_counter() - t0
    res.stats["seconds"] = round(elapsed, 3)
    store.upsert_devices(res.devices)
    store.save_baselines(
        run_id,
        ((d, p, float(p["maturity"]["score"]), bool(p["mature"])) for d, p in res.baselines.items()),
    )
    incidents, for_sinks = res.incidents, res.to_sinks  # each alert carries its incident_id
    notices = [a for a in res.alerts if a.event_type == "notice"]
    res.stats.update(incidents=len(incidents), notices=len(notices))
    stored = store.add_alerts(run_id, res.alerts, incidents=incidents)
    store.finish_run(run_id, "ok", res.stats)
    store.close()
    every = JsonlSink(alerts_path)  # the run's record: one EVE line per alert (with its incident_id)
    for a in res.alerts:
        every.emit(a)
    every.close()
    incidents_path.write_text(json.dumps([i.to_dict() for i in incidents], indent=2) + "\n")
    for s in [sink_from_uri(u) for u in args.sink or []]:  # openings, escalations, notices
        for a in for_sinks:
            s.emit(a)
        s.close()
    write_report(
        report_path,
        title=f"iotsentry analysis of {', '.join(p.name for p in paths)}",
        devices=res.devices,
        alerts=res.alerts,
        timelines=res.timelines,
        baselines=res.baselines,
        run_info={"inputs": [str(p) for p in paths], **_readable_times(res.stats)},
        peer_groups=res.peer_groups,
        incidents=incidents,
    )
    outputs = {"db": str(db_path), "alerts": str(alerts_path), "incidents": str(incidents_path),
               "report": str(report_path)}  # fmt: skip
    if args.json:
        print(
            json.dumps(
                {
                    "devices": [d.to_dict() for d in res.devices],
                    "alerts": [a.to_eve() for a in res.alerts],
                    "incidents": [i.to_dict() for i in incidents],
                    "stats": res.stats,
                    "outputs": outputs,
                },
                indent=2,
                default=str,
            )
        )
    else:
        _print_summary(res, incidents)
        n_alerts = len(res.alerts) - len(notices)
        print(
            f"\n{res.stats['packets']:,} packets, {len(res.devices)} devices, {len(incidents)} incidents "
            f"from {n_alerts} alerts ({stored} new in the store after de-duplication), "
            f"{len(notices)} notices in {elapsed:.1f} s"
        )
        for name, path in outputs.items():
            print(f"{name + ':':<10} {path}")
    return 0


def _console() -> Any:
    """A console that prints network-derived text literally (no markup, emoji or highlighting)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, emoji=False, highlight=False, markup=False)


def _plain(*values: str) -> list[Any]:
    """Table cells as plain text: names come from the network and must not act as markup."""
    from rich.text import Text

    return [Text(v) for v in values]


def _readable_times(stats: dict[str, Any]) -> dict[str, Any]:
    """Run statistics with epoch timestamps written as RFC 3339 (for people)."""
    from iotsentry.schema import rfc3339

    return {
        k: rfc3339(v) if k.endswith(("_ts", "_end")) and isinstance(v, float) else v for k, v in stats.items()
    }


SUMMARY_DEVICES = 50
"""Rows of the device table ``analyze`` prints (the full inventory is in its outputs)."""


def _print_summary(res: AnalysisResult, incidents: Sequence[Incident] = ()) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    by_dev: dict[str, int] = {}
    for a in res.alerts:
        if a.event_type != "notice":
            by_dev[a.device_id] = by_dev.get(a.device_id, 0) + 1
    shown = list(res.devices)
    if len(shown) > SUMMARY_DEVICES:
        # a fleet does not fit a terminal: the gateway and the devices with most alerts
        shown.sort(key=lambda d: (not d.is_gateway, -by_dev.get(d.device_id, 0)))
        shown = shown[:SUMMARY_DEVICES]
    t = Table(title="Devices" if len(shown) == len(res.devices) else f"Devices (top {len(shown)} by alerts)")
    for c in ("device", "IP", "vendor", "names", "type", "baseline", "alerts"):
        t.add_column(c)
    for d in shown:
        b = res.baselines.get(d.device_id, {})
        mat = b.get("maturity", {})
        state = f"{'mature' if b.get('mature') else 'learning'} ({mat.get('score', 0):.2f})"
        n = by_dev.get(d.device_id, 0)
        t.add_row(
            *_plain(
                d.device_id + (" (gateway)" if d.is_gateway else ""),
                ", ".join(d.ips[:2]),
                (d.vendor or "?")[:28],
                ", ".join(d.names[:2])[:32],
                d.device_type or "?",
                state,
            ),
            Text(str(n), style="bold red") if n else Text("0"),
        )
    console.print(t)
    if len(shown) < len(res.devices):
        more = len(res.devices) - len(shown)
        console.print(f"... and {more:,} more devices (the store and the report list them all)")
    if incidents:
        ti = Table(title="Incidents")
        for c in ("incident", "device", "sev", "cause", "alerts", "first / last seen (UTC)", "categories"):
            ti.add_column(c, overflow="fold")
        for i in sorted(incidents, key=lambda i: (i.severity, -i.last_ts))[:50]:
            ti.add_row(
                *_plain(
                    i.incident_id,
                    i.device_id,
                    {1: "high", 2: "med", 3: "low"}.get(i.severity, "?"),
                    i.cause,
                    str(i.count),
                    time.strftime("%H:%M:%S", time.gmtime(i.first_ts))
                    + " / "
                    + time.strftime("%H:%M:%S", time.gmtime(i.last_ts)),
                    ", ".join(i.categories),
                )
            )
        console.print(ti)
    security = [a for a in res.alerts if a.event_type != "notice"]
    listed = security or list(res.alerts)  # security alerts first; notices when there are none
    if listed:
        ta = Table(title="Alerts" if security else "Notices")
        for c in ("time (UTC)", "device", "sev", "category", "reason"):
            ta.add_column(c, overflow="fold")
        for a in listed[:50]:
            ta.add_row(
                *_plain(
                    time.strftime("%H:%M:%S", time.gmtime(a.timestamp)),
                    a.device_id,
                    {1: "high", 2: "med", 3: "low", 4: "info"}.get(a.severity, "?"),
                    a.category,
                    a.reason,
                )
            )
        console.print(ta)
        if len(listed) > 50:
            console.print(f"... and {len(listed) - 50} more {'alerts' if security else 'notices'}")


# -- devices --------------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    from iotsentry.pipeline import AnalysisConfig, Analyzer

    an = Analyzer(_check_inputs(args.inputs), AnalysisConfig(type_model=_type_model(args)))
    devices = an.inventory()
    if args.json:
        print(json.dumps([d.to_dict() for d in devices], indent=2, default=str))
        return 0
    from rich.table import Table

    t = Table(title=f"{len(devices)} devices")
    for c in ("device", "IPs", "vendor", "names", "type", "DHCP vendor class", "packets"):
        t.add_column(c, overflow="fold")
    for d in devices:
        t.add_row(
            *_plain(
                d.device_id + (" (gateway)" if d.is_gateway else ""),
                ", ".join(d.ips[:3]),
                d.vendor or "?",
                ", ".join(d.names[:3]),
                d.device_type or "?",
                str(d.dhcp.get("vendor_class", "")),
                f"{d.packets:,}",
            )
        )
    _console().print(t)
    return 0


# -- score ------------------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    if args.flows:
        return _score_flows(args)
    if args.input is None or args.learn_seconds is None:
        raise IotSentryError("score: give a capture and --learn-seconds S (or --flows LOG --model DIR)")
    model = args.model or "profile"
    if model != "profile":
        return _score_with_stream_model(args, model)
    import numpy as np

    from iotsentry.pipeline import AnalysisConfig, Analyzer

    paths = _check_inputs([args.input])
    an = Analyzer(paths, AnalysisConfig(learn_seconds=args.learn_seconds, global_deadline=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh, _ProgressBar(_total_bytes(paths)) as bar:
        fh.write("index,ts,device,score\n")
        names = np.array([""], dtype=object)  # device names, then "" for packets of no device

        def sink(batch: Any, device: Any, scores: Any) -> None:
            nonlocal names
            ids = an.device_ids()
            if len(names) != len(ids) + 1:
                names = np.array([*ids, ""], dtype=object)
            _write_rows(fh, batch.index, batch.ts, names[np.where(device >= 0, device, len(ids))], scores)

        def restart() -> None:  # the input was not in time order: the analysis starts again
            fh.seek(0)
            fh.truncate()
            fh.write("index,ts,device,score\n")

        an.run(progress=bar, score_sink=sink, on_restart=restart)
    print(f"{an.packets:,} packets scored -> {out}")
    return 0


def _write_rows(fh: Any, index: Any, ts: Any, device: Any, scores: Any) -> None:
    """Rows ``index,ts,device,score`` (6 decimals), formatted by one %-operation over the batch
    (no Python-level step per row)."""
    n = len(index)
    if not n:
        return
    values: list[Any] = [None] * (4 * n)
    values[0::4], values[1::4] = index.tolist(), ts.tolist()
    values[2::4], values[3::4] = list(device), scores.tolist()
    fh.write(("%d,%.6f,%s,%.6f\n" * n) % tuple(values))


def _score_with_stream_model(args: argparse.Namespace, model: str) -> int:
    """Per-packet scores from a packet-stream model (damped statistics + kitnet / iforest)."""
    import numpy as np

    from iotsentry.capture.reader import read_packets
    from iotsentry.detectors.stream import score_capture_with_model
    from iotsentry.features.device_context import DeviceIndex, packet_context
    from iotsentry.pipeline import Analyzer

    (path,) = _check_inputs([args.input])
    index, ts, scores = score_capture_with_model(path, args.learn_seconds, model)
    an = Analyzer([path])
    devices = an.inventory()
    gw = next((d.device_id for d in devices if d.is_gateway), None)
    dindex = DeviceIndex([d.device_id for d in devices], gw)
    names = np.array([*(d.device_id for d in devices), ""], dtype=object)
    order = np.argsort(index, kind="stable")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with out.open("w") as fh:
        fh.write("index,ts,device,score\n")
        for b in read_packets(path):
            dev = packet_context(b, dindex).device
            rows = order[done : done + len(b)]
            done += len(b)
            _write_rows(fh, index[rows], ts[rows], names[np.where(dev >= 0, dev, len(devices))], scores[rows])
    print(f"{done:,} packets scored with {model} -> {out}")
    return 0


def _score_flows(args: argparse.Namespace) -> int:
    from iotsentry.detectors.flow_models import score_flows

    if not args.model:
        raise IotSentryError("score --flows needs --model MODEL_DIR (made by iotsentry train --flows)")
    (log,) = _check_inputs([args.flows])
    model_dir = Path(args.model)
    if not (model_dir / "manifest.json").exists():
        raise IotSentryError(f"{model_dir}: not a model directory (no manifest.json)")
    index, uid, score, predicted = score_flows(log, model_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        fh.write("index,uid,score,predicted_class\n")
        for i, u, s, c in zip(index.tolist(), uid, score.tolist(), predicted, strict=True):
            fh.write(f"{i},{u},{s:.6f},{c}\n")
    print(f"{len(index):,} flows scored -> {out}")
    return 0


# -- train --------------------------------------------------------------------------------------------
def _train_types(args: argparse.Namespace) -> int:
    """Device-type model from IoT SENTINEL-style folders (one folder of setup captures per type)."""
    from collections import Counter

    from iotsentry.evaluation.q3 import load_sentinel
    from iotsentry.inventory.type_classifier import DeviceTypeClassifier

    data = Path(args.types)
    if not (data / "iot-sentinel" / "index.csv").exists():
        raise IotSentryError(f"{data}: expected iot-sentinel/index.csv below it (the IoT SENTINEL layout)")
    ds = load_sentinel(data)
    model = DeviceTypeClassifier().fit(ds.X, list(ds.types))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    counts = Counter(ds.types)
    print(f"device-type model with {len(counts)} types from {len(ds.types)} captures -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.types:
        return _train_types(args)
    if not args.flows:
        raise IotSentryError("train: give --flows LOG... (flow model) or --types DATA_DIR (device types)")
    from iotsentry.detectors.flow_models import train_flows

    paths = _check_inputs(args.flows)
    info = train_flows(list(paths), Path(args.out), model=args.model)
    print(json.dumps(info, indent=2, default=str))
    return 0


# -- mix --------------------------------------------------------------------------------------------
def cmd_mix(args: argparse.Namespace) -> int:
    from iotsentry.evaluation.mix import mix_captures

    summary = mix_captures(
        args.benign,
        args.attack,
        attacker_ip=args.attacker,
        victim_ip=args.victim,
        at_fraction=args.at,
        out=args.out,
        labels_out=args.labels,
        attack_log=args.attack_log,
    )
    print(
        json.dumps(summary.to_dict() if hasattr(summary, "to_dict") else vars(summary), indent=2, default=str)
    )
    return 0


# -- eval -------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    results, data = Path(args.results), Path(args.data)
    if not data.exists():
        raise IotSentryError(f"{data}: data folder not found (give --data)")
    if args.benchmark == "q1":
        from iotsentry.evaluation.q1 import run_q1

        run_q1(recipes=args.recipe, data_dir=data, results=results, work_dir=Path(args.work_dir))
        if args.models:
            from iotsentry.evaluation.q1 import RECIPES
            from iotsentry.evaluation.q1_models import q1_model_rows, q1_models_markdown

            names = list(args.recipe or RECIPES)
            rows = q1_model_rows(names, data, Path(args.work_dir), models=tuple(args.models.split(",")))
            from iotsentry.evaluation.q1_fusion import q1_fused_rows

            rows += q1_fused_rows(names, data, Path(args.work_dir))
            _append(results, q1_models_markdown(rows), "iotsentry eval q1 --models " + args.models)
    elif args.benchmark == "q2":
        from iotsentry.evaluation.q2 import q2_markdown, run_q2

        _append(results, q2_markdown(run_q2(data)), "iotsentry eval q2")
    elif args.benchmark == "q7":
        from iotsentry.evaluation.q7 import RECIPES_Q7, VICTIMS, q7_markdown, run_q7

        out = run_q7(
            data,
            Path(args.work_dir) / "q7",
            recipes=tuple(args.recipe or RECIPES_Q7),
            victims=tuple(args.victim or VICTIMS),
            late_learning=tuple(args.late_learning or ("1 h", "1 day")),
        )
        _append(results, q7_markdown(out), "iotsentry eval q7")
    else:
        from iotsentry.evaluation.q3 import q3_markdown, run_q3

        _append(results, q3_markdown(run_q3(data, n_jobs=args.jobs)), "iotsentry eval q3")
    return 0


def _append(results: Path, markdown: str, command: str) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with results.open("a") as fh:
        fh.write(f"\n<!-- {stamp}: `{command}` -->\n{markdown.rstrip()}\n")
    print(markdown)


# -- fl -----------------------------------------------------------------------------------------------
def _fl_splits(n_sites: int | None) -> dict[str, int] | None:
    from iotsentry.federated.sites import DEFAULT_SPLITS

    if n_sites is None:
        return None
    others = len(DEFAULT_SPLITS) - 1
    if n_sites <= others:
        raise IotSentryError(f"--sites: at least {others + 1} sites (one per IoT-23 scenario), got {n_sites}")
    return {**DEFAULT_SPLITS, "34-1": n_sites - others}


def _data_dir(path: str) -> Path:
    data = Path(path)
    if not (data / "iot23").is_dir():
        raise IotSentryError(f"{data}: no iot23/ folder with IoT-23 flow logs here (give --data)")
    return data


def cmd_fl_simulate(args: argparse.Namespace) -> int:
    from iotsentry.federated.simulate import prepare, simulate

    data = _data_dir(args.data)
    if (args.attack != "none") != (args.malicious > 0):
        raise IotSentryError("--attack and --malicious go together (e.g. --attack sign-flip --malicious 0.2)")
    if args.model != "mlp" and args.aggregator in ("fltrust", "guarded"):
        raise IotSentryError(
            f"--aggregator {args.aggregator}: uses the server's labelled root data, --model mlp only"
        )
    if args.attack != "none" and args.model != "mlp":
        raise IotSentryError("--attack: the poisoning attacks are defined for --model mlp only")
    if args.model_out and args.model != "mlp":
        raise IotSentryError(
            "--model-out: only the flow classifier (--model mlp) is exported as a model directory"
        )
    from iotsentry.federated.poison_matrix import quiet_flower

    quiet_flower()
    setup = prepare(data, _fl_splits(args.sites), split=args.split, kind=args.model)
    res = simulate(
        args.rounds,
        args.aggregator,
        data,
        local_epochs=args.local_epochs,
        runtime=args.runtime,
        setup=setup,
        attack=args.attack,
        malicious_fraction=args.malicious,
    )
    weights = res.pop("weights")
    summary = {
        "metric": "per-site mean of held-out flow ROC AUC (sites whose held-out part has both classes)",
        "federated": res["federated"]["auc_site_mean"],
        "centralized": res["centralized"]["auc_site_mean"],
        "local_only": res["local"]["auc_site_mean"],
        "local_only_cross_site": res["local"]["auc_cross_site_mean"],
        "pooled": {k: res[k]["auc_pooled"] for k in ("federated", "centralized", "local")},
        "targeted_recall": {k: res[k]["targeted_recall"] for k in ("federated", "centralized", "local")},
        "aggregator": args.aggregator,
        "model": args.model,
        "local_epochs": args.local_epochs,
        "attack": args.attack,
        "malicious_sites": res["malicious_sites"],
        "rounds": args.rounds,
        "split": args.split,
        "sites": len(res["sites"]),
        "evaluable_sites": sum(1 for s in res["sites"] if s["evaluable"]),
        "bytes_per_site_per_round": res["bytes_per_site_per_round"],
    }
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "details": res}, indent=2, default=str))
    if args.report:
        from iotsentry.evaluation.fl_report import write_fl_report

        write_fl_report(res, args.report)
    if args.model_out:
        from iotsentry.federated.model_export import export_global_model

        export_global_model(setup, weights, Path(args.model_out), summary, signing_key=args.signing_key)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _csv_choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise IotSentryError(
            f"{flag}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)}"
        )
    return items


def cmd_redteam_poison(args: argparse.Namespace) -> int:
    from iotsentry.federated.names import AGGREGATORS, ATTACKS
    from iotsentry.federated.poison_matrix import run_matrix
    from iotsentry.federated.simulate import prepare

    data = _data_dir(args.data)
    attacks = _csv_choices(args.attacks, ATTACKS, "--attacks") if args.attacks else list(ATTACKS)
    aggs = (
        _csv_choices(args.aggregators, AGGREGATORS, "--aggregators")
        if args.aggregators
        else list(AGGREGATORS)
    )
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        raise IotSentryError(f"--fractions: not a list of numbers: {args.fractions!r}") from None
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise IotSentryError(f"--fractions: each must be between 0 and 1 (exclusive), got {args.fractions!r}")
    setup = prepare(data, _fl_splits(args.sites))
    n_cells = len(aggs) * (1 + len([a for a in attacks if a != "none"]) * len(fractions))
    done = [0]

    def progress(cell: dict[str, Any]) -> None:
        done[0] += 1
        print(
            f"[{done[0]}/{n_cells}] {cell['aggregator']:<12} {cell['attack']:<10} {cell['fraction']:.1f} "
            f"auc={cell['overall']['auc_site_mean']:.4f} f1={cell['overall']['f1']:.4f} "
            f"targeted_recall={cell['targeted_recall']:.4f}",
            file=sys.stderr,
            flush=True,
        )

    res = run_matrix(
        data, attacks, aggs, fractions, rounds=args.rounds, jobs=args.jobs, setup=setup, progress=progress
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    if args.report:
        from iotsentry.evaluation.fl_report import write_poison_report

        write_poison_report(res, args.report)
    print(json.dumps({"default_aggregator": res["default_aggregator"], "summary": res["summary"]}, indent=2))
    return 0


def cmd_redteam_evasion(args: argparse.Namespace) -> int:
    import tempfile

    from iotsentry.adversarial.evaluate import run_evasion
    from iotsentry.adversarial.problem_eval import evaluate_recipe
    from iotsentry.adversarial.redteam import problem_rows, strongest, write_evasion_report

    data = Path(args.data)
    if not (data / "iot23").is_dir():
        raise IotSentryError(f"{data}: no iot23/ folder here (give --data)")
    models = [m.strip() for m in args.model.split(",")] if args.model else None
    recipes = [r.strip().upper() for r in args.recipes.split(",") if r.strip()] if args.recipes else []
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if models is None or any(m != "profile" for m in models):
        print("feature space: training the flow models and attacking them ...", file=sys.stderr, flush=True)
        feat = run_evasion(data, n_malicious=args.n_malicious, n_blackbox=args.n_blackbox, eps=args.eps)
        rows += [r for r in feat["rows"] if models is None or r["model"] in models]
        meta["feature"] = feat["meta"]
    if recipes and (models is None or "profile" in models):
        with tempfile.TemporaryDirectory(prefix="iotsentry-evasion-") as tmp:
            for name in recipes:
                print(f"problem space: recipe {name} ...", file=sys.stderr, flush=True)
                rows += problem_rows(evaluate_recipe(name, data, Path(tmp) / name))
        meta["problem"] = {"recipes": recipes}
    if not rows:
        raise IotSentryError(
            f"--model {args.model}: no rows (models: default, mlp, hgb, mlp-adv, ensemble, profile)"
        )
    keys = (
        "model",
        "attack",
        "space",
        "realisable",
        "clean_detection_rate",
        "adversarial_detection_rate",
        "fpr",
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps([{**{k: r.get(k) for k in keys}, **r} for r in rows], indent=2, default=str)
        )
    if args.report:
        write_evasion_report({"rows": rows, "meta": meta}, args.report)
    print(json.dumps(strongest(rows), indent=2, default=str))
    return 0


# -- demo -------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from iotsentry.evaluation.synthetic_home import generate_home

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pcap = out / "smart-home.pcap"
    truth = generate_home(pcap, seed=args.seed)
    (out / "smart-home.truth.json").write_text(json.dumps(truth.to_dict(), indent=2, default=str))
    print(f"generated {pcap} (seed {args.seed}); infected device: {truth.infected_mac} / {truth.infected_ip}")
    ns = argparse.Namespace(
        inputs=[str(pcap)],
        out_dir=str(out),
        db=None,
        alerts=None,
        report=None,
        sink=None,
        learn_seconds=args.learn_seconds,
        site="demo",
        json=False,
    )
    return cmd_analyze(ns)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotsentry", description="Network-side security for IoT fleets.")
    p.add_argument("--version", action="version", version="iotsentry 0.1.0")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="inventory, baselines, alerts, HTML report, SQLite store")
    a.add_argument("inputs", nargs="+", help="pcap / pcapng files")
    a.add_argument("--out-dir", default=str(DEFAULT_OUT))
    a.add_argument("--db", help="store: SQLite file or postgresql:// DSN (default OUT_DIR/iotsentry.db)")
    a.add_argument(
        "--alerts",
        help="EVE JSON lines file, one per alert (default OUT_DIR/alerts.jsonl; incidents.json beside it)",
    )
    a.add_argument("--report", help="HTML report (default OUT_DIR/report.html)")
    a.add_argument(
        "--sink",
        action="append",
        help="extra alert sink (gets what opens or escalates an incident, and notices): "
        "syslog+udp://h:p, syslog+tcp://h:p, https://...",
    )
    a.add_argument(
        "--learn-seconds",
        type=float,
        default=None,
        help="each device's learning period from its own first packet (default: half the capture)",
    )
    a.add_argument(
        "--static-baseline",
        action="store_true",
        help="freeze each baseline at its learning end (no absorption of persistent behaviour)",
    )
    a.add_argument("--site", default="default")
    a.add_argument("--type-model", help="device-type model from 'iotsentry train --types'")
    a.add_argument(
        "--workers",
        type=int,
        default=1,
        help="spread the devices over N Ray workers (default 1: this process only)",
    )
    a.add_argument(
        "--ray-address",
        help="join this Ray cluster for the workers ('auto', HEAD:6379; default: a private one here)",
    )
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=cmd_analyze)

    d = sub.add_parser("devices", help="the device inventory")
    d.add_argument("inputs", nargs="+")
    d.add_argument("--json", action="store_true")
    d.add_argument("--type-model", help="device-type model from 'iotsentry train --types'")
    d.set_defaults(func=cmd_devices)

    s = sub.add_parser(
        "score",
        help="per-packet scores (index,ts,device,score) or, with --flows, per-flow scores "
        "(index,uid,score,predicted_class)",
    )
    s.add_argument("input", nargs="?", help="capture to score packet by packet")
    s.add_argument("--learn-seconds", type=float, help="learn from the first S seconds of the capture")
    s.add_argument(
        "--model",
        help="packets: profile (default), kitnet or iforest; flows: the model directory from 'train --flows'",
    )
    s.add_argument("--flows", help="Zeek conn log / IoT-23 CSV to score flow by flow")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_score)

    t = sub.add_parser(
        "train", help="train a flow model (labeled Zeek conn logs / IoT-23 CSVs) or a device-type model"
    )
    t.add_argument("--flows", nargs="+")
    t.add_argument("--types", help="data folder holding iot-sentinel/ (device-type model)")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--model", default="hgb", choices=["hgb", "mlp", "iforest"])
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("mix", help="infection replay: a malicious host's traffic re-addressed onto a device")
    m.add_argument("--benign", required=True)
    m.add_argument("--attack", required=True)
    m.add_argument("--attacker", required=True)
    m.add_argument("--victim", required=True)
    m.add_argument(
        "--at", type=float, required=True, help="splice point as a fraction of the benign duration"
    )
    m.add_argument("--out", required=True)
    m.add_argument("--labels", required=True)
    m.add_argument("--attack-log", help="labeled Zeek conn log of the attack capture")
    m.set_defaults(func=cmd_mix)

    e = sub.add_parser("eval", help="benchmarks (BENCHMARKS.md)")
    e.add_argument("benchmark", choices=["q1", "q2", "q3", "q7"])
    e.add_argument("--recipe", action="append", help="D1, D2, ... (default: all)")
    e.add_argument("--data", default=str(Path("..") / "shared" / "data"))
    e.add_argument("--results", default="docs/results.md")
    e.add_argument("--work-dir", default=str(DEFAULT_OUT / "eval"))
    e.add_argument("--models", help="q1: also evaluate these packet models, e.g. kitnet,iforest")
    e.add_argument("--jobs", type=int, default=1, help="q3: parallel jobs")
    e.add_argument(
        "--late-learning",
        action="append",
        choices=["1 h", "1 day"],
        help="q7: learning lengths of the late-infection runs (default: both)",
    )
    e.add_argument("--victim", action="append", help="q7: IoTEnsemble victim devices (default: four)")
    e.set_defaults(func=cmd_eval)

    fl = sub.add_parser("fl", help="federated learning with Flower")
    fl_sub = fl.add_subparsers(dest="fl_command", required=True)
    fs = fl_sub.add_parser(
        "simulate", help="Flower simulation over IoT-23 sites vs centralized and local-only"
    )
    from iotsentry.federated.names import AGGREGATORS, ATTACKS, DEFAULT_AGGREGATOR

    fs.add_argument("--rounds", type=int, default=10)
    fs.add_argument("--aggregator", default=DEFAULT_AGGREGATOR, choices=AGGREGATORS)
    fs.add_argument("--local-epochs", type=int, default=1)
    fs.add_argument("--sites", type=int, help="number of sites (default 15; more cuts 34-1 finer)")
    fs.add_argument("--split", default="class-time", choices=["class-time", "time"])
    fs.add_argument(
        "--runtime", default="ray", choices=["ray", "local"], help="ray: Flower Simulation Runtime"
    )
    fs.add_argument(
        "--model", default="mlp", choices=["mlp", "ae"], help="mlp: flow classifier; ae: autoencoder"
    )
    fs.add_argument("--attack", default="none", choices=ATTACKS)
    fs.add_argument("--malicious", type=float, default=0.0, help="fraction of malicious sites")
    fs.add_argument("--data", default=str(Path("..") / "shared" / "data"))
    fs.add_argument("--json", help="write the summary and per-site details here")
    fs.add_argument("--report", help="write an HTML report with per-round plots here")
    fs.add_argument("--model-out", help="write the global model here as a model directory")
    fs.add_argument("--signing-key", help="sign the global model with this Ed25519 private key")
    fs.set_defaults(func=cmd_fl_simulate)
    try:
        from iotsentry.federated import deploy_cli

        deploy_cli.register(fl_sub)
    except ImportError:  # pragma: no cover - deployment needs flwr's SuperLink bits
        pass

    rt = sub.add_parser("redteam", help="attack iotsentry's own detectors")
    rt_sub = rt.add_subparsers(dest="redteam_command", required=True)
    rp = rt_sub.add_parser("poison", help="poisoning matrix: attack x aggregator x malicious fraction")
    rp.add_argument("--attacks", help=f"comma list (default all: {','.join(ATTACKS)})")
    rp.add_argument("--aggregators", help=f"comma list (default all: {','.join(AGGREGATORS)})")
    rp.add_argument("--fractions", default="0.1,0.2,0.3,0.4")
    rp.add_argument("--rounds", type=int, default=10)
    rp.add_argument("--sites", type=int, help="number of sites (default 15)")
    rp.add_argument("--jobs", type=int, default=1, help="cells run in parallel")
    rp.add_argument("--data", default=str(Path("..") / "shared" / "data"))
    rp.add_argument("--json", help="write {default_aggregator, cells: [...]} here")
    rp.add_argument("--report", help="write an HTML report with heatmaps here")
    rp.set_defaults(func=cmd_redteam_poison)
    re_ = rt_sub.add_parser("evasion", help="evasion red-team: feature-space and problem-space attacks")
    re_.add_argument(
        "--model", help="comma list of models (default all: default, mlp, hgb, mlp-adv, ensemble, profile)"
    )
    re_.add_argument(
        "--recipes", default="D1,D3,D5", help="Q1 recipes for the problem-space attacks ('' = none)"
    )
    re_.add_argument("--n-malicious", type=int, default=200, help="malicious flows attacked (feature space)")
    re_.add_argument("--n-blackbox", type=int, default=50, help="flows for the black-box attacks")
    re_.add_argument("--eps", type=float, default=3.0, help="feature-space budget, standardised units")
    re_.add_argument("--data", default=str(Path("..") / "shared" / "data"))
    re_.add_argument("--json", help="write the rows here (list of {model, attack, space, realisable, ...})")
    re_.add_argument("--report", help="write an HTML report with plots here")
    re_.set_defaults(func=cmd_redteam_evasion)

    from iotsentry.api import api_cli, incidents_cli
    from iotsentry.baseline import advise_cli
    from iotsentry.integrity import audit_cli, keys_cli

    keys_cli.register(sub)
    api_cli.register(sub)
    incidents_cli.register(sub)
    audit_cli.register(sub)
    advise_cli.register(sub)

    from iotsentry.serve.cli import register as register_serve

    register_serve(sub)

    dm = sub.add_parser("demo", help="generate the embedded smart-home capture and analyze it")
    dm.add_argument("--out-dir", default="demo-out")
    dm.add_argument("--seed", type=int, default=7)
    dm.add_argument("--learn-seconds", type=float, default=None)
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one clear line on stderr for every error the user can fix, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("always", CaptureDamaged)
    warnings.showwarning = _warning_line
    try:
        return int(args.func(args))
    except IotSentryError as e:
        _eprint(f"iotsentry: error: {e}")
        return 2
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): not an error
        sys.stderr.close()
        return 0
    except OSError as e:
        _eprint(f"iotsentry: error: {e.filename or ''}: {e.strerror or e}")
        return 2
    except KeyboardInterrupt:
        _eprint("iotsentry: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
