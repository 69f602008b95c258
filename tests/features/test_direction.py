"""Who opened each conversation: services are the responder's port, replies are no initiations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iotsentry.capture.reader import read_packets
from iotsentry.features.device_context import DeviceIndex, packet_context
from iotsentry.features.direction import FlowDirection
from iotsentry.schema import PacketBatch
from lanhome import ACK, PSH, SYN, T0, Lan, write

PLUG, PHONE, CLOUD = "192.168.7.20", "192.168.7.30", "203.0.113.9"


def _batch(tmp_path: Path, lan: Lan) -> PacketBatch:
    return PacketBatch.concat(list(read_packets(write(tmp_path / "x.pcap", lan.rows))))


def _lan() -> Lan:
    lan = Lan()
    lan.device(PLUG, "02:00:00:00:00:20")
    lan.device(PHONE, "02:00:00:00:00:30")
    return lan


def test_replies_to_a_phone_are_not_the_devices_initiations(tmp_path: Path) -> None:
    """A phone asks the plug's UDP port 80 from a fresh port each time; the plug answers. The
    plug's answers go to many ports but it opened none of those conversations."""
    lan = _lan()
    for i in range(40):
        lan.udp(T0 + i, PHONE, PLUG, 50000 + i, 80)
        lan.udp(T0 + i + 0.01, PLUG, PHONE, 80, 50000 + i)
    lan.udp(T0 + 50, PLUG, PHONE, 80, 41000)  # the plug's own announcement to the phone
    b = _batch(tmp_path, lan)
    from_orig, certain = FlowDirection().update(b)
    assert not certain.any()  # UDP: who spoke first, not a handshake
    index = DeviceIndex(["02:00:00:00:00:20", "02:00:00:00:00:30"])
    ctx = packet_context(b, index, direction=(from_orig, certain))
    plug_out = (b.src_port == 80) & (b.proto == 17)
    assert not ctx.initiation[plug_out][:-1].any()
    assert ctx.initiation[plug_out][-1]
    assert (ctx.service[b.dst_port == 80] == 80).all() and (ctx.service[plug_out] == 80).all()


def test_tcp_handshake_decides_the_service_whatever_the_port_numbers(tmp_path: Path) -> None:
    lan = _lan()
    # the server listens on a high port above the client's: the lower port is not the service
    lan.tcp(T0, PLUG, CLOUD, 40000, 50443, SYN)
    lan.tcp(T0 + 0.01, CLOUD, PLUG, 50443, 40000, SYN | ACK)
    lan.tcp(T0 + 0.02, PLUG, CLOUD, 40000, 50443, PSH, b"x" * 10)
    lan.tcp(T0 + 0.03, CLOUD, PLUG, 50443, 40000, PSH, b"y" * 10)
    b = _batch(tmp_path, lan)
    from_orig, certain = FlowDirection().update(b)
    assert certain.all() and list(from_orig) == [True, False, True, False]
    ctx = packet_context(b, DeviceIndex(["02:00:00:00:00:20"]), direction=(from_orig, certain))
    assert (ctx.service == 50443).all()
    assert list(ctx.initiation) == [True, False, False, False]


def test_a_connection_seen_in_its_middle_takes_the_remote_port_for_the_service(tmp_path: Path) -> None:
    lan = _lan()
    lan.tcp(T0, CLOUD, PLUG, 50443, 40000, PSH, b"y" * 10)  # the server speaks first in the capture
    lan.tcp(T0 + 0.01, PLUG, CLOUD, 40000, 50443, ACK)
    b = _batch(tmp_path, lan)
    ctx = packet_context(b, DeviceIndex(["02:00:00:00:00:20"]))
    assert ctx.certain is not None and not ctx.certain.any()
    assert (ctx.service == 50443).all() and not ctx.initiation.any()


def test_state_carries_across_batches_and_forgets_idle_conversations(tmp_path: Path) -> None:
    lan = _lan()
    lan.udp(T0, PLUG, CLOUD, 40000, 8053)
    lan.udp(T0 + 1, CLOUD, PLUG, 8053, 40000)
    lan.udp(T0 + 1000, CLOUD, PLUG, 8053, 40000)  # idle for longer than a UDP conversation lives
    b = _batch(tmp_path, lan)
    fd = FlowDirection()
    first = [fd.update(b.take(np.array([i])))[0][0] for i in range(len(b))]
    assert first == [True, False, True]
    # one batch or one packet at a time: the same answers
    assert list(FlowDirection().update(b)[0]) == first


def test_bits_are_bounded() -> None:
    with pytest.raises(ValueError, match="bits"):
        FlowDirection(bits=40)
