"""Remote identity: a remote is known by its name's domain, its network, its service and its group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iotsentry.baseline.identity import device_groups, network_of, registered_domain
from iotsentry.baseline.profile import Baseline
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.features.device_context import DeviceIndex, packet_context
from iotsentry.inventory.devices import DeviceTracker
from iotsentry.schema import PacketBatch, ip_from_str, ip_to_str
from lanhome import T0, Lan, write

CAM, CAM2 = "192.168.7.40", "192.168.7.41"
CAM_MAC, CAM2_MAC = "02:00:00:00:00:40", "02:00:00:00:00:41"


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("n-tss.tplinkcloud.com.cn", "tplinkcloud.com.cn"),
        ("alimac.fogcloud.io", "fogcloud.io"),
        ("a.b.c.amazonaws.com", "amazonaws.com"),
        ("Pool.NTP.org.", "ntp.org"),
        ("localhost", "localhost"),
        ("com", "com"),
    ],
)
def test_registered_domain(name: str, domain: str) -> None:
    assert registered_domain(name) == domain


def test_networks_are_slash_24_and_slash_48() -> None:
    hi, lo = (np.array([x], np.uint64) for x in ip_from_str("203.0.113.77"))
    nh, nl = network_of(hi, lo)
    assert ip_to_str(int(nh[0]), int(nl[0])) == "203.0.113.0"
    hi, lo = (np.array([x], np.uint64) for x in ip_from_str("2001:db8:1:2::5"))
    nh, nl = network_of(hi, lo)
    assert ip_to_str(int(nh[0]), int(nl[0])) == "2001:db8:1::"


def test_groups_come_from_a_meaningful_type_and_a_known_vendor() -> None:
    assert device_groups("camera", "Hikvision", False) == ["type:camera", "vendor:hikvision"]
    assert device_groups("?", "(locally administered)", False) == []
    assert device_groups("gateway", "TP-LINK", True) == []


def _read(path: Path) -> tuple[PacketBatch, DeviceTracker]:
    b = PacketBatch.concat(list(read_packets(path, with_raw=keep_raw_for_app_fields)))
    tr = DeviceTracker()
    tr.update(b, extract_app_events(b))
    return b, tr


def test_a_remote_is_known_by_domain_network_bare_service_and_group(tmp_path: Path) -> None:
    lan = Lan()
    lan.device(CAM, CAM_MAC)
    lan.device(CAM2, CAM2_MAC)
    # learning: the camera reaches its cloud by name, and a relay service by bare IP
    lan.dns(T0, CAM, "api.vendorcloud.com", "203.0.113.10")
    lan.session(T0 + 1, CAM, "203.0.113.10", 443, 41000)
    lan.udp(T0 + 2, CAM, "198.51.100.5", 42000, 8053)
    lan.udp(T0 + 2.1, "198.51.100.5", CAM, 8053, 42000)
    # the second camera learns a network the first never used
    lan.session(T0 + 3, CAM2, "192.0.2.200", 443, 43000)
    learn, tracker = _read(write(tmp_path / "learn.pcap", lan.rows))
    ids = [CAM_MAC, CAM2_MAC]
    index = DeviceIndex(ids)
    base = Baseline(ids)
    base.learn(learn, packet_context(learn, index), tracker.ip_names)
    for d in (0, 1):
        base.set_groups(d, ["type:camera"])
    base.finish([0, 1])
    assert "vendorcloud.com" in base.profiles[0].domains
    assert base.profiles[0].networks == {"203.0.113.0/24", "198.51.100.0/24"}
    assert base.profiles[0].bare_services == {"UDP/8053"}

    later = Lan()
    later.device(CAM, CAM_MAC)
    t = T0 + 7200
    later.dns(t, CAM, "eu.vendorcloud.com", "45.20.30.40")  # a new host name of the same cloud
    later.session(t + 1, CAM, "45.20.30.40", 443, 41001)
    later.session(t + 2, CAM, "203.0.113.200", 443, 41002)  # same /24 as the learned cloud, bare
    later.udp(t + 3, CAM, "45.99.1.1", 42001, 8053)  # another relay of the bare-IP service
    later.session(t + 4, CAM, "45.77.1.1", 6667, 41003)  # new network, new service: new
    later.dns(t + 5, CAM, "totally-new.example", "45.55.1.1")
    later.udp(t + 6, CAM, "45.55.1.1", 42002, 8053)  # same port, but a name says who it is
    later.session(t + 7, CAM, "192.0.2.201", 443, 41004)  # the other camera's network: its group
    b, tr = _read(write(tmp_path / "later.pcap", later.rows))
    ctx = packet_context(b, index)
    idn = base.identity(b, ctx, tracker.ip_names | tr.ip_names, tr.ip_name_ts)

    def first(peer: str) -> int:
        hi, lo = ip_from_str(peer)
        return int(np.flatnonzero((ctx.peer_hi == hi) & (ctx.peer_lo == lo) & ctx.outbound)[0])

    assert idn.name_known[first("45.20.30.40")] and idn.known_peer[first("45.20.30.40")]
    assert idn.net_known[first("203.0.113.200")] and idn.known_peer[first("203.0.113.200")]
    r = first("45.99.1.1")
    assert not idn.known_peer[r] and idn.churn[r]
    r = first("45.77.1.1")
    assert not idn.known_peer[r] and not idn.churn[r] and not idn.known_service[r]
    r = first("45.55.1.1")
    assert idn.has_name[r] and not idn.known_peer[r] and not idn.churn[r]
    r = first("192.0.2.201")
    assert idn.group_known[r] and idn.known_peer[r]


def test_a_name_counts_only_from_the_time_it_was_seen(tmp_path: Path) -> None:
    lan = Lan()
    lan.device(CAM, CAM_MAC)
    lan.session(T0, CAM, "203.0.113.10", 443, 41000)  # reached first from a cached address
    lan.dns(T0 + 5, CAM, "api.vendorcloud.com", "203.0.113.10")
    lan.session(T0 + 6, CAM, "203.0.113.10", 443, 41001)
    b, tr = _read(write(tmp_path / "x.pcap", lan.rows))
    base = Baseline([CAM_MAC])
    ctx = packet_context(b, DeviceIndex([CAM_MAC]))
    has_name, _known, local = base.named(b, ctx, tr.ip_names, tr.ip_name_ts)
    to_cloud = ~local & ctx.outbound & (b.proto == 6)
    assert not has_name[to_cloud & (b.ts < T0 + 5)].any()
    assert has_name[to_cloud & (b.ts > T0 + 5)].all()
    # without times (a batch run that knows every name): named throughout
    assert base.named(b, ctx, tr.ip_names)[0][to_cloud].all()
