"""NetFlow v5 / v9 / IPFIX collector: a UDP socket that turns export datagrams into flows.

>>> with NetFlowCollector("0.0.0.0", 2055) as col:      # doctest: +SKIP
...     for batch in col.batches(interval=1.0):
...         print(len(batch), col.stats.malformed)

The decoding itself lives in :mod:`iotsentry.capture.netflow_decode`
(:class:`NetFlowDecoder`, usable without a socket as the in-memory fake of this source),
template handling in :mod:`iotsentry.capture.netflow_templates` and the mapping to
:class:`~iotsentry.schema.FlowBatch` columns in :mod:`iotsentry.capture.netflow_records`.

Templates are kept per UDP transport session, i.e. the exporter key is its
``(address, port)``, as RFC 7011 section 8.4 prescribes for UDP.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from iotsentry.capture.netflow_decode import NetFlowDecoder, NetFlowStats
from iotsentry.errors import InputError
from iotsentry.schema import FlowBatch

__all__ = ["NetFlowCollector", "NetFlowDecoder", "NetFlowStats"]

MAX_DATAGRAM = 65535


class NetFlowCollector:
    """A bound UDP socket receiving NetFlow v5/v9/IPFIX exports.

    Parameters
    ----------
    host, port
        Address to bind (``port=0`` picks a free port; see :attr:`address`).
    rcvbuf
        Requested kernel receive buffer (bytes); exporters send in bursts.
    decoder
        Decoder to use (a default :class:`NetFlowDecoder` otherwise), e.g. with other
        bounds on buffered data sets.

    Raises
    ------
    InputError
        The address cannot be bound (in use, not permitted, unknown host).
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 2055,
        *,
        rcvbuf: int = 8 << 20,
        decoder: NetFlowDecoder | None = None,
    ) -> None:
        self.decoder = decoder or NetFlowDecoder()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise InputError(
                f"udp://{host}:{port}", f"cannot bind NetFlow collector: {err.strerror or err}"
            ) from None
        self._sock.setblocking(False)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        name = self._sock.getsockname()
        return str(name[0]), int(name[1])

    @property
    def stats(self) -> NetFlowStats:
        """Counters of the decoder (datagrams, flows, malformed, dropped sets, ...)."""
        return self.decoder.stats

    @property
    def errors(self) -> list[str]:
        """Recent one-line reasons for malformed datagrams (oldest first)."""
        return list(self.decoder.errors)

    def _drain(self, max_datagrams: int) -> int:
        got = 0
        while got < max_datagrams:
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:  # e.g. ICMP errors surfacing on the socket
                self.decoder.errors.append(f"socket: {err.strerror or err}")
                break
            self.decoder.feed(data, (addr[0], addr[1]))
            got += 1
        return got

    def poll(self, timeout: float = 0.0, max_datagrams: int = 100_000) -> FlowBatch:
        """Flows of the datagrams received so far.

        Waits at most ``timeout`` seconds for a first datagram (0: do not wait), then reads
        every datagram already queued (at most ``max_datagrams``) without waiting.

        Returns
        -------
        FlowBatch
            Possibly empty (no datagram, only templates, or only malformed input).
        """
        if timeout > 0:
            select.select([self._sock], [], [], timeout)
        self._drain(max_datagrams)
        return self.decoder.flush()

    def batches(
        self, interval: float = 1.0, *, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Iterator[FlowBatch]:
        """Yield a batch of flows about every ``interval`` seconds (only non-empty ones).

        Parameters
        ----------
        interval
            Seconds collected into one batch.
        stop
            Ends the iteration once set.
        timeout
            End after this many seconds without any datagram (``None``: never).
        """
        last_data = time.monotonic()
        while stop is None or not stop.is_set():
            deadline = time.monotonic() + interval
            got = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    break
                ready, _, _ = select.select([self._sock], [], [], min(left, 0.2))
                if ready:
                    got += self._drain(100_000)
            if got:
                last_data = time.monotonic()
            batch = self.decoder.flush()
            if len(batch):
                yield batch
            if timeout is not None and time.monotonic() - last_data > timeout:
                return

    def __iter__(self) -> Iterator[FlowBatch]:
        return self.batches()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> NetFlowCollector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
