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
``follow()`` sleeps ``interval`` between polls that found nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import numpy as np

from iotsentry.capture.decode import BatchBuilder, FrameBlock, RawSpec
from iotsentry.capture.pcap import (
    BAD_RECORD,
    GLOBAL_HEADER_LEN,
    MAX_RECORD,
    RECORD_HEADER_LEN,
    _HeaderCut,
    parse_header,
    scan_pcap,
)
from iotsentry.capture.zeek import (
    REQUIRED,
    USED_COLUMNS,
    _json_text,
    _json_ts,
    build_flow_batch,
    canonical_name,
)
from iotsentry.errors import CaptureDamaged, InputError
from iotsentry.schema import FlowBatch, PacketBatch

__all__ = ["FileMark", "PcapDirFollower", "PcapFollowState", "ZeekFollowState", "ZeekLogFollower"]

READ_CHUNK = 16 << 20
B = TypeVar("B", PacketBatch, FlowBatch)


def _save_json(path: str | Path, data: dict[str, Any]) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, p)


class _Follower(Generic[B]):
    """Shared blocking loop over a non-blocking ``poll()``."""

    def poll(self) -> B:  # pragma: no cover - overridden
        raise NotImplementedError

    def follow(
        self, interval: float = 0.5, *, timeout: float | None = None, stop: threading.Event | None = None
    ) -> Iterator[B]:
        """Yield non-empty batches as data arrives.

        Parameters
        ----------
        interval
            Sleep between polls that found nothing (never busy-spins).
        timeout
            Return after this many seconds without new data (``None``: never).
        stop
            Return once this event is set.
        """
        last = time.monotonic()
        while stop is None or not stop.is_set():
            batch = self.poll()
            if len(batch):
                last = time.monotonic()
                yield batch
                continue
            if timeout is not None and time.monotonic() - last >= timeout:
                return
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)


# ============================================================================ rotating pcaps


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
        _save_json(path, self.to_json())

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


