"""The focused DNS and TLS parsers give dpkt's answers: same fields, and failure exactly where
dpkt fails, on real payloads, on every truncation and on seeded random damage of them."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import DATA
from iotsentry.capture import app_wire
from iotsentry.capture.appfields import (
    _PARSE_ERRORS,
    KINDS,
    _candidates,
    keep_raw_for_app_fields,
    parse_dns_dpkt,
    parse_tls_sni_dpkt,
)
from iotsentry.capture.reader import read_packets

Parser = Callable[[bytes], Any]


def outcome(parse: Parser, payload: bytes) -> tuple[str, Any]:
    """("ok", fields) or ("malformed", None): what extraction makes of a parser's answer."""
    try:
        return "ok", parse(payload)
    except _PARSE_ERRORS:
        return "malformed", None


def assert_same(payloads: list[bytes], fast: Parser, ref: Parser) -> int:
    """Both parsers agree on every payload; returns how many parsed without error."""
    ok = 0
    for p in payloads:
        want = outcome(ref, p)
        assert outcome(fast, p) == want, p.hex()
        ok += want[0] == "ok"
    return ok


def damaged(payloads: list[bytes], seed: int, per_payload: int) -> Iterator[bytes]:
    """Every truncation of each payload, and ``per_payload`` copies with 1-3 random bytes
    changed (biased towards the small values that are lengths, counts and label sizes)."""
    rng = random.Random(seed)
    for p in payloads:
        for n in range(len(p)):
            yield p[:n]
        if not p:
            continue
        for _ in range(per_payload):
            b = bytearray(p)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(b))
                b[i] = rng.choice((0, 1, 2, 3, 4, 0x3F, 0x40, 0xC0, 0xFF, rng.randrange(256)))
            yield bytes(b)


def real_payloads(kinds: tuple[str, ...], limit: int) -> list[bytes]:
    """Distinct candidate payloads of the given kinds from the real captures (up to ``limit``)."""
    files = [
        *sorted(DATA.glob("iot-sentinel/*/*.pcap")),
        *sorted(DATA.glob("iotensemble/*/*.pcap")),
        *sorted(DATA.glob("iot23/pcap/*/*.pcap")),
        *sorted(DATA.glob("zeek-testsuite-iot-ics-traces/**/*.pcap")),
    ]
    if not files:
        pytest.skip(f"real data folder not available: {DATA}")
    want = {KINDS.index(k) for k in kinds}
    seen: dict[bytes, None] = {}
    for f in files:
        for b in _read(f):
            _, kind, start, end = _candidates(b)
            assert b.raw is not None
            blob = b.raw.tobytes()
            for k, s, e in zip(kind.tolist(), start.tolist(), end.tolist(), strict=True):
                if k in want:
                    seen.setdefault(blob[s:e])
            if len(seen) >= limit:
                return list(seen)[:limit]
    return list(seen)


