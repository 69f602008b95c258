"""The numba window / baseline kernels against the numpy implementations they replaced.

``_reference_*`` and ``_ReferenceBaseline`` are verbatim copies of ``features/windows.py`` and
``baseline/profile.py`` before the kernels: every result must stay identical, on random
batches and on the real captures.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import data_path
from iotsentry.baseline.identity import registered_domain
from iotsentry.baseline.periodicity import connection_starts
from iotsentry.baseline.profile import Baseline, TokenRows, _ip_names, service_label
from iotsentry.capture.reader import read_all
from iotsentry.features import _window_kernels as K
from iotsentry.features.addresses import is_local, is_multicast
from iotsentry.features.device_context import DeviceIndex, PacketContext, mix_keys, packet_context
from iotsentry.features.windows import (
    LOGIN_PORTS,
    WINDOW_FEATURES,
    WindowTable,
    packet_shapes,
    window_table,
)
from iotsentry.pipeline import Analyzer
from iotsentry.schema import PacketBatch, ip_from_str, ip_to_str

# ----------------------------------------------------------------------------- references (old code)


def _ref_distinct_per_group(
    g: npt.NDArray[np.int64], key: npt.NDArray[np.uint64], ngroups: int
) -> npt.NDArray[np.float64]:
    if len(g) == 0:
        return np.zeros(ngroups)
    order = np.lexsort((key, g))
    gs, ks = g[order], key[order]
    first = np.ones(len(gs), dtype=bool)
    first[1:] = (gs[1:] != gs[:-1]) | (ks[1:] != ks[:-1])
    return np.bincount(gs[first], minlength=ngroups).astype(np.float64)


def _ref_max_distinct(
    g: npt.NDArray[np.int64], a: npt.NDArray[np.uint64], bkey: npt.NDArray[np.uint64], ngroups: int
) -> npt.NDArray[np.float64]:
    out = np.zeros(ngroups)
    if len(g) == 0:
        return out
    order = np.lexsort((bkey, a, g))
    gs, as_, bs = g[order], a[order], bkey[order]
    new_b = np.ones(len(gs), dtype=bool)
    new_b[1:] = (gs[1:] != gs[:-1]) | (as_[1:] != as_[:-1]) | (bs[1:] != bs[:-1])
    gs, as_ = gs[new_b], as_[new_b]
    new_a = np.ones(len(gs), dtype=bool)
    new_a[1:] = (gs[1:] != gs[:-1]) | (as_[1:] != as_[:-1])
    run_id = np.cumsum(new_a) - 1
    counts = np.bincount(run_id).astype(np.float64)
    run_g = gs[new_a]
    np.maximum.at(out, run_g, counts)
    return out


def _ref_distinct_b_per_a(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    if len(a) == 0:
        return np.zeros(0)
    ua, ia = np.unique(a, return_inverse=True)
    _, first = np.unique(mix_keys(a, b), return_index=True)
    counts = np.bincount(ia[first], minlength=len(ua)).astype(np.float64)
    return counts[ia]


def _reference_packet_shapes(
    g: npt.NDArray[np.int64],
    peer: npt.NDArray[np.uint64],
    dport: npt.NDArray[np.uint64],
    svc: npt.NDArray[np.uint64],
    init: npt.NDArray[np.bool_],
    attempts: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    out = np.zeros((len(g), 3))
    gu = g.astype(np.uint64)
    idx = np.flatnonzero(init)
    if len(idx):
        out[idx, 0] = _ref_distinct_b_per_a(mix_keys(gu[idx], peer[idx]), dport[idx])
        out[idx, 1] = _ref_distinct_b_per_a(mix_keys(gu[idx], dport[idx]), peer[idx])
    target = mix_keys(gu, peer, svc)
    ut, it = np.unique(target, return_inverse=True)
    per_target = np.bincount(it, weights=attempts.astype(np.float64), minlength=len(ut))
    out[:, 2] = per_target[it]
    return out


def _reference_window_table(
    batch: PacketBatch,
    ctx: PacketContext,
    known_peer: npt.NDArray[np.bool_],
    named_peer: npt.NDArray[np.bool_],
    known_service: npt.NDArray[np.bool_],
    new_token: npt.NDArray[np.uint64] | None = None,
    known_target: npt.NDArray[np.bool_] | None = None,
) -> WindowTable:
    n = len(ctx)
    valid = ctx.device >= 0
    gkey = ctx.device.astype(np.int64) * (1 << 40) + ctx.window
    uk, ginv = np.unique(gkey[valid], return_inverse=True)
    ng = len(uk)
    group = np.full(n, -1, dtype=np.int64)
    group[valid] = ginv
    g = ginv.astype(np.int64)
    X = np.zeros((ng, len(WINDOW_FEATURES)))
    if ng == 0:
        return WindowTable(np.zeros(0, np.int32), np.zeros(0, np.int64), X, group)
    ip = batch.ip_version[valid] > 0
    peer = mix_keys(ctx.peer_hi[valid], ctx.peer_lo[valid])
    svc = (ctx.proto[valid].astype(np.uint64) << np.uint64(16)) | ctx.service[valid].astype(np.uint64)
    kp, npd, ks = known_peer[valid], named_peer[valid], known_service[valid]
    out = ctx.outbound[valid]
    init = ctx.initiation[valid]
    col = WINDOW_FEATURES.index
    X[:, col("packets")] = np.bincount(g, minlength=ng)
    X[:, col("bytes")] = np.bincount(g, weights=batch.wire_len[valid].astype(np.float64), minlength=ng)
    X[:, col("peers")] = _ref_distinct_per_group(g[ip], peer[ip], ng)
    m = ip & ~kp
    X[:, col("new_peers")] = _ref_distinct_per_group(g[m], peer[m], ng)
    m2 = m & ~npd
    X[:, col("new_unnamed_peers")] = _ref_distinct_per_group(g[m2], peer[m2], ng)
    X[:, col("services")] = _ref_distinct_per_group(g[ip], svc[ip], ng)
    m3 = ip & ~ks
    X[:, col("new_services")] = _ref_distinct_per_group(g[m3], svc[m3], ng)
    X[:, col("initiations")] = np.bincount(g, weights=init.astype(np.float64), minlength=ng)
    oi = ip & out & init
    dport = np.where(ctx.outbound, batch.dst_port, batch.src_port)[valid].astype(np.uint64)
    X[:, col("max_ports_per_peer")] = _ref_max_distinct(g[oi], peer[oi], dport[oi], ng)
    X[:, col("max_peers_per_port")] = _ref_max_distinct(g[oi], dport[oi], peer[oi], ng)
    X[:, col("syn_only")] = np.bincount(g, weights=ctx.syn_only[valid].astype(np.float64), minlength=ng)
    if new_token is not None:
        nt = new_token[valid]
        m4 = nt != 0
        X[:, col("new_names")] = _ref_distinct_per_group(g[m4], nt[m4], ng)
    # brute force: repeated TCP attempts to a remote service, or to a login service on the LAN
    # (apps that poll a hub's local HTTP API open many short connections too)
    hi, lo = ctx.peer_hi[valid], ctx.peer_lo[valid]
    remote = ~is_local(hi, lo) & ~is_multicast(hi, lo)
    if known_target is not None:
        remote &= ~known_target[valid]
    login = np.isin(dport, LOGIN_PORTS)
    shapes = _reference_packet_shapes(g, peer, dport, svc, oi, ctx.syn_only[valid] & (remote | login))
    X[:, col("max_conns_per_target")] = 0.0
    np.maximum.at(X[:, col("max_conns_per_target")], g, shapes[:, 2])
    shape_all = np.zeros((n, 3))
    shape_all[valid] = shapes
    device = (uk >> 40).astype(np.int32)
    window = (uk & ((1 << 40) - 1)).astype(np.int64)
    return WindowTable(device, window, X, group, shape_all)


class _ReferenceBaseline(Baseline):
    """The baseline as it was before the numba kernels (reference)."""

    @staticmethod
    def peer_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        """Hash of (device, peer address) per packet."""
        return mix_keys(ctx.device.astype(np.uint64), ctx.peer_hi, ctx.peer_lo)

    @staticmethod
    def service_keys(ctx: PacketContext) -> npt.NDArray[np.uint64]:
        return mix_keys(
            ctx.device.astype(np.uint64), ctx.proto.astype(np.uint64), ctx.service.astype(np.uint64)
        )

    def named(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        name_ts: dict[str, float] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        n = len(ctx)
        has_name = np.zeros(n, dtype=bool)
        name_known = np.zeros(n, dtype=bool)
        local = is_local(ctx.peer_hi, ctx.peer_lo) | is_multicast(ctx.peer_hi, ctx.peer_lo)
        local |= batch.ip_version == 0
        cand = np.flatnonzero(~local & (ctx.device >= 0))
        if len(cand) and ip_names:
            keys = np.stack([ctx.device[cand].astype(np.uint64), ctx.peer_hi[cand], ctx.peer_lo[cand]], 1)
            uk, inv = np.unique(keys, axis=0, return_inverse=True)
            hn = np.zeros(len(uk), dtype=bool)
            nk = np.zeros(len(uk), dtype=bool)
            for i, (dev, hi, lo) in enumerate(uk.tolist()):
                name = ip_names.get(ip_to_str(hi, lo))
                if name:
                    hn[i] = True
                    # the name itself, or its registrable domain, learned by the device
                    nk[i] = (
                        name in self._names.get(dev, ())
                        or registered_domain(name) in self.profiles[dev].domains
                    )
            has_name[cand] = hn[inv.ravel()]
            name_known[cand] = nk[inv.ravel()]
        return has_name | local, name_known, local

    def learn(
        self,
        batch: PacketBatch,
        ctx: PacketContext,
        ip_names: dict[str, str],
        tokens: TokenRows | None = None,
        token_text: dict[int, str] | None = None,
        name_ts: dict[str, float] | None = None,
    ) -> None:
        valid = (ctx.device >= 0) & (batch.ip_version > 0)
        pk = self.peer_keys(ctx)
        sk = self.service_keys(ctx)
        known_p = self._first_window_flags(pk, ctx.window, valid, self._peer_win)
        known_s = self._first_window_flags(sk, ctx.window, valid, self._svc_win)
        has_name, name_known, local = self.named(batch, ctx, ip_names)
        new_tok = self._first_tokens(len(batch), ctx, tokens)
        table = _reference_window_table(
            batch,
            ctx,
            known_p | name_known | local | ~valid,
            has_name,
            known_s | ~valid,
            new_tok,
            (known_p | name_known | local) & known_s,
        )
        for r in range(len(table)):
            prof = self.profiles[int(table.device[r])]
            prof.windows.append(table.X[r])
            prof.window_ts.append(float(table.window[r]) * 60.0)
        keys, rows = connection_starts(batch.ts, ctx, valid)
        self.periodicity.learn(keys, batch.ts[rows].tolist(), self.series_labels(ctx, rows, ip_names))
        self._account_pairs(pk, ctx, valid, batch, ip_names, kind="peer")
        self._account_pairs(sk, ctx, valid, batch, ip_names, kind="service")
        # time span per device
        dv = ctx.device[ctx.device >= 0]
        if len(dv):
            ts = batch.ts[ctx.device >= 0]
            first = np.full(len(self.profiles), np.inf)
            last = np.full(len(self.profiles), -np.inf)
            np.minimum.at(first, dv, ts)
            np.maximum.at(last, dv, ts)
            for d in np.unique(dv).tolist():
                p = self.profiles[d]
                p.first_ts = min(p.first_ts, float(first[d]))
                p.last_ts = max(p.last_ts, float(last[d]))

    @staticmethod
    def _first_window_flags(
        keys: npt.NDArray[np.uint64],
        window: npt.NDArray[np.int64],
        valid: npt.NDArray[np.bool_],
        seen: dict[int, int],
    ) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(keys), dtype=bool)
        idx = np.flatnonzero(valid)
        if not len(idx):
            return out
        uk, inv = np.unique(keys[idx], return_inverse=True)
        first_w = np.full(len(uk), np.iinfo(np.int64).max)
        np.minimum.at(first_w, inv, window[idx])
        before = np.array([k in seen for k in uk.tolist()], dtype=bool)
        out[idx] = before[inv] | (window[idx] > first_w[inv])
        return out

    def _account_pairs(
        self,
        keys: npt.NDArray[np.uint64],
        ctx: PacketContext,
        valid: npt.NDArray[np.bool_],
        batch: PacketBatch,
        ip_names: dict[str, str],
        kind: str,
    ) -> None:
        idx = np.flatnonzero(valid)
        if not len(idx):
            return
        # distinct (key, window) pairs -> windows per key
        kw = np.stack([keys[idx], ctx.window[idx].astype(np.uint64)], 1)
        ukw, first_pos = np.unique(kw, axis=0, return_index=True)
        uk, cnt = np.unique(ukw[:, 0], return_counts=True)
        # one representative packet per key for the human-readable profile
        rep_of_key: dict[int, int] = {}
        for (k, _w), pos in zip(ukw.tolist(), first_pos.tolist(), strict=True):
            rep_of_key.setdefault(k, int(idx[pos]))
        store = self._peer_win if kind == "peer" else self._svc_win
        for k, c in zip(uk.tolist(), cnt.tolist(), strict=True):
            i = rep_of_key[k]
            dev = int(ctx.device[i])
            prof = self.profiles[dev]
            if k not in store:
                prof.discoveries.append(float(batch.ts[i]))
            store[k] = store.get(k, 0) + int(c)
            if kind == "peer":
                ip = ip_to_str(ctx.peer_hi[i], ctx.peer_lo[i])
                prof.peers[ip] += int(c)
                name = ip_names.get(ip)
                if name:
                    prof.peer_names[ip] = name
                    self._names[dev].add(name)
                    prof.names.add(name)
                    prof.domains.add(registered_domain(name))
            else:
                prof.services[service_label(ctx.proto[i], ctx.service[i])] += int(c)

    @staticmethod
    def series_labels(
        ctx: PacketContext, rows: npt.NDArray[np.int64], ip_names: dict[str, str]
    ) -> list[tuple[int, str, str]]:
        out = []
        for r in rows.tolist():
            ip = ip_to_str(ctx.peer_hi[r], ctx.peer_lo[r])
            out.append(
                (int(ctx.device[r]), ip_names.get(ip, ip), service_label(ctx.proto[r], ctx.service[r]))
            )
        return out


# ----------------------------------------------------------------------------- synthetic data

MACS = [0x0200000000A0 + i for i in range(8)]
"""Devices 0-5, the gateway (6) and one MAC that is no device (7)."""
IPS = [
    ip_from_str(s)
    for s in (
        "192.168.1.10",
        "192.168.1.11",
        "10.0.0.5",
        "8.8.8.8",
        "1.1.1.1",
        "52.1.2.3",
        "52.1.2.4",
        "224.0.0.251",
        "255.255.255.255",
        "192.168.1.255",
        "fe80::1",
        "2001:db8::1",
        "2001:db8::2",
        "ff02::fb",
        "93.184.216.34",
        "172.16.0.1",
    )
]
PORTS = [22, 23, 53, 80, 123, 443, 1900, 2323, 5353, 8080, 40000, 40001, 50000, 3389]


def _names() -> dict[str, str]:
    names = {ip_to_str(*IPS[i]): f"host{i % 4}.example" for i in (3, 4, 5, 6, 11, 14)}
    names[ip_to_str(*IPS[12])] = ""  # a DNS answer without a name
    names[" 8.8.4.4"] = "odd.example"  # keys that are not the canonical text of an address
    names["::FFFF:1.1.1.1"] = "odd.example"
    names["not an address"] = "odd.example"
    return names


def synthetic(seed: int, n: int = 3000, windows: int = 6) -> tuple[PacketBatch, DeviceIndex]:
    """A random batch over a few devices, addresses, ports and windows (sorted by time)."""
    rng = np.random.default_rng(seed)
    mac = np.array(MACS, dtype=np.uint64)
    ip = np.array(IPS, dtype=np.uint64)
    si, di = rng.integers(0, len(IPS), n), rng.integers(0, len(IPS), n)
    proto = rng.choice(np.array([6, 6, 6, 17, 17, 1, 58], np.uint8), n)
    cols: dict[str, Any] = {
        "ts": np.sort(rng.uniform(0, 60.0 * windows, n)) + 1.7e9,
        "wire_len": rng.integers(60, 1500, n),
        "src_mac": mac[rng.integers(0, len(MACS), n)],
        "dst_mac": mac[rng.integers(0, len(MACS), n)],
        "ip_version": rng.choice(np.array([0, 4, 4, 4, 4, 6], np.uint8), n),
        "src_ip_hi": ip[si, 0],
        "src_ip_lo": ip[si, 1],
        "dst_ip_hi": ip[di, 0],
        "dst_ip_lo": ip[di, 1],
        "proto": proto,
        "src_port": rng.choice(np.array([*PORTS, 0, 8, 128, 129], np.uint16), n),
        "dst_port": rng.choice(np.array(PORTS, np.uint16), n),
        "tcp_flags": rng.choice(np.array([0x02, 0x02, 0x12, 0x10, 0x18], np.uint8), n),
    }
    ids = [":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8)) for m in MACS[:7]]
    return PacketBatch(cols), DeviceIndex(ids, ids[6])


def random_masks(n: int, seed: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    tok = np.where(rng.random(n) < 0.2, rng.integers(1, 12, n), 0).astype(np.uint64)
    return rng.random(n) < 0.5, rng.random(n) < 0.5, rng.random(n) < 0.6, tok


def token_rows(n: int, ctx: PacketContext, seed: int) -> TokenRows:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=max(1, n // 10), replace=False)).astype(np.int64)
    return rows, ctx.device[rows].astype(np.int32), rng.integers(1, 20, len(rows)).astype(np.uint64)


# ----------------------------------------------------------------------------- comparisons


def assert_same_table(a: WindowTable, b: WindowTable) -> None:
    for f in ("device", "window", "X", "group_of_packet"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        np.testing.assert_array_equal(x, y, err_msg=f)
    if a.shape is None:
        assert b.shape is None
    else:
        assert b.shape is not None
        np.testing.assert_array_equal(a.shape, b.shape)


def baseline_state(b: Baseline) -> list[Any]:
    profs = [
        (
            sorted(p.domains),
            list(p.peers.items()),
            list(p.peer_names.items()),
            sorted(p.names),
            list(p.services.items()),
            [w.tolist() for w in p.windows],
            p.window_ts,
            p.discoveries,
            p.first_ts,
            p.last_ts,
        )
        for p in b.profiles
    ]
    return [
        list(b._peer_win.items()),
        list(b._svc_win.items()),
        {k: sorted(v) for k, v in b._names.items() if v},
        {k: sorted(v) for k, v in b._tokens.items() if v},
        profs,
        b.periodicity._learn,
        b.periodicity.schedules,
    ]


def compare_baselines(
    batches: list[PacketBatch], index: DeviceIndex, names: dict[str, str], seed: int
) -> None:
    ids = list(index.ids)
    new, ref = Baseline(ids), _ReferenceBaseline(ids)
    for i, b in enumerate(batches):
        ctx = packet_context(b, index)
        toks = token_rows(len(b), ctx, seed + i)
        new.learn(b, ctx, names, toks)
        ref.learn(b, ctx, names, toks)
        assert baseline_state(new) == baseline_state(ref)
    full = PacketBatch.concat(batches)
    ctx = packet_context(full, index)
    for x, y in zip(new.named(full, ctx, names), ref.named(full, ctx, names), strict=True):
        np.testing.assert_array_equal(x, y)
    rows = np.flatnonzero(ctx.device >= 0)
    assert new.series_labels(ctx, rows, names) == ref.series_labels(ctx, rows, names)
    np.testing.assert_array_equal(new.peer_keys(ctx), ref.peer_keys(ctx))
    np.testing.assert_array_equal(new.service_keys(ctx), ref.service_keys(ctx))
    new.freeze()
    ref.freeze()
    assert baseline_state(new) == baseline_state(ref)
    np.testing.assert_array_equal(new.peer_windows(ctx), ref.peer_windows(ctx))
    np.testing.assert_array_equal(new.service_windows(ctx), ref.service_windows(ctx))
    toks = token_rows(len(full), ctx, seed + 99)
    np.testing.assert_array_equal(new.new_tokens(len(full), toks), ref.new_tokens(len(full), toks))
    for x, y in zip(new.named(full, ctx, names), ref.named(full, ctx, names), strict=True):
        np.testing.assert_array_equal(x, y)


def split_at_window(b: PacketBatch) -> list[PacketBatch]:
    """Two batches cut at a window boundary near the middle (as the pipeline cuts them)."""
    w = np.floor(b.ts / 60.0)
    cut = int(np.searchsorted(w, w[len(b) // 2])) if len(b) and np.all(np.diff(w) >= 0) else 0
    if 0 < cut < len(b):
        return [b.take(np.arange(cut)), b.take(np.arange(cut, len(b)))]
    return [b]


# ----------------------------------------------------------------------------- kernels


def test_mix_matches_mix_keys() -> None:
    rng = np.random.default_rng(0)
    cols = [rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True) for _ in range(4)]
    for k in range(1, 5):
        np.testing.assert_array_equal(K.mix(np.stack(cols[:k])), mix_keys(*cols[:k]))


@pytest.mark.parametrize("distinct", [1, 7, 300, 20000])
def test_intern_numbers_keys_in_first_appearance_order(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    a = rng.integers(0, distinct, 50000).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    b = rng.integers(0, 3, 50000).astype(np.uint64)
    for pair in (False, True):
        inv, ka, kb, first = K.intern(a, b, pair)
        keys = np.stack([a, b if pair else np.zeros_like(b)], 1)
        u, f, _iv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        assert len(ka) == len(u)
        np.testing.assert_array_equal(np.sort(first), np.sort(f))
        np.testing.assert_array_equal(first, np.sort(first))  # first-appearance order
        np.testing.assert_array_equal(ka[inv], a)
        if pair:
            np.testing.assert_array_equal(kb[inv], b)
        np.testing.assert_array_equal(inv[first], np.arange(len(ka)))


def test_intern_empty() -> None:
    inv, ka, kb, first = K.intern(np.zeros(0, np.uint64), np.zeros(0, np.uint64), True)
    assert len(inv) == len(ka) == len(kb) == len(first) == 0


def test_lookup_pairs() -> None:
    rng = np.random.default_rng(3)
    ta, tb = rng.integers(0, 50, 200).astype(np.uint64), rng.integers(0, 4, 200).astype(np.uint64)
    qa, qb = rng.integers(0, 60, 5000).astype(np.uint64), rng.integers(0, 5, 5000).astype(np.uint64)
    pos = K.lookup_pairs(qa, qb, ta, tb)
    table = {}
    for i, k in enumerate(zip(ta.tolist(), tb.tolist(), strict=True)):
        table.setdefault(k, i)
    assert pos.tolist() == [table.get(k, -1) for k in zip(qa.tolist(), qb.tolist(), strict=True)]


# ----------------------------------------------------------------------------- window table


@pytest.mark.parametrize("seed", range(12))
def test_window_table_matches_reference_on_random_batches(seed: int) -> None:
    b, index = synthetic(seed, n=[50, 3000, 20000][seed % 3])
    ctx = packet_context(b, index)
    kp, npd, ks, tok = random_masks(len(b), seed)
    for t in (tok, None):
        assert_same_table(
            window_table(b, ctx, kp, npd, ks, t), _reference_window_table(b, ctx, kp, npd, ks, t)
        )


def test_window_table_without_devices() -> None:
    b, _ = synthetic(1, n=500)
    ctx = packet_context(b, DeviceIndex([]))
    kp, npd, ks, tok = random_masks(len(b), 1)
    new = window_table(b, ctx, kp, npd, ks, tok)
    assert len(new) == 0 and new.shape is None
    assert_same_table(new, _reference_window_table(b, ctx, kp, npd, ks, tok))
    e = PacketBatch.empty()
    ectx = packet_context(e, DeviceIndex([]))
    z = np.zeros(0, bool)
    assert_same_table(window_table(e, ectx, z, z, z), _reference_window_table(e, ectx, z, z, z))


@pytest.mark.parametrize("seed", range(6))
def test_packet_shapes_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    g = rng.integers(0, 5, n).astype(np.int64)
    peer, dport = rng.integers(0, 30, n).astype(np.uint64), rng.integers(0, 20, n).astype(np.uint64)
    svc = rng.integers(0, 4, n).astype(np.uint64)
    init, att = rng.random(n) < 0.4, rng.random(n) < 0.3
    np.testing.assert_array_equal(
        packet_shapes(g, peer, dport, svc, init, att),
        _reference_packet_shapes(g, peer, dport, svc, init, att),
    )
    z = np.zeros(0, bool)
    e = np.zeros(0, np.uint64)
    assert packet_shapes(np.zeros(0, np.int64), e, e, e, z, z).shape == (0, 3)


# ----------------------------------------------------------------------------- baseline


@pytest.mark.parametrize("seed", range(6))
def test_baseline_matches_reference_on_random_batches(seed: int) -> None:
    b, index = synthetic(100 + seed, n=[400, 4000, 15000][seed % 3], windows=8)
    compare_baselines(split_at_window(b), index, _names(), seed)


def test_ip_names_both_ways_agree() -> None:
    names = _names()
    rng = np.random.default_rng(5)
    ip = np.array([*IPS, ip_from_str("8.8.4.4"), ip_from_str("1.2.3.4")], dtype=np.uint64)
    pick = ip[rng.integers(0, len(ip), 400)]
    hi, lo = np.ascontiguousarray(pick[:, 0]), np.ascontiguousarray(pick[:, 1])
    direct = _ip_names(hi, lo, names, via_table=False)
    assert direct == _ip_names(hi, lo, names, via_table=True)
    assert direct == [names.get(ip_to_str(h, x)) or "" for h, x in zip(hi.tolist(), lo.tolist(), strict=True)]
    assert "odd.example" not in direct


def test_named_with_many_addresses_uses_the_name_table() -> None:
    """More distinct peers than names: the parsed-table path must give the same flags."""
    b, index = synthetic(7, n=6000)
    rng = np.random.default_rng(7)
    lo = np.uint64(0xFFFF_0000_0000) | rng.integers(0x01000000, 0x7F000000, len(b)).astype(np.uint64)
    b = PacketBatch(
        {
            **{f: getattr(b, f) for f in PacketBatch.FIELDS},
            "dst_ip_hi": np.zeros(len(b), np.uint64),
            "dst_ip_lo": lo,
        }
    )
    names = _names() | {ip_to_str(0, int(x)): f"n{i % 9}" for i, x in enumerate(lo[:40].tolist())}
    compare_baselines(split_at_window(b), index, names, 7)


# ----------------------------------------------------------------------------- real captures


def _real(path: Path) -> tuple[PacketBatch, DeviceIndex, dict[str, str]]:
    a = Analyzer([path])
    devices = a.inventory()
    gw = next((d.device_id for d in devices if d.is_gateway), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncated IoT-23 capture: complete packets only
        b = read_all(path)
    return b, DeviceIndex([d.device_id for d in devices], gw), a.tracker.ip_names


def _real_files() -> list[Path]:
    iot23 = sorted(data_path("iot23", "pcap").glob("*/*.pcap"))
    sentinel = data_path("iot-sentinel")
    picks = []
    for dev in ("Aria", "HueBridge", "EdimaxCam1", "WeMoSwitch", "TP-LinkPlugHS110"):
        picks += sorted((sentinel / dev).glob("*.pcap"))[:2]
    return iot23 + picks


@pytest.mark.slow
def test_window_table_matches_reference_on_real_captures() -> None:
    for i, path in enumerate(_real_files()):
        b, index, _ = _real(path)
        ctx = packet_context(b, index)
        kp, npd, ks, tok = random_masks(len(b), i)
        for t in (tok, None):
            new = window_table(b, ctx, kp, npd, ks, t)
            assert_same_table(new, _reference_window_table(b, ctx, kp, npd, ks, t))


@pytest.mark.slow
def test_baseline_matches_reference_on_real_captures() -> None:
    for i, path in enumerate(_real_files()):
        b, index, names = _real(path)
        compare_baselines(split_at_window(b), index, names, i)
