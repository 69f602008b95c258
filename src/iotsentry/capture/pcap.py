"""Reader for classic libpcap files (``.pcap``).

Both byte orders, microsecond (``0xa1b2c3d4``) and nanosecond (``0xa1b23c4d``) timestamps.
The file is read in fixed-size chunks into a numpy buffer; a compiled scanner walks the
16-byte record headers and :class:`~iotsentry.capture.decode.BatchBuilder` decodes the frames,
so memory is bounded by the chunk and batch sizes, not by the file size.

A file that ends inside a record (header or data), or whose next record header is not
plausible (captured length beyond the limit), is *damaged*: every complete packet before
the damage is returned and one :class:`~iotsentry.errors.CaptureDamaged` warning names the
byte offset of the first unusable record.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from numba import njit

from iotsentry.capture.compressed import (
    DECOMPRESSION_ERRORS,
    MIN_COMPRESSED_BATCH,
    fill,
    open_input,
)
from iotsentry.capture.decode import SUPPORTED_LINKTYPES, BatchBuilder, FrameBlock, RawSpec
from iotsentry.errors import CaptureDamaged, InputError
from iotsentry.schema import PacketBatch

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
CHUNK_BYTES = 16 << 20
MAX_RECORD = 1 << 26
"""Largest captured length accepted even when the header's snap length claims more."""

# scanner status codes
NEED_DATA = 0
BATCH_FULL = 1
BAD_RECORD = 2


@njit(cache=True)
def _rd32(b: npt.NDArray[np.uint8], i: int, swap: bool) -> int:
    if swap:
        return int(
            (np.int64(b[i]) << 24)
            | (np.int64(b[i + 1]) << 16)
            | (np.int64(b[i + 2]) << 8)
            | np.int64(b[i + 3])
        )
    return int(
        (np.int64(b[i + 3]) << 24) | (np.int64(b[i + 2]) << 16) | (np.int64(b[i + 1]) << 8) | np.int64(b[i])
    )


@njit(cache=True)
def scan_pcap(
    buf: npt.NDArray[np.uint8],
    pos: int,
    end: int,
    big_endian: bool,
    divisor: float,
    max_caplen: int,
    max_n: int,
    data_off: npt.NDArray[np.int64],
    cap_len: npt.NDArray[np.uint32],
    wire_len: npt.NDArray[np.uint32],
    ts: npt.NDArray[np.float64],
) -> tuple[int, int, int]:
    """Walk pcap records in ``buf[pos:end]``.

    Returns ``(n, pos, status)``: frames found, position of the first record not consumed,
    and why it stopped (``NEED_DATA``: the next record is not complete in the buffer,
    ``BATCH_FULL``: ``max_n`` frames found, ``BAD_RECORD``: implausible header at ``pos``).
    """
    n = 0
    while n < max_n:
        if pos + 16 > end:
            return n, pos, NEED_DATA
        sec = _rd32(buf, pos, big_endian)
        frac = _rd32(buf, pos + 4, big_endian)
        cl = _rd32(buf, pos + 8, big_endian)
        wl = _rd32(buf, pos + 12, big_endian)
        if cl > max_caplen:
            return n, pos, BAD_RECORD
        if pos + 16 + cl > end:
            return n, pos, NEED_DATA
        data_off[n] = pos + 16
        cap_len[n] = cl
        wire_len[n] = wl
        ts[n] = sec + frac / divisor
        n += 1
        pos += 16 + cl
    return n, pos, BATCH_FULL


def parse_header(path: str | Path, head: bytes) -> tuple[bool, float, int, int]:
    """Check a pcap global header; returns ``(big_endian, divisor, snaplen, linktype)``."""
    if len(head) < 4:
        raise InputError(path, "not a pcap capture (file shorter than a magic number)")
    (le_magic,) = struct.unpack("<I", head[:4])
    (be_magic,) = struct.unpack(">I", head[:4])
    if le_magic in (MAGIC_USEC, MAGIC_NSEC):
        big, magic = False, le_magic
    elif be_magic in (MAGIC_USEC, MAGIC_NSEC):
        big, magic = True, be_magic
    else:
        raise InputError(path, f"not a pcap capture (magic number 0x{be_magic:08x})")
    if len(head) < GLOBAL_HEADER_LEN:
        raise _HeaderCut()
    e = ">" if big else "<"
    major, _minor, _tz, _sigfigs, snaplen, network = struct.unpack(e + "HHiIII", head[4:24])
    if major != 2:
        raise InputError(path, f"unsupported pcap version {major} (expected 2)")
    linktype = network & 0xFFFF
    if linktype not in SUPPORTED_LINKTYPES:
        raise InputError(path, f"unsupported pcap link type {linktype}")
    divisor = 1e9 if magic == MAGIC_NSEC else 1e6
    return big, divisor, snaplen, linktype


