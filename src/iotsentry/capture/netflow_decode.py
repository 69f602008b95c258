"""Decoder of NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) export datagrams.

:class:`NetFlowDecoder` is the in-memory part of the collector: :meth:`~NetFlowDecoder.feed`
takes one datagram and the exporter it came from, parses headers and sets (templates are
stored at once, data sets are queued), and :meth:`~NetFlowDecoder.flush` converts every
queued record into one :class:`~iotsentry.schema.FlowBatch` (columns as in
:mod:`iotsentry.capture.netflow_records`), in arrival order.

Data sets of fixed-length templates are queued as bytes and decoded together at flush time:
all sets of one template are joined and mapped with a single ``np.frombuffer`` on the
template's structured dtype, so the per-record cost is numpy's, not Python's. Templates
with IPFIX variable-length fields are decoded record by record.

Data sets whose template is unknown are held (at most ``max_pending_sets`` sets /
``max_pending_bytes`` bytes, each at most ``max_pending_age`` seconds) and decoded when the
template arrives; beyond the bound the oldest are dropped and counted
(:attr:`NetFlowStats.dropped_sets`). Options data records are counted, not turned into
flows; ``systemInitTimeMilliseconds`` found in them anchors IPFIX uptime timestamps.

A malformed datagram never raises: it is counted (:attr:`NetFlowStats.malformed`) and a
one-line reason is kept in :attr:`NetFlowDecoder.errors`; sets before the damage are used.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from iotsentry.capture.netflow_records import flow_columns
from iotsentry.capture.netflow_templates import (
    VARLEN,
    FieldSpec,
    Template,
    TemplateCache,
    TemplateError,
    parse_template_set,
)
from iotsentry.schema import FlowBatch

__all__ = ["V5_TEMPLATE", "NetFlowDecoder", "NetFlowStats"]

log = logging.getLogger(__name__)

V5_HEADER = struct.Struct(">HHIIIIBBH")
V5_RECORD_LEN = 48
V9_HEADER = struct.Struct(">HHIIII")
IPFIX_HEADER = struct.Struct(">HHIII")
_PAD = 210  # IPFIX paddingOctets

V5_TEMPLATE = Template(
    0,
    tuple(
        FieldSpec(ie, ln)
        for ie, ln in (
            (8, 4), (12, 4), (15, 4), (10, 2), (14, 2), (2, 4), (1, 4), (22, 4), (21, 4),
            (7, 2), (11, 2), (_PAD, 1), (6, 1), (4, 1), (5, 1), (16, 2), (17, 2), (9, 1),
            (13, 1), (_PAD, 2),
        )
    ),
)  # fmt: skip
"""The fixed NetFlow v5 record, expressed as a template (48 bytes)."""


class Malformed(ValueError):
    """A datagram (or one of its sets) is not valid; the message is one line."""


@dataclass(slots=True)
class NetFlowStats:
    """Counters of a decoder (cumulative)."""

    datagrams: int = 0
    v5: int = 0
    v9: int = 0
    ipfix: int = 0
    flows: int = 0
    options_records: int = 0
    templates_received: int = 0
    malformed: int = 0
    dropped_sets: int = 0
    pending_sets: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dictionary."""
        return asdict(self)


Ctx = tuple[int, float, int, Hashable]
"""(version, export time, header uptime ms, key of the exporter's systemInitTime)."""


