"""Application-field extraction (DHCP, DNS/mDNS, SSDP, HTTP, TLS SNI) on real captures."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.appfields import KINDS, AppFieldStats, classify, extract_app_events
from iotsentry.schema import AppEvent, PacketBatch, mac_from_str, mac_to_str


def dpkt_batch(path: Path) -> PacketBatch:
    """A PacketBatch with raw bytes built with dpkt (Ethernet pcaps; the columns appfields needs).

    Independent of iotsentry's own pcap reader, so the parsers can be tested on their own.
    """
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "index",
            "ts",
            "src_mac",
            "dst_mac",
            "ip_version",
            "src_ip_hi",
            "src_ip_lo",
            "dst_ip_hi",
            "dst_ip_lo",
            "proto",
            "src_port",
            "dst_port",
            "payload_off",
            "payload_len",
            "frag",
        )
    }
    frames: list[bytes] = []
    with path.open("rb") as f:
        for i, (ts, buf) in enumerate(dpkt.pcap.Reader(f)):
            row = dict.fromkeys(cols, 0)
            row["index"], row["ts"] = i, ts
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                eth = None
            if eth is not None:
                row["src_mac"] = int.from_bytes(eth.src, "big")
                row["dst_mac"] = int.from_bytes(eth.dst, "big")
                ip_start = 14 + 4 * len(getattr(eth, "vlan_tags", []) or [])
                ip = eth.data
                l4 = None
                if isinstance(ip, dpkt.ip.IP):
                    row["ip_version"] = 4
                    row["src_ip_lo"] = 0xFFFF_0000_0000 | int.from_bytes(ip.src, "big")
                    row["dst_ip_lo"] = 0xFFFF_0000_0000 | int.from_bytes(ip.dst, "big")
                    row["proto"] = ip.p
                    row["frag"] = (1 if ip.mf else 0) | (2 if ip.offset else 0)
                    l4_start, l4_len = ip_start + ip.hl * 4, ip.len - ip.hl * 4
                    l4 = ip.data if not ip.offset else None
                elif isinstance(ip, dpkt.ip6.IP6):
                    row["ip_version"] = 6
                    for side, a in (("src", ip.src), ("dst", ip.dst)):
                        v = int.from_bytes(a, "big")
                        row[f"{side}_ip_hi"], row[f"{side}_ip_lo"] = v >> 64, v & (2**64 - 1)
                    row["proto"] = ip.p
                    l4 = ip.data
                    if isinstance(l4, dpkt.udp.UDP | dpkt.tcp.TCP):
                        ext = ip.plen - len(bytes(l4))
                        l4_start, l4_len = ip_start + 40 + ext, ip.plen - ext
                if isinstance(l4, dpkt.udp.UDP):
                    row["src_port"], row["dst_port"] = l4.sport, l4.dport
                    row["payload_off"], row["payload_len"] = l4_start + 8, l4_len - 8
                elif isinstance(l4, dpkt.tcp.TCP):
                    row["src_port"], row["dst_port"] = l4.sport, l4.dport
                    row["payload_off"], row["payload_len"] = l4_start + l4.off * 4, l4_len - l4.off * 4
                if row["payload_len"] <= 0 or row["payload_off"] >= len(buf):
                    row["payload_off"] = row["payload_len"] = 0
            for k in cols:
                cols[k].append(row[k])
            frames.append(buf)
    raw_off = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in frames], out=raw_off[1:])
    raw = np.frombuffer(b"".join(frames), dtype=np.uint8)
    columns = {k: np.array(v, dtype=PacketBatch.FIELDS[k]) for k, v in cols.items()}
    return PacketBatch(columns, raw=raw, raw_off=raw_off)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
HUE = ("iot23", "pcap", "CTU-Honeypot-Capture-4-1", "2018-09-14-13-40-25-Philips-Hue-Bridge.pcap")
HUE_MAC = mac_from_str("00:17:88:75:b3:82")
APPLE_MAC = mac_from_str("9c:f4:8e:65:c4:4d")


def _event_dict(e: AppEvent) -> dict[str, Any]:
    return {
        "index": e.index,
        "ts": e.ts,
        "kind": e.kind,
        "src_mac": mac_to_str(e.src_mac),
        "dst_mac": mac_to_str(e.dst_mac),
        "src_ip": e.src_ip,
        "dst_ip": e.dst_ip,
        "fields": e.fields,
    }


def _batches(path: Path) -> list[tuple[str, PacketBatch]]:
    """The capture built by dpkt here, plus iotsentry's own reader when it is available."""
    out = [("dpkt", dpkt_batch(path))]
    try:
        from iotsentry.capture.reader import read_all
    except ImportError:
        return out
    out.append(("reader", read_all(path, with_raw=True)))
    return out


