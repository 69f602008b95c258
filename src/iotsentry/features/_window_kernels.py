"""Numba kernels of the per-device window aggregation and the baseline learning.

The core is :func:`intern`: it gives every distinct key (one ``uint64`` column or an exact
pair of them) a dense number in order of first appearance, through an open-addressing hash
table (linear probing, load <= 1/2) that starts small and doubles as keys arrive, so it stays
in cache when the keys are few. The other kernels are single passes over those numbers.

Nothing here sorts the packets; callers sort only the (few) distinct keys where an order is
part of the result. :func:`mix` reproduces :func:`iotsentry.features.device_context.mix_keys`
bit for bit, so callers that group by its hash values keep exactly the same groups.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_SEED = np.uint64(0x84222325CBF29CE4)


@njit(cache=True)
def _fmix(k: np.uint64) -> np.uint64:
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xFF51AFD7ED558CCD)
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xC4CEB9FE1A85EC53)
    k ^= k >> np.uint64(33)
    return k


@njit(cache=True)
def _mix_step(h: np.uint64, c: np.uint64) -> np.uint64:
    x = c * _M1
    x ^= x >> np.uint64(31)
    h = (h ^ x) * _M2
    h ^= h >> np.uint64(29)
    return h


@njit(cache=True)
def _mix_end(h: np.uint64) -> np.uint64:
    h *= _M3
    h ^= h >> np.uint64(32)
    return h


@njit(cache=True)
def mix(cols: np.ndarray) -> np.ndarray:
    """``mix_keys`` of the rows of a (k, n) ``uint64`` matrix (one column per row of ``cols``)."""
    k, n = cols.shape
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = _SEED
        for j in range(k):
            h = _mix_step(h, cols[j, i])
        out[i] = _mix_end(h)
    return out


@njit(cache=True)
def _slot_hash(x: np.uint64, y: np.uint64, pair: bool) -> np.uint64:
    return _fmix(x ^ _fmix(y + _M1)) if pair else _fmix(x)


@njit(cache=True)
def intern(a: np.ndarray, b: np.ndarray, pair: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dense number of every row's key, in order of first appearance.

    The key is ``a[i]`` or, with ``pair``, the exact pair ``(a[i], b[i])``. Returns (number per
    row, first component per key, second component per key, first row per key).
    """
    n = a.shape[0]
    cap = 64
    while cap < 2 * min(n, 4096):
        cap *= 2
    mask = np.uint64(cap - 1)
    # one row per slot: (a, b, number + 1); 0 in the last column marks an empty slot
    tab = np.zeros((cap, 3), np.uint64)
    room = max(cap // 2, 1)
    ka = np.empty(room, np.uint64)
    kb = np.empty(room, np.uint64)
    first = np.empty(room, np.int64)
    inv = np.empty(n, np.int64)
    m = 0
    last_x = np.uint64(0)
    last_y = np.uint64(0)
    last_j = -1
    for i in range(n):
        x = a[i]
        y = b[i] if pair else np.uint64(0)
        if last_j >= 0 and x == last_x and y == last_y:
            inv[i] = last_j
            continue
        s = _slot_hash(x, y, pair) & mask
        while True:
            e = tab[s, 2]
            if e == 0:
                if m == room:
                    room *= 2
                    ka2 = np.empty(room, np.uint64)
                    kb2 = np.empty(room, np.uint64)
                    f2 = np.empty(room, np.int64)
                    ka2[:m] = ka[:m]
                    kb2[:m] = kb[:m]
                    f2[:m] = first[:m]
                    ka, kb, first = ka2, kb2, f2
                ka[m] = x
                kb[m] = y
                first[m] = i
                tab[s, 0] = x
                tab[s, 1] = y
                tab[s, 2] = np.uint64(m + 1)
                j = m
                m += 1
                if 2 * m > cap:
                    cap *= 2
                    mask = np.uint64(cap - 1)
                    tab = np.zeros((cap, 3), np.uint64)
                    for t in range(m):
                        st = _slot_hash(ka[t], kb[t], pair) & mask
                        while tab[st, 2] != 0:
                            st = (st + np.uint64(1)) & mask
                        tab[st, 0] = ka[t]
                        tab[st, 1] = kb[t]
                        tab[st, 2] = np.uint64(t + 1)
                break
            if tab[s, 0] == x and (not pair or tab[s, 1] == y):
                j = int(e) - 1
                break
            s = (s + np.uint64(1)) & mask
        inv[i] = j
        last_x, last_y, last_j = x, y, j
    return inv, ka[:m].copy(), kb[:m].copy(), first[:m].copy()


@njit(cache=True)
def flagged_distinct(inv: np.ndarray, key_group: np.ndarray, flags: np.ndarray, ngroups: int) -> np.ndarray:
    """Per group and flag column: distinct keys among the rows carrying the flag.

    ``inv`` numbers the rows' keys (see :func:`intern`), ``key_group`` is each key's group,
    ``flags`` a (n, k) boolean matrix. Returns a (ngroups, k) float64 count matrix.
    """
    n, k = flags.shape
    seen = np.zeros((key_group.shape[0], k), np.bool_)
    out = np.zeros((ngroups, k))
    for i in range(n):
        j = inv[i]
        for f in range(k):
            if flags[i, f] and not seen[j, f]:
                seen[j, f] = True
                out[key_group[j], f] += 1.0
    return out


@njit(cache=True)
def max_distinct(g: np.ndarray, a: np.ndarray, b: np.ndarray, ngroups: int) -> np.ndarray:
    """Per group: the largest number of distinct ``b`` values sharing one ``a`` value."""
    out = np.zeros(ngroups)
    if g.shape[0] == 0:
        return out
    inv1, g1, _, _ = intern(g, a, True)
    _, k2, _, _ = intern(inv1.view(np.uint64), b, True)
    cnt = np.zeros(g1.shape[0])
    for t in range(k2.shape[0]):
        j = np.int64(k2[t])
        cnt[j] += 1.0
        gg = np.int64(g1[j])
        if cnt[j] > out[gg]:
            out[gg] = cnt[j]
    return out


@njit(cache=True)
def distinct_b_per_a(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For every row: distinct ``mix_keys(a, b)`` values whose first row has this row's ``a``."""
    n = a.shape[0]
    cols = np.empty((2, n), np.uint64)
    cols[0] = a
    cols[1] = b
    h = mix(cols)
    inva, ua, _, _ = intern(a, a, False)
    _, _, _, firsth = intern(h, h, False)
    cnt = np.zeros(ua.shape[0])
    for t in range(firsth.shape[0]):
        cnt[inva[firsth[t]]] += 1.0
    out = np.empty(n)
    for i in range(n):
        out[i] = cnt[inva[i]]
    return out


@njit(cache=True)
def sum_per_key(key: np.ndarray, w: np.ndarray) -> np.ndarray:
    """For every row: the sum of ``w`` over the rows sharing its key (summed in row order)."""
    inv, uk, _, _ = intern(key, key, False)
    tot = np.zeros(uk.shape[0])
    for i in range(key.shape[0]):
        tot[inv[i]] += w[i]
    out = np.empty(key.shape[0])
    for i in range(key.shape[0]):
        out[i] = tot[inv[i]]
    return out


@njit(cache=True)
def max_per_group(g: np.ndarray, v: np.ndarray, ngroups: int) -> np.ndarray:
    """Per group: the largest value (0 when none is larger)."""
    out = np.zeros(ngroups)
    for i in range(g.shape[0]):
        if v[i] > out[g[i]]:
            out[g[i]] = v[i]
    return out


@njit(cache=True)
def key_windows(
    key: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct key (first-appearance order): its first window, the number of distinct
    windows it occurs in, and its first row in that first window.

    Returns (key number per row, keys, first window, window count, representative row).
    """
    n = key.shape[0]
    inv, uk, _, _ = intern(key, key, False)
    m = uk.shape[0]
    first_w = np.full(m, np.iinfo(np.int64).max, np.int64)
    for i in range(n):
        if window[i] < first_w[inv[i]]:
            first_w[inv[i]] = window[i]
    rep = np.full(m, -1, np.int64)
    for i in range(n):
        j = inv[i]
        if rep[j] < 0 and window[i] == first_w[j]:
            rep[j] = i
    _, kw, _, _ = intern(inv.view(np.uint64), window.view(np.uint64), True)
    nwin = np.zeros(m, np.int64)
    for t in range(kw.shape[0]):
        nwin[np.int64(kw[t])] += 1
    return inv, uk, first_w, nwin, rep


@njit(cache=True)
def min_max_per_group(g: np.ndarray, v: np.ndarray, ngroups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: smallest and largest value (inf / -inf when the group is empty)."""
    lo = np.full(ngroups, np.inf)
    hi = np.full(ngroups, -np.inf)
    for i in range(g.shape[0]):
        x = v[i]
        if x < lo[g[i]]:
            lo[g[i]] = x
        if x > hi[g[i]]:
            hi[g[i]] = x
    return lo, hi


@njit(cache=True)
def lookup_pairs(qa: np.ndarray, qb: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """For every query pair ``(qa[i], qb[i])``: its index among the table pairs (-1 when absent;
    the first index when a pair repeats)."""
    nt = ta.shape[0]
    cap = 64
    while cap < 2 * nt:
        cap *= 2
    mask = np.uint64(cap - 1)
    slots = np.full(cap, -1, np.int64)
    for t in range(nt):
        s = _fmix(ta[t] ^ _fmix(tb[t] + _M1)) & mask
        dup = False
        while slots[s] >= 0:
            j = slots[s]
            if ta[j] == ta[t] and tb[j] == tb[t]:
                dup = True
                break
            s = (s + np.uint64(1)) & mask
        if not dup:
            slots[s] = t
    out = np.full(qa.shape[0], -1, np.int64)
    for i in range(qa.shape[0]):
        s = _fmix(qa[i] ^ _fmix(qb[i] + _M1)) & mask
        while True:
            j = slots[s]
            if j < 0:
                break
            if ta[j] == qa[i] and tb[j] == qb[i]:
                out[i] = j
                break
            s = (s + np.uint64(1)) & mask
    return out


@njit(cache=True)
def _mix2(x: np.uint64, y: np.uint64) -> np.uint64:
    return _mix_end(_mix_step(_mix_step(_SEED, x), y))


@njit(cache=True)
def _first_attributed(a: np.ndarray, h: np.ndarray, out: np.ndarray, rows: np.ndarray, c: int) -> None:
    """``out[rows, c]``: per row, distinct ``h`` values whose first row has this row's ``a``."""
    inva, ua, _, _ = intern(a, a, False)
    _, _, _, firsth = intern(h, h, False)
    cnt = np.zeros(ua.shape[0])
    for t in range(firsth.shape[0]):
        cnt[inva[firsth[t]]] += 1.0
    for i in range(rows.shape[0]):
        out[rows[i], c] = cnt[inva[i]]


@njit(cache=True)
def window_features(
    device: np.ndarray,
    window: np.ndarray,
    ip_version: np.ndarray,
    wire_len: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    proto: np.ndarray,
    service: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    outbound: np.ndarray,
    initiation: np.ndarray,
    syn_only: np.ndarray,
    known_peer: np.ndarray,
    named_peer: np.ndarray,
    known_service: np.ndarray,
    new_token: np.ndarray,
    attempt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The whole window table in one kernel (see ``features.windows.window_table``).

    Returns (sorted group keys ``device << 40 + window``, feature matrix, group per packet,
    shape per packet). ``attempt`` marks the brute-force attempts among the packets.
    """
    n = device.shape[0]
    # -- groups: distinct (device, window) keys, numbered in key order
    nv = 0
    for i in range(n):
        if device[i] >= 0:
            nv += 1
    vrow = np.empty(nv, np.int64)
    gk = np.empty(nv, np.uint64)
    j = 0
    for i in range(n):
        if device[i] >= 0:
            vrow[j] = i
            gk[j] = np.uint64(np.int64(device[i]) * (np.int64(1) << 40) + window[i])
            j += 1
    ginv, ukeys, _, _ = intern(gk, gk, False)
    sk = ukeys.view(np.int64)
    order = np.argsort(sk)
    ng = order.shape[0]
    rank = np.empty(ng, np.int64)
    for r in range(ng):
        rank[order[r]] = r
    uk = sk[order]
    group = np.full(n, -1, np.int64)
    g = np.empty(nv, np.int64)
    for t in range(nv):
        g[t] = rank[ginv[t]]
        group[vrow[t]] = g[t]
    X = np.zeros((ng, 13))
    shape = np.zeros((n, 3))
    if ng == 0:
        return uk, X, group, shape
    # -- per valid row keys; sums in row order
    peer = np.empty(nv, np.uint64)
    svc = np.empty(nv, np.uint64)
    dport = np.empty(nv, np.uint64)
    nip = 0
    noi = 0
    ntok = 0
    for t in range(nv):
        i = vrow[t]
        gg = g[t]
        peer[t] = _mix2(peer_hi[i], peer_lo[i])
        svc[t] = (np.uint64(proto[i]) << np.uint64(16)) | np.uint64(service[i])
        dport[t] = np.uint64(dst_port[i]) if outbound[i] else np.uint64(src_port[i])
        X[gg, 0] += 1.0
        X[gg, 1] += np.float64(wire_len[i])
        if initiation[i]:
            X[gg, 7] += 1.0
        if syn_only[i]:
            X[gg, 10] += 1.0
        if ip_version[i] > 0:
            nip += 1
            if outbound[i] and initiation[i]:
                noi += 1
        if new_token[i] != 0:
            ntok += 1
    # -- distinct peers / services (all, new, new unnamed) over IP rows
    ipr = np.empty(nip, np.int64)
    gip = np.empty(nip, np.uint64)
    pip = np.empty(nip, np.uint64)
    sip = np.empty(nip, np.uint64)
    k = 0
    for t in range(nv):
        if ip_version[vrow[t]] > 0:
            ipr[k] = t
            gip[k] = np.uint64(g[t])
            pip[k] = peer[t]
            sip[k] = svc[t]
            k += 1
    pinv, pg, _, _ = intern(gip, pip, True)
    seen = np.zeros((pg.shape[0], 2), np.bool_)
    for k in range(nip):
        t = ipr[k]
        i = vrow[t]
        j = pinv[k]
        gg = g[t]
        if not known_peer[i] and not seen[j, 0]:
            seen[j, 0] = True
            X[gg, 3] += 1.0
        if not known_peer[i] and not named_peer[i] and not seen[j, 1]:
            seen[j, 1] = True
            X[gg, 4] += 1.0
    for j in range(pg.shape[0]):
        X[np.int64(pg[j]), 2] += 1.0
    sinv, sg, _, _ = intern(gip, sip, True)
    sseen = np.zeros(sg.shape[0], np.bool_)
    for j in range(sg.shape[0]):
        X[np.int64(sg[j]), 5] += 1.0
    for k in range(nip):
        i = vrow[ipr[k]]
        j = sinv[k]
        if not known_service[i] and not sseen[j]:
            sseen[j] = True
            X[g[ipr[k]], 6] += 1.0
    # -- fan-out over outbound initiations: max distinct ports per peer / peers per port
    oir = np.empty(noi, np.int64)
    goi = np.empty(noi, np.uint64)
    poi = np.empty(noi, np.uint64)
    doi = np.empty(noi, np.uint64)
    pid = np.empty(noi, np.uint64)
    k = 0
    for q in range(nip):
        t = ipr[q]
        i = vrow[t]
        if outbound[i] and initiation[i]:
            oir[k] = t
            goi[k] = gip[q]
            poi[k] = peer[t]
            doi[k] = dport[t]
            pid[k] = np.uint64(pinv[q])
            k += 1
    if noi:
        _, k2, _, _ = intern(pid, doi, True)
        cnt = np.zeros(pg.shape[0])
        for t in range(k2.shape[0]):
            j = int(k2[t])
            cnt[j] += 1.0
            gg = np.int64(pg[j])
            if cnt[j] > X[gg, 8]:
                X[gg, 8] = cnt[j]
        inv3, g3, _, _ = intern(goi, doi, True)
        _, k4, _, _ = intern(inv3.view(np.uint64), poi, True)
        cnt = np.zeros(g3.shape[0])
        for t in range(k4.shape[0]):
            j = int(k4[t])
            cnt[j] += 1.0
            gg = np.int64(g3[j])
            if cnt[j] > X[gg, 9]:
                X[gg, 9] = cnt[j]
        # per packet shapes (hash keys as in ``mix_keys``)
        rows = np.empty(noi, np.int64)
        a1 = np.empty(noi, np.uint64)
        h1 = np.empty(noi, np.uint64)
        a2 = np.empty(noi, np.uint64)
        h2 = np.empty(noi, np.uint64)
        for k in range(noi):
            rows[k] = vrow[oir[k]]
            a1[k] = _mix2(goi[k], poi[k])
            h1[k] = _mix2(a1[k], doi[k])
            a2[k] = _mix2(goi[k], doi[k])
            h2[k] = _mix2(a2[k], poi[k])
        _first_attributed(a1, h1, shape, rows, 0)
        _first_attributed(a2, h2, shape, rows, 1)
    # -- distinct new application tokens
    if ntok:
        gt = np.empty(ntok, np.uint64)
        kt = np.empty(ntok, np.uint64)
        k = 0
        for t in range(nv):
            i = vrow[t]
            if new_token[i] != 0:
                gt[k] = np.uint64(g[t])
                kt[k] = new_token[i]
                k += 1
        _, tg, _, _ = intern(gt, kt, True)
        for j in range(tg.shape[0]):
            X[np.int64(tg[j]), 11] += 1.0
    # -- brute force: attempts per (peer, service) target
    tk = np.empty(nv, np.uint64)
    for t in range(nv):
        h = _mix_step(_SEED, np.uint64(g[t]))
        h = _mix_step(h, peer[t])
        tk[t] = _mix_end(_mix_step(h, svc[t]))
    tinv, tu, _, _ = intern(tk, tk, False)
    tot = np.zeros(tu.shape[0])
    for t in range(nv):
        if attempt[vrow[t]]:
            tot[tinv[t]] += 1.0
    for t in range(nv):
        v = tot[tinv[t]]
        shape[vrow[t], 2] = v
        if v > X[g[t], 12]:
            X[g[t], 12] = v
    return uk, X, group, shape
