"""Grouped extraction gives exactly what the per-candidate reference gives.

:func:`extract_app_events` groups candidates by payload, parses each distinct payload once and
uses its own DNS and TLS parsers; :class:`appfields_reference.ReferenceExtractor` walks the
candidates one by one with dpkt. Both must produce the same events in the same order, with
equal fields, the same counts, and the same sharing of ``fields`` dicts between events (the
inventory relies on it to skip repeated announcements), also when the cache of parsed fields
fills up and is emptied in the middle of a batch.
"""

from __future__ import annotations

import random
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from appfields_reference import ReferenceExtractor, sharing
from pcapgen import eth, ipv4, ipv6, pcap_bytes, tcp, udp

from conftest import DATA
from iotsentry.capture import appfields as af
from iotsentry.capture.reader import read_packets
from iotsentry.schema import AppEvent, PacketBatch

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    af._CACHE.clear()
    yield
    af._CACHE.clear()


def _read(path: Path, batch_size: int, with_raw: object) -> Iterator[PacketBatch]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one IoT-23 capture ends inside a record
        yield from read_packets(path, batch_size=batch_size, with_raw=with_raw)  # type: ignore[arg-type]


def assert_same_as_reference(batches: list[PacketBatch], ref: ReferenceExtractor) -> list[AppEvent]:
    """Extract every batch both ways (in stream order) and compare; returns the events."""
    got_all: list[AppEvent] = []
    want_all: list[AppEvent] = []
    for b in batches:
        want_stats, got_stats = af.AppFieldStats(), af.AppFieldStats()
        want = ref(b, want_stats)
        got = af.extract_app_events(b, got_stats)
        assert got == want
        for k in ("candidates", "events", "malformed"):
            assert list(getattr(got_stats, k).items()) == list(getattr(want_stats, k).items()), k
        got_all += got
        want_all += want
    assert sharing(got_all) == sharing(want_all)
    return got_all


def real_captures() -> list[Path]:
    files = [
        *sorted(DATA.glob("iot-sentinel/*/*.pcap")),
        *sorted(DATA.glob("iotensemble/*/*.pcap")),
        *sorted(DATA.glob("iot23/pcap/*/*.pcap")),
        *sorted(DATA.glob("zeek-testsuite-iot-ics-traces/**/*.pcap")),
    ]
    if not files:
        pytest.skip(f"real data folder not available: {DATA} (IoT SENTINEL, IoTEnsemble, IoT-23 captures)")
    return files


# ---------------------------------------------------------------------------------------------
# Real captures
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("with_raw", ["filter", "all"])
def test_real_captures_give_the_reference_events(with_raw: str) -> None:
    raw = af.keep_raw_for_app_fields if with_raw == "filter" else True
    ref = ReferenceExtractor()
    n_events = 0
    for path in real_captures():
        events = assert_same_as_reference(list(_read(path, 20_000, raw)), ref)
        n_events += len(events)
    assert n_events > 20_000
    kinds = {k for k, _, _ in af._CACHE}
    assert kinds == set(af.KINDS)


