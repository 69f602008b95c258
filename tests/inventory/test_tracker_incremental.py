"""The incremental inventory equals the straightforward one after every batch.

:class:`DeviceTracker` refreshes only what changed; :class:`devices_reference.ReferenceTracker`
(the tracker as it was) rebuilds every device, type guess and the sort on every call. Fed the
same stream, both must answer :meth:`devices` with the same list (order and every field),
and agree on the gateway, the device MACs and the names of addresses.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from devices_reference import ReferenceTracker

from conftest import DATA
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import AppEvent, Device, PacketBatch, ip_from_str, mac_to_str


def _dicts(devices: list[Device]) -> list[dict[str, Any]]:
    return [d.to_dict() for d in devices]


class Pair:
    """The tracker and the reference, fed alike and compared."""

    def __init__(self) -> None:
        self.new, self.ref = DeviceTracker(), ReferenceTracker()
        self.listed = 0

    def update(self, batch: PacketBatch, events: list[AppEvent]) -> None:
        self.new.update(batch, events)
        self.ref.update(batch, events)

    def check(self) -> None:
        got, want = self.new.devices(), self.ref.devices()
        assert [d.device_id for d in got] == [d.device_id for d in want]
        assert _dicts(got) == _dicts(want)
        assert self.new.gateway_mac() == self.ref.gateway_mac()
        assert self.new.device_macs() == self.ref.device_macs()
        assert self.new.ip_names == self.ref.ip_names
        assert self.new.ip_name_ts == self.ref.ip_name_ts
        self.listed = len(got)


# ---------------------------------------------------------------------------------------------
# Real captures
# ---------------------------------------------------------------------------------------------


def _stream(files: list[Path], batch_size: int) -> Iterator[PacketBatch]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one IoT-23 capture ends inside a record
        for f in files:
            yield from read_packets(f, batch_size=batch_size, with_raw=keep_raw_for_app_fields)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pattern",
    ["iot-sentinel/*/*.pcap", "iotensemble/*/*.pcap", "iot23/pcap/*/*.pcap"],
    ids=lambda p: p.split("/")[0],
)
def test_real_captures_give_the_reference_inventory(pattern: str) -> None:
    """All captures of a data set as one stream (devices join, the gateway changes), the
    inventory asked for after every batch."""
    files = sorted(DATA.glob(pattern))
    if not files:
        pytest.skip(f"real data not available: {DATA / pattern}")
    pair = Pair()
    for batch in _stream(files[:: max(1, len(files) // 80)], 3_000):
        pair.update(batch, extract_app_events(batch))
        pair.check()
    assert pair.listed >= 5 and pair.ref.gateway_mac() is not None


# ---------------------------------------------------------------------------------------------
# Generated batches
# ---------------------------------------------------------------------------------------------

LOCAL = [f"192.168.1.{i}" for i in range(2, 40)] + [f"fe80::{i:x}" for i in range(1, 6)]
REMOTE = [f"52.1.2.{i}" for i in range(1, 9)] + [f"2001:db8::{i:x}" for i in range(1, 4)]


def _batch(rng: random.Random, macs: list[int], n: int, t0: float) -> PacketBatch:
    cols: dict[str, list[Any]] = {k: [] for k in ("src_mac", "dst_mac", "ethertype", "ip_version")}
    for k in ("src_ip_hi", "src_ip_lo", "dst_ip_hi", "dst_ip_lo", "wire_len", "ts"):
        cols[k] = []
    for i in range(n):
        kind = rng.random()
        src = rng.choice(macs)
        dst = rng.choice(macs)
        ethertype, version = 0x0800, 4
        if kind < 0.05:  # ARP (sender address of the protocol)
            ethertype, version = 0x0806, 0
            s_ip, d_ip = rng.choice([*LOCAL[:38], "0.0.0.0"]), rng.choice(LOCAL[:38])
        elif kind < 0.15:  # no link layer: local IPs stand for devices
            src = dst = 0
            s_ip, d_ip = rng.choice(LOCAL), rng.choice(REMOTE)
        elif kind < 0.35:  # relayed from the internet
            s_ip, d_ip = rng.choice(REMOTE), rng.choice(LOCAL)
        elif kind < 0.40:  # multicast / broadcast sources and destinations
            src = rng.choice([src, 0x01005E0000FB, 0xFFFFFFFFFFFF])
            s_ip, d_ip = rng.choice(LOCAL), "224.0.0.251"
        else:
            s_ip, d_ip = rng.choice(LOCAL), rng.choice(REMOTE + LOCAL)
        if ":" in s_ip:
            version = 6
        sh, sl = ip_from_str(s_ip)
        dh, dl = ip_from_str(d_ip)
        for k, v in zip(
            (
                "src_mac",
                "dst_mac",
                "ethertype",
                "ip_version",
                "src_ip_hi",
                "src_ip_lo",
                "dst_ip_hi",
                "dst_ip_lo",
            ),
            (src, dst, ethertype, version, sh, sl, dh, dl),
            strict=True,
        ):
            cols[k].append(v)
        cols["wire_len"].append(rng.randrange(60, 1500))
        cols["ts"].append(t0 + i * 0.01)
    n_rows = len(cols["ts"])
    columns = {k: np.zeros(n_rows, dtype=dt) for k, dt in PacketBatch.FIELDS.items()}
    for k, v in cols.items():
        columns[k] = np.array(v, dtype=PacketBatch.FIELDS[k])
    columns["index"] = np.arange(n_rows, dtype=np.int64)
    return PacketBatch(columns)


def _events(rng: random.Random, macs: list[int], batch: PacketBatch) -> list[AppEvent]:
    out: list[AppEvent] = []
    shared = {"server": "Linux/3.x UPnP/1.0 Sonos/57"}
    for i in sorted(rng.sample(range(len(batch)), min(len(batch), 30))):
        m = rng.choice(macs)
        ts = float(batch.ts[i])
        roll = rng.random()
        if roll < 0.25:
            server = rng.random() < 0.3
            f: dict[str, Any] = {
                "msg_type": rng.choice([1, 3, 5, 2]) if not server else 5,
                "hostname": rng.choice([None, f"cam-{rng.randrange(3)}", "thermostat"]),
                "vendor_class": rng.choice([None, "udhcp 1.2", "android-dhcp-9"]),
                "param_req_list": [1, 3, 6],
                "requested_ip": None,
                "client_mac": mac_to_str(rng.choice(macs)),
                "yiaddr": rng.choice(LOCAL[:38]) if server else "0.0.0.0",
                "server_id": None,
            }
            kind, src = "dhcp", (rng.choice(macs[:2]) if server else m)
        elif roll < 0.5:
            name = rng.choice(["hue-bridge", "roku-tv", "printer", "echo-dot"]) + ".local"
            f = {
                "queries": [],
                "answers": [{"name": name, "type": "A", "value": rng.choice(LOCAL)}],
                "is_response": True,
            }
            kind, src = "mdns", m
        elif roll < 0.65:
            f = {"queries": ["time.example.com"], "answers": [], "is_response": False}
            kind, src = "dns", m
        elif roll < 0.8:
            f, kind, src = (shared if rng.random() < 0.5 else {"server": "Roku/9.4 UPnP/1.0"}), "ssdp", m
        elif roll < 0.9:
            f, kind, src = {"method": "GET", "uri": "/", "host": "h", "user_agent": "SmartCam/1.0"}, "http", m
        else:
            f, kind, src = {"sni": "api.nest.com"}, "tls", m
        out.append(AppEvent(int(batch.index[i]), ts, kind, src, 0, "", "", f))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_generated_streams_give_the_reference_inventory(seed: int) -> None:
    """Devices join through packets, ARP, DHCP and names; the relaying MAC changes (ties go to
    the MAC seen first); the inventory is asked for at random moments, sometimes not at all
    for several batches."""
    rng = random.Random(seed)
    macs = [0x001122000000 + rng.randrange(1 << 20) for _ in range(60)]
    macs += [0x021122000000 + i for i in range(5)]  # locally administered
    pair = Pair()
    t = 1_700_000_000.0
    active = macs[:5]
    gateways = set()
    for step in range(60):
        if rng.random() < 0.3:
            active = active + rng.sample(macs, 3)
        b = _batch(rng, active, rng.randrange(1, 400), t)
        t += 10.0
        pair.update(b, _events(rng, active, b) if rng.random() < 0.7 else [])
        gateways.add(pair.ref.gateway_mac())
        if rng.random() < 0.6 or step == 59:
            pair.check()
        else:
            assert pair.new.gateway_mac() == pair.ref.gateway_mac()
            assert pair.new.device_macs() == pair.ref.device_macs()
    assert pair.listed > 20 and len(gateways) >= 2


def test_relay_ties_go_to_the_mac_seen_first() -> None:
    pair = Pair()
    rng = random.Random(7)
    a, b = 0x001122000001, 0x001122000002
    for order in ([b, a], [a, b], [a, b, b], [a]):
        cols = {k: np.zeros(len(order), dtype=dt) for k, dt in PacketBatch.FIELDS.items()}
        cols["src_mac"] = np.array(order, dtype=np.uint64)
        cols["ip_version"][:] = 4
        _, lo = ip_from_str("52.1.2.3")
        cols["src_ip_lo"][:] = lo
        cols["ts"] = np.arange(len(order), dtype=np.float64) + rng.random()
        pair.update(PacketBatch(cols), [])
        pair.check()
    assert pair.new.gateway_mac() == a  # 4 relayed each... a then b: a is first of the equals


def test_mac_and_address_texts_are_the_schema_ones() -> None:
    from iotsentry.inventory.devices import _mac_text
    from iotsentry.schema import ip_to_str, mac_to_str

    rng = random.Random(11)
    values = [0, 1, (1 << 48) - 1, 1 << 48, (1 << 64) - 1, -1, *(rng.getrandbits(64) for _ in range(2000))]
    assert [_mac_text(m) for m in values] == [mac_to_str(m) for m in values]
    tracker = DeviceTracker()
    pairs = [(0, 0xFFFF_0000_0000 | rng.getrandbits(32)) for _ in range(500)]
    pairs += [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(500)]
    pairs += [(0, rng.getrandbits(48)), (0, 0xFFFF_0000_0000), (0, 0xFFFF_FFFF_FFFF)]
    hi = np.array([h for h, _ in pairs], dtype=np.uint64)
    lo = np.array([x for _, x in pairs], dtype=np.uint64)
    want = [ip_to_str(h, x) for h, x in pairs]
    assert tracker._texts(hi, lo) == want
    assert tracker._texts(hi, lo) == want  # remembered