def _read(path: Path) -> Iterator[Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one IoT-23 capture ends inside a record
        yield from read_packets(path, batch_size=50_000, with_raw=keep_raw_for_app_fields)


# ---------------------------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------------------------


def _name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


def _msg(qd: list[bytes], rrs: list[bytes], flags: int = 0x8400) -> bytes:
    return struct.pack(">HHHHHH", 0x1234, flags, len(qd), len(rrs), 0, 0) + b"".join(qd) + b"".join(rrs)


def _rr(name: bytes, typ: int, rdata: bytes, rdlen: int | None = None) -> bytes:
    n = len(rdata) if rdlen is None else rdlen
    return name + struct.pack(">HHIH", typ, 1, 120, n) + rdata


CRAFTED_DNS = [
    b"",
    b"\x00" * 11,
    _msg([_name(b"example", b"com") + b"\x00\x01\x00\x01"], []),
    _msg([_name(b"example", b"com") + b"\x00\x01\x00"], []),  # question cut short
    _msg([b"\xc0\x0c\x00\x01\x00\x01"], []),  # pointer to itself
    _msg([b"\xc0\x02\x00\x01\x00\x01"], []),  # pointer backwards into the header
    _msg([b"\x40abc\x00\x00\x01\x00\x01"], []),  # reserved label type
    _msg([b"\x80abc\x00\x00\x01\x00\x01"], []),
    _msg([_name(b"\xff\xfe") + b"\x00\x01\x00\x01"], []),  # not UTF-8
    _msg([_name(*[b"a" * 63] * 4) + b"\x00\x01\x00\x01"], []),  # 256 bytes of labels
    _msg([_name(*[b"a" * 63] * 3, b"a" * 61) + b"\x00\x01\x00\x01"], []),  # 254 bytes: fine
    _msg([], [_rr(_name(b"h", b"local"), 1, b"\x0a\x00\x00\x01")]),
    _msg([], [_rr(_name(b"h", b"local"), 1, b"\x0a\x00\x00")]),  # A of 3 bytes
    _msg([], [_rr(_name(b"h", b"local"), 1, b"\x0a\x00\x00\x01", rdlen=8)]),  # past the end
    _msg([], [_rr(_name(b"h", b"local"), 28, bytes(range(16)))]),
    _msg([], [_rr(_name(b"h", b"local"), 28, b"\x00" * 10 + b"\xff\xff" + b"\x0a\x00\x00\x01")]),
    _msg([], [_rr(_name(b"h", b"local"), 28, bytes(15))]),
    _msg([], [_rr(_name(b"h"), 12, _name(b"printer", b"local"))]),
    _msg([], [_rr(_name(b"h"), 12, b"\xc0\x0c")]),  # PTR pointing back to the owner name
    _msg([], [_rr(_name(b"h"), 12, b"\x05ab")]),  # PTR name runs past the end
    _msg([], [_rr(_name(b"h"), 5, _name(b"cdn", b"net"))]),
    _msg([], [_rr(_name(b"h"), 33, b"\x00\x00\x00\x00\x1f\x90" + _name(b"srv", b"local"))]),
    _msg([], [_rr(_name(b"h"), 33, b"\x00\x00\x00\x00\x1f")]),  # SRV cut short
    _msg([], [_rr(_name(b"h"), 16, b"\x05hello\x03a=b")]),
    _msg([], [_rr(_name(b"h"), 16, b"\x09short")]),  # TXT string longer than the record
    _msg([], [_rr(_name(b"h"), 16, b"\x02\xff\xfe")]),  # TXT not UTF-8
    _msg([], [_rr(_name(b"h"), 16, b"")]),
    _msg([], [_rr(_name(b"h"), 47, b"\xc0\x0c\x00\x05\x00\x00\x80\x00\x40")]),  # NSEC kept raw
    _msg([], [_rr(_name(b"h"), 2, b"\xff")]),  # NS: not read at all
    _msg([], [_rr(_name(b"h"), 1, b"\x0a\x00\x00\x01"), _rr(b"\xc0\x0c", 1, b"\x0a\x00\x00\x02")]),
    _msg([], [_rr(_name(b"h"), 1, b"\x0a\x00\x00\x01")[:-1]]),
    _msg([], [_rr(_name(b"h"), 1, b"\x0a\x00\x00\x01")], flags=0x0000),
    _msg([], [_rr(_name(b"h"), 1, b"\x0a\x00\x00\x01")]) + b"trailing bytes are ignored",
]


def test_dns_parser_matches_dpkt_on_crafted_messages() -> None:
    ok = assert_same(CRAFTED_DNS, app_wire.parse_dns, parse_dns_dpkt)
    assert 10 <= ok < len(CRAFTED_DNS)
    got = app_wire.parse_dns(CRAFTED_DNS[21])
    assert got["answers"] == [{"name": "h", "type": "SRV", "value": "srv.local", "port": 8080}]
    assert got["is_response"] is True


def test_dns_parser_matches_dpkt_on_damaged_crafted_messages() -> None:
    assert_same(list(damaged(CRAFTED_DNS, seed=1, per_payload=200)), app_wire.parse_dns, parse_dns_dpkt)


@pytest.mark.slow
def test_dns_parser_matches_dpkt_on_real_payloads() -> None:
    payloads = real_payloads(("dns", "mdns"), limit=20_000)
    assert len(payloads) > 1000
    ok = assert_same(payloads, app_wire.parse_dns, parse_dns_dpkt)
    assert ok > 0.9 * len(payloads)
    sample = payloads[:: max(1, len(payloads) // 300)]
    assert_same(list(damaged(sample, seed=2, per_payload=30)), app_wire.parse_dns, parse_dns_dpkt)


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------


def _hello(
    exts: list[tuple[int, bytes]],
    *,
    session: bytes = b"",
    suites: bytes = b"\x13\x01\xc0\x2f",
    ext_len: int | None = None,
) -> bytes:
    ext = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in exts)
    body = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(session)])
        + session
        + struct.pack(">H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack(">H", len(ext) if ext_len is None else ext_len)
        + ext
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def _sni(*names: tuple[int, bytes]) -> bytes:
    lst = b"".join(bytes([t]) + struct.pack(">H", len(n)) + n for t, n in names)
    return struct.pack(">H", len(lst)) + lst


CRAFTED_TLS = [
    _hello([(0, _sni((0, b"example.com")))]),
    _hello([(10, b"\x00\x02\x00\x17"), (0, _sni((0, b"iot.example")))]),
    _hello([(10, b"\x00\x02\x00\x17")]),  # no server_name
    _hello([(0, _sni((1, b"other"), (0, b"second.example")))]),
    _hello([(0, _sni((1, b"other")))]),
    _hello([(0, b"\x00")]),  # server_name extension of one byte
    _hello([(0, _sni((0, b"\xffbad")))]),
    _hello([(0, _sni((0, b"a.example")))], session=bytes(32)),
    _hello([(0, _sni((0, b"a.example")))], suites=b"\x13\x01\xc0"),  # odd cipher list
    _hello([(0, _sni((0, b"a.example")))], ext_len=3),  # the loop stops early
    _hello([(0, _sni((0, b"a.example")))], ext_len=400),  # declared past the end
    _hello([]),
    _hello([(0, _sni((0, b"a.example")))])[:-3],  # record cut short
    b"\x16\x03\x01\x00\x04\x01\x00\x00\x00",  # empty ClientHello
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    b"\x17\x03\x01\x00\x04\x01\x00\x00\x00",  # not a handshake record
]


def test_tls_parser_matches_dpkt_on_crafted_hellos() -> None:
    ok = assert_same(CRAFTED_TLS, app_wire.parse_tls_sni, parse_tls_sni_dpkt)
    assert ok >= 6
    assert app_wire.parse_tls_sni(CRAFTED_TLS[3]) == {"sni": "second.example"}
    assert app_wire.parse_tls_sni(CRAFTED_TLS[2]) is None


def test_tls_parser_matches_dpkt_on_damaged_crafted_hellos() -> None:
    assert_same(
        list(damaged(CRAFTED_TLS, seed=3, per_payload=300)), app_wire.parse_tls_sni, parse_tls_sni_dpkt
    )


@pytest.mark.slow
def test_tls_parser_matches_dpkt_on_real_payloads() -> None:
    payloads = real_payloads(("tls",), limit=5_000)
    assert len(payloads) > 100
    ok = assert_same(payloads, app_wire.parse_tls_sni, parse_tls_sni_dpkt)
    assert ok > 0.5 * len(payloads)
    assert sum(1 for p in payloads if app_wire.parse_tls_sni(p) is not None) > 50
    sample = payloads[:: max(1, len(payloads) // 100)]
    assert_same(list(damaged(sample, seed=4, per_payload=30)), app_wire.parse_tls_sni, parse_tls_sni_dpkt)


def test_dns_name_reads_compressed_names() -> None:
    msg = _msg([_name(b"a", b"example", b"com") + b"\x00\x01\x00\x01"], [])
    assert app_wire.dns_name(msg, 12) == ("a.example.com", 12 + 15)
    tail = msg + b"\x01b\xc0\x0e"
    assert app_wire.dns_name(tail, len(msg)) == ("b.example.com", len(tail))
    with pytest.raises(ValueError):
        app_wire.dns_name(np.zeros(3, np.uint8).tobytes() + b"\xc0\x05", 3)
