"""Flower ``ServerApp`` / ``ClientApp`` for a real deployment (SuperLink + SuperNodes), flwr 1.42.

Referenced from the app project that :mod:`iotsentry.federated.deploy` writes, as
``iotsentry.federated.deploy_app:server_app`` and ``iotsentry.federated.deploy_app:client_app``.
(The simulation uses the factories of :mod:`~iotsentry.federated.client_app` /
:mod:`~iotsentry.federated.server_app` instead.)

Site side (``client_app``)
--------------------------
SuperNode node config: ``data-dir`` (a folder holding that site's labeled flow logs: Zeek
``conn.log.labeled`` files and/or IoT-23 ``*-labeled.csv``, searched recursively) and optional
``train-frac`` (default 0.8) and ``site-name`` (default: the folder name). Features are computed
per file (:func:`~iotsentry.features.flow_features.flow_matrix`); rows are split by
:func:`class_time_split`. Raw rows never leave the site. Message types:

* ``query``: reply ``n`` and the per-feature sum and sum of squares of the *train* rows
  (``stats`` ArrayRecord ``[sum, sumsq]``, ``metrics`` MetricRecord), plus the feature names;
* ``train``: set the global weights and the shared scaler from the ``config`` record, train
  ``local-epochs`` epochs, reply ``arrays`` + ``metrics`` (``num-examples``);
* ``evaluate``: score the held-out rows, reply ``auc`` (``auc-valid`` = 0 when the held-out
  rows have one class only; ``auc`` is then 0 and meaningless).

Server side (``server_app``)
----------------------------
Run config: ``num-rounds``, ``aggregator`` (fedavg / median / trimmed-mean / krum),
``local-epochs``, ``min-nodes``, ``out-dir``, ``hidden`` (e.g. ``"64,32"``), ``seed``,
``trim-beta``, ``krum-f``, ``round-timeout`` (seconds per exchange), ``node-timeout`` (seconds
to wait for ``min-nodes`` SuperNodes), ``signing-key`` (``""`` = do not sign).
The ServerApp waits for ``min-nodes`` SuperNodes, queries their moments, combines them into one
mean / std (:func:`combine_moments`) sent to every site in the train / evaluate config, runs the
built-in strategy (:func:`make_builtin_strategy`), then writes

* ``<out-dir>/model/``: ``weights.npz`` + ``manifest.json`` in the format of
  :func:`iotsentry.detectors.flow_models.train_flows` (readable by ``load_flow_model``), signed
  with :func:`iotsentry.integrity.signing.sign_model_dir` when ``signing-key`` is set;
* ``<out-dir>/fl-summary.json``: the sites (row counts only), and per round and site whether
  it trained and evaluated, its held-out AUC, ``bytes_down`` (``ArrayRecord.count_bytes()`` of
  the train + evaluate messages sent to it) and ``bytes_up`` (of its train reply).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from iotsentry.capture.zeek import read_flows
from iotsentry.detectors.flow_mlp import FlowMLP
from iotsentry.errors import InputError
from iotsentry.evaluation.metrics import roc_auc
from iotsentry.features.flow_features import flow_matrix
from iotsentry.federated.model_export import write_model_dir
from iotsentry.federated.sites import class_time_split, combine_moments, moments
from iotsentry.federated.strategies import make_strategy

CLASSES = ("benign", "malicious")
#: Aggregators of the deployment: Flower built-in strategies.
AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum")

__all__ = [
    "AGGREGATORS",
    "CLASSES",
    "RUN_CONFIG_DEFAULTS",
    "SiteData",
    "client_app",
    "load_site",
    "make_builtin_strategy",
    "server_app",
    "site_files",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Run config keys of the deployment app and their defaults (written into the app project).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "num-rounds": 3,
    "aggregator": "fedavg",
    "local-epochs": 1,
    "min-nodes": 2,
    "out-dir": "fl-out",
    "hidden": "64,32",
    "seed": 0,
    "trim-beta": 0.2,
    "krum-f": 1,
    "round-timeout": 600.0,
    "node-timeout": 3600.0,
    "signing-key": "",
}

server_app = ServerApp()
client_app = ClientApp()


# -- site data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteData:
    """One site's rows, split by :func:`class_time_split` (features never leave the site)."""

    name: str
    X_train: F32
    y_train: npt.NDArray[np.str_]
    X_test: F32
    y_test: npt.NDArray[np.str_]
    feature_names: tuple[str, ...]

    @property
    def evaluable(self) -> bool:
        """True when the held-out rows hold both classes (the AUC is defined)."""
        return len(set(self.y_test.tolist())) == 2


