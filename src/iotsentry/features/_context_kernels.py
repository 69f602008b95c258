"""Numba kernel of the per-packet device context (:func:`iotsentry.features.device_context.packet_context`).

One pass over a batch: the device of each packet (MAC lookup in the sorted MAC table, the IP
table for devices without a link layer), its direction, peer, service, initiation and window.
Every value is the one of the numpy expressions it replaced (same lookups, same rounding of the
window number).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from iotsentry.features._identity_kernels import is_local_one, is_multicast_one
from iotsentry.features._window_kernels import _mix2


@njit(cache=True)
def _find(keys: np.ndarray, idx: np.ndarray, q: np.uint64) -> np.int32:
    """``DeviceIndex`` lookup: the number at the first position of ``q`` in the sorted ``keys``."""
    n = keys.shape[0]
    if n == 0:
        return np.int32(-1)
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < q:
            lo = mid + 1
        else:
            hi = mid
    if lo > n - 1:
        lo = n - 1
    return idx[lo] if keys[lo] == q else np.int32(-1)


@njit(cache=True)
def context(
    ts: np.ndarray,
    ip_version: np.ndarray,
    src_mac: np.ndarray,
    dst_mac: np.ndarray,
    src_hi: np.ndarray,
    src_lo: np.ndarray,
    dst_hi: np.ndarray,
    dst_lo: np.ndarray,
    proto: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    tcp_flags: np.ndarray,
    from_orig: np.ndarray,
    certain: np.ndarray,
    macs: np.ndarray,
    mac_idx: np.ndarray,
    ips: np.ndarray,
    ip_idx: np.ndarray,
    gateway: int,
    window_s: float,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """Returns (device, outbound, peer hi, peer lo, service, proto, initiation, outbound SYN
    without ACK, window) per packet."""
    n = ts.shape[0]
    device = np.empty(n, np.int32)
    outbound = np.empty(n, np.bool_)
    peer_hi = np.empty(n, np.uint64)
    peer_lo = np.empty(n, np.uint64)
    service = np.empty(n, np.uint16)
    proto_out = np.empty(n, np.uint8)
    initiation = np.empty(n, np.bool_)
    syn_out = np.empty(n, np.bool_)
    window = np.empty(n, np.int64)
    use_ips = ips.shape[0] > 0
    for i in range(n):
        sdev = _find(macs, mac_idx, src_mac[i])
        ddev = _find(macs, mac_idx, dst_mac[i])
        if use_ips:
            if src_mac[i] == 0 and sdev < 0:
                sdev = _find(ips, ip_idx, _mix2(src_hi[i], src_lo[i]))
            if dst_mac[i] == 0 and ddev < 0:
                ddev = _find(ips, ip_idx, _mix2(dst_hi[i], dst_lo[i]))
        src_is_dev = sdev >= 0 and sdev != gateway
        dst_is_dev = ddev >= 0 and ddev != gateway
        out = src_is_dev or (not dst_is_dev and sdev >= 0)
        dev = sdev if src_is_dev else (ddev if dst_is_dev else sdev)
        out = out and dev >= 0
        device[i] = dev
        outbound[i] = out
        ph = dst_hi[i] if out else src_hi[i]
        pl = dst_lo[i] if out else src_lo[i]
        peer_hi[i] = ph
        peer_lo[i] = pl
        p = proto[i]
        proto_out[i] = p
        sport = src_port[i]
        dport = dst_port[i]
        icmp = p == 1 or p == 58
        if icmp:
            t = sport
            if p == 1 and t == 0:
                t = np.uint16(8)
            elif p == 58 and t == 129:
                t = np.uint16(128)
            svc = t
        elif certain[i]:
            svc = dport if from_orig[i] else sport
        else:
            remote = not is_local_one(ph, pl) and not is_multicast_one(ph, pl) and ip_version[i] > 0
            lower = sport if sport < dport else dport
            svc = (dport if out else sport) if remote and dev >= 0 else lower
        service[i] = svc
        syn = p == 6 and (tcp_flags[i] & 0x12) == 0x02
        ini = syn or (p == 17 and from_orig[i])
        if icmp:
            t = sport
            if p == 1 and t == 0:
                t = np.uint16(8)
            elif p == 58 and t == 129:
                t = np.uint16(128)
            ini = ini or t == 8 or t == 128
        initiation[i] = out and ini
        syn_out[i] = syn and out
        window[i] = np.int64(np.floor(ts[i] / window_s))
    return device, outbound, peer_hi, peer_lo, service, proto_out, initiation, syn_out, window
