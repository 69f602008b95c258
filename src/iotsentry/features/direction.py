"""Which side opened a conversation: per packet, whether its sender is the originator.

A device's *service* is the port of the side that answers, and only the side that opens a
conversation *initiates* it. Both are ambiguous packet by packet: a camera answering a phone's
UDP request from port 80 sends datagrams to a fresh phone port every few seconds, which looks
like probing many ports unless one remembers who spoke first.

:class:`FlowDirection` remembers, for the recent conversations of a stream, which endpoint sent
the first packet (as the flow meter defines the originator): a direct-mapped table of
``2**bits`` slots keyed by the bidirectional 5-tuple (bounded memory; a collision or an idle
gap longer than ``idle_s`` starts the conversation afresh). A TCP SYN without ACK always makes
its sender the originator, a SYN-ACK its receiver. ICMP echo requests and replies are folded
(the requester is the originator); other ICMP types have no direction (their sender counts as
originator). Non-IP frames are marked as originator packets.

The per-packet work is one numba pass per batch; packets must come in stream order, each once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from iotsentry.schema import PacketBatch

__all__ = ["DEFAULT_BITS", "IDLE_S", "TCP_IDLE_S", "FlowDirection", "originator_of_batch"]

DEFAULT_BITS = 20
"""Slots of the table: 2**20 (24 MiB), far more than the conversations of a minute."""
IDLE_S = 180.0
"""A UDP (or other) conversation idle this long is forgotten: the next packet opens it again."""
TCP_IDLE_S = 7440.0
"""The same for TCP: connections stay open for hours between keep-alives (2 h by default)."""


@njit(cache=True)
def _endpoint(hi: np.uint64, lo: np.uint64, port: np.uint64) -> np.uint64:
    h = hi * np.uint64(0x9E3779B97F4A7C15) ^ lo
    h ^= h >> np.uint64(29)
    h = h * np.uint64(0xBF58476D1CE4E5B9) ^ port
    h ^= h >> np.uint64(32)
    return h * np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def _originator(
    ts: np.ndarray,
    ipv: np.ndarray,
    shi: np.ndarray,
    slo: np.ndarray,
    dhi: np.ndarray,
    dlo: np.ndarray,
    proto: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    flags: np.ndarray,
    key_tab: np.ndarray,
    orig_tab: np.ndarray,
    ts_tab: np.ndarray,
    cert_tab: np.ndarray,
    idle_s: float,
    tcp_idle_s: float,
    out: np.ndarray,
    cert: np.ndarray,
) -> None:
    mask = np.uint64(len(key_tab) - 1)
    for i in range(len(ts)):
        if ipv[i] == 0:
            out[i] = True
            cert[i] = False
            continue
        p = proto[i]
        sp = np.uint64(sport[i])
        dp = np.uint64(dport[i])
        forced = 0  # 1: sender is the originator, -1: receiver is, 0: ask the table
        if p == 1 or p == 58:
            # ICMP "ports" are type/code: echo requests and replies form one conversation
            t = sport[i]
            if (p == 1 and t == 8) or (p == 58 and t == 128):
                forced = 1
            elif (p == 1 and t == 0) or (p == 58 and t == 129):
                forced = -1
            else:
                out[i] = True
                cert[i] = False
                continue
            sp = np.uint64(0)
            dp = np.uint64(0)
        elif p == 6:
            f = flags[i]
            if (f & 0x12) == 0x02:
                forced = 1
            elif (f & 0x12) == 0x12:
                forced = -1
        a = _endpoint(shi[i], slo[i], sp)
        b = _endpoint(dhi[i], dlo[i], dp)
        key = (a ^ b) * np.uint64(0xD6E8FEB86659FD93) + np.uint64(p) + np.uint64(1)
        slot = (key ^ (key >> np.uint64(31))) & mask
        if forced != 0:
            key_tab[slot] = key
            orig_tab[slot] = a if forced == 1 else b
            ts_tab[slot] = ts[i]
            cert_tab[slot] = True
            out[i] = forced == 1
            cert[i] = True
            continue
        if key_tab[slot] != key or ts[i] - ts_tab[slot] > (tcp_idle_s if p == 6 else idle_s):
            key_tab[slot] = key
            orig_tab[slot] = a
            cert_tab[slot] = False
        ts_tab[slot] = ts[i]
        out[i] = orig_tab[slot] == a
        cert[i] = cert_tab[slot]


class FlowDirection:
    """Per packet of a stream: whether its sender opened the conversation (see module docstring).

    Parameters
    ----------
    bits
        The table holds ``2**bits`` conversations.
    idle_s, tcp_idle_s
        Seconds of silence after which a UDP / TCP conversation is forgotten.
    """

    def __init__(
        self, bits: int = DEFAULT_BITS, idle_s: float = IDLE_S, tcp_idle_s: float = TCP_IDLE_S
    ) -> None:
        if not 4 <= bits <= 28:
            raise ValueError("bits must be between 4 and 28")
        n = 1 << bits
        self.idle_s = float(idle_s)
        self.tcp_idle_s = float(tcp_idle_s)
        self._key = np.zeros(n, np.uint64)
        self._orig = np.zeros(n, np.uint64)
        self._ts = np.full(n, -np.inf)
        self._cert = np.zeros(n, np.bool_)

    def update(self, batch: PacketBatch) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Per packet of the batch (the next of the stream): whether its sender is the originator,
        and whether that is certain (a TCP SYN / SYN-ACK or an ICMP echo decided it) rather than
        "it spoke first"."""
        out = np.ones(len(batch), dtype=np.bool_)
        cert = np.zeros(len(batch), dtype=np.bool_)
        if len(batch):
            _originator(
                np.ascontiguousarray(batch.ts, dtype=np.float64),
                np.ascontiguousarray(batch.ip_version),
                np.ascontiguousarray(batch.src_ip_hi),
                np.ascontiguousarray(batch.src_ip_lo),
                np.ascontiguousarray(batch.dst_ip_hi),
                np.ascontiguousarray(batch.dst_ip_lo),
                np.ascontiguousarray(batch.proto),
                np.ascontiguousarray(batch.src_port),
                np.ascontiguousarray(batch.dst_port),
                np.ascontiguousarray(batch.tcp_flags),
                self._key,
                self._orig,
                self._ts,
                self._cert,
                self.idle_s,
                self.tcp_idle_s,
                out,
                cert,
            )
        return out, cert


def originator_of_batch(batch: PacketBatch) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """:meth:`FlowDirection.update` of a stream made of this batch alone (a small table)."""
    bits = max(8, min(DEFAULT_BITS, int(2 * len(batch)).bit_length()))
    return FlowDirection(bits=bits).update(batch)