@dataclass(slots=True)
class ZeekFollowState:
    """Position in a followed conn log: file ``inode``, byte ``offset`` after the last
    complete line, ``line`` number consumed, ``rows`` yielded (next ``flow_id``), and the
    header seen so far (format, separator, fields, unset/empty tokens)."""

    inode: int = 0
    offset: int = 0
    line: int = 0
    rows: int = 0
    kind: str = ""
    fields: list[str] | None = None
    sep: str = "\t"
    unset: str = "-"
    empty: str = "(empty)"
    spaced: bool = False
    labeled: bool = False

    def reset_file(self, inode: int) -> None:
        """Start over at the top of a new (rotated or truncated) file; ``rows`` continues."""
        rows = self.rows
        for k, v in asdict(ZeekFollowState()).items():
            setattr(self, k, v)
        self.inode, self.rows = inode, rows

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ZeekFollowState:
        """Inverse of :meth:`to_json`."""
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename)."""
        _save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ZeekFollowState:
        """Read a state written by :meth:`save`."""
        return cls.from_json(json.loads(Path(path).read_text()))


class ZeekLogFollower(_Follower[FlowBatch]):
    """Flows appended to a Zeek conn log (TSV or JSON lines), each row exactly once.

    Parameters
    ----------
    path
        The log Zeek writes (``.../current/conn.log``).
    max_bytes
        Most bytes read per :meth:`poll`.
    state
        Where to resume (from :meth:`ZeekFollowState.load`).

    Rows that cannot be converted are skipped, counted in :attr:`skipped` and described
    (one line each) in :attr:`errors`; a header that is not a conn log raises
    :class:`~iotsentry.errors.InputError`.
    """

    def __init__(
        self, path: str | Path, *, max_bytes: int = 64 << 20, state: ZeekFollowState | None = None
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.state = state or ZeekFollowState()
        self.skipped = 0
        self.errors: deque[str] = deque(maxlen=100)
        self._fh: BinaryIO | None = None

    def poll(self) -> FlowBatch:
        """Rows of the complete lines appended since the last call; never blocks."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return FlowBatch.empty()
        s = self.state
        if st.st_ino != s.inode:  # rotated or replaced: finish the old file first
            tail = self._drain_old()
            s.reset_file(st.st_ino)
            self._open(st.st_ino)
            if len(tail):
                return tail
        elif st.st_size < s.offset:  # truncated in place
            s.reset_file(st.st_ino)
        if self._fh is None:
            self._open(st.st_ino)
        if self._fh is None or st.st_size == s.offset:
            return FlowBatch.empty()
        return self._read_lines(st.st_size)

    def _open(self, inode: int) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        if os.fstat(fh.fileno()).st_ino != inode:  # replaced again meanwhile: next poll
            fh.close()
            return
        self._fh = fh

    def _drain_old(self) -> FlowBatch:
        """Complete lines left in the file we had open before it was rotated away."""
        if self._fh is None or os.fstat(self._fh.fileno()).st_ino != self.state.inode:
            return FlowBatch.empty()
        size = os.fstat(self._fh.fileno()).st_size
        out = [self._read_lines(size)] if size > self.state.offset else []
        if os.fstat(self._fh.fileno()).st_size > self.state.offset:
            self._skip(self.state.line + 1, "incomplete last line of the rotated file")
        return FlowBatch.concat(out)

    def _read_lines(self, size: int) -> FlowBatch:
        s = self.state
        assert self._fh is not None
        self._fh.seek(s.offset)
        data = self._fh.read(min(self.max_bytes, size - s.offset))
        end = data.rfind(b"\n") + 1
        if end == 0:
            return FlowBatch.empty()  # only a partial line so far
        s.offset += end
        return self._lines(data[:end].decode("utf-8", "replace").split("\n")[:-1])

    def close(self) -> None:
        """Release the open file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _lines(self, lines: list[str]) -> FlowBatch:
        s = self.state
        out: list[FlowBatch] = []
        rows: list[str] = []
        nums: list[int] = []
        for raw in lines:
            s.line += 1
            line = raw.rstrip("\r").lstrip("\ufeff") if s.line == 1 else raw.rstrip("\r")
            if not line.strip():
                continue
            if not s.kind:
                s.kind = "json" if line.lstrip().startswith("{") else "tsv"
            if s.kind == "tsv" and line.startswith("#"):
                if line.startswith("#fields") and rows:
                    out.append(self._convert(rows, nums))
                    rows, nums = [], []
                self._header(line)
                continue
            rows.append(line)
            nums.append(s.line)
        if rows:
            out.append(self._convert(rows, nums))
        return FlowBatch.concat(out)

    def _header(self, line: str) -> None:
        s = self.state
        key, _, value = line.partition(s.sep if not line.startswith("#separator") else " ")
        if key == "#separator":
            s.sep = value.strip().encode("ascii").decode("unicode_escape") or "\t"
        elif key == "#unset_field":
            s.unset = value
        elif key == "#empty_field":
            s.empty = value
        elif key == "#path" and value.strip() not in ("", "conn"):
            raise InputError(self.path, f"line {s.line}: a Zeek {value.strip()!r} log, not a conn log")
        elif key == "#fields":
            s.spaced = "   " in value
            names = [canonical_name(x) for x in value.replace("   ", s.sep).split(s.sep)]
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise InputError(self.path, f"not a Zeek conn log: missing column(s) {', '.join(missing)}")
            s.fields = names

    def _columns(self, rows: list[str], nums: list[int]) -> tuple[dict[str, list[str]], list[int]]:
        """Text columns of the rows that have the right shape (others are skipped)."""
        s = self.state
        cols: dict[str, list[str]] = {}
        keep: list[int] = []
        if s.kind == "tsv":
            if s.fields is None:
                self._skip(nums[0], f"{len(rows)} data row(s) before the #fields header")
                return {}, []
            fields = s.fields
            cols = {c: [] for c in fields if c in USED_COLUMNS}
            for text, num in zip(rows, nums, strict=True):
                parts = (text.replace("   ", s.sep) if s.spaced else text).split(s.sep)
                if len(parts) != len(fields):
                    self._skip(num, f"{len(parts)} columns, expected {len(fields)}")
                    continue
                for name, v in zip(fields, parts, strict=True):
                    if name in cols:
                        cols[name].append(v)
                keep.append(num)
            return cols, keep
        cols = {c: [] for c in USED_COLUMNS}
        for text, num in zip(rows, nums, strict=True):
            try:
                rec = json.loads(text)
                row = {canonical_name(k): v for k, v in rec.items()}
                missing = [c for c in REQUIRED if c not in row]
                if missing:
                    raise ValueError(f"missing field(s) {', '.join(missing)}")
                ts = _json_ts(row["ts"])
            except (ValueError, TypeError, AttributeError) as err:
                self._skip(num, f"not a conn log JSON row ({str(err)[:80]})")
                continue
            s.labeled = s.labeled or "label" in row
            cols["ts"].append(ts)
            for c in USED_COLUMNS:
                if c != "ts":
                    cols[c].append(_json_text(row.get(c)))
            keep.append(num)
        if not s.labeled:
            cols.pop("label", None)
            cols.pop("detailed_label", None)
        return cols, keep

    def _convert(self, rows: list[str], nums: list[int]) -> FlowBatch:
        cols, keep = self._columns(rows, nums)
        if not keep:
            return FlowBatch.empty()
        unset = frozenset({self.state.unset, self.state.empty, "-", "(empty)", ""})
        try:
            batch = build_flow_batch(
                cols, np.asarray(keep), self.path, unset=unset, first_flow_id=self.state.rows
            )
        except InputError:  # find and skip the bad rows one by one
            good: list[FlowBatch] = []
            for k, num in enumerate(keep):
                one = {c: v[k : k + 1] for c, v in cols.items()}
                try:
                    good.append(build_flow_batch(one, np.asarray([num]), self.path, unset=unset))
                except InputError as err:
                    self._skip(num, err.problem)
            batch = FlowBatch.concat(good)
            batch.columns["flow_id"] = np.arange(
                self.state.rows, self.state.rows + len(batch), dtype=np.int64
            )
        self.state.rows += len(batch)
        return batch

    def _skip(self, line: int, problem: str) -> None:
        self.skipped += 1
        msg = (
            f"{self.path}: line {line}: {problem}"
            if not problem.startswith("line ")
            else f"{self.path}: {problem}"
        )
        self.errors.append(msg)
