"""``analyze`` reads its input once: the same results as a timestamp pre-pass plus a read."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

import iotsentry.pipeline as pipeline
from conftest import data_path
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.pipeline import AnalysisConfig, AnalysisResult, Analyzer


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the reads of the input: full reads (decoded) and timestamp walks."""
    seen: Counter[str] = Counter()
    real_packets, real_times = pipeline.read_packets, pipeline.read_timestamps

    def packets(path: Any, **kw: Any) -> Iterator[Any]:
        seen["packets"] += 1
        yield from real_packets(path, **kw)

    def times(path: Any, **kw: Any) -> Iterator[Any]:
        seen["timestamps"] += 1
        yield from real_times(path, **kw)

    monkeypatch.setattr(pipeline, "read_packets", packets)
    monkeypatch.setattr(pipeline, "read_timestamps", times)
    return seen


def _same(a: AnalysisResult, b: AnalysisResult) -> None:
    assert a.alerts, "the capture must raise alerts for the comparison to mean something"
    assert [x.to_eve() for x in a.alerts] == [x.to_eve() for x in b.alerts]
    assert json.dumps(dict(a.baselines), sort_keys=True) == json.dumps(dict(b.baselines), sort_keys=True)
    for attr in ("timelines", "absorbed"):
        assert json.dumps(getattr(a, attr), sort_keys=True, default=str) == json.dumps(
            getattr(b, attr), sort_keys=True, default=str
        ), attr
    assert [d.to_dict() for d in a.devices] == [d.to_dict() for d in b.devices]
    for k in ("packets", "flows", "first_ts", "last_ts", "learn_end", "incidents", "absorbed"):
        assert a.stats[k] == b.stats[k], k


def _infected_day(tmp_path: Path) -> Path:
    """A generated home network (real-shaped device traffic) with an infection."""
    path = tmp_path / "home.pcap"
    generate_home(path, seed=5, duration_s=2400.0, infect_at=0.7)
    return path


def test_a_given_learning_period_reads_the_input_once_with_the_same_results(
    tmp_path: Path, reads: Counter[str]
) -> None:
    path = _infected_day(tmp_path)
    cfg = AnalysisConfig(learn_seconds=900.0, batch_size=4_000)
    one = Analyzer([path], cfg).run()
    assert reads == {"packets": 1}
    reads.clear()
    two = Analyzer([path], cfg)
    two._span()  # the former first pass (times and order only), then the analysis
    _same(one, two.run())
    assert reads == {"timestamps": 1, "packets": 1}


def test_one_read_of_a_real_multi_day_capture_matches_the_two_pass_run(reads: Counter[str]) -> None:
    path = data_path("iotensemble", "gree_plug", "2020-11-25.pcap")
    cfg = AnalysisConfig(learn_seconds=3600.0, batch_size=3_000)
    one = Analyzer([path], cfg).run()
    two = Analyzer([path], cfg)
    two._span()
    ref = two.run()
    assert [x.to_eve() for x in one.alerts] == [x.to_eve() for x in ref.alerts]
    assert json.dumps(dict(one.baselines), sort_keys=True, default=str) == json.dumps(
        dict(ref.baselines), sort_keys=True, default=str
    )
    assert one.baselines and one.stats["packets"] == ref.stats["packets"] > 1000


def test_a_learning_fraction_walks_the_record_headers_first(tmp_path: Path, reads: Counter[str]) -> None:
    path = _infected_day(tmp_path)
    an = Analyzer([path], AnalysisConfig(learn_fraction=0.5))
    res = an.run()
    assert reads == {"timestamps": 1, "packets": 1}
    assert res.stats["learn_end"] == an.learn_end() > res.stats["first_ts"]


def test_input_out_of_time_order_starts_again_sorted(tmp_path: Path, reads: Counter[str]) -> None:
    src = _infected_day(tmp_path)
    with src.open("rb") as fh:
        packets = list(dpkt.pcap.Reader(fh))
    half = len(packets) // 2
    late_first = tmp_path / "merged.pcap"
    ordered = tmp_path / "ordered.pcap"
    for path, rows in ((late_first, packets[half:] + packets[:half]), (ordered, packets)):
        with path.open("wb") as out:
            w = dpkt.pcap.Writer(out)
            for ts, buf in rows:
                w.writepkt(buf, ts=ts)
    cfg = AnalysisConfig(learn_seconds=900.0, batch_size=4_000)
    restarts: list[int] = []
    scored: list[int] = []
    with pytest.warns(RuntimeWarning, match="not in time order"):
        merged = Analyzer([late_first], cfg).run(
            score_sink=lambda b, d, s: scored.append(len(b)),
            on_restart=lambda: (restarts.append(len(scored)), scored.clear()),
        )
    # the stream goes back in time at the half: one restart, then the sorted input from the start
    assert len(restarts) == 1
    assert sum(scored) == len(packets)
    assert reads == {"packets": 2, "timestamps": 1}  # stream; restart: times, sorted read
    _same(Analyzer([ordered], cfg).run(), merged)
