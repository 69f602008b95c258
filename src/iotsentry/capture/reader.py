"""Packet-capture entry point: sniffs the format (pcap or pcapng) and reads batches.

>>> for batch in read_packets("home.pcap"):          # doctest: +SKIP
...     print(len(batch), batch.ts[0])

Damaged captures (cut short, corrupt record header) yield every packet before the damage
and emit one :class:`~iotsentry.errors.CaptureDamaged` warning; a file that is not a
capture raises :class:`~iotsentry.errors.InputError`; an empty (0-byte) file is an empty
capture.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from iotsentry.capture.compressed import DECOMPRESSION_ERRORS, open_input
from iotsentry.capture.decode import RawSpec
from iotsentry.capture.pcap import MAGIC_NSEC, MAGIC_USEC, read_pcap
from iotsentry.capture.pcapng import SHB_TYPE, read_pcapng
from iotsentry.errors import InputError
from iotsentry.schema import PacketBatch

__all__ = ["capture_format", "count_packets", "read_all", "read_packets"]


def capture_format(path: str | Path) -> str:
    """``"pcap"``, ``"pcapng"`` or ``"empty"`` (0 bytes), from the file's magic number (after
    decompression when the file is gzip, xz, bzip2 or zstd: see :mod:`~iotsentry.capture.compressed`).

    Raises
    ------
    InputError
        The file cannot be opened or is not a pcap / pcapng capture.
    """
    kind: str | None = None
    try:
        f, kind = open_input(path)
        with f:
            head = f.read(4)
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a capture file") from None
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except DECOMPRESSION_ERRORS as exc:
        raise InputError(path, f"damaged {kind or 'compressed'} stream ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    inside = f" ({kind}-compressed)" if kind else ""
    if not head:
        return "empty"
    if len(head) < 4:
        raise InputError(path, f"not a pcap or pcapng capture{inside} (file shorter than a magic number)")
    (le,) = struct.unpack("<I", head)
    (be,) = struct.unpack(">I", head)
    if le == SHB_TYPE:
        return "pcapng"
    if le in (MAGIC_USEC, MAGIC_NSEC) or be in (MAGIC_USEC, MAGIC_NSEC):
        return "pcap"
    raise InputError(path, f"not a pcap or pcapng capture{inside} (magic number 0x{be:08x})")


def read_packets(
    path: str | Path, *, batch_size: int = 1_000_000, with_raw: RawSpec = False
) -> Iterator[PacketBatch]:
    """Read a pcap or pcapng capture as consecutive :class:`PacketBatch` es.

    Parameters
    ----------
    path
        Capture file (format detected from its magic number, not its name).
    batch_size
        Maximum packets per batch; memory use is bounded by it, not by the file size.
    with_raw
        Carry the captured frame bytes (``raw`` / ``raw_off``) for application parsers.

    Yields
    ------
    PacketBatch
        Batches in file order; ``index`` is the frame number over the whole file.

    Raises
    ------
    InputError
        Not a capture, unreadable, or an unsupported link type.
    """
    fmt = capture_format(path)
    if fmt == "pcap":
        yield from read_pcap(path, batch_size=batch_size, with_raw=with_raw)
    elif fmt == "pcapng":
        yield from read_pcapng(path, batch_size=batch_size, with_raw=with_raw)


def read_all(path: str | Path, with_raw: RawSpec = False) -> PacketBatch:
    """The whole capture as one batch (see :func:`read_packets`)."""
    batches = list(read_packets(path, with_raw=with_raw))
    if not batches:
        return PacketBatch.empty()
    if len(batches) == 1:
        return batches[0]
    return PacketBatch.concat(batches)


def read_timestamps(path: str | Path, *, batch_size: int = 1_000_000) -> Iterator[npt.NDArray[np.float64]]:
    """The packet timestamps of a capture, in file order, batch by batch: a walk over the record
    headers only (no protocol decode), for finding a capture's time span before reading it."""
    fmt = capture_format(path)
    reader = read_pcap if fmt == "pcap" else read_pcapng
    for b in reader(path, batch_size=batch_size, decode=False):
        yield b.ts


def count_packets(path: str | Path) -> int:
    """Number of packets :func:`read_packets` would return (record scan only, no decode)."""
    fmt = capture_format(path)
    if fmt == "pcap":
        return sum(len(b) for b in read_pcap(path, decode=False))
    if fmt == "pcapng":
        return sum(len(b) for b in read_pcapng(path, decode=False))
    return 0
