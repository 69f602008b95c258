"""Read Zeek ``conn.log`` files (TSV or JSON lines, incl. IoT-23/Slips labeled logs) into flows.

Zeek writes ``conn.log`` either as tab-separated text with ``#`` header lines (``#separator``,
``#unset_field``, ``#empty_field``, ``#path``, ``#fields``, ``#types``, ``#close``) or as one
JSON object per line. Both are detected from the first bytes of the file.

Two labeled variants are understood:

* IoT-23 (``conn.log.labeled``): the last three columns ``tunnel_parents label
  detailed-label`` are separated by *three spaces* instead of tabs, in the ``#fields`` header
  and in every row.
* Stratosphere Slips: the label columns are tab-separated and the header says
  ``detailedlabel``.

The mapping into :class:`~iotsentry.schema.FlowBatch` is shared with
:mod:`iotsentry.capture.flowcsv`:

* ``ts``/``duration`` (``0`` when unset), ``id.orig_h``/``id.resp_h`` -> ``src_ip_*``/``dst_ip_*``,
  ``id.orig_p``/``id.resp_p`` -> ports (ICMP type/code), ``proto`` -> IP protocol number
  (``icmp`` from an IPv6 originator becomes 58, ``unknown_transport`` 0);
* ``orig_pkts``/``resp_pkts`` -> ``src_pkts``/``dst_pkts``; ``orig_ip_bytes``/``resp_ip_bytes``
  -> ``src_bytes``/``dst_bytes``; ``orig_bytes``/``resp_bytes`` -> ``src_payload``/
  ``dst_payload`` (unset counts are 0); ``orig_l2_addr``/``resp_l2_addr`` -> MACs when logged;
* string columns ``uid``, ``service``, ``conn_state``, ``history`` (unset -> ``""``), and when
  the log is labeled ``label`` (lower case; unset -> ``"-"``) and ``detailed_label`` (verbatim;
  unset -> ``"-"``);
* ``flow_id`` is the 0-based row number in the file, ``first_index`` is -1.

Timestamps are loaded as written, so relative ``ts`` values (some older test logs) stay
relative.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.capture.compressed import DECOMPRESSION_ERRORS, open_input, open_text, text_lines
from iotsentry.errors import InputError, LinesSkipped
from iotsentry.schema import PROTO_NUMBERS, FlowBatch, ip_from_str, mac_from_str

__all__ = ["iter_conn_log", "read_conn_log", "read_flows"]

# Zeek field name -> canonical name used below (labels are spelt three ways in the wild).
_ALIASES = {
    "detailed-label": "detailed_label",
    "detailedlabel": "detailed_label",
    "detailed_label": "detailed_label",
    "label": "label",
}

REQUIRED = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
"""Columns without which a file is not a conn log."""

_FLOAT_COLS = {"ts": "ts", "duration": "duration"}
_PORT_COLS = {"id.orig_p": "src_port", "id.resp_p": "dst_port"}
_COUNT_COLS = {
    "orig_pkts": "src_pkts",
    "resp_pkts": "dst_pkts",
    "orig_ip_bytes": "src_bytes",
    "resp_ip_bytes": "dst_bytes",
    "orig_bytes": "src_payload",
    "resp_bytes": "dst_payload",
}
_MAC_COLS = {"orig_l2_addr": "src_mac", "resp_l2_addr": "dst_mac"}
_STR_COLS = ("uid", "service", "conn_state", "history")

USED_COLUMNS = (
    *_FLOAT_COLS,
    "id.orig_h",
    "id.resp_h",
    *_PORT_COLS,
    "proto",
    *_COUNT_COLS,
    *_MAC_COLS,
    *_STR_COLS,
    "label",
    "detailed_label",
)
"""Every (canonical) column name the readers look at; others are ignored."""

_PROTO_EXTRA = {"unknown_transport": 0}
_SNIFF_BYTES = 4096


def canonical_name(name: str) -> str:
    """Canonical spelling of a conn-log column name (label columns have several)."""
    name = name.strip()
    return _ALIASES.get(name.lower(), name)


# ---------------------------------------------------------------------------------------------
# Column conversion shared by the TSV, JSON and CSV readers
# ---------------------------------------------------------------------------------------------


def _first_bad(arr: npt.NDArray[Any], check: Any) -> int:
    """Index of the first element for which ``check`` raises (slow path, errors only)."""
    for i, v in enumerate(arr):
        try:
            check(str(v))
        except (ValueError, OverflowError):
            return i
    return 0


def _strict_float(text: str) -> float:
    v = float(text)
    if not np.isfinite(v):
        raise ValueError("not finite")
    return v


def _strict_count(text: str) -> int:
    v = int(text)
    if v < 0 or v >= 2**64:
        raise ValueError("out of range")
    return v


def _strict_port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 0xFFFF:
        raise ValueError("out of range")
    return v


def _unset_mask(arr: npt.NDArray[Any], unset: frozenset[str]) -> npt.NDArray[np.bool_]:
    return np.isin(arr, list(unset))


TextColumn = Sequence[str] | npt.NDArray[Any]
"""One column of a chunk of log rows as text (a list, a tuple or an object array)."""


class RowError(InputError):
    """A value of one row cannot be converted: ``row`` is its index in the chunk."""

    def __init__(self, path: str | Path, row: int, line: int, problem: str) -> None:
        super().__init__(path, f"line {line}: {problem}")
        self.row = row
        self.line = line
        self.row_problem = problem


class _Ctx:
    """Where a chunk of rows came from, for error messages."""

    def __init__(self, path: str | Path, lines: npt.NDArray[np.int64], unset: frozenset[str]) -> None:
        self.path = path
        self.lines = lines
        self.unset = unset

    def fail(self, row: int, column: str, value: object) -> RowError:
        line = int(self.lines[row])
        return RowError(self.path, row, line, f"bad {column} value {str(value)[:60]!r}")


class Skipped:
    """Malformed lines of one log: counted, the first remembered, one warning at the end."""

    MAX_RETRIES = 32
    """Rows dropped one by one from a chunk before its rows are converted one at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.count = 0
        self.first: tuple[int, str] | None = None

    def add(self, line: int, problem: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = (line, problem)

    def warn(self) -> None:
        """One :class:`~iotsentry.errors.LinesSkipped` warning if any line was skipped."""
        if self.count and self.first is not None:
            warnings.warn(LinesSkipped(self.path, self.count, *self.first), stacklevel=4)

    def build(
        self,
        columns: Mapping[str, Sequence[str]],
        lines: Sequence[int],
        *,
        unset: frozenset[str],
        first_flow_id: int,
    ) -> FlowBatch:
        """:func:`build_flow_batch` of the rows whose values convert; the others are skipped."""
        cols = {k: np.asarray(v, dtype=object) for k, v in columns.items()}
        at = np.asarray(lines, dtype=np.int64)
        keep = np.arange(len(at))
        for _ in range(self.MAX_RETRIES):
            try:
                return build_flow_batch(
                    {k: v[keep] for k, v in cols.items()},
                    at[keep],
                    self.path,
                    unset=unset,
                    first_flow_id=first_flow_id,
                )
            except RowError as err:
                self.add(err.line, err.row_problem)
                keep = np.delete(keep, err.row)
        parts: list[FlowBatch] = []  # many bad rows: one row at a time
        for i in keep.tolist():
            try:
                parts.append(
                    build_flow_batch(
                        {k: v[i : i + 1] for k, v in cols.items()},
                        at[i : i + 1],
                        self.path,
                        unset=unset,
                        first_flow_id=first_flow_id + len(parts),
                    )
                )
            except RowError as err:
                self.add(err.line, err.row_problem)
        return (
            FlowBatch.concat(parts)
            if parts
            else build_flow_batch(
                {k: v[:0] for k, v in cols.items()},
                at[:0],
                self.path,
                unset=unset,
                first_flow_id=first_flow_id,
            )
        )


def _floats(values: TextColumn, name: str, ctx: _Ctx) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=str)
    miss = _unset_mask(arr, ctx.unset)
    if miss.any():
        arr = arr.copy()
        arr[miss] = "0"
    try:
        out = arr.astype(np.float64)
    except (ValueError, OverflowError):
        bad = _first_bad(arr, _strict_float)
        raise ctx.fail(bad, name, arr[bad]) from None
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ctx.fail(bad, name, arr[bad])
    return out


