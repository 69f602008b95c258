"""Application tokens: the names and client identities a device uses.

IoT devices look up the same few DNS names, present the same HTTP User-Agent and ask TLS for
the same server names, forever. A token is one such value, kept with the stream position of
the packet that carried it, so that the learning and detection passes can find the tokens of
each batch without parsing payloads again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotsentry.schema import AppEvent

MAX_TOKEN_LEN = 200

_HASHES: dict[str, int] = {}
"""Hashes of recently seen tokens (devices repeat the same few); emptied when full."""
_HASHES_SIZE = 65536


def token_hash(text: str) -> int:
    """A stable, non-zero 63-bit hash of a token."""
    h = _HASHES.get(text)
    if h is None:
        d = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
        h = (d >> 1) or 1
        if len(_HASHES) >= _HASHES_SIZE:
            _HASHES.clear()
        _HASHES[text] = h
    return h


def tokens_of(ev: AppEvent) -> list[str]:
    """The tokens an event contributes (``dns:<name>``, ``ua:<agent>``, ``sni:<name>``)."""
    kind = ev.kind
    if kind == "dns":
        f = ev.fields
        if f.get("is_response"):
            return []
        return [f"dns:{str(q).lower().rstrip('.')}"[:MAX_TOKEN_LEN] for q in f.get("queries") or ()]
    if kind == "http":
        ua = ev.fields.get("user_agent")
        return [f"ua:{ua}"[:MAX_TOKEN_LEN]] if ua else []
    if kind == "tls":
        sni = ev.fields.get("sni")
        return [f"sni:{str(sni).lower()}"[:MAX_TOKEN_LEN]] if sni else []
    return []


@dataclass
class TokenLog:
    """Tokens by stream position (the ordinal of the packet in the whole input)."""

    position: list[int] = field(default_factory=list)
    mac: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    text: dict[int, str] = field(default_factory=dict)
    _frozen: tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]] | None = None

    def add(self, events: list[AppEvent], frame_index: npt.NDArray[np.int64], first_position: int) -> None:
        """Record the tokens of events of one batch (``frame_index`` ascending, the batch's
        ``index`` column; the batch starts at stream position ``first_position``)."""
        if not events:
            return
        where = np.searchsorted(frame_index, np.fromiter((ev.index for ev in events), np.int64, len(events)))
        for ev, at in zip(events, where.tolist(), strict=True):
            toks = tokens_of(ev)
            if not toks:
                continue
            pos = first_position + at
            for t in toks:
                h = token_hash(t)
                self.text.setdefault(h, t)
                self.position.append(pos)
                self.mac.append(int(ev.src_mac))
                self.hashes.append(h)
        self._frozen = None

    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """(positions, MACs, hashes) sorted by position."""
        if self._frozen is None:
            pos = np.array(self.position, dtype=np.int64)
            order = np.argsort(pos, kind="stable")
            self._frozen = (
                pos[order],
                np.array(self.mac, dtype=np.uint64)[order],
                np.array(self.hashes, dtype=np.uint64)[order],
            )
        return self._frozen

    def in_range(
        self, start: int, stop: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """Tokens carried by stream positions ``start`` .. ``stop - 1``."""
        pos, mac, h = self.arrays()
        a, b = np.searchsorted(pos, start), np.searchsorted(pos, stop)
        return pos[a:b], mac[a:b], h[a:b]
