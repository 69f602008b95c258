"""What the sensor cannot see is no evidence: per-device visibility, and DNS cut by the snap length."""

from __future__ import annotations

from pathlib import Path

import dpkt

from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields, parse_dns_partial
from iotsentry.capture.reader import read_packets
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import PacketBatch
from lanhome import T0, Lan, write

NAMER, BARE = "192.168.7.60", "192.168.7.61"
NAMER_MAC, BARE_MAC = "02:00:00:00:00:60", "02:00:00:00:00:61"


def _week(duration_s: float = 3 * 3600.0) -> Lan:
    """A device that names its peers and one that never uses DNS; after learning, each contacts
    a new bare IP on its cloud port and holds a session."""
    lan = Lan()
    lan.device(NAMER, NAMER_MAC)
    lan.device(BARE, BARE_MAC)
    t, n = 0.0, 0
    while t < duration_s:
        lan.dns(T0 + t, NAMER, "api.vendorcloud.com", "203.0.113.10", sport=40000 + n % 1000)
        lan.session(T0 + t + 0.5, NAMER, "203.0.113.10", 443, 41000 + n % 1000)
        lan.session(T0 + t + 1.0, BARE, "198.51.100.5", 443, 42000 + n % 1000)
        t, n = t + 60.0, n + 1
    for dev, port in ((NAMER, 43000), (BARE, 44000)):
        lan.session(T0 + 2 * 3600.0 + 30.0, dev, "192.0.2.99", 443, port, turns=4, span=20.0)
    return lan


def _analyse(path: Path) -> tuple[dict[str, dict[str, object]], list[str]]:
    res = Analyzer([path], AnalysisConfig(learn_seconds=3600.0)).run()
    vis = {d.device_id: d.visibility for d in res.devices}
    return vis, [f"{a.device_id} {a.category}" for a in res.alerts]


def test_full_payload_bare_ip_is_evidence_only_for_the_device_that_names_its_peers(tmp_path: Path) -> None:
    vis, alerts = _analyse(write(tmp_path / "full.pcap", _week().rows))
    assert vis[NAMER_MAC]["dns_names"] == "observed" and vis[NAMER_MAC]["names_evidence"] is True
    assert vis[BARE_MAC]["dns_names"] == "not seen" and vis[BARE_MAC]["names_evidence"] is False
    assert vis[NAMER_MAC]["payload"] == "full"
    assert f"{NAMER_MAC} c2" in alerts  # a sustained session with a new bare IP
    assert not [a for a in alerts if a.startswith(BARE_MAC)]  # bare IPs are this device's normal


def test_headers_only_capture_makes_no_name_evidence(tmp_path: Path) -> None:
    lan = _week()
    lan.dns(T0 + 5.0, NAMER, "a.io", "203.0.113.77", others=0)  # short enough to fit in 96 bytes
    vis, alerts = _analyse(write(tmp_path / "cut.pcap", lan.rows, snaplen=96))
    assert vis[NAMER_MAC]["dns_names"] == "truncated" and vis[NAMER_MAC]["names_evidence"] is False
    assert vis[NAMER_MAC]["payload"].startswith("cut to 96 bytes")
    assert alerts == []  # every peer looks bare: that is no evidence


def test_dns_records_cut_by_the_snap_length_keep_what_was_captured_whole(tmp_path: Path) -> None:
    q = dpkt.dns.DNS.Q(name="a.example.com", type=dpkt.dns.DNS_A)
    rrs = [
        dpkt.dns.DNS.RR(name="a.example.com", type=dpkt.dns.DNS_A, ttl=60, ip=bytes([192, 0, 2, i]))
        for i in range(6)
    ]
    msg = bytes(dpkt.dns.DNS(id=1, qr=dpkt.dns.DNS_R, qd=[q], an=rrs))
    got = parse_dns_partial(msg[:80])
    assert got is not None and got["truncated"] and got["queries"] == ["a.example.com"]
    assert 1 <= len(got["answers"]) < 6
    assert all(a["value"].startswith("192.0.2.") for a in got["answers"])
    assert parse_dns_partial(msg[:14]) is None  # not even the question
    # through the packet path: only frames actually cut are parsed leniently
    lan = Lan()
    lan.device(NAMER, NAMER_MAC)
    lan.dns(T0, NAMER, "api.vendorcloud.com", "203.0.113.10")
    b = PacketBatch.concat(
        list(read_packets(write(tmp_path / "d.pcap", lan.rows, snaplen=96), with_raw=keep_raw_for_app_fields))
    )
    ev = [e for e in extract_app_events(b) if e.kind == "dns" and e.fields.get("is_response")]
    assert ev and ev[0].fields["answers"][0]["value"] == "203.0.113.10" and ev[0].fields["truncated"]