def _counts(values: TextColumn, name: str, ctx: _Ctx, limit: int | None = None) -> npt.NDArray[np.uint64]:
    arr = np.asarray(values, dtype=str)
    miss = _unset_mask(arr, ctx.unset)
    if miss.any():
        arr = arr.copy()
        arr[miss] = "0"
    try:
        out = arr.astype(np.uint64)
    except (ValueError, OverflowError):
        bad = _first_bad(arr, _strict_port if limit else _strict_count)
        raise ctx.fail(bad, name, arr[bad]) from None
    if limit is not None and len(out) and int(out.max()) > limit:
        bad = int(np.argmax(out > limit))
        raise ctx.fail(bad, name, arr[bad])
    return out


def _by_unique(
    values: TextColumn, name: str, ctx: _Ctx, convert: Any, width: int
) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """Convert each distinct value once; returns (per-unique results [k, width], inverse)."""
    arr = np.asarray(values, dtype=object)
    uniq, inv = np.unique(arr.astype(str), return_inverse=True)
    out = np.zeros((len(uniq), width), dtype=np.uint64)
    for k, text in enumerate(uniq):
        try:
            out[k] = convert(str(text))
        except (ValueError, KeyError):
            raise ctx.fail(int(np.argmax(inv == k)), name, text) from None
    return out, inv.reshape(-1)


