"""Bidirectional flow meter: packets (:class:`PacketBatch`) in, ended flows (:class:`FlowBatch`) out.

All per-packet work runs in one numba call per batch (:mod:`._flow_kernels`); Python only
prepares columns, grows the state when it is full and gathers the ended flows.

Flow definition
---------------
* **Key**: bidirectional 5-tuple (both IP addresses, both ports, IP protocol). Non-IP frames
  (``ip_version == 0``, e.g. ARP) belong to no flow: their packet flow id is ``-1``.
* **Originator** (``src``): the sender of the first packet seen, except for a TCP flow whose
  first packet is a SYN-ACK, where the receiver is the originator.
* **ICMP / ICMPv6**: the "ports" are type and code of the first packet (as Zeek reports them).
  For keying, echo reply is mapped onto echo request (ICMP 0 -> 8, ICMPv6 129 -> 128), and
  type/code are not tied to an endpoint, so a ping and its reply form one flow. ICMP is
  keyed on (addresses, type, code) only: all pings between two hosts share a flow until
  it times out.
* **Non-first IP fragments** (``frag`` bit 1) carry no ports: they are accounted to the flow
  of the most recent first fragment (``frag`` bit 0) between the same two addresses and
  protocol (a 4096-entry direct-mapped cache, no IP id check); when none is known they form
  their own flow with ports 0/0.
* **End of a flow**: idle longer than ``idle_timeout`` (TCP) or ``udp_idle_timeout`` (every
  other protocol); older than ``active_timeout`` (the next packet starts a new flow); a TCP RST
  (the flow ends after it); TCP FIN from both sides: the flow ends after the next ACK from the
  peer of the second FIN sender (the last ACK of the close handshake), or ``tcp_close_delay``
  seconds after the last packet when that ACK never comes; a SYN arriving on a closed flow
  starts a new flow; an unanswered attempt (only SYNs, nothing back) ends
  ``tcp_attempt_timeout`` seconds after its first packet (Zeek's ``tcp_SYN_timeout``), so a
  client retrying the same 5-tuple makes one flow per attempt, as in Zeek. Expiry is checked
  when a packet of the flow arrives and by a periodic scan over the active flows (when the
  packet clock has advanced ``scan_interval`` seconds and at least 1/8 of the active flow count
  of packets has been seen since the last scan), so memory is bounded by the active flows, not
  by the capture length. Which batch reports a flow depends on the scan timing; the flows
  themselves (ids, fields, packet assignment) do not depend on how packets are batched.
* **Capacity**: the state grows by doubling when the slots are full and most of them hold
  active flows (when most hold flows that already ended in this batch, those are gathered and
  their slots reused instead), so it stays within about twice the peak of active flows; at
  ``max_flows`` active flows the 1/16 least recently seen flows are evicted (ended and
  reported) and a ``RuntimeWarning`` is issued.

Flow fields (see :class:`~iotsentry.schema.FlowBatch`)
------------------------------------------------------
``flow_id`` increases by one per new flow over the meter's lifetime (from ``first_flow_id``);
``ts`` first packet time; ``duration`` last minus first packet time; ``src_bytes``/``dst_bytes``
IP-level bytes per packet (see :func:`ip_bytes`); ``src_payload``/``dst_payload`` sum of
``payload_len``; ``src_mac`` source MAC of the first originator packet and ``dst_mac`` source
MAC of the first responder packet (for an unanswered flow: the destination MAC of the first
packet); ``src_flags``/``dst_flags`` OR of the TCP flags per direction; ``iat_*`` statistics of
the gaps between consecutive packets of the flow in both directions (0 for a one-packet flow);
``size_*`` statistics of ``wire_len`` (frame bytes); standard deviations are population
(``ddof=0``) values from float64 sums and sums of squares. Timestamps are expected in order;
a packet older than the flow's last packet counts with a gap of 0.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from iotsentry.features import _flow_kernels as K
from iotsentry.schema import FlowBatch, PacketBatch

__all__ = ["FlowMeter", "ip_bytes"]

_ETH_HEADER = 14
_VLAN_TAG = 4


def ip_bytes(batch: PacketBatch) -> npt.NDArray[np.uint32]:
    """IP-level bytes of each packet (Zeek's ``*_ip_bytes`` per packet), estimated from the frame.

    When the L4 payload offset is known (``payload_off > 0``) this is exact:
    ``payload_off + payload_len - link header`` (the IP total length, also for truncated
    frames). Otherwise it is ``wire_len - link header``, which includes Ethernet padding of
    frames below 60 bytes. The link header is 14 bytes (+4 with a VLAN tag) for frames with a MAC
    address and 0 for raw-IP frames (both MACs 0). Not meaningful for non-IP frames.
    """
    eth = (batch.src_mac != 0) | (batch.dst_mac != 0)
    l2 = np.where(eth, _ETH_HEADER + _VLAN_TAG * (batch.vlan != 0), 0).astype(np.int64)
    wire = batch.wire_len.astype(np.int64)
    exact = batch.payload_off.astype(np.int64) + batch.payload_len.astype(np.int64) - l2
    est = np.where(batch.payload_off > 0, exact, wire - l2)
    return np.clip(est, 0, None).astype(np.uint32)


def _c(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(a)


class FlowMeter:
    """Streaming bidirectional flow meter (see the module docstring for the flow definition).

    Parameters
    ----------
    idle_timeout
        Seconds without a packet after which a TCP flow ends.
    active_timeout
        Maximum flow duration in seconds; a longer flow is split.
    udp_idle_timeout
        Idle timeout of every non-TCP flow (UDP, ICMP, others).
    max_flows
        Maximum number of simultaneously active flows; beyond it the least recently seen
        flows are evicted (reported as ended) with a ``RuntimeWarning``.
    tcp_close_delay
        Seconds a TCP flow with FIN seen both ways waits for the final ACK.
    tcp_attempt_timeout
        Seconds after its first packet at which an unanswered TCP connection attempt (only
        SYNs from the originator, nothing from the responder) ends, as Zeek's
        ``tcp_SYN_timeout``: later SYN retransmissions start a new flow.
    scan_interval
        Packet-clock seconds between expiry scans.
    initial_capacity
        Initial number of flow slots (the state doubles when full).
    first_flow_id
        Flow id of the first flow.

    Attributes
    ----------
    packet_flow_ids : numpy.ndarray
        int64, one per packet of the last batch given to :meth:`update`: the ``flow_id`` the
        packet was accounted to, ``-1`` for non-IP frames.
    flows_evicted : int
        Flows ended early because ``max_flows`` was reached.
    """

    def __init__(
        self,
        idle_timeout: float = 120.0,
        active_timeout: float = 1800.0,
        udp_idle_timeout: float = 60.0,
        max_flows: int = 1_000_000,
        *,
        tcp_close_delay: float = 5.0,
        tcp_attempt_timeout: float = 5.0,
        scan_interval: float = 1.0,
        initial_capacity: int = 1024,
        first_flow_id: int = 0,
    ) -> None:
        if min(idle_timeout, active_timeout, udp_idle_timeout, tcp_close_delay, tcp_attempt_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.idle_timeout = float(idle_timeout)
        self.active_timeout = float(active_timeout)
        self.udp_idle_timeout = float(udp_idle_timeout)
        self.max_flows = int(max_flows)
        self.tcp_close_delay = float(tcp_close_delay)
        self.tcp_attempt_timeout = float(tcp_attempt_timeout)
        self.scan_interval = float(scan_interval)
        cap = max(16, int(initial_capacity))
        self._U = np.zeros((K.N_U, cap), dtype=np.uint64)
        self._F = np.zeros((K.N_F, cap), dtype=np.float64)
        self._I = np.zeros((K.N_I, cap), dtype=np.int64)
        self._tbl = np.full(self._table_size(cap), -1, dtype=np.int64)
        self._active = np.zeros(cap, dtype=np.int64)
        self._free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        self._ended = np.zeros(cap, dtype=np.int64)
        self._fcu = np.zeros((4, K.FRAG_CACHE), dtype=np.uint64)
        self._fci = np.full((3, K.FRAG_CACHE), -1, dtype=np.int64)
        self._ctr = np.zeros(K.N_C, dtype=np.int64)
        self._ctr[K.C_NFREE] = cap
        self._ctr[K.C_NEXTFID] = int(first_flow_id)
        self._ctr[K.C_MAXFLOWS] = self.max_flows
        self._fp = np.zeros(K.N_P, dtype=np.float64)
        self._fp[K.P_CLOCK] = -np.inf
        self._fp[K.P_NEXTCHECK] = -np.inf
        self._fp[K.P_IDLE_TCP] = self.idle_timeout
        self._fp[K.P_IDLE_OTHER] = self.udp_idle_timeout
        self._fp[K.P_ACTIVE] = self.active_timeout
        self._fp[K.P_CLOSE] = self.tcp_close_delay
        self._fp[K.P_SCAN] = self.scan_interval
        self._fp[K.P_ATTEMPT] = self.tcp_attempt_timeout
        self.packet_flow_ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.flows_evicted = 0

    # ------------------------------------------------------------------------------------------
    @property
    def n_active(self) -> int:
        """Number of flows currently open."""
        return int(self._ctr[K.C_NACTIVE])

    @property
    def capacity(self) -> int:
        """Number of flow slots currently allocated."""
        return int(self._U.shape[1])

    @property
    def next_flow_id(self) -> int:
        """The flow id the next new flow will get."""
        return int(self._ctr[K.C_NEXTFID])

    @staticmethod
    def _table_size(cap: int) -> int:
        return 1 << int(2 * cap - 1).bit_length()

    def _grow(self) -> None:
        old = self.capacity
        cap = 2 * old
        for name in ("_U", "_F", "_I"):
            arr = getattr(self, name)
            new = np.zeros((arr.shape[0], cap), dtype=arr.dtype)
            new[:, :old] = arr
            setattr(self, name, new)
        active = np.zeros(cap, dtype=np.int64)
        active[:old] = self._active
        self._active = active
        ended = np.zeros(cap, dtype=np.int64)
        ended[:old] = self._ended
        self._ended = ended
        nfree = int(self._ctr[K.C_NFREE])
        free = np.zeros(cap, dtype=np.int64)
        free[:nfree] = self._free[:nfree]
        free[nfree : nfree + old] = np.arange(cap - 1, old - 1, -1)
        self._free = free
        self._ctr[K.C_NFREE] = nfree + old
        self._tbl = np.full(self._table_size(cap), -1, dtype=np.int64)
        K.rebuild_table(self._tbl, self._U, self._active, int(self._ctr[K.C_NACTIVE]))

    def _collect(self) -> FlowBatch:
        """Gather the ended flows as a FlowBatch and return their slots to the free stack."""
        k = int(self._ctr[K.C_NENDED])
        if k == 0:
            return FlowBatch.empty()
        s = self._ended[:k].copy()
        U, F, I = self._U[:, s], self._F[:, s], self._I[:, s]  # noqa: E741
        spk, dpk = U[K.SPK], U[K.DPK]
        npk = (spk + dpk).astype(np.float64)
        niat = np.maximum(npk - 1.0, 0.0)
        many = niat > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            iat_mean = np.where(many, F[K.ISUM] / niat, 0.0)
            iat_var = np.where(many, F[K.ISQ] / niat - iat_mean * iat_mean, 0.0)
            size_mean = F[K.ZSUM] / npk
            size_var = F[K.ZSQ] / npk - size_mean * size_mean
        cols: dict[str, np.ndarray[Any, Any]] = {
            "flow_id": I[K.FID],
            "ts": F[K.TS0],
            "duration": F[K.TSL] - F[K.TS0],
            "src_ip_hi": U[K.SRC_HI],
            "src_ip_lo": U[K.SRC_LO],
            "dst_ip_hi": U[K.DST_HI],
            "dst_ip_lo": U[K.DST_LO],
            "src_port": I[K.SPORT],
            "dst_port": I[K.DPORT],
            "proto": I[K.PROTO],
            "src_pkts": spk,
            "dst_pkts": dpk,
            "src_bytes": U[K.SBY],
            "dst_bytes": U[K.DBY],
            "src_payload": U[K.SPL],
            "dst_payload": U[K.DPL],
            "src_mac": U[K.SMAC],
            "dst_mac": U[K.DMAC],
            "src_flags": I[K.SFLAGS],
            "dst_flags": I[K.DFLAGS],
            "iat_mean": iat_mean,
            "iat_std": np.sqrt(np.maximum(iat_var, 0.0)),
            "iat_min": np.where(many, F[K.IMIN], 0.0),
            "iat_max": np.where(many, F[K.IMAX], 0.0),
            "size_mean": size_mean,
            "size_std": np.sqrt(np.maximum(size_var, 0.0)),
            "size_min": F[K.ZMIN],
            "size_max": F[K.ZMAX],
            "first_index": I[K.FIRST_IDX],
        }
        nfree = int(self._ctr[K.C_NFREE])
        self._free[nfree : nfree + k] = s
        self._ctr[K.C_NFREE] = nfree + k
        self._ctr[K.C_NENDED] = 0
        evicted = int(self._ctr[K.C_EVICTED])
        if evicted:
            self._ctr[K.C_EVICTED] = 0
            self.flows_evicted += evicted
            warnings.warn(
                f"FlowMeter: {evicted} flows evicted early because max_flows={self.max_flows} "
                "flows were active",
                RuntimeWarning,
                stacklevel=3,
            )
        return FlowBatch(cols)

    # ------------------------------------------------------------------------------------------
    @overload
    def update(self, batch: PacketBatch, return_packet_flow_ids: Literal[False] = ...) -> FlowBatch: ...

    @overload
    def update(
        self, batch: PacketBatch, return_packet_flow_ids: Literal[True]
    ) -> tuple[FlowBatch, npt.NDArray[np.int64]]: ...

    def update(
        self, batch: PacketBatch, return_packet_flow_ids: bool = False
    ) -> FlowBatch | tuple[FlowBatch, npt.NDArray[np.int64]]:
        """Meter one batch of packets (in time order, following the previous batch).

        Parameters
        ----------
        batch
            The next packets of the stream.
        return_packet_flow_ids
            Also return the per-packet flow ids (always available afterwards as
            :attr:`packet_flow_ids`).

        Returns
        -------
        FlowBatch or tuple of (FlowBatch, numpy.ndarray)
            The flows that ended while this batch was metered, ordered by when the meter
            found them ended (not by flow id); with ``return_packet_flow_ids`` also the int64
            flow id of every packet of the batch (-1 for non-IP frames).
        """
        n = len(batch)
        pfid = np.empty(n, dtype=np.int64)
        parts: list[FlowBatch] = []
        if n:
            args = (
                _c(batch.ts),
                _c(batch.wire_len),
                ip_bytes(batch),
                _c(batch.src_mac),
                _c(batch.dst_mac),
                _c(batch.ip_version),
                _c(batch.src_ip_hi),
                _c(batch.src_ip_lo),
                _c(batch.dst_ip_hi),
                _c(batch.dst_ip_lo),
                _c(batch.proto),
                _c(batch.src_port),
                _c(batch.dst_port),
                _c(batch.tcp_flags),
                _c(batch.payload_len),
                _c(batch.frag),
                _c(batch.index),
            )
            pos = 0
            while True:
                pos = K.meter(
                    pos,
                    *args,
                    self._U,
                    self._F,
                    self._I,
                    self._tbl,
                    self._active,
                    self._free,
                    self._ended,
                    self._fcu,
                    self._fci,
                    self._ctr,
                    self._fp,
                    pfid,
                )
                if pos >= n:
                    break
                # out of slots: recycle the flows ended so far when they hold most of them
                if self._ctr[K.C_NENDED] >= self._ctr[K.C_NACTIVE]:
                    parts.append(self._collect())
                else:
                    self._grow()
        self.packet_flow_ids = pfid
        parts.append(self._collect())
        flows = FlowBatch.concat(parts)
        if return_packet_flow_ids:
            return flows, pfid
        return flows

    def flush(self) -> FlowBatch:
        """End every open flow and return them (the meter stays usable afterwards)."""
        K.end_all(self._U, self._I, self._tbl, self._active, self._ended, self._ctr)
        return self._collect()
