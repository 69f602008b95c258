"""Followers of growing inputs: a directory of rotating pcaps, and a Zeek ``conn.log``.

:class:`PcapDirFollower` follows the files ``tcpdump -G SECONDS -w 'dir/cap-%Y%m%d%H%M%S.pcap'``
writes: files matching a glob pattern are read in name (or modification-time) order; only
complete pcap records are consumed, so a half-written record at the end of the newest file
waits for the writer. A file is finished once a newer file exists (tcpdump has closed it;
an incomplete last record is then damage: one :class:`~iotsentry.errors.CaptureDamaged`
warning) or after it has been idle for ``grace`` seconds (its handle is released; if it
grows again it is read on from where it stopped).

:class:`ZeekLogFollower` follows a conn log being appended (TSV or JSON lines): only
complete lines are consumed; rotation (the path now names another inode) and truncation
(same inode, smaller than the consumed offset) restart at the top of the new file.

Both keep their position in a small state object (:class:`PcapFollowState`,
:class:`ZeekFollowState`) that round-trips through JSON (``save``/``load``), so a restarted
monitor resumes without re-reading or skipping anything. ``poll()`` never blocks;
``follow()`` sleeps ``interval`` between polls that found nothing. The Zeek follower lives in
:mod:`~iotsentry.capture.follow_zeek` (re-exported here), the shared loop in
:mod:`~iotsentry.capture.follow_base`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iotsentry.capture.decode import BatchBuilder, FrameBlock, RawSpec
from iotsentry.capture.follow_base import READ_CHUNK, _Follower, save_json
from iotsentry.capture.follow_zeek import ZeekFollowState, ZeekLogFollower
from iotsentry.capture.pcap import (
    BAD_RECORD,
    GLOBAL_HEADER_LEN,
    MAX_RECORD,
    RECORD_HEADER_LEN,
    _HeaderCut,
    parse_header,
    scan_pcap,
)
from iotsentry.errors import CaptureDamaged, InputError
from iotsentry.schema import PacketBatch

__all__ = ["FileMark", "PcapDirFollower", "PcapFollowState", "ZeekFollowState", "ZeekLogFollower"]


@dataclass(slots=True)
class FileMark:
    """How far one capture file was consumed: byte ``offset`` after the last complete
    record, ``packets`` read from it, and whether it is finished (``closed``)."""

    inode: int
    offset: int = 0
    packets: int = 0
    closed: bool = False


@dataclass(slots=True)
class PcapFollowState:
    """Position of a :class:`PcapDirFollower`: a mark per file name still in the directory
    and ``index``, the number of packets yielded so far (the next ``index`` value)."""

    files: dict[str, FileMark] = field(default_factory=dict)
    index: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"index": self.index, "files": {k: asdict(v) for k, v in self.files.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PcapFollowState:
        """Inverse of :meth:`to_json`."""
        return cls({k: FileMark(**v) for k, v in data.get("files", {}).items()}, int(data.get("index", 0)))

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename)."""
        save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PcapFollowState:
        """Read a state written by :meth:`save`."""
        return cls.from_json(json.loads(Path(path).read_text()))


