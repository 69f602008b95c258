"""Tokens of application events (DNS names asked, User-Agents, TLS server names) and their
hashes: the same as the plain definitions, on generated events and on real captures."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import pytest

from conftest import DATA
from iotsentry.capture.appfields import extract_app_events, keep_raw_for_app_fields
from iotsentry.capture.reader import read_packets
from iotsentry.features import app_tokens
from iotsentry.features.app_tokens import MAX_TOKEN_LEN, token_hash, tokens_of
from iotsentry.schema import AppEvent


def reference_hash(text: str) -> int:
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return (h >> 1) or 1


def reference_tokens(ev: AppEvent) -> list[str]:
    f = ev.fields
    out: list[str] = []
    if ev.kind == "dns" and not f.get("is_response"):
        out += [f"dns:{str(q).lower().rstrip('.')}" for q in f.get("queries") or ()]
    elif ev.kind == "http" and f.get("user_agent"):
        out.append(f"ua:{f['user_agent']}")
    elif ev.kind == "tls" and f.get("sni"):
        out.append(f"sni:{str(f['sni']).lower()}")
    return [t[:MAX_TOKEN_LEN] for t in out]


def _ev(kind: str, fields: dict[str, Any]) -> AppEvent:
    return AppEvent(0, 0.0, kind, 1, 2, "10.0.0.1", "10.0.0.2", fields)


GENERATED = [
    _ev("dns", {"queries": ["Time.Example.COM.", "a." * 150], "answers": [], "is_response": False}),
    _ev("dns", {"queries": ["x.example"], "answers": [], "is_response": True}),
    _ev("dns", {"queries": [], "answers": [], "is_response": False}),
    _ev("dns", {"queries": None, "truncated": True, "is_response": False}),
    _ev("mdns", {"queries": ["printer.local"], "answers": [], "is_response": False}),
    _ev("http", {"method": "GET", "user_agent": "Mozilla/5.0 " + "x" * 300}),
    _ev("http", {"method": "GET", "user_agent": None}),
    _ev("http", {"method": "GET", "user_agent": ""}),
    _ev("tls", {"sni": "API.Nest.com"}),
    _ev("tls", {"sni": None}),
    _ev("ssdp", {"server": "Linux UPnP/1.0"}),
    _ev("dhcp", {"hostname": "cam"}),
]


def test_tokens_and_hashes_of_generated_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_tokens, "_HASHES_SIZE", 3)  # the memo empties itself often
    for _ in range(3):
        for ev in GENERATED:
            toks = tokens_of(ev)
            assert toks == reference_tokens(ev)
            assert [token_hash(t) for t in toks] == [reference_hash(t) for t in toks]
    assert len(app_tokens._HASHES) <= 3
    assert token_hash("dns:\udcff") == reference_hash("dns:\udcff")  # lone surrogate: replaced


@pytest.mark.slow
def test_tokens_of_real_events() -> None:
    files = [*sorted(DATA.glob("iot-sentinel/*/*.pcap"))[::5], *sorted(DATA.glob("iot23/pcap/*/*.pcap"))]
    if not files:
        pytest.skip(f"real data folder not available: {DATA}")
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one IoT-23 capture ends inside a record
        for f in files:
            for b in read_packets(f, batch_size=50_000, with_raw=keep_raw_for_app_fields):
                for ev in extract_app_events(b):
                    toks = tokens_of(ev)
                    assert toks == reference_tokens(ev)
                    assert [token_hash(t) for t in toks] == [reference_hash(t) for t in toks]
                    n += len(toks)
    assert n > 1000
