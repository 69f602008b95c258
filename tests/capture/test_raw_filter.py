"""Reading raw bytes only for the packets whose application fields are parsed loses nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.reader import read_all

CAPTURES = [
    ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap"),
    ("iot-sentinel", "WeMoSwitch", "Setup-A-1-STA.pcap"),
    ("zeek-testsuite-iot-ics-traces", "dhcp", "dhcp.pcap"),
    ("zeek-testsuite-iot-ics-traces", "dns", "mdns.pcap"),
]


@pytest.mark.slow
@pytest.mark.parametrize("parts", CAPTURES, ids=lambda p: p[-1])
def test_filtered_raw_gives_the_same_events_with_far_fewer_bytes(parts: tuple[str, ...]) -> None:
    path: Path = data_path(*parts)
    full = read_all(path, with_raw=True)
    part = read_all(path, with_raw=keep_raw_for_app_fields)
    for name in full.columns:
        np.testing.assert_array_equal(full.columns[name], part.columns[name])
    a, b = extract_app_events(full), extract_app_events(part)
    assert len(a) > 0
    assert [(e.index, e.kind, e.fields) for e in a] == [(e.index, e.kind, e.fields) for e in b]
    assert part.raw is not None and full.raw is not None
    if "Hue" in path.name:
        assert len(part.raw) < 0.5 * len(full.raw)
    # frames that were not kept have no bytes, kept ones are byte-identical
    for i in range(len(part)):
        got = part.frame(i)
        assert got == b"" or got == full.frame(i)