def _unpack_fields(t: Template, arr: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Element name -> uint64 column (IPv6 as _hi/_lo) of records mapped on ``t.dtype``."""
    raw: dict[str, Any] = {}
    for k, f in enumerate(t.fields):
        name = f.name
        if name is None:
            continue
        col = arr[f"f{k}"]
        if col.ndim == 1:
            raw[name] = col.astype(np.uint64)
        elif f.length == 16:
            pair = np.ascontiguousarray(col).view(">u8").reshape(-1, 2).astype(np.uint64)
            raw[f"{name}_hi"], raw[f"{name}_lo"] = pair[:, 0], pair[:, 1]
        elif f.length <= 8:
            weights = np.uint64(256) ** np.arange(f.length - 1, -1, -1, dtype=np.uint64)
            raw[name] = (col.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return raw


def _varlen_records(t: Template, body: bytes) -> tuple[dict[str, Any], int]:
    """Decode records of a template with variable-length fields, one by one."""
    cols: dict[str, list[int]] = {}
    n = 0
    pos = 0
    end = len(body)
    while end - pos >= t.min_length and any(body[pos:]):
        for f in t.fields:
            ln = f.length
            if ln == VARLEN:
                if pos >= end:
                    raise Malformed(f"template {t.template_id}: variable-length field past the set end")
                ln = body[pos]
                pos += 1
                if ln == 255:
                    if pos + 2 > end:
                        raise Malformed(f"template {t.template_id}: cut long variable-length header")
                    ln = int.from_bytes(body[pos : pos + 2], "big")
                    pos += 2
            if pos + ln > end:
                raise Malformed(f"template {t.template_id}: field {f.ie} overruns the set")
            name = f.name
            if name is not None and ln:
                v = int.from_bytes(body[pos : pos + ln], "big")
                if ln == 16:
                    cols.setdefault(f"{name}_hi", [0] * n).append(v >> 64)
                    cols.setdefault(f"{name}_lo", [0] * n).append(v & 0xFFFF_FFFF_FFFF_FFFF)
                elif ln <= 8:
                    cols.setdefault(name, [0] * n).append(v)
            pos += ln
        n += 1
        for c in cols.values():  # a zero-length value leaves a gap: fill it with 0
            if len(c) < n:
                c.append(0)
    return {k: np.asarray(v, dtype=np.uint64) for k, v in cols.items()}, n


class NetFlowDecoder:
    """Stateful decoder of NetFlow v5/v9 and IPFIX datagrams (the collector's fake source).

    Parameters
    ----------
    max_templates
        Bound of the template cache.
    max_pending_sets, max_pending_bytes, max_pending_age
        Bounds on data sets held while their template is unknown (count, bytes, seconds).
    max_errors
        How many malformed-datagram reasons :attr:`errors` keeps.
    """

    def __init__(
        self,
        *,
        max_templates: int = 4096,
        max_pending_sets: int = 1024,
        max_pending_bytes: int = 1 << 20,
        max_pending_age: float = 300.0,
        max_errors: int = 100,
    ) -> None:
        self.templates = TemplateCache(max_templates)
        self.stats = NetFlowStats()
        self.errors: deque[str] = deque(maxlen=max_errors)
        self.max_pending_sets = max_pending_sets
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_age = max_pending_age
        self._pending: deque[tuple[float, tuple[Hashable, int, int], bytes, Ctx]] = deque()
        self._pending_bytes = 0
        self._init: dict[Hashable, float] = {}
        self._fixed: list[tuple[Template, bytes, int, Ctx, int]] = []
        self._var: list[tuple[dict[str, Any], int, Ctx, int]] = []
        self._seq = 0
        self._next_id = 0

    # ------------------------------------------------------------------------------ input

    def feed(self, data: bytes, exporter: Hashable = "local") -> int:
        """Decode one export datagram from ``exporter``; returns the flow records it queued.

        Never raises for bad input: a malformed datagram is counted and described in
        :attr:`errors` (``"<exporter>: <reason>"``).
        """
        before = self._seq
        self.stats.datagrams += 1
        try:
            if len(data) < 4:
                raise Malformed(f"datagram of {len(data)} bytes is shorter than any NetFlow header")
            (version,) = struct.unpack_from(">H", data)
            if version == 5:
                self._v5(data, exporter)
            elif version in (9, 10):
                self._v9_ipfix(data, exporter, version)
            else:
                raise Malformed(f"unsupported NetFlow version {version}")
        except (Malformed, TemplateError) as err:
            self.stats.malformed += 1
            msg = f"{exporter}: {err}"
            self.errors.append(msg)
            log.warning("malformed NetFlow datagram from %s", msg)
        return self._seq - before

    @property
    def last_error(self) -> str | None:
        """The most recent malformed-datagram reason, if any."""
        return self.errors[-1] if self.errors else None

    def _v5(self, data: bytes, exporter: Hashable) -> None:
        if len(data) < V5_HEADER.size:
            raise Malformed(f"NetFlow v5 datagram of {len(data)} bytes is shorter than its 24-byte header")
        _v, count, uptime, secs, nsecs, _seq, _et, _ei, _samp = V5_HEADER.unpack_from(data)
        need = V5_HEADER.size + count * V5_RECORD_LEN
        if len(data) < need:
            raise Malformed(
                f"NetFlow v5 datagram truncated: {count} records need {need} bytes, got {len(data)}"
            )
        self.stats.v5 += 1
        if count:
            ctx: Ctx = (5, secs + nsecs / 1e9, uptime, None)
            self._queue(V5_TEMPLATE, data[V5_HEADER.size : need], ctx)

    def _v9_ipfix(self, data: bytes, exporter: Hashable, version: int) -> None:
        ipfix = version == 10
        if ipfix:
            if len(data) < IPFIX_HEADER.size:
                raise Malformed(f"IPFIX message of {len(data)} bytes is shorter than its 16-byte header")
            _v, length, export, _seq, domain = IPFIX_HEADER.unpack_from(data)
            if length < IPFIX_HEADER.size:
                raise Malformed(f"IPFIX header length {length} is shorter than the header")
            pos, end, uptime = IPFIX_HEADER.size, min(length, len(data)), 0
            self.stats.ipfix += 1
        else:
            if len(data) < V9_HEADER.size:
                raise Malformed(
                    f"NetFlow v9 datagram of {len(data)} bytes is shorter than its 20-byte header"
                )
            _v, _count, uptime, export, _seq, domain = V9_HEADER.unpack_from(data)
            pos, end, length = V9_HEADER.size, len(data), len(data)
            self.stats.v9 += 1
        ctx: Ctx = (version, float(export), uptime, (exporter, domain))
        tmpl_ids, opt_ids = (2, 3) if ipfix else (0, 1)
        while end - pos >= 4:
            set_id, set_len = struct.unpack_from(">HH", data, pos)
            if set_len < 4 or pos + set_len > end:
                raise Malformed(
                    f"set {set_id} at byte {pos} claims {set_len} bytes but only {end - pos} remain"
                )
            body = data[pos + 4 : pos + set_len]
            pos += set_len
            if set_id in (tmpl_ids, opt_ids):
                self._templates(body, set_id, ipfix, exporter, domain)
            elif set_id >= 256:
                self._data(body, (exporter, domain, set_id), ctx)
            else:
                raise Malformed(f"reserved set id {set_id}")
        if ipfix and len(data) < length:
            raise Malformed(f"IPFIX message truncated: header says {length} bytes, got {len(data)}")

    def _templates(self, body: bytes, set_id: int, ipfix: bool, exporter: Hashable, domain: int) -> None:
        for t in parse_template_set(body, set_id, ipfix):
            self.stats.templates_received += 1
            if not t.fields and t.template_id in (2, 3):
                self.templates.withdraw_all(exporter, domain, t.template_id == 3)
                continue
            key = (exporter, domain, t.template_id)
            self.templates.put(key, t)
            if t.fields:
                self._release(key)

    def _data(self, body: bytes, key: tuple[Hashable, int, int], ctx: Ctx) -> None:
        t = self.templates.get(key)
        if t is None:
            self._hold(key, body, ctx)
        elif t.options:
            self._options(t, body, key)
        else:
            self._queue(t, body, ctx)

    def _queue(self, t: Template, body: bytes, ctx: Ctx) -> None:
        if t.dtype is not None:
            size = t.dtype.itemsize
            n = len(body) // size
            if n:
                self._fixed.append((t, body[: n * size], n, ctx, self._seq))
        else:
            raw, n = _varlen_records(t, body)
            if n:
                self._var.append((raw, n, ctx, self._seq))
        self._seq += n
        self.stats.flows += n

    def _options(self, t: Template, body: bytes, key: tuple[Hashable, int, int]) -> None:
        if t.dtype is not None:
            n = len(body) // t.dtype.itemsize
            arr = np.frombuffer(body, dtype=t.dtype, count=n)
            raw = _unpack_fields(t, arr)
        else:
            raw, n = _varlen_records(t, body)
        self.stats.options_records += n
        init = raw.get("systemInitTimeMilliseconds")
        if init is not None and n:
            self._init[(key[0], key[1])] = float(init[-1]) / 1000.0

    # -------------------------------------------------------------- unknown templates

    def _hold(self, key: tuple[Hashable, int, int], body: bytes, ctx: Ctx) -> None:
        now = time.monotonic()
        self._pending.append((now, key, body, ctx))
        self._pending_bytes += len(body)
        while self._pending and (
            len(self._pending) > self.max_pending_sets
            or self._pending_bytes > self.max_pending_bytes
            or now - self._pending[0][0] > self.max_pending_age
        ):
            _t, _k, old, _c = self._pending.popleft()
            self._pending_bytes -= len(old)
            self.stats.dropped_sets += 1
        self.stats.pending_sets = len(self._pending)

    def _release(self, key: tuple[Hashable, int, int]) -> None:
        if not self._pending:
            return
        keep: deque[tuple[float, tuple[Hashable, int, int], bytes, Ctx]] = deque()
        ready: list[tuple[bytes, Ctx]] = []
        for item in self._pending:
            if item[1] == key:
                ready.append((item[2], item[3]))
                self._pending_bytes -= len(item[2])
            else:
                keep.append(item)
        self._pending = keep
        self.stats.pending_sets = len(keep)
        for body, ctx in ready:
            self._data(body, key, ctx)

    # ----------------------------------------------------------------------------- output

    def pending_records(self) -> int:
        """Flow records queued since the last :meth:`flush`."""
        return sum(r[2] for r in self._fixed) + sum(r[1] for r in self._var)

    def flush(self) -> FlowBatch:
        """Every record queued since the last call, as one batch in arrival order."""
        parts: list[tuple[dict[str, Any], int, list[Ctx], list[int], list[int]]] = []
        groups: dict[int, list[tuple[Template, bytes, int, Ctx, int]]] = {}
        for run in self._fixed:
            groups.setdefault(id(run[0]), []).append(run)
        for runs in groups.values():
            t = runs[0][0]
            assert t.dtype is not None
            joined = b"".join(r[1] for r in runs)
            arr = np.frombuffer(joined, dtype=t.dtype)
            parts.append((_unpack_fields(t, arr), len(arr), [r[3] for r in runs], [r[2] for r in runs],
                          [r[4] for r in runs]))  # fmt: skip
        for raw, n, ctx, seq in self._var:
            parts.append((raw, n, [ctx], [n], [seq]))
        self._fixed, self._var = [], []
        if not parts:
            return FlowBatch.empty()
        batches: list[FlowBatch] = []
        order: list[np.ndarray[Any, Any]] = []
        for raw, n, ctxs, counts, seqs in parts:
            reps = np.asarray(counts)
            version = np.repeat(np.asarray([c[0] for c in ctxs], dtype=np.uint16), reps)
            export = np.repeat(np.asarray([c[1] for c in ctxs], dtype=np.float64), reps)
            uptime = np.repeat(np.asarray([c[2] for c in ctxs], dtype=np.uint64), reps)
            init = np.repeat(np.asarray([self._init.get(c[3], np.nan) for c in ctxs]), reps)
            batches.append(FlowBatch(flow_columns(raw, n, version, export, uptime, init)))
            starts = np.repeat(np.asarray(seqs, dtype=np.int64), reps)
            offsets = np.arange(n) - np.repeat(np.cumsum(reps) - reps, reps)
            order.append(starts + offsets)
        batch = FlowBatch.concat(batches)
        if len(batches) > 1:
            batch = batch.take(np.argsort(np.concatenate(order), kind="stable"))
        batch.columns["flow_id"] = np.arange(self._next_id, self._next_id + len(batch), dtype=np.int64)
        self._next_id += len(batch)
        return batch
