"""NetFlow v9 / IPFIX templates: parsing of template sets and a bounded template cache.

A template (RFC 3954 section 5.2, RFC 7011 section 3.4.1) lists the fields of the data
records that refer to it. :func:`parse_template_set` reads template and options-template
sets of both protocols into :class:`Template` objects; :class:`TemplateCache` keeps them
keyed by ``(exporter, observation domain / source id, template id)``.

For a template whose fields all have a fixed length, :attr:`Template.dtype` is a numpy
structured dtype that maps a run of data records directly (``np.frombuffer``); templates
with IPFIX variable-length fields (length 65535) are decoded record by record.

Field keys are ``(enterprise number, element id)``; NetFlow v9 field types are the same
numbers as the IANA IPFIX information elements below 128 (and for the ones decoded here),
so both protocols share one table. Reverse-direction elements of RFC 5103 biflows use the
enterprise number :data:`REVERSE_PEN`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "REVERSE_PEN",
    "VARLEN",
    "FieldSpec",
    "Template",
    "TemplateCache",
    "TemplateError",
    "parse_template_set",
]

REVERSE_PEN = 29305
"""Private enterprise number of RFC 5103 reverse information elements."""

VARLEN = 65535
"""Field length announcing an IPFIX variable-length field."""

# IANA IPFIX information elements (and NetFlow v9 field types) used by the decoder.
IE_NAMES: dict[int, str] = {
    1: "octetDeltaCount",
    2: "packetDeltaCount",
    4: "protocolIdentifier",
    6: "tcpControlBits",
    7: "sourceTransportPort",
    8: "sourceIPv4Address",
    11: "destinationTransportPort",
    12: "destinationIPv4Address",
    21: "flowEndSysUpTime",
    22: "flowStartSysUpTime",
    27: "sourceIPv6Address",
    28: "destinationIPv6Address",
    32: "icmpTypeCodeIPv4",
    56: "sourceMacAddress",
    57: "postDestinationMacAddress",
    80: "destinationMacAddress",
    81: "postSourceMacAddress",
    85: "octetTotalCount",
    86: "packetTotalCount",
    139: "icmpTypeCodeIPv6",
    150: "flowStartSeconds",
    151: "flowEndSeconds",
    152: "flowStartMilliseconds",
    153: "flowEndMilliseconds",
    154: "flowStartMicroseconds",
    155: "flowEndMicroseconds",
    156: "flowStartNanoseconds",
    157: "flowEndNanoseconds",
    158: "flowStartDeltaMicroseconds",
    159: "flowEndDeltaMicroseconds",
    160: "systemInitTimeMilliseconds",
    161: "flowDurationMilliseconds",
    162: "flowDurationMicroseconds",
    176: "icmpTypeIPv4",
    177: "icmpCodeIPv4",
    178: "icmpTypeIPv6",
    179: "icmpCodeIPv6",
}
REVERSE_NAMES: dict[int, str] = {
    1: "reverseOctetDeltaCount",
    2: "reversePacketDeltaCount",
    6: "reverseTcpControlBits",
    85: "reverseOctetTotalCount",
    86: "reversePacketTotalCount",
}
ADDRESS_IES = frozenset({8, 12, 27, 28, 56, 57, 80, 81})
"""Elements holding addresses (octet arrays) rather than unsigned integers."""


class TemplateError(ValueError):
    """A template set cannot be parsed (the message is one line)."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a template: element id, length in bytes (65535: variable), enterprise."""

    ie: int
    length: int
    enterprise: int = 0

    @property
    def name(self) -> str | None:
        """Name of the element when the decoder uses it, else ``None``."""
        if self.enterprise == 0:
            return IE_NAMES.get(self.ie)
        if self.enterprise == REVERSE_PEN:
            return REVERSE_NAMES.get(self.ie)
        return None


@dataclass(slots=True)
class Template:
    """A (data or options) template.

    ``scope_count`` is the number of leading scope fields (options templates only);
    ``options`` marks an options template, whose data records describe the exporter, not
    flows. ``dtype`` is ``None`` when a field has variable length.
    """

    template_id: int
    fields: tuple[FieldSpec, ...]
    options: bool = False
    scope_count: int = 0
    dtype: np.dtype[np.void] | None = field(init=False, default=None)
    min_length: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        var = any(f.length == VARLEN for f in self.fields)
        self.min_length = sum(1 if f.length == VARLEN else f.length for f in self.fields)
        if not var:
            self.dtype = _record_dtype(self.fields)

    @property
    def fixed(self) -> bool:
        """Whether every record has the same length (numpy-decodable)."""
        return self.dtype is not None


def _record_dtype(fields: tuple[FieldSpec, ...]) -> np.dtype[np.void]:
    names: list[str] = []
    formats: list[object] = []
    offsets: list[int] = []
    off = 0
    for k, f in enumerate(fields):
        names.append(f"f{k}")
        if f.length in (1, 2, 4, 8) and f.ie not in ADDRESS_IES:
            formats.append(f">u{f.length}")
        else:
            formats.append((np.uint8, (f.length,)))
        offsets.append(off)
        off += f.length
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})


