"""Reader for pcapng files.

Sections (SHB) in either byte order, any number of them; interfaces (IDB) with their own
link type, ``if_tsresol`` (default microseconds) and ``if_tsoffset``; Enhanced Packet Blocks,
Simple Packet Blocks (interface 0 of the section, timestamp of the previous packet) and the
obsolete Packet Block. Other blocks (name resolution, interface statistics, custom,
decryption secrets, ...) are skipped.

The compiled scanner walks packet blocks in a chunk buffer and stops at every SHB / IDB,
which Python parses (they are rare). ``iface`` is the interface's number over the whole
file (IDBs counted in file order), which equals the pcapng interface id for single-section
files.
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

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
BYTE_ORDER_MAGIC = 0x1A2B3C4D
CHUNK_BYTES = 16 << 20
MAX_BLOCK = 1 << 26
MIN_BLOCK = 12

# scanner status codes
NEED_DATA = 0
BATCH_FULL = 1
HEADER_BLOCK = 2  # SHB or IDB at pos: parse in Python
BAD_LENGTH = 3
BAD_IFACE = 4
BAD_TRAILER = 5
BAD_CAPLEN = 6

_PROBLEMS = {
    BAD_LENGTH: "implausible pcapng block length",
    BAD_IFACE: "packet block refers to an interface not described by an IDB",
    BAD_TRAILER: "pcapng block trailer length differs from its header",
    BAD_CAPLEN: "packet block captured length exceeds the block",
}


@njit(cache=True)
def _rd32(b: npt.NDArray[np.uint8], i: int, big: bool) -> int:
    if big:
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
def _rd16(b: npt.NDArray[np.uint8], i: int, big: bool) -> int:
    if big:
        return int((np.int64(b[i]) << 8) | np.int64(b[i + 1]))
    return int((np.int64(b[i + 1]) << 8) | np.int64(b[i]))


@njit(cache=True)
def scan_pcapng(
    buf: npt.NDArray[np.uint8],
    pos: int,
    end: int,
    big: bool,
    max_n: int,
    if_link: npt.NDArray[np.int32],
    if_units: npt.NDArray[np.int64],
    if_offset: npt.NDArray[np.int64],
    if_snap: npt.NDArray[np.int64],
    if_global: npt.NDArray[np.int64],
    n_if: int,
    last_ts: float,
    data_off: npt.NDArray[np.int64],
    cap_len: npt.NDArray[np.uint32],
    wire_len: npt.NDArray[np.uint32],
    ts: npt.NDArray[np.float64],
    iface: npt.NDArray[np.uint16],
    link: npt.NDArray[np.int32],
) -> tuple[int, int, int, float]:
    """Walk pcapng blocks in ``buf[pos:end]`` of a section with byte order ``big``.

    Returns ``(n, pos, status, last_ts)``; ``status`` tells why it stopped (see the
    module's status codes); ``pos`` is the first block not consumed.
    """
    n = 0
    while n < max_n:
        if pos + 8 > end:
            return n, pos, NEED_DATA, last_ts
        btype = _rd32(buf, pos, big)
        if btype in (SHB_TYPE, IDB_TYPE):
            return n, pos, HEADER_BLOCK, last_ts
        blen = _rd32(buf, pos + 4, big)
        if blen < MIN_BLOCK or blen % 4 != 0 or blen > MAX_BLOCK:
            return n, pos, BAD_LENGTH, last_ts
        if pos + blen > end:
            return n, pos, NEED_DATA, last_ts
        if _rd32(buf, pos + blen - 4, big) != blen:
            return n, pos, BAD_TRAILER, last_ts
        if btype == 6 or btype == 2:  # EPB, obsolete PB
            if blen < 32:
                return n, pos, BAD_LENGTH, last_ts
            ifid = _rd32(buf, pos + 8, big) if btype == 6 else _rd16(buf, pos + 8, big)
            if ifid >= n_if:
                return n, pos, BAD_IFACE, last_ts
            ticks = (_rd32(buf, pos + 12, big) << 32) | _rd32(buf, pos + 16, big)
            cl = _rd32(buf, pos + 20, big)
            if 28 + cl > blen - 4:
                return n, pos, BAD_CAPLEN, last_ts
            units = if_units[ifid]
            t = np.float64(ticks // units) + np.float64(ticks % units) / np.float64(units)
            last_ts = t + if_offset[ifid]
            data_off[n] = pos + 28
            cap_len[n] = cl
            wire_len[n] = _rd32(buf, pos + 24, big)
            ts[n] = last_ts
            iface[n] = if_global[ifid]
            link[n] = if_link[ifid]
            n += 1
        elif btype == 3:  # SPB
            if blen < 16:
                return n, pos, BAD_LENGTH, last_ts
            if n_if == 0:
                return n, pos, BAD_IFACE, last_ts
            wl = _rd32(buf, pos + 8, big)
            cl = min(wl, blen - 16)
            if if_snap[0] > 0:
                cl = min(cl, if_snap[0])
            data_off[n] = pos + 12
            cap_len[n] = cl
            wire_len[n] = wl
            ts[n] = last_ts
            iface[n] = if_global[0]
            link[n] = if_link[0]
            n += 1
        pos += blen
    return n, pos, BATCH_FULL, last_ts


class _Section:
    """Interfaces of the current section (arrays handed to the scanner)."""

    def __init__(self, big: bool) -> None:
        self.big = big
        self.n = 0
        self.link = np.zeros(8, dtype=np.int32)
        self.units = np.ones(8, dtype=np.int64)
        self.offset = np.zeros(8, dtype=np.int64)
        self.snap = np.zeros(8, dtype=np.int64)
        self.global_id = np.zeros(8, dtype=np.int64)

    def add(self, link: int, units: int, offset: int, snap: int, global_id: int) -> None:
        if self.n == len(self.link):
            for name in ("link", "units", "offset", "snap", "global_id"):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.zeros_like(arr)]))
        i = self.n
        self.link[i], self.units[i], self.offset[i] = link, units, offset
        self.snap[i], self.global_id[i] = snap, global_id
        self.n += 1


def _parse_shb(path: str | Path, block: bytes, offset: int) -> tuple[bool, int]:
    """Byte order and total length of the SHB starting ``block`` (>= 12 bytes)."""
    (bom_le,) = struct.unpack("<I", block[8:12])
    if bom_le == BYTE_ORDER_MAGIC:
        big = False
    elif struct.unpack(">I", block[8:12])[0] == BYTE_ORDER_MAGIC:
        big = True
    else:
        raise InputError(path, f"not a pcapng capture (bad byte-order magic at offset {offset})")
    (blen,) = struct.unpack((">" if big else "<") + "I", block[4:8])
    return big, blen


def _parse_idb(path: str | Path, block: bytes, big: bool) -> tuple[int, int, int, int]:
    """``(linktype, units_per_second, offset_seconds, snaplen)`` of an IDB."""
    e = ">" if big else "<"
    linktype, _res, snaplen = struct.unpack(e + "HHI", block[8:16])
    if linktype not in SUPPORTED_LINKTYPES:
        raise InputError(path, f"unsupported pcapng interface link type {linktype}")
    units, offset = 1_000_000, 0
    p, end = 16, len(block) - 4
    while p + 4 <= end:
        code, olen = struct.unpack(e + "HH", block[p : p + 4])
        if code == 0:
            break
        val = block[p + 4 : p + 4 + olen]
        if code == 9 and olen >= 1:
            r = val[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** (r & 0x7F)
        elif code == 14 and olen >= 8:
            (offset,) = struct.unpack(e + "q", val[:8])
        p += 4 + ((olen + 3) & ~3)
    if units <= 0 or units >= 2**62:
        raise InputError(path, f"unsupported pcapng timestamp resolution ({units} per second)")
    return linktype, units, offset, snaplen


def read_pcapng(
    path: str | Path,
    *,
    batch_size: int = 1_000_000,
    with_raw: RawSpec = False,
    decode: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[PacketBatch]:
    """Read a pcapng file as batches of at most ``batch_size`` packets.

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
        Size of the read buffer (grown when one block is larger).

    Yields
    ------
    PacketBatch
        Consecutive batches in file order.

    Raises
    ------
    InputError
        The file is not pcapng or an interface has an unsupported link type.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    f, compression = open_input(path)
    with f:
        yield from _blocks(f, path, batch_size, with_raw, decode, chunk_bytes, compression)


def _blocks(
    f: io.BufferedIOBase,
    path: str | Path,
    batch_size: int,
    with_raw: RawSpec,
    decode: bool,
    chunk_bytes: int,
    compression: str | None = None,
) -> Iterator[PacketBatch]:
    size = Path(path).stat().st_size
    remaining_max = size // 16 + 1  # the smallest packet block (SPB) is 16 bytes
    least = 1 if compression is None else MIN_COMPRESSED_BATCH  # its packets are not bounded by size

    def new_builder(first: int) -> BatchBuilder:
        return BatchBuilder(min(batch_size, max(least, remaining_max - first)), first, with_raw, decode)

    buf = np.empty(max(chunk_bytes, 1 << 16), dtype=np.uint8)
    blk_cap = len(buf) // 16 + 1
    blk = FrameBlock(blk_cap)
    base = 0
    pos = valid = 0
    eof = False
    total = 0
    n_global_if = 0
    section: _Section | None = None
    last_ts = 0.0
    builder = new_builder(0)
    while True:
        if section is None:
            k, status = 0, HEADER_BLOCK
        else:
            k, pos, status, last_ts = scan_pcapng(
                buf,
                pos,
                valid,
                section.big,
                min(builder.room, blk_cap),
                section.link,
                section.units,
                section.offset,
                section.snap,
                section.global_id,
                section.n,
                last_ts,
                blk.data_off,
                blk.cap_len,
                blk.wire_len,
                blk.ts,
                blk.iface,
                blk.link,
            )
        builder.add(buf, blk, k)
        total += k
        if builder.room == 0:
            yield builder.finish()
            builder = new_builder(total)
            continue
        if status == BATCH_FULL:
            continue
        need = 0
        if status == HEADER_BLOCK:
            # SHB / IDB (or the start of the file) at pos: parse when complete
            if valid - pos >= 12:
                head = buf[pos : pos + 12].tobytes()
                (btype,) = struct.unpack("<I", head[:4])
                if btype == SHB_TYPE:
                    big, blen = _parse_shb(path, head, base + pos)
                elif section is None:
                    raise InputError(path, "not a pcapng capture (does not start with a section header)")
                else:
                    big = section.big
                    (blen,) = struct.unpack((">" if big else "<") + "I", head[4:8])
                if blen < (28 if btype == SHB_TYPE else 20) or blen % 4 or blen > MAX_BLOCK:
                    _warn(path, base + pos, _PROBLEMS[BAD_LENGTH], total)
                    break
                if valid - pos >= blen:
                    block = buf[pos : pos + blen].tobytes()
                    if btype == SHB_TYPE:
                        section = _Section(big)
                    else:
                        assert section is not None
                        lt, units, off, snap = _parse_idb(path, block, big)
                        section.add(lt, units, off, snap, n_global_if)
                        n_global_if += 1
                    pos += blen
                    continue
                need = blen
        elif status != NEED_DATA:
            _warn(path, base + pos, _PROBLEMS[status], total)
            break
        if eof:
            if pos < valid:
                _warn(path, base + pos, "file ends inside a pcapng block", total)
            break
        left = valid - pos
        if left:
            buf[:left] = buf[pos:valid].copy()
        base += pos
        pos, valid = 0, left
        if need == 0 and left >= 8 and section is not None:
            (need,) = struct.unpack((">" if section.big else "<") + "I", buf[4:8].tobytes())
        if need > len(buf) and need <= MAX_BLOCK:
            grown = np.empty(need, dtype=np.uint8)
            grown[:left] = buf[:left]
            buf = grown
        try:
            got = fill(f, buf[valid:], compression)
        except DECOMPRESSION_ERRORS as err:  # every complete block before it is kept
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
