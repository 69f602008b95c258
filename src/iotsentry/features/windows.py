"""Per-device time-window features, computed for a whole batch at once with numpy grouping.

Each row describes one device during one window (``WINDOW_S`` seconds): volumes, distinct
peers and services, how many of them the device's baseline has never seen, connection
initiations and the fan-out shapes that scanning produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import PacketContext, mix_keys
from iotsentry.schema import PacketBatch

WINDOW_FEATURES: tuple[str, ...] = (
    "packets",
    "bytes",
    "peers",
    "new_peers",
    "new_unnamed_peers",
    "services",
    "new_services",
    "initiations",
    "max_ports_per_peer",
    "max_peers_per_port",
    "syn_only",
    "new_names",
    "max_conns_per_target",
)
"""Column names of :attr:`WindowTable.X`."""


@dataclass
class WindowTable:
    """One row per (device, window) present in a batch."""

    device: npt.NDArray[np.int32]
    window: npt.NDArray[np.int64]
    X: npt.NDArray[np.float64]
    group_of_packet: npt.NDArray[np.int64]
    """Row of this table for every packet of the batch (-1 for unattributed packets)."""
    shape: npt.NDArray[np.float64] | None = None
    """Per packet, its part in a scan or brute-force shape (see :func:`packet_shapes`)."""

    def __len__(self) -> int:
        return len(self.device)

    def col(self, name: str) -> npt.NDArray[np.float64]:
        """One feature column by name."""
        return self.X[:, WINDOW_FEATURES.index(name)]


def _distinct_per_group(
    g: npt.NDArray[np.int64], key: npt.NDArray[np.uint64], ngroups: int
) -> npt.NDArray[np.float64]:
    if len(g) == 0:
        return np.zeros(ngroups)
    order = np.lexsort((key, g))
    gs, ks = g[order], key[order]
    first = np.ones(len(gs), dtype=bool)
    first[1:] = (gs[1:] != gs[:-1]) | (ks[1:] != ks[:-1])
    return np.bincount(gs[first], minlength=ngroups).astype(np.float64)


def _max_distinct(
    g: npt.NDArray[np.int64], a: npt.NDArray[np.uint64], bkey: npt.NDArray[np.uint64], ngroups: int
) -> npt.NDArray[np.float64]:
    """Per group: the largest number of distinct ``bkey`` values sharing one ``a`` value."""
    out = np.zeros(ngroups)
    if len(g) == 0:
        return out
    order = np.lexsort((bkey, a, g))
    gs, as_, bs = g[order], a[order], bkey[order]
    new_b = np.ones(len(gs), dtype=bool)
    new_b[1:] = (gs[1:] != gs[:-1]) | (as_[1:] != as_[:-1]) | (bs[1:] != bs[:-1])
    gs, as_ = gs[new_b], as_[new_b]
    new_a = np.ones(len(gs), dtype=bool)
    new_a[1:] = (gs[1:] != gs[:-1]) | (as_[1:] != as_[:-1])
    run_id = np.cumsum(new_a) - 1
    counts = np.bincount(run_id).astype(np.float64)
    run_g = gs[new_a]
    np.maximum.at(out, run_g, counts)
    return out


LOGIN_PORTS = np.array([21, 22, 23, 2222, 2323, 3389, 5900, 1433, 3306, 8291, 5555, 7547], dtype=np.uint64)
"""Services that password guessing aims at on a LAN (FTP, SSH, Telnet, RDP, VNC, databases,
MikroTik, ADB, TR-069)."""


def _distinct_b_per_a(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """For every row: how many distinct ``b`` values occur among the rows sharing its ``a``."""
    if len(a) == 0:
        return np.zeros(0)
    ua, ia = np.unique(a, return_inverse=True)
    _, first = np.unique(mix_keys(a, b), return_index=True)
    counts = np.bincount(ia[first], minlength=len(ua)).astype(np.float64)
    return counts[ia]


def packet_shapes(
    g: npt.NDArray[np.int64],
    peer: npt.NDArray[np.uint64],
    dport: npt.NDArray[np.uint64],
    svc: npt.NDArray[np.uint64],
    init: npt.NDArray[np.bool_],
    attempts: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """Per packet (rows of one window table): ports probed on its peer, peers probed on its
    port (both over the window's outbound initiations) and TCP connection attempts (SYN
    without ACK) to its (peer, service), as three columns."""
    out = np.zeros((len(g), 3))
    gu = g.astype(np.uint64)
    idx = np.flatnonzero(init)
    if len(idx):
        out[idx, 0] = _distinct_b_per_a(mix_keys(gu[idx], peer[idx]), dport[idx])
        out[idx, 1] = _distinct_b_per_a(mix_keys(gu[idx], dport[idx]), peer[idx])
    target = mix_keys(gu, peer, svc)
    ut, it = np.unique(target, return_inverse=True)
    per_target = np.bincount(it, weights=attempts.astype(np.float64), minlength=len(ut))
    out[:, 2] = per_target[it]
    return out


def window_table(
    batch: PacketBatch,
    ctx: PacketContext,
    known_peer: npt.NDArray[np.bool_],
    named_peer: npt.NDArray[np.bool_],
    known_service: npt.NDArray[np.bool_],
    new_token: npt.NDArray[np.uint64] | None = None,
) -> WindowTable:
    """Aggregate a batch into per-(device, window) feature rows.

    ``known_peer``/``known_service`` say per packet whether the device's baseline already holds
    the peer / service; ``named_peer`` whether the peer IP was reached through a DNS name;
    ``new_token`` the hash of an application token (DNS name, User-Agent, SNI) the device's
    baseline has never seen, 0 where the packet carries none.
    """
    n = len(ctx)
    valid = ctx.device >= 0
    gkey = ctx.device.astype(np.int64) * (1 << 40) + ctx.window
    uk, ginv = np.unique(gkey[valid], return_inverse=True)
    ng = len(uk)
    group = np.full(n, -1, dtype=np.int64)
    group[valid] = ginv
    g = ginv.astype(np.int64)
    X = np.zeros((ng, len(WINDOW_FEATURES)))
    if ng == 0:
        return WindowTable(np.zeros(0, np.int32), np.zeros(0, np.int64), X, group)
    ip = batch.ip_version[valid] > 0
    peer = mix_keys(ctx.peer_hi[valid], ctx.peer_lo[valid])
    svc = (ctx.proto[valid].astype(np.uint64) << np.uint64(16)) | ctx.service[valid].astype(np.uint64)
    kp, npd, ks = known_peer[valid], named_peer[valid], known_service[valid]
    out = ctx.outbound[valid]
    init = ctx.initiation[valid]
    col = WINDOW_FEATURES.index
    X[:, col("packets")] = np.bincount(g, minlength=ng)
    X[:, col("bytes")] = np.bincount(g, weights=batch.wire_len[valid].astype(np.float64), minlength=ng)
    X[:, col("peers")] = _distinct_per_group(g[ip], peer[ip], ng)
    m = ip & ~kp
    X[:, col("new_peers")] = _distinct_per_group(g[m], peer[m], ng)
    m2 = m & ~npd
    X[:, col("new_unnamed_peers")] = _distinct_per_group(g[m2], peer[m2], ng)
    X[:, col("services")] = _distinct_per_group(g[ip], svc[ip], ng)
    m3 = ip & ~ks
    X[:, col("new_services")] = _distinct_per_group(g[m3], svc[m3], ng)
    X[:, col("initiations")] = np.bincount(g, weights=init.astype(np.float64), minlength=ng)
    oi = ip & out & init
    dport = np.where(ctx.outbound, batch.dst_port, batch.src_port)[valid].astype(np.uint64)
    X[:, col("max_ports_per_peer")] = _max_distinct(g[oi], peer[oi], dport[oi], ng)
    X[:, col("max_peers_per_port")] = _max_distinct(g[oi], dport[oi], peer[oi], ng)
    X[:, col("syn_only")] = np.bincount(g, weights=ctx.syn_only[valid].astype(np.float64), minlength=ng)
    if new_token is not None:
        nt = new_token[valid]
        m4 = nt != 0
        X[:, col("new_names")] = _distinct_per_group(g[m4], nt[m4], ng)
    # brute force: repeated TCP attempts to a remote service, or to a login service on the LAN
    # (apps that poll a hub's local HTTP API open many short connections too)
    hi, lo = ctx.peer_hi[valid], ctx.peer_lo[valid]
    remote = ~is_local(hi, lo) & ~is_multicast(hi, lo)
    login = np.isin(dport, LOGIN_PORTS)
    shapes = packet_shapes(g, peer, dport, svc, oi, ctx.syn_only[valid] & (remote | login))
    X[:, col("max_conns_per_target")] = 0.0
    np.maximum.at(X[:, col("max_conns_per_target")], g, shapes[:, 2])
    shape_all = np.zeros((n, 3))
    shape_all[valid] = shapes
    device = (uk >> 40).astype(np.int32)
    window = (uk & ((1 << 40) - 1)).astype(np.int64)
    return WindowTable(device, window, X, group, shape_all)