class _HeaderCut(Exception):
    """The file ends inside the global header."""


def read_pcap(
    path: str | Path,
    *,
    batch_size: int = 1_000_000,
    with_raw: RawSpec = False,
    decode: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[PacketBatch]:
    """Read a libpcap file as batches of at most ``batch_size`` packets.

    Parameters
    ----------
    path
        The capture.
    batch_size
        Maximum rows per batch; a batch never splits a packet.
    with_raw
        Also return the captured frame bytes (``PacketBatch.raw``).
    decode
        Decode protocol columns (``False`` fills only ``index``; used for counting).
    chunk_bytes
        Size of the read buffer (grown when one record is larger).

    Yields
    ------
    PacketBatch
        Consecutive batches in file order.

    Raises
    ------
    InputError
        The file is not a pcap capture or uses an unsupported link type.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    f, compression = open_input(path)
    with f:
        try:
            head = f.read(GLOBAL_HEADER_LEN)
        except DECOMPRESSION_ERRORS as err:
            raise InputError(path, f"damaged {compression} stream: {err}") from None
        try:
            big, divisor, snaplen, linktype = parse_header(path, head)
        except _HeaderCut:
            warnings.warn(CaptureDamaged(path, 0, "file ends inside the pcap global header", 0), stacklevel=2)
            return
        max_caplen = max(262144, min(snaplen, MAX_RECORD))
        yield from _records(
            f,
            path,
            big,
            divisor,
            max_caplen,
            linktype,
            batch_size,
            with_raw,
            decode,
            chunk_bytes,
            compression,
        )


def _records(
    f: io.BufferedIOBase,
    path: str | Path,
    big: bool,
    divisor: float,
    max_caplen: int,
    linktype: int,
    batch_size: int,
    with_raw: RawSpec,
    decode: bool,
    chunk_bytes: int,
    compression: str | None = None,
) -> Iterator[PacketBatch]:
    size = Path(path).stat().st_size
    remaining_max = max(0, (size - GLOBAL_HEADER_LEN) // RECORD_HEADER_LEN)
    least = 1 if compression is None else MIN_COMPRESSED_BATCH  # its packets are not bounded by size

    def new_builder(first: int) -> BatchBuilder:
        return BatchBuilder(min(batch_size, max(least, remaining_max - first)), first, with_raw, decode)

    buf = np.empty(max(chunk_bytes, 1 << 16), dtype=np.uint8)
    blk_cap = len(buf) // RECORD_HEADER_LEN + 1
    blk = FrameBlock(blk_cap)
    blk.link[:] = linktype
    base = GLOBAL_HEADER_LEN  # file offset of buf[0]
    pos = valid = 0
    eof = False
    total = 0
    builder = new_builder(0)
    while True:
        k, pos, status = scan_pcap(
            buf,
            pos,
            valid,
            big,
            divisor,
            max_caplen,
            min(builder.room, blk_cap),
            blk.data_off,
            blk.cap_len,
            blk.wire_len,
            blk.ts,
        )
        builder.add(buf, blk, k)
        total += k
        if builder.room == 0:
            yield builder.finish()
            builder = new_builder(total)
            continue
        if status == BAD_RECORD:
            _warn(path, base + pos, "implausible pcap record header (captured length too large)", total)
            break
        if status == BATCH_FULL:  # the frame block was full, buffer not yet exhausted
            continue
        if eof:
            if pos < valid:
                what = "header" if valid - pos < RECORD_HEADER_LEN else "data"
                _warn(path, base + pos, f"file ends inside the {what} of a pcap record", total)
            break
        left = valid - pos
        if left:
            buf[:left] = buf[pos:valid].copy()
        base += pos
        pos, valid = 0, left
        if left >= RECORD_HEADER_LEN:
            need = RECORD_HEADER_LEN + int.from_bytes(buf[8:12].tobytes(), "big" if big else "little")
            if need > len(buf):
                grown = np.empty(need, dtype=np.uint8)
                grown[:left] = buf[:left]
                buf = grown
        try:
            got = fill(f, buf[valid:], compression)
        except DECOMPRESSION_ERRORS as err:  # every complete record before it is kept
            _warn(path, base + valid, f"{compression} stream damaged ({err})", total)
            break
        if not got:
            eof = True
        else:
            valid += got
    if builder.n:
        yield builder.finish()


def _warn(path: str | Path, offset: int, problem: str, packets: int) -> None:
    warnings.warn(CaptureDamaged(path, offset, problem, packets), stacklevel=4)