def site_files(data_dir: str | Path) -> list[Path]:
    """The labeled flow logs under ``data_dir`` (``conn.log.labeled``, ``*-labeled.csv``), sorted."""
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(d, "site data folder does not exist")
    files = sorted({*d.rglob("conn.log.labeled"), *d.rglob("*-labeled.csv")})
    if not files:
        raise InputError(d, "no labeled flow logs (conn.log.labeled or *-labeled.csv) in the site folder")
    return files


@functools.lru_cache(maxsize=4)
def load_site(data_dir: str, train_frac: float = 0.8, name: str = "") -> SiteData:
    """Read, featurise (per file) and split one site's flow logs."""
    Xs: list[F32] = []
    ys: list[npt.NDArray[np.str_]] = []
    ts: list[F64] = []
    names: tuple[str, ...] = ()
    for path in site_files(data_dir):
        flows = read_flows(path)
        if len(flows) == 0:
            continue
        if not flows.has("label"):
            raise InputError(path, "site flows need labels (label column)")
        X, cols = flow_matrix(flows)
        if names and tuple(cols) != names:
            raise InputError(path, "feature names differ from the site's other files")
        names = tuple(cols)
        Xs.append(np.asarray(X, dtype=np.float32))
        label = np.asarray(flows.columns["label"]).astype(str)
        ys.append(np.where(label == "malicious", CLASSES[1], CLASSES[0]).astype(str))
        ts.append(np.asarray(flows.columns["ts"], dtype=np.float64))
    if not Xs:
        raise InputError(data_dir, "the site's flow logs hold no flows")
    X_all, y_all, t_all = np.vstack(Xs), np.concatenate(ys), np.concatenate(ts)
    tr, te = class_time_split(y_all, train_frac, ts=t_all)
    return SiteData(
        name=name or Path(data_dir).name,
        X_train=X_all[tr],
        y_train=y_all[tr],
        X_test=X_all[te],
        y_test=y_all[te],
        feature_names=names,
    )


def _site(context: Context) -> SiteData:
    cfg = context.node_config
    if "data-dir" not in cfg:
        raise InputError("node config", "data-dir is not set (flower-supernode --node-config)")
    frac = float(cfg.get("train-frac", 0.8))  # type: ignore[arg-type]
    return load_site(str(cfg["data-dir"]), frac, str(cfg.get("site-name", "")))


# -- shared standardisation -----------------------------------------------------------------------


# -- model ----------------------------------------------------------------------------------------


def _new_model(hidden: Sequence[int], seed: int, mean: npt.ArrayLike, std: npt.ArrayLike) -> FlowMLP:
    """A FlowMLP with the shared class list and scaler (weights still to be set or initialised)."""
    m = FlowMLP(hidden=hidden, classes=list(CLASSES), seed=seed)
    m.set_scaler(mean, std)
    m.classes_ = np.array(CLASSES, dtype=str)
    return m


# -- ClientApp ------------------------------------------------------------------------------------


