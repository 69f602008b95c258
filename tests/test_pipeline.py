"""End to end on the generated smart home and on real captures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import data_path
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.pipeline import AnalysisConfig, Analyzer


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    p = tmp_path_factory.mktemp("home") / "home.pcap"
    truth = generate_home(p, seed=11)
    return p, truth


def test_only_the_infected_device_is_flagged_with_reasons(home: tuple[Path, object]) -> None:
    path, truth = home
    res = Analyzer([path]).run()
    infected = truth.infected_mac  # type: ignore[attr-defined]
    flagged = {a.device_id for a in res.alerts}
    assert flagged == {infected}
    cats = {a.category for a in res.alerts}
    assert {"scan", "flood", "c2"} <= cats, cats
    # alerts come after the infection, and every reason names the device and its baseline
    t0 = truth.infection_ts  # type: ignore[attr-defined]
    assert all(a.timestamp >= t0 for a in res.alerts)
    assert all("baseline" in a.reason for a in res.alerts)
    scan = next(a for a in res.alerts if a.category == "scan")
    assert "port 23" in scan.reason
    # the inventory found every generated device with its vendor
    found = {d.device_id: d for d in res.devices}
    for dev in truth.devices:  # type: ignore[attr-defined]
        assert dev.mac in found
    assert found[truth.gateway["mac"]].is_gateway  # type: ignore[attr-defined]


def test_per_packet_scores_rank_malicious_packets_first(home: tuple[Path, object]) -> None:
    import numpy as np

    from iotsentry.evaluation.metrics import roc_auc

    path, truth = home
    parts = []
    an = Analyzer([path], AnalysisConfig(learn_seconds=truth.infection_ts - truth.ts[0]))  # type: ignore[attr-defined]
    an.run(score_sink=lambda b, d, s: parts.append((b.index.copy(), s.copy())))
    idx = np.concatenate([p[0] for p in parts])
    sc = np.concatenate([p[1] for p in parts])
    labels = np.asarray(truth.labels, bool)[idx]  # type: ignore[attr-defined]
    after = np.asarray(truth.ts)[idx] >= truth.infection_ts  # type: ignore[attr-defined]
    assert roc_auc(labels[after], sc[after]) > 0.95


def test_baselines_are_learned_only_before_the_learning_end(home: tuple[Path, object]) -> None:
    path, _truth = home
    an = Analyzer([path], AnalysisConfig(learn_seconds=600))
    res = an.run()
    for prof in res.baselines.values():
        if prof["observed_s"]:
            assert prof["observed_s"] <= 600
    # ten minutes is enough for the chatty devices to mature, not for a 300 s sensor schedule
    assert res.stats["learn_end"] <= res.stats["first_ts"] + 600


@pytest.mark.slow
def test_benign_iot23_captures_raise_no_alert_when_learning_until_the_recipe_splice() -> None:
    hue = data_path(
        "iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap"
    )
    res = Analyzer([hue], AnalysisConfig(learn_fraction=0.8)).run()
    assert res.alerts == []
    assert any(d.device_id == "00:17:88:75:b3:82" for d in res.devices)


def test_results_do_not_depend_on_the_batch_size(home: tuple[Path, object]) -> None:
    import json

    path, _truth = home
    a = Analyzer([path]).run()
    b = Analyzer([path], AnalysisConfig(batch_size=7_000)).run()
    assert [x.to_eve() for x in a.alerts] == [x.to_eve() for x in b.alerts]
    assert json.dumps(dict(a.baselines), sort_keys=True, default=str) == json.dumps(
        dict(b.baselines), sort_keys=True, default=str
    )
    assert a.stats["flows"] == b.stats["flows"]


def test_out_of_order_input_still_learns_every_packet_before_the_learning_end(tmp_path: Path) -> None:
    """A capture whose second half comes first in time: learning must not stop at the first
    packet past the learning end, so it learns what the same packets in time order teach."""
    import dpkt

    src = tmp_path / "home.pcap"
    generate_home(src, seed=3, duration_s=1200.0, infect_at=1.0)
    with src.open("rb") as fh:
        packets = list(dpkt.pcap.Reader(fh))
    half = len(packets) // 2
    shifted = [(ts - 7200.0, buf) for ts, buf in packets[half:]]  # second half, two hours earlier

    def write(path: Path, rows: list[tuple[float, bytes]]) -> Path:
        with path.open("wb") as out:
            w = dpkt.pcap.Writer(out)
            for ts, buf in rows:
                w.writepkt(buf, ts=ts)
        return path

    merged = write(tmp_path / "merged.pcap", packets[:half] + shifted)
    ordered = write(tmp_path / "ordered.pcap", shifted + packets[:half])
    runs = []
    for path in (merged, ordered):
        an = Analyzer([path], AnalysisConfig(learn_fraction=0.5, batch_size=5_000))
        an.run()
        assert an.baseline is not None
        runs.append((an._time_sorted, sum(len(p.windows) for p in an.baseline.profiles), an.learn_end()))
    (m_sorted, m_windows, m_end), (o_sorted, o_windows, o_end) = runs
    assert not m_sorted and o_sorted and m_end == o_end
    # the learning period is the early (shifted) half: the same windows in both orders, but for
    # a window that an out-of-order batch boundary splits in two rows (stopping at the first late
    # packet, as a time-sorted reader may, would learn nothing here)
    assert o_windows > 20
    assert abs(m_windows - o_windows) <= 2