class PcapDirFollower(_Follower[PacketBatch]):
    """Packets of a directory of rotating pcap files, each exactly once.

    Parameters
    ----------
    directory
        Where the writer puts its files.
    pattern
        Glob of the capture files inside ``directory``.
    order
        ``"name"`` (tcpdump ``-G`` strftime names sort chronologically) or ``"mtime"``.
    grace
        Seconds without growth after which the newest file's handle is released.
    batch_size
        Maximum packets per batch.
    with_raw
        Keep frame bytes (see :func:`~iotsentry.capture.reader.read_packets`).
    state
        Where to resume (from :meth:`PcapFollowState.load`); a fresh start otherwise.
    """

    def __init__(
        self,
        directory: str | Path,
        pattern: str = "*.pcap*",
        *,
        order: str = "name",
        grace: float = 60.0,
        batch_size: int = 100_000,
        with_raw: RawSpec = False,
        state: PcapFollowState | None = None,
    ) -> None:
        if order not in ("name", "mtime"):
            raise ValueError("order must be 'name' or 'mtime'")
        self.directory = Path(directory)
        self.pattern = pattern
        self.order = order
        self.grace = grace
        self.batch_size = batch_size
        self.with_raw = with_raw
        self.state = state or PcapFollowState()

    def _listing(self) -> list[tuple[Path, os.stat_result]]:
        files = []
        for p in self.directory.glob(self.pattern):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.is_file():
                files.append((p, st))
        if self.order == "mtime":
            files.sort(key=lambda f: (f[1].st_mtime_ns, f[0].name))
        else:
            files.sort(key=lambda f: f[0].name)
        return files

    def poll(self) -> PacketBatch:
        """Complete packets not consumed yet (at most ``batch_size``); never blocks."""
        files = self._listing()
        names = {p.name for p, _ in files}
        marks = self.state.files
        for gone in [n for n in marks if n not in names]:
            del marks[gone]
        builder = BatchBuilder(self.batch_size, self.state.index, self.with_raw)
        for i, (path, st) in enumerate(files):
            mark = marks.get(path.name)
            if mark is None or mark.inode != st.st_ino or st.st_size < mark.offset:  # new/replaced
                mark = marks[path.name] = FileMark(st.st_ino)
            newer = i < len(files) - 1
            if mark.closed:
                if newer or st.st_size <= mark.offset:
                    continue
                mark.closed = False  # the newest file grew again after its idle grace
            done = self._read(path, st, mark, newer, builder)
            if not done or builder.room == 0:
                break
        batch = builder.finish()
        self.state.index += len(batch)
        return batch

    def _read(
        self, path: Path, st: os.stat_result, mark: FileMark, newer: bool, builder: BatchBuilder
    ) -> bool:
        """Read new records of one file; True when it is finished (go on to the next file)."""
        try:
            with path.open("rb") as f:
                head = f.read(GLOBAL_HEADER_LEN)
                try:
                    if len(head) < 4:  # created, magic not written yet: a cut header as well
                        raise _HeaderCut()
                    big, divisor, snaplen, link = parse_header(path, head)
                except _HeaderCut:
                    if newer:
                        self._damage(path, mark, 0, "file ends inside the pcap global header", st.st_size)
                        return True
                    return False
                mark.offset = max(mark.offset, GLOBAL_HEADER_LEN)
                max_caplen = max(262144, min(snaplen, MAX_RECORD))
                while builder.room:
                    f.seek(mark.offset)
                    buf = np.frombuffer(f.read(READ_CHUNK), dtype=np.uint8)
                    blk = FrameBlock(min(builder.room, len(buf) // RECORD_HEADER_LEN + 1))
                    blk.link[:] = link
                    k, pos, status = scan_pcap(
                        buf, 0, len(buf), big, divisor, max_caplen, len(blk.ts),
                        blk.data_off, blk.cap_len, blk.wire_len, blk.ts,
                    )  # fmt: skip
                    builder.add(buf, blk, k)
                    mark.offset += pos
                    mark.packets += k
                    if builder.room == 0:
                        return False
                    if status == BAD_RECORD:
                        self._damage(path, mark, mark.offset, "implausible pcap record header", st.st_size)
                        return True
                    if k == 0 and len(buf) < READ_CHUNK:  # at the end of what is written
                        break
                    if k == 0:  # one record larger than the chunk
                        need = RECORD_HEADER_LEN + int.from_bytes(
                            buf[8:12].tobytes(), "big" if big else "little"
                        )
                        if mark.offset + need > st.st_size:
                            break
                        f.seek(mark.offset)
                        one = np.frombuffer(f.read(need), dtype=np.uint8)
                        blk1 = FrameBlock(1)
                        blk1.link[:] = link
                        k, pos, status = scan_pcap(
                            one, 0, len(one), big, divisor, MAX_RECORD, 1,
                            blk1.data_off, blk1.cap_len, blk1.wire_len, blk1.ts,
                        )  # fmt: skip
                        builder.add(one, blk1, k)
                        mark.offset += pos
                        mark.packets += k
                size = os.fstat(f.fileno()).st_size
        except OSError as err:
            raise InputError(path, f"cannot read: {err.strerror or err}") from None
        if newer:
            if mark.offset < size:
                what = "header" if size - mark.offset < RECORD_HEADER_LEN else "data"
                self._damage(path, mark, mark.offset, f"file ends inside the {what} of a pcap record", size)
            mark.closed = True
            return True
        if time.time() - st.st_mtime >= self.grace and mark.offset >= size:
            mark.closed = True
        return False

    @staticmethod
    def _damage(path: Path, mark: FileMark, offset: int, problem: str, size: int) -> None:
        warnings.warn(CaptureDamaged(path, offset, problem, mark.packets), stacklevel=4)
        mark.offset = size
        mark.closed = True


# ============================================================================ Zeek conn.log
