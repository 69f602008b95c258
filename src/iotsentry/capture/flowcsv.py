"""Read labeled flow CSVs (Zeek conn columns as comma-separated text, e.g. IoT-23's) into flows.

The expected file has a header row with Zeek conn.log column names
(``ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,...,label,detailed-label``) and one
flow per row; empty fields (and Zeek's ``-``/``(empty)``, if left in) mean "unset". The
mapping into :class:`~iotsentry.schema.FlowBatch` is the one of
:mod:`iotsentry.capture.zeek` (``label`` lower case, ``detailed_label`` verbatim with ``-``
when none, ``flow_id`` = 0-based row number, ``first_index`` = -1).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from iotsentry.capture.compressed import DECOMPRESSION_ERRORS, open_text, text_lines
from iotsentry.capture.zeek import USED_COLUMNS, Skipped, canonical_name, check_required
from iotsentry.errors import InputError
from iotsentry.schema import FlowBatch

__all__ = ["iter_flow_csv", "read_flow_csv"]

_UNSET = frozenset({"", "-", "(empty)"})


def iter_flow_csv(path: str | Path, *, chunk_rows: int = 100_000) -> Iterator[FlowBatch]:
    """Read a flow CSV in batches of at most ``chunk_rows`` rows.

    Parameters
    ----------
    path
        The CSV file.
    chunk_rows
        Maximum rows per yielded batch; ``flow_id`` counts rows across the whole file.

    Yields
    ------
    FlowBatch
        Consecutive rows of the file.

    Raises
    ------
    InputError
        If the header lacks the conn columns, or a row is damaged (the message gives the line).
    """
    p = Path(path)
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    try:
        with open_text(p) as head:  # compressed CSVs are read inside
            binary = "\x00" in head.read(4096)
        f = open_text(p)
    except DECOMPRESSION_ERRORS as err:
        raise InputError(p, f"damaged compressed stream ({err})") from None
    except OSError as err:
        raise InputError(p, f"cannot read: {err.strerror or err}") from None
    with f:
        if binary:
            raise InputError(p, "not a flow CSV (binary data)")
        reader = csv.reader(line for _, line in text_lines(f, p))
        header: list[str] | None = None
        rows: list[list[str]] = []
        lines: list[int] = []
        next_id = 0

        skips = Skipped(p)

        def flush() -> FlowBatch:
            nonlocal next_id
            assert header is not None
            width = len(header)
            good = [i for i, r in enumerate(rows) if len(r) == width]
            for i, r in enumerate(rows):
                if len(r) != width:  # a cut or garbled line: skipped, counted
                    skips.add(lines[i], f"{len(r)} columns, expected {width}")
            kept = [rows[i] for i in good]
            cols = (
                dict(zip(header, zip(*kept, strict=True), strict=True)) if kept else {h: () for h in header}
            )
            used = {k: v for k, v in cols.items() if k in USED_COLUMNS}
            batch = skips.build(used, [lines[i] for i in good], unset=_UNSET, first_flow_id=next_id)
            next_id += len(batch)
            rows.clear()
            lines.clear()
            return batch

        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if header is None:
                    header = [canonical_name(x) for x in row]
                    if header and header[0].startswith("\ufeff"):
                        header[0] = header[0][1:]
                    if len(set(header)) != len(header):
                        raise InputError(p, "not a flow CSV: repeated column names in the header")
                    try:
                        check_required(header, p)
                    except InputError:
                        raise InputError(p, "not a flow CSV: the header lacks Zeek conn columns") from None
                    continue
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) >= chunk_rows:
                    yield flush()
        except csv.Error as err:
            raise InputError(p, f"line {reader.line_num}: {err}") from None
        if rows:
            yield flush()
        skips.warn()


def read_flow_csv(path: str | Path) -> FlowBatch:
    """Read a whole labeled flow CSV into one :class:`FlowBatch` (empty file -> empty batch)."""
    return FlowBatch.concat(list(iter_flow_csv(path)))