def _model_from(msg: Message) -> tuple[FlowMLP, ConfigRecord]:
    cfg = msg.content.config_records["config"]
    mean = np.asarray(cfg["scaler-mean"], dtype=np.float32)
    std = np.asarray(cfg["scaler-std"], dtype=np.float32)
    seed = int(cfg.get("seed", 0)) + int(cfg.get("server-round", 0))  # type: ignore[arg-type]
    model = _new_model((1,), seed, mean, std)  # the layer shapes come from the global weights
    model.set_weights(msg.content.array_records["arrays"].to_numpy_ndarrays())
    return model, cfg


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    site = _site(context)
    n, s1, s2 = moments(site.X_train)
    content = RecordDict(
        {
            "stats": ArrayRecord([s1, s2]),
            "metrics": MetricRecord(
                {
                    "n-train": n,
                    "n-test": len(site.y_test),
                    "malicious-train": int((site.y_train == CLASSES[1]).sum()),
                    "malicious-test": int((site.y_test == CLASSES[1]).sum()),
                }
            ),
            "info": ConfigRecord({"site": site.name, "feature-names": list(site.feature_names)}),
        }
    )
    return Message(content=content, reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    site = _site(context)
    model, cfg = _model_from(msg)
    model.partial_fit(site.X_train, site.y_train, epochs=int(cfg.get("local-epochs", 1)))  # type: ignore[arg-type]
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.get_weights()),
            "metrics": MetricRecord({"num-examples": len(site.y_train)}),
        }
    )
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    site = _site(context)
    model, _ = _model_from(msg)
    valid = site.evaluable
    auc = float(roc_auc(site.y_test == CLASSES[1], model.score(site.X_test))) if valid else 0.0
    metrics = MetricRecord({"auc": auc, "auc-valid": int(valid), "num-examples": max(len(site.y_test), 1)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


# -- ServerApp ------------------------------------------------------------------------------------


class _RecordingGrid(Grid):
    """A Grid that forwards everything and records, per exchange, the nodes and payload sizes."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner
        self.rounds: list[dict[str, Any]] = []

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = list(messages)
        replies = list(self._inner.send_and_receive(out, timeout=timeout))
        if not out:
            return replies
        kind = out[0].metadata.message_type.split(".")[0]
        if kind == "train":
            self.rounds.append({"round": len(self.rounds) + 1, "train": {}, "evaluate": {}})
        if kind in ("train", "evaluate") and self.rounds:
            rec: dict[int, dict[str, Any]] = self.rounds[-1][kind]
            for m in out:
                arrays = m.content.array_records
                rec[m.metadata.dst_node_id] = {
                    "bytes_down": sum(a.count_bytes() for a in arrays.values()),
                    "bytes_up": 0,
                    "ok": False,
                }
            for r in replies:
                row = rec.setdefault(r.metadata.src_node_id, {"bytes_down": 0, "bytes_up": 0, "ok": False})
                if r.has_error():
                    row["error"] = r.error.reason
                    continue
                row["ok"] = True
                row["bytes_up"] = sum(a.count_bytes() for a in r.content.array_records.values())
                if "metrics" in r.content.metric_records:
                    row["metrics"] = dict(r.content.metric_records["metrics"])
        return replies


def make_builtin_strategy(
    aggregator: str, min_nodes: int, trim_beta: float = 0.2, krum_f: int = 1
) -> Strategy:
    """Flower's built-in strategy for ``aggregator`` (one of :data:`AGGREGATORS`), built by
    :func:`iotsentry.federated.strategies.make_strategy`: every connected node trains and
    evaluates, at least ``min_nodes`` nodes must be connected before a round starts; the
    evaluation metric is the unweighted mean AUC of the sites whose held-out rows hold both
    classes."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; choose from {AGGREGATORS}")
    return make_strategy(aggregator, min_nodes, {}, trim_beta=trim_beta, assumed_malicious=krum_f)


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while len(ids := sorted(grid.get_node_ids())) < n:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(ids)} of {n} SuperNodes connected within {timeout:.0f} s")
        time.sleep(1.0)
    return ids


def _query_sites(grid: Grid, node_ids: Sequence[int], timeout: float) -> dict[int, dict[str, Any]]:
    msgs = [
        Message(content=RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=nid)
        for nid in node_ids
    ]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    sites: dict[int, dict[str, Any]] = {}
    for r in replies:
        nid = r.metadata.src_node_id
        if r.has_error():
            raise RuntimeError(f"SuperNode {nid} failed the statistics query: {r.error.reason}")
        s1, s2 = r.content.array_records["stats"].to_numpy_ndarrays()
        m: dict[str, Any] = dict(r.content.metric_records["metrics"])
        info = r.content.config_records["info"]
        sites[nid] = {
            "site": str(info["site"]),
            "feature_names": [str(x) for x in info["feature-names"]],  # type: ignore[union-attr]
            "n_train": int(m["n-train"]),
            "n_test": int(m["n-test"]),
            "malicious_train": int(m["malicious-train"]),
            "malicious_test": int(m["malicious-test"]),
            "sum": s1,
            "sumsq": s2,
        }
    missing = set(node_ids) - set(sites)
    if missing:
        raise RuntimeError(f"SuperNodes {sorted(missing)} did not answer the statistics query")
    return sites


def _hidden(spec: Any) -> tuple[int, ...]:
    return tuple(int(h) for h in str(spec).replace(" ", "").split(",") if h)


