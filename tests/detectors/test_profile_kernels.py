"""The per-packet kernels of the profile detector and the remote identity against the numpy code
they replaced.

``_RefBaseline`` (``_named``, ``identity``, ``new_tokens``), ``_RefDetector`` (``evaluate``,
``_continues_alert``, ``_sustained``, ``_slow_update``, ``schedule_findings``), ``_RefLiving``
(``observe_batch``), ``_ref_window_table`` and ``_ref_packet_context`` are verbatim copies of that code:
identities, scores, findings and whole analyses must stay identical, on random batches and on
real captures.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import data_path
from iotsentry import engine as engine_module
from iotsentry.baseline import identity as ident
from iotsentry.baseline.keysets import KeySet
from iotsentry.baseline.living import Living, alerted_key
from iotsentry.baseline.periodicity import (
    SESSION_GAP_S,
    PeriodicityTracker,
    connection_starts,
    last_packet_of_devices,
)
from iotsentry.baseline.profile import Baseline, Identity, TokenRows, _ip_names, net_label, service_label
from iotsentry.detectors.profile import (
    ALERTED_BOOST,
    C2_MAX_TRACKED,
    C2_REPEAT_S,
    C2_SPAN_S,
    C2_TURNS,
    LOGIN_PORTS,
    SLOW_FLOOR_IMMATURE,
    WINDOW_BOOST,
    F,
    Finding,
    ProfileDetector,
    _mix,
    _squash,
)
from iotsentry.features import _window_kernels as K
from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import WINDOW_S, DeviceIndex, PacketContext, packet_context
from iotsentry.features.direction import originator_of_batch
from iotsentry.features.windows import LOGIN_PORTS as WINDOW_LOGIN_PORTS
from iotsentry.features.windows import WindowTable, window_table
from iotsentry.pipeline import AnalysisConfig, Analyzer
from iotsentry.schema import PacketBatch, ip_from_str, ip_to_str

# ----------------------------------------------------------------------------- references (old code)


def _ref_window_table(
    batch: PacketBatch,
    ctx: PacketContext,
    known_peer: npt.NDArray[np.bool_],
    named_peer: npt.NDArray[np.bool_],
    known_service: npt.NDArray[np.bool_],
    new_token: npt.NDArray[np.uint64] | None = None,
    known_target: npt.NDArray[np.bool_] | None = None,
) -> WindowTable:
    """Aggregate a batch into per-(device, window) feature rows.

    ``known_peer``/``known_service`` say per packet whether the device's baseline already holds
    the peer / service; ``named_peer`` whether the peer IP was reached through a DNS name;
    ``new_token`` the hash of an application token (DNS name, User-Agent, SNI) the device's
    baseline has never seen, 0 where the packet carries none; ``known_target`` whether the
    packet's (peer, service) is one the device's baseline already uses: reconnect bursts to
    such a target are not counted as brute-force attempts, except on login services.
    """
    n = len(ctx)
    # brute force: repeated TCP attempts to a remote service, or to a login service on the LAN
    # (apps that poll a hub's local HTTP API open many short connections too)
    attempt = np.zeros(n, dtype=bool)
    cand = np.flatnonzero(ctx.syn_only & (ctx.device >= 0))
    if len(cand):
        hi, lo = ctx.peer_hi[cand], ctx.peer_lo[cand]
        remote = ~is_local(hi, lo) & ~is_multicast(hi, lo)
        dport = np.where(ctx.outbound[cand], batch.dst_port[cand], batch.src_port[cand]).astype(np.uint64)
        if known_target is not None:
            remote &= ~known_target[cand]
        attempt[cand] = remote | np.isin(dport, WINDOW_LOGIN_PORTS)
    tokens = np.zeros(n, dtype=np.uint64) if new_token is None else new_token
    uk, X, group, shape = K.window_features(
        *(
            np.ascontiguousarray(a)
            for a in (
                ctx.device,
                ctx.window,
                batch.ip_version,
                batch.wire_len,
                ctx.peer_hi,
                ctx.peer_lo,
                ctx.proto,
                ctx.service,
                batch.src_port,
                batch.dst_port,
                ctx.outbound,
                ctx.initiation,
                ctx.syn_only,
                known_peer,
                named_peer,
                known_service,
                tokens,
                attempt,
            )
        )
    )
    if len(uk) == 0:
        return WindowTable(np.zeros(0, np.int32), np.zeros(0, np.int64), X, group)
    device = (uk >> 40).astype(np.int32)
    window = (uk & ((1 << 40) - 1)).astype(np.int64)
    return WindowTable(device, window, X, group, shape)


def _ref_packet_context(
    batch: PacketBatch,
    index: DeviceIndex,
    window_s: float = WINDOW_S,
    direction: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None,
) -> PacketContext:
    """Attribute every packet of ``batch`` to a device (or -1) and describe its peer.

    ``direction`` says per packet whether its sender opened the conversation and whether that
    is certain (:meth:`~iotsentry.features.direction.FlowDirection.update` of the stream);
    without it the batch is taken as a stream of its own. The service is the responder's port
    where a TCP handshake told who responded, else the remote peer's port (devices are the
    clients of their clouds, also for connections that began before the capture), else the
    lower of the two ports.
    """
    b = batch
    from_orig, certain = originator_of_batch(b) if direction is None else direction
    sdev = index.of_macs(b.src_mac)
    ddev = index.of_macs(b.dst_mac)
    if len(index._ips):
        nomac_s = b.src_mac == 0
        sdev = np.where(nomac_s & (sdev < 0), index.of_ips(b.src_ip_hi, b.src_ip_lo), sdev)
        ddev = np.where((b.dst_mac == 0) & (ddev < 0), index.of_ips(b.dst_ip_hi, b.dst_ip_lo), ddev)
    gw = index.gateway
    src_is_dev = (sdev >= 0) & (sdev != gw)
    dst_is_dev = (ddev >= 0) & (ddev != gw)
    outbound = src_is_dev | (~dst_is_dev & (sdev >= 0))
    device = np.where(src_is_dev, sdev, np.where(dst_is_dev, ddev, sdev)).astype(np.int32)
    outbound &= device >= 0
    peer_hi = np.where(outbound, b.dst_ip_hi, b.src_ip_hi)
    peer_lo = np.where(outbound, b.dst_ip_lo, b.src_ip_lo)
    proto = b.proto.copy()
    icmp = (proto == 1) | (proto == 58)
    sport, dport = b.src_port, b.dst_port
    # the responder's port where a handshake told who responded; else the remote peer's port
    # (devices are the clients of their clouds), and the lower port between two local hosts
    peer_port = np.where(outbound, dport, sport)
    remote = ~is_local(peer_hi, peer_lo) & ~is_multicast(peer_hi, peer_lo) & (b.ip_version > 0)
    guess = np.where(remote & (device >= 0), peer_port, np.minimum(sport, dport))
    service = np.where(certain, np.where(from_orig, dport, sport), guess)
    icmp_type = sport.copy()
    icmp_type[(proto == 1) & (icmp_type == 0)] = 8
    icmp_type[(proto == 58) & (icmp_type == 129)] = 128
    service = np.where(icmp, icmp_type, service).astype(np.uint16)
    flags = b.tcp_flags
    syn_only = (proto == 6) & ((flags & 0x12) == 0x02)
    initiation = outbound & (
        syn_only | ((proto == 17) & from_orig) | (icmp & ((icmp_type == 8) | (icmp_type == 128)))
    )
    window = np.floor(b.ts / window_s).astype(np.int64)
    return PacketContext(
        device=device,
        outbound=outbound,
        peer_hi=peer_hi,
        peer_lo=peer_lo,
        service=service,
        proto=proto,
        initiation=initiation,
        syn_only=syn_only & outbound,
        window=window,
        certain=certain,
    )


class _RefBaseline(Baseline):
    def _named(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """As :meth:`named` (without folding local into the first), plus the candidate rows."""
        n = len(ctx)
        has_name = np.zeros(n, dtype=bool)
        name_known = np.zeros(n, dtype=bool)
        local = is_local(ctx.peer_hi, ctx.peer_lo) | is_multicast(ctx.peer_hi, ctx.peer_lo)
        local |= batch.ip_version == 0
        cand = np.flatnonzero(~local & (ctx.device >= 0))
        if len(cand) and ip_names:
            inv, uhi, ulo, _ = K.intern(ctx.peer_hi[cand], ctx.peer_lo[cand], True)
            names = _ip_names(uhi, ulo, ip_names, via_table=len(uhi) > len(ip_names))
            number: dict[str, int] = {}
            ip_name = np.array([number.setdefault(s, len(number)) if s else -1 for s in names], np.int64)
            pkt_name = ip_name[inv]
            if name_ts:
                since = np.array(
                    [
                        name_ts.get(ip_to_str(h, x), -np.inf) if s else np.inf
                        for h, x, s in zip(uhi.tolist(), ulo.tolist(), names, strict=True)
                    ]
                )
                pkt_name = np.where(batch.ts[cand] >= since[inv], pkt_name, -1)
            has_name[cand] = pkt_name >= 0
            # the (device, name) pairs of this batch, each checked against the device's names
            ok = np.flatnonzero(pkt_name >= 0)
            if len(ok) and self._names:
                texts = list(number)
                code = ctx.device[cand[ok]].astype(np.int64) * len(texts) + pkt_name[ok]
                u, inv_u = np.unique(code, return_inverse=True)
                learned = self._names
                nt = len(texts)
                hit_u = np.array([texts[c % nt] in learned.get(c // nt, ()) for c in u.tolist()], dtype=bool)
                name_known[cand[ok]] = hit_u[inv_u]
            # the registrable domain of the name, known to the device or one of its groups
            if number:
                dom = np.zeros(len(number), np.uint64)
                for s, k in number.items():
                    dom[k] = ident.domain_hash(s)
                pdom = np.where(pkt_name >= 0, dom[np.maximum(pkt_name, 0)], np.uint64(0))
                dev = ctx.device[cand].astype(np.uint64)
                hit = self.known.contains(ident.key("dom", dev, pdom))
                owners = self.group_owners()
                if len(owners) and owners.any() and len(self.group_known):
                    g = owners[ctx.device[cand]]
                    for j in range(2):
                        has_g = g[:, j] != 0
                        hit |= has_g & self.group_known.contains(ident.key("dom", g[:, j], pdom))
                name_known[cand] |= hit & (pkt_name >= 0)
        return has_name, name_known, local, cand

    def identity(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> Identity:
        """What the baseline knows of every packet's remote (see :class:`Identity`)."""
        n = len(ctx)
        valid = (ctx.device >= 0) & (batch.ip_version > 0)
        pw = self.peer_windows(ctx)
        sw = self.service_windows(ctx)
        has_name, name_known, local, _ = self._named(batch, ctx, ip_names, name_ts)
        net_known = np.zeros(n, dtype=bool)
        group_known = np.zeros(n, dtype=bool)
        bare_svc = np.zeros(n, dtype=bool)
        high = ident.is_high_udp(ctx.proto, batch.src_port, batch.dst_port) & valid
        high_known = np.zeros(n, dtype=bool)
        if len(self.known) or len(self.group_known):
            dev = ctx.device.astype(np.int64)
            rows = np.flatnonzero(valid)
            if len(rows):
                d = dev[rows].astype(np.uint64)
                nhi, nlo = ident.network_of(ctx.peer_hi[rows], ctx.peer_lo[rows])
                loc = local[rows]
                # local peers are known by their address, remote ones by their network
                hhi = np.where(loc, ctx.peer_hi[rows], nhi)
                hlo = np.where(loc, ctx.peer_lo[rows], nlo)
                net_known[rows] = ~loc & self.known.contains(ident.key("net", d, nhi, nlo))
                bare_svc[rows] = ~loc & self.known.contains(
                    ident.key("bare", d, ctx.proto[rows], ctx.service[rows])
                )
                hk = high[rows] & self.known.contains(ident.key("high", d, hhi, hlo))
                owners = self.group_owners()
                if len(owners) and owners.any() and len(self.group_known):
                    g = owners[dev[rows]]
                    for j in range(2):
                        gj = g[:, j]
                        has_g = gj != 0
                        if not has_g.any():
                            continue
                        gk = self.group_known
                        group_known[rows] |= has_g & ~loc & gk.contains(ident.key("net", gj, nhi, nlo))
                        hk |= has_g & high[rows] & gk.contains(ident.key("high", gj, hhi, hlo))
                        bare_svc[rows] |= (
                            has_g
                            & ~loc
                            & gk.contains(ident.key("bare", gj, ctx.proto[rows], ctx.service[rows]))
                        )
                high_known[rows] = hk
        known_peer = (pw > 0) | name_known | net_known | group_known | local | ~valid
        # another address of a service the device reaches by bare IP -- unless a name says who
        # it is: an unknown name is a new peer, whatever its port
        churn = ~known_peer & bare_svc & ~has_name
        # UDP between two unprivileged ports with a network the device (or its group) already
        # exchanged such UDP with: peer-to-peer ports change every session
        known_service = (sw > 0) | high_known | ~valid
        return Identity(
            valid=valid,
            local=local,
            peer_windows=pw,
            service_windows=sw,
            has_name=has_name | local,
            name_known=name_known,
            net_known=net_known,
            group_known=group_known,
            known_peer=known_peer,
            churn=churn,
            known_service=known_service,
            high_udp=high,
            high_known=high_known,
        )

    def new_tokens(
        self, n: int, tokens: TokenRows | None, token_text: dict[int, str] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Per packet: hash of an application token its device has never used (0 = none).

        A DNS or TLS name whose registrable domain the device (or one of its groups) knows is
        not new: a cloud's new host name is the same cloud (needs ``token_text``).
        """
        out = np.zeros(n, dtype=np.uint64)
        if tokens is None:
            return out
        rows, dev, h = tokens
        owners = self.group_owners() if len(self.profiles) else np.zeros((0, 2), np.uint64)
        for r, d, k in zip(rows.tolist(), dev.tolist(), h.tolist(), strict=True):
            if d < 0 or k in self._tokens.get(d, ()):
                continue
            text = token_text.get(k) if token_text else None
            if text and self._domain_known(d, text, owners):
                continue
            out[r] = k
        return out

    def _domain_known(self, d: int, token: str, owners: npt.NDArray[np.uint64]) -> bool:
        kind, _, name = token.partition(":")
        if kind not in ("dns", "sni") or not name:
            return False
        dh = ident.domain_hash(name)
        if not dh:
            return False
        if self.known.contains(ident.key("dom", d, dh)).any():
            return True
        groups = [int(o) for o in (owners[d] if d < len(owners) else ()) if o]
        return any(self.group_known.contains(ident.key("dom", o, dh)).any() for o in groups)


class _RefDetector(ProfileDetector):
    def evaluate(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        tokens: TokenRows | None = None,
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.float64], WindowTable, npt.NDArray[np.float64]]:
        """Score a batch: (per-packet scores, window table, per-window scores)."""
        self._ensure_devices(len(self.baseline.profiles))
        n = len(ctx)
        idn = self.baseline.identity(batch, ctx, ip_names, name_ts)
        self.identity = idn
        valid = idn.valid
        pw, sw = idn.peer_windows, idn.service_windows
        has_name, local = idn.has_name, idn.local
        evidence = self.baseline.names_evidence
        dev0 = np.maximum(ctx.device, 0)
        named_ok = ~evidence[dev0] if len(evidence) else np.ones(n, dtype=bool)
        # remote novelty is judged only for devices whose baseline holds remote peers
        thin = ~self.remote_known[dev0] if len(self.remote_known) else np.ones(n, dtype=bool)
        raw_new = ~(idn.known_peer | idn.churn)
        known_peer = idn.known_peer | idn.churn | thin
        known_service = idn.known_service | (thin & ~local)
        new_tok = self.baseline.new_tokens(n, tokens, self.token_text)
        self._new_token = new_tok
        tok_judged = new_tok * (self.names_known[dev0] if len(self.names_known) else np.zeros(n, dtype=bool))
        # a bare IP is evidence only where the device's names are observable and it uses them
        # ... and where a missing name is no evidence, a TCP connection to a new network on a
        # service the device never used still is (the shape of a bot's command channel)
        tcp_new = (ctx.proto == 6) & ~known_peer & ~known_service & ~local
        unnamed_ok = has_name | (named_ok & ~tcp_new)
        # ... counted once the device keeps the channel up: a command channel is sustained
        # (C2_SPAN_S of conversation, or a second connection); a one-off check is not
        c2_event = self._sustained(batch, ctx, valid & ~known_peer & ~unnamed_ok)
        # a device "contacts" a new host when it opens the conversation: closing a connection
        # opened before it was watched, or answering a host that reached it, is not contacting
        table = _ref_window_table(
            batch,
            ctx,
            known_peer | (~ctx.initiation & ~c2_event),
            unnamed_ok | ~c2_event,
            known_service,
            tok_judged,
            (idn.known_peer | idn.churn) & known_service,
        )
        self._new_peer = ~known_peer
        self._new_unnamed = c2_event
        self._raw_unnamed = raw_new & ~has_name
        self._raw_new_service = ~idn.known_service
        self._churn = idn.churn & valid
        self._new_service = ~known_service
        self._starts = connection_starts(batch.ts, ctx, valid)
        self._starts_known = known_peer[self._starts[1]]
        wscores = (table.X / self._limits[table.device]).max(axis=1) if len(table) else np.zeros(0)
        # per-packet score: novelty of the peer and service for this device, plus the
        # device-window context (fan-out of new peers, rate against the learned maximum)
        dev = np.maximum(ctx.device, 0)
        W = self._learn_windows[dev] if len(self._learn_windows) else np.zeros(n)
        denom = np.log1p(np.maximum(W, 1.0))
        # a peer known by its name, network or group, or another server of a bare-IP service
        # the device uses, counts as half-known; a service the identity rules know likewise
        kin = idn.name_known | idn.net_known | idn.group_known | idn.churn
        peer_c = np.where(kin, np.maximum(pw, W / 2.0), pw)
        s_peer = np.clip(1.0 - np.log1p(peer_c) / denom, 0.0, 1.0)
        svc_c = np.where(known_service & (sw == 0), W / 2.0, sw)
        s_svc = np.clip(1.0 - np.log1p(svc_c) / denom, 0.0, 1.0)
        s_unnamed = (self._new_unnamed & (pw == 0)).astype(np.float64)
        g = table.group_of_packet
        gi = np.maximum(g, 0)
        new_in_win = table.col("new_peers")[gi] if len(table) else np.zeros(n)
        pk_in_win = table.col("packets")[gi] if len(table) else np.zeros(n)
        max_new = self._max_new[dev] if len(self._max_new) else np.zeros(n)
        max_pk = self._max_packets[dev] if len(self._max_packets) else np.zeros(n)
        s_fan = _squash(new_in_win / (3.0 * (max_new + 1.0)))
        s_rate = _squash(pk_in_win / (3.0 * (max_pk + 10.0)))
        # novelty is evidence only as far as the device's baseline is trusted (its maturity)
        trust = 0.25 + 0.75 * (self._trust[dev] if len(self._trust) else np.zeros(n))
        calm_p = self._calm_peer[dev] if len(self._calm_peer) else np.ones(n)
        calm_t = self._calm_tok[dev] if len(self._calm_tok) else np.ones(n)
        s_tok = (new_tok != 0).astype(np.float64)
        novelty = calm_p * (2.0 * s_peer + 0.5 * s_unnamed + 0.5 * s_fan) + s_svc + calm_t * s_tok
        # the packet's own part in a scan / brute-force shape, measured against the device's limits
        s_shape = np.zeros(n)
        if table.shape is not None and len(table):
            shape_cols = [F["max_ports_per_peer"], F["max_peers_per_port"], F["max_conns_per_target"]]
            ratios = table.shape / self._limits[dev][:, shape_cols]
            s_shape = _squash(ratios.max(axis=1))
        # the packet's part in a slow scan: new targets of its device on the same peer or port
        self._slow_count = self._slow_update(batch, ctx, valid)
        slow_limit = self._slow_limit if len(self._slow_limit) else np.full(1, SLOW_FLOOR_IMMATURE)
        slow_ratio = self._slow_count / slow_limit[np.minimum(dev, len(slow_limit) - 1)]
        # ... and a step once that part alone is beyond the device's limit (a paced scan's
        # probes look like any other new port; only their number gives them away)
        s_slow = _squash(slow_ratio) + 0.5 * (slow_ratio > 1.0)
        scores = trust * novelty + 0.5 * s_rate + s_shape + s_slow
        scores = np.where(valid, scores, 0.0)
        if len(table):
            scores = scores + WINDOW_BOOST * (wscores[gi] > 1.0)
        scores = np.where(ctx.device >= 0, scores, 0.0)
        if self.alerted is not None and len(self.alerted):
            scores = scores + ALERTED_BOOST * self._continues_alert(batch, ctx, idn, new_tok)
        return scores.astype(np.float64), table, wscores

    def _continues_alert(
        self, batch: PacketBatch, ctx: PacketContext, idn: Identity, new_tok: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Per packet: it reaches a network, an unknown peer's service or uses a token that was
        part of an alert on its device."""
        assert self.alerted is not None
        out = np.zeros(len(ctx), dtype=bool)
        rows = np.flatnonzero(idn.valid)
        if not len(rows):
            return out
        d = ctx.device[rows].astype(np.uint64)
        nhi, nlo = ident.network_of(ctx.peer_hi[rows], ctx.peer_lo[rows])
        loc = idn.local[rows]
        hi = np.where(loc, ctx.peer_hi[rows], nhi)
        lo = np.where(loc, ctx.peer_lo[rows], nlo)
        hit = self.alerted.contains(ident.key("net", d, hi, lo))
        svc = self.alerted.contains(ident.key("svc", d, ctx.proto[rows], ctx.service[rows]))
        hit |= svc & ~idn.known_peer[rows]
        tok = new_tok[rows] != 0
        if tok.any():
            hit[tok] |= self.alerted.contains(ident.key("token", d[tok], new_tok[rows][tok]))
        out[rows] = hit
        return out

    def _sustained(
        self, batch: PacketBatch, ctx: PacketContext, cand: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]:
        """Per packet: the one at which the device's contact with a new, unexplained peer became
        a channel -- the peer answered with data, and the conversation either lasted
        ``C2_SPAN_S`` since the device first opened it, or took ``C2_TURNS`` turns of data
        back and forth, or was opened a second time (an unanswered probe is a scan's business;
        one request and its answer is a check, not a channel); state per (device, peer), bounded."""
        out = np.zeros(len(ctx), dtype=bool)
        rows = np.flatnonzero(cand)
        if not len(rows):
            return out
        keys = _mix(ctx.device[rows].astype(np.uint64), ctx.peer_hi[rows], ctx.peer_lo[rows])
        ts = batch.ts[rows]
        init = ctx.initiation[rows]
        inbound = ~ctx.outbound[rows]
        # a TCP conversation already under way when it was first seen (the monitor started or
        # restarted in its middle): the device is taken for its client, as for its service
        uncertain = ~ctx.certain[rows] if ctx.certain is not None else np.zeros(len(rows), dtype=bool)
        midway = ctx.outbound[rows] & uncertain & (ctx.proto[rows] == 6)
        payload = batch.payload_len[rows] > 0
        st = self._c2_state
        for k in np.unique(keys).tolist():
            sel = np.flatnonzero(keys == k)
            first, last, starts, turns, side, said = st.get(k, (np.inf, -np.inf, 0, 0, 0, -np.inf))
            for j in sel.tolist():
                t = float(ts[j])
                opens = init[j] or (starts == 0 and midway[j])
                if opens and (starts == 0 or t - last > SESSION_GAP_S):
                    starts += 1
                    first = min(first, t)
                if opens:
                    last = t
                if starts and payload[j]:
                    now_side = 2 if inbound[j] else 1
                    turns += int(side != 0 and now_side != side)
                    side = now_side
                sustained = (
                    side == 2 and starts and (starts >= 2 or turns >= C2_TURNS or t - first >= C2_SPAN_S)
                )
                if sustained and t - said >= C2_REPEAT_S:
                    out[rows[j]] = True  # again every C2_REPEAT_S while the channel stays up
                    said = t
            st[k] = (first, last, starts, turns, side, said)
            st.move_to_end(k)
            if len(st) > C2_MAX_TRACKED:
                st.popitem(last=False)
        return out

    def _slow_update(
        self, batch: PacketBatch, ctx: PacketContext, valid: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        """Track the new targets of the batch's outbound initiations (findings are queued for
        :meth:`findings`); per packet, its part in a slow scan: how many new targets of its
        device share its peer or its port in the horizon when its target was first reached
        (0 for packets that reach no new target).

        Packets are taken in batch order, so for time-ordered input the values and findings do
        not depend on how the stream is cut into batches.
        """
        n = len(ctx)
        out = np.zeros(n)
        if len(self._new_peer) != n:
            return out
        # unexplained novelty only: a new peer reached through a DNS name on a known service
        # (a cloud address rotating, a new CDN node) is not probing; another address of a
        # service the device reaches by bare IP counts as a target, not as an attempt
        churn = self._churn if len(self._churn) == n else np.zeros(n, dtype=bool)
        raw = self._raw_unnamed if len(self._raw_unnamed) == n else self._new_unnamed
        raw_svc = self._raw_new_service if len(self._raw_new_service) == n else self._new_service
        cand = valid & ctx.initiation & (raw | raw_svc | churn)
        idx = np.flatnonzero(cand)
        if not len(idx):
            return out
        proto = ctx.proto[idx].astype(np.uint64)
        tcp_udp = (proto == 6) | (proto == 17)
        port = np.where(tcp_udp, batch.dst_port[idx].astype(np.uint64), ctx.service[idx].astype(np.uint64))
        # UDP between unprivileged ports (peer-to-peer) has no service: one target per peer
        high = (
            self.identity.high_udp[idx]
            if self.identity is not None and len(self.identity.high_udp) == n
            else None
        )
        if high is not None:
            port = np.where(high, np.uint64(0), port)
        hi, lo = ctx.peer_hi[idx], ctx.peer_lo[idx]
        keys = K.mix(np.stack([hi.astype(np.uint64), lo.astype(np.uint64), proto, port]))
        lan = is_local(hi, lo)
        cchurn = churn[idx] & ~self._new_service[idx]
        devs = ctx.device[idx]
        ts = batch.ts[idx].astype(np.float64)
        for d in np.unique(devs).tolist():
            st = self.slow[d]
            sel = np.flatnonzero(devs == d)
            uk, inv = np.unique(keys[sel], return_inverse=True)
            inv = inv.ravel()
            attempts = np.zeros(len(sel))
            for j, r in enumerate(sel.tolist()):
                key = int(keys[r])
                t = float(ts[r])
                if key not in st.seen:
                    count = st.add(key, t, int(hi[r]), int(lo[r]), int(proto[r]), int(port[r]))
                    if count > st.limit and t >= st.next_ts:
                        st.next_ts = t + st.horizon_s
                        self._slow_pending.append(self._slow_finding(d, t, count, int(idx[r]), batch, ctx))
                # repeated attempts on one new target: a paced brute force (on the LAN, where
                # devices being set up poll each other's web services, login services only;
                # reconnects to another server of a service the device uses are not attempts)
                login = int(port[r]) in LOGIN_PORTS
                if (not lan[r] and not cchurn[r]) or login:
                    attempts[j] = n_att = st.attempt(key, t, int(proto[r]) == 6)
                else:
                    continue
                if n_att > st.conn_limit and t >= st.conn_next_ts:
                    st.conn_next_ts = t + st.horizon_s
                    self._slow_pending.append(self._brute_finding(d, t, n_att, int(idx[r]), batch, ctx))
            part = np.array([st.seen[k][5] if k in st.seen else 0.0 for k in uk.tolist()])
            # in the limit of the device's slow-scan rule: the larger of the two parts
            out[idx[sel]] = np.maximum(part[inv], attempts * (st.limit / st.conn_limit))
        return out

    def schedule_findings(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        detect_from: float,
        last: float | None = None,
    ) -> list[Finding]:
        """New beacons and broken schedules seen in the batch last passed to :meth:`evaluate`;
        schedules are checked for breaks at ``last`` (default: the batch's last packet time)."""
        keys, rows = self._starts
        sel = batch.ts[rows] >= detect_from
        keys, rows, known = keys[sel], rows[sel], self._starts_known[sel]
        per = self.baseline.periodicity
        labels = self.baseline.series_labels(ctx, rows, ip_names)
        out: list[Finding] = []
        for _kind, t, s in per.observe(keys, batch.ts[rows].tolist(), labels, known.tolist()):
            d = s.device
            if not (self.mature[d] if d < len(self.mature) else False):
                continue  # every peer of a young baseline is new: no beacon verdicts there
            times = np.diff(np.asarray(getattr(s, "times", [0.0, 0.0])))
            period = float(np.median(times)) if len(times) else 0.0
            label = self.labels[d] if d < len(self.labels) else self.baseline.device_ids[d]
            prof = self.baseline.profiles[d]
            peer_ip = s.peer
            out.append(
                Finding(
                    device=d,
                    device_id=prof.device_id,
                    ts=t,
                    score=2.0,
                    threshold=1.0,
                    feature="beacon",
                    category="c2",
                    peer_ip=peer_ip,
                    peer_port=int(s.service.split("/")[1]),
                    proto=6 if s.service.startswith("TCP") else 17,
                    reason=(
                        f"{label} contacts new peer {s.peer} ({s.service}) every ~{period:.0f} s, "
                        f"{len(getattr(s, 'times', []))} times so far: beacon-like schedule never seen "
                        f"in its baseline; baseline: {len(prof.peers)} peers, "
                        f"services {prof.top_services()}"
                    ),
                    values={"period_s": period, "count": float(len(getattr(s, "times", [])))},
                )
            )
        end = float(batch.ts[-1]) if last is None and len(batch) else last
        if len(batch) and end is not None and end >= detect_from:
            for _kind, t, sch in per.broken(last_packet_of_devices(batch.ts, ctx.device)):
                d = sch.device
                label = self.labels[d] if d < len(self.labels) else self.baseline.device_ids[d]
                out.append(
                    Finding(
                        device=d,
                        device_id=self.baseline.device_ids[d],
                        ts=t,
                        score=1.2,
                        threshold=1.0,
                        feature="schedule",
                        category="silence",
                        peer_ip=sch.peer,
                        peer_port=int(sch.service.split("/")[1]),
                        proto=6 if sch.service.startswith("TCP") else 17,
                        reason=(
                            f"{label} stopped its ~{sch.period_s:.0f} s check-ins to {sch.peer} "
                            f"({sch.service}); "
                            f"last one {t - sch.last_ts:.0f} s ago while the device is still active"
                        ),
                        values={"period_s": sch.period_s, "silent_s": t - sch.last_ts},
                    )
                )
        return out


class _RefLiving(Living):
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
        valid = idn.valid & (ctx.device >= 0)
        rows = np.flatnonzero(
            valid & (~idn.known_peer | ~idn.known_service | (idn.high_udp & ~idn.high_known) | ~idn.has_name)
        )
        seen: set[tuple[int, int, str, str]] = set()
        if len(rows):
            dev = ctx.device[rows].astype(np.int64)
            win = ctx.window[rows]
            hi, lo = ctx.peer_hi[rows], ctx.peer_lo[rows]
            nhi, nlo = ident.network_of(hi, lo)
            loc = idn.local[rows]
            proto, svc = ctx.proto[rows], ctx.service[rows]
            new_peer = ~idn.known_peer[rows] & ~idn.churn[rows] & ~loc
            high = idn.high_udp[rows]
            new_svc = ~idn.known_service[rows]
            new_high = high & new_svc
            bare = ~idn.has_name[rows] & ~loc
            # distinct (device, window, what) first: few per batch
            for kind, mask, a, b in (
                ("network", new_peer, nhi, nlo),
                ("service", new_svc & ~high, proto.astype(np.uint64), svc.astype(np.uint64)),
                ("high-network", new_high & ~loc, nhi, nlo),
                ("high-network", new_high & loc, hi, lo),
                (
                    "bare-service",
                    bare & ~idn.churn[rows] & new_peer,
                    proto.astype(np.uint64),
                    svc.astype(np.uint64),
                ),
            ):
                sel = np.flatnonzero(mask)
                if not len(sel):
                    continue
                trip = np.stack([dev[sel].astype(np.uint64), win[sel].astype(np.uint64), a[sel], b[sel]])
                _, first = np.unique(trip, axis=1, return_index=True)
                for j in first.tolist():
                    r = sel[j]
                    d, w = int(dev[r]), int(win[r])
                    if kind in ("network", "high-network") and not loc[r]:
                        item = net_label(int(a[r]), int(b[r]))
                    elif kind == "high-network":
                        item = ip_to_str(int(a[r]), int(b[r]))
                    else:
                        item = service_label(int(a[r]), int(b[r]))
                    k = (d, w, kind, item)
                    if k in seen:
                        continue
                    seen.add(k)
                    self.observe(d, kind, item, item, float(batch.ts[rows[r]]), remote=not bool(loc[r]))
            # domains of new peers reached by name
            named = np.flatnonzero(new_peer & ~bare)
            if len(named) and ip_names:
                for r in named.tolist():
                    name = ip_names.get(ip_to_str(int(hi[r]), int(lo[r])), "")
                    dom = ident.registered_domain(name) if name else ""
                    if dom:
                        k = (int(dev[r]), int(win[r]), "domain", dom)
                        if k not in seen:
                            seen.add(k)
                            self.observe(
                                int(dev[r]), "domain", dom, dom, float(batch.ts[rows[r]]), remote=True
                            )
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


# ----------------------------------------------------------------------------- synthetic data

MACS = [0x0200000000B0 + i for i in range(8)]
"""Devices 0-5, the gateway (6) and one MAC that is no device (7)."""
ADDRS = [
    "192.168.1.10",
    "192.168.1.11",
    "10.0.0.5",
    "8.8.8.8",
    "8.8.8.9",
    "1.1.1.1",
    "52.1.2.3",
    "52.1.2.4",
    "52.1.9.4",
    "224.0.0.251",
    "255.255.255.255",
    "fe80::1",
    "2001:db8::1",
    "2001:db8:0:1::2",
    "2001:db9::2",
    "ff02::fb",
    "93.184.216.34",
    "172.16.0.1",
    *(f"203.0.{113 + i % 5}.{10 + i}" for i in range(24)),
]
IPS = [ip_from_str(s) for s in ADDRS]
PORTS = [22, 23, 53, 80, 123, 443, 1900, 2323, 5353, 8080, 40000, 40001, 50000, 3389]
GROUPS = [
    ["type:camera", "vendor:acme"],
    ["type:camera"],
    ["vendor:acme", "type:plug"],
    [],
    ["type:plug"],
    [],
]


def _index() -> DeviceIndex:
    ids = [":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8)) for m in MACS[:7]]
    return DeviceIndex(ids, ids[6])


def _batch(seed: int, n: int, t0: float) -> PacketBatch:
    rng = np.random.default_rng(seed)
    mac = np.array(MACS, dtype=np.uint64)
    ip = np.array(IPS, dtype=np.uint64)
    si, di = rng.integers(0, len(IPS), n), rng.integers(0, len(IPS), n)
    cols: dict[str, Any] = {
        "ts": np.sort(rng.uniform(0, 600.0, n)) + t0,
        "wire_len": rng.integers(60, 1500, n),
        "src_mac": mac[rng.integers(0, len(MACS), n)],
        "dst_mac": mac[rng.integers(0, len(MACS), n)],
        "ip_version": rng.choice(np.array([0, 4, 4, 4, 4, 6], np.uint8), n),
        "src_ip_hi": ip[si, 0],
        "src_ip_lo": ip[si, 1],
        "dst_ip_hi": ip[di, 0],
        "dst_ip_lo": ip[di, 1],
        "proto": rng.choice(np.array([6, 6, 6, 17, 17, 1, 58], np.uint8), n),
        "src_port": rng.choice(np.array([*PORTS, 0, 8, 128, 129], np.uint16), n),
        "dst_port": rng.choice(np.array(PORTS, np.uint16), n),
        "tcp_flags": rng.choice(np.array([0x02, 0x02, 0x12, 0x10, 0x18], np.uint8), n),
        "payload_len": rng.choice(np.array([0, 0, 20, 300], np.uint16), n),
    }
    return PacketBatch(cols)


TOKEN_TEXT = {
    i: t
    for i, t in enumerate(
        [
            "dns:h0.cloud0.example.com",
            "dns:x.other.org",
            "ua:curl",
            "sni:h2.cloud1.example.com",
            "dns:new.example.net",
        ],
        1,
    )
}


def _tokens(b: PacketBatch, ctx: PacketContext, seed: int) -> TokenRows:
    rng = np.random.default_rng(seed + 7)
    rows = np.sort(rng.choice(len(b), size=max(1, len(b) // 8), replace=False)).astype(np.int64)
    return rows, ctx.device[rows].astype(np.int32), rng.integers(1, 8, len(rows)).astype(np.uint64)


def _names(t0: float) -> tuple[dict[str, str], dict[str, float]]:
    names = {ADDRS[i]: f"h{i % 3}.cloud{i % 2}.example.com" for i in (3, 4, 6, 7, 12, 16)}
    names |= {ADDRS[i]: f"n{i}.d{i % 7}.example.org" for i in range(18, len(ADDRS), 2)}
    names[ADDRS[8]] = ""  # a DNS answer without a name
    names["not an address"] = "odd.example"
    since = {a: t0 + 100.0 * (i % 4) for i, a in enumerate(names)}
    return names, since


def _learned(cls: type[Baseline], seed: int, t0: float) -> Baseline:
    """A baseline that learned one batch; devices 0-3 finished, with groups; a few items absorbed."""
    index = _index()
    names, since = _names(t0)
    base = cls(list(index.ids))
    b = _batch(seed, 400, t0)
    ctx = packet_context(b, index)
    keep = ctx.device >= 0
    rng = np.random.default_rng(seed + 1)
    # some learned packets are left out, so that not everything is known afterwards
    keep &= rng.random(len(b)) < 0.5
    ctx.device = np.where(keep, ctx.device, -1).astype(np.int32)
    base.learn(b, ctx, names, _tokens(b, ctx, seed), TOKEN_TEXT, since)
    for d, groups in enumerate(GROUPS):
        base.set_groups(d, groups)
    base.finish([0, 1, 2, 3])
    base.absorb_item(4, "network", "52.1.9.0/24")
    for d in range(6):
        for svc in ("TCP/8080", "TCP/443", "UDP/123", "TCP/80"):
            if (d + len(svc)) % 3:
                base.absorb_item(d, "bare-service", svc)
    base.absorb_item(0, "high-network", "8.8.8.0/24")
    base.absorb_item(2, "domain", "cloud1.example.com")
    return base


IDENTITY_FIELDS = (
    "valid",
    "local",
    "peer_windows",
    "service_windows",
    "has_name",
    "name_known",
    "net_known",
    "group_known",
    "known_peer",
    "churn",
    "known_service",
    "high_udp",
    "high_known",
)


@pytest.mark.parametrize("seed", range(6))
def test_identity_matches_reference_on_random_batches(seed: int) -> None:
    t0 = 1.7e9
    new, ref = _learned(Baseline, seed, t0), _learned(_RefBaseline, seed, t0)
    index = _index()
    names, since = _names(t0)
    for k, (nm, ts) in enumerate(((names, since), (names, None), ({}, None))):
        b = _batch(seed + 100 + k, 2000, t0 + 700.0)
        ctx = packet_context(b, index)
        x, y = new.identity(b, ctx, nm, ts), ref.identity(b, ctx, nm, ts)
        for f in IDENTITY_FIELDS:
            a, r = getattr(x, f), getattr(y, f)
            assert a.dtype == r.dtype, f
            np.testing.assert_array_equal(a, r, err_msg=f)
        for a, r in zip(new.named(b, ctx, nm, ts), ref.named(b, ctx, nm, ts), strict=True):
            np.testing.assert_array_equal(a, r)
        nhi, nlo = ident.network_of(ctx.peer_hi, ctx.peer_lo)
        assert x.net_hi is not None and x.net_lo is not None
        np.testing.assert_array_equal(x.net_hi, nhi)
        np.testing.assert_array_equal(x.net_lo, nlo)


def test_identity_of_an_empty_baseline_and_batch() -> None:
    index = _index()
    b = _batch(1, 300, 1.7e9)
    ctx = packet_context(b, index)
    new, ref = Baseline(list(index.ids)), _RefBaseline(list(index.ids))
    x, y = new.identity(b, ctx, {}), ref.identity(b, ctx, {})
    for f in IDENTITY_FIELDS:
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
    e = b.rows(0, 0)
    ectx = packet_context(e, index)
    x = new.identity(e, ectx, {})
    assert all(len(getattr(x, f)) == 0 for f in IDENTITY_FIELDS)


CONTEXT_FIELDS = (
    "device",
    "outbound",
    "peer_hi",
    "peer_lo",
    "service",
    "proto",
    "initiation",
    "syn_only",
    "window",
)


@pytest.mark.parametrize("seed", range(6))
def test_packet_context_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b = _batch(seed, 4000, 1.7e9 + rng.uniform(0, 1e6))
    cols = dict(b.columns)
    # frames without a link layer, and MACs of no device
    nomac = rng.random(len(b)) < 0.3
    cols["src_mac"] = np.where(nomac, 0, cols["src_mac"]).astype(np.uint64)
    cols["dst_mac"] = np.where(rng.random(len(b)) < 0.3, 0, cols["dst_mac"]).astype(np.uint64)
    b = PacketBatch(cols)
    macs = [":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8)) for m in MACS[:7]]
    indexes = [
        _index(),
        DeviceIndex(macs[:5]),
        DeviceIndex([*macs[:4], "ip:192.168.1.11", "ip:2001:db8::1", "ip:10.0.0.5"], macs[2]),
        DeviceIndex([]),
    ]
    direction = originator_of_batch(b)
    for index in indexes:
        for dr in (direction, None):
            x, y = packet_context(b, index, direction=dr), _ref_packet_context(b, index, direction=dr)
            for f in CONTEXT_FIELDS:
                a, r = getattr(x, f), getattr(y, f)
                assert a.dtype == r.dtype, f
                np.testing.assert_array_equal(a, r, err_msg=f)
            np.testing.assert_array_equal(x.certain, y.certain)
        x = packet_context(b, index, window_s=7.5)
        np.testing.assert_array_equal(x.window, _ref_packet_context(b, index, window_s=7.5).window)


@pytest.mark.parametrize("seed", range(4))
def test_window_table_attempts_match_reference(seed: int) -> None:
    b = _batch(seed, 3000, 1.7e9)
    ctx = packet_context(b, _index())
    rng = np.random.default_rng(seed)
    kp, npd, ks, kt = (rng.random(len(b)) < p for p in (0.5, 0.5, 0.6, 0.5))
    for target in (kt, None):
        x, y = (
            window_table(b, ctx, kp, npd, ks, None, target),
            _ref_window_table(b, ctx, kp, npd, ks, None, target),
        )
        assert x.shape is not None and y.shape is not None
        np.testing.assert_array_equal(x.X, y.X)
        np.testing.assert_array_equal(x.shape, y.shape)


def _finding(f: Any) -> tuple[Any, ...]:
    return (
        f.device,
        f.ts,
        f.score,
        f.threshold,
        f.feature,
        f.category,
        f.reason,
        f.peer_ip,
        f.peer_port,
        f.proto,
    )


def _slow_state(d: ProfileDetector) -> list[Any]:
    return [
        (s.limit, s.next_ts, s.conn_next_ts, s.seen, list(s.recent), {k: list(q) for k, q in s.conns.items()})
        for s in d.slow
    ]


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_matches_reference_on_random_batches(seed: int) -> None:
    t0 = 1.7e9
    index = _index()
    names, since = _names(t0)
    dets: list[ProfileDetector] = []
    for bcls, dcls in ((Baseline, ProfileDetector), (_RefBaseline, _RefDetector)):
        base = _learned(bcls, seed, t0)
        det = dcls(base, margin=2.0, token_text=TOKEN_TEXT)
        det.fit_devices([0, 1, 2, 3])
        det.slow_max_targets = 6
        for st in det.slow:
            st.cap, st.limit, st.conn_limit = 6, 3.0, 4.0
        if seed % 2:
            det.alerted = KeySet(
                k
                for k in (
                    alerted_key(0, "network", "52.1.2.0/24"),
                    alerted_key(1, "service", "TCP/443"),
                    alerted_key(2, "high-network", "192.168.1.11"),
                    alerted_key(3, "token", "5"),
                )
                if k is not None
            )
        dets.append(det)
    for k in range(4):
        b = _batch(seed + 200 + k, 2500, t0 + 700.0 + 600.0 * k)
        ctx = packet_context(b, index)
        toks = _tokens(b, ctx, seed + k)
        outs = [d.evaluate(b, ctx, names, toks, since) for d in dets]
        (s1, t1, w1), (s2, t2, w2) = outs
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(w1, w2)
        for f in ("device", "window", "X", "group_of_packet", "shape"):
            np.testing.assert_array_equal(getattr(t1, f), getattr(t2, f), err_msg=f)
        for f in (
            "_new_peer",
            "_new_unnamed",
            "_raw_unnamed",
            "_raw_new_service",
            "_churn",
            "_new_service",
            "_new_token",
            "_slow_count",
            "_starts_known",
        ):
            np.testing.assert_array_equal(getattr(dets[0], f), getattr(dets[1], f), err_msg=f)
        assert dets[0]._c2_state == dets[1]._c2_state
        assert _slow_state(dets[0]) == _slow_state(dets[1])
        f1, f2 = (d.findings(b, ctx, t, w) for d, (_, t, w) in zip(dets, outs, strict=True))
        assert [_finding(f) for f in f1] == [_finding(f) for f in f2]
        s1, s2 = (d.schedule_findings(b, ctx, names, -np.inf) for d in dets)
        assert [_finding(f) for f in s1] == [_finding(f) for f in s2]


def _tracker_state(p: PeriodicityTracker) -> list[Any]:
    return [
        list(p._svc_last.items()),
        [(k, s.last_ts) for k, s in p.schedules.items()],
        [(k, s.device, s.peer, s.service, list(s.times)) for k, s in p._new.items()],
        sorted(p._reported_beacons),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_batched_periodicity_matches_start_by_start(seed: int) -> None:
    """``observe_starts`` against ``observe`` (the start-by-start walk) with schedules, known and
    unknown series, merged starts, regular beacons and a full store of new series."""
    rng = np.random.default_rng(seed)
    trackers = [PeriodicityTracker(), PeriodicityTracker()]
    for p in trackers:
        for k in range(6):  # learned schedules
            times = [150.0 * i + k for i in range(20)]
            p.learn(np.full(20, 1000 + k, np.uint64), times, [(k % 3, "s", "TCP/443")] * 20)
        p.freeze()
    import iotsentry.baseline.periodicity as per

    cap = per.MAX_NEW_SERIES
    per.MAX_NEW_SERIES = 40
    try:
        t0 = 1000.0
        for _ in range(12):
            n = int(rng.integers(0, 400))
            keys = rng.choice(np.array([*range(1000, 1008), *range(2000, 2060)], np.uint64), n)
            ts = np.sort(t0 + rng.uniform(0, 300.0, n))
            beacon = rng.random(n) < 0.3  # a few series on a steady 30 s schedule
            ts = np.where(beacon, t0 + 30.0 * np.floor((ts - t0) / 30.0), ts)
            order = np.argsort(ts, kind="stable")
            keys, ts = keys[order], ts[order]
            dev = (keys % np.uint64(4)).astype(np.int32)
            proto = np.where(keys % np.uint64(2) == 0, 6, 17).astype(np.uint8)
            svc = (keys % np.uint64(5) + np.uint64(440)).astype(np.uint16)
            known = rng.random(n) < 0.4
            labels = [
                (int(d), f"peer{int(k)}", service_label(int(p), int(s)))
                for k, d, p, s in zip(keys, dev, proto, svc, strict=True)
            ]
            a = trackers[0].observe(keys, ts.tolist(), labels, known.tolist())
            b = trackers[1].observe_starts(keys, ts, dev, proto, svc, labels.__getitem__, known)
            assert [(x, t, s.device, s.peer, s.service) for x, t, s in a] == [
                (x, t, s.device, s.peer, s.service) for x, t, s in b
            ]
            assert _tracker_state(trackers[0]) == _tracker_state(trackers[1])
            t0 += 300.0
    finally:
        per.MAX_NEW_SERIES = cap
    assert trackers[0]._reported_beacons and len(trackers[0].schedules) == 6


def _candidates(liv: Living) -> list[Any]:
    return [
        (
            d,
            [
                (k, c.label, c.first_ts, c.last_ts, sorted(c.hours), list(c.windows), c.remote)
                for k, c in cs.items()
            ],
        )
        for d, cs in liv.candidates.items()
    ]


@pytest.mark.parametrize("seed", range(6))
def test_living_observation_matches_reference_on_random_batches(seed: int) -> None:
    t0 = 1.7e9
    index = _index()
    names, since = _names(t0)
    new, ref = _learned(Baseline, seed, t0), _learned(_RefBaseline, seed, t0)
    lives = [Living(new), _RefLiving(ref)]
    for k in range(4):
        b = _batch(seed + 300 + k, 2500, t0 + 700.0 + 600.0 * k)
        ctx = packet_context(b, index)
        rng = np.random.default_rng(seed + k)
        tok = np.where(rng.random(len(b)) < 0.05, rng.integers(1, 8, len(b)), 0).astype(np.uint64)
        counts = [
            liv.observe_batch(b, ctx, base.identity(b, ctx, names, since), names, tok, TOKEN_TEXT)
            for liv, base in zip(lives, (new, ref), strict=True)
        ]
        assert counts[0] == counts[1] > 0
        assert _candidates(lives[0]) == _candidates(lives[1])
        assert lives[0]._dirty == lives[1]._dirty and lives[0]._rank == lives[1]._rank


# ----------------------------------------------------------------------------- whole analyses


def _analysis(path: Path, learn_s: float, reference: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if reference:
            m.setattr(engine_module, "Baseline", _RefBaseline)
            m.setattr(engine_module, "ProfileDetector", _RefDetector)
            m.setattr(engine_module, "Living", _RefLiving)
        scores: list[npt.NDArray[np.float64]] = []

        def sink(b: PacketBatch, device: npt.NDArray[np.int32], s: npt.NDArray[np.float64]) -> None:
            scores.append(s.copy())

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = Analyzer([path], AnalysisConfig(learn_seconds=learn_s)).run(score_sink=sink)
    alerts = [
        (a.timestamp, a.device_id, a.category, a.score, a.reason, a.dest_ip, a.dest_port) for a in res.alerts
    ]
    return (
        alerts,
        np.concatenate(scores) if scores else np.zeros(0),
        res.absorbed,
        dict(res.baselines),
        res.timelines,
    )


def _real_files() -> list[tuple[Path, float]]:
    iot23 = sorted(data_path("iot23", "pcap").glob("*/*.pcap"))
    days = sorted(data_path("iotensemble", "gree_plug").glob("*.pcap"))[:2]
    sentinel = sorted((data_path("iot-sentinel") / "HueBridge").glob("*.pcap"))[:1]
    return [(p, 600.0) for p in iot23] + [(p, 3600.0) for p in days] + [(p, 60.0) for p in sentinel]


@pytest.mark.slow
def test_analyses_match_reference_on_real_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    for path, learn_s in _real_files():
        new = _analysis(path, learn_s, False, monkeypatch)
        ref = _analysis(path, learn_s, True, monkeypatch)
        assert new[0] == ref[0], path
        np.testing.assert_array_equal(new[1], ref[1], err_msg=str(path))
        assert new[2:] == ref[2:], path
