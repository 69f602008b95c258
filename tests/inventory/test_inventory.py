"""Inventory on real captures: golden files plus facts stated independently in SOURCE.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import DATA, data_path
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.pipeline import Analyzer
from iotsentry.schema import Device

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "inventory"
FIELDS = ("device_id", "ips", "vendor", "names", "dhcp", "is_gateway", "device_type")


def _inventory(path: Path) -> list[Device]:
    return Analyzer([path]).inventory()


@pytest.mark.slow
@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_inventory_matches_golden(golden: Path) -> None:
    expected = json.loads(golden.read_text())
    devices = _inventory(data_path(*expected["capture"].split("/")))
    got = [{k: json.loads(json.dumps(d.to_dict()[k])) for k in FIELDS} for d in devices]
    assert got == expected["devices"]


@pytest.mark.slow
def test_hue_capture_facts_from_source_md() -> None:
    p = data_path("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
    devs = {d.device_id: d for d in _inventory(p)}
    hue = devs["00:17:88:75:b3:82"]
    assert "192.168.100.118" in hue.ips
    assert hue.vendor is not None and "Philips" in hue.vendor
    apple = devs["9c:f4:8e:65:c4:4d"]
    assert "192.168.100.119" in apple.ips and apple.vendor == "Apple, Inc."
    gw = [d for d in devs.values() if d.is_gateway]
    assert len(gw) == 1 and "192.168.100.1" in gw[0].ips


@pytest.mark.slow
def test_every_sentinel_device_mac_is_found_and_is_not_the_gateway() -> None:
    index = data_path("iot-sentinel", "index.csv")
    seen_dirs: set[str] = set()
    with index.open() as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["device_dir"] not in seen_dirs and not seen_dirs.add(r["device_dir"])
        ]
    assert len(rows) == 31
    for r in rows:
        devs = {d.device_id: d for d in _inventory(DATA / "iot-sentinel" / r["device_dir"] / r["file"])}
        mac = r["device_mac"].lower()
        assert mac in devs, f"{r['device_dir']}: device MAC {mac} missing from the inventory"
        assert not devs[mac].is_gateway, f"{r['device_dir']}: the device was taken for the gateway"


def test_device_identity_survives_an_ip_change() -> None:
    import numpy as np

    from iotsentry.schema import PacketBatch, ip_from_str

    mac = 0x001788AABBCC
    gw = 0x0011223344AA
    rows = []
    for i, ip in enumerate(["192.168.1.20", "192.168.1.20", "192.168.1.77"]):
        hi, lo = ip_from_str(ip)
        dhi, dlo = ip_from_str("52.1.2.3")
        rows.append((i, float(i), mac, gw, hi, lo, dhi, dlo))
    # the gateway relays an internet packet back
    rows.append((3, 3.0, gw, mac, *ip_from_str("52.1.2.3"), *ip_from_str("192.168.1.77")))
    cols = list(zip(*rows, strict=True))
    b = PacketBatch(
        {
            "index": np.array(cols[0]),
            "ts": np.array(cols[1]),
            "src_mac": np.array(cols[2], np.uint64),
            "dst_mac": np.array(cols[3], np.uint64),
            "src_ip_hi": np.array(cols[4], np.uint64),
            "src_ip_lo": np.array(cols[5], np.uint64),
            "dst_ip_hi": np.array(cols[6], np.uint64),
            "dst_ip_lo": np.array(cols[7], np.uint64),
            "ip_version": np.full(4, 4),
            "ethertype": np.full(4, 0x0800),
            "wire_len": np.full(4, 100),
            "proto": np.full(4, 6),
        }
    )
    t = DeviceTracker()
    t.update(b)
    devs = {d.device_id: d for d in t.devices()}
    d = devs["00:17:88:aa:bb:cc"]
    assert d.ips[0] == "192.168.1.77" and "192.168.1.20" in d.ips  # newest binding first
    assert devs["00:11:22:33:44:aa"].is_gateway
    assert d.packets == 3


def test_the_inventory_of_a_capture_without_link_layer_can_be_asked_for_again() -> None:
    """Raw-IP captures have devices known by IP only; the monitor asks the tracker for the
    inventory after every batch (once this raised: an IP-only device id taken for a MAC)."""
    import numpy as np

    from iotsentry.schema import PacketBatch, ip_from_str

    hi, lo = ip_from_str("10.0.0.5")
    dhi, dlo = ip_from_str("10.0.0.9")
    b = PacketBatch(
        {
            "index": np.arange(2),
            "ts": np.array([0.0, 1.0]),
            "src_ip_hi": np.array([hi, dhi], np.uint64),
            "src_ip_lo": np.array([lo, dlo], np.uint64),
            "dst_ip_hi": np.array([dhi, hi], np.uint64),
            "dst_ip_lo": np.array([dlo, lo], np.uint64),
            "ip_version": np.full(2, 4),
            "ethertype": np.full(2, 0x0800),
            "wire_len": np.full(2, 60),
            "proto": np.full(2, 6),
        }
    )
    t = DeviceTracker()
    t.update(b)
    first = [d.device_id for d in t.devices()]
    t.update(b)
    assert [d.device_id for d in t.devices()] == first
    assert first and all(d.startswith("ip:") for d in first)