def _proto_number(text: str) -> tuple[int]:
    t = text.strip().lower()
    if t in PROTO_NUMBERS:
        return (PROTO_NUMBERS[t],)
    if t in _PROTO_EXTRA:
        return (_PROTO_EXTRA[t],)
    if t.isdigit() and int(t) < 256:
        return (int(t),)
    raise ValueError(t)


def _strings(values: TextColumn, unset: frozenset[str], fill: str) -> npt.NDArray[np.object_]:
    arr = np.asarray(values, dtype=object)
    if len(arr):
        arr[np.isin(arr, list(unset))] = fill
    return arr


def build_flow_batch(
    columns: Mapping[str, TextColumn],
    lines: npt.NDArray[np.int64],
    path: str | Path,
    *,
    unset: frozenset[str],
    first_flow_id: int = 0,
) -> FlowBatch:
    """Turn text columns of conn-log rows into a :class:`FlowBatch`.

    Parameters
    ----------
    columns
        Canonical column name -> one text value per row (at least :data:`REQUIRED`).
    lines
        1-based line number in the file of each row (for error messages).
    path
        The file, for error messages.
    unset
        Tokens meaning "no value" (Zeek's ``-`` and ``(empty)``, or ``""`` in CSVs).
    first_flow_id
        ``flow_id`` of the first row (rows of a file are numbered consecutively).

    Raises
    ------
    InputError
        When a value cannot be converted; names the file and line.
    """
    n = len(lines)
    ctx = _Ctx(path, lines, unset)
    out: dict[str, np.ndarray[Any, Any]] = {
        "flow_id": np.arange(first_flow_id, first_flow_id + n, dtype=np.int64),
        "first_index": np.full(n, -1, dtype=np.int64),
    }
    for col, dst in _FLOAT_COLS.items():
        if col in columns:
            if col == "ts":
                ts_vals = np.asarray(columns[col], dtype=str)
                miss = _unset_mask(ts_vals, unset)
                if miss.any():
                    raise ctx.fail(int(np.argmax(miss)), "ts", ts_vals[int(np.argmax(miss))])
            out[dst] = _floats(columns[col], col, ctx)
    for col, dst in _PORT_COLS.items():
        out[dst] = _counts(columns[col], col, ctx, limit=0xFFFF)
    for col, dst in _COUNT_COLS.items():
        if col in columns:
            out[dst] = _counts(columns[col], col, ctx)
    for col, side in (("id.orig_h", "src"), ("id.resp_h", "dst")):
        pairs, inv = _by_unique(columns[col], col, ctx, ip_from_str, 2)
        out[f"{side}_ip_hi"] = pairs[inv, 0]
        out[f"{side}_ip_lo"] = pairs[inv, 1]
    protos, inv = _by_unique(columns["proto"], "proto", ctx, _proto_number, 1)
    proto = protos[inv, 0].astype(np.uint8)
    # Zeek logs ICMPv6 as "icmp"; the flow meter and PROTO_NUMBERS call it 58.
    v6 = ~((out["src_ip_hi"] == 0) & ((out["src_ip_lo"] >> np.uint64(32)) == np.uint64(0xFFFF)))
    proto[(proto == 1) & v6] = 58
    out["proto"] = proto
    for col, dst in _MAC_COLS.items():
        if col in columns:
            vals = np.asarray(columns[col], dtype=str)
            vals = np.where(_unset_mask(vals, unset), "00:00:00:00:00:00", vals)
            macs, inv = _by_unique(list(vals), col, ctx, lambda t: (mac_from_str(t),), 1)
            out[dst] = macs[inv, 0]
    for col in _STR_COLS:
        if col in columns:
            out[col] = _strings(columns[col], unset, "")
    if "label" in columns:
        labels = _strings(columns["label"], unset, "-")
        uniq, inv = np.unique(labels.astype(str), return_inverse=True)
        out["label"] = np.array([u.strip().lower() for u in uniq], dtype=object)[inv.reshape(-1)]
        if "detailed_label" in columns:
            out["detailed_label"] = _strings(columns["detailed_label"], unset, "-")
        else:
            out["detailed_label"] = np.full(n, "-", dtype=object)
    return FlowBatch(out)