def _dhcp_options_by_hand(frame: bytes) -> dict[int, bytes]:
    """DHCP options of an Ethernet/IPv4/UDP frame, decoded with plain slicing (reference)."""
    ihl = (frame[14] & 0x0F) * 4
    bootp = frame[14 + ihl + 8 :]
    assert bootp[236:240] == b"\x63\x82\x53\x63"
    opts: dict[int, bytes] = {}
    o, j = bootp[240:], 0
    while j < len(o) and o[j] != 255:
        if o[j] == 0:
            j += 1
            continue
        opts.setdefault(o[j], o[j + 2 : j + 2 + o[j + 1]])
        j += 2 + o[j + 1]
    return opts


# ---------------------------------------------------------------------------------------------
# Golden files (content checked by hand: option bytes, strings(1), reverse-name consistency)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "golden",
    ["appfields_zeek_dhcp.json", "appfields_zeek_mdns.json", "appfields_sentinel_wemoswitch_A1.json"],
)
def test_golden(golden: str) -> None:
    expected = json.loads((GOLDEN / golden).read_text())
    path = data_path(*expected["source"].split("/"))
    for source, batch in _batches(path):
        assert len(batch) == expected["packets"], source
        stats = AppFieldStats()
        got = [_event_dict(e) for e in extract_app_events(batch, stats)]
        assert dict(stats.candidates) == expected["candidates"], source
        assert dict(stats.malformed) == expected["malformed"], source
        assert len(got) == len(expected["events"]), source
        for g, x in zip(got, expected["events"], strict=True):
            assert g["ts"] == pytest.approx(x["ts"], abs=1e-6), source
            assert {**g, "ts": 0} == {**x, "ts": 0}, source


# ---------------------------------------------------------------------------------------------
# Properties on real captures
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dhcp_fields_match_option_bytes() -> None:
    for parts in (("zeek-testsuite-iot-ics-traces", "dhcp", "dhcp.pcap"), HUE):
        batch = dpkt_batch(data_path(*parts))
        events = [e for e in extract_app_events(batch) if e.kind == "dhcp"]
        assert events
        for e in events:
            opts = _dhcp_options_by_hand(batch.frame(e.index))
            f = e.fields
            assert f["msg_type"] == opts[53][0]
            assert f["hostname"] == (opts[12].decode() if 12 in opts else None)
            assert f["vendor_class"] == (opts[60].decode() if 60 in opts else None)
            assert f["param_req_list"] == (list(opts[55]) if 55 in opts else None)
            assert f["requested_ip"] == (str(ipaddress.IPv4Address(opts[50])) if 50 in opts else None)
            assert f["server_id"] == (str(ipaddress.IPv4Address(opts[54])) if 54 in opts else None)


@pytest.mark.slow
def test_zeek_dhcp_trace() -> None:
    events = extract_app_events(dpkt_batch(data_path("zeek-testsuite-iot-ics-traces", "dhcp", "dhcp.pcap")))
    # Discover/Offer/Request/NAK/Request/ACK/Decline/Release/Inform (SOURCE.md)
    assert [e.fields["msg_type"] for e in events] == [1, 2, 3, 6, 3, 5, 4, 7, 8]
    assert {e.fields["client_mac"] for e in events} == {"90:b1:1c:99:49:29"}
    assert events[0].fields["hostname"] == "btest.is.cool"
    assert events[5].fields["yiaddr"] == "128.2.6.189" and events[5].fields["vendor_class"] == "ArubaAP"


def _reverse_v6(addr: str) -> str:
    return ".".join(reversed(ipaddress.IPv6Address(addr).exploded.replace(":", ""))) + ".ip6.arpa"


