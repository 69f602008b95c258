"""Follower of a Zeek ``conn.log`` being appended (TSV or JSON lines).

Only complete lines are consumed; rotation (the path now names another inode) and truncation
(same inode, smaller than the consumed offset) restart at the top of the new file. The position
lives in :class:`ZeekFollowState`, which round-trips through JSON (``save``/``load``).
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from iotsentry.capture.follow_base import _Follower, save_json
from iotsentry.capture.zeek import (
    REQUIRED,
    USED_COLUMNS,
    _json_text,
    _json_ts,
    build_flow_batch,
    canonical_name,
)
from iotsentry.errors import InputError
from iotsentry.schema import FlowBatch

__all__ = ["ZeekFollowState", "ZeekLogFollower"]


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
        save_json(path, self.to_json())

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
