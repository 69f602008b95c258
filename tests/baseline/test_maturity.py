from __future__ import annotations

from iotsentry.baseline.maturity import maturity_of


def test_young_baseline_is_not_mature() -> None:
    m = maturity_of(0.0, 120.0, [1.0, 2.0], windows=3)
    assert not m.mature
    assert "observed 120 s" in m.reason


def test_flattened_discovery_is_mature() -> None:
    disc = [10.0 * i for i in range(20)]  # all discoveries in the first 200 s of 3600 s
    m = maturity_of(0.0, 3600.0, disc, windows=60)
    assert m.mature and m.score == 1.0
    assert m.recent_discoveries == 0


def test_still_discovering_is_not_mature() -> None:
    disc = [3600.0 * i / 20 for i in range(20)]  # steady discovery up to the end
    m = maturity_of(0.0, 3600.0, disc, windows=60)
    assert not m.mature
    assert m.recent_discoveries >= 5
    assert "still discovering" in m.reason
