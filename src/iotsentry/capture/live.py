"""Live capture from a network interface with a Linux ``AF_PACKET`` socket.

>>> with LiveCapture("eth0", promisc=True) as cap:          # doctest: +SKIP
...     for batch in cap.batches(max_packets=10_000, max_seconds=1.0):
...         print(len(batch), batch.ts[-1])

Frames are received with ``recvmsg_into`` straight into a numpy buffer (``MSG_TRUNC`` gives
the wire length of frames cut by the snap length) and decoded by the same
:class:`~iotsentry.capture.decode.BatchBuilder` as the capture-file readers. Timestamps
come from the kernel (``SO_TIMESTAMPNS``); ``time.time()`` is used when the kernel gives
none. The kernel stamps sent and received frames at different points, so a frame can come
stamped slightly before one already read: such a stamp is raised to its predecessor's, so the
stream stays in time order (the per-device windows downstream expect it). The link type of
each frame follows the interface's hardware type (Ethernet and loopback: Ethernet framing;
``ARPHRD_NONE`` tunnels: raw IP). Both directions are seen
(outgoing frames too). ``index`` counts frames since the capture was opened.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from collections.abc import Iterator
from types import TracebackType

import numpy as np

from iotsentry.capture.decode import LINK_ETHERNET, LINK_RAW, BatchBuilder, FrameBlock, RawSpec
from iotsentry.errors import InputError
from iotsentry.schema import PacketBatch

__all__ = ["LiveCapture"]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_TIMESTAMPNS = 35
"""``SO_TIMESTAMPNS`` (== ``SCM_TIMESTAMPNS``) on Linux (all common architectures)."""
_TIMESPEC = struct.Struct("@qq")

_LINK_BY_HATYPE = {1: LINK_ETHERNET, 772: LINK_ETHERNET, 65534: LINK_RAW, 776: LINK_RAW}
"""ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE (tun), ARPHRD_SIT -> pcap link type."""


class LiveCapture:
    """Packets of one interface, as :class:`PacketBatch` es.

    Parameters
    ----------
    interface
        Interface name (``eth0``, ``veth1``, ``lo``).
    promisc
        Put the interface in promiscuous mode while the capture is open.
    snaplen
        Bytes kept per frame (``wire_len`` still gives the full length).
    buffer_bytes
        Size of the receive buffer; frames are decoded from it when it fills up or a
        batch is returned.
    with_raw
        Keep the captured frame bytes in the batches (see :func:`~iotsentry.capture.reader.read_packets`).

    Raises
    ------
    InputError
        ``interface X: no such network interface`` or ``capturing needs root or CAP_NET_RAW``.
    """

    def __init__(
        self,
        interface: str,
        *,
        promisc: bool = False,
        snaplen: int = 65535,
        buffer_bytes: int = 8 << 20,
        with_raw: RawSpec = False,
    ) -> None:
        where = f"interface {interface}"
        try:
            ifindex = socket.if_nametoindex(interface)
        except OSError:
            raise InputError(where, "no such network interface") from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise InputError(where, "capturing needs root or CAP_NET_RAW (operation not permitted)") from None
        except OSError as err:
            raise InputError(where, f"cannot open a packet socket: {err.strerror or err}") from None
        try:
            sock.bind((interface, ETH_P_ALL))
            if promisc:
                mreq = struct.pack("@iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            with contextlib.suppress(OSError):  # without it: time.time()
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        except OSError as err:
            sock.close()
            if err.errno == errno.ENODEV:
                raise InputError(where, "no such network interface") from None
            raise InputError(where, f"cannot capture: {err.strerror or err}") from None
        sock.setblocking(False)
        self.interface = interface
        self.snaplen = snaplen
        self.with_raw = with_raw
        self._sock = sock
        self._buf = np.empty(max(buffer_bytes, 2 * snaplen), dtype=np.uint8)
        self._view = memoryview(self._buf)  # type: ignore[arg-type]
        cap = len(self._buf) // 64 + 1
        self._blk = FrameBlock(cap)
        self._used = 0
        self._k = 0
        self._next_index = 0
        self._last_ts = 0.0
        self._builder: BatchBuilder | None = None
        self._parts: list[PacketBatch] = []
        self._anc = socket.CMSG_SPACE(_TIMESPEC.size)
        self.dropped_unsupported = 0
        """Frames skipped because their link type cannot be decoded."""

    # ------------------------------------------------------------------------- receive

    def _recv_available(self, limit: int) -> int:
        """Receive queued frames without blocking (at most ``limit``); returns how many."""
        got = 0
        blk = self._blk
        while got < limit:
            if self._used + self.snaplen > len(self._buf) or self._k == len(blk.ts):
                self._decode_block()
            try:
                nbytes, anc, _flags, addr = self._sock.recvmsg_into(
                    [self._view[self._used : self._used + self.snaplen]], self._anc, socket.MSG_TRUNC
                )
            except (BlockingIOError, InterruptedError):
                break
            link = _LINK_BY_HATYPE.get(int(addr[3]))
            if link is None:
                self.dropped_unsupported += 1
                continue
            ts = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    ts = sec + nsec / 1e9
            k = self._k
            blk.data_off[k] = self._used
            blk.cap_len[k] = min(nbytes, self.snaplen)
            blk.wire_len[k] = nbytes
            # the kernel stamps sent and received frames at different points, so a frame can
            # arrive stamped a little before the one already read: keep the stream in time order
            t = time.time() if ts is None else ts
            self._last_ts = t = max(t, self._last_ts)
            blk.ts[k] = t
            blk.link[k] = link
            self._used += int(blk.cap_len[k])
            self._k += 1
            got += 1
        return got

    def _decode_block(self) -> None:
        """Decode the frames held in the receive buffer and empty it."""
        if self._k:
            if self._builder is None or self._builder.room < self._k:
                self._grow_builder(self._k)
            assert self._builder is not None
            self._builder.add(self._buf, self._blk, self._k)
        self._used = 0
        self._k = 0

    def _grow_builder(self, need: int) -> None:
        old = self._builder
        if old is not None and old.n:
            self._parts.append(old.finish())
        size = max(4096, 2 * need, 2 * (old.capacity if old is not None else 0))
        self._builder = BatchBuilder(size, 0, self.with_raw)

    def _take(self) -> PacketBatch:
        """Everything received so far as one batch, numbered on from the previous one."""
        self._decode_block()
        parts, self._parts = self._parts, []
        if self._builder is not None and self._builder.n:
            parts.append(self._builder.finish())
            self._builder = BatchBuilder(self._builder.capacity, 0, self.with_raw)
        batch = PacketBatch.concat(parts)
        if len(batch):
            batch.columns["index"] = np.arange(
                self._next_index, self._next_index + len(batch), dtype=np.int64
            )
        self._next_index += len(batch)
        return batch

    # ---------------------------------------------------------------------------- API

    def poll(self, timeout: float = 0.0, max_packets: int = 100_000) -> PacketBatch:
        """Frames received so far (at most ``max_packets``), waiting up to ``timeout`` s for one."""
        got = self._recv_available(max_packets)
        if not got and timeout > 0:
            select.select([self._sock], [], [], timeout)
            self._recv_available(max_packets)
        return self._take()

    def batches(
        self, max_packets: int = 10_000, max_seconds: float = 1.0, *, timeout: float | None = None
    ) -> Iterator[PacketBatch]:
        """Yield a batch every ``max_packets`` frames or ``max_seconds`` seconds (non-empty only).

        Parameters
        ----------
        max_packets
            Batch size limit.
        max_seconds
            Longest time a frame waits before its batch is yielded.
        timeout
            Stop after this many seconds without any frame (``None``: run until closed).
        """
        last = time.monotonic()
        while True:
            start = time.monotonic()
            count = 0
            while count < max_packets:
                left = start + max_seconds - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([self._sock], [], [], min(left, 0.2))
                if ready:
                    count += self._recv_available(max_packets - count)
            if count:
                last = time.monotonic()
                yield self._take()
            elif timeout is not None and time.monotonic() - last > timeout:
                return

    def __iter__(self) -> Iterator[PacketBatch]:
        return self.batches()

    def close(self) -> None:
        """Close the socket (leaves promiscuous mode)."""
        self._sock.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