def check_required(names: Sequence[str], path: str | Path) -> None:
    """Raise :class:`InputError` unless every column of :data:`REQUIRED` is present."""
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(path, f"not a Zeek conn log: missing column(s) {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# Sniffing
# ---------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """``"tsv"``, ``"json"``, ``"csv"``, ``"empty"`` or ``"other"`` from the first bytes (of the
    decompressed stream when the log is gzip, xz, bzip2 or zstd)."""
    kind: str | None = None
    try:
        f, kind = open_input(path)  # compressed logs are sniffed inside
        with f:
            head = f.read(_SNIFF_BYTES)
    except DECOMPRESSION_ERRORS as err:
        raise InputError(path, f"damaged {kind or 'compressed'} stream ({err})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not text:
        return "empty"
    if b"\x00" in head:
        return "other"
    if text.startswith(b"#separator") or text.startswith(b"#fields"):
        return "tsv"
    if text.startswith(b"{"):
        return "json"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    names = {canonical_name(x) for x in next(csv.reader([first]), [])}
    if all(c in names for c in REQUIRED):
        return "csv"
    return "other"


def _open_text(path: Path) -> io.TextIOWrapper:
    try:
        return open_text(path)
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------------------
# TSV
# ---------------------------------------------------------------------------------------------


def _header_value(line: str, key: str, sep: str) -> str:
    rest = line[len(key) + 1 :]
    return rest[1:] if rest[:1] in (sep, " ", "\t") else rest


def _iter_tsv(path: Path, chunk_rows: int) -> Iterator[FlowBatch]:
    sep, unset_tok, empty_tok = "\t", "-", "(empty)"
    fields: list[str] | None = None
    spaced = False  # IoT-23: label columns separated by three spaces
    rows: list[str] = []
    lines: list[int] = []
    next_id = 0

    skips = Skipped(path)

    def flush() -> FlowBatch:
        nonlocal next_id
        assert fields is not None
        text = [r.replace("   ", sep) for r in rows] if spaced else rows
        split = [r.split(sep) for r in text]
        width = len(fields)
        lens = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        at = lines
        bad = np.nonzero(lens != width)[0]
        if len(bad):  # a cut or garbled line: skipped, counted
            for i in bad.tolist():
                skips.add(lines[i], f"{lens[i]} columns, expected {width}")
            good = np.nonzero(lens == width)[0].tolist()
            split, at = [split[i] for i in good], [lines[i] for i in good]
        cols = dict(zip(fields, zip(*split, strict=True), strict=True)) if split else {f: () for f in fields}
        used = {k: v for k, v in cols.items() if k in USED_COLUMNS}
        batch = skips.build(used, at, unset=frozenset({unset_tok, empty_tok, ""}), first_flow_id=next_id)
        next_id += len(batch)
        rows.clear()
        lines.clear()
        return batch

    with _open_text(path) as f:
        for lineno, raw in text_lines(f, path):
            line = raw.rstrip("\r\n")
            if not line:
                continue
            if line[0] == "#":
                if line.startswith("#separator"):
                    tok = line[len("#separator") :].strip()
                    try:
                        sep = tok.encode("ascii").decode("unicode_escape") if tok else "\t"
                    except UnicodeError:
                        raise InputError(path, f"line {lineno}: bad #separator {tok!r}") from None
                    if len(sep) != 1:
                        raise InputError(path, f"line {lineno}: bad #separator {tok!r}")
                elif line.startswith("#unset_field"):
                    unset_tok = _header_value(line, "#unset_field", sep)
                elif line.startswith("#empty_field"):
                    empty_tok = _header_value(line, "#empty_field", sep)
                elif line.startswith("#path"):
                    kind = _header_value(line, "#path", sep).strip()
                    if kind and kind != "conn":
                        raise InputError(path, f"line {lineno}: a Zeek {kind!r} log, not a conn log")
                elif line.startswith("#fields"):
                    if rows:
                        yield flush()
                    body = _header_value(line, "#fields", sep)
                    spaced = "   " in body
                    if spaced:
                        body = body.replace("   ", sep)
                    fields = [canonical_name(x) for x in body.split(sep)]
                    check_required(fields, path)
                continue
            if fields is None:
                raise InputError(path, f"line {lineno}: data row before the #fields header")
            rows.append(line)
            lines.append(lineno)
            if len(rows) >= chunk_rows:
                yield flush()
    if rows:
        yield flush()
    skips.warn()


# ---------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------


def _json_ts(value: Any) -> str:
    """Zeek JSON ``ts`` is epoch seconds, or ISO 8601 with ``JSON::TimestampFormat``."""
    if isinstance(value, str) and ("T" in value or value.count("-") >= 2):
        return repr(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    return str(value)


def _json_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(empty)"
    return str(value)


def _iter_json(path: Path, chunk_rows: int) -> Iterator[FlowBatch]:
    cols: dict[str, list[str]] = {c: [] for c in USED_COLUMNS}
    lines: list[int] = []
    next_id = 0
    checked = False
    labeled = False  # label columns are kept only when the log has them

    skips = Skipped(path)

    def flush() -> FlowBatch:
        nonlocal next_id
        use = {k: v for k, v in cols.items() if labeled or k not in ("label", "detailed_label")}
        batch = skips.build(use, lines, unset=frozenset({"-", "(empty)", ""}), first_flow_id=next_id)
        next_id += len(batch)
        for v in cols.values():
            v.clear()
        lines.clear()
        return batch

    with _open_text(path) as f:
        for lineno, raw in text_lines(f, path):
            line = raw.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                skips.add(lineno, f"not valid JSON ({err.msg})")
                continue
            if not isinstance(rec, dict):
                skips.add(lineno, "not a JSON object")
                continue
            row = {canonical_name(k): v for k, v in rec.items()}
            if not checked:
                check_required(list(row), path)
                if not row.keys() & {"conn_state", "orig_pkts", "resp_pkts", "history"}:
                    raise InputError(path, "not a Zeek conn log: no conn_state/orig_pkts/history fields")
                checked = True
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                skips.add(lineno, f"missing field(s) {', '.join(missing)}")
                continue
            try:
                ts = _json_ts(row["ts"])
            except (ValueError, TypeError):
                skips.add(lineno, f"bad ts value {str(row['ts'])[:60]!r}")
                continue
            labeled = labeled or "label" in row
            cols["ts"].append(ts)
            for c in USED_COLUMNS:
                if c != "ts":
                    cols[c].append(_json_text(row.get(c)))
            lines.append(lineno)
            if len(lines) >= chunk_rows:
                yield flush()
    if lines:
        yield flush()
    skips.warn()


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def iter_conn_log(path: str | Path, *, chunk_rows: int = 100_000) -> Iterator[FlowBatch]:
    """Read a Zeek conn log (TSV or JSON lines, auto-detected) in batches of ``chunk_rows``.

    Parameters
    ----------
    path
        The log file (``conn.log``, ``conn.log.labeled``, ...).
    chunk_rows
        Maximum rows per yielded batch. ``flow_id`` counts rows across the whole file.

    Yields
    ------
    FlowBatch
        Consecutive rows of the file (see the module docstring for the mapping).

    Raises
    ------
    InputError
        If the file is not a conn log, or a row is damaged (the message gives the line).
    """
    p = Path(path)
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    kind = _sniff(p)
    if kind == "empty":
        return
    if kind == "tsv":
        yield from _iter_tsv(p, chunk_rows)
    elif kind == "json":
        yield from _iter_json(p, chunk_rows)
    else:
        raise InputError(p, "not a Zeek conn log (no '#separator' header and not JSON lines)")


def read_conn_log(path: str | Path) -> FlowBatch:
    """Read a whole Zeek conn log (TSV or JSON lines) into one :class:`FlowBatch`.

    An empty file gives an empty batch. See :func:`iter_conn_log` for errors.
    """
    return FlowBatch.concat(list(iter_conn_log(path)))


def read_flows(path: str | Path) -> FlowBatch:
    """Read flows from a Zeek conn log (TSV or JSON) or a labeled flow CSV, sniffing the format.

    Raises
    ------
    InputError
        ``not a Zeek conn log or flow CSV`` for anything else, or a damaged row.
    """
    p = Path(path)
    kind = _sniff(p)
    if kind == "empty":
        return FlowBatch.empty()
    if kind in ("tsv", "json"):
        return read_conn_log(p)
    if kind == "csv":
        from iotsentry.capture.flowcsv import read_flow_csv

        return read_flow_csv(p)
    raise InputError(p, "not a Zeek conn log or flow CSV")
