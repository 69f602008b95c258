"""Vectorised address classes: local (private / link-local), multicast, broadcast."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotsentry.schema import ipv4_of, is_ipv4

U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]


def is_local(hi: U64, lo: U64) -> Mask:
    """Private, link-local and unique-local addresses (the home / plant LAN side)."""
    v4 = is_ipv4(hi, lo)
    a = ipv4_of(lo)
    local4 = ((a >> 24) == 10) | ((a >> 20) == 0xAC1) | ((a >> 16) == 0xC0A8) | ((a >> 16) == 0xA9FE)
    top10 = hi >> np.uint64(54)
    top7 = hi >> np.uint64(57)
    local6 = (top10 == np.uint64(0x3FA)) | (top7 == np.uint64(0x7E))
    return np.where(v4, local4, local6 & (hi != 0))


def is_multicast(hi: U64, lo: U64) -> Mask:
    """IPv4 multicast and limited broadcast, IPv6 multicast."""
    v4 = is_ipv4(hi, lo)
    a = ipv4_of(lo)
    m4 = ((a >> 28) == 0xE) | (a == 0xFFFFFFFF) | ((a & 0xFF) == 0xFF)
    m6 = (hi >> np.uint64(56)) == np.uint64(0xFF)
    return np.where(v4, m4, m6)


def is_unicast_mac(mac: U64) -> Mask:
    """Non-zero MACs with the group bit clear."""
    return (mac != 0) & (((mac >> np.uint64(40)) & np.uint64(1)) == 0)


def is_unspecified(hi: U64, lo: U64) -> Mask:
    """0.0.0.0 and ::."""
    v4 = is_ipv4(hi, lo)
    return np.where(v4, ipv4_of(lo) == 0, (hi == 0) & (lo == 0))
