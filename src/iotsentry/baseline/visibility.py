"""What the sensor can see of each device: missing application fields are not evidence.

"Contacted a host by bare IP, no DNS name" means something only where DNS answers to the device
are visible. A sensor that keeps 96 bytes per frame, a mirror port that carries one direction,
DNS resolved over another path, or a device that never uses DNS (addresses built into its
firmware) all make every peer look "bare". :class:`Visibility` counts, per device, the frames
cut by the snap length, the DNS responses it received and how many of them carried readable
answers, the application fields parsed for it, VLAN tags, and how its remote traffic splits
between the two directions; :meth:`Visibility.of` turns that into the per-device visibility
shown in the inventory, the report and the dashboard, and :meth:`Visibility.names_evidence`
says whether a bare-IP peer is evidence for that device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import PacketContext
from iotsentry.schema import AppEvent, PacketBatch

__all__ = ["MAX_CUT_SHARE", "MIN_ANSWERS", "Visibility"]

MIN_ANSWERS = 1
"""DNS responses with readable answers a device must have received for names to be observable."""
MAX_CUT_SHARE = 0.1
"""Largest share of a device's DNS responses cut by the snap length for its names to count as
observable (a short answer fits in 96 bytes; most do not, and their addresses stay unnamed)."""
ONE_WAY_MIN = 200
"""Remote packets of a device before a one-sided split is called asymmetric capture."""

_COLS = (
    "packets",
    "truncated",
    "dns_responses",
    "dns_cut",
    "dns_answers",
    "dns_queries",
    "app_events",
    "vlan",
    "remote_out",
    "remote_in",
)


class Visibility:
    """Per-device counters of what the capture shows (see module docstring)."""

    def __init__(self) -> None:
        self.counts = np.zeros((0, len(_COLS)), dtype=np.int64)
        self.snaplen = 0
        """Largest captured frame length seen (the sensor's snap length, as far as frames show)."""
        self._col = {c: i for i, c in enumerate(_COLS)}

    def _grow(self, n: int) -> None:
        if n > len(self.counts):
            self.counts = np.vstack([self.counts, np.zeros((n - len(self.counts), len(_COLS)), np.int64)])

    def update_packets(self, batch: PacketBatch, ctx: PacketContext, n_devices: int) -> None:
        """Count the packets of one batch (their devices in ``ctx``)."""
        self._grow(n_devices)
        if not len(batch):
            return
        self.snaplen = max(self.snaplen, int(batch.cap_len.max()))
        dev = ctx.device
        ok = dev >= 0
        if not ok.any():
            return
        # counted over the devices of this batch only (not every device of the fleet)
        u, d = np.unique(dev[ok], return_inverse=True)
        c = self._col
        got = np.zeros((len(u), len(_COLS)), np.int64)

        def add(col: str, mask: npt.NDArray[np.bool_] | None = None) -> None:
            got[:, c[col]] = np.bincount(d if mask is None else d[mask], minlength=len(u))

        add("packets")
        add("truncated", (batch.cap_len < batch.wire_len)[ok])
        add("vlan", (batch.vlan != 0)[ok])
        dns_in = (batch.proto == 17) & (batch.src_port == 53) & ~ctx.outbound
        add("dns_responses", dns_in[ok])
        add("dns_cut", (dns_in & (batch.cap_len < batch.wire_len))[ok])
        remote = ~is_local(ctx.peer_hi, ctx.peer_lo) & ~is_multicast(ctx.peer_hi, ctx.peer_lo)
        remote = (remote & (batch.ip_version > 0))[ok]
        out = ctx.outbound[ok]
        add("remote_out", remote & out)
        add("remote_in", remote & ~out)
        self.counts[u] += got

    def update_events(self, events: list[AppEvent], device_of_mac: dict[int, int], n_devices: int) -> None:
        """Count the parsed application events of one batch (DNS answers and queries, others)."""
        self._grow(n_devices)
        c = self._col
        for ev in events:
            if ev.kind == "dns":
                f = ev.fields
                if f.get("is_response"):
                    i = device_of_mac.get(int(ev.dst_mac), -1)
                    answers = [a for a in f.get("answers") or () if a.get("type") in ("A", "AAAA", 1, 28)]
                    if i >= 0 and answers and not f.get("truncated"):
                        self.counts[i, c["dns_answers"]] += 1
                    continue
                i = device_of_mac.get(int(ev.src_mac), -1)
                if i >= 0:
                    self.counts[i, c["dns_queries"]] += 1
                    self.counts[i, c["app_events"]] += 1
                continue
            i = device_of_mac.get(int(ev.src_mac), -1)
            if i >= 0:
                self.counts[i, c["app_events"]] += 1

    def _get(self, d: int, col: str) -> int:
        return int(self.counts[d, self._col[col]]) if d < len(self.counts) else 0

    def dns_names(self, d: int) -> str:
        """``observed`` (readable DNS answers reach the device, and at most ``MAX_CUT_SHARE`` of
        its responses were cut by the snap length), ``truncated`` (responses seen, answers cut or
        unreadable), ``not seen`` (no DNS response seen)."""
        responses = self._get(d, "dns_responses")
        cut = self._get(d, "dns_cut")
        if self._get(d, "dns_answers") >= MIN_ANSWERS and cut <= MAX_CUT_SHARE * responses:
            return "observed"
        if self._get(d, "dns_responses") > 0:
            return "truncated"
        return "not seen"

    def names_evidence_of(self, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """:meth:`names_evidence` of each of ``devices`` (device numbers)."""
        if len(devices):
            self._grow(int(devices.max()) + 1)
        c = self.counts[devices]
        col = self._col
        out: npt.NDArray[np.bool_] = (c[:, col["dns_answers"]] >= MIN_ANSWERS) & (
            c[:, col["dns_cut"]] <= MAX_CUT_SHARE * c[:, col["dns_responses"]]
        )
        return out

    def names_evidence(self, d: int) -> bool:
        """Whether "no DNS name" is evidence for this device (its DNS answers are observable)."""
        return self.dns_names(d) == "observed"

    def of(self, d: int) -> dict[str, Any]:
        """JSON-ready visibility of device ``d`` (inventory, report, dashboard)."""
        pk = self._get(d, "packets")
        cut = self._get(d, "truncated")
        out_, in_ = self._get(d, "remote_out"), self._get(d, "remote_in")
        if out_ + in_ < ONE_WAY_MIN:
            direction = "both" if out_ and in_ else "too little remote traffic"
        elif min(out_, in_) < 0.02 * (out_ + in_):
            direction = "one way only (asymmetric capture)"
        else:
            direction = "both"
        payload = (
            "full"
            if cut == 0
            else f"cut to {self.snaplen} bytes in {100.0 * cut / max(pk, 1):.0f} % of frames"
        )
        names = self.dns_names(d)
        return {
            "dns_names": names,
            "names_evidence": names == "observed",
            "payload": payload,
            "app_fields": "parsed" if self._get(d, "app_events") else "none parsed",
            "vlan_tagged": bool(self._get(d, "vlan")),
            "direction": direction,
        }

    def site(self) -> dict[str, Any]:
        """Visibility of the whole capture."""
        tot = self.counts.sum(axis=0) if len(self.counts) else np.zeros(len(_COLS), np.int64)
        c = self._col
        return {
            "snaplen": int(self.snaplen),
            "truncated_frames": int(tot[c["truncated"]]),
            "packets": int(tot[c["packets"]]),
            "dns_answers": int(tot[c["dns_answers"]]),
            "dns_responses": int(tot[c["dns_responses"]]),
            "vlan_tagged_frames": int(tot[c["vlan"]]),
        }

    def state(self) -> dict[str, Any]:
        """JSON-ready counters (saved with a living baseline)."""
        return {"snaplen": self.snaplen, "columns": list(_COLS), "counts": self.counts.tolist()}

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> Visibility:
        """Counters saved by :meth:`state` (unknown columns are ignored, missing ones are 0)."""
        v = cls()
        v.snaplen = int(doc.get("snaplen", 0))
        cols = [str(x) for x in doc.get("columns", [])]
        rows = doc.get("counts", [])
        v._grow(len(rows))
        for i, row in enumerate(rows):
            for name, val in zip(cols, row, strict=False):
                if name in v._col:
                    v.counts[i, v._col[name]] = int(val)
        return v