def _field_specs(body: bytes, pos: int, count: int, ipfix: bool) -> tuple[tuple[FieldSpec, ...], int]:
    out: list[FieldSpec] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise TemplateError("template record cut short")
        ie, length = struct.unpack_from(">HH", body, pos)
        pos += 4
        pen = 0
        if ipfix and ie & 0x8000:
            if pos + 4 > len(body):
                raise TemplateError("template record cut short in an enterprise number")
            (pen,) = struct.unpack_from(">I", body, pos)
            pos += 4
            ie &= 0x7FFF
        if length == 0:
            raise TemplateError(f"template field {ie} has length 0")
        if length == VARLEN and not ipfix:
            raise TemplateError(f"NetFlow v9 field {ie} has variable length")
        out.append(FieldSpec(ie, length, pen))
    return tuple(out), pos


def parse_template_set(body: bytes, set_id: int, ipfix: bool) -> list[Template]:
    """Parse the body (after the 4-byte set header) of a template or options-template set.

    Parameters
    ----------
    body
        Set contents, possibly followed by padding.
    set_id
        0 / 1 (NetFlow v9 template / options template) or 2 / 3 (IPFIX).
    ipfix
        IPFIX encoding (enterprise bit, variable-length fields, withdrawals).

    Returns
    -------
    list of Template
        In set order. An IPFIX withdrawal is a template with no fields.

    Raises
    ------
    TemplateError
        A template record does not fit in the set or declares an impossible field.
    """
    options = set_id in (1, 3)
    out: list[Template] = []
    pos = 0
    n = len(body)
    while True:
        if n - pos < 4 or not any(body[pos:]):  # padding (RFC 7011 3.3.1, RFC 3954 5.2)
            return out
        if not options:
            tid, count = struct.unpack_from(">HH", body, pos)
            pos += 4
            if count == 0:  # IPFIX template withdrawal
                out.append(Template(tid, ()))
                continue
            fields, pos = _field_specs(body, pos, count, ipfix)
            scope = 0
        elif ipfix:
            if n - pos < 6:
                tid, count = struct.unpack_from(">HH", body, pos)
                if count == 0:
                    out.append(Template(tid, (), options=True))
                    pos += 4
                    continue
                raise TemplateError("options template record cut short")
            tid, count, scope = struct.unpack_from(">HHH", body, pos)
            pos += 6
            if count == 0:
                out.append(Template(tid, (), options=True))
                continue
            if scope == 0 or scope > count:
                raise TemplateError(f"options template {tid}: bad scope field count {scope}")
            fields, pos = _field_specs(body, pos, count, ipfix)
        else:
            if n - pos < 6:
                raise TemplateError("options template record cut short")
            tid, scope_len, opt_len = struct.unpack_from(">HHH", body, pos)
            pos += 6
            if scope_len % 4 or opt_len % 4 or pos + scope_len + opt_len > n:
                raise TemplateError(f"options template {tid}: bad scope/option lengths")
            scope = scope_len // 4
            fields, pos = _field_specs(body, pos, (scope_len + opt_len) // 4, ipfix)
        if tid < 256:
            raise TemplateError(f"template id {tid} is reserved (must be >= 256)")
        out.append(Template(tid, fields, options=options, scope_count=scope))


TemplateKey = tuple[Hashable, int, int]
"""(exporter, observation domain / source id, template id)."""


class TemplateCache:
    """Templates by ``(exporter, domain, template id)``, least recently used evicted first.

    Parameters
    ----------
    max_templates
        Bound on the number of templates held (exporters that restart with a new source
        port leave stale entries behind; they age out).
    """

    def __init__(self, max_templates: int = 4096) -> None:
        self.max_templates = max_templates
        self._items: OrderedDict[TemplateKey, Template] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: TemplateKey) -> Template | None:
        """The template for ``key``, or ``None`` when it was never announced (or withdrawn)."""
        t = self._items.get(key)
        if t is not None:
            self._items.move_to_end(key)
        return t

    def put(self, key: TemplateKey, template: Template) -> None:
        """Store (or replace) a template; an empty template withdraws ``key``."""
        if not template.fields:
            self._items.pop(key, None)
            return
        self._items[key] = template
        self._items.move_to_end(key)
        while len(self._items) > self.max_templates:
            self._items.popitem(last=False)

    def withdraw_all(self, exporter: Hashable, domain: int, options: bool) -> None:
        """Remove every (options) template of one exporter and domain (IPFIX withdraw-all)."""
        drop = [
            k for k, t in self._items.items() if k[0] == exporter and k[1] == domain and t.options == options
        ]
        for k in drop:
            del self._items[k]
