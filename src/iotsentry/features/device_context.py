"""Per-packet device context: which inventory device a packet belongs to and who its peer is.

A packet is attributed to its sender when the sender is a (non-gateway) device, else to its
receiver; traffic the gateway relays for the internet is thereby seen from the device's side.
The peer is the other IP address; the service port is the port of the side that answers (the
responder of the conversation, see :mod:`~iotsentry.features.direction`), and only the packets
a device sends in conversations it opened are its *initiations*. ICMP echo replies are folded
onto requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotsentry.features import _context_kernels as CK
from iotsentry.features.direction import originator_of_batch
from iotsentry.schema import PacketBatch, ip_from_str

WINDOW_S = 60.0
"""Length of the per-device time windows in seconds."""

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)


def mix_keys(*cols: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of several uint64 columns (vectorised; collisions are negligible here)."""
    with np.errstate(over="ignore"):
        h = np.full(len(cols[0]), np.uint64(0x84222325CBF29CE4), dtype=np.uint64)
        for c in cols:
            x = c.astype(np.uint64) * _M1
            x ^= x >> np.uint64(31)
            h = (h ^ x) * _M2
            h ^= h >> np.uint64(29)
        h *= _M3
        h ^= h >> np.uint64(32)
    return h


class DeviceIndex:
    """Maps MACs (or, without link layer, local IPs) to dense device numbers."""

    def __init__(self, device_ids: list[str], gateway_id: str | None = None) -> None:
        self.ids = list(device_ids)
        macs: list[tuple[int, int]] = []
        ips: list[tuple[int, int, int]] = []
        for i, d in enumerate(self.ids):
            if d.startswith("ip:"):
                hi, lo = ip_from_str(d[3:])
                ips.append((hi, lo, i))
            else:
                macs.append((int(d.replace(":", ""), 16), i))
        macs.sort()
        self._macs = np.array([m for m, _ in macs], dtype=np.uint64)
        self._mac_idx = np.array([i for _, i in macs], dtype=np.int32)
        ipk = [
            (int(mix_keys(np.array([hi], np.uint64), np.array([lo], np.uint64))[0]), i) for hi, lo, i in ips
        ]
        ipk.sort()
        self._ips = np.array([k for k, _ in ipk], dtype=np.uint64)
        self._ip_idx = np.array([i for _, i in ipk], dtype=np.int32)
        self.gateway = self.ids.index(gateway_id) if gateway_id in self.ids else -1

    def __len__(self) -> int:
        return len(self.ids)

    def of_macs(self, macs: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """Device number of each MAC, -1 when it is not a device."""
        return _lookup(self._macs, self._mac_idx, macs)

    def of_ips(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """Device number of each IP (only for link-layer-less devices), -1 otherwise."""
        return _lookup(self._ips, self._ip_idx, mix_keys(hi, lo))


def _lookup(
    keys: npt.NDArray[np.uint64], idx: npt.NDArray[np.int32], q: npt.NDArray[np.uint64]
) -> npt.NDArray[np.int32]:
    out = np.full(len(q), -1, dtype=np.int32)
    if len(keys) == 0 or len(q) == 0:
        return out
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, len(keys) - 1)
    hit = keys[pos] == q
    out[hit] = idx[pos[hit]]
    return out


@dataclass
class PacketContext:
    """Columns aligned with a PacketBatch (see module docstring)."""

    device: npt.NDArray[np.int32]
    outbound: npt.NDArray[np.bool_]
    peer_hi: npt.NDArray[np.uint64]
    peer_lo: npt.NDArray[np.uint64]
    service: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]
    initiation: npt.NDArray[np.bool_]
    syn_only: npt.NDArray[np.bool_]
    window: npt.NDArray[np.int64]
    certain: npt.NDArray[np.bool_] | None = None
    """Whether the packet's direction (who opened the conversation) is known from a handshake
    rather than guessed from who spoke first (``None``: not tracked)."""

    def __len__(self) -> int:
        return len(self.device)


def packet_context(
    batch: PacketBatch,
    index: DeviceIndex,
    window_s: float = WINDOW_S,
    direction: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None,
) -> PacketContext:
    """Attribute every packet of ``batch`` to a device (or -1) and describe its peer.

    ``direction`` says per packet whether its sender opened the conversation and whether that
    is certain (:meth:`~iotsentry.features.direction.FlowDirection.update` of the stream);
    without it the batch is taken as a stream of its own. The service is the responder's port
    where a TCP handshake told who responded, else the remote peer's port (devices are the
    clients of their clouds, also for connections that began before the capture), else the
    lower of the two ports.
    """
    b = batch
    from_orig, certain = originator_of_batch(b) if direction is None else direction
    device, outbound, peer_hi, peer_lo, service, proto, initiation, syn_only, window = CK.context(
        b.ts,
        b.ip_version,
        b.src_mac,
        b.dst_mac,
        b.src_ip_hi,
        b.src_ip_lo,
        b.dst_ip_hi,
        b.dst_ip_lo,
        b.proto,
        b.src_port,
        b.dst_port,
        b.tcp_flags,
        from_orig,
        certain,
        index._macs,
        index._mac_idx,
        index._ips,
        index._ip_idx,
        index.gateway,
        float(window_s),
    )
    return PacketContext(
        device=device,
        outbound=outbound,
        peer_hi=peer_hi,
        peer_lo=peer_lo,
        service=service,
        proto=proto,
        initiation=initiation,
        syn_only=syn_only,
        window=window,
        certain=certain,
    )