@pytest.mark.slow
def test_mdns_names_are_consistent() -> None:
    """A/AAAA records name the sender's own addresses and the PTR records reverse them."""
    batch = dpkt_batch(data_path("zeek-testsuite-iot-ics-traces", "dns", "mdns.pcap"))
    events = extract_app_events(batch)
    assert {e.kind for e in events} == {"mdns"} and len(events) == 18
    host = "johanna-QEMU-Virtual-Machine.local"
    addrs: set[str] = set()
    ptrs: dict[str, str] = {}
    for e in events:
        for a in e.fields["answers"]:
            if a["type"] in ("A", "AAAA"):
                assert a["name"] == host
                addrs.add(a["value"])
            elif a["type"] == "PTR":
                ptrs[a["name"]] = a["value"]
    assert "10.0.2.7" in addrs and {e.src_ip for e in events} <= addrs
    assert ptrs["7.2.0.10.in-addr.arpa"] == host
    for a in addrs - {"10.0.2.7"}:
        assert ptrs[_reverse_v6(a)] == host
    assert sum(e.fields["is_response"] for e in events) == 6


@pytest.mark.slow
def test_philips_hue_capture() -> None:
    batch = dpkt_batch(data_path(*HUE))
    stats = AppFieldStats()
    events = extract_app_events(batch, stats)
    by_kind: dict[str, list[AppEvent]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    assert set(by_kind) == set(KINDS)
    # candidates counted independently with dpkt over the whole file
    assert stats.candidates["dhcp"] == 125 and stats.candidates["ssdp"] == 227
    assert stats.candidates["mdns"] == 359 and stats.candidates["dns"] == 450
    # DHCP: the bridge's two udhcp generations (firmware update during the capture)
    hue_dhcp = {
        (e.fields["hostname"], e.fields["vendor_class"]) for e in by_kind["dhcp"] if e.src_mac == HUE_MAC
    }
    assert hue_dhcp == {("Philips-hue", "udhcp 1.19.4"), ("Philips-hue", "udhcp 1.23.2")}
    apple = [e for e in by_kind["dhcp"] if e.src_mac == APPLE_MAC]
    assert {e.fields["hostname"] for e in apple} == {"Simis-ufon"}
    # mDNS: the bridge announces its name and address
    hue_a = {
        (a["name"], a["value"])
        for e in by_kind["mdns"]
        if e.src_mac == HUE_MAC and e.fields["is_response"]
        for a in e.fields["answers"]
        if a["type"] == "A"
    }
    assert hue_a == {("Philips-hue.local", "192.168.100.118")}
    # SSDP SERVER, TLS SNI, HTTP
    assert {e.fields["server"] for e in by_kind["ssdp"] if e.src_mac == HUE_MAC} == {
        "Linux/3.14.0 UPnP/1.0 IpBridge/1.14.0",
        "Linux/3.14.0 UPnP/1.0 IpBridge/1.26.0",
    }
    assert {e.fields["sni"] for e in by_kind["tls"] if e.src_mac == HUE_MAC} == {"ws.meethue.com"}
    agents = {e.fields["user_agent"] for e in by_kind["http"] if e.src_mac == APPLE_MAC}
    assert "CaptiveNetworkSupport-355.200.27 wispr" in agents
    hosts = {e.fields["host"] for e in by_kind["http"] if e.src_mac == HUE_MAC}
    assert "dcp.cpp.philips.com:80" in hosts
    # DNS answers: bridge.meethue.com resolved for the bridge
    resolved = {a["name"] for e in by_kind["dns"] if e.fields["is_response"] for a in e.fields["answers"]}
    assert "bridge.meethue.com" in resolved
    # 14 "POST " segments sent apart from their headers cannot be parsed alone
    assert stats.malformed == {"http": 14}


@pytest.mark.slow
def test_dlink_camera_setup() -> None:
    events = extract_app_events(dpkt_batch(data_path("iot-sentinel", "D-LinkCam", "Setup-A-1-STA.pcap")))
    cam = mac_from_str("b0:c5:54:25:5b:0e")
    dhcp = [e.fields for e in events if e.kind == "dhcp" and e.src_mac == cam]
    assert {(f["hostname"], f["vendor_class"]) for f in dhcp} == {("DCS-935L", "udhcp 1.22.1")}
    servers = {e.fields["server"] for e in events if e.kind == "ssdp" and e.src_mac == cam}
    assert "Linux,    UPnP/1.0 DCS-935L/1.0" in servers
    http = [e.fields for e in events if e.kind == "http"]
    assert {(f["method"], f["uri"], f["user_agent"]) for f in http} == {
        ("POST", "/HNAP1/", "ksoap2-android/2.6.0+")
    }
    mdns_q = {q for e in events if e.kind == "mdns" for q in e.fields["queries"]}
    assert "DCS-935L-B0C554255B0E.local" in mdns_q


@pytest.mark.slow
def test_same_events_through_iotsentry_reader() -> None:
    reader = pytest.importorskip("iotsentry.capture.reader")
    path = data_path(*HUE)
    ours = [_event_dict(e) for e in extract_app_events(reader.read_all(path, with_raw=True))]
    ref = [_event_dict(e) for e in extract_app_events(dpkt_batch(path))]
    assert len(ours) == len(ref) == 1261
    for a, b in zip(ours, ref, strict=True):
        assert {**a, "ts": 0} == {**b, "ts": 0}


# ---------------------------------------------------------------------------------------------
# Damage and misuse
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_garbage_payloads_never_crash() -> None:
    batch = dpkt_batch(data_path(*HUE))
    kinds = classify(batch)
    assert batch.raw is not None and batch.raw_off is not None
    rng = np.random.default_rng(3)
    damaged = batch.raw.copy()
    for i in np.nonzero(kinds >= 0)[0]:
        start = int(batch.raw_off[i]) + int(batch.payload_off[i])
        end = int(batch.raw_off[i + 1])
        keep = 6 if KINDS[kinds[i]] in ("http", "tls") else 0  # keep the classifying prefix
        n = max(0, end - start - keep)
        damaged[start + keep : end] = rng.integers(0, 256, n, dtype=np.uint8)
    bad = PacketBatch(dict(batch.columns), raw=damaged, raw_off=batch.raw_off)
    stats = AppFieldStats()
    events = extract_app_events(bad, stats)
    assert sum(stats.malformed.values()) > 1000
    assert (
        sum(stats.events.values())
        == len(events)
        <= sum(stats.candidates.values()) - sum(stats.malformed.values())
    )
    # truncated frames: keep only the first 20 payload bytes of every candidate
    short = batch.take(np.nonzero(kinds >= 0)[0])
    cut = PacketBatch(
        dict(short.columns),
        raw=short.raw,
        raw_off=short.raw_off,
    )
    cut.columns["payload_len"] = np.minimum(cut.payload_len, 20).astype(np.uint32)
    stats = AppFieldStats()
    extract_app_events(cut, stats)
    assert stats.malformed["dhcp"] == stats.candidates["dhcp"] == 125


def test_classify_uses_ports_and_prefix() -> None:
    def frame(payload: bytes) -> bytes:
        return bytes(14 + 20 + 20) + payload

    payloads = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", b"HELLO"]
    frames = [frame(p) for p in payloads] + [bytes(14 + 20 + 8) + b"x" * 40]
    n = len(frames)
    cols = {
        "index": np.arange(n),
        "proto": np.array([6, 6, 6, 17]),
        "src_port": np.array([40000, 40001, 40002, 123]),
        "dst_port": np.array([8080, 443, 80, 123]),
        "payload_off": np.array([54, 54, 54, 42]),
        "payload_len": np.array([len(p) for p in payloads] + [40]),
    }
    raw_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(f) for f in frames], out=raw_off[1:])
    batch = PacketBatch(cols, raw=np.frombuffer(b"".join(frames), dtype=np.uint8), raw_off=raw_off)
    assert [KINDS[k] if k >= 0 else None for k in classify(batch)] == ["http", "tls", None, None]
    events = extract_app_events(batch)
    assert [(e.kind, e.fields) for e in events] == [
        ("http", {"method": "GET", "uri": "/", "host": "a", "user_agent": None})
    ]


def test_needs_raw_bytes() -> None:
    with pytest.raises(ValueError, match="raw"):
        extract_app_events(PacketBatch({"proto": np.array([17])}))
    empty = PacketBatch.empty()
    assert (
        extract_app_events(
            PacketBatch(empty.columns, raw=np.zeros(0, np.uint8), raw_off=np.zeros(1, np.int64))
        )
        == []
    )