def _summary_rounds(rec: _RecordingGrid, names: dict[int, str]) -> list[dict[str, Any]]:
    rounds = []
    for r in rec.rounds:
        sites = []
        for nid in sorted(set(r["train"]) | set(r["evaluate"])):
            tr, ev = r["train"].get(nid, {}), r["evaluate"].get(nid, {})
            m = ev.get("metrics", {})
            sites.append(
                {
                    "node_id": nid,
                    "site": names.get(nid, str(nid)),
                    "trained": bool(tr.get("ok")),
                    "evaluated": bool(ev.get("ok")),
                    "auc": float(m["auc"]) if m and int(m.get("auc-valid", 0)) else None,
                    "bytes_down": int(tr.get("bytes_down", 0)) + int(ev.get("bytes_down", 0)),
                    "bytes_up": int(tr.get("bytes_up", 0)),
                    **(
                        {"error": tr.get("error") or ev.get("error")}
                        if "error" in tr or "error" in ev
                        else {}
                    ),
                }
            )
        aucs = [s["auc"] for s in sites if s["auc"] is not None]
        rounds.append(
            {
                "round": r["round"],
                "n_trained": sum(s["trained"] for s in sites),
                "auc_site_mean": float(np.mean(aucs)) if aucs else None,
                "sites": sites,
            }
        )
    return rounds


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    cfg = {**RUN_CONFIG_DEFAULTS, **dict(context.run_config)}
    aggregator = str(cfg["aggregator"])
    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; choose from {AGGREGATORS}")
    n_rounds, min_nodes = int(cfg["num-rounds"]), int(cfg["min-nodes"])
    local_epochs, seed, timeout = int(cfg["local-epochs"]), int(cfg["seed"]), float(cfg["round-timeout"])
    hidden = _hidden(cfg["hidden"])
    out_dir = Path(str(cfg["out-dir"])).expanduser()
    t0 = time.time()

    node_ids = _wait_for_nodes(grid, min_nodes, float(cfg["node-timeout"]))
    sites = _query_sites(grid, node_ids, timeout)
    names = {nid: s["site"] for nid, s in sites.items()}
    feature_lists = {tuple(s["feature_names"]) for s in sites.values()}
    if len(feature_lists) != 1:
        raise RuntimeError("the sites compute different feature sets (iotsentry versions differ?)")
    feature_names = list(feature_lists.pop())
    mean, std = combine_moments((s["n_train"], s["sum"], s["sumsq"]) for s in sites.values())

    init = _new_model(hidden, seed, mean, std)
    init.epochs = 0  # initialise the layers only
    init.fit(np.zeros((2, len(feature_names)), dtype=np.float32), np.array(CLASSES))
    shared = {"scaler-mean": mean.tolist(), "scaler-std": std.tolist(), "seed": seed}

    rec = _RecordingGrid(grid)
    strategy = make_builtin_strategy(
        aggregator, min_nodes, trim_beta=float(cfg["trim-beta"]), krum_f=int(cfg["krum-f"])
    )
    result = strategy.start(
        grid=rec,
        initial_arrays=ArrayRecord(init.get_weights()),
        num_rounds=n_rounds,
        timeout=timeout,
        train_config=ConfigRecord({"local-epochs": local_epochs, **shared}),
        evaluate_config=ConfigRecord(shared),
    )

    final = _new_model(hidden, seed, mean, std)
    final.set_weights(result.arrays.to_numpy_ndarrays())
    site_rows = [
        {"node_id": nid, **{k: v for k, v in s.items() if k not in ("sum", "sumsq", "feature_names")}}
        for nid, s in sorted(sites.items())
    ]
    training = {
        "federated": True,
        "aggregator": aggregator,
        "num_rounds": n_rounds,
        "local_epochs": local_epochs,
        "sites": [s["site"] for s in site_rows],
        "n_train": int(sum(s["n_train"] for s in site_rows)),
    }
    model_dir = out_dir / "model"
    write_model_dir(final, feature_names, model_dir, training)
    signing_key = str(cfg["signing-key"])
    if signing_key:
        from iotsentry.integrity.signing import sign_model_dir

        sign_model_dir(model_dir, signing_key)
    signed = bool(signing_key)

    rounds = _summary_rounds(rec, names)
    summary = {
        "run_id": context.run_id,
        "aggregator": aggregator,
        "num_rounds": n_rounds,
        "completed_rounds": len(rounds),
        "local_epochs": local_epochs,
        "min_nodes": min_nodes,
        "sites": site_rows,
        "rounds": rounds,
        "final_auc_site_mean": rounds[-1]["auc_site_mean"] if rounds else None,
        "model_dir": str(model_dir.resolve()),
        "signed": signed,
        "seconds": round(time.time() - t0, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fl-summary.json").write_text(json.dumps(summary, indent=2))
