"""Tests of live AF_PACKET capture, on a veth pair whose far end sits in a network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

from iotsentry.capture.live import LiveCapture
from iotsentry.errors import InputError
from iotsentry.schema import PacketBatch, ip_from_str
from netns import subnet, veth_pair

HOST_IP, NS_IP = subnet(231)


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """(host-side interface, namespace name); everything is removed afterwards."""
    with veth_pair("iots", HOST_IP, NS_IP) as pair:
        yield pair


SENDER = textwrap.dedent(
    """
    import socket, sys, time
    dst, n = sys.argv[1], int(sys.argv[2])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 40123))
    for k in range(n):
        u.sendto(b"x" * (10 + k), (dst, 5353 + 0 * k))
        time.sleep(0.002)
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("0.0.0.0", 40124))
    t.settimeout(2)
    try:
        t.connect((dst, 8080))
        t.sendall(b"hello over tcp")
        time.sleep(0.2)
    except OSError as e:
        print("tcp:", e, file=sys.stderr)
    t.close()
    """
)


def test_live_capture_on_veth_decodes_udp_and_tcp(veth: tuple[str, str]) -> None:
    import socket

    host_if, ns = veth
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST_IP, 8080))
    listener.listen(1)
    n_udp = 20
    got: list[PacketBatch] = []
    before = time.time()
    with LiveCapture(host_if, promisc=True) as cap:
        # the new link may carry its own set-up frames (IPv6 ND / MLD); keep them in the stream
        got.append(cap.poll())
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, HOST_IP, str(n_udp)],
            stderr=subprocess.PIPE,
        )
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.settimeout(5)
        assert conn.recv(100).startswith(b"hello")
        assert proc.wait(timeout=20) == 0
        conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            b = cap.poll(timeout=0.2, max_packets=7)  # small polls: batches split mid-stream
            got.append(b)
            if not len(b) and sum(map(len, got)) > n_udp:
                break
        after = time.time()
    listener.close()
    batch = PacketBatch.concat(got)
    assert list(batch.index) == list(range(len(batch)))
    assert ((batch.ts >= before - 1) & (batch.ts <= after + 1)).all()
    assert (np.diff(batch.ts) >= 0).all()
    ns_hi, ns_lo = ip_from_str(NS_IP)
    host_hi, host_lo = ip_from_str(HOST_IP)
    udp = batch.take((batch.proto == 17) & (batch.src_ip_lo == ns_lo) & (batch.dst_port == 5353))
    assert len(udp) == n_udp
    assert (
        (udp.src_ip_hi == ns_hi).all()
        and (udp.dst_ip_lo == host_lo).all()
        and (udp.dst_ip_hi == host_hi).all()
    )
    assert (udp.src_port == 40123).all() and (udp.ip_version == 4).all() and (udp.ethertype == 0x0800).all()
    assert list(udp.payload_len) == [10 + k for k in range(n_udp)]
    assert list(udp.wire_len) == [14 + 20 + 8 + 10 + k for k in range(n_udp)]
    assert (udp.cap_len == udp.wire_len).all()
    tcp = batch.take((batch.proto == 6) & (batch.src_ip_lo == ns_lo))
    assert (tcp.src_port == 40124).all() and (tcp.dst_port == 8080).all()
    assert int(tcp.tcp_flags[0]) & 0x02  # the SYN comes first
    assert int(tcp.payload_len.sum()) == len(b"hello over tcp")
    back = batch.take((batch.proto == 6) & (batch.src_ip_lo == host_lo))  # outgoing frames too
    assert len(back) and (back.dst_port == 40124).all()


def test_live_snaplen_keeps_wire_length(veth: tuple[str, str]) -> None:
    host_if, ns = veth
    with LiveCapture(host_if, snaplen=46) as cap:
        subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, HOST_IP, "3"],
            timeout=20,
            capture_output=True,
        )
        time.sleep(0.2)
        b = cap.poll(timeout=0.5)
    udp = b.take((b.proto == 17) & (b.dst_port == 5353))
    assert len(udp) == 3
    assert (udp.cap_len == 46).all()  # cut by the snap length, headers still decoded
    assert list(udp.wire_len) == [52 + k for k in range(3)]


def test_unknown_interface_is_one_clear_line() -> None:
    with pytest.raises(InputError, match=r"interface nosuchif0: no such network interface"):
        LiveCapture("nosuchif0")


def test_not_permitted_is_one_clear_line() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a child without CAP_NET_RAW")
    code = textwrap.dedent(
        """
        from iotsentry.capture.live import LiveCapture
        from iotsentry.errors import InputError
        try:
            LiveCapture("lo")
        except InputError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NUMBA_CACHE_DIR": "/tmp"},
    )  # fmt: skip
    assert (
        out.stdout.strip() == "interface lo: capturing needs root or CAP_NET_RAW (operation not permitted)"
    ), out.stderr[-500:]
