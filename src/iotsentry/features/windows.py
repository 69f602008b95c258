"""Per-device time-window features, computed for a whole batch at once (numba hash kernels).

Each row describes one device during one window (``WINDOW_S`` seconds): volumes, distinct
peers and services, how many of them the device's baseline has never seen, connection
initiations and the fan-out shapes that scanning produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotsentry.features import _profile_kernels as PK
from iotsentry.features import _window_kernels as K
from iotsentry.features.device_context import PacketContext
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


LOGIN_PORTS = np.array([21, 22, 23, 2222, 2323, 3389, 5900, 1433, 3306, 8291, 5555, 7547], dtype=np.uint64)
"""Services that password guessing aims at on a LAN (FTP, SSH, Telnet, RDP, VNC, databases,
MikroTik, ADB, TR-069)."""


def _u64(x: npt.NDArray[np.generic]) -> npt.NDArray[np.uint64]:
    """A contiguous ``uint64`` copy or view (bit pattern kept for 64-bit integers)."""
    if x.dtype.itemsize == 8 and x.dtype.kind in "iu":
        return np.ascontiguousarray(x).view(np.uint64)
    return np.ascontiguousarray(x, dtype=np.uint64)


def _distinct_per_group(
    g: npt.NDArray[np.int64], key: npt.NDArray[np.uint64], flags: npt.NDArray[np.bool_], ngroups: int
) -> npt.NDArray[np.float64]:
    """Per group (rows) and flag column: how many distinct ``key`` values the flagged rows hold."""
    if len(g) == 0:
        return np.zeros((ngroups, flags.shape[1]))
    inv, kg, _, _ = K.intern(_u64(g), _u64(key), True)
    return K.flagged_distinct(inv, kg.view(np.int64), np.ascontiguousarray(flags), ngroups)


def _max_distinct(
    g: npt.NDArray[np.int64], a: npt.NDArray[np.uint64], bkey: npt.NDArray[np.uint64], ngroups: int
) -> npt.NDArray[np.float64]:
    """Per group: the largest number of distinct ``bkey`` values sharing one ``a`` value."""
    out: npt.NDArray[np.float64] = K.max_distinct(_u64(g), _u64(a), _u64(bkey), ngroups)
    return out


def _mix(*cols: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``mix_keys`` of the columns (same values, one pass)."""
    out: npt.NDArray[np.uint64] = K.mix(np.stack([_u64(c) for c in cols]))
    return out


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
    if len(g) == 0:
        return out
    gu = _u64(g)
    idx = np.flatnonzero(init)
    if len(idx):
        gi, pi, di = gu[idx], _u64(peer)[idx], _u64(dport)[idx]
        out[idx, 0] = K.distinct_b_per_a(_mix(gi, pi), di)
        out[idx, 1] = K.distinct_b_per_a(_mix(gi, di), pi)
    out[:, 2] = K.sum_per_key(_mix(gu, peer, svc), np.ascontiguousarray(attempts, dtype=np.float64))
    return out


def window_table(
    batch: PacketBatch,
    ctx: PacketContext,
    known_peer: npt.NDArray[np.bool_],
    named_peer: npt.NDArray[np.bool_],
    known_service: npt.NDArray[np.bool_],
    new_token: npt.NDArray[np.uint64] | None = None,
    known_target: npt.NDArray[np.bool_] | None = None,
) -> WindowTable:
    """Aggregate a batch into per-(device, window) feature rows.

    ``known_peer``/``known_service`` say per packet whether the device's baseline already holds
    the peer / service; ``named_peer`` whether the peer IP was reached through a DNS name;
    ``new_token`` the hash of an application token (DNS name, User-Agent, SNI) the device's
    baseline has never seen, 0 where the packet carries none; ``known_target`` whether the
    packet's (peer, service) is one the device's baseline already uses: reconnect bursts to
    such a target are not counted as brute-force attempts, except on login services.
    """
    n = len(ctx)
    # brute force: repeated TCP attempts to a remote service, or to a login service on the LAN
    # (apps that poll a hub's local HTTP API open many short connections too)
    attempt = PK.attempts(
        ctx.device,
        ctx.syn_only,
        ctx.outbound,
        ctx.peer_hi,
        ctx.peer_lo,
        batch.src_port,
        batch.dst_port,
        known_target if known_target is not None else np.zeros(0, dtype=bool),
        known_target is not None,
        LOGIN_PORTS,
    )
    tokens = np.zeros(n, dtype=np.uint64) if new_token is None else new_token
    uk, X, group, shape = K.window_features(
        *(
            np.ascontiguousarray(a)
            for a in (
                ctx.device,
                ctx.window,
                batch.ip_version,
                batch.wire_len,
                ctx.peer_hi,
                ctx.peer_lo,
                ctx.proto,
                ctx.service,
                batch.src_port,
                batch.dst_port,
                ctx.outbound,
                ctx.initiation,
                ctx.syn_only,
                known_peer,
                named_peer,
                known_service,
                tokens,
                attempt,
            )
        )
    )
    if len(uk) == 0:
        return WindowTable(np.zeros(0, np.int32), np.zeros(0, np.int64), X, group)
    device = (uk >> 40).astype(np.int32)
    window = (uk & ((1 << 40) - 1)).astype(np.int64)
    return WindowTable(device, window, X, group, shape)
