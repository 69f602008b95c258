"""Living baselines: guarded absorption of persistent behaviour, and operator feedback.

After a device's learning period its baseline keeps up with legitimate change, under guards:

* **Candidates.** Every novelty a device shows after learning -- a remote network, a service,
  a bare-IP service, a peer-to-peer network, a name's registrable domain, an application token
  -- is a candidate, remembered with the clock hours and windows it was seen in (bounded per
  device, oldest forgotten first).
* **Blocking.** Behaviour that was part of an alert is never absorbed automatically: a finding
  on a device blocks every candidate of that device seen in the finding's span (its window, or
  the hour of a slow scan / repeated attempts / beacon), and the candidates named by the
  finding's peer and service.
* **Absorption.** At each clock-hour tick, a candidate seen in at least ``min_hours`` separate
  clock hours, spread over at least ``min_span_s``, never blocked, is absorbed into the device's
  baseline -- at most ``per_day`` items per device per UTC day (the rest wait). Shape and volume
  limits are not touched: the absolute shape caps and the boiling-frog defences stay in force.
* **Operator feedback.** :meth:`Living.expected` absorbs what an incident showed (its peers'
  networks and domains, services, tokens) into the device, or into every device of its group;
  :meth:`Living.revert` takes an earlier absorption back.

Every absorption and revert is a history record (``id``, ``ts``, ``device_id``, ``kind``,
``item``, ``source`` (``auto`` / ``operator``), ``reason``) kept in the device's profile
(:attr:`DeviceProfile.history`) and returned to the caller for the audit log.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iotsentry.baseline import identity as ident
from iotsentry.baseline.keysets import KeySet
from iotsentry.baseline.profile import Baseline, Identity, _service_parts, net_label, service_label
from iotsentry.features import _identity_kernels as RK
from iotsentry.features.addresses import is_local
from iotsentry.features.device_context import WINDOW_S, PacketContext
from iotsentry.schema import PacketBatch, ip_to_str

__all__ = ["MIN_HOURS", "MIN_SPAN_S", "PER_DAY", "Candidate", "Living"]

MIN_HOURS = 3
"""Separate clock hours a behaviour must be seen in before it is absorbed."""
MIN_SPAN_S = 2 * 3600.0
"""... spread over at least this long (first to last sighting)."""
PER_DAY = 20
"""Most items absorbed automatically per device per UTC day."""
MAX_CANDIDATES = 512
"""Candidates remembered per device (oldest forgotten first)."""
MAX_HISTORY = 1000
"""History records kept per device (oldest dropped first)."""
RECENT_WINDOWS = 32

KINDS = ("network", "service", "bare-service", "high-network", "domain", "token")

_SIGHTING_KIND = ("network", "service", "high-network", "high-network", "bare-service")
"""Kinds of the sightings of :func:`~iotsentry.features._identity_kernels.novelty_sightings` ..."""
_SIGHTING_LABEL = (net_label, service_label, net_label, ip_to_str, service_label)
"""... and the labels of their (a, b) values."""


@dataclass
class Candidate:
    """One novelty of one device, waiting to be absorbed."""

    device: int
    kind: str
    item: str
    label: str
    first_ts: float
    last_ts: float
    hours: set[int] = field(default_factory=set)
    windows: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))
    blocked: str = ""
    """Why it may not be absorbed automatically (the alert it was part of), else empty."""
    remote: bool = False
    """Seen with a remote (not local) peer."""


def _record_id(*parts: object) -> str:
    h = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).hexdigest()
    return f"abs-{h}"


class Living:
    """Candidates, blocking, absorption and feedback for one :class:`Baseline` (module docstring).

    Parameters
    ----------
    baseline
        The baseline it keeps alive.
    min_hours, min_span_s, per_day
        Absorption guards (see module docstring).
    """

    def __init__(
        self,
        baseline: Baseline,
        *,
        min_hours: int = MIN_HOURS,
        min_span_s: float = MIN_SPAN_S,
        per_day: int = PER_DAY,
    ) -> None:
        self.baseline = baseline
        self.min_hours = int(min_hours)
        self.min_span_s = float(min_span_s)
        self.per_day = int(per_day)
        self.candidates: dict[int, OrderedDict[tuple[str, str], Candidate]] = {}
        self._absorbed_on: dict[tuple[int, int], int] = {}
        """(device, UTC day) -> items absorbed automatically that day."""
        self.alerted = KeySet()
        """Identity keys of behaviour that was part of an alert (blocked candidates): a packet
        that continues it is stronger evidence (see :func:`alerted_key`)."""
        self.last_tick = -np.inf
        self._dirty: set[int] = set()
        """Devices whose candidates changed since the last tick (the only ones that can become
        ready: readiness depends on a candidate's own sightings) ..."""
        self._deferred: set[int] = set()
        """... devices whose ready candidates waited for the next day's allowance ..."""
        self._young: Mapping[int, frozenset[str]] = {}
        """... and devices whose young kinds changed (as passed to the last tick)."""
        self._rank: dict[int, int] = {}
        """Device -> order in which it first had a candidate (the order ticks handle devices)."""

    # -- observing -----------------------------------------------------------------------------
    def observe(self, device: int, kind: str, item: str, label: str, ts: float, remote: bool = True) -> None:
        """Record one sighting of a novelty of an active device."""
        cands = self.candidates.get(device)
        if cands is None:
            cands = self.candidates[device] = OrderedDict()
            self._rank.setdefault(device, len(self._rank))
        self._dirty.add(device)
        key = (kind, item)
        c = cands.get(key)
        if c is None:
            if len(cands) >= MAX_CANDIDATES:
                cands.popitem(last=False)
            c = cands[key] = Candidate(device, kind, item, label, ts, ts)
        c.last_ts = max(c.last_ts, ts)
        c.first_ts = min(c.first_ts, ts)
        c.remote |= remote
        if len(c.hours) < 64:
            c.hours.add(int(ts // 3600.0))
        w = int(ts // WINDOW_S)
        if not c.windows or c.windows[-1] != w:
            c.windows.append(w)

    def observe_batch(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        idn: Identity,
        ip_names: dict[str, str],
        new_token: npt.NDArray[np.uint64] | None = None,
        token_text: dict[int, str] | None = None,
    ) -> int:
        """Record the novelties of a scored batch (devices in ``ctx``; learning ones left out).

        Returns how many distinct (device, window, novelty) sightings were recorded.
        """
        seen: set[tuple[int, int, str, str]] = set()
        net_hi, net_lo = idn.net_hi, idn.net_lo
        if net_hi is None or net_lo is None:
            net_hi, net_lo = ident.network_of(ctx.peer_hi, ctx.peer_lo)
        # distinct (kind, device, window, what), in that order: few per batch
        kinds, dev, win, a, b, first, named = RK.novelty_sightings(
            ctx.device,
            ctx.window,
            idn.valid,
            idn.local,
            idn.known_peer,
            idn.churn,
            idn.known_service,
            idn.high_udp,
            idn.high_known,
            idn.has_name,
            ctx.peer_hi,
            ctx.peer_lo,
            net_hi,
            net_lo,
            ctx.proto,
            ctx.service,
        )
        if len(kinds):
            order = np.lexsort((b, a, win, dev, kinds))
            ts = batch.ts[first[order]].tolist()
            remote = (~idn.local[first[order]]).tolist()
            labels: dict[tuple[int, int, int], str] = {}
            for k, d, w, x, y, t, rem in zip(
                kinds[order].tolist(),
                dev[order].tolist(),
                win[order].tolist(),
                a[order].tolist(),
                b[order].tolist(),
                ts,
                remote,
                strict=True,
            ):
                item = labels.get((k, x, y))
                if item is None:
                    item = labels[(k, x, y)] = _SIGHTING_LABEL[k](x, y)
                key = (d, w, _SIGHTING_KIND[k], item)
                if key in seen:
                    continue
                seen.add(key)
                self.observe(d, _SIGHTING_KIND[k], item, item, t, remote=rem)
        # domains of new peers reached by name
        if len(named) and ip_names:
            for d, w, h, lo, t in zip(
                ctx.device[named].tolist(),
                ctx.window[named].tolist(),
                ctx.peer_hi[named].tolist(),
                ctx.peer_lo[named].tolist(),
                batch.ts[named].tolist(),
                strict=True,
            ):
                name = ip_names.get(ip_to_str(h, lo), "")
                dom = ident.registered_domain(name) if name else ""
                if dom:
                    k = (d, w, "domain", dom)
                    if k not in seen:
                        seen.add(k)
                        self.observe(d, "domain", dom, dom, t, remote=True)
        if new_token is not None:
            for r in np.flatnonzero(new_token != 0).tolist():
                d = int(ctx.device[r])
                if d < 0:
                    continue
                h = int(new_token[r])
                text = token_text.get(h, "") if token_text else ""
                k = (d, int(ctx.window[r]), "token", str(h))
                if k in seen:
                    continue
                seen.add(k)
                t = float(batch.ts[r])
                self.observe(d, "token", str(h), text or str(h), t, remote=False)
                kind, _, name = text.partition(":")
                if kind in ("dns", "sni") and name:
                    dom = ident.registered_domain(name)
                    self.observe(d, "domain", dom, dom, t)
        return len(seen)

    # -- blocking ------------------------------------------------------------------------------
    def block(
        self, device: int, t0: float, t1: float, reason: str, peer_ip: str = "", service: str = ""
    ) -> int:
        """Block the device's candidates seen in ``[t0, t1]`` (and those of ``peer_ip`` /
        ``service``): they were part of an alert. Returns how many were newly blocked."""
        cands = self.candidates.get(device)
        if not cands:
            return 0
        w0, w1 = int(t0 // WINDOW_S), int(t1 // WINDOW_S)
        items: set[tuple[str, str]] = set()
        if peer_ip:
            try:
                from iotsentry.schema import ip_from_str

                h, lo = ip_from_str(peer_ip)
                nh, nl = ident.network_of(np.array([h], np.uint64), np.array([lo], np.uint64))
                net = net_label(int(nh[0]), int(nl[0]))
                items |= {("network", net), ("high-network", net), ("high-network", peer_ip)}
            except ValueError:
                pass
        if service:
            items |= {("service", service), ("bare-service", service)}
        n = 0
        for key, c in cands.items():
            if c.blocked:
                continue
            if key in items or any(w0 <= w <= w1 for w in c.windows):
                c.blocked = reason
                k = alerted_key(device, c.kind, c.item)
                if k is not None:
                    self.alerted.add([k])
                n += 1
        return n

    # -- absorption ----------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        """Whether a clock hour has passed since the last :meth:`tick`."""
        return int(now // 3600.0) > int(self.last_tick // 3600.0) if np.isfinite(self.last_tick) else True

    def tick(
        self,
        now: float,
        young: Mapping[int, frozenset[str]] | None = None,
        young_changed: Iterable[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Absorb the candidates that persisted unalerted (see module docstring); returns the
        history records of what was absorbed.

        ``young`` maps devices to kinds of behaviour their baseline does not hold at all (no
        remote peers, no names): rules do not judge those kinds yet, so the device is still
        learning them -- their unblocked candidates are absorbed at once, without the persistence
        requirement or the daily cap. ``young_changed``, when given, names the devices whose
        young kinds differ from those of the last tick (else ``young`` is compared in full).
        """
        self.last_tick = now
        out: list[dict[str, Any]] = []
        day = int(now // 86400.0)
        young = young or {}
        # only devices whose candidates or young kinds changed, or that waited for the allowance
        check = self._dirty | self._deferred
        if young_changed is not None:
            check.update(young_changed)
            self._young = young
        else:
            check.update(d for d, k in young.items() if self._young.get(d) != k)
            check.update(d for d in self._young if d not in young)
            self._young = dict(young)
        self._dirty, self._deferred = set(), set()
        for d in sorted(check, key=lambda x: self._rank.get(x, -1)):
            cands = self.candidates.get(d)
            if not cands:
                continue
            prof = self.baseline.profiles[d]
            if not prof.active:
                self._dirty.add(d)
                continue
            kinds = young.get(d, frozenset())
            learning = [
                c
                for c in cands.values()
                if not c.blocked and c.kind in kinds and (c.remote or c.kind == "token")
            ]
            for c in sorted(learning, key=lambda c: c.first_ts):
                del cands[(c.kind, c.item)]
                if self.baseline.absorb_item(d, c.kind, c.item):
                    names_only = c.kind in ("token", "domain") and "network" not in kinds
                    what = "names" if names_only else "remote peers"
                    reason = (
                        f"seen from {_utc(c.first_ts)}, never part of an alert, while the baseline held no "
                        f"{what} (still learning them)"
                    )
                    out.append(self.record(d, now, c.kind, c.item, c.label, "auto", reason))
            ready = [
                c
                for c in cands.values()
                if not c.blocked
                and len(c.hours) >= self.min_hours
                and c.last_ts - c.first_ts >= self.min_span_s
            ]
            for c in sorted(ready, key=lambda c: c.first_ts):
                used = self._absorbed_on.get((d, day), 0)
                if used >= self.per_day:
                    self._deferred.add(d)
                    break
                del cands[(c.kind, c.item)]
                if not self.baseline.absorb_item(d, c.kind, c.item):
                    continue
                self._absorbed_on[(d, day)] = used + 1
                reason = (
                    f"seen in {len(c.hours)} separate hours from {_utc(c.first_ts)} to {_utc(c.last_ts)}, "
                    "never part of an alert"
                )
                out.append(self.record(d, now, c.kind, c.item, c.label, "auto", reason))
        return out

    def record(
        self,
        d: int,
        ts: float,
        kind: str,
        item: str,
        label: str,
        source: str,
        reason: str,
        action: str = "absorb",
    ) -> dict[str, Any]:
        """Append a history record to device ``d``'s profile and return it."""
        prof = self.baseline.profiles[d]
        rec = {
            "id": _record_id(prof.device_id, ts, kind, item, action, len(prof.history)),
            "ts": float(ts),
            "device_id": prof.device_id,
            "action": action,
            "kind": kind,
            "item": item,
            "label": label,
            "source": source,
            "reason": reason,
        }
        prof.history.append(rec)
        if len(prof.history) > MAX_HISTORY:
            del prof.history[: len(prof.history) - MAX_HISTORY]
        return rec

    # -- operator feedback ---------------------------------------------------------------------
    def expected(
        self,
        devices: list[int],
        items: list[tuple[str, str]],
        ts: float,
        who: str,
        reason: str,
    ) -> list[dict[str, Any]]:
        """Absorb ``items`` ((kind, item) pairs) into each of ``devices`` on an operator's word
        (an incident marked expected); returns the history records. Blocked candidates of the
        same items are released (absorbed)."""
        out: list[dict[str, Any]] = []
        for d in devices:
            for kind, item in items:
                if kind not in KINDS:
                    raise ValueError(f"unknown baseline item kind {kind!r}")
                cands = self.candidates.get(d)
                if cands is not None:
                    cands.pop((kind, item), None)
                if self.baseline.absorb_item(d, kind, item):
                    out.append(self.record(d, ts, kind, item, item, "operator", f"{who}: {reason}"))
        return out

    def revert(self, records: list[dict[str, Any]], ts: float, who: str, reason: str) -> list[dict[str, Any]]:
        """Take absorbed items back out (each record as returned by :meth:`tick` / :meth:`expected`)."""
        out: list[dict[str, Any]] = []
        ids = {d: i for i, d in enumerate(self.baseline.device_ids)}
        for rec in records:
            d = ids.get(str(rec.get("device_id")))
            if d is None:
                continue
            kind, item = str(rec["kind"]), str(rec["item"])
            if self.baseline.remove_item(d, kind, item):
                out.append(
                    self.record(
                        d,
                        ts,
                        kind,
                        item,
                        str(rec.get("label", item)),
                        "operator",
                        f"{who}: {reason}",
                        "revert",
                    )
                )
        if out:
            self.baseline.rebuild_groups()
        return out


def alerted_key(device: int, kind: str, item: str) -> int | None:
    """The identity key under which a blocked item is remembered as alerted behaviour: ``net``
    for networks and addresses, ``svc`` for services, ``token`` for application tokens."""
    try:
        if kind in ("network", "high-network"):
            h, lo = _ip(item.split("/")[0])
            return int(ident.key("net", device, h, lo)[0])
        if kind in ("service", "bare-service"):
            proto, port = _service_parts(item)
            return int(ident.key("svc", device, proto, port)[0])
        if kind == "token":
            return int(ident.key("token", device, int(item))[0])
    except ValueError:
        return None
    return None


def _ip(text: str) -> tuple[int, int]:
    from iotsentry.schema import ip_from_str

    return ip_from_str(text)


def items_of_evidence(evidence: list[dict[str, Any]], categories: list[str]) -> list[tuple[str, str]]:
    """The baseline items an incident's evidence names: the networks of its peers, their
    services, and the names in its reasons (``dns:...`` / ``sni:...``)."""
    out: list[tuple[str, str]] = []
    for ev in evidence:
        ip = str(ev.get("dest_ip") or "")
        port = int(ev.get("dest_port") or 0)
        proto = str(ev.get("proto") or "").upper()
        if ip:
            try:
                from iotsentry.schema import ip_from_str

                h, lo = ip_from_str(ip)
            except ValueError:
                h = lo = -1
            if h >= 0:
                hh, ll = np.array([h], np.uint64), np.array([lo], np.uint64)
                if is_local(hh, ll)[0]:
                    out.append(("high-network", ip))
                else:
                    nh, nl = ident.network_of(hh, ll)
                    net = net_label(int(nh[0]), int(nl[0]))
                    out += [("network", net), ("high-network", net)]
        if proto in ("TCP", "UDP") and port:
            out += [("service", f"{proto}/{port}"), ("bare-service", f"{proto}/{port}")]
        for word in str(ev.get("reason", "")).replace(",", " ").replace("(", " ").replace(")", " ").split():
            kind, _, name = word.partition(":")
            if kind in ("dns", "sni") and "." in name:
                out.append(("domain", ident.registered_domain(name.rstrip(";."))))
    seen: set[tuple[str, str]] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