@pytest.mark.slow
def test_a_cache_emptied_within_batches_gives_the_reference_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for only a few dozen payloads, batches empty the cache part-way: the walk in
    frame order decides again which events share a dict."""
    monkeypatch.setattr(af, "_CACHE_SIZE", 40)
    ref = ReferenceExtractor(cache_size=40)
    files = real_captures()
    picked = files[:: max(1, len(files) // 60)]
    for path in picked:
        assert_same_as_reference(list(_read(path, 5_000, af.keep_raw_for_app_fields)), ref)
    assert ref.clears > 10


@pytest.mark.slow
def test_dns_cut_by_a_snap_length_gives_the_reference_events(tmp_path: Path) -> None:
    """Real DNS / mDNS frames re-captured with a snap length of 96 bytes (partial parsing)."""
    frames: list[tuple[int, int, bytes]] = []
    wire: list[int] = []
    for path in real_captures()[::7]:
        for b in _read(path, 50_000, af.keep_raw_for_app_fields):
            kind = af.classify(b)
            for i in [int(i) for i in (kind == 1).nonzero()[0]] + [int(i) for i in (kind == 2).nonzero()[0]]:
                f = b.frame(i)
                frames.append((1_600_000_000 + len(frames), 0, f[:96]))
                wire.append(len(f))
    if len(frames) < 200:
        pytest.skip("too few DNS frames in the real captures")
    p = tmp_path / "cut.pcap"
    p.write_bytes(pcap_bytes(frames, snaplen=96, wire_lens=wire))
    events = assert_same_as_reference(list(_read(p, 1_000, af.keep_raw_for_app_fields)), ReferenceExtractor())
    assert any(e.fields.get("truncated") for e in events)


# ---------------------------------------------------------------------------------------------
# Generated frames
# ---------------------------------------------------------------------------------------------

MAC_DEV = bytes.fromhex("b827eb000001")
MAC_GW = bytes.fromhex("001122334455")


def _dns(txid: int, name: str, *, response: bool, ip: bytes = b"\x0a\x00\x00\x07") -> bytes:
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"
    flags = 0x8180 if response else 0x0100
    msg = struct.pack(">HHHHHH", txid, flags, 1, int(response), 0, 0) + qname + b"\x00\x01\x00\x01"
    if response:
        msg += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, len(ip)) + ip
    return msg


def _dhcp(xid: int, host: bytes, msg_type: int = 3) -> bytes:
    bootp = struct.pack(">BBBBIHH", 1, 1, 6, 0, xid, 0, 0) + bytes(16) + MAC_DEV + bytes(10 + 192)
    opts = bytes([53, 1, msg_type, 12, len(host)]) + host + bytes([55, 3, 1, 3, 6, 255])
    return bootp + b"\x63\x82\x53\x63" + opts


def _hello(sni: bytes) -> bytes:
    ext = struct.pack(">HH", 0, len(sni) + 5) + struct.pack(">HBH", len(sni) + 3, 0, len(sni)) + sni
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack(">H", len(ext))
        + ext
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def _generated(seed: int) -> list[tuple[bytes, int]]:
    """(frame, wire length) pairs of every kind, repeated with variations, some damaged."""
    rng = random.Random(seed)
    names = ["time.example.com", "api.vendor.io", "a.b.c", "x" * 60 + ".example"]

    def v4(l4: bytes, proto: int, src: str = "192.168.1.20", dst: str = "192.168.1.1") -> bytes:
        return eth(ipv4(l4, proto, src=src, dst=dst), src=MAC_DEV, dst=MAC_GW)

    def v6(l4: bytes, proto: int) -> bytes:
        return eth(ipv6(l4, proto, src="fe80::1", dst="ff02::fb"), 0x86DD, src=MAC_DEV, dst=MAC_GW)

    makers = [
        lambda: v4(
            udp(
                rng.randrange(1024, 65535), 53, _dns(rng.randrange(65536), rng.choice(names), response=False)
            ),
            17,
        ),
        lambda: v4(
            udp(53, 40000, _dns(rng.randrange(65536), rng.choice(names), response=True)),
            17,
            "192.168.1.1",
            "192.168.1.20",
        ),
        lambda: v6(udp(5353, 5353, _dns(0, rng.choice(names) + ".local", response=True, ip=bytes(16))), 17),
        lambda: v4(
            udp(68, 67, _dhcp(rng.randrange(4), rng.choice([b"cam-1", b"plug", b"\xff\xfe"]))),
            17,
            "0.0.0.0",
            "255.255.255.255",
        ),
        lambda: v4(
            udp(1900, 1900, b"NOTIFY * HTTP/1.1\r\nSERVER: Linux UPnP/1.0\r\nNT: upnp:rootdevice\r\n\r\n"), 17
        ),
        lambda: v4(
            tcp(
                50000,
                80,
                payload=b"GET /%d HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/%d\r\n\r\n"
                % (rng.randrange(3), rng.randrange(2)),
            ),
            6,
        ),
        lambda: v4(tcp(50001, 443, payload=_hello(rng.choice([b"a.example", b"b.example"]))), 6),
        lambda: v4(tcp(50002, 443, payload=_hello(b"c.example")[: rng.randrange(8, 40)]), 6),
        lambda: v4(udp(40000, 53, bytes(rng.randrange(0, 14))), 17),  # too short for DNS
        lambda: v4(udp(1900, 1900, b"garbage without lines"), 17),
    ]
    out: list[tuple[bytes, int]] = []
    for _ in range(3000):
        frame = rng.choice(makers)()
        if rng.random() < 0.05 and len(frame) > 60:  # cut by a snap length
            out.append((frame[: rng.randrange(42, len(frame))], len(frame)))
        else:
            out.append((frame, len(frame)))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cache_size", [65536, 7])
def test_generated_frames_give_the_reference_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, cache_size: int
) -> None:
    monkeypatch.setattr(af, "_CACHE_SIZE", cache_size)
    frames = _generated(seed)
    p = tmp_path / "gen.pcap"
    p.write_bytes(
        pcap_bytes(
            [(1_700_000_000 + i, 0, f) for i, (f, _) in enumerate(frames)], wire_lens=[w for _, w in frames]
        )
    )
    for raw in (af.keep_raw_for_app_fields, True):
        af._CACHE.clear()
        ref = ReferenceExtractor(cache_size=cache_size)
        events = assert_same_as_reference(list(_read(p, 700, raw)), ref)
        assert {e.kind for e in events} == set(af.KINDS)
        assert (ref.clears > 50) == (cache_size < 100)
        shared = sharing(events)
        repeats = sum(1 for i, s in enumerate(shared) if s != i)
        assert repeats > (1000 if cache_size > 100 else 50)  # repeated payloads share


def test_dns_transaction_ids_do_not_split_groups(tmp_path: Path) -> None:
    frames = [
        eth(
            ipv4(udp(40000 + i, 53, _dns(i, "time.example.com", response=False)), 17), src=MAC_DEV, dst=MAC_GW
        )
        for i in range(50)
    ]
    p = tmp_path / "q.pcap"
    p.write_bytes(pcap_bytes([(1_700_000_000 + i, 0, f) for i, f in enumerate(frames)]))
    (b,) = _read(p, 100, True)
    events = af.extract_app_events(b)
    assert len(events) == 50 and len({id(e.fields) for e in events}) == 1
    assert events[0].fields == {"queries": ["time.example.com"], "answers": [], "is_response": False}


def test_no_candidates_and_no_raw() -> None:
    b = PacketBatch.empty()
    with pytest.raises(ValueError):
        af.extract_app_events(b)


def test_a_cut_dns_message_with_a_name_that_is_not_utf8_is_malformed(tmp_path: Path) -> None:
    """Cut by the snap length, the message goes to the partial reader, which used to let the
    name's decoding error escape and stop the whole extraction."""
    bad = struct.pack(">HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x02\xff\xfe\x00\x00\x01\x00\x01"
    bad += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + b"\x0a\x00\x00\x07" + b"padding" * 20
    good = _dns(7, "time.example.com", response=True)
    frames = [
        eth(ipv4(udp(53, 40000, msg), 17, src="192.168.1.1", dst="192.168.1.20"), src=MAC_GW, dst=MAC_DEV)
        for msg in (bad, good)
    ]
    p = tmp_path / "cut.pcap"
    p.write_bytes(
        pcap_bytes(
            [(1_700_000_000, 0, f[:88]) for f in frames], snaplen=88, wire_lens=[len(f) for f in frames]
        )
    )
    (b,) = _read(p, 10, True)
    stats = af.AppFieldStats()
    events = af.extract_app_events(b, stats)
    assert stats.malformed["dns"] == 1 and [e.index for e in events] == [1]
    assert events[0].fields["truncated"] is True
    assert af.parse_dns_partial(bad[:60]) is None
