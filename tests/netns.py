"""A veth pair with one end in a network namespace, for the live-capture tests (root only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def subnet(second_octet: int) -> tuple[str, str]:
    """(host address, namespace address) in a /24 of its own per test process (concurrent test
    runs must not share addresses)."""
    net = f"10.{second_octet}.{os.getpid() % 250 + 1}"
    return f"{net}.1", f"{net}.2"


@contextlib.contextmanager
def veth_pair(
    prefix: str, host_ip: str, ns_ip: str, *, quiet_ipv6: bool = False
) -> Iterator[tuple[str, str]]:
    """Yield (host-side interface, namespace name); skip the test with the reason when this
    machine cannot build them; everything is removed afterwards. ``quiet_ipv6`` turns IPv6 off
    on both ends (no neighbour discovery / MLD frames on the new link)."""
    if os.geteuid() != 0:
        pytest.skip("live capture test needs root (network namespace + AF_PACKET)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' command not available")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"{prefix}{tag}", f"{prefix}h{tag}", f"{prefix}n{tag}"
    try:
        _run("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"'ip netns' unavailable here: {getattr(err, 'stderr', b'')!r}")
    try:
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        if quiet_ipv6:
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6").write_text("1")
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "exec", ns, "sysctl", "-w", f"net.ipv6.conf.{ns_if}.disable_ipv6=1")
        _run("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield host_if, ns
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot build the veth pair: {err.stderr!r}")
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
