"""Helpers of the serve tests: a synthetic home capture cut into rotating files, configs."""

from __future__ import annotations

import os
from pathlib import Path

import dpkt

from iotsentry.evaluation.synthetic_home import generate_home

DURATION_S = 7200.0
INFECT_AT = 0.3
LEARN_S = 1728.0
"""Learning ends well before the infection (at 2160 s); 19 alerts follow in the batch pipeline."""


def home_capture(path: Path, duration_s: float = DURATION_S, infect_at: float = INFECT_AT) -> Path:
    """The synthetic home (seed 3) with an infection at ``infect_at`` of its length."""
    generate_home(path, seed=3, duration_s=duration_s, infect_at=infect_at)
    return path


def cut_capture(src: Path, seconds: float) -> list[tuple[str, list[tuple[float, bytes]]]]:
    """The packets of ``src`` in files of ``seconds`` each, named like ``tcpdump -G`` would."""
    with src.open("rb") as fh:
        packets = [(float(ts), bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    t0 = packets[0][0]
    files: dict[int, list[tuple[float, bytes]]] = {}
    for ts, buf in packets:
        files.setdefault(int((ts - t0) // seconds), []).append((ts, buf))
    return [(f"cap-{k:05d}.pcap", rows) for k, rows in sorted(files.items())]


def write_pcap(directory: Path, name: str, rows: list[tuple[float, bytes]]) -> Path:
    """Write one capture file, appearing at once under its name (written aside, then renamed)."""
    part = directory / (name + ".part")
    with part.open("wb") as out:
        w = dpkt.pcap.Writer(out)
        for ts, buf in rows:
            w.writepkt(buf, ts=ts)
    final = directory / name
    os.replace(part, final)
    return final


def config_text(
    root: Path,
    *,
    learn_s: float = LEARN_S,
    extra: str = "",
    settle_s: float = 0.2,
    api: str = "",
) -> str:
    """A serve configuration over ``root`` (pcap dir, store, state, audit, JSONL sink)."""
    return f"""
[store]
target = "{root / "store.db"}"

[[source]]
kind = "pcap-dir"
name = "lan"
path = "{root / "pcaps"}"
pattern = "*.pcap"
settle_s = {settle_s}
batch_size = 4000

[learning]
seconds = {learn_s}

[[sink]]
path = "{root / "alerts.jsonl"}"

[audit]
path = "{root / "audit.jsonl"}"

[state]
dir = "{root / "state"}"

[monitor]
queue_size = 4
poll_timeout_s = 0.2
inventory_interval_s = 0.5
{api}
{extra}
"""
